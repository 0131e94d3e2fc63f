"""Which SAE features drive a metric: gradient x activation, integrated gradients and attribution
patching. (Direct logit attribution is :mod:`gsnb.analysis.logit_effects`; metrics are
:mod:`gsnb.analysis.metrics`; both are importable from here too.)

**Nodes.** Each SAE contributes its feature activations ``f [pos, d_sae]`` and one error node per
position, ``e [pos, d_out] = x_out - decode(f)`` (for a transcoder ``x_out`` is ``mlp_out.L``;
for a skip transcoder ``e`` also carries the skip path). Attribution treats every node as an input
of one *node function*: each SAE's output site is set to ``decode(f) + e`` from the nodes, so the
metric is a function of all nodes at once and equals the clean run at the clean nodes. One
consequence: a node's effect that passes through another given SAE's site is carried by that
SAE's nodes, never counted twice (with SAEs at ``resid_post.1`` and ``resid_post.2`` the layer-1
nodes score 0; attribute them one SAE at a time for total effects).

* ``grad``: ``node * d metric / d node`` at the clean nodes (one forward and backward pass).
* ``ig``: integrated gradients along ``alpha * f`` for the features of all SAEs jointly,
  ``alpha`` from 0 to 1, with every error node held at its clean value; midpoint rule with
  ``steps`` points. The baseline is "all features off": each SAE site holds
  ``b_dec + e``. Completeness: the feature attributions sum to
  ``metric(input) - metric(baseline)`` up to the quadrature error. Error nodes do not move along
  this path, so their IG attribution is 0 by definition (use ``grad`` or patching to score
  them). Why not scale the errors too: with both at 0 a resid_post site holds only ``b_dec``,
  and the RMSNorms downstream turn the path into a step at ``alpha ~ 0`` that no practical
  number of steps integrates.
* :func:`attribution_patching`: ``(node_corrupt - node_clean) * d metric / d node`` at clean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch

from gsnb.analysis.logit_effects import direct_logit_attribution
from gsnb.analysis.metrics import (
    Metric,
    bind_metric,
    call_metric,
    logit_diff,
    logprob,
)
from gsnb.analysis.tables import Table
from gsnb.core.dictionary import check_dictionary, check_same_device
from gsnb.saes.sae import named

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from gsnb.core.model import Model
    from gsnb.saes.sae import JumpReLUSAE

__all__ = [
    "Attribution",
    "Metric",
    "NodeRow",
    "attribute",
    "attribution_patching",
    "direct_logit_attribution",
    "logit_diff",
    "logprob",
]


# --- the node function ---------------------------------------------------------------------------


def _check_saes(model: Model, saes) -> dict[str, JumpReLUSAE]:
    """``{name: sae}`` of one SAE or a list, each checked against ``model``."""
    saes = [saes] if not isinstance(saes, Sequence) else list(saes)
    if not saes:
        raise ValueError("no SAEs given: pass one SAE or a list of them")
    writes: dict[str, str] = {}
    for sae in saes:
        check_dictionary(sae)
        sae.check_model(model)
        check_same_device(sae, model)
        if sae.site_out in writes:
            raise ValueError(
                f"{sae.name} and {writes[sae.site_out]} both write {sae.site_out}; "
                "attribute them in separate calls"
            )
        writes[sae.site_out] = sae.name
    return named(saes)


def _prompt_tokens(model: Model, prompt) -> torch.Tensor:
    tokens = model._as_tokens(prompt)
    if tokens.shape[0] != 1:
        raise ValueError(f"attribution takes one prompt, got a batch of {tokens.shape[0]}")
    return tokens


class _Nodes(NamedTuple):
    """Per SAE, in order: features ``[..., pos, d_sae]`` and errors ``[..., pos, d_out]`` (or
    scores of the same layout)."""

    features: list[torch.Tensor]
    errors: list[torch.Tensor]


@dataclass
class _NodeFunction:
    """The metric as a function of every node: each SAE's output site set to ``decode(f) + e``."""

    model: Model
    saes: list[JumpReLUSAE]
    tokens: torch.Tensor
    """``[1, pos]``."""
    metric: Metric

    @torch.no_grad()
    def clean(self) -> tuple[torch.Tensor, _Nodes]:
        """Logits ``[1, pos, vocab]`` and the clean nodes, ``[pos, ...]`` per SAE."""
        sites = sorted({s for sae in self.saes for s in (sae.site_in, sae.site_out)})
        logits, cache = self.model.run_with_cache(self.tokens, sites)
        feats, errors = [], []
        for sae in self.saes:
            f = sae.encode(cache[sae.site_in][0])
            feats.append(f)
            errors.append(cache[sae.site_out][0].to(f.dtype) - sae.decode(f))
        return logits, _Nodes(feats, errors)

    def __call__(self, nodes: _Nodes) -> torch.Tensor:
        """Sum over rows of the metric at ``nodes`` (``[rows, pos, ...]`` per SAE); each row is
        its own forward pass in one batch, and the metric sees each row alone so its own batch
        reduction cannot mix rows."""
        rows = nodes.features[0].shape[0]

        def setter(sae, f, e):
            return lambda x: sae.decode(f) + e

        fns = {
            sae.site_out: setter(sae, f, e)
            for sae, f, e in zip(self.saes, nodes.features, nodes.errors, strict=True)
        }
        with self.model.hooks(fns):
            tokens = self.tokens.expand(rows, -1)
            logits = self.model.hf(input_ids=tokens, use_cache=False).logits
        return sum(call_metric(self.metric, logits[r : r + 1]) for r in range(rows))

    def grads(self, nodes: _Nodes, alphas: torch.Tensor, batch_size: int) -> _Nodes:
        """Sum over ``alphas`` of d metric / d node at features ``alpha * f`` and errors ``e``
        (``nodes`` and the result ``[pos, ...]`` per SAE)."""
        feats, errors = nodes
        grad_f = [torch.zeros_like(f) for f in feats]
        grad_e = [torch.zeros_like(e) for e in errors]
        for chunk in alphas.split(batch_size):
            scale = chunk.to(feats[0])[:, None, None]
            with torch.enable_grad():
                leaves_f = [(scale * f).requires_grad_() for f in feats]
                leaves_e = [e.expand(len(chunk), -1, -1).clone().requires_grad_() for e in errors]
                total = self(_Nodes(leaves_f, leaves_e))
                # autograd.grad, not backward(): the model's parameters get no .grad left behind.
                grads = torch.autograd.grad(total, leaves_f + leaves_e, allow_unused=True)
            for i, g in enumerate(grads):
                if g is not None:
                    (grad_f + grad_e)[i].add_(g.sum(0))
        return _Nodes(grad_f, grad_e)


