"""JumpReLU training maths: straight-through estimators, one exact sparse step, one SAE's state.

The JumpReLU paper (Rajamanoharan et al. 2024, arXiv 2407.14435) trains

    loss = ||y - y_hat||^2 + P(L0),   f = JumpReLU_theta(pre) = pre * H(pre - theta),
    y_hat = f @ W_dec + b_dec,        L0 = sum_s H(pre_s - theta_s),

where ``H`` is the Heaviside step. ``H`` has no useful derivative, so the threshold gets a
pseudo-derivative from a rectangle kernel ``K(u) = 1{-1/2 < u < 1/2}`` of bandwidth ``eps``:

    d/dtheta JumpReLU_theta(z) := -(theta / eps) K((z - theta) / eps)
    d/dtheta H(z - theta)      := -(1 / eps)     K((z - theta) / eps)

and nothing else changes: the gradient of JumpReLU wrt ``z`` is the mask ``H(z - theta)``, that of
the step wrt ``z`` is zero. :class:`JumpReLU` and :class:`Step` are these estimators as autograd
functions; :func:`reference_loss` is the loss built from them with plain dense autograd.

:func:`loss_and_grads` computes the same loss and gradients without autograd and, when few
features are active, without dense decoder maths: every gradient vanishes outside the entries
that are active or within ``eps / 2`` of the threshold, so only the encoder's forward matmul is
dense; decoding, the decoder's gradients and the encoder's gradient read those few entries.
:class:`gsnb.saes.trainer.SAETrainer` takes the recipe's steps with them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import NamedTuple

import torch


def rectangle(u: torch.Tensor) -> torch.Tensor:
    """The rectangle kernel ``K(u) = 1 if -1/2 < u < 1/2 else 0``, in ``u``'s dtype."""
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class JumpReLU(torch.autograd.Function):
    """``pre * H(pre - threshold)`` with the paper's pseudo-derivative wrt the threshold only.

    ``pre [..., d_sae]``, ``threshold [d_sae]``; ``bandwidth`` is a float.
    """

    @staticmethod
    def forward(ctx, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = grad_out * (pre > threshold)
        pseudo = -(threshold / eps) * rectangle((pre - threshold) / eps)
        grad_threshold = (grad_out * pseudo).reshape(-1, pre.shape[-1]).sum(0)
        return grad_pre, grad_threshold, None


class Step(torch.autograd.Function):
    """``H(pre - threshold)`` (1.0 or 0.0) with a pseudo-derivative wrt the threshold only."""

    @staticmethod
    def forward(ctx, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        pseudo = -(1.0 / eps) * rectangle((pre - threshold) / eps)
        grad_threshold = (grad_out * pseudo).reshape(-1, pre.shape[-1]).sum(0)
        return torch.zeros_like(pre), grad_threshold, None


def jumprelu(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """:class:`JumpReLU` applied: ``[..., d_sae] -> [..., d_sae]``."""
    return JumpReLU.apply(pre, threshold, bandwidth)


def step(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """:class:`Step` applied: ``[..., d_sae] -> [..., d_sae]`` of zeros and ones."""
    return Step.apply(pre, threshold, bandwidth)


def sparsity_penalty(l0, coefficient: float, target_l0: float | None):
    """``P(L0)``: ``coefficient * L0``, or ``coefficient * (L0 - target)^2 / target``.

    The quadratic form (Gemma Scope 2's idea) pulls L0 towards ``target_l0`` from both sides.
    Works on floats and on tensors (so autograd can differentiate it).
    """
    if target_l0 is None:
        return coefficient * l0
    return coefficient * (l0 - target_l0) ** 2 / target_l0


def sparsity_penalty_slope(l0: float, coefficient: float, target_l0: float | None) -> float:
    """``dP/dL0`` at ``l0`` for :func:`sparsity_penalty`."""
    if target_l0 is None:
        return coefficient
    return 2.0 * coefficient * (l0 - target_l0) / target_l0


@dataclass
class Params:
    """An SAE's trainable tensors in the training layout (rows are features, so the sparse
    gradients of both weight matrices come out as ``[d_sae, width]`` row updates).

    ``W_encT [d_sae, d_in]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_out]``, ``b_dec [d_out]``,
    ``threshold [d_sae]``.
    """

    W_encT: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    threshold: torch.Tensor

    NAMES = ("W_encT", "b_enc", "W_dec", "b_dec", "threshold")

    def tensors(self) -> list[torch.Tensor]:
        return [getattr(self, name) for name in self.NAMES]


class StepStats(NamedTuple):
    """Scalars of one training step on one batch."""

    loss: float
    """MSE plus the sparsity penalty."""
    mse: float
    """Mean over the batch of ``||y - y_hat||^2`` (in the scaled units training sees)."""
    l0: float
    """Mean number of active features per row."""
    fvu: float
    """``sum ||y - y_hat||^2 / sum ||y - mean(y)||^2`` over the batch."""
    density: float
    """Share of ``[batch, d_sae]`` entries the sparse step had to visit."""


def reference_loss(
    p: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    bandwidth: float,
    coefficient: float,
    target_l0: float | None = None,
) -> torch.Tensor:
    """The training loss with dense autograd through :class:`JumpReLU` and :class:`Step`.

    ``x [batch, d_in]``, ``y [batch, d_out]``; ``p``'s tensors may require grad. Slow but plainly
    correct: the tests check :func:`loss_and_grads` against it.
    """
    pre = x @ p.W_encT.T + p.b_enc
    f = jumprelu(pre, p.threshold, bandwidth)
    y_hat = f @ p.W_dec + p.b_dec
    mse = (y - y_hat).pow(2).sum(-1).mean()
    l0 = step(pre, p.threshold, bandwidth).sum(-1).mean()
    return mse + sparsity_penalty(l0, coefficient, target_l0)


@torch.no_grad()
def loss_and_grads(
    p: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    bandwidth: float,
    coefficient: float,
    target_l0: float | None = None,
    sparse: bool | None = None,
    max_density: float = 0.05,
) -> tuple[StepStats, Params]:
    """Loss statistics and exact gradients of :func:`reference_loss`, computed by hand.

    Args:
        p: the parameters (plain tensors; autograd is not used).
        x: inputs ``[batch, d_in]``; y: targets ``[batch, d_out]`` (``y is x`` for an SAE).
        bandwidth, coefficient, target_l0: as in :func:`reference_loss`.
        sparse: force the sparse (``True``) or dense (``False``) decoder maths; ``None`` picks
            sparse when at most ``max_density`` of the ``[batch, d_sae]`` entries (judged on the
            first 256 rows) are near or above threshold. Early in training about half of them
            are, and dense matmuls win.

    Returns:
        ``(stats, grads)`` with ``grads`` shaped like ``p``.
    """
    batch, d_sae = x.shape[0], p.b_enc.shape[0]
    eps = bandwidth
    e = _visited_entries(p, x, eps, sparse, max_density)
    active = e.z > e.theta
    window = rectangle((e.z - e.theta) / eps)
    f = e.z * active
    l0 = float(active.sum()) / batch

    if e.rows is not None:
        y_hat = torch.sparse.mm(_coo(e.rows, e.cols, f, (batch, d_sae)), p.W_dec).add_(p.b_dec)
    else:
        y_hat = torch.addmm(p.b_dec, f, p.W_dec)
    resid = y_hat - y  # [batch, d_out]
    sq = float(resid.pow(2).sum())
    mse = sq / batch
    var = float((y - y.mean(0)).pow(2).sum())
    slope = sparsity_penalty_slope(l0, coefficient, target_l0)
    loss = mse + float(sparsity_penalty(l0, coefficient, target_l0))

    g = resid.mul_(2.0 / batch)  # dloss/dy_hat
    df = _dloss_df(p, e, g, f)
    dpre = df * active
    dtheta_entries = -(e.theta * df + slope / batch) * window / eps
    grads = _param_grads(p, e, x, g, f, dpre, dtheta_entries)
    stats = StepStats(loss, mse, l0, sq / max(var, 1e-30), e.density)
    return stats, grads


class _Entries(NamedTuple):
    """The ``[batch, d_sae]`` entries a step visits, with their pre-activations and thresholds.

    Sparse: the visited entries' ``rows`` and ``cols`` (row-major), ``z`` and ``theta`` ``[n]``.
    Dense: ``rows`` and ``cols`` are ``None``, ``z [batch, d_sae]`` and ``theta [d_sae]``.
    """

    rows: torch.Tensor | None
    cols: torch.Tensor | None
    z: torch.Tensor
    theta: torch.Tensor
    density: float
    """Share of all entries that are near or above threshold."""


def _visited_entries(
    p: Params, x: torch.Tensor, eps: float, sparse: bool | None, max_density: float
) -> _Entries:
    """The one dense matmul, then the entries whose gradient can be nonzero: active
    (``pre > theta``) or in the kernel's window (``|pre - theta| < eps / 2``)."""
    batch, d_sae = x.shape[0], p.b_enc.shape[0]
    # The bias is added later, to the few visited entries only.
    pre = x @ p.W_encT.T  # [batch, d_sae]
    # A margin of a full eps keeps rounding from dropping any entry; exact tests on the visited
    # entries decide the rest.
    cutoff = p.threshold - p.b_enc - eps
    if sparse is None:
        # Judge density on a few rows: a full count would cost another pass over [batch, d_sae].
        sample = pre[: min(batch, 256)]
        sparse = float((sample > cutoff).float().mean()) <= max_density
    if not sparse:
        z = pre.add_(p.b_enc)
        return _Entries(None, None, z, p.threshold, float((z > cutoff + p.b_enc).float().mean()))
    flat = (pre > cutoff).view(-1).nonzero().squeeze(1)  # row-major, so sorted by row
    rows, cols = flat // d_sae, flat % d_sae
    z = pre.view(-1)[flat] + p.b_enc[cols]
    return _Entries(rows, cols, z, p.threshold[cols], flat.numel() / (batch * d_sae))


def _dloss_df(p: Params, e: _Entries, g: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """dloss/df where it is needed: ``g[row] . W_dec[col]`` for the visited entries."""
    if e.rows is None:
        return g @ p.W_dec.T
    batch, d_sae = g.shape[0], p.b_enc.shape[0]
    crow = torch.zeros(batch + 1, dtype=torch.long, device=g.device)
    crow[1:] = torch.bincount(e.rows, minlength=batch).cumsum(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR is in beta": it is only a pattern here
        pattern = torch.sparse_csr_tensor(
            crow, e.cols, torch.ones_like(f), (batch, d_sae), check_invariants=False
        )
    return torch.sparse.sampled_addmm(pattern, g, p.W_dec.T, beta=0.0).values()


def _param_grads(
    p: Params,
    e: _Entries,
    x: torch.Tensor,
    g: torch.Tensor,
    f: torch.Tensor,
    dpre: torch.Tensor,
    dtheta: torch.Tensor,
) -> Params:
    """Every parameter's gradient from the visited entries' ``f``, ``dloss/dpre`` and
    ``dloss/dtheta`` and the output gradient ``g [batch, d_out]``."""
    if e.rows is None:
        return Params(dpre.T @ x, dpre.sum(0), f.T @ g, g.sum(0), dtheta.sum(0))
    batch, d_sae = g.shape[0], p.b_enc.shape[0]
    grad_threshold = torch.zeros_like(p.threshold).index_add_(0, e.cols, dtheta)
    grad_b_enc = torch.zeros_like(p.b_enc).index_add_(0, e.cols, dpre)
    order = torch.argsort(e.cols, stable=True)
    rc = (e.cols[order], e.rows[order])
    grad_W_dec = torch.sparse.mm(_coo(*rc, f[order], (d_sae, batch)), g)
    grad_W_encT = torch.sparse.mm(_coo(*rc, dpre[order], (d_sae, batch)), x)
    return Params(grad_W_encT, grad_b_enc, grad_W_dec, g.sum(0), grad_threshold)


def _coo(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    # Callers pass indices sorted row-major without duplicates, so the tensor is coalesced as
    # built and torch skips its sort.
    return torch.sparse_coo_tensor(
        torch.stack([rows, cols]), values, shape, is_coalesced=True, check_invariants=False
    )
