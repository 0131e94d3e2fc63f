"""How good is an SAE or transcoder on a model: :func:`evaluate` and the :func:`splice` context.

* Reconstruction (positions holding special tokens such as BOS left out): L0, FVU
  ``sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``, explained variance ``1 - FVU``, and the share
  of features that never fired.
* Faithfulness to the model: next-token cross-entropy with the reconstruction spliced in at its
  site, minus the clean cross-entropy (delta loss, Gemma Scope's headline fidelity metric), and
  the KL divergence from the clean next-token distribution to the spliced one.
* Loss recovered against two ablations of the same site (as Gemma Scope and SAELens report it):
  ``(ce_ablated - ce_spliced) / (ce_ablated - ce_clean)``, 1 when splicing costs nothing and 0
  when the reconstruction is no better than ablating, with the site replaced by zeros or by its
  mean over the evaluated tokens.

Measure on held-out text, ``gsnb.data.default_tokens(model, n_windows, seq_len, split="eval")``:
SAEs train on the ``"train"`` split, so the ``"eval"`` split is text they never saw.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from gsnb.saes.sae import JumpReLUSAE, named

_NAN = float("nan")  # one object, so results without ablations still compare equal


@dataclass(frozen=True)
class EvalResult:
    """Metrics of one SAE over a set of tokens; also readable as a dict (``r["fvu"]``)."""

    l0: float
    """Mean number of active features per token."""
    fvu: float
    """Fraction of variance unexplained by the reconstruction."""
    explained_variance: float
    """``1 - fvu``."""
    dead_fraction: float
    """Share of features that never fired on these tokens."""
    delta_loss: float
    """``ce_spliced - ce_clean`` (nats per token)."""
    kl: float
    """Mean ``KL(clean || spliced)`` of the next-token distributions (nats)."""
    ce_clean: float
    """Next-token cross-entropy of the unchanged model."""
    ce_spliced: float
    """Next-token cross-entropy with the reconstruction spliced in."""
    ce_zero_ablated: float
    """Next-token cross-entropy with the site (``site_out``) replaced by zeros at every position;
    nan when evaluated with ``ablations=False``."""
    ce_mean_ablated: float
    """Next-token cross-entropy with the site (``site_out``) replaced at every position by its
    mean over the evaluated tokens (special tokens left out); nan with ``ablations=False``."""
    loss_recovered_zero: float
    """``(ce_zero_ablated - ce_spliced) / (ce_zero_ablated - ce_clean)``: 1 when splicing costs
    nothing, 0 when it is as bad as zeroing the site (nan if zeroing changes nothing)."""
    loss_recovered_mean: float
    """``(ce_mean_ablated - ce_spliced) / (ce_mean_ablated - ce_clean)``: the same against mean
    ablation, usually the stricter baseline (a mean is closer to the site than zeros)."""
    n_tokens: int
    """Positions counted in l0, fvu and dead_fraction (special tokens left out)."""

    def __getitem__(self, key: str) -> float:
        return getattr(self, key)

    def keys(self) -> list[str]:
        return list(asdict(self))

    def summary(self) -> str:
        """The headline numbers on one line, e.g. ``L0 52.1 · FVU 0.112 · delta loss 0.0412 ·
        loss recovered 97.0% (zero) / 91.2% (mean) · KL 0.0398 · dead 1.2%``."""
        return (
            f"L0 {self.l0:.1f} · FVU {self.fvu:.3g} · delta loss {self.delta_loss:.4g} · "
            f"loss recovered {self.loss_recovered_zero:.1%} (zero) / "
            f"{self.loss_recovered_mean:.1%} (mean) · KL {self.kl:.4g} · "
            f"dead {self.dead_fraction:.1%} · {self.n_tokens} tokens"
        )

    def __repr__(self) -> str:
        values = ", ".join(
            f"{f.name}={getattr(self, f.name):.4g}"
            if f.type == "float"
            else f"{f.name}={getattr(self, f.name)}"
            for f in fields(self)
        )
        return f"EvalResult({values})"


@contextmanager
def splice(
    model, sae: JumpReLUSAE, error: bool = False, positions: torch.Tensor | None = None
) -> Iterator[None]:
    """Inside the block, ``model`` computes its site ``sae.site_out`` as the SAE's reconstruction.

    An SAE reconstructs its own site's value; a transcoder's output replaces ``mlp_out.L`` and is
    computed from ``mlp_in.L`` of the same forward pass. With ``error=True`` the error term
    ``x - x_hat`` is added back as a constant, so values (and logits) are exactly unchanged while
    gradients flow through the SAE, as in sparse feature circuits. ``positions`` (``[batch, pos]``
    bool, for the tokens of the forward pass) limits the reconstruction to where it is True; the
    other positions keep the model's own value. :func:`evaluate` passes the non-special tokens:
    SAEs train without BOS, whose residual stream is huge and out of their distribution, and a
    reconstruction there would change every later position through attention.

    >>> with splice(model, sae):
    ...     logits = model(tokens)   # [batch, pos, vocab] with the reconstruction in place
    """
    if sae.site_in is None:
        raise ValueError(f"{sae!r} does not know its site; set sae.cfg.site_in (and site_out)")
    sae.check_model(model)
    inputs: dict[str, torch.Tensor] = {}

    def reconstruct(value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x_hat = sae(x.to(sae.W_enc.device)).to(value.device, value.dtype)
        if positions is not None:
            x_hat = _at_positions(positions, x_hat, value)
        if not error:
            return x_hat
        # value + 0 in the forward pass (a - a is exactly 0), d/dx through x_hat in the backward.
        return value.detach() + (x_hat - x_hat.detach())

    if sae.is_transcoder:

        def keep_input(value: torch.Tensor) -> None:
            inputs["x"] = value

        fns = {
            sae.site_in: keep_input,
            sae.site_out: lambda value: reconstruct(value, inputs.pop("x")),
        }
    else:
        fns = {sae.site_in: lambda value: reconstruct(value, value)}
    with model.hooks(fns):
        yield


def _at_positions(positions: torch.Tensor, new: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``new`` where ``positions`` ``[batch, pos]`` is True, else ``value``; both
    ``[batch, pos, d]``."""
    if positions.shape != value.shape[:2]:
        raise ValueError(
            f"positions has shape {tuple(positions.shape)} but the forward pass has "
            f"[batch, pos] = {tuple(value.shape[:2])}: pass one flag per token of the batch"
        )
    return torch.where(positions.to(value.device)[..., None], new, value)


