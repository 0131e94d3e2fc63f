"""Names of a trained suite's SAEs in Gemma Scope 2's layout: ``{kind}_all/layer_{L}_width_{W}
_l0_{label}``, the label earned by the L0 each SAE reached.

Gemma Scope 2 labels its SAEs by average L0: small about 10-20, medium about 30-60, big about
90-150. :func:`l0_label` puts the boundaries at the geometric midpoints of the gaps between those
ranges, ``sqrt(20 * 30) ~ 24.5`` and ``sqrt(60 * 90) ~ 73.5``, so every L0 gets the label of the
range it is nearest to on a log scale (below 10 is still small, above 150 still big).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

SUITE_KINDS = ("resid_post", "attn_out", "mlp_out", "transcoder")
"""Kinds of target a suite saves in Gemma Scope 2's layout, each in its ``{kind}_all`` folder."""

L0_LABELS: dict[str, tuple[float, float]] = {
    "small": (10, 20),
    "medium": (30, 60),
    "big": (90, 150),
}
"""Gemma Scope 2's L0 labels and the average L0s they stand for."""


def l0_label(l0: float) -> str:
    """Gemma Scope 2's label for an average L0 (see the module docstring for the rule).

    >>> l0_label(16.0), l0_label(40.0), l0_label(130.0)
    ('small', 'medium', 'big')
    """
    if not l0 >= 0:
        raise ValueError(f"l0={l0!r}: an average L0 is a number >= 0")
    small_hi, medium_lo = L0_LABELS["small"][1], L0_LABELS["medium"][0]
    medium_hi, big_lo = L0_LABELS["medium"][1], L0_LABELS["big"][0]
    if l0 < math.sqrt(small_hi * medium_lo):
        return "small"
    return "medium" if l0 < math.sqrt(medium_hi * big_lo) else "big"


def measured_l0(history: Sequence) -> float | None:
    """Average L0 over the last tenth of a training history (rows with an ``l0`` field, or
    ``[step, loss, mse, l0, fvu]`` lists); ``None`` for an empty history."""
    late = [row[3] for row in history[-max(1, len(history) // 10) :]]
    return sum(late) / len(late) if late else None


def suite_id(name: str, d_sae: int, l0_label: str = "small") -> str:
    """Gemma Scope 2 id of a trained target, the width a plain number of features:
    ``suite_id("transcoder.3", 4096) == "transcoder_all/layer_3_width_4096_l0_small"``."""
    kind, _, layer = name.partition(".")
    if kind not in SUITE_KINDS or not layer.isdigit():
        raise ValueError(
            f"{name!r} has no Gemma Scope 2 folder: they hold {', '.join(SUITE_KINDS)}"
        )
    return f"{kind}_all/layer_{layer}_width_{d_sae}_l0_{l0_label}"
