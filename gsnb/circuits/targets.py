"""The output nodes an attribution graph explains: the model's top logits, or custom targets.

Every output node reads one direction ``v [d_model]`` at the last position of the unembedding's
input (the final norm's output, its scale frozen like every norm): its value is ``v · final``.
A top logit's direction is its demeaned unembedding row (so the node is the logit minus the mean
logit); a logit difference ``a - b`` reads ``W_U[a] - W_U[b]``; a custom direction is read as
given. These are circuit-tracer's semantics: its custom targets are such vectors too, injected at
the same place, and get virtual token ids ``vocab_size + i``, as here.

The unembedding is read where it lies, in its dtype: only the rows a target needs are copied (in
float32, to the CPU), and the mean row is summed over blocks of rows, so a bfloat16 unembedding
is never copied whole (Gemma's is its embedding, the largest matrix of the model).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch

from gsnb.analysis.metrics import LogitDiff, Metric, TokenMetric
from gsnb.core.gemma import unembedding_blocks

Target = Metric | torch.Tensor | Mapping[str, Metric | torch.Tensor]
"""What ``trace(target=...)`` takes: :func:`gsnb.logit_diff`, a direction ``[d_model]``, or a
dict label -> either."""


class OutputTargets(NamedTuple):
    """The output nodes of one graph."""

    tokens: torch.Tensor
    """``[n]`` token ids of top logits; ``vocab_size + i`` for custom target ``i``."""
    weights: torch.Tensor
    """``[n]`` their weights in influence: the logits' probabilities, or ``1 / n`` each for
    custom targets."""
    labels: list[str]
    """Their names: the tokens' text, or the custom targets' labels."""
    directions: torch.Tensor
    """``[n, d_model]`` what each reads at the final norm's output, last position."""


def unembedding_rows(W_U: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``[n, d_model]`` float32 rows ``ids [n]`` of ``W_U``, on the CPU."""
    return W_U[ids.to(W_U.device)].float().cpu()


def top_logits(
    model, W_U: torch.Tensor, logits: torch.Tensor, max_logits: int, logit_prob: float
) -> OutputTargets:
    """The top logits of ``logits [vocab]`` that cover ``logit_prob`` of the probability, at
    most ``max_logits`` of them, with ``W_U [vocab, d_model]`` (any dtype and device)."""
    top_p, top_ids = logits.softmax(-1).sort(descending=True)
    n = int(min(max_logits, (top_p.cumsum(0) < logit_prob).sum().item() + 1))
    ids = top_ids[:n]
    labels = [model.tokenizer.decode([int(t)]) for t in ids]
    mean = sum(block.sum(0) for block in unembedding_blocks(W_U, W_U.device)) / W_U.shape[0]
    return OutputTargets(ids, top_p[:n], labels, unembedding_rows(W_U, ids) - mean.cpu())


def custom_targets(model, W_U: torch.Tensor, target: Target) -> OutputTargets:
    """Output nodes for ``target``: :func:`gsnb.logit_diff` ``(a, b)`` at the last position, a
    direction ``[d_model]``, or a dict ``{label: either}`` for several nodes; ``W_U [vocab,
    d_model]`` in any dtype and device."""
    items = target.items() if isinstance(target, Mapping) else [(None, target)]
    labels, directions = [], []
    for label, spec in items:
        direction, name = _direction(model, W_U, spec)
        labels.append(name if label is None else str(label))
        directions.append(direction)
    if not directions:
        raise ValueError("target={} names no target: give at least one")
    n = len(directions)
    tokens = torch.arange(W_U.shape[0], W_U.shape[0] + n)
    return OutputTargets(tokens, torch.full((n,), 1.0 / n), labels, torch.stack(directions))


def _direction(model, W_U: torch.Tensor, spec) -> tuple[torch.Tensor, str]:
    """``(direction [d_model], default label)`` of one target."""
    d_model = W_U.shape[1]
    if isinstance(spec, LogitDiff):
        if spec.pos != -1:
            raise ValueError(
                f"{spec!r} reads position {spec.pos}; a graph's targets sit at the last "
                "position: use logit_diff(a, b) without pos, on a prompt that ends there"
            )
        a, b = spec.resolve(model).tokens
        text = [model.tokenizer.decode([t]) for t in (a, b)]
        rows = unembedding_rows(W_U, torch.tensor([a, b]))
        return rows[0] - rows[1], f"{text[0]} - {text[1]}"
    if isinstance(spec, TokenMetric):
        raise ValueError(
            f"{spec!r} is not linear in the residual stream, so it cannot be a graph's target: "
            "use gsnb.logit_diff(a, b) or a direction [d_model]"
        )
    if isinstance(spec, torch.Tensor):
        if spec.shape != (d_model,) or not torch.isfinite(spec).all():
            raise ValueError(
                f"a direction target must be a finite tensor [d_model={d_model}]; got shape "
                f"{tuple(spec.shape)}"
            )
        return spec.detach().float().cpu(), "direction"
    raise TypeError(
        f"target must be gsnb.logit_diff(a, b), a direction tensor [{d_model}] or a dict "
        f"label -> either; got {type(spec).__name__}"
    )
