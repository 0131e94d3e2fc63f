"""feature_stats(): what every SAE feature responds to over a corpus, from one streaming pass.

Per feature, all features at once: the top activating contexts (one per window, at the window's
peak), a random sample of firing tokens shown by activation quantile, a histogram of non-zero
activations, firing density, mean and max activation, and logit effects. The result,
:class:`FeatureStats`, is plain data that ``plots``/``widgets`` draw.

Positions holding control tokens (BOS, EOS, PAD: :func:`gsnb.core.data.special_token_mask`) are left
out of every statistic, as they are from SAE training data; contexts show them with activation 0.

Memory: each kept example holds its window's per-token activations (float32), so the running
state takes about ``4 * d_sae * (k + n_quantile_samples) * seq_len`` bytes on the SAE's device
(16k features, 20 + 20 examples, 128 tokens: 336 MB) whatever the corpus size.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from gsnb.core.data import special_token_mask
from gsnb.core.files import atomic_write
from gsnb.core.gemma import WRITES_TO_RESIDUAL, Gemma
from gsnb.saes.sae import JumpReLUSAE

FORMAT = "gsnb.feature_stats.v1"
_CKPT = "feature_stats.ckpt.safetensors"
_KEY_BITS = 40  # sample keys lie in [0, 2**40), leaving room in an int64 for the feature id
_EX = ("windows", "positions", "values", "acts")  # the arrays of a bank of examples


class Example(NamedTuple):
    """One context: a corpus window with one feature's activation at each of its tokens."""

    tokens: list[int]
    str_tokens: list[str]
    activations: list[float]
    """``[seq_len]``, 0 at control tokens."""
    window: int
    """Row of the corpus ``tokens``."""
    position: int
    """Where it was picked: the window's peak, or the sampled token."""
    activation: float


class LogitEffects(NamedTuple):
    """Tokens a feature's decoder row promotes (top, descending) and suppresses (bottom)."""

    top_tokens: list[str]
    top_values: list[float]
    bottom_tokens: list[str]
    bottom_values: list[float]
    top_ids: list[int]
    bottom_ids: list[int]


