"""The running state of a :func:`gsnb.feature_stats` pass: per feature, counts, sums, a histogram,
and two banks of examples (the top contexts and a uniform sample of firing tokens), updated
batch by batch with tensor ops on the SAE's device, and checkpointed so a pass can resume.

>>> acc = Accumulator(sae.d_sae, seq_len, settings, sae.W_enc.device)
>>> acc.update(encode_firing(sae, x, valid, b0), valid.sum())
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from gsnb.analysis.feature_data import BANK_ARRAYS
from gsnb.core.files import atomic_write
from gsnb.saes.sae import JumpReLUSAE

_KEY_BITS = 40  # sample keys lie in [0, 2**40), leaving room in an int64 for the feature id


@dataclass(frozen=True)
class PassSettings:
    """How much a pass keeps per feature and how it walks the corpus (see
    :func:`gsnb.feature_stats` for each argument); all at least 1."""

    k: int
    n_quantile_samples: int
    n_bins: int
    batch_size: int
    checkpoint_every: int
    seed: int = 0

    def __post_init__(self):
        sizes = {k: v for k, v in asdict(self).items() if k != "seed"}
        if bad := {name: v for name, v in sizes.items() if v < 1}:
            raise ValueError(f"these must be at least 1: {bad}")


def sample_keys(token: torch.Tensor, feature: torch.Tensor, d_sae: int, seed: int) -> torch.Tensor:
    """Pseudo-random keys in ``[0, 2**40)`` of (corpus token index, feature) pairs, ``[n]`` each.

    A feature keeps the firing tokens with the largest keys: a uniform sample without replacement
    that depends on neither batching nor device, so a resumed pass draws the same. splitmix64's
    finaliser, written with masks because torch's ``>>`` on int64 is arithmetic.
    """
    signed = lambda c: (c % 2**64) - 2**64 * ((c % 2**64) >= 2**63)  # noqa: E731
    x = token * d_sae + feature + signed(seed * 0x9E3779B97F4A7C15)
    for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        x = (x ^ ((x >> shift) & ((1 << (64 - shift)) - 1))) * signed(mult)
    x = x ^ ((x >> 31) & ((1 << 33) - 1))
    return (x >> (64 - _KEY_BITS)) & ((1 << _KEY_BITS) - 1)


class FiringBatch(NamedTuple):
    """A batch's firing entries: ``b, s, f, values`` ``[n]`` each (ordered by b, s, f) out of
    ``shape = (B, S, F)``, window ``b`` being corpus row ``b0 + b``; ``sums [F]`` float64."""

    b: torch.Tensor
    s: torch.Tensor
    f: torch.Tensor
    values: torch.Tensor
    shape: tuple[int, int, int]
    b0: int
    sums: torch.Tensor

    def rows(self, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """Feature ``f[i]``'s activations over window ``b[i]``: ``[n, S]``. Built from the sparse
        entries: a strided gather from a dense ``[B, S, F]`` would miss the cache per element."""
        n_b, seq, d_sae = self.shape
        pairs = b * d_sae + f
        lookup = torch.full((n_b * d_sae,), -1, dtype=torch.long, device=b.device)
        lookup[pairs] = torch.arange(len(pairs), device=b.device)  # one of any duplicates wins
        row = lookup[self.b * d_sae + self.f]
        hit = row >= 0
        out = torch.zeros((len(pairs), seq), device=b.device)
        out[row[hit], self.s[hit]] = self.values[hit]
        return out[lookup[pairs]]  # duplicates read the winner's row, which is theirs too


def encode_firing(sae: JumpReLUSAE, x: torch.Tensor, valid: torch.Tensor, b0: int) -> FiringBatch:
    """The firing entries of ``sae.encode(x)`` (same values) for ``x [B, S, d_in]`` where
    ``valid [B, S]``. Past the matmul, one comparison and one scan touch all ``B * S * d_sae``
    values: ``encode``'s dense elementwise passes cost nearly as much as its matmul on a CPU."""
    pre = sae.pre_activations(x)
    fires = pre > sae.threshold.clamp_min(0)  # JumpReLU fires iff pre > max(threshold, 0)
    fires[~valid] = False
    b, s, f = fires.nonzero().unbind(1)
    values = pre[b, s, f].float()
    if values.device.type == "cpu":  # a sequential sum, so deterministic
        sums = torch.bincount(f, weights=values.double(), minlength=sae.d_sae)
    else:  # float atomics would vary from run to run; a dense pass costs little on a GPU
        sums = torch.where(fires, pre, 0).sum((0, 1), dtype=torch.float64)
    return FiringBatch(b, s, f, values, tuple(pre.shape), b0, sums)


