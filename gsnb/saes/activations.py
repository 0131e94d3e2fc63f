"""cache_activations(): many sites from one forward pass per batch, written as resumable disk
shards; ActivationStore: shuffled training batches from those shards, or streamed with no disk.

Layout of ``out_dir``::

    manifest.json                      what was cached, and which shards are finished
    tokens.safetensors                 "tokens" [n_windows, seq_len] int64
    {site}/shard_{i:05d}.safetensors   "acts" [shard_windows * seq_len, width], windows
                                       i * shard_windows ... in order, row = (window, position)

Every file is written to a hidden temporary file in the same folder, fsynced, then renamed into
place, so a crash leaves either the whole file or none of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from tqdm.auto import tqdm

from gsnb.core.data import special_token_ids

FORMAT = "gsnb-activations-1"
SHARD_TOKENS = 32768
"""Default cap on the tokens in one shard file of one site."""
SHARD_BYTES = 2**30
"""Default cap on one shard summed over all sites: the least that reading all sites together
holds in memory (caching itself holds only a few batches)."""

# Arguments that define a cache: resuming with any of them different would mix two caches.
_IDENTITY = (
    "model model_fingerprint model_dtype sites dtype n_windows seq_len shard_windows tokens_sha256"
).split()
_ST_DTYPES = {
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.int64: "I64",
}
_FROM_ST = {v: k for k, v in _ST_DTYPES.items()}
_SHARD_RE = re.compile(r"shard_(\d{5})\.safetensors")
_TMP_SUFFIX = ".gsnb-tmp"


def _shard_name(i: int) -> str:
    return f"shard_{i:05d}.safetensors"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --- safetensors files, written and read without intermediate copies ------------------------


def _open_tmp(path: Path) -> BinaryIO:
    """A hidden temporary file beside ``path``; :func:`_commit` renames it into place."""
    return open(path.with_name(f".{path.name}.{os.getpid()}{_TMP_SUFFIX}"), "wb")  # noqa: SIM115


def _commit(f: BinaryIO, path: Path) -> None:
    """fsync, close and rename ``f`` to ``path``: the file appears whole or not at all.

    The folder is not fsynced: if a crash loses a rename, resuming finds the file missing and
    recomputes that shard, so one fsync of the top folder per manifest update is enough.
    """
    f.flush()
    os.fsync(f.fileno())
    f.close()
    os.replace(f.name, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _abandon(f: BinaryIO) -> None:
    f.close()
    Path(f.name).unlink(missing_ok=True)


def _atomic_write(path: Path, chunks: Sequence) -> None:
    f = _open_tmp(path)
    try:
        for chunk in chunks:
            f.write(chunk)
        _commit(f, path)
    except BaseException:
        _abandon(f)
        raise


def _raw(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy()


def _header(name: str, dtype: torch.dtype, shape, meta: dict) -> bytes:
    """The safetensors header of a file holding one tensor ``name``; its data follows directly."""
    nbytes = int(np.prod(shape)) * dtype.itemsize
    entry = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [0, nbytes]}
    head = json.dumps({"__metadata__": meta, name: entry}, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the format's 8-byte alignment of the data section
    return len(head).to_bytes(8, "little") + head


def _start_writeback(f: BinaryIO) -> None:
    # Ask the kernel to start writing these pages now (and drop them once clean) instead of
    # letting gigabytes pile up dirty for the fsync at the end of the shard.
    f.flush()
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def _bad_file(path: Path, problem: str) -> ValueError:
    return ValueError(
        f"{path}: {problem}. It is damaged or does not belong to this cache: delete it and rerun "
        "cache_activations with the same arguments to recompute it (or use a new out_dir)"
    )


def _read_header(path: Path) -> tuple[dict, int]:
    """``(header, offset of the data section)``; a clear error if it is not a safetensors file."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        raw = f.read(size) if 0 < size < 2**24 else b""
    try:
        header = json.loads(raw)
        assert isinstance(header, dict)
    except (ValueError, AssertionError):
        raise _bad_file(path, "not a safetensors file") from None
    return header, 8 + size


