"""Which SAE features drive a metric: gradient x activation, integrated gradients, attribution
patching, and direct logit attribution.

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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import torch

from gsnb.analysis.steering import _check_device, _check_features, _check_sae
from gsnb.core.gemma import Gemma

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from gsnb.core.model import Model
    from gsnb.saes.sae import JumpReLUSAE

Metric = Callable[[torch.Tensor], torch.Tensor]
"""A function from logits ``[batch, pos, vocab]`` to a scalar tensor (differentiable)."""


# --- metrics -----------------------------------------------------------------------------------


def _token_id(model: Model, token: int | str) -> int:
    vocab = model.config.vocab_size
    if isinstance(token, str):
        ids = model.tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            pieces = [model.tokenizer.decode([i]) for i in ids]
            raise ValueError(
                f"{token!r} is {len(ids)} tokens {pieces}; a metric needs exactly one: pass a "
                "single token (mind the leading space, e.g. ' Paris') or its id"
            )
        return ids[0]
    if isinstance(token, int) and not isinstance(token, bool):
        if not 0 <= token < vocab:
            raise ValueError(f"token id {token} is outside the vocabulary 0..{vocab - 1}")
        return token
    raise TypeError(f"a token is a string or an int id, got {type(token).__name__}")


@dataclass(frozen=True)
class _TokenMetric:
    tokens: tuple[int | str, ...]
    pos: int = -1

    def resolve(self, model: Model) -> _TokenMetric:
        """The same metric with string tokens turned into ids by ``model``'s tokenizer."""
        return type(self)(tuple(_token_id(model, t) for t in self.tokens), self.pos)

    def _ids(self) -> tuple[int, ...]:
        if not all(isinstance(t, int) for t in self.tokens):
            raise ValueError(
                f"{self!r} names tokens as strings; resolve them first: metric.resolve(model) "
                "(attribute() and friends do this for you)"
            )
        return self.tokens  # type: ignore[return-value]


class _LogitDiff(_TokenMetric):
    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        a, b = self._ids()
        return (logits[:, self.pos, a] - logits[:, self.pos, b]).sum()


class _LogProb(_TokenMetric):
    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        (token,) = self._ids()
        return torch.log_softmax(logits[:, self.pos].float(), dim=-1)[:, token].sum()


def logit_diff(a: int | str, b: int | str, pos: int = -1) -> Metric:
    """Metric ``logits[:, pos, a] - logits[:, pos, b]``, summed over the batch.

    Tokens are ids or single-token strings (resolved with the model's tokenizer).

    >>> metric = logit_diff(" Paris", " London")
    """
    return _LogitDiff((a, b), pos)


def logprob(token: int | str, pos: int = -1) -> Metric:
    """Metric ``log_softmax(logits[:, pos])[token]``, summed over the batch."""
    return _LogProb((token,), pos)


def _bind_metric(metric: Metric, model: Model) -> Metric:
    if isinstance(metric, _TokenMetric):
        return metric.resolve(model)
    if not callable(metric):
        raise TypeError(
            f"metric must be a callable logits [batch, pos, vocab] -> scalar, got {metric!r}"
        )
    return metric


def _call_metric(metric: Metric, logits: torch.Tensor) -> torch.Tensor:
    value = metric(logits)
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"the metric returned {got}; it must return a scalar tensor (use .sum())")
    return value.reshape(())


# --- the node function ---------------------------------------------------------------------------


def _sae_name(sae: JumpReLUSAE) -> str:
    return sae.site_in if not sae.is_transcoder else f"{sae.site_in}->{sae.site_out}"


def _check_saes(model: Model, saes) -> list[JumpReLUSAE]:
    saes = [saes] if not isinstance(saes, Sequence) else list(saes)
    if not saes:
        raise ValueError("no SAEs given: pass one SAE or a list of them")
    writes: dict[str, str] = {}
    for sae in saes:
        _check_sae(sae)
        sae.check_model(model)
        _check_device(sae, model)
        if sae.site_out in writes:
            raise ValueError(
                f"{_sae_name(sae)} and {writes[sae.site_out]} both write {sae.site_out}; "
                "attribute them in separate calls"
            )
        writes[sae.site_out] = _sae_name(sae)
    return saes