class _Candidates(NamedTuple):
    """Newcomers for a bank: for each feature ``feats[g]`` (``[G]``), candidates keyed
    ``key[g, j]`` at batch window ``b[g, j]``, position ``pos[g, j]`` (``None``: the window's
    peak); all ``[G, c]``, pads keyed below any slot."""

    feats: torch.Tensor
    key: torch.Tensor
    b: torch.Tensor
    pos: torch.Tensor | None = None


def _merge(bank: dict, batch: FiringBatch, cands: _Candidates) -> None:
    """Keep for each feature the ``m`` entries with the largest keys among its bank slots and
    its candidates.

    Slot-stable: kept entries stay put and newcomers fill the freed slots, so only newcomers'
    activations are built and written; once a bank has filled up, few candidates get in.
    """
    feats, cand_key = cands.feats, cands.key
    (n_groups, n_cand), m, dev = cand_key.shape, bank["key"].shape[1], cand_key.device
    if n_groups == 0:
        return
    top = torch.cat([bank["key"][feats], cand_key], 1).topk(m, dim=1).indices
    chosen = torch.zeros((n_groups, m + n_cand), dtype=torch.bool, device=dev)
    chosen.scatter_(1, top, True)
    new = chosen[:, m:]
    # Pair each group's j-th freed slot with its j-th chosen newcomer (both row-major).
    slot = (~chosen[:, :m]).to(torch.int8).argsort(dim=1, descending=True, stable=True)
    take = torch.arange(m, device=dev)[None] < new.sum(1, keepdim=True)
    rows, slot = feats[:, None].expand(n_groups, m)[take], slot[take]
    g, j = new.nonzero().unbind(1)
    b = cands.b[g, j]
    acts = batch.rows(b, feats[g])  # [n_new, S]
    pos = acts.argmax(1) if cands.pos is None else cands.pos[g, j]
    bank["key"][rows, slot] = cand_key[g, j]
    bank["windows"][rows, slot] = b + batch.b0
    bank["positions"][rows, slot] = pos
    bank["values"][rows, slot] = acts.gather(1, pos[:, None]).squeeze(1)
    bank["acts"][rows, slot] = acts


def _sparse_candidates(bank: dict, b, s, f, key) -> _Candidates:
    """Candidate tokens ``[n]`` (window, position, feature, key) -> for each feature, its best
    ``m`` that beat the bank's weakest, laid out ``[G, m]`` for :func:`_merge` (pads: key -2)."""
    m, dev = bank["key"].shape[1], key.device
    keep = key > bank["key"].amin(1)[f]
    order = (f[keep] * 2**_KEY_BITS + (2**_KEY_BITS - 1 - key[keep])).argsort(stable=True)
    b, s, f, key = (t[keep][order] for t in (b, s, f, key))  # by feature, keys descending
    feats, counts = torch.unique_consecutive(f, return_counts=True)
    group = torch.repeat_interleave(torch.arange(len(feats), device=dev), counts)
    rank = torch.arange(len(f), device=dev) - (counts.cumsum(0) - counts)[group]
    sel = rank < m
    out = [torch.full((len(feats), m), -2, dtype=torch.long, device=dev) for _ in range(3)]
    for t, v in zip(out, (key, b, s), strict=True):
        t[group[sel], rank[sel]] = v[sel]
    return _Candidates(feats, out[0], out[1], out[2])