def evaluate(
    model,
    sae_or_suite,
    tokens: torch.Tensor,
    batch_size: int = 4,
    ablations: bool = True,
    progress: bool = True,
) -> EvalResult | dict[str, EvalResult]:
    """Reconstruction, spliced-loss and loss-recovered metrics of one SAE, or of each SAE in a
    suite. Pass held-out tokens: ``gsnb.data.default_tokens(model, n, seq_len, split="eval")``.

    The mean that mean ablation substitutes comes from a first pass over ``tokens`` (stopped
    after the deepest output site; special tokens left out); the main pass then runs,
    per batch, the clean model, each SAE spliced in, and zero and mean ablation of each distinct
    output site (shared by SAEs that write the same site). Ablation and splicing replace the
    site at every position but those of special tokens (BOS: SAEs never train on it, see
    :func:`splice`), and a transcoder's ablation replaces its output site ``mlp_out.L``.

    Args:
        model: a :class:`gsnb.Model`.
        sae_or_suite: a :class:`JumpReLUSAE`; or a mapping ``{name: sae}``, a list of SAEs, or a
            :class:`gsnb.saes.train.SuiteResult` (then the clean forward pass is shared by all).
        tokens: ``[n_windows, seq_len]`` token ids (BOS first), held out from training, e.g.
            ``gsnb.core.data.default_tokens(model, 64, 128, split="eval")``.
        batch_size: windows per forward pass.
        ablations: run the zero and mean ablations (two forward passes per output site and
            batch, plus the pass for the means); False leaves their fields nan.
        progress: show a progress bar per pass.

    Returns:
        an :class:`EvalResult` for one SAE, else ``{name: EvalResult}``.

    >>> r = evaluate(model, sae, gsnb.data.default_tokens(model, 64, 128, split="eval"))
    >>> r.delta_loss, r["fvu"], r.loss_recovered_mean
    """
    from gsnb.core.data import special_token_mask

    saes, single = _as_named(sae_or_suite)
    if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"tokens must be integer ids [n_windows, seq_len], got {tokens.dtype} "
            f"{tuple(tokens.shape)}: tokenise with gsnb.core.data.token_windows"
        )
    if tokens.shape[1] < 2:
        raise ValueError("windows need at least 2 tokens to score next-token predictions")
    for sae in saes.values():
        sae.check_model(model)
    sites = sorted({s for sae in saes.values() for s in (sae.site_in, sae.site_out)})
    outs = sorted({sae.site_out for sae in saes.values()})
    means = _site_means(model, outs, tokens, batch_size, progress) if ablations else {}
    ablated = {site: [0.0, 0.0] for site in means}  # site -> summed CE [zeros, mean]
    acc = {name: _Sums(sae.d_sae) for name, sae in saes.items()}
    ce_clean = 0.0
    n_pred = 0
    starts = range(0, len(tokens), batch_size)
    with torch.no_grad():
        for start in tqdm(starts, desc="evaluate", unit="batch", disable=not progress):
            batch = tokens[start : start + batch_size].to(model.device)
            keep = ~special_token_mask(batch, model)  # [batch, pos]
            logits, cache = model.run_with_cache(batch, sites)
            ce_clean += _cross_entropy(logits, batch)
            n_pred += batch[:, 1:].numel()
            for site, mean in means.items():
                for i, fill in enumerate((torch.zeros_like(mean), mean)):
                    ablated[site][i] += _ablated_ce(model, batch, site, fill, keep)
            for name, sae in saes.items():
                acc[name].add_reconstruction(
                    sae, cache[sae.site_in][keep], cache[sae.site_out][keep]
                )
                with splice(model, sae, positions=keep):
                    spliced = model(batch)
                ce, kl = _ce_kl(logits, spliced, batch)
                acc[name].ce += ce
                acc[name].kl += kl
    results = {
        name: a.result(ce_clean / n_pred, n_pred, ablated.get(saes[name].site_out))
        for name, a in acc.items()
    }
    return next(iter(results.values())) if single else results