def _prompt_tokens(model: Model, prompt) -> torch.Tensor:
    tokens = model._as_tokens(prompt)
    if tokens.shape[0] != 1:
        raise ValueError(f"attribution takes one prompt, got a batch of {tokens.shape[0]}")
    return tokens


@torch.no_grad()
def _clean_nodes(
    model: Model, saes: list[JumpReLUSAE], tokens: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Logits ``[1, pos, vocab]``, features ``[pos, d_sae]`` and errors ``[pos, d_out]`` per SAE."""
    sites = sorted({s for sae in saes for s in (sae.site_in, sae.site_out)})
    logits, cache = model.run_with_cache(tokens, sites)
    feats, errors = [], []
    for sae in saes:
        f = sae.encode(cache[sae.site_in][0])
        feats.append(f)
        errors.append(cache[sae.site_out][0].to(f.dtype) - sae.decode(f))
    return logits, feats, errors


def _node_metric(
    model: Model,
    saes: list[JumpReLUSAE],
    tokens: torch.Tensor,
    feats: list[torch.Tensor],
    errors: list[torch.Tensor],
    metric: Metric,
) -> torch.Tensor:
    """Sum over rows of the metric with every SAE site set to ``decode(f) + e``.

    ``feats[i] [rows, pos, d_sae]`` and ``errors[i] [rows, pos, d_out]``; each row is its own
    forward pass in one batch, and the metric sees each row alone so its own batch reduction
    cannot mix rows.
    """
    rows = feats[0].shape[0]

    def setter(sae, f, e):
        return lambda x: sae.decode(f) + e

    fns = {sae.site_out: setter(sae, f, e) for sae, f, e in zip(saes, feats, errors, strict=True)}
    with model.hooks(fns):
        logits = model.hf(input_ids=tokens.expand(rows, -1), use_cache=False).logits
    return sum(_call_metric(metric, logits[r : r + 1]) for r in range(rows))


def _grads(
    model: Model,
    saes: list[JumpReLUSAE],
    tokens: torch.Tensor,
    feats: list[torch.Tensor],
    errors: list[torch.Tensor],
    metric: Metric,
    alphas: torch.Tensor,
    batch_size: int,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Sum over ``alphas`` of d metric / d node at features ``alpha * f`` and errors ``e``.

    ``feats[i] [pos, d_sae]`` and ``errors[i] [pos, d_out]``; returns gradients of the same
    shapes.
    """
    grad_f = [torch.zeros_like(f) for f in feats]
    grad_e = [torch.zeros_like(e) for e in errors]
    for chunk in alphas.split(batch_size):
        scale = chunk.to(feats[0])[:, None, None]
        with torch.enable_grad():
            leaves_f = [(scale * f).requires_grad_() for f in feats]
            leaves_e = [e.expand(len(chunk), -1, -1).clone().requires_grad_() for e in errors]
            total = _node_metric(model, saes, tokens, leaves_f, leaves_e, metric)
            # autograd.grad, not backward(): the model's parameters get no .grad left behind.
            grads = torch.autograd.grad(total, leaves_f + leaves_e, allow_unused=True)
        for i, g in enumerate(grads):
            if g is not None:
                (grad_f + grad_e)[i].add_(g.sum(0))
    return grad_f, grad_e


# --- results ------------------------------------------------------------------------------------


class Table:
    """A small table of named-tuple rows; prints as text and shows as HTML in a notebook."""

    def __init__(self, rows: list[tuple], title: str = ""):
        self.rows = rows
        self.title = title

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, i):
        return self.rows[i]

    def _cells(self) -> tuple[list[str], list[list[str]]]:
        fields = list(self.rows[0]._fields) if self.rows else []

        def fmt(v) -> str:
            if isinstance(v, float):
                return f"{v + 0.0:.4g}"  # + 0.0 turns -0.0 (inactive features) into 0
            return "error" if v is None else str(v) if not isinstance(v, str) else repr(v)

        return fields, [[fmt(v) for v in row] for row in self.rows]

    def __repr__(self) -> str:
        fields, cells = self._cells()
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(fields)]
        lines = [self.title] if self.title else []
        lines.append("  ".join(h.ljust(w) for h, w in zip(fields, widths, strict=True)))
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        import html

        fields, cells = self._cells()
        head = "".join(f"<th>{html.escape(h)}</th>" for h in fields)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells
        )
        title = f"<b>{html.escape(self.title)}</b>" if self.title else ""
        return f"<div>{title}<table><tr>{head}</tr>{body}</table></div>"


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
                rows.append(
                    NodeRow(
                        name,
                        pos,
                        self.str_tokens[pos],
                        feat,
                        float(acts[pos, feat]),
                        float(flat[i]),
                    )
                )
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


