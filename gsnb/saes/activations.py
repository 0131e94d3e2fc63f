"""cache_activations(): many sites from one forward pass per batch, written as resumable disk
shards; ActivationStore: shuffled training batches from those shards, or streamed with no disk.

Layout of ``out_dir``::

    manifest.json                      what was cached, and which shards are finished
    tokens.safetensors                 "tokens" [n_windows, seq_len] int64
    {site}/shard_{i:05d}.safetensors   "acts" [shard_windows * seq_len, width], windows
                                       i * shard_windows ... in order, row = (window, position)

Every file is written to a hidden temporary file in the same folder, fsynced, then renamed into
place (:mod:`gsnb.core.files`), so a crash leaves either the whole file or none of it. The files
themselves are :mod:`gsnb.saes.activation_files`; reading them back is
:mod:`gsnb.saes.activation_store` (``ActivationStore`` is importable from here too).
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from gsnb.core.data import special_token_ids
from gsnb.core.files import TMP_SUFFIX
from gsnb.saes.activation_files import (
    FORMAT,
    ShardSpec,
    ShardWriter,
    dtype_name,
    raw,
    read_manifest,
    shard_name,
    tokens_sha256,
    write_manifest,
    write_tensor,
)
from gsnb.saes.activation_store import ActivationStore, StreamStore, check_tokens, sorted_sites
from gsnb.saes.host_copies import HostCopies

__all__ = ["SHARD_BYTES", "SHARD_TOKENS", "ActivationStore", "StreamStore", "cache_activations"]

SHARD_TOKENS = 32768
"""Default cap on the tokens in one shard file of one site."""
SHARD_BYTES = 2**30
"""Default cap on one shard summed over all sites: the least that reading all sites together
holds in memory (caching itself holds only a few batches)."""

# Arguments that define a cache: resuming with any of them different would mix two caches.
_IDENTITY = (
    "model model_fingerprint model_dtype sites dtype n_windows seq_len shard_windows tokens_sha256"
).split()
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def cache_activations(
    model,
    tokens: torch.Tensor,
    sites: Sequence[str],
    out_dir: str | Path,
    batch_size: int = 16,
    shard_windows: int | None = None,
    dtype: torch.dtype = torch.bfloat16,
    progress: bool = True,
) -> Path:
    """Run ``model`` over ``tokens`` once and save the activations at every site in ``sites``.

    One forward pass per batch of windows serves all sites and stops after the deepest one. Its
    values reach the host in the storage dtype while the next batch runs (on CUDA through pinned
    buffers and asynchronous copies, :mod:`gsnb.saes.host_copies`), and a background thread
    appends them to their shards' temporary files and renames a shard into place (then updates
    the manifest) once it is whole, so memory holds a few batches, never a whole shard. Calling it again with the same arguments resumes:
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
        dtype: storage dtype, ``torch.bfloat16`` (the default), ``torch.float32`` or
            ``torch.float16``. bfloat16 halves the disk and the reading time, and an SAE trained
            on it matches one trained on float32 shards of the same activations (FVU and L0
            within the training's own noise: ``tests/test_cache_dtype.py``); float32 keeps the
            forward pass's exact values.

    Returns:
        ``Path(out_dir)``; read it with :class:`ActivationStore`.

    >>> out = cache_activations(model, tokens, model.sites(layers=6), "acts/layer6")
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype} cannot be stored: use torch.float32, bfloat16 or float16")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = Path(out_dir)
    plan = _plan(model, check_tokens(tokens), sites, dtype, shard_windows)
    finished = _resume(out, plan)
    todo = {i: 0 for i in range(plan.n_shards) if i not in finished}  # shard -> windows done
    _check_space(out, plan, todo)

    def shard_done(i: int) -> None:  # on the writer thread, after shard i is whole on disk
        plan.manifest["finished"] = sorted({*plan.manifest["finished"], i})
        write_manifest(out, plan.manifest)

    meta = {"format": FORMAT, "tokens_sha256": plan.manifest["tokens_sha256"]}
    writer = ShardWriter(ShardSpec(out, plan.widths, dtype, meta), shard_done)
    done = (plan.n - sum(map(plan.shard_size, todo))) * plan.seq
    bar = tqdm(
        total=plan.n * plan.seq, initial=done, unit="tok", unit_scale=True, disable=not progress
    )
    try:
        _run_batches(model, plan, todo, writer, batch_size, bar)
    finally:
        writer.close()
        bar.close()
    return out