def _site_means(
    model, sites: list[str], tokens: torch.Tensor, batch_size: int, progress: bool
) -> dict[str, torch.Tensor]:
    """``{site: [width]}`` mean of each site over the non-special positions of ``tokens``, from
    forward passes stopped after the deepest site."""
    from gsnb.core.data import special_token_mask

    sums: dict[str, torch.Tensor] = {}
    n = 0
    starts = range(0, len(tokens), batch_size)
    with torch.no_grad():
        for start in tqdm(starts, desc="site means", unit="batch", disable=not progress):
            batch = tokens[start : start + batch_size].to(model.device)
            keep = ~special_token_mask(batch, model)  # [batch, pos]
            _, cache = model.run_with_cache(batch, sites, stop_early=True)
            n += int(keep.sum())
            for site in sites:
                total = cache[site][keep].double().sum(0)  # [width]
                sums[site] = sums[site] + total if site in sums else total
    if n == 0:
        raise ValueError("no tokens to evaluate besides special ones: pass longer windows")
    return {site: total / n for site, total in sums.items()}


def _ablated_ce(
    model, tokens: torch.Tensor, site: str, fill: torch.Tensor, positions: torch.Tensor
) -> float:
    """Summed next-token cross-entropy of ``tokens`` ``[batch, pos]`` with ``site`` replaced by
    ``fill`` ``[width]`` where ``positions`` ``[batch, pos]`` is True."""

    def replace(value: torch.Tensor) -> torch.Tensor:
        return _at_positions(positions, fill.to(value.device, value.dtype).expand_as(value), value)

    with model.hooks({site: replace}):
        logits = model(tokens)
    return _cross_entropy(logits, tokens)


def _cross_entropy(logits: torch.Tensor, tokens: torch.Tensor) -> float:
    """Summed next-token cross-entropy; one window at a time (see :func:`_ce_kl`)."""
    ce = 0.0
    for row in range(len(tokens)):
        logp = F.log_softmax(logits[row, :-1].float(), dim=-1)  # [pos - 1, vocab]
        ce -= float(logp.gather(-1, tokens[row, 1:, None]).sum())
    return ce


def _recovered(ablated: float, spliced: float, clean: float) -> float:
    """``(ablated - spliced) / (ablated - clean)``; nan when not measured or when ablating
    changes nothing."""
    gap = ablated - clean
    return (ablated - spliced) / gap if gap != 0 and not math.isnan(gap) else _NAN


