"""The files of an activation cache (see :mod:`gsnb.saes.activations` for the layout): the
manifest, and one-tensor safetensors files streamed to disk batch by batch.

safetensors can only write a whole dict of tensors from memory, and a shard can be gigabytes, so
:class:`ShardWriter` writes the format itself: one header (the library's layout, one tensor), then
the rows as they come, on a background thread, through :class:`gsnb.core.files.AtomicFile`.
Reading goes through the library: :func:`tensor_info` checks a file with ``safetensors.safe_open``
and :func:`read_into` copies its data straight into a preallocated tensor.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from gsnb.core.files import AtomicFile, atomic_write

FORMAT = "gsnb-activations-1"
SHARD_RE = re.compile(r"shard_(\d{5})\.safetensors")
_ST_DTYPES = {
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.int64: "I64",
}


def shard_name(i: int) -> str:
    return f"shard_{i:05d}.safetensors"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def bad_file(path: Path, problem: str) -> ValueError:
    return ValueError(
        f"{path}: {problem}. It is damaged or does not belong to this cache: delete it and rerun "
        "cache_activations with the same arguments to recompute it (or use a new out_dir)"
    )


def raw(t: torch.Tensor) -> np.ndarray:
    """The bytes of a CPU tensor as a flat uint8 array sharing its memory."""
    return t.contiguous().reshape(-1).view(torch.uint8).numpy()


def tokens_sha256(tokens: torch.Tensor) -> str:
    h = hashlib.sha256(str(list(tokens.shape)).encode())
    h.update(raw(tokens.to(torch.int64)))
    return h.hexdigest()


# --- the manifest --------------------------------------------------------------------------------


def read_manifest(out: Path) -> dict:
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{out / 'manifest.json'} is missing or unreadable ({err}); this is not a gsnb activation "
            "cache: make one with gsnb.cache_activations(model, tokens, sites, out_dir)"
        ) from None
    if manifest.get("format") != FORMAT:
        raise ValueError(
            f"{out / 'manifest.json'} has format {manifest.get('format')!r}, expected {FORMAT!r}: "
            "it was written by another tool or gsnb version; recompute it into a new out_dir"
        )
    return manifest


def write_manifest(out: Path, manifest: dict) -> None:
    body = json.dumps(manifest, indent=1, sort_keys=True)
    atomic_write(out / "manifest.json", lambda p: Path(p).write_text(body))


# --- one-tensor safetensors files ----------------------------------------------------------------


def header(name: str, dtype: torch.dtype, shape, meta: dict) -> bytes:
    """The safetensors header of a file holding one tensor ``name``; its data follows directly."""
    nbytes = int(np.prod(shape)) * dtype.itemsize
    entry = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [0, nbytes]}
    head = json.dumps({"__metadata__": meta, name: entry}, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the format's 8-byte alignment of the data section
    return len(head).to_bytes(8, "little") + head


def write_tensor(path: Path, name: str, t: torch.Tensor, meta: dict) -> None:
    """Write ``t`` (on the CPU) as the one tensor of a safetensors file, atomically."""
    f = AtomicFile(path)
    try:
        f.write(header(name, t.dtype, t.shape, meta))
        f.write(raw(t))
        f.commit()
    except BaseException:
        f.abandon()
        raise


class TensorInfo(NamedTuple):
    """What ``safetensors.safe_open`` says about one tensor of a file."""

    dtype: str
    """safetensors' dtype name (``"F32"``), ``None`` if the file lacks the tensor."""
    shape: list[int] | None
    metadata: dict[str, str]


def tensor_info(path: Path, name: str) -> TensorInfo:
    """Check ``path`` with the safetensors library and describe its tensor ``name``; a clear error
    if the file is not a whole safetensors file."""
    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
            if name not in f.keys():
                return TensorInfo(None, None, meta)
            sl = f.get_slice(name)
            return TensorInfo(sl.get_dtype(), list(sl.get_shape()), meta)
    except SafetensorError as err:
        if "not fully covered" in str(err):
            raise bad_file(path, "its size disagrees with its header (truncated?)") from None
        raise bad_file(path, f"not a safetensors file ({err})") from None


