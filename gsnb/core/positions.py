"""Where an intervention acts in the token sequence, and where a forward pass sits in it.

Positions are absolute indices into the sequence as fed (BOS is 0), so they stay right when
generation feeds one token at a time through a KV cache: :class:`Cursor` reads the cache's length
before each pass and turns absolute positions into indices within the pass.

>>> cursor = Cursor(prompt_length=5)
>>> cursor.select("generated", n=8)      # a prefill of 8 tokens: slice(5, 8)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gsnb.core.kv_cache import cached_length, find_cache

Positions = str | int | slice | Sequence[int]
"""Where an intervention acts: ``"all"``, ``"generated"`` (tokens after the prompt), an index, a
slice or a list of indices into the token sequence as fed (BOS is 0; left padding counts).
Negative indices count from the end of the sequence so far, so during generation ``-1`` is the
newest token at every step."""


def check_positions(positions: object) -> Positions:
    """``positions`` checked and normalised (a tensor or list becomes a tuple of ints)."""
    if isinstance(positions, str):
        if positions not in ("all", "generated"):
            raise ValueError(
                f"positions={positions!r} is not understood: use 'all', 'generated', an index, "
                "a slice or a list of indices"
            )
        return positions
    if isinstance(positions, torch.Tensor):
        positions = positions.reshape(-1).tolist()
    if isinstance(positions, int) and not isinstance(positions, bool):
        return positions
    if isinstance(positions, slice):
        if any(p is not None and not isinstance(p, int) for p in (positions.start, positions.stop)):
            raise TypeError(f"positions slice {positions} must have integer bounds")
        if positions.step is not None and (
            not isinstance(positions.step, int) or positions.step < 1
        ):
            raise ValueError(f"positions slice {positions} needs a positive step")
        return positions
    if isinstance(positions, Sequence) and all(
        isinstance(p, int) and not isinstance(p, bool) for p in positions
    ):
        return tuple(positions)
    raise TypeError(
        "positions must be 'all', 'generated', an int, a slice or a list of ints, "
        f"got {positions!r}"
    )


def describe_positions(positions: Positions) -> str:
    """``""`` for ``"all"``, else ``", positions=..."`` (for reprs)."""
    return "" if positions == "all" else f", positions={positions!r}"


class Cursor:
    """Tracks the absolute position of the current forward pass (KV-cache aware).

    A pre-hook on the text model reads the length of the KV cache it is given (found by type, so
    renamed forward arguments don't matter) before the layers run. The prompt length for
    ``"generated"`` is given, or else taken from the length of the last forward pass that started
    with an empty cache (the prefill of a generation), as the first site of that pass sees it.
    """

    def __init__(self, prompt_length: int | None):
        self.fixed = prompt_length
        self.prompt_length = prompt_length
        self.offset = 0
        self.awaiting_prompt = False

    def pre_hook(self, _module, args, kwargs) -> None:
        self.offset = cached_length(find_cache(args, kwargs))
        if self.fixed is None and self.offset == 0:
            self.prompt_length, self.awaiting_prompt = None, True

    def select(self, positions: Positions, n: int) -> slice | list[int] | None:
        """Chunk-relative indices of ``positions`` in a pass of ``n`` tokens (``None``: none)."""
        if self.awaiting_prompt:  # the prefill: every position in it is the prompt's
            self.prompt_length, self.awaiting_prompt = n, False
        lo, hi = self.offset, self.offset + n
        if positions == "all":
            return slice(None)
        if positions == "generated":
            start = hi if self.prompt_length is None else max(self.prompt_length, lo)
            return _as_slice(start - lo, n)
        if isinstance(positions, slice):
            picked = range(hi)[positions]
            if picked.step == 1:
                return _as_slice(max(picked.start, lo) - lo, min(picked.stop, hi) - lo, n)
            absolute = list(picked)
        else:
            absolute = [positions] if isinstance(positions, int) else list(positions)
        rel = sorted({p + hi - lo if p < 0 else p - lo for p in absolute})
        rel = [p for p in rel if 0 <= p < n]
        if not rel:
            return None
        if rel == list(range(rel[0], rel[-1] + 1)):
            return _as_slice(rel[0], rel[-1] + 1, n)
        return rel


def _as_slice(start: int, stop: int, n: int | None = None) -> slice | None:
    n = stop if n is None else n
    if start >= stop:
        return None
    return slice(None) if start <= 0 and stop >= n else slice(start, stop)


def add_at(x: torch.Tensor, where: slice | list[int], delta: torch.Tensor) -> torch.Tensor:
    """``x [batch, pos, width]`` with ``delta`` added at positions ``where`` (not in place)."""
    delta = delta.to(x.dtype)
    if where == slice(None):
        return x + delta
    out = x.clone()
    out[:, where] = out[:, where] + delta
    return out
