"""Direct logit effects of SAE features: the tokens a feature's decoder row promotes and
suppresses through the final norm's gain and the unembedding.

One computation, :meth:`gsnb.core.gemma.Gemma.logit_effects` (decoder rows ``[n, d_out]`` to
effects ``[n, vocab]``), ranked by one function, :func:`rank_logits`; one type for one
feature's result, :class:`LogitEffects`. :func:`gsnb.feature_stats` stores the ranks of every
feature (:func:`feature_logit_ranks`); :func:`direct_logit_attribution` keeps the full effects of
a few.

>>> dla = direct_logit_attribution(model, sae, [12, 40])
>>> dla.effects.shape                 # [2, vocab]
>>> dla.logit_effects(12).top_tokens  # the tokens feature 12 promotes most
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import torch

from gsnb.analysis.tables import Table
from gsnb.core.dictionary import check_dictionary, check_features
from gsnb.core.gemma import WRITES_TO_RESIDUAL, Gemma

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from gsnb.core.model import Model
    from gsnb.saes.sae import JumpReLUSAE


class LogitEffects(NamedTuple):
    """Tokens a feature's decoder row promotes (top, descending) and suppresses (bottom, most
    negative first), with their logit effects."""

    top_tokens: list[str]
    top_values: list[float]
    bottom_tokens: list[str]
    bottom_values: list[float]
    top_ids: list[int]
    bottom_ids: list[int]

    @classmethod
    def from_ranks(
        cls, ranks: LogitRanks, row: int, k: int, text: Callable[[int], str]
    ) -> LogitEffects:
        """Row ``row`` of ``ranks``, its first ``k`` tokens, named by ``text(token_id)``."""
        top, bottom = ranks.top_ids[row, :k].tolist(), ranks.bottom_ids[row, :k].tolist()
        return cls(
            [text(t) for t in top], ranks.top_values[row, :k].tolist(),
            [text(t) for t in bottom], ranks.bottom_values[row, :k].tolist(),
            top, bottom,
        )  # fmt: skip


class LogitRanks(NamedTuple):
    """Per feature, the ``k`` tokens with the largest and the smallest effects, each ``[n, k]``
    (ids long, values float32); ``k`` is 0 where none were computed."""

    top_ids: torch.Tensor
    top_values: torch.Tensor
    bottom_ids: torch.Tensor
    bottom_values: torch.Tensor


def rank_logits(effects: torch.Tensor, k: int) -> LogitRanks:
    """The ``k`` largest (descending) and smallest (ascending) entries of each row of
    ``effects [n, vocab]``."""
    k = min(k, effects.shape[1])
    top = effects.topk(k, dim=1)
    bottom = effects.topk(k, dim=1, largest=False)
    return LogitRanks(top.indices, top.values, bottom.indices, bottom.values)


@torch.no_grad()
def feature_logit_ranks(model: Model, sae: JumpReLUSAE, k: int, chunk: int = 256) -> LogitRanks:
    """:class:`LogitRanks` ``[d_sae, k]`` of every feature, on the CPU; 0 wide when ``k <= 0``
    or the SAE writes a site outside the residual stream.

    Works through the features ``chunk`` at a time: the full ``[d_sae, vocab]`` product of a 16k
    SAE and Gemma's 262k vocabulary would take 17 GB.
    """
    if k <= 0 or model.parse_site(sae.site_out).kind not in WRITES_TO_RESIDUAL:
        empty = [torch.zeros((sae.d_sae, 0), dtype=d) for d in (torch.long, torch.float32) * 2]
        return LogitRanks(*empty)
    gemma = Gemma(model)
    parts = []
    for i in range(0, sae.d_sae, chunk):
        effects = gemma.logit_effects(sae.site_out, sae.W_dec[i : i + chunk])  # [chunk, vocab]
        parts.append([t.cpu() for t in rank_logits(effects, k)])
    return LogitRanks(*(torch.cat(p) for p in zip(*parts, strict=True)))


class LogitRow(NamedTuple):
    """One rank of a feature's logit effects: the token it promotes most and suppresses most."""

    feature: int
    rank: int
    promoted: str
    promoted_effect: float
    suppressed: str
    suppressed_effect: float


@dataclass
class DirectLogitAttribution:
    """Direct logit effects of some SAE features (see :func:`direct_logit_attribution`)."""

    sae: str
    """SAE name (:attr:`gsnb.JumpReLUSAE.name`)."""
    features: list[int]
    """The features, in row order."""
    effects: torch.Tensor
    """``[n_features, vocab]`` logit change per unit of feature activation (norm scale omitted)."""
    decode: Callable[[list[int]], str] = field(repr=False)
    """Token ids -> text (the tokenizer's decode)."""

    def logit_effects(self, feature: int, k: int = 10) -> LogitEffects:
        """The ``k`` tokens whose logits ``feature`` raises and lowers most."""
        if feature not in self.features:
            raise IndexError(f"feature {feature} is not one of {self.features}")
        row = self.features.index(feature)
        ranks = rank_logits(self.effects[row : row + 1], k)
        return LogitEffects.from_ranks(ranks, 0, k, lambda t: self.decode([t]))

    def top(self, k: int = 10) -> Table:
        """Per feature, the ``k`` most promoted and most suppressed tokens."""
        rows = []
        for feat in self.features:
            fx = self.logit_effects(feat, k)
            ranked = zip(fx.top_tokens, fx.top_values, fx.bottom_tokens, fx.bottom_values)
            rows += [LogitRow(feat, r, *cells) for r, cells in enumerate(ranked)]
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
) -> DirectLogitAttribution:
    """Decoder rows through the final norm's gain and the unembedding: ``[n_features, vocab]``.

    ``effects = (W_dec[features] * (1 + final_norm.weight)) @ W_U.T``; for ``attn_out`` SAEs
    the rows first go through ``o_proj`` and the post-attention norm's gain.

    Honest about the approximation: RMSNorm divides by the residual's RMS at each position,
    which this omits (a positive per-position scale, so the ranking of tokens for one feature is
    exact for a direct write but the magnitudes are not logit changes), and the real direction
    also loses its component along the residual. It ignores every path through later layers,
    Gemma 2's logit softcapping, and for ``attn_out`` the post-attention norm's own RMS.

    >>> direct_logit_attribution(model, sae, [12, 40]).top(5)
    """
    check_dictionary(sae)
    sae.check_model(model)
    feats = list(check_features(sae, features))
    if not feats:
        raise ValueError("no features given: pass a feature index or a list of them")
    rows = sae.W_dec.detach()[feats].to(model.device)  # [n, d_out]
    effects = Gemma(model).logit_effects(str(model.parse_site(sae.site_out)), rows)
    return DirectLogitAttribution(sae.name, feats, effects, model.tokenizer.decode)