def _read_into(path: Path, out: torch.Tensor, name: str) -> None:
    header, start = _read_header(path)
    entry = header.get(name, {})
    if entry.get("shape") != list(out.shape) or _FROM_ST.get(entry.get("dtype")) != out.dtype:
        raise _bad_file(path, f"'{name}' is not {_dtype_name(out.dtype)} {list(out.shape)}")
    with open(path, "rb") as f:
        f.seek(start + entry["data_offsets"][0])
        if f.readinto(memoryview(_raw(out))) != out.numel() * out.element_size():
            raise _bad_file(path, "the file is truncated")


# --- writing a cache ----------------------------------------------------------------------------


def _tokens_sha256(tokens: torch.Tensor) -> str:
    h = hashlib.sha256(str(list(tokens.shape)).encode())
    h.update(_raw(tokens.to(torch.int64)))
    return h.hexdigest()


def _model_fingerprint(model) -> str:
    """Hash of a strided sample of every weight: tells two models apart that share a name."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.hf.named_parameters():
            flat = p.reshape(-1)
            h.update(name.encode())
            h.update(_raw(flat[:: max(1, flat.numel() // 64)][:64].float().cpu()))
    return h.hexdigest()[:16]


def _read_manifest(out: Path) -> dict:
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


def _write_manifest(out: Path, manifest: dict) -> None:
    _atomic_write(out / "manifest.json", [json.dumps(manifest, indent=1, sort_keys=True).encode()])
    _fsync_dir(out)


def _to_host(acts: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # Cast on the side where the data is smaller, so a device-to-host copy moves fewer bytes.
    # On the CPU in the model's dtype both are no-ops: shards hold the model's own tensors.
    if dtype.itemsize <= acts.dtype.itemsize:
        return acts.to(dtype).cpu().contiguous()
    return acts.cpu().to(dtype).contiguous()


def _check_tokens(tokens) -> torch.Tensor:
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.is_floating_point():
        raise ValueError(
            "tokens must be an integer tensor [n_windows, seq_len] (see gsnb.core.data)"
        )
    return tokens.detach().to("cpu", torch.int64).contiguous()


def _sorted_sites(model, sites: Sequence[str]) -> list[str]:
    names = [str(s) for s in sorted({model.parse_site(s) for s in sites}, key=lambda s: s.depth)]
    if not names:
        raise ValueError("sites is empty: pass site strings, for example model.sites(layers=6)")
    return names


def _short(value) -> str:
    text = repr(value)
    return text if len(text) < 90 else text[:80] + "...]"


def cache_activations(
    model,
    tokens: torch.Tensor,
    sites: Sequence[str],
    out_dir: str | Path,
    batch_size: int = 16,
    shard_windows: int | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> Path:
    """Run ``model`` over ``tokens`` once and save the activations at every site in ``sites``.

    One forward pass per batch of windows serves all sites and stops after the deepest one. A
    background thread appends each batch to its shards' temporary files while the next batch
    runs, and renames a shard into place (then updates the manifest) once it is whole, so memory
    holds a few batches, never a whole shard. Calling it again with the same arguments resumes:
    finished shards are kept and the result is bit-identical to an uninterrupted run (with the
    same ``batch_size``); different arguments raise an error and leave the cache untouched.

    Args:
        model: a :class:`gsnb.Model`.
        tokens: ``[n_windows, seq_len]`` token ids, for example from :func:`gsnb.core.data.default_tokens`.
        sites: site strings such as ``["mlp_in.6", "mlp_out.6"]`` (stored in forward order).
        out_dir: folder to create (or resume); it ends up as described in this module's docstring.
        batch_size: windows per forward pass.
        shard_windows: windows per shard file; default keeps a shard under ``SHARD_TOKENS`` tokens
            per site and ``SHARD_BYTES`` over all sites.
        dtype: storage dtype, ``torch.float32``, ``torch.bfloat16`` or ``torch.float16``.

    Returns:
        ``Path(out_dir)``; read it with :class:`ActivationStore`.

    >>> out = cache_activations(model, tokens, model.sites(layers=6), "acts/layer6")
    """
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype={dtype} cannot be stored: use torch.float32, bfloat16 or float16")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    names, tokens = _sorted_sites(model, sites), _check_tokens(tokens)
    n, seq = tokens.shape
    widths = {s: model.site_width(s) for s in names}
    itemsize = torch.empty((), dtype=dtype).element_size()
    if shard_windows is None:
        by_tokens = SHARD_TOKENS // seq
        by_bytes = SHARD_BYTES // (seq * sum(widths.values()) * itemsize)
        shard_windows = min(n, max(1, min(by_tokens, by_bytes)))
    if shard_windows < 1:
        raise ValueError(f"shard_windows must be >= 1, got {shard_windows}")
    manifest = dict(
        format=FORMAT,
        model=model.name,
        model_fingerprint=_model_fingerprint(model),
        model_dtype=_dtype_name(model.dtype),
        sites=names,
        dtype=_dtype_name(dtype),
        n_windows=n,
        seq_len=seq,
        shard_windows=shard_windows,
        tokens_sha256=_tokens_sha256(tokens),
        n_shards=-(-n // shard_windows),
        widths=widths,
        d_model=model.d_model,
        n_layers=model.n_layers,
        special_token_ids=special_token_ids(model),
        finished=[],
    )
    out = Path(out_dir)
    finished: set[int] = set()
    if (out / "manifest.json").exists():
        old = _read_manifest(out)
        diffs = [
            f"{k}: {_short(old.get(k))} in the cache, {_short(manifest[k])} now"
            for k in _IDENTITY
            if old.get(k) != manifest[k]
        ]
        if diffs:
            raise ValueError(
                f"{out} already holds activations cached with different arguments ("
                + "; ".join(diffs)
                + "): use a new out_dir, or delete the old one to replace it"
            )
        paths_done = lambda i: all((out / s / _shard_name(i)).is_file() for s in names)  # noqa: E731
        finished = {i for i in old["finished"] if paths_done(i)}
    elif out.exists() and any(not p.name.startswith(".") for p in out.iterdir()):
        raise FileExistsError(
            f"{out} is not empty and has no manifest.json, so it is not a gsnb activation cache; "
            "pass a new or empty out_dir"
        )
    for folder in [out, *(out / s for s in names)]:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(f".*{_TMP_SUFFIX}"):  # left by a crash mid-write; never data
            stale.unlink()
    manifest["finished"] = sorted(finished)
    _write_manifest(out, manifest)
    if not (out / "tokens.safetensors").is_file():
        meta = {"format": FORMAT, "tokens_sha256": manifest["tokens_sha256"]}
        head = _header("tokens", torch.int64, tokens.shape, meta)
        _atomic_write(out / "tokens.safetensors", [head, _raw(tokens)])

    def size(i: int) -> int:
        return min(n, (i + 1) * shard_windows) - i * shard_windows

    todo = {i: 0 for i in range(manifest["n_shards"]) if i not in finished}  # windows done
    need = sum(size(i) for i in todo) * seq * sum(widths.values()) * itemsize
    free = shutil.disk_usage(out).free
    if need > free:
        raise OSError(
            f"caching needs {need / 1e9:.1f} GB more but {out} has {free / 1e9:.1f} GB free: "
            "free space, cache fewer tokens/sites, use dtype=torch.bfloat16 or another out_dir"
        )

    open_files: dict[int, dict[str, BinaryIO]] = {}  # shard -> site -> its temporary file
    failed: list[BaseException] = []

    def write(i: int, parts: dict[str, torch.Tensor], last: bool) -> None:
        """Append one batch's rows of shard ``i``; commit the shard after its last rows. Runs on
        the writer thread, jobs in submission order."""
        if failed:
            return  # after one failure, write nothing more: the manifest stays consistent
        try:
            if i not in open_files:
                meta = dict(format=FORMAT, shard=str(i), tokens_sha256=manifest["tokens_sha256"])
                open_files[i] = {s: _open_tmp(out / s / _shard_name(i)) for s in names}
                for s, f in open_files[i].items():
                    f.write(_header("acts", dtype, (size(i) * seq, widths[s]), {**meta, "site": s}))
            for s, f in open_files[i].items():
                f.write(_raw(parts[s]))
                _start_writeback(f)
            if last:
                for s, f in open_files[i].items():
                    _commit(f, out / s / _shard_name(i))
                del open_files[i]
                manifest["finished"] = sorted({*manifest["finished"], i})
                _write_manifest(out, manifest)
        except BaseException as err:
            failed.append(err)
            raise

    done = (n - sum(map(size, todo))) * seq
    bar = tqdm(total=n * seq, initial=done, unit="tok", unit_scale=True, disable=not progress)
    writer = ThreadPoolExecutor(1, thread_name_prefix="gsnb-cache-writer")
    pending: deque[Future] = deque()
    try:
        # Batches always start at multiples of batch_size, so a resumed run groups windows
        # exactly as an uninterrupted one did and produces bit-identical values.
        for b0 in range(0, n, batch_size):
            b1 = min(b0 + batch_size, n)
            hit = [
                i for i in range(b0 // shard_windows, 1 + (b1 - 1) // shard_windows) if i in todo
            ]
            if not hit:
                continue
            _, acts = model.run_with_cache(tokens[b0:b1], names, stop_early=True)
            host = {s: _to_host(a, dtype) for s, a in acts.items()}
            for i in hit:
                w0, w1 = max(b0, i * shard_windows), min(b1, (i + 1) * shard_windows)
                todo[i] += w1 - w0
                parts = {s: host[s][w0 - b0 : w1 - b0] for s in names}
                pending.append(writer.submit(write, i, parts, todo[i] == size(i)))
                bar.update((w1 - w0) * seq)
            while len(pending) > 2:  # bounds memory to a few batches; surfaces writer errors
                pending.popleft().result()
        while pending:
            pending.popleft().result()
    finally:
        writer.shutdown(wait=True)  # on an error, let queued writes finish: they are valid
        for files in open_files.values():
            for f in files.values():
                _abandon(f)
        bar.close()
    return out


# --- reading a cache --------------------------------------------------------------------------


class _Batches:
    """Shuffled batches over rows (token positions); subclasses say how to get groups of rows."""

    sites: list[str]
    n_tokens: int
    _widths: dict[str, int]
    _special: torch.Tensor

    def width(self, site: str) -> int:
        """Width of ``site``'s vectors."""
        if site not in self._widths:
            raise KeyError(f"site {site!r} is not in this store; it has {self.sites}")
        return self._widths[site]

    def _groups(self, sites: list[str], rng: np.random.Generator):
        """Yield ``({site: [rows, width]}, token ids [rows])`` for every row once, in ``rng``'s
        order of groups."""
        raise NotImplementedError

    def batches(
        self,
        site: str,
        batch_size: int,
        seed: int = 0,
        epochs: int = 1,
        drop_special=True,
        drop_last=False,
        device: str | torch.device | None = None,
    ) -> Iterator[torch.Tensor]:
        """Shuffled batches ``[batch_size, width]`` of one site's activations.

        Each epoch yields every row once (rows at BOS/EOS/PAD left out when ``drop_special``):
        groups of shards in a shuffled order, rows shuffled within a group. The order depends
        only on ``seed`` and the epoch. The last batch of an epoch may be smaller unless
        ``drop_last``.

        >>> for x in store.batches("resid_post.6", batch_size=4096): ...
        """
        args = (batch_size, seed, epochs, drop_special, drop_last, device)
        for batch in self.batches_multi([site], *args):
            yield batch[site]

    def batches_multi(
        self,
        sites: Sequence[str],
        batch_size: int,
        seed: int = 0,
        epochs: int = 1,
        drop_special=True,
        drop_last=False,
        device: str | torch.device | None = None,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Like :meth:`batches` for several sites at once: ``{site: [batch_size, width]}`` where
        row ``j`` of every site comes from the same token (a transcoder's ``mlp_in``/``mlp_out``
        pair, or many SAEs trained from one read)."""
        sites = list(sites)
        for s in sites:
            self.width(s)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for epoch in range(epochs):
            order_rng = np.random.default_rng([seed, epoch, 0])
            row_rng = np.random.default_rng([seed, epoch, 1])
            carry: dict[str, torch.Tensor] = {}
            for acts, toks in self._groups(sites, order_rng):
                rows = torch.arange(len(toks))
                if drop_special:
                    rows = rows[~torch.isin(toks, self._special)]
                rows = rows[torch.from_numpy(row_rng.permutation(len(rows)))]
                start = 0
                if carry:
                    start = min(batch_size - len(next(iter(carry.values()))), len(rows))
                    carry = {s: torch.cat([carry[s], acts[s][rows[:start]]]) for s in sites}
                    if len(carry[sites[0]]) < batch_size:
                        continue
                    yield {s: v.to(device) for s, v in carry.items()}
                    carry = {}
                for b0 in range(start, len(rows), batch_size):
                    idx = rows[b0 : b0 + batch_size]
                    if len(idx) < batch_size:
                        carry = {s: acts[s][idx] for s in sites}
                    else:
                        yield {s: acts[s][idx].to(device) for s in sites}
            if carry and not drop_last:
                yield {s: v.to(device) for s, v in carry.items()}


class ActivationStore(_Batches):
    """Activations cached by :func:`cache_activations`, checked against its manifest on opening.

    ``store.sites``, ``store.n_tokens`` (all rows, special tokens included), ``store.width(site)``,
    ``store.tokens`` ``[n_windows, seq_len]``, ``store.load(site)`` ``[n_tokens, width]``,
    ``store.batches(...)`` and ``store.batches_multi(...)``. Batches shuffle rows within a
    buffer of about ``buffer_bytes`` of shards (at least one shard); the next buffer is read in
    the background while the current one is consumed, so about twice that is held in memory.

    >>> store = ActivationStore("acts/layer6")
    >>> x = next(store.batches("mlp_in.6", batch_size=4096))
    """

    def __init__(self, out_dir: str | Path, buffer_bytes: int = 2**30):
        self.path = Path(out_dir)
        self.manifest = m = _read_manifest(self.path)
        self.sites, self._widths = list(m["sites"]), dict(m["widths"])
        self.dtype: torch.dtype = getattr(torch, m["dtype"])
        self.n_windows, self.seq_len, self.n_shards = m["n_windows"], m["seq_len"], m["n_shards"]
        self.shard_windows, self.buffer_bytes = m["shard_windows"], buffer_bytes
        self.n_tokens = self.n_windows * self.seq_len
        self._special = torch.tensor(m["special_token_ids"], dtype=torch.int64)
        self._sha = m["tokens_sha256"]
        if len(m["finished"]) < self.n_shards:
            raise ValueError(
                f"the cache at {self.path} is unfinished ({len(m['finished'])} of {self.n_shards} "
                "shards): rerun cache_activations with the same arguments to finish it"
            )
        for site in self.sites:
            self._check_folder(site)
        self.tokens = torch.empty((self.n_windows, self.seq_len), dtype=torch.int64)
        _read_into(self.path / "tokens.safetensors", self.tokens, "tokens")
        if _tokens_sha256(self.tokens) != self._sha:
            raise _bad_file(self.path / "tokens.safetensors", "its hash is not the manifest's")

    def _rows(self, i: int) -> int:
        end = min(self.n_windows, (i + 1) * self.shard_windows)
        return (end - i * self.shard_windows) * self.seq_len

    def _check_folder(self, site: str) -> None:
        folder = self.path / site
        for p in sorted(folder.iterdir()) if folder.is_dir() else []:
            match = _SHARD_RE.fullmatch(p.name)
            if not p.name.startswith(".") and (not match or int(match[1]) >= self.n_shards):
                raise ValueError(
                    f"{p}: a foreign file in the cache (expected shard_00000.safetensors ... "
                    f"{_shard_name(self.n_shards - 1)}): move it out of {folder}"
                )
        for i in range(self.n_shards):
            path = folder / _shard_name(i)
            if not path.is_file():
                raise _bad_file(path, "the shard is missing")
            header, start = _read_header(path)
            entry, meta = header.get("acts", {}), header.get("__metadata__", {})
            shape = [self._rows(i), self._widths[site]]
            if entry.get("shape") != shape or _FROM_ST.get(entry.get("dtype")) != self.dtype:
                got = f"{entry.get('dtype')} {entry.get('shape')}"
                raise _bad_file(path, f"'acts' is {got}, the manifest says {self.dtype} {shape}")
            expected = dict(format=FORMAT, site=site, shard=str(i), tokens_sha256=self._sha)
            if any(meta.get(k) != v for k, v in expected.items()):
                raise _bad_file(path, f"its metadata {meta} disagrees with the manifest")
            if path.stat().st_size != start + entry["data_offsets"][1]:
                raise _bad_file(path, "its size disagrees with its header (truncated?)")

    def _load_shards(self, sites: list[str], shards: Sequence[int]) -> dict[str, torch.Tensor]:
        total = sum(self._rows(i) for i in shards)
        out = {s: torch.empty((total, self._widths[s]), dtype=self.dtype) for s in sites}
        for s in sites:
            r0 = 0
            for i in shards:
                _read_into(self.path / s / _shard_name(i), out[s][r0 : r0 + self._rows(i)], "acts")
                r0 += self._rows(i)
        return out

    def load(self, site: str) -> torch.Tensor:
        """All of ``site``'s activations ``[n_tokens, width]`` in token order (row ``w * seq_len
        + p`` is window ``w``, position ``p``); for caches that fit in memory."""
        self.width(site)
        return self._load_shards([site], range(self.n_shards))[site]

    def _groups(self, sites, rng):
        order = rng.permutation(self.n_shards).tolist()
        shard_bytes = self._rows(0) * sum(self._widths[s] for s in sites) * self.dtype.itemsize
        k = max(1, self.buffer_bytes // shard_bytes)  # shards shuffled together
        groups = [order[g : g + k] for g in range(0, len(order), k)]
        flat_tokens = self.tokens.reshape(-1)
        step = self.shard_windows * self.seq_len
        # Read the next group in a background thread while the current one is consumed.
        with ThreadPoolExecutor(1, thread_name_prefix="gsnb-store-reader") as pool:
            nxt = pool.submit(self._load_shards, sites, groups[0]) if groups else None
            for k, group in enumerate(groups):
                acts = nxt.result()
                if k + 1 < len(groups):
                    nxt = pool.submit(self._load_shards, sites, groups[k + 1])
                toks = torch.cat([flat_tokens[i * step : i * step + self._rows(i)] for i in group])
                yield acts, toks

    @classmethod
    def stream(
        cls,
        model,
        tokens: torch.Tensor,
        sites: Sequence[str],
        batch_size: int = 16,
        buffer_windows: int = 64,
        dtype: torch.dtype = torch.float32,
    ) -> StreamStore:
        """Batches computed on the fly (no disk) with the same ``batches``/``batches_multi``.

        Every epoch runs the model again over ``tokens`` ``[n_windows, seq_len]`` in a seeded
        order of windows, ``batch_size`` windows per forward pass, and shuffles the rows of
        ``buffer_windows`` windows at a time. Batches stay on the model's device unless the
        ``device`` argument of ``batches`` says otherwise.

        >>> store = ActivationStore.stream(model, tokens, ["mlp_in.6", "mlp_out.6"])
        """
        return StreamStore(model, tokens, sites, batch_size, buffer_windows, dtype)


class StreamStore(_Batches):
    """See :meth:`ActivationStore.stream`."""

    def __init__(self, model, tokens, sites, batch_size=16, buffer_windows=64, dtype=torch.float32):
        self.model, self.tokens, self.dtype = model, _check_tokens(tokens), dtype
        self.sites = _sorted_sites(model, sites)
        self._widths = {s: model.site_width(s) for s in self.sites}
        self.n_tokens = tokens.numel()
        self.batch_size, self.buffer_windows = batch_size, max(buffer_windows, 1)
        self._special = torch.tensor(special_token_ids(model), dtype=torch.int64)

    def _groups(self, sites, rng):
        order = torch.from_numpy(rng.permutation(len(self.tokens)))
        for g0 in range(0, len(order), self.buffer_windows):
            windows = self.tokens[order[g0 : g0 + self.buffer_windows]]
            parts: dict[str, list[torch.Tensor]] = {s: [] for s in sites}
            for b0 in range(0, len(windows), self.batch_size):
                _, acts = self.model.run_with_cache(
                    windows[b0 : b0 + self.batch_size], sites, stop_early=True
                )
                for s in sites:  # stays on the model's device: no round trip through the host
                    parts[s].append(acts[s].to(self.dtype).reshape(-1, self._widths[s]))
            yield {s: torch.cat(p) for s, p in parts.items()}, windows.reshape(-1)
