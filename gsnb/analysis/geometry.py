"""Decoder geometry: how feature directions sit relative to each other, within a dictionary and
across two dictionaries of the same site (feature splitting across widths).

Every function compares decoder rows by cosine, ``W_dec[i] · W_dec[j] / (|W_dec[i]| |W_dec[j]|)``,
in chunks, so a 16k × 16k comparison never holds the full matrix.

>>> nearest_features(sae, 84, k=5)                 # feature 84's closest neighbours
>>> max_cosines(sae.W_dec).values                  # each feature's closest other feature
>>> max_cosines(torch.randn(4096, 640)).values     # the same for random directions
>>> match_features(sae_4k, sae_16k).parent         # each 16k feature's closest 4k feature
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from gsnb.saes.sae import JumpReLUSAE


class Neighbours(NamedTuple):
    """Features and their decoder cosines, closest first (one row per query feature)."""

    ids: torch.Tensor
    """``[k]`` (or ``[n]``) feature ids."""
    cosines: torch.Tensor
    """``[k]`` (or ``[n]``) their cosines, in ``[-1, 1]``."""


class Match(NamedTuple):
    """For each feature of a child dictionary, its closest feature in a parent dictionary."""

    parent: torch.Tensor
    """``[d_child]`` parent feature ids."""
    cosine: torch.Tensor
    """``[d_child]`` the cosine between the two decoder rows."""


def _rows(directions: JumpReLUSAE | torch.Tensor) -> torch.Tensor:
    """Unit-norm rows ``[n, d]`` (float32, CPU) of an SAE's decoder or of a direction matrix."""
    rows = directions.W_dec if isinstance(directions, JumpReLUSAE) else directions
    if not isinstance(rows, torch.Tensor) or rows.dim() != 2:
        raise ValueError(
            "pass a JumpReLUSAE or a direction matrix [n, d]; got "
            f"{type(rows).__name__} {tuple(getattr(rows, 'shape', ()))}"
        )
    rows = rows.detach().float().cpu()
    return rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _same_width(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"directions of width {a.shape[1]} and {b.shape[1]} cannot be compared: use two "
            "dictionaries that write the same site (same decoder width)"
        )


@torch.no_grad()
def decoder_cosines(
    a: JumpReLUSAE | torch.Tensor, b: JumpReLUSAE | torch.Tensor | None = None
) -> torch.Tensor:
    """All cosines between the decoder rows of ``a`` and those of ``b`` (default ``a``).

    Returns:
        ``[n_a, n_b]``; for ``b=None`` the diagonal is 1 (each feature with itself).
    """
    rows_a = _rows(a)
    rows_b = rows_a if b is None else _rows(b)
    _same_width(rows_a, rows_b)
    return rows_a @ rows_b.T


@torch.no_grad()
def nearest_features(
    sae: JumpReLUSAE | torch.Tensor,
    feature: int,
    k: int = 10,
    other: JumpReLUSAE | torch.Tensor | None = None,
) -> Neighbours:
    """The ``k`` features whose decoder rows are closest in cosine to ``feature``'s.

    With ``other`` given they are features of ``other`` (a dictionary of the same site);
    otherwise of ``sae`` itself, leaving ``feature`` out.

    Returns:
        :class:`Neighbours` of ``[k]`` ids and cosines, highest cosine first.
    """
    rows = _rows(sae)
    if not 0 <= feature < len(rows):
        raise ValueError(f"feature must be in [0, {len(rows)}), got {feature}")
    pool = rows if other is None else _rows(other)
    _same_width(rows, pool)
    cos = pool @ rows[feature]
    if other is None:
        cos[feature] = -float("inf")  # a feature is not its own neighbour
    k = min(k, len(pool) - (other is None))
    values, ids = cos.topk(k)
    return Neighbours(ids, values)


@torch.no_grad()
def _nearest_rows(
    rows_a: torch.Tensor, rows_b: torch.Tensor, exclude_self: bool, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each unit row of ``rows_a [n_a, d]``, its highest cosine with a row of ``rows_b
    [n_b, d]`` and that row's id, ``[n_a]`` each, taking ``chunk`` rows of ``a`` at a time."""
    values = torch.empty(len(rows_a))
    ids = torch.empty(len(rows_a), dtype=torch.long)
    for start in range(0, len(rows_a), chunk):
        cos = rows_a[start : start + chunk] @ rows_b.T  # [chunk, n_b]
        if exclude_self:
            here = torch.arange(start, start + len(cos))
            cos[here - start, here] = -float("inf")
        values[start : start + len(cos)], ids[start : start + len(cos)] = cos.max(dim=1)
    return values, ids


def max_cosines(directions: JumpReLUSAE | torch.Tensor, chunk: int = 2048) -> Neighbours:
    """Each feature's (or direction's) closest other one: ``[n]`` ids and cosines.

    Pass ``torch.randn(n, d)`` for a baseline: in ``d`` dimensions, ``n`` random directions
    have a typical maximum cosine that grows with ``n``; dictionary features much above it
    point in nearly the same direction as another feature.
    """
    rows = _rows(directions)
    if len(rows) < 2:
        raise ValueError(f"need at least 2 directions to compare, got {len(rows)}")
    values, ids = _nearest_rows(rows, rows, exclude_self=True, chunk=chunk)
    return Neighbours(ids, values)


def match_features(
    parent: JumpReLUSAE | torch.Tensor, child: JumpReLUSAE | torch.Tensor, chunk: int = 2048
) -> Match:
    """Match every feature of ``child`` (say a 16k SAE) to its closest ``parent`` feature (a 4k
    SAE of the same site) by decoder cosine.

    A parent feature's *children* are the child features matched to it with a high cosine
    (``(match.parent == f) & (match.cosine > 0.5)``): when a dictionary widens, a feature
    tends to split into several narrower ones that point near it.

    Returns:
        :class:`Match` of ``[d_child]`` parent ids and cosines.
    """
    rows_p, rows_c = _rows(parent), _rows(child)
    _same_width(rows_p, rows_c)
    values, ids = _nearest_rows(rows_c, rows_p, exclude_self=False, chunk=chunk)
    return Match(ids, values)