@dataclass
class _Plan:
    """What one call caches: checked inputs, shard sizes and the manifest to write."""

    tokens: torch.Tensor
    """``[n_windows, seq_len]`` int64 on the CPU."""
    sites: list[str]
    """In forward order."""
    widths: dict[str, int]
    dtype: torch.dtype
    shard_windows: int
    manifest: dict

    @property
    def n(self) -> int:
        return self.tokens.shape[0]

    @property
    def seq(self) -> int:
        return self.tokens.shape[1]

    @property
    def n_shards(self) -> int:
        return -(-self.n // self.shard_windows)

    def shard_size(self, i: int) -> int:
        """Windows in shard ``i`` (the last one may be short)."""
        return min(self.n, (i + 1) * self.shard_windows) - i * self.shard_windows


def _plan(model, tokens, sites, dtype, shard_windows: int | None) -> _Plan:
    names = sorted_sites(model, sites)
    n, seq = tokens.shape
    widths = {s: model.site_width(s) for s in names}
    if shard_windows is None:
        by_tokens = SHARD_TOKENS // seq
        by_bytes = SHARD_BYTES // (seq * sum(widths.values()) * dtype.itemsize)
        shard_windows = min(n, max(1, min(by_tokens, by_bytes)))
    if shard_windows < 1:
        raise ValueError(f"shard_windows must be >= 1, got {shard_windows}")
    manifest = dict(
        format=FORMAT,
        model=model.name,
        model_fingerprint=_model_fingerprint(model),
        model_dtype=dtype_name(model.dtype),
        sites=names,
        dtype=dtype_name(dtype),
        n_windows=n,
        seq_len=seq,
        shard_windows=shard_windows,
        tokens_sha256=tokens_sha256(tokens),
        n_shards=-(-n // shard_windows),
        widths=widths,
        d_model=model.d_model,
        n_layers=model.n_layers,
        special_token_ids=special_token_ids(model),
        finished=[],
    )
    return _Plan(tokens, names, widths, dtype, shard_windows, manifest)


def _resume(out: Path, plan: _Plan) -> set[int]:
    """Check ``out`` is this cache (or new), prepare its folders, write the manifest and tokens;
    return the shards already finished."""
    names, manifest = plan.sites, plan.manifest
    finished: set[int] = set()
    if (out / "manifest.json").exists():
        old = read_manifest(out)
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
        whole = lambda i: all((out / s / shard_name(i)).is_file() for s in names)  # noqa: E731
        finished = {i for i in old["finished"] if whole(i)}
    elif out.exists() and any(not p.name.startswith(".") for p in out.iterdir()):
        raise FileExistsError(
            f"{out} is not empty and has no manifest.json, so it is not a gsnb activation cache; "
            "pass a new or empty out_dir"
        )
    for folder in [out, *(out / s for s in names)]:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(f".*{TMP_SUFFIX}"):  # left by a crash mid-write; never data
            stale.unlink()
    manifest["finished"] = sorted(finished)
    write_manifest(out, manifest)
    if not (out / "tokens.safetensors").is_file():
        meta = {"format": FORMAT, "tokens_sha256": manifest["tokens_sha256"]}
        write_tensor(out / "tokens.safetensors", "tokens", plan.tokens, meta)
    return finished


def _check_space(out: Path, plan: _Plan, todo: dict[int, int]) -> None:
    per_window = plan.seq * sum(plan.widths.values()) * plan.dtype.itemsize
    need = sum(plan.shard_size(i) for i in todo) * per_window
    free = shutil.disk_usage(out).free
    smaller = "store dtype=torch.bfloat16, " if plan.dtype.itemsize > 2 else ""
    if need > free:
        raise OSError(
            f"caching needs {need / 1e9:.1f} GB more but {out} has {free / 1e9:.1f} GB free: "
            f"free space, cache fewer tokens/sites, {smaller}use another out_dir"
        )


def _run_batches(model, plan: _Plan, todo: dict[int, int], writer: ShardWriter, batch_size, bar):
    """Forward passes over the batches that touch unfinished shards, their rows to ``writer``."""
    n, seq, per_shard = plan.n, plan.seq, plan.shard_windows
    # Buffers for the batches the writer may still hold (max_pending) plus the one being staged.
    slots = writer.max_pending + 1
    copies = HostCopies(plan.widths, plan.dtype, model.device, batch_size, seq, slots)
    # Batches always start at multiples of batch_size, so a resumed run groups windows exactly
    # as an uninterrupted one did and produces bit-identical values.
    for b0 in range(0, n, batch_size):
        b1 = min(b0 + batch_size, n)
        hit = [i for i in range(b0 // per_shard, 1 + (b1 - 1) // per_shard) if i in todo]
        if not hit:
            continue
        _, acts = model.run_with_cache(plan.tokens[b0:b1], plan.sites, stop_early=True)
        batch = copies.stage(acts)
        del acts  # on CUDA the copies hold what they need; the next batch may reuse the rest
        for k, i in enumerate(hit):
            w0, w1 = max(b0, i * per_shard), min(b1, (i + 1) * per_shard)
            todo[i] += w1 - w0
            parts = {s: batch.host[s][w0 - b0 : w1 - b0] for s in plan.sites}
            # One writer thread runs jobs in order: the first waits for the copies, the last
            # hands the buffers back.
            ready = batch.wait if k == 0 else None
            done = batch.release if k == len(hit) - 1 else None
            last = todo[i] == plan.shard_size(i)
            writer.submit(i, plan.shard_size(i) * seq, parts, last, ready, done)
            bar.update((w1 - w0) * seq)
    writer.drain()


def _model_fingerprint(model) -> str:
    """Hash of a strided sample of every weight: tells two models apart that share a name."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.hf.named_parameters():
            flat = p.reshape(-1)
            h.update(name.encode())
            h.update(raw(flat[:: max(1, flat.numel() // 64)][:64].float().cpu()))
    return h.hexdigest()[:16]


def _short(value) -> str:
    text = repr(value)
    return text if len(text) < 90 else text[:80] + "...]"
