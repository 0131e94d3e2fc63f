"""Metrics: scalar functions of the logits that attribution explains and steering sweeps read.

A :data:`Metric` is any callable from logits ``[batch, pos, vocab]`` to a scalar tensor. The two
built in name tokens as text or ids; :meth:`TokenMetric.resolve` turns text into ids with a
model's tokenizer (the attribution entry points do this for you).

>>> metric = logit_diff(" Paris", " London").resolve(model)
>>> metric(model("The Eiffel Tower is in"))      # a scalar tensor
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from gsnb.core.model import Model

Metric = Callable[[torch.Tensor], torch.Tensor]
"""A function from logits ``[batch, pos, vocab]`` to a scalar tensor (differentiable)."""


def token_id(model: Model, token: int | str) -> int:
    """The id of ``token``: a single-token string (mind the leading space) or an id, checked
    against the vocabulary."""
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
class TokenMetric:
    """A metric on some tokens' logits at position ``pos``; tokens are ids or strings until
    :meth:`resolve` turns the strings into ids."""

    tokens: tuple[int | str, ...]
    pos: int = -1

    def resolve(self, model: Model) -> TokenMetric:
        """The same metric with string tokens turned into ids by ``model``'s tokenizer."""
        return type(self)(tuple(token_id(model, t) for t in self.tokens), self.pos)

    def _ids(self) -> tuple[int, ...]:
        if not all(isinstance(t, int) for t in self.tokens):
            raise ValueError(
                f"{self!r} names tokens as strings; resolve them first: metric.resolve(model) "
                "(attribute() and friends do this for you)"
            )
        return self.tokens  # type: ignore[return-value]


class LogitDiff(TokenMetric):
    """``logits[:, pos, a] - logits[:, pos, b]`` summed over the batch; ``tokens = (a, b)``."""

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        a, b = self._ids()
        return (logits[:, self.pos, a] - logits[:, self.pos, b]).sum()


class LogProb(TokenMetric):
    """``log_softmax(logits[:, pos])[token]`` summed over the batch; ``tokens = (token,)``."""

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        (token,) = self._ids()
        return torch.log_softmax(logits[:, self.pos].float(), dim=-1)[:, token].sum()


def logit_diff(a: int | str, b: int | str, pos: int = -1) -> Metric:
    """Metric ``logits[:, pos, a] - logits[:, pos, b]``, summed over the batch.

    Tokens are ids or single-token strings (resolved with the model's tokenizer).

    >>> metric = logit_diff(" Paris", " London")
    """
    return LogitDiff((a, b), pos)


def logprob(token: int | str, pos: int = -1) -> Metric:
    """Metric ``log_softmax(logits[:, pos])[token]``, summed over the batch."""
    return LogProb((token,), pos)


def bind_metric(metric: Metric, model: Model) -> Metric:
    """``metric`` ready for ``model``: token metrics resolved, anything else checked callable."""
    if isinstance(metric, TokenMetric):
        return metric.resolve(model)
    if not callable(metric):
        raise TypeError(
            f"metric must be a callable logits [batch, pos, vocab] -> scalar, got {metric!r}"
        )
    return metric


def call_metric(metric: Metric, logits: torch.Tensor) -> torch.Tensor:
    """``metric(logits)`` as a 0-d tensor; anything but one value is refused."""
    value = metric(logits)
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"the metric returned {got}; it must return a scalar tensor (use .sum())")
    return value.reshape(())