@dataclass(repr=False, eq=False)
class FeatureStats:
    """Statistics of one SAE's features over a corpus (made by :func:`feature_stats`).

    Tensors live on the CPU; ``F = d_sae``, ``S = seq_len``. Example slots a feature did not
    fill (it fired in fewer windows or tokens) have window ``-1``.
    """

    model_name: str
    """The model the corpus ran through."""
    site_in: str
    site_out: str
    d_sae: int
    neuronpedia_id: str | None
    sae_id: str | None
    """``"{release}/{sae_id}"`` for a released SAE."""
    sae_fingerprint: str
    """sha256 prefix of the SAE's weights: :meth:`check_sae` matches stats to their SAE."""
    n_tokens: int
    """Tokens counted (control tokens excluded)."""
    density: torch.Tensor
    """``[F]`` fraction of counted tokens where the feature fires."""
    max_activation: torch.Tensor
    """``[F]``."""
    mean_activation: torch.Tensor
    """``[F]`` over the tokens where it fires (0 if it never does)."""
    top_windows: torch.Tensor
    """``[F, k]``, strongest first, as are ``top_positions``, ``top_values [F, k]`` and
    ``top_acts [F, k, S]``."""
    top_positions: torch.Tensor
    top_values: torch.Tensor
    top_acts: torch.Tensor
    sample_windows: torch.Tensor
    """``[F, n_quantile_samples]``: a uniform sample of firing tokens, weakest first; likewise
    ``sample_positions``, ``sample_values`` and ``sample_acts [F, n, S]``."""
    sample_positions: torch.Tensor
    sample_values: torch.Tensor
    sample_acts: torch.Tensor
    hist_edges: torch.Tensor
    """``[n_bins + 1]`` log-spaced; the end bins also count the values beyond them."""
    hist_counts: torch.Tensor
    """``[F, n_bins]``."""
    logit_top_ids: torch.Tensor
    """``[F, n_logit_tokens]`` (0 wide if not computed); also ``logit_top_values`` and the
    ``logit_bottom_*`` pair (most negative first)."""
    logit_top_values: torch.Tensor
    logit_bottom_ids: torch.Tensor
    logit_bottom_values: torch.Tensor
    windows: torch.Tensor
    """``[m]`` sorted corpus rows the examples use; their tokens are ``window_tokens [m, S]``."""
    window_tokens: torch.Tensor
    token_strs: dict[int, str]
    """Text of every token id in ``window_tokens`` and the logit effects."""

    def __repr__(self) -> str:
        where = (
            self.site_in if self.site_in == self.site_out else f"{self.site_in}->{self.site_out}"
        )
        return (
            f"FeatureStats({self.model_name!r}, {where}, d_sae={self.d_sae}, n_tokens="
            f"{self.n_tokens}, k={self.top_values.shape[1]}, alive={int((self.density > 0).sum())})"
        )

    def _feature(self, feature: int) -> int:
        if not 0 <= int(feature) < self.d_sae:
            raise IndexError(f"feature {feature} is out of range: this SAE has {self.d_sae}")
        return int(feature)

    def _examples(self, bank: str, feature: int) -> list[Example]:
        f, out = self._feature(feature), []
        wins, pos, vals, acts = (getattr(self, f"{bank}_{name}")[f] for name in _EX)
        for w, p, v, a in zip(wins.tolist(), pos.tolist(), vals.tolist(), acts, strict=True):
            if w >= 0:
                toks = self.window_tokens[int(torch.searchsorted(self.windows, w))].tolist()
                out.append(Example(toks, [self.token_strs[t] for t in toks], a.tolist(), w, p, v))
        return out

    def top_examples(self, feature: int) -> list[Example]:
        """The (up to ``k``) windows where ``feature`` peaks highest, strongest first."""
        return self._examples("top", feature)

    def quantile_examples(self, feature: int, n_groups: int = 5) -> list[list[Example]]:
        """The random sample of ``feature``'s firing tokens cut into ``n_groups`` equal groups
        by activation, lowest first: examples from each quantile of its distribution."""
        examples = self._examples("sample", feature)
        cuts = [round(i * len(examples) / n_groups) for i in range(n_groups + 1)]
        return [examples[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]

    def histogram(self, feature: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(bin_edges [n + 1], counts [n])`` of ``feature``'s non-zero activations over its
        populated bins (both empty if it never fires)."""
        counts = self.hist_counts[self._feature(feature)]
        used = counts.nonzero().flatten()
        if used.numel() == 0:
            return self.hist_edges[:0], counts[:0]
        return self.hist_edges[int(used[0]) : int(used[-1]) + 2], counts[used[0] : used[-1] + 1]

    def logit_effects(self, feature: int, k: int = 10) -> LogitEffects:
        """The ``k`` tokens whose logits ``feature``'s decoder row raises and lowers most (see
        :func:`feature_stats`)."""
        f = self._feature(feature)
        if self.logit_top_ids.shape[1] == 0:
            raise ValueError(
                f"no logit effects stored: the SAE writes {self.site_out}, which is no residual "
                "summand, or feature_stats ran with n_logit_tokens=0 (pass 10)"
            )
        top, bottom = self.logit_top_ids[f, :k].tolist(), self.logit_bottom_ids[f, :k].tolist()
        return LogitEffects(
            [self.token_strs[t] for t in top], self.logit_top_values[f, :k].tolist(),
            [self.token_strs[t] for t in bottom], self.logit_bottom_values[f, :k].tolist(),
            top, bottom,
        )  # fmt: skip

    def top_tokens(self, features: Sequence[int] | None = None) -> tuple[list[list[str]], ...]:
        """``(fires, promotes)``: per feature (all, or those listed), the distinct tokens at its
        top examples' peaks, strongest first, and the tokens its decoder promotes most."""
        features = range(self.d_sae) if features is None else features
        valid = self.top_windows >= 0  # [F, k]
        rows = torch.searchsorted(self.windows, self.top_windows.clamp_min(0))
        rows = rows.clamp_max(max(len(self.windows) - 1, 0))
        peaks = self.window_tokens[rows, self.top_positions.clamp_min(0)] if valid.any() else None
        fires, promotes = [], []
        for f in features:
            ids = [] if peaks is None else peaks[f][valid[f]].tolist()
            fires.append(list(dict.fromkeys(self.token_strs[i] for i in ids)))
            promotes.append([self.token_strs[i] for i in self.logit_top_ids[f].tolist()])
        return fires, promotes

    def check_sae(self, sae: JumpReLUSAE) -> None:
        """Raise ``ValueError`` unless these stats were computed with ``sae``."""
        if sae.d_sae != self.d_sae:
            problem = f"{sae.d_sae} features where the stats have {self.d_sae}"
        elif (sae.site_in, sae.site_out) != (self.site_in, self.site_out):
            problem = f"sites {sae.site_in}->{sae.site_out}, not {self.site_in}->{self.site_out}"
        elif _fingerprint(sae) != self.sae_fingerprint:
            problem = "other weights than the SAE the stats came from"
        else:
            return
        raise ValueError(
            f"these feature stats do not belong to {sae!r}: it has {problem}. Run "
            "feature_stats with this SAE, or load the stats saved for it"
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``stats.safetensors`` and ``stats.json`` into the folder ``path``, atomically."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        tensors = {k: v.contiguous() for k, v in values.items() if isinstance(v, torch.Tensor)}
        meta = {k: v for k, v in values.items() if k not in tensors} | {"format": FORMAT}
        atomic_write(folder / "stats.safetensors", lambda p: save_file(tensors, p))
        atomic_write(folder / "stats.json", lambda p: Path(p).write_text(json.dumps(meta)))
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStats:
        """Read stats written by :meth:`save` (no pickles)."""
        folder = Path(path)
        if not (folder / "stats.json").is_file() or not (folder / "stats.safetensors").is_file():
            raise FileNotFoundError(f"{folder} holds no stats.json and stats.safetensors")
        meta = json.loads((folder / "stats.json").read_text())
        if meta.pop("format", None) != FORMAT:
            raise ValueError(f"{folder}/stats.json is not {FORMAT}: recompute the stats")
        meta["token_strs"] = {int(k): v for k, v in meta["token_strs"].items()}
        return cls(**meta, **load_file(str(folder / "stats.safetensors")))


def _fingerprint(sae: JumpReLUSAE) -> str:
    digest = hashlib.sha256()
    for name in ("W_enc", "b_enc", "threshold", "W_dec"):
        digest.update(getattr(sae, name).detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


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


class _Batch(NamedTuple):
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


def _encode(sae: JumpReLUSAE, x: torch.Tensor, valid: torch.Tensor, b0: int) -> _Batch:
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
    return _Batch(b, s, f, values, tuple(pre.shape), b0, sums)


def _merge(bank: dict, batch: _Batch, feats, cand_key, cand_b, cand_pos=None) -> None:
    """Keep for each feature ``feats[g]`` the ``m`` entries with the largest keys among its bank
    slots and its candidates ``cand_key[g, j]`` at batch window ``cand_b[g, j]``, position
    ``cand_pos[g, j]`` (``None``: the window's peak); all ``[G, c]``, pads keyed below any slot.

    Slot-stable: kept entries stay put and newcomers fill the freed slots, so only newcomers'
    activations are built and written; once a bank has filled up, few candidates get in.
    """
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
    b = cand_b[g, j]
    acts = batch.rows(b, feats[g])  # [n_new, S]
    pos = acts.argmax(1) if cand_pos is None else cand_pos[g, j]
    bank["key"][rows, slot] = cand_key[g, j]
    bank["windows"][rows, slot] = b + batch.b0
    bank["positions"][rows, slot] = pos
    bank["values"][rows, slot] = acts.gather(1, pos[:, None]).squeeze(1)
    bank["acts"][rows, slot] = acts


def _sparse_candidates(bank: dict, b, s, f, key) -> tuple:
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
    return feats, *out


class _Accumulator:
    """Running statistics of one SAE's features; ``state`` is all that a checkpoint holds."""

    def __init__(self, d_sae: int, seq: int, k: int, n_samples: int, n_bins: int, seed: int, dev):
        self.n_bins, self.seed = n_bins, seed
        self.state = {
            "n_tokens": torch.zeros((), dtype=torch.long, device=dev),
            "count": torch.zeros(d_sae, dtype=torch.long, device=dev),
            "sum": torch.zeros(d_sae, dtype=torch.float64, device=dev),
            "max": torch.zeros(d_sae, device=dev),
            "hist": torch.zeros((d_sae, n_bins), dtype=torch.long, device=dev),
            "edges": torch.zeros(0, device=dev),  # set by the first batch that fires
        }
        for name, m, empty in (("top", k, 0.0), ("sample", n_samples, -1)):  # empty < any key
            self.state |= {
                f"{name}.key": torch.full((d_sae, m), empty, device=dev),
                f"{name}.windows": torch.full((d_sae, m), -1, dtype=torch.long, device=dev),
                f"{name}.positions": torch.zeros((d_sae, m), dtype=torch.long, device=dev),
                f"{name}.values": torch.zeros((d_sae, m), device=dev),
                f"{name}.acts": torch.zeros((d_sae, m, seq), device=dev),
            }
        self.state["sample.key"] = self.state["sample.key"].long()

    def bank(self, name: str) -> dict:
        return {n[len(name) + 1 :]: t for n, t in self.state.items() if n.startswith(name + ".")}

    def update(self, batch: _Batch, n_valid: torch.Tensor) -> None:
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
        _merge(self.bank("top"), batch, feats, cand, wins)
        keys = sample_keys((b + batch.b0) * seq + s, f, d_sae, self.seed)
        _merge(self.bank("sample"), batch, *_sparse_candidates(self.bank("sample"), b, s, f, keys))
        if values.numel() == 0:
            return
        if st["edges"].numel() == 0:  # six decades around the first batch's median, for good
            mid = math.log10(float(values.median()))
            edges = torch.logspace(mid - 3, mid + 3, self.n_bins + 1, dtype=torch.float64)
            st["edges"] = edges.float().to(values.device)
        bins = torch.bucketize(values, st["edges"][1:-1], right=True)
        flat = torch.bincount(f * self.n_bins + bins, minlength=d_sae * self.n_bins)
        st["hist"] += flat.view(d_sae, self.n_bins)


@torch.no_grad()
def _logit_effects(model, sae: JumpReLUSAE, n: int, chunk: int = 256) -> list[torch.Tensor]:
    """``[top ids, top values, bottom ids, bottom values]``, each ``[d_sae, n]``, on the CPU."""
    gemma = Gemma(model)
    if n <= 0 or model.parse_site(sae.site_out).kind not in WRITES_TO_RESIDUAL:
        return [torch.zeros((sae.d_sae, 0), dtype=d) for d in (torch.long, torch.float32) * 2]
    parts: list[list[torch.Tensor]] = [[], [], [], []]
    for i in range(0, sae.d_sae, chunk):
        logits = gemma.logit_effects(sae.site_out, sae.W_dec[i : i + chunk])  # [chunk, vocab]
        for j, largest in ((0, True), (2, False)):
            top = logits.topk(min(n, logits.shape[1]), dim=1, largest=largest)
            parts[j].append(top.indices.cpu())
            parts[j + 1].append(top.values.cpu())
    return [torch.cat(p) for p in parts]


def _finish(model, sae, acc: _Accumulator, tokens: torch.Tensor, n_logits: int) -> FeatureStats:
    st = {n: t.cpu() for n, t in acc.state.items()}
    if int(st["n_tokens"]) == 0:
        raise ValueError(
            "the corpus holds only control tokens (BOS/EOS/PAD), so there is nothing to measure: "
            "pass windows of text, for example gsnb.core.data.default_tokens(model, 256, 128)"
        )
    examples = {}
    for name, descending in (("top", True), ("sample", False)):  # empty slots last either way
        bank = {n[len(name) + 1 :]: t for n, t in st.items() if n.startswith(name + ".")}
        score = bank["values"].masked_fill(
            bank["windows"] < 0, -math.inf if descending else math.inf
        )
        order = score.argsort(dim=1, descending=descending, stable=True)
        for n in _EX:
            idx = order if n != "acts" else order[..., None].expand_as(bank[n])
            examples[f"{name}_{n}"] = bank[n].gather(1, idx)
    windows = torch.cat([examples["top_windows"].flatten(), examples["sample_windows"].flatten()])
    windows = windows.unique()
    windows = windows[windows >= 0]
    top_ids, top_values, bottom_ids, bottom_values = _logit_effects(model, sae, n_logits)
    ids = torch.cat([tokens[windows].flatten(), top_ids.flatten(), bottom_ids.flatten()]).unique()
    strs = model.tokenizer.batch_decode([[i] for i in ids.tolist()])
    count, cfg = st["count"], sae.cfg
    return FeatureStats(
        model.name, sae.site_in, sae.site_out, sae.d_sae, cfg.neuronpedia_id,
        f"{cfg.release}/{cfg.sae_id}" if cfg.release else None, _fingerprint(sae),
        n_tokens=int(st["n_tokens"]), density=count.float() / int(st["n_tokens"]),
        max_activation=st["max"], mean_activation=(st["sum"] / count.clamp_min(1)).float(),
        **examples, hist_counts=st["hist"],
        hist_edges=st["edges"] if st["edges"].numel() else torch.logspace(-3, 3, acc.n_bins + 1),
        logit_top_ids=top_ids, logit_top_values=top_values,
        logit_bottom_ids=bottom_ids, logit_bottom_values=bottom_values,
        windows=windows, window_tokens=tokens[windows],
        token_strs=dict(zip(ids.tolist(), strs, strict=True)),
    )  # fmt: skip


def feature_stats(
    model,
    sae_or_saes: JumpReLUSAE | Sequence[JumpReLUSAE] | Mapping[str, JumpReLUSAE],
    tokens: torch.Tensor,
    k: int = 20,
    n_quantile_samples: int = 20,
    n_bins: int = 120,
    n_logit_tokens: int = 10,
    batch_size: int = 16,
    out_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 50,
    seed: int = 0,
    progress: bool = True,
) -> FeatureStats | dict[str, FeatureStats]:
    """Statistics of every feature of one or several SAEs over ``tokens``, in one pass.

    Each batch runs the model once for all SAEs' input sites (stopping after the deepest) and
    updates running statistics with batched tensor ops on each SAE's device:

    * top ``k`` contexts: the windows where the feature peaks highest, with per-token activations;
    * ``n_quantile_samples`` firing tokens drawn uniformly without replacement (seeded, see
      :func:`sample_keys`), which :meth:`FeatureStats.quantile_examples` groups by quantile;
    * a histogram of non-zero activations in ``n_bins`` log10 bins over six decades centred on the
      median non-zero activation of the first batch that fires (then fixed);
    * density, mean and max; then, after the pass, the top and bottom ``n_logit_tokens`` logit
      effects ``W_dec @ diag(1 + final_norm.weight) @ W_U.T`` (for ``attn_out`` SAEs through
      ``o_proj`` and its norm's gain first; Gemma 2's logit softcap is monotone and left out).
      That ``[d_sae, vocab]`` product takes seconds on a GPU but minutes on a CPU for 16k
      features and Gemma's 262k vocabulary; ``n_logit_tokens=0`` skips it.

    Args:
        model: a :class:`gsnb.Model`.
        sae_or_saes: one SAE or transcoder, a list of them (keyed by ``site_in``) or a dict.
        tokens: ``[n_windows, seq_len]`` token ids, e.g. from :func:`gsnb.core.data.default_tokens`.
        out_dir: folder for a checkpoint written atomically every ``checkpoint_every`` batches
            and at the end; calling again with the same arguments resumes, with identical results.

    Returns:
        A :class:`FeatureStats`, or ``{name: FeatureStats}`` when given several SAEs.

    >>> stats = feature_stats(model, sae, gsnb.core.data.default_tokens(model, 1024, 128))
    >>> stats.top_examples(123)[0].str_tokens
    """
    saes = _as_dict(sae_or_saes)
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.is_floating_point():
        raise ValueError(
            "tokens must be an integer tensor [n_windows, seq_len] (see gsnb.core.data)"
        )
    if 0 in tokens.shape:
        raise ValueError(
            f"tokens has shape {tuple(tokens.shape)}: the corpus is empty; pass some windows, "
            "for example gsnb.core.data.default_tokens(model, 256, 128)"
        )
    sizes = {"k": k, "n_quantile_samples": n_quantile_samples, "n_bins": n_bins,
             "batch_size": batch_size, "checkpoint_every": checkpoint_every}  # fmt: skip
    if bad := {name: v for name, v in sizes.items() if v < 1}:
        raise ValueError(f"these must be at least 1: {bad}")
    for sae in saes.values():
        sae.check_model(model)
    tokens = tokens.detach().to("cpu", torch.long).contiguous()
    n, seq = tokens.shape
    accs = {
        name: _Accumulator(sae.d_sae, seq, k, n_quantile_samples, n_bins, seed, sae.W_enc.device)
        for name, sae in saes.items()
    }
    ckpt, identity, start = None, {}, 0
    if out_dir is not None:
        ckpt = Path(out_dir) / _CKPT
        identity = {
            "format": FORMAT, "model": model.name, "n_windows": n, "seq_len": seq,
            "tokens_sha256": hashlib.sha256(tokens.numpy().tobytes()).hexdigest(),
            "saes": {name: _fingerprint(sae) for name, sae in saes.items()}, **sizes, "seed": seed,
        }  # fmt: skip
        identity.pop("checkpoint_every")
        start = _resume(ckpt, identity, accs)
    sites = list(dict.fromkeys(sae.site_in for sae in saes.values()))
    bar = tqdm(total=n * seq, initial=start * seq, unit="tok", unit_scale=True,
               desc="feature stats", disable=not progress)  # fmt: skip
    with torch.no_grad(), bar:
        for i, b0 in enumerate(range(start, n, batch_size), 1):
            batch = tokens[b0 : b0 + batch_size]
            _, cache = model.run_with_cache(batch, sites, stop_early=True)
            valid = ~special_token_mask(batch, model)
            for name, sae in saes.items():
                mask, x = valid.to(sae.W_enc.device), cache[sae.site_in].to(sae.W_enc.device)
                firing = _encode(sae, x, mask, b0)
                with _one_cpu_thread(x.device):
                    accs[name].update(firing, mask.sum())
            bar.update(batch.numel())
            if ckpt is not None and (i % checkpoint_every == 0 or b0 + batch_size >= n):
                _checkpoint(ckpt, identity, accs, min(b0 + batch_size, n))
    out = {
        name: _finish(model, sae, accs[name], tokens, n_logit_tokens) for name, sae in saes.items()
    }
    return next(iter(out.values())) if isinstance(sae_or_saes, JumpReLUSAE) else out


@contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Bookkeeping runs many ops on ~1e5 elements: split over CPU threads they cost more in
    synchronisation than they save, and several times more when other processes share the cores."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _as_dict(sae_or_saes) -> dict[str, JumpReLUSAE]:
    if isinstance(sae_or_saes, JumpReLUSAE):
        sae_or_saes = [sae_or_saes]
    if isinstance(sae_or_saes, Mapping):
        saes = dict(sae_or_saes)
    else:
        saes = {str(getattr(sae, "site_in", sae)): sae for sae in sae_or_saes}
        if len(saes) < len(sae_or_saes):
            raise ValueError("two SAEs read one site: pass a dict {name: sae} to tell them apart")
    if not saes or not all(isinstance(sae, JumpReLUSAE) for sae in saes.values()):
        raise ValueError(f"pass a JumpReLUSAE or a non-empty list or dict of them: {sae_or_saes!r}")
    return saes


def _checkpoint(path: Path, identity: dict, accs: dict, next_window: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        f"{name}/{key}": t.contiguous().cpu()
        for name, acc in accs.items()
        for key, t in acc.state.items()
    }
    meta = {"gsnb": json.dumps({**identity, "next_window": next_window})}
    atomic_write(path, lambda p: save_file(tensors, p, metadata=meta))


def _resume(path: Path, identity: dict, accs: dict) -> int:
    """Load the running state saved at ``path``, if any; return the next window to process."""
    if not path.is_file():
        return 0
    with safe_open(str(path), framework="pt") as fh:
        saved = json.loads(fh.metadata()["gsnb"])
        if diffs := [k for k in identity if saved.get(k) != identity[k]]:
            raise ValueError(
                f"{path} checkpoints feature_stats run with other arguments ({', '.join(diffs)} "
                "differ): pass another out_dir, or delete this one to start over"
            )
        for name, acc in accs.items():
            for key, t in acc.state.items():
                acc.state[key] = fh.get_tensor(f"{name}/{key}").to(t.device)
    return int(saved["next_window"])


@torch.no_grad()
def feature_activations(model, sae: JumpReLUSAE, text: str, feature: int | None = None):
    """``(str_tokens [pos], activations)`` of ``text`` (BOS first): ``feature``'s ``[pos]`` list,
    or all features' ``[pos, d_sae]`` tensor when ``feature`` is None; 0 at control tokens."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the text is empty: type some text to encode")
    if feature is not None and not 0 <= int(feature) < sae.d_sae:
        raise IndexError(f"feature {feature} is out of range: this SAE has {sae.d_sae}")
    sae.check_model(model)
    tokens = model.to_tokens(text)  # raises past the model's context
    _, cache = model.run_with_cache(tokens, [sae.site_in], stop_early=True)
    acts = sae.encode(cache[sae.site_in].to(sae.W_enc.device))[0].float().cpu()
    acts[special_token_mask(tokens, model)[0].cpu()] = 0
    str_tokens = model.to_str_tokens(tokens[0])
    return (str_tokens, acts) if feature is None else (str_tokens, acts[:, int(feature)].tolist())