def _result(method, model, tokens, saes, scores_f, scores_e, feats, errors, metric, base, steps):
    names = [_sae_name(s) for s in saes]
    return Attribution(
        method=method,
        str_tokens=model.to_str_tokens(tokens),
        features={n: s.detach() for n, s in zip(names, scores_f, strict=True)},
        errors={n: s.detach() for n, s in zip(names, scores_e, strict=True)},
        activations={n: f.detach() for n, f in zip(names, feats, strict=True)},
        error_norms={n: e.detach().norm(dim=-1) for n, e in zip(names, errors, strict=True)},
        metric=metric,
        baseline_metric=base,
        steps=steps,
    )


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
        :class:`Attribution` with ``features[name] [pos, d_sae]`` and ``errors[name] [pos]``.

    >>> attr = attribute(model, [sae], "The Eiffel Tower is in", logit_diff(" Paris", " Rome"))
    >>> attr.top(10)
    """
    if method not in ("grad", "ig"):
        raise ValueError(f"method={method!r}: use 'grad' or 'ig'")
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    saes = _check_saes(model, saes)
    metric = _bind_metric(metric, model)
    tokens = _prompt_tokens(model, prompt)
    logits, feats, errors = _clean_nodes(model, saes, tokens)
    clean = float(_call_metric(metric, logits))
    base = None
    if method == "grad":
        alphas, n = torch.ones(1), 1
    else:
        alphas, n = (torch.arange(steps) + 0.5) / steps, steps
        with torch.no_grad():
            zeros = [torch.zeros_like(f)[None] for f in feats]
            held = [e[None] for e in errors]
            base = float(_node_metric(model, saes, tokens, zeros, held, metric))
    grad_f, grad_e = _grads(model, saes, tokens, feats, errors, metric, alphas, batch_size)
    scores_f = [f * g / n for f, g in zip(feats, grad_f, strict=True)]
    if method == "grad":
        scores_e = [(e * g).sum(-1) for e, g in zip(errors, grad_e, strict=True)]
    else:  # held fixed along the IG path, so they contribute nothing to the integral
        scores_e = [torch.zeros(e.shape[0], device=e.device) for e in errors]
    return _result(
        method,
        model,
        tokens,
        saes,
        scores_f,
        scores_e,
        feats,
        errors,
        clean,
        base,
        n if base is not None else None,
    )


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
    saes = _check_saes(model, saes)
    metric = _bind_metric(metric, model)
    clean_tokens = _prompt_tokens(model, clean)
    corrupt_tokens = _prompt_tokens(model, corrupt)
    if clean_tokens.shape != corrupt_tokens.shape:
        raise ValueError(
            f"clean has {clean_tokens.shape[1]} tokens and corrupt {corrupt_tokens.shape[1]}; "
            "attribution patching pairs positions, so use prompts of equal token length"
        )
    logits, feats, errors = _clean_nodes(model, saes, clean_tokens)
    corrupt_logits, feats_k, errors_k = _clean_nodes(model, saes, corrupt_tokens)
    grad_f, grad_e = _grads(
        model,
        saes,
        clean_tokens,
        feats,
        errors,
        metric,
        torch.ones(1),
        1,
    )
    scores_f = [(k - c) * g for k, c, g in zip(feats_k, feats, grad_f, strict=True)]
    scores_e = [((k - c) * g).sum(-1) for k, c, g in zip(errors_k, errors, grad_e, strict=True)]
    return _result(
        "patching",
        model,
        clean_tokens,
        saes,
        scores_f,
        scores_e,
        feats,
        errors,
        float(_call_metric(metric, logits)),
        float(_call_metric(metric, corrupt_logits)),
        None,
    )


# --- direct logit attribution -----------------------------------------------------------------


class LogitRow(NamedTuple):
    """One rank of a feature's logit effects: the token it promotes most and suppresses most."""

    feature: int
    rank: int
    promoted: str
    promoted_effect: float
    suppressed: str
    suppressed_effect: float


