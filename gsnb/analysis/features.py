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
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from gsnb.analysis.feature_accumulator import (
    Accumulator,
    PassCheckpoint,
    PassSettings,
    encode_firing,
    sample_keys,
)
from gsnb.analysis.feature_data import FORMAT, Example, FeatureStats, fingerprint
from gsnb.analysis.logit_effects import LogitEffects, feature_logit_ranks
from gsnb.core.data import special_token_mask
from gsnb.saes.sae import JumpReLUSAE, named

if TYPE_CHECKING:
    from gsnb.core.model import Model

__all__ = [
    "Example",
    "FeatureStats",
    "LogitEffects",
    "feature_activations",
    "feature_stats",
    "sample_keys",
]

_CKPT = "feature_stats.ckpt.safetensors"


def feature_stats(
    model: Model,
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
        sae_or_saes: one SAE or transcoder, a list of them (keyed by their
            :attr:`~gsnb.JumpReLUSAE.name`) or a dict.
        tokens: ``[n_windows, seq_len]`` token ids of held-out text, e.g.
            ``gsnb.core.data.default_tokens(model, 1024, 128, split="eval")``.
        out_dir: folder for a checkpoint written atomically every ``checkpoint_every`` batches
            and at the end; calling again with the same arguments resumes, with identical results.

    Returns:
        A :class:`FeatureStats`, or ``{name: FeatureStats}`` when given several SAEs.

    >>> tokens = gsnb.core.data.default_tokens(model, 1024, 128, split="eval")
    >>> stats = feature_stats(model, sae, tokens)
    >>> stats.top_examples(123)[0].str_tokens
    """
    saes = _as_dict(sae_or_saes)
    tokens = _check_corpus(tokens)
    settings = PassSettings(k, n_quantile_samples, n_bins, batch_size, checkpoint_every, seed)
    for sae in saes.values():
        sae.check_model(model)
    run = _Pass(model, saes, tokens, settings)
    checkpoint = None if out_dir is None else run.checkpoint(Path(out_dir) / _CKPT)
    run.stream(checkpoint, progress)
    out = {name: run.finish(name, n_logit_tokens) for name in saes}
    return next(iter(out.values())) if isinstance(sae_or_saes, JumpReLUSAE) else out


def _check_corpus(tokens: torch.Tensor) -> torch.Tensor:
    """``tokens`` as a contiguous CPU long tensor ``[n_windows, seq_len]``, or an error."""
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.is_floating_point():
        raise ValueError(
            "tokens must be an integer tensor [n_windows, seq_len] (see gsnb.core.data)"
        )
    if 0 in tokens.shape:
        raise ValueError(
            f"tokens has shape {tuple(tokens.shape)}: the corpus is empty; pass some windows, "
            "for example gsnb.core.data.default_tokens(model, 256, 128, split='eval')"
        )
    return tokens.detach().to("cpu", torch.long).contiguous()


@dataclass
class _Pass:
    """One streaming pass over ``tokens [n, S]`` for several SAEs, each with its running state."""

    model: Model
    saes: dict[str, JumpReLUSAE]
    tokens: torch.Tensor
    settings: PassSettings
    accs: dict[str, Accumulator] = field(init=False)
    start: int = 0
    """The first window still to process (after a resume)."""

    def __post_init__(self):
        seq = self.tokens.shape[1]
        self.accs = {
            name: Accumulator(sae.d_sae, seq, self.settings, sae.W_enc.device)
            for name, sae in self.saes.items()
        }

    def checkpoint(self, path: Path) -> PassCheckpoint:
        """A checkpoint of this pass at ``path``, resumed from if one is there."""
        n, seq = self.tokens.shape
        identity = {
            "format": FORMAT, "model": self.model.name, "n_windows": n, "seq_len": seq,
            "tokens_sha256": hashlib.sha256(self.tokens.numpy().tobytes()).hexdigest(),
            "saes": {name: fingerprint(sae) for name, sae in self.saes.items()},
            **asdict(self.settings),
        }  # fmt: skip
        identity.pop("checkpoint_every")  # how often to save changes no result
        ckpt = PassCheckpoint(path, identity)
        self.start = ckpt.resume(self.accs)
        return ckpt

    def stream(self, checkpoint: PassCheckpoint | None, progress: bool) -> None:
        """Run the model once per batch for all SAEs' input sites (stopping after the deepest)
        and update every SAE's running state; save the checkpoint every so often and at the end."""
        (n, seq), size = self.tokens.shape, self.settings.batch_size
        sites = list(dict.fromkeys(sae.site_in for sae in self.saes.values()))
        bar = tqdm(total=n * seq, initial=self.start * seq, unit="tok", unit_scale=True,
                   desc="feature stats", disable=not progress)  # fmt: skip
        with torch.no_grad(), bar:
            for i, b0 in enumerate(range(self.start, n, size), 1):
                batch = self.tokens[b0 : b0 + size]
                _, cache = self.model.run_with_cache(batch, sites, stop_early=True)
                valid = ~special_token_mask(batch, self.model)
                for name, sae in self.saes.items():
                    device = sae.W_enc.device
                    mask, x = valid.to(device), cache[sae.site_in].to(device)
                    firing = encode_firing(sae, x, mask, b0)
                    with _one_cpu_thread(x.device):
                        self.accs[name].update(firing, mask.sum())
                bar.update(batch.numel())
                last = b0 + size >= n
                if checkpoint is not None and (i % self.settings.checkpoint_every == 0 or last):
                    checkpoint.save(self.accs, min(b0 + size, n))

    def finish(self, name: str, n_logit_tokens: int) -> FeatureStats:
        """SAE ``name``'s :class:`FeatureStats` from its running state, with the logit effects of
        every feature and the text of every token the stats show."""
        sae, acc, tokens = self.saes[name], self.accs[name], self.tokens
        st = {n: t.cpu() for n, t in acc.state.items() if "." not in n}  # the banks aside
        if int(st["n_tokens"]) == 0:
            raise ValueError(
                "the corpus holds only control tokens (BOS/EOS/PAD), so there is nothing to "
                "measure: pass windows of text, for example "
                "gsnb.core.data.default_tokens(model, 256, 128, split='eval')"
            )
        examples = acc.examples()
        windows = torch.cat(
            [examples["top_windows"].flatten(), examples["sample_windows"].flatten()]
        )
        windows = windows.unique()
        windows = windows[windows >= 0]
        ranks = feature_logit_ranks(self.model, sae, n_logit_tokens)
        shown = [tokens[windows].flatten(), ranks.top_ids.flatten(), ranks.bottom_ids.flatten()]
        ids = torch.cat(shown).unique()
        strs = self.model.tokenizer.batch_decode([[i] for i in ids.tolist()])
        count, cfg, n_tokens = st["count"], sae.cfg, int(st["n_tokens"])
        edges = st["edges"] if st["edges"].numel() else torch.logspace(-3, 3, acc.n_bins + 1)
        return FeatureStats(
            model_name=self.model.name, site_in=sae.site_in, site_out=sae.site_out,
            d_sae=sae.d_sae, neuronpedia_id=cfg.neuronpedia_id,
            sae_id=f"{cfg.release}/{cfg.sae_id}" if cfg.release else None,
            sae_fingerprint=fingerprint(sae),
            n_tokens=n_tokens, density=count.float() / n_tokens,
            max_activation=st["max"], mean_activation=(st["sum"] / count.clamp_min(1)).float(),
            **examples, hist_counts=st["hist"], hist_edges=edges,
            logit_top_ids=ranks.top_ids, logit_top_values=ranks.top_values,
            logit_bottom_ids=ranks.bottom_ids, logit_bottom_values=ranks.bottom_values,
            windows=windows, window_tokens=tokens[windows],
            token_strs=dict(zip(ids.tolist(), strs, strict=True)),
        )  # fmt: skip


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
    """``{name: sae}``: a dict as given, else keyed by :attr:`JumpReLUSAE.name`."""
    if isinstance(sae_or_saes, Mapping):
        saes = dict(sae_or_saes)
    else:
        items = [sae_or_saes] if isinstance(sae_or_saes, JumpReLUSAE) else list(sae_or_saes)
        if not all(isinstance(sae, JumpReLUSAE) for sae in items):
            raise ValueError(f"pass a JumpReLUSAE or a non-empty list or dict of them: {items!r}")
        try:
            saes = named(items)
        except ValueError as err:  # same name: same sites
            raise ValueError(
                f"two SAEs read one site: {err}, or pass a dict {{name: sae}} to tell them apart"
            ) from None
    if not saes or not all(isinstance(sae, JumpReLUSAE) for sae in saes.values()):
        raise ValueError(f"pass a JumpReLUSAE or a non-empty list or dict of them: {sae_or_saes!r}")
    return saes


@torch.no_grad()
def feature_activations(model: Model, sae: JumpReLUSAE, text: str, feature: int | None = None):
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