# --- results ------------------------------------------------------------------------------------


class NodeRow(NamedTuple):
    """One node of an attribution: a feature at a position, or an error node (``feature=None``)."""

    sae: str
    position: int
    token: str
    feature: int | None
    activation: float
    """Feature activation, or the error vector's norm for an error node."""
    attribution: float


@dataclass
class Attribution:
    """Attribution of a metric to every feature and error node of the given SAEs."""

    method: str
    """``"grad"``, ``"ig"`` or ``"patching"``."""
    str_tokens: list[str]
    """The prompt's tokens."""
    features: dict[str, torch.Tensor]
    """Per SAE name, feature attributions ``[pos, d_sae]`` (zero where a feature is inactive)."""
    errors: dict[str, torch.Tensor]
    """Per SAE name, error-node attributions ``[pos]``."""
    activations: dict[str, torch.Tensor]
    """Per SAE name, clean feature activations ``[pos, d_sae]``."""
    error_norms: dict[str, torch.Tensor]
    """Per SAE name, clean error norms ``[pos]``."""
    metric: float
    """The metric on the (clean) prompt."""
    baseline_metric: float | None = None
    """``ig``: the metric with all features 0 (errors kept); ``patching``: on the corrupt prompt;
    ``grad``: ``None``."""
    steps: int | None = None
    """Integration points for ``ig``."""

    @classmethod
    def of(
        cls, method: str, f: _NodeFunction, names: list[str], clean: _Nodes, scores: _Nodes, **kw
    ) -> Attribution:
        """The result for nodes ``clean`` scored ``scores`` (``[pos, ...]`` per SAE in ``names``
        order); ``kw`` sets ``metric``, ``baseline_metric``, ``steps``."""

        def by_name(tensors):
            return {n: t.detach() for n, t in zip(names, tensors, strict=True)}

        return cls(
            method=method,
            str_tokens=f.model.to_str_tokens(f.tokens),
            features=by_name(scores.features),
            errors=by_name(scores.errors),
            activations=by_name(clean.features),
            error_norms=by_name(e.norm(dim=-1) for e in clean.errors),
            **kw,
        )

    def total(self) -> float:
        """Sum of all attributions. ``ig``: about ``metric - baseline_metric``; ``patching``:
        a linear estimate of ``baseline_metric - metric``."""
        return float(
            sum(v.sum() for v in self.features.values())
            + sum(v.sum() for v in self.errors.values())
        )

    def top(self, k: int = 10) -> Table:
        """The ``k`` nodes with the largest absolute attribution, error nodes included."""
        rows: list[NodeRow] = []
        for name, scores in self.features.items():
            flat = scores.reshape(-1)
            n = min(k, int((flat != 0).sum()))
            if n == 0:
                continue
            idx = flat.abs().topk(n).indices
            d_sae = scores.shape[1]
            acts = self.activations[name]
            for i in idx.tolist():
                pos, feat = divmod(i, d_sae)
                token, act = self.str_tokens[pos], float(acts[pos, feat])
                rows.append(NodeRow(name, pos, token, feat, act, float(flat[i])))
        # IG holds error nodes fixed, so their zero scores carry no information.
        for name, scores in self.errors.items() if self.method != "ig" else ():
            for pos, value in enumerate(scores.tolist()):
                norm = float(self.error_norms[name][pos])
                rows.append(NodeRow(name, pos, self.str_tokens[pos], None, norm, value))
        rows.sort(key=lambda r: -abs(r.attribution))
        title = f"{self.method} attribution, metric {self.metric:.4g}"
        if self.baseline_metric is not None:
            title += f" (baseline {self.baseline_metric:.4g})"
        return Table(rows[:k], title)

    def figure(self, k: int = 20) -> go.Figure:
        """Bar chart of the top ``k`` nodes (plotly)."""
        import plotly.graph_objects as go

        rows = list(self.top(k))[::-1]
        labels = [
            f"{r.sae} {'err' if r.feature is None else f'f{r.feature}'} @{r.position} {r.token!r}"
            for r in rows
        ]
        values = [r.attribution for r in rows]
        fig = go.Figure(
            go.Bar(
                x=values,
                y=labels,
                orientation="h",
                marker_color=["#d62728" if v < 0 else "#1f77b4" for v in values],
            )
        )
        fig.update_layout(
            title=self.top(k).title,
            xaxis_title="attribution",
            template="plotly_white",
            height=max(300, 22 * len(rows) + 120),
        )
        return fig