@dataclass
class LogitEffects:
    """Direct logit effects of SAE features (see :func:`direct_logit_attribution`)."""

    sae: str
    """SAE name."""
    features: list[int]
    """The features, in row order."""
    effects: torch.Tensor
    """``[n_features, vocab]`` logit change per unit of feature activation (norm scale omitted)."""
    decode: Callable[[list[int]], str] = field(repr=False)
    """Token id -> text (the tokenizer's decode)."""

    def top(self, k: int = 10) -> Table:
        """Per feature, the ``k`` most promoted and most suppressed tokens."""
        k = min(k, self.effects.shape[1])
        up = self.effects.topk(k, dim=-1)
        down = (-self.effects).topk(k, dim=-1)
        rows = [
            LogitRow(
                feat,
                r,
                self.decode([int(up.indices[i, r])]),
                float(up.values[i, r]),
                self.decode([int(down.indices[i, r])]),
                -float(down.values[i, r]),
            )
            for i, feat in enumerate(self.features)
            for r in range(k)
        ]
        return Table(rows, f"direct logit effects of {self.sae} features")

    def figure(self, k: int = 10) -> go.Figure:
        """Per feature, bars for the ``k`` most promoted and suppressed tokens (plotly)."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        table = self.top(k)
        fig = make_subplots(
            rows=len(self.features), cols=1, subplot_titles=[f"feature {f}" for f in self.features]
        )
        for i, feat in enumerate(self.features):
            rows = [r for r in table if r.feature == feat]
            tokens = [repr(r.suppressed) for r in rows[::-1]] + [repr(r.promoted) for r in rows]
            values = [r.suppressed_effect for r in rows[::-1]] + [r.promoted_effect for r in rows]
            fig.add_trace(
                go.Bar(
                    x=tokens,
                    y=values,
                    marker_color=["#d62728" if v < 0 else "#1f77b4" for v in values],
                    showlegend=False,
                ),
                row=i + 1,
                col=1,
            )
        fig.update_layout(
            title=table.title, template="plotly_white", height=260 * len(self.features) + 80
        )
        return fig


@torch.no_grad()
def direct_logit_attribution(
    model: Model, sae: JumpReLUSAE, features: int | Sequence[int] | torch.Tensor
) -> LogitEffects:
    """Decoder rows through the final norm's gain and the unembedding: ``[n_features, vocab]``.

    ``effects = (W_dec[features] * (1 + final_norm.weight)) @ W_U.T``; for ``attn_out`` SAEs
    the rows first go through ``o_proj`` and the post-attention norm's gain.

    Honest about the approximation: RMSNorm divides by the residual's RMS at each position,
    which this omits (a positive per-position scale, so the ranking of tokens for one feature is
    exact for a direct write but the magnitudes are not logit changes), and the real direction
    also loses its component along the residual. It ignores every path through later layers,
    Gemma 2's logit softcapping, and for ``attn_out`` the post-attention norm's own RMS.
    """
    _check_sae(sae)
    sae.check_model(model)
    feats = list(_check_features(sae, features))
    if not feats:
        raise ValueError("no features given: pass a feature index or a list of them")
    rows = sae.W_dec.detach()[feats].to(model.device)  # [n, d_out]
    effects = Gemma(model).logit_effects(str(model.parse_site(sae.site_out)), rows)
    return LogitEffects(_sae_name(sae), feats, effects, model.tokenizer.decode)
