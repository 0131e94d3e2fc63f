"""The linear probe reaches the optimum of its loss (the gradient, written out by hand, vanishes
there), recovers a planted direction, and balanced accuracy counts as defined."""

from __future__ import annotations

import pytest
import torch

from gsnb.analysis.probes import balanced_accuracy, fit_probe


def planted(n: int, d: int = 20, seed: int = 0, positive_share: float = 0.2):
    """Activations with wildly different scales per dimension and labels from one direction."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.logspace(-1, 2, d)
    x = torch.randn(n, d, generator=g) * scale + 3.0
    true = torch.randn(d, generator=g) / scale
    score = (x - 3.0) @ true
    y = score > torch.quantile(score, 1 - positive_share)
    return x, y, true


def test_probe_gradient_vanishes_at_the_fit():
    x, y, _ = planted(400, seed=1)
    y = y ^ (torch.rand(400, generator=torch.Generator().manual_seed(2)) < 0.1)  # not separable
    l2 = 1e-2
    probe = fit_probe(x, y, l2=l2, steps=200)
    # The loss lives on standardised inputs; its gradient there, in float64, by hand.
    x64 = x.double()
    mean, std = x64.mean(0), x64.std(0)
    z = (x64 - mean) / std
    w = probe.direction.double() * std
    b = probe.bias + float((mean / std) @ w)
    pos = y.double().mean()
    weight = torch.where(y, 0.5 / pos, 0.5 / (1 - pos)).double()
    residual = weight * (torch.sigmoid(z @ w + b) - y.double()) / len(y)
    grad_w = z.T @ residual + l2 * w
    grad_b = residual.sum()
    assert grad_w.abs().max() < 1e-3 and abs(grad_b) < 1e-3
    # The folded probe on raw inputs equals the standardised one.
    assert torch.allclose(probe.logits(x).double(), z @ w + b, atol=1e-3)


def test_probe_recovers_a_planted_direction_on_held_out_data():
    x, y, true = planted(2000, seed=3)
    probe = fit_probe(x[:1500], y[:1500])
    assert balanced_accuracy(probe.predict(x[1500:]), y[1500:]) > 0.95
    cos = torch.nn.functional.cosine_similarity(probe.direction, true, dim=0)
    assert cos > 0.9


def test_balanced_accuracy_is_the_mean_of_the_two_class_rates():
    y = torch.tensor([True, True, False, False, False, False])
    pred = torch.tensor([True, False, False, False, False, True])
    assert balanced_accuracy(pred, y) == pytest.approx(0.5 * (1 / 2 + 3 / 4))
    assert balanced_accuracy(torch.zeros(6, dtype=torch.bool), y) == 0.5


def test_bad_input_is_refused_with_the_fix():
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match="only one class"):
        fit_probe(x, torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"x must be \[n, d\]"):
        fit_probe(x, torch.ones(4, dtype=torch.bool))