# --- entry points ---------------------------------------------------------------------------------


def attribute(
    model: Model,
    saes: JumpReLUSAE | Sequence[JumpReLUSAE],
    prompt: str | torch.Tensor,
    metric: Metric,
    method: str = "grad",
    steps: int = 32,
    batch_size: int = 8,
) -> Attribution:
    """Attribute ``metric`` to every feature and error node of ``saes`` on one prompt.

    See the module docstring for the node function both methods differentiate.

    Args:
        saes: one SAE/transcoder or a list; no two may write the same site.
        prompt: a string or token ids ``[pos]`` / ``[1, pos]``.
        metric: :func:`logit_diff`, :func:`logprob`, or a callable logits
            ``[batch, pos, vocab]`` -> scalar.
        method: ``"grad"`` (gradient x activation) or ``"ig"`` (integrated gradients).
        steps: integration points for ``"ig"`` (midpoint rule; error falls as ``1/steps**2``).
        batch_size: integration points per forward pass.

    Returns:
        :class:`Attribution` with ``features[name] [pos, d_sae]`` and ``errors[name] [pos]``,
        keyed by :attr:`gsnb.JumpReLUSAE.name`.

    >>> attr = attribute(model, [sae], "The Eiffel Tower is in", logit_diff(" Paris", " Rome"))
    >>> attr.top(10)
    """
    if method not in ("grad", "ig"):
        raise ValueError(f"method={method!r}: use 'grad' or 'ig'")
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    by_name = _check_saes(model, saes)
    metric = bind_metric(metric, model)
    f = _NodeFunction(model, list(by_name.values()), _prompt_tokens(model, prompt), metric)
    logits, nodes = f.clean()
    clean = float(call_metric(metric, logits))
    if method == "grad":
        alphas, n, base = torch.ones(1), 1, None
    else:
        alphas, n = (torch.arange(steps) + 0.5) / steps, steps
        with torch.no_grad():
            zeros = [torch.zeros_like(x)[None] for x in nodes.features]
            base = float(f(_Nodes(zeros, [e[None] for e in nodes.errors])))
    grads = f.grads(nodes, alphas, batch_size)
    scores_f = [x * g / n for x, g in zip(nodes.features, grads.features, strict=True)]
    if method == "grad":
        scores_e = [(e * g).sum(-1) for e, g in zip(nodes.errors, grads.errors, strict=True)]
    else:  # held fixed along the IG path, so they contribute nothing to the integral
        scores_e = [torch.zeros(e.shape[0], device=e.device) for e in nodes.errors]
    return Attribution.of(
        method, f, list(by_name), nodes, _Nodes(scores_f, scores_e),
        metric=clean, baseline_metric=base, steps=n if base is not None else None,
    )  # fmt: skip


