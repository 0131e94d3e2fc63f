"""FeatureStats: what every feature of one SAE responds to over a corpus, as plain data.

Made by :func:`gsnb.feature_stats` (:mod:`gsnb.analysis.features`); drawn by ``plots`` and
``widgets``; saved and loaded as safetensors + JSON (no pickles).

>>> stats.top_examples(123)[0].str_tokens
>>> stats.logit_effects(123).top_tokens
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save_file

from gsnb.analysis.logit_effects import LogitEffects, LogitRanks
from gsnb.core.files import atomic_write
from gsnb.core.sites import target_name
from gsnb.saes.sae import JumpReLUSAE

FORMAT = "gsnb.feature_stats.v1"
BANK_ARRAYS = ("windows", "positions", "values", "acts")
"""The arrays of a bank of examples (``top_*`` and ``sample_*``)."""


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

    @property
    def name(self) -> str:
        """The SAE's name, as :attr:`gsnb.JumpReLUSAE.name` gives it (``"resid_post.3"``,
        ``"transcoder.3"``): the key :func:`gsnb.feature_stats` files these stats under."""
        return target_name(self.site_in, self.site_out)

    def __repr__(self) -> str:
        return (
            f"FeatureStats({self.model_name!r}, {self.name}, d_sae={self.d_sae}, n_tokens="
            f"{self.n_tokens}, k={self.top_values.shape[1]}, alive={int((self.density > 0).sum())})"
        )

    def _feature(self, feature: int) -> int:
        if not 0 <= int(feature) < self.d_sae:
            raise IndexError(f"feature {feature} is out of range: this SAE has {self.d_sae}")
        return int(feature)

    def _examples(self, bank: str, feature: int) -> list[Example]:
        f, out = self._feature(feature), []
        wins, pos, vals, acts = (getattr(self, f"{bank}_{name}")[f] for name in BANK_ARRAYS)
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
        ranks = LogitRanks(
            self.logit_top_ids, self.logit_top_values,
            self.logit_bottom_ids, self.logit_bottom_values,
        )  # fmt: skip
        return LogitEffects.from_ranks(ranks, f, k, self.token_strs.__getitem__)

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
        elif fingerprint(sae) != self.sae_fingerprint:
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


def fingerprint(sae: JumpReLUSAE) -> str:
    """A sha256 prefix of the SAE's weights: stats and checkpoints name the SAE they belong to."""
    digest = hashlib.sha256()
    for name in ("W_enc", "b_enc", "threshold", "W_dec"):
        digest.update(getattr(sae, name).detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