def check_tensor(path: Path, name: str, dtype: torch.dtype, shape: list[int]) -> dict[str, str]:
    """Refuse ``path`` unless its tensor ``name`` is ``dtype`` ``shape``; return its metadata."""
    info = tensor_info(path, name)
    if info.shape != list(shape) or info.dtype != _ST_DTYPES[dtype]:
        raise bad_file(
            path,
            f"'{name}' is {info.dtype} {info.shape}, the manifest says {dtype} {list(shape)}",
        )
    return info.metadata


def read_into(path: Path, out: torch.Tensor, name: str) -> None:
    """Copy the tensor ``name`` of a one-tensor file into ``out`` (CPU, its shape and dtype)
    without an intermediate copy."""
    check_tensor(path, name, out.dtype, list(out.shape))
    with open(path, "rb") as f:
        # tensor_info has checked the file whole; in a one-tensor file the tensor is the whole
        # data section, which starts after the 8-byte length and the header.
        f.seek(8 + int.from_bytes(f.read(8), "little"))
        if f.readinto(memoryview(raw(out))) != out.numel() * out.element_size():
            raise bad_file(path, "the file is truncated")


# --- the streaming shard writer ------------------------------------------------------------------


class ShardSpec(NamedTuple):
    """Where and what the shards of one cache are."""

    out: Path
    """The cache folder; shard ``i`` of site ``s`` is ``out / s / shard_name(i)``."""
    widths: dict[str, int]
    """Site -> width, in the order the sites are written."""
    dtype: torch.dtype
    meta: dict[str, str]
    """Metadata of every shard (the shard's index and site are added)."""


class ShardWriter:
    """Appends rows to shards on one background thread, in submission order, and renames each
    shard into place once its last rows are in.

    ``on_done(i)`` runs on that thread after shard ``i`` is whole on disk. After a failure nothing
    more is written (so whatever ``on_done`` records stays true), and the error surfaces from
    :meth:`submit` or :meth:`drain`. At most ``max_pending`` jobs wait, which bounds memory.
    """

    def __init__(self, spec: ShardSpec, on_done: Callable[[int], None], max_pending: int = 2):
        self.spec, self.on_done, self.max_pending = spec, on_done, max_pending
        self._open: dict[int, dict[str, AtomicFile]] = {}  # shard -> site -> its temporary file
        self._failed: list[BaseException] = []
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="gsnb-cache-writer")
        self._pending: deque[Future] = deque()

    def submit(
        self,
        i: int,
        rows: int,
        parts: dict[str, torch.Tensor],
        last: bool,
        ready: Callable[[], None] | None = None,
        done: Callable[[], None] | None = None,
    ) -> None:
        """Queue ``parts`` (site -> ``[n, width]`` CPU rows) for shard ``i`` of ``rows`` rows.

        ``ready()`` runs on the writer thread before ``parts`` is read (it waits for copies still
        under way); ``done()`` runs there once ``parts`` is no longer needed, written or not.
        """
        job = self._pool.submit(self._write, i, rows, parts, last, ready, done)
        self._pending.append(job)
        while len(self._pending) > self.max_pending:
            self._pending.popleft().result()

    def drain(self) -> None:
        """Wait for every queued write; raise the first error."""
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        """Let queued writes finish (they are valid), then delete unfinished shards' files."""
        self._pool.shutdown(wait=True)
        for files in self._open.values():
            for f in files.values():
                f.abandon()
        self._open.clear()

    def _write(self, i: int, rows: int, parts, last: bool, ready, done) -> None:
        try:
            if self._failed:
                return
            try:
                if ready is not None:
                    ready()
                files = self._open.get(i) or self._start(i, rows)
                for s, f in files.items():
                    f.write(raw(parts[s]))
                    f.writeback()
                if last:
                    for f in files.values():
                        f.commit()
                    del self._open[i]
                    self.on_done(i)
            except BaseException as err:
                self._failed.append(err)
                raise
        finally:
            if done is not None:  # even after a failure: the caller may be waiting for buffers
                done()

    def _start(self, i: int, rows: int) -> dict[str, AtomicFile]:
        spec = self.spec
        files = self._open[i] = {}
        for s, width in spec.widths.items():
            files[s] = f = AtomicFile(spec.out / s / shard_name(i))
            meta = {**spec.meta, "shard": str(i), "site": s}
            f.write(header("acts", spec.dtype, (rows, width), meta))
        return files
