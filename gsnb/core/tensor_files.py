"""Reading tensors out of safetensors files straight into a target dtype and device.

A tensor is read in slices of its first dimension of at most :data:`CHUNK_BYTES`, each converted
and written into the one tensor allocated for the result: loading a float32 file in bfloat16
holds the bfloat16 result and one slice, never a float32 copy of the tensor.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

CHUNK_BYTES = 32 * 2**20
"""The most bytes of a file's tensor read (and held in the file's dtype) at once."""

_ITEM_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "F8_E4M3": 1, "F8_E5M2": 1}


def read_tensor(
    f,
    key: str,
    path: str | Path,
    dtype: torch.dtype,
    device: str | torch.device,
    index: tuple[slice, ...] = (),
) -> torch.Tensor:
    """``key`` of the open file ``f`` (``safetensors.safe_open(..., framework="pt")``), or its
    slice ``index`` (a tuple of slices, one per leading dimension), as ``dtype`` on ``device``.

    Raises:
        ValueError: the tensor holds NaN or infinite values (the file at ``path`` is damaged).
    """
    part = f.get_slice(key)
    shape = list(part.get_shape())
    if not shape:
        return _checked(f.get_tensor(key), key, path).to(device=device, dtype=dtype)
    index = tuple(index) + (slice(None),) * (len(shape) - len(index))
    first, rest = range(shape[0])[index[0]], index[1:]
    if first.step != 1:
        raise ValueError(f"read_tensor reads contiguous rows; got the slice {index[0]}")
    out_shape = [len(first)] + [len(range(n)[s]) for n, s in zip(shape[1:], rest)]
    out = torch.empty(out_shape, dtype=dtype, device=device)
    row_bytes = math.prod(out_shape[1:]) * _ITEM_BYTES.get(part.get_dtype(), 4)
    rows = max(1, CHUNK_BYTES // max(1, row_bytes))
    for start in range(0, len(first), rows):
        stop = min(start + rows, len(first))
        raw = part[(slice(first.start + start, first.start + stop), *rest)]
        out[start:stop].copy_(_checked(raw, key, path))
    return out


def _checked(raw: torch.Tensor, key: str, path) -> torch.Tensor:
    if raw.is_floating_point() and not torch.isfinite(raw).all():
        raise ValueError(f"{path}: {key} holds NaN or infinite values; the file is damaged")
    return raw
