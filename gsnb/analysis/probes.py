"""Linear probes: logistic regression on activations, the dense baseline SAE features are
measured against.

>>> probe = fit_probe(x_train, y_train)               # x [n, d], y [n] bool
>>> balanced_accuracy(probe.predict(x_test), y_test)
>>> probe.direction                                    # [d], in the activations' own space
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class LinearProbe(NamedTuple):
    """``logit = x · direction + bias``, a positive logit predicting the concept."""

    direction: torch.Tensor
    """``[d]`` weights in the space of the inputs (standardisation folded in)."""
    bias: float
    """The intercept."""

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``[n, d] -> [n]`` logits."""
        return x.float().cpu() @ self.direction + self.bias

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """``[n, d] -> [n]`` bool predictions."""
        return self.logits(x) > 0


def _check(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dim() != 2 or y.shape != (len(x),):
        raise ValueError(
            f"x must be [n, d] and y [n]; got x {tuple(x.shape)} and y {tuple(y.shape)}"
        )
    y = y.bool().cpu()
    if y.all() or not y.any():
        raise ValueError(
            f"y holds only one class ({int(y.sum())} positives of {len(y)}): a probe needs "
            "examples with and without the concept"
        )
    return x.detach().float().cpu(), y


def fit_probe(
    x: torch.Tensor, y: torch.Tensor, l2: float = 1e-3, steps: int = 100, balanced: bool = True
) -> LinearProbe:
    """Fit a logistic-regression probe for the labels ``y`` on the activations ``x``.

    Inputs are standardised per dimension (residual streams have a few huge dimensions), the
    loss is minimised with L-BFGS on the whole batch, and the scaling is folded back into
    ``direction``, so the probe applies to raw activations.

    Args:
        x: ``[n, d]`` activations.
        y: ``[n]`` bool labels, both classes present.
        l2: weight of ``|w|^2 / 2`` on the standardised weights.
        steps: L-BFGS iterations.
        balanced: weight the classes equally (a rare concept is otherwise ignored).

    Returns:
        A :class:`LinearProbe`.
    """
    x, y = _check(x, y)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    target = y.float()
    pos = float(target.mean())
    weight = torch.where(y, 0.5 / pos, 0.5 / (1 - pos)) if balanced else torch.ones(len(y))
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        opt.zero_grad()
        bce = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, target, weight)
        value = bce + 0.5 * l2 * w.square().sum()
        value.backward()
        return value

    opt.step(loss)
    w, b = w.detach(), float(b.detach())
    return LinearProbe(direction=w / std, bias=b - float((mean / std) @ w))


def balanced_accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    """The mean of the true-positive and true-negative rates of bool ``pred`` against ``y``
    (``[n]`` each): 0.5 for a constant guess whatever the class balance, 1 when all is right."""
    pred, y = pred.bool().cpu(), y.bool().cpu()
    if pred.shape != y.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and y {tuple(y.shape)} differ in shape")
    if y.all() or not y.any():
        raise ValueError("y holds only one class: balanced accuracy needs both")
    return 0.5 * (float(pred[y].float().mean()) + float((~pred[~y]).float().mean()))