def attribution_patching(
    model: Model,
    saes: JumpReLUSAE | Sequence[JumpReLUSAE],
    clean: str | torch.Tensor,
    corrupt: str | torch.Tensor,
    metric: Metric,
) -> Attribution:
    """Estimate each node's patching effect: ``(a_corrupt - a_clean) * d metric / d a`` at clean.

    One forward pass per prompt and one backward pass; the linear estimate of how much the
    metric moves when that one node takes its value from ``corrupt``.

    Args:
        clean, corrupt: prompts with the same number of tokens (positions are paired).

    Returns:
        :class:`Attribution` (``method="patching"``) with ``baseline_metric`` the corrupt run's
        metric; ``features[name] [pos, d_sae]``, ``errors[name] [pos]``.
    """
    by_name = _check_saes(model, saes)
    metric = bind_metric(metric, model)
    clean_tokens = _prompt_tokens(model, clean)
    corrupt_tokens = _prompt_tokens(model, corrupt)
    if clean_tokens.shape != corrupt_tokens.shape:
        raise ValueError(
            f"clean has {clean_tokens.shape[1]} tokens and corrupt {corrupt_tokens.shape[1]}; "
            "attribution patching pairs positions, so use prompts of equal token length"
        )
    f = _NodeFunction(model, list(by_name.values()), clean_tokens, metric)
    logits, nodes = f.clean()
    corrupt_logits, other = _NodeFunction(model, f.saes, corrupt_tokens, metric).clean()
    grads = f.grads(nodes, torch.ones(1), 1)
    moves = _Nodes(  # corrupt minus clean, per node
        [k - c for k, c in zip(other.features, nodes.features, strict=True)],
        [k - c for k, c in zip(other.errors, nodes.errors, strict=True)],
    )
    scores = _Nodes(
        [d * g for d, g in zip(moves.features, grads.features, strict=True)],
        [(d * g).sum(-1) for d, g in zip(moves.errors, grads.errors, strict=True)],
    )
    return Attribution.of(
        "patching", f, list(by_name), nodes, scores,
        metric=float(call_metric(metric, logits)),
        baseline_metric=float(call_metric(metric, corrupt_logits)),
    )  # fmt: skip