def _ce_kl(clean: torch.Tensor, spliced: torch.Tensor, tokens: torch.Tensor) -> tuple[float, float]:
    """Summed next-token cross-entropy of ``spliced`` and ``KL(clean || spliced)`` over all
    predictions; logits ``[batch, pos, vocab]``. One window at a time, since a vocabulary of 262k
    makes whole-batch log-probabilities large."""
    ce = kl = 0.0
    for row in range(len(tokens)):
        logp_clean = F.log_softmax(clean[row, :-1].float(), dim=-1)  # [pos - 1, vocab]
        logp = F.log_softmax(spliced[row, :-1].float(), dim=-1)
        ce -= float(logp.gather(-1, tokens[row, 1:, None]).sum())
        kl += float((logp_clean.exp() * (logp_clean - logp)).sum())
    return ce, kl


class _Sums:
    """Running sums for one SAE (float64, so long evaluations do not lose precision)."""

    def __init__(self, d_sae: int):
        self.n = 0
        self.active = 0.0
        self.sq_err = 0.0
        self.sum_x: torch.Tensor | float = 0.0
        self.sum_sq = 0.0
        self.fired = torch.zeros(d_sae, dtype=torch.bool)
        self.ce = 0.0
        self.kl = 0.0

    def add_reconstruction(self, sae: JumpReLUSAE, x_in: torch.Tensor, x_out: torch.Tensor):
        x_in = x_in.to(sae.W_enc.device, torch.float32)
        x_out = x_out.to(sae.W_enc.device, torch.float64)
        f = sae.encode(x_in)  # [tokens, d_sae]
        x_hat = sae.decode(f)
        if sae.W_skip is not None:
            x_hat = x_hat + x_in @ sae.W_skip
        active = f > 0
        self.n += len(x_in)
        self.active += float(active.sum())
        self.fired |= active.any(0).cpu()
        self.sq_err += float((x_out - x_hat.double()).pow(2).sum())
        self.sum_x = self.sum_x + x_out.sum(0)
        self.sum_sq += float(x_out.pow(2).sum())

    def result(self, ce_clean: float, n_pred: int, ablated: list[float] | None) -> EvalResult:
        """The metrics, given the clean and the ``[zero, mean]`` ablated CE sums over
        ``n_pred`` predictions (None: not measured)."""
        if self.n == 0:
            raise ValueError("no tokens to evaluate besides special ones: pass longer windows")
        mean = self.sum_x / self.n
        variance = self.sum_sq - self.n * float(mean.pow(2).sum())
        fvu = self.sq_err / variance
        ce = self.ce / n_pred
        zero, mean_ablated = (t / n_pred for t in ablated) if ablated else (_NAN, _NAN)
        return EvalResult(
            l0=self.active / self.n,
            fvu=fvu,
            explained_variance=1.0 - fvu,
            dead_fraction=float((~self.fired).float().mean()),
            delta_loss=ce - ce_clean,
            kl=self.kl / n_pred,
            ce_clean=ce_clean,
            ce_spliced=ce,
            ce_zero_ablated=zero,
            ce_mean_ablated=mean_ablated,
            loss_recovered_zero=_recovered(zero, ce, ce_clean),
            loss_recovered_mean=_recovered(mean_ablated, ce, ce_clean),
            n_tokens=self.n,
        )


def _as_named(sae_or_suite) -> tuple[dict[str, JumpReLUSAE], bool]:
    if isinstance(sae_or_suite, JumpReLUSAE):
        return named(sae_or_suite), True
    saes = getattr(sae_or_suite, "saes", sae_or_suite)  # a SuiteResult
    if isinstance(saes, Mapping):
        by_name = dict(saes)
    elif isinstance(saes, (list, tuple)):
        by_name = named(saes)
    else:
        raise TypeError(
            f"evaluate takes a JumpReLUSAE, a dict or list of them, or a SuiteResult; "
            f"got {type(sae_or_suite).__name__}"
        )
    bad = [k for k, v in by_name.items() if not isinstance(v, JumpReLUSAE)]
    if bad or not by_name:
        raise TypeError(f"not JumpReLUSAEs: {bad or 'none given'}")
    return by_name, False