class Accumulator:
    """Running statistics of one SAE's features; ``state`` is all that a checkpoint holds."""

    def __init__(self, d_sae: int, seq: int, settings: PassSettings, dev: torch.device):
        n_bins, self.n_bins, self.seed = settings.n_bins, settings.n_bins, settings.seed
        self.state = {
            "n_tokens": torch.zeros((), dtype=torch.long, device=dev),
            "count": torch.zeros(d_sae, dtype=torch.long, device=dev),
            "sum": torch.zeros(d_sae, dtype=torch.float64, device=dev),
            "max": torch.zeros(d_sae, device=dev),
            "hist": torch.zeros((d_sae, n_bins), dtype=torch.long, device=dev),
            "edges": torch.zeros(0, device=dev),  # set by the first batch that fires
        }
        banks = (("top", settings.k, 0.0), ("sample", settings.n_quantile_samples, -1))
        for name, m, empty in banks:  # empty < any key
            self.state |= {
                f"{name}.key": torch.full((d_sae, m), empty, device=dev),
                f"{name}.windows": torch.full((d_sae, m), -1, dtype=torch.long, device=dev),
                f"{name}.positions": torch.zeros((d_sae, m), dtype=torch.long, device=dev),
                f"{name}.values": torch.zeros((d_sae, m), device=dev),
                f"{name}.acts": torch.zeros((d_sae, m, seq), device=dev),
            }
        self.state["sample.key"] = self.state["sample.key"].long()

    def bank(self, name: str) -> dict[str, torch.Tensor]:
        """The arrays of bank ``name`` (``"top"`` or ``"sample"``), by array name (views)."""
        return {n[len(name) + 1 :]: t for n, t in self.state.items() if n.startswith(name + ".")}

    def update(self, batch: FiringBatch, n_valid: torch.Tensor) -> None:
        """Add a batch of ``n_valid`` counted tokens."""
        st, (b, s, f, values), (n_b, seq, d_sae) = self.state, batch[:4], batch.shape
        st["n_tokens"] += n_valid
        st["count"] += torch.bincount(f, minlength=d_sae)
        st["sum"] += batch.sums
        peak = torch.zeros(n_b * d_sae, device=values.device)  # [B, F]: ranks the top contexts
        peak = peak.scatter_reduce_(0, b * d_sae + f, values, "amax").view(n_b, d_sae)
        torch.maximum(st["max"], peak.amax(0), out=st["max"])
        feats = (peak > st["top.key"].amin(1)).any(0).nonzero().flatten()
        cand = peak.T[feats]
        cand = cand.masked_fill(cand <= 0, -math.inf)  # a silent window is a pad, never a slot
        wins = torch.arange(n_b, device=cand.device).expand_as(cand)
        _merge(self.bank("top"), batch, _Candidates(feats, cand, wins))
        keys = sample_keys((b + batch.b0) * seq + s, f, d_sae, self.seed)
        _merge(self.bank("sample"), batch, _sparse_candidates(self.bank("sample"), b, s, f, keys))
        if values.numel() == 0:
            return
        if st["edges"].numel() == 0:  # six decades around the first batch's median, for good
            mid = math.log10(float(values.median()))
            edges = torch.logspace(mid - 3, mid + 3, self.n_bins + 1, dtype=torch.float64)
            st["edges"] = edges.float().to(values.device)
        bins = torch.bucketize(values, st["edges"][1:-1], right=True)
        flat = torch.bincount(f * self.n_bins + bins, minlength=d_sae * self.n_bins)
        st["hist"] += flat.view(d_sae, self.n_bins)

    def examples(self) -> dict[str, torch.Tensor]:
        """Both banks on the CPU, as :class:`FeatureStats` holds them: ``top_*`` strongest
        first, ``sample_*`` weakest first, empty slots last either way."""
        examples = {}
        for name, descending in (("top", True), ("sample", False)):
            bank = {n: t.cpu() for n, t in self.bank(name).items()}
            score = bank["values"].masked_fill(
                bank["windows"] < 0, -math.inf if descending else math.inf
            )
            order = score.argsort(dim=1, descending=descending, stable=True)
            for n in BANK_ARRAYS:
                idx = order if n != "acts" else order[..., None].expand_as(bank[n])
                examples[f"{name}_{n}"] = bank[n].gather(1, idx)
        return examples


class PassCheckpoint:
    """The running state of a pass, saved atomically at ``path`` with the pass's ``identity``
    (its model, corpus, SAEs and settings): a pass resumes only a checkpoint of itself."""

    def __init__(self, path: Path, identity: dict):
        self.path, self.identity = path, identity

    def save(self, accs: dict[str, Accumulator], next_window: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            f"{name}/{key}": t.contiguous().cpu()
            for name, acc in accs.items()
            for key, t in acc.state.items()
        }
        meta = {"gsnb": json.dumps({**self.identity, "next_window": next_window})}
        atomic_write(self.path, lambda p: save_file(tensors, p, metadata=meta))

    def resume(self, accs: dict[str, Accumulator]) -> int:
        """Load the saved running state into ``accs``, if any; return the next window to
        process (0 without a checkpoint)."""
        if not self.path.is_file():
            return 0
        with safe_open(str(self.path), framework="pt") as fh:
            saved = json.loads(fh.metadata()["gsnb"])
            if diffs := [k for k in self.identity if saved.get(k) != self.identity[k]]:
                raise ValueError(
                    f"{self.path} checkpoints feature_stats run with other arguments "
                    f"({', '.join(diffs)} differ): pass another out_dir, or delete this one to "
                    "start over"
                )
            for name, acc in accs.items():
                for key, t in acc.state.items():
                    acc.state[key] = fh.get_tensor(f"{name}/{key}").to(t.device)
        return int(saved["next_window"])
