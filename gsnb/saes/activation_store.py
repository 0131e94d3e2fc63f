"""ActivationStore: shuffled training batches from the shards :func:`gsnb.saes.activations.
cache_activations` wrote; StreamStore: the same batches computed on the fly, with no disk.

Both yield every row (token position) once per epoch, groups of rows in a seeded order and rows
shuffled within a group; ``batches_multi`` keeps rows of several sites aligned (a transcoder's
``mlp_in``/``mlp_out`` pair, or many SAEs trained from one read).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from gsnb.core.data import special_token_ids
from gsnb.saes.activation_files import (
    FORMAT,
    SHARD_RE,
    bad_file,
    check_tensor,
    read_into,
    read_manifest,
    shard_name,
    tokens_sha256,
)


def check_tokens(tokens) -> torch.Tensor:
    """``tokens`` as a contiguous CPU int64 ``[n_windows, seq_len]`` tensor, or a clear error."""
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.is_floating_point():
        raise ValueError(
            "tokens must be an integer tensor [n_windows, seq_len] (see gsnb.core.data)"
        )
    return tokens.detach().to("cpu", torch.int64).contiguous()


def sorted_sites(model, sites: Sequence[str]) -> list[str]:
    """``sites`` checked against ``model``, without repeats, in forward-pass order."""
    names = [str(s) for s in sorted({model.parse_site(s) for s in sites}, key=lambda s: s.depth)]
    if not names:
        raise ValueError("sites is empty: pass site strings, for example model.sites(layers=6)")
    return names


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
        self.manifest = m = read_manifest(self.path)
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
        read_into(self.path / "tokens.safetensors", self.tokens, "tokens")
        if tokens_sha256(self.tokens) != self._sha:
            raise bad_file(self.path / "tokens.safetensors", "its hash is not the manifest's")

    def _rows(self, i: int) -> int:
        end = min(self.n_windows, (i + 1) * self.shard_windows)
        return (end - i * self.shard_windows) * self.seq_len

    def _check_folder(self, site: str) -> None:
        folder = self.path / site
        for p in sorted(folder.iterdir()) if folder.is_dir() else []:
            match = SHARD_RE.fullmatch(p.name)
            if not p.name.startswith(".") and (not match or int(match[1]) >= self.n_shards):
                raise ValueError(
                    f"{p}: a foreign file in the cache (expected shard_00000.safetensors ... "
                    f"{shard_name(self.n_shards - 1)}): move it out of {folder}"
                )
        for i in range(self.n_shards):
            path = folder / shard_name(i)
            if not path.is_file():
                raise bad_file(path, "the shard is missing")
            shape = [self._rows(i), self._widths[site]]
            meta = check_tensor(path, "acts", self.dtype, shape)
            expected = dict(format=FORMAT, site=site, shard=str(i), tokens_sha256=self._sha)
            if any(meta.get(k) != v for k, v in expected.items()):
                raise bad_file(path, f"its metadata {meta} disagrees with the manifest")

    def _load_shards(self, sites: list[str], shards: Sequence[int]) -> dict[str, torch.Tensor]:
        total = sum(self._rows(i) for i in shards)
        out = {s: torch.empty((total, self._widths[s]), dtype=self.dtype) for s in sites}
        for s in sites:
            r0 = 0
            for i in shards:
                read_into(self.path / s / shard_name(i), out[s][r0 : r0 + self._rows(i)], "acts")
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
        self.model, self.tokens, self.dtype = model, check_tokens(tokens), dtype
        self.sites = sorted_sites(model, sites)
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
