"""Train JumpReLU SAEs and transcoders: :func:`train_sae` and :func:`train_suite`.

The default recipe is Gemma Scope's (arXiv 2408.05147): inputs (and targets) multiplied by one
fixed scalar per site so their mean squared norm is 1, folded back into the weights on save;
decoder rows of unit norm; encoder initialised to the decoder's transpose; threshold 0.001 and
kernel bandwidth 0.001; Adam with beta1 = 0, beta2 = 0.999; a linearly warmed-up sparsity
coefficient; batches of 4,096 tokens without BOS; float32. The recipe leaves the encoder bias
open; gsnb starts it so about 100 features fire per token (``TrainConfig.init_l0``), which makes
every step sparse from the first. The maths of one step lives in :mod:`gsnb.saes.jumprelu`.

A suite trains many SAEs from the same batches, so one forward pass of the model feeds them all;
under ``torchrun`` each process trains a round-robin share of the sites and every process ends
with all of them.
"""

from __future__ import annotations

import itertools
import math
import os
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from gsnb.core.sites import parse_site, target_name, transcoder_sites
from gsnb.saes.checkpoints import read_checkpoint, write_checkpoint
from gsnb.saes.distributed import broadcast_saes, init_from_env
from gsnb.saes.jumprelu import SAETrainer
from gsnb.saes.sae import JumpReLUSAE, SAEConfig


@dataclass
class TrainConfig:
    """Everything that defines a training run (the recipe's defaults are Gemma Scope's)."""

    d_sae: int = 4096
    """Number of features (dictionary width)."""
    l0_coefficient: float = 3e-3
    """Sparsity coefficient lambda, in units of the scaled (mean squared norm 1) inputs."""
    target_l0: float | None = None
    """If set, the sparsity penalty is ``lambda * (L0 - target)^2 / target`` (pulls L0 to the
    target from both sides) instead of ``lambda * L0``."""
    lr: float | None = None
    """Adam learning rate. ``None``: Gemma Scope's 7e-5 for runs of 100k steps or more, times
    ``sqrt(100_000 / steps)`` for shorter runs but at most 4x (2.8e-4 from 6,250 steps down).
    Adam moves a weight about ``lr`` per step whatever the gradient, so short runs need a larger
    one to move thresholds at all; much larger (1e-3) kills most features within the first
    hundred steps, while the biases chase the initial over-reconstruction."""
    lr_warmup_steps: int | None = None
    """Linear learning-rate warmup; ``None``: 1,000 steps or 5% of the run, whichever is less."""
    lr_decay_fraction: float = 0.2
    """Share of the run at the end over which the learning rate decays linearly to zero."""
    l0_warmup_steps: int | None = None
    """Linear warmup of the sparsity coefficient from 0; ``None``: 10,000 steps or 20% of the
    run, whichever is less."""
    bandwidth: float = 0.001
    """Width ``eps`` of the rectangle kernel in the threshold's pseudo-derivatives."""
    threshold_init: float = 0.001
    """Initial threshold of every feature (scaled units)."""
    batch_size: int = 4096
    """Tokens per step (when gsnb makes the batches; given batches are used as they come)."""
    n_tokens: int = 4_096_000
    """Token budget: the run takes ``n_tokens // batch_size`` steps, or fewer if data ends."""
    seed: int = 0
    """Seeds the initialisation (per site, so a site's SAE does not depend on its company) and
    the order of gsnb-made batches."""
    device: str | None = None
    """Training device; ``None``: the model's (under torchrun with CUDA, ``cuda:LOCAL_RANK``)."""
    dtype: str = "float32"
    """Parameter and activation dtype during training: ``"float32"`` (the recipe) or
    ``"float64"``."""
    checkpoint_every: int = 0
    """Write a checkpoint every this many steps (and at the end); 0 writes none."""
    checkpoint_dir: str | None = None
    """Folder for checkpoints; a run started with a checkpoint there resumes from it."""
    drop_special_tokens: bool = True
    """Leave BOS/EOS/PAD positions out of gsnb-made batches (given batches are used as is)."""
    seq_len: int = 128
    """Window length when gsnb streams activations from the model itself (``data=None``)."""
    scale_batches: int = 1
    """Batches whose mean squared norm sets each site's fixed input scale."""
    init_l0: float | None = 100.0
    """Start each encoder bias at minus the per-feature quantile of the first batch's
    pre-activations that leaves about ``init_l0`` features active per token (at most half of
    them). The recipe fixes the thresholds (0.001) and the encoder (the decoder's transpose) but
    not this bias; at zero about half of all features fire, every step is dense (three to four
    times slower) until the thresholds climb, and short runs overshoot into FVU above 1.
    ``None`` starts at zero."""
    sparse_step: bool | None = None
    """Force the sparse (``True``) or dense (``False``) step; ``None`` chooses per step by the
    share of near-threshold entries (see :func:`gsnb.saes.jumprelu.loss_and_grads`)."""
    log_every: int = 10
    """Record a :class:`StepMetrics` every this many steps (and at the last)."""
    progress: bool = True
    """Show a progress bar with loss, L0 and FVU."""


class StepMetrics(NamedTuple):
    """One row of a training history (scaled units: inputs of mean squared norm 1)."""

    step: int
    loss: float
    mse: float
    l0: float
    fvu: float


class TrainResult(NamedTuple):
    """What :func:`train_sae` returns."""

    sae: JumpReLUSAE
    """The trained SAE, taking raw (unscaled) activations."""
    history: list[StepMetrics]
    """Metrics every ``cfg.log_every`` steps, for plotting."""
    steps: int
    """Steps taken."""
    seconds: float
    """Wall time of this call (a resumed run counts only its own part)."""


class SuiteResult(NamedTuple):
    """What :func:`train_suite` returns; ``saes`` and ``history`` are keyed by target name
    (``"resid_post.3"``, ``"transcoder.3"``)."""

    saes: dict[str, JumpReLUSAE]
    history: dict[str, list[StepMetrics]]
    ranks: dict[str, int]
    """Which process trained each SAE (all 0 without torchrun)."""
    steps: int
    seconds: float
    folder: Path | None = None
    """Where :func:`gsnb.small_suite` keeps the suite (a release folder for ``gsnb.load_sae``)."""

    def save(self, root: str | os.PathLike, l0_label: str = "small") -> dict[str, Path]:
        """Write every SAE under ``root`` in Gemma Scope 2's layout (see :func:`suite_id`);
        ``gsnb.load_sae(root, id)`` reads them back."""
        root = Path(root)
        return {
            n: sae.save(root / suite_id(n, sae.d_sae, l0_label)) for n, sae in self.saes.items()
        }


_GS2_FOLDERS = ("resid_post", "attn_out", "mlp_out", "transcoder")


def suite_id(name: str, d_sae: int, l0_label: str = "small") -> str:
    """Gemma Scope 2 id of a trained target, the width a plain number of features:
    ``suite_id("transcoder.3", 4096) == "transcoder_all/layer_3_width_4096_l0_small"``."""
    kind, _, layer = name.partition(".")
    if kind not in _GS2_FOLDERS or not layer.isdigit():
        raise ValueError(
            f"{name!r} has no Gemma Scope 2 folder: they hold {', '.join(_GS2_FOLDERS)}"
        )
    return f"{kind}_all/layer_{layer}_width_{d_sae}_l0_{l0_label}"


def target_sites(target: str | tuple[str, str]) -> tuple[str, str, str]:
    """``(name, site_in, site_out)`` of a training target: a site (an SAE), ``"transcoder.L"``
    (reading ``mlp_in.L``) or a pair such as ``("mlp_in.L", "mlp_out.L")`` (a transcoder)."""
    if isinstance(target, tuple):
        site_in, site_out = (str(parse_site(s)) for s in target)
        return target_name(site_in, site_out), site_in, site_out
    if isinstance(target, str) and target.startswith("transcoder."):
        layer = target.removeprefix("transcoder.")
        if not layer.isdigit():
            raise ValueError(
                f"bad target {target!r}: a transcoder is 'transcoder.L', e.g. 'transcoder.3'"
            )
        return target, *transcoder_sites(int(layer))
    site = str(parse_site(target))
    return site, site, site


# --- schedules, data, checkpoints, processes --------------------------------------------------


def _schedule(cfg: TrainConfig, n_steps: int) -> tuple[float, int, int]:
    lr = cfg.lr if cfg.lr is not None else 7e-5 * min(4.0, max(1.0, math.sqrt(1e5 / n_steps)))
    warm = cfg.lr_warmup_steps if cfg.lr_warmup_steps is not None else min(1000, n_steps // 20)
    l0_warm = cfg.l0_warmup_steps if cfg.l0_warmup_steps is not None else min(10_000, n_steps // 5)
    return lr, warm, l0_warm


def _batches(model, sites: list[str], cfg: TrainConfig, data) -> Iterator[dict[str, torch.Tensor]]:
    """Training batches ``{site: [batch, width]}`` from ``data`` or, if ``None``, streamed."""
    if data is None:
        if model is None:
            raise ValueError("train without data needs a model to stream activations from")
        from gsnb.core.data import default_tokens
        from gsnb.saes.activations import ActivationStore

        n_windows = math.ceil(cfg.n_tokens * 1.05 / (cfg.seq_len - 1)) + 1
        tokens = default_tokens(model, n_windows, cfg.seq_len, progress=cfg.progress)
        data = ActivationStore.stream(model, tokens, sites)
    if hasattr(data, "batches_multi"):
        epochs = math.ceil(cfg.n_tokens / max(1, data.n_tokens // 2)) + 1
        return data.batches_multi(
            sites,
            cfg.batch_size,
            seed=cfg.seed,
            epochs=epochs,
            drop_special=cfg.drop_special_tokens,
            drop_last=True,
        )
    return iter(data)


def _take(batch: dict, site: str, width: int | None, device, dtype) -> torch.Tensor:
    if not isinstance(batch, dict) or site not in batch:
        have = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise KeyError(
            f"a data batch lacks site {site!r} (it has {have}): give batches "
            f"{{site: [batch, width]}} for every site trained, or drop {site!r}"
        )
    x = batch[site]
    x = x.reshape(-1, x.shape[-1])
    if width is not None and x.shape[1] != width:
        raise ValueError(
            f"data for {site} has width {x.shape[1]} but the model's {site} has "
            f"width {width}: the activations come from another model or site"
        )
    return x.to(device=device, dtype=dtype)


def config_identity(cfg: TrainConfig) -> dict:
    """The fields of ``cfg`` that decide a run's result (for checkpoints and suite hashes)."""
    volatile = ("checkpoint_every", "checkpoint_dir", "progress", "device")
    return {k: v for k, v in asdict(cfg).items() if k not in volatile}


# --- public entry points ----------------------------------------------------------------------


def train_sae(
    model,
    site: str | tuple[str, str],
    cfg: TrainConfig | None = None,
    data: Iterable[dict[str, torch.Tensor]] | None = None,
) -> TrainResult:
    """Train one JumpReLU SAE (or transcoder) on a site's activations.

    Args:
        model: a :class:`gsnb.Model` (names the SAE and streams activations when ``data`` is
            ``None``); may be ``None`` when ``data`` is given.
        site: ``"resid_post.3"`` (an SAE), ``"transcoder.3"`` or ``("mlp_in.3", "mlp_out.3")``
            (a transcoder: reads the first site, reconstructs the second).
        cfg: a :class:`TrainConfig` (default: its defaults).
        data: batches ``{site: [batch, width]}`` (rows aligned across sites), an
            :class:`gsnb.ActivationStore`, or ``None`` to stream the offline corpus through
            ``model``. Each batch is one step. To resume from a checkpoint, pass data that yields
            the same batches in the same order (a store does, given ``cfg.seed``).

    >>> result = gsnb.train_sae(model, "resid_post.6", TrainConfig(d_sae=4096, n_tokens=2**22))
    >>> result.sae, result.history[-1].fvu
    """
    suite = train_suite(model, [site], cfg, data)
    name = next(iter(suite.saes))
    return TrainResult(suite.saes[name], suite.history[name], suite.steps, suite.seconds)


def train_suite(
    model,
    sites: Sequence[str | tuple[str, str]],
    cfg: TrainConfig | None = None,
    data: Iterable[dict[str, torch.Tensor]] | None = None,
) -> SuiteResult:
    """Train one SAE per target in ``sites`` from the same batches (one forward pass feeds all).

    Targets are as in :func:`train_sae` (``"mlp_out.2"``, ``"transcoder.2"``, ...). Under
    ``torchrun`` (or with torch.distributed initialised) process ``r`` of ``N`` trains targets
    ``r, r + N, ...``; all processes read the same batches, and at the end the SAEs are broadcast
    so every process (rank 0 included) returns the whole suite. Checkpoints go to
    ``cfg.checkpoint_dir/rank{r}-of-{N}``.

    Returns:
        a :class:`SuiteResult` with SAEs on raw activations and their metric histories.
    """
    cfg = cfg or TrainConfig()
    if cfg.dtype not in ("float32", "float64"):
        raise ValueError(
            f"dtype {cfg.dtype!r}: training runs in 'float32' (the recipe) or 'float64'"
        )
    t0 = time.perf_counter()
    targets = [target_sites(t) for t in sites]
    names = [t[0] for t in targets]
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"sites must be a non-empty list without repeats, got {names}")
    rank, world, owns_group = init_from_env(cfg.device)
    ranks = {name: i % world for i, name in enumerate(names)}
    mine = [t for t in targets if ranks[t[0]] == rank]
    need = sorted({s for _, a, b in mine for s in (a, b)}, key=lambda s: parse_site(s).depth)
    widths = {s: model.site_width(s) for s in need} if model is not None else {}
    device, dtype = _device(cfg, model, world), getattr(torch, cfg.dtype)
    n_steps = max(1, cfg.n_tokens // cfg.batch_size)
    lr, warm, l0_warm = _schedule(cfg, n_steps)
    meta = {
        "config": config_identity(cfg),
        "targets": [list(t) for t in targets],
        "world_size": world,
    }
    ckpt = Path(cfg.checkpoint_dir) / f"rank{rank}-of-{world}" if cfg.checkpoint_dir else None
    saved = read_checkpoint(ckpt, meta) if ckpt is not None else None
    batches = _batches(model, need, cfg, data) if mine else iter(())
    if saved is not None:
        start, scales, tensors = saved[0]["step"], saved[0]["scales"], saved[1]
        for _ in range(start):  # replay the data order up to where the checkpoint left off
            next(batches, None)
    else:
        start, tensors = 0, None
        first = list(itertools.islice(batches, cfg.scale_batches))
        if mine and not first:
            raise ValueError("the training data yielded no batches")
        scales = {
            s: _scale([_take(b, s, widths.get(s), device, torch.float64) for b in first])
            for s in need
        }
        batches = itertools.chain(first, batches)
    trainers, history = {}, {}
    for name, a, b in mine:
        if tensors is not None:
            state = {
                k.removeprefix(f"{name}/"): v
                for k, v in tensors.items()
                if k.startswith(f"{name}/")
            }
            d_in, d_out = state["W_encT"].shape[1], state["W_dec"].shape[1]
        else:
            x_a, x_b = (
                _take(first[0], s, widths.get(s), device, dtype) * scales[s] for s in (a, b)
            )
            d_in, d_out = x_a.shape[1], x_b.shape[1]
        seed = cfg.seed * 1_000_003 + zlib.crc32(name.encode())
        trainers[name] = SAETrainer(d_in, d_out, cfg.d_sae, cfg.threshold_init, seed, device, dtype)
        if tensors is not None:
            history[name] = [StepMetrics(int(r[0]), *r[1:]) for r in state.pop("history").tolist()]
            trainers[name].load_state_dict(state)
        else:  # start the output bias at the data's mean
            history[name] = []
            trainers[name].p.b_dec.data.copy_(x_b.mean(0))
            if cfg.init_l0 is not None:
                pre = x_a @ trainers[name].p.W_encT.data.T  # [batch, d_sae]
                share = min(cfg.init_l0 / cfg.d_sae, 0.5)
                k = max(1, round(len(pre) * (1 - share)))
                trainers[name].p.b_enc.data.copy_(cfg.threshold_init - pre.kthvalue(k, 0).values)

    bar = tqdm(
        total=n_steps,
        initial=start,
        desc="training SAEs",
        unit="step",
        disable=not cfg.progress or rank != 0 or not mine,
    )
    step = start
    with bar, torch.no_grad():
        for batch in itertools.islice(batches, max(0, n_steps - start)):
            xs = {s: _take(batch, s, widths.get(s), device, dtype) * scales[s] for s in need}
            lr_t = _ramp(step, warm) * _decay(step, n_steps, cfg.lr_decay_fraction) * lr
            coef = _ramp(step, l0_warm) * cfg.l0_coefficient
            stats = {
                name: trainers[name].step(
                    xs[a], xs[b], lr_t, cfg.bandwidth, coef, cfg.target_l0, cfg.sparse_step
                )
                for name, a, b in mine
            }
            step += 1
            if step % cfg.log_every == 0 or step == n_steps:
                for name, st in stats.items():
                    history[name].append(StepMetrics(step, st.loss, st.mse, st.l0, st.fvu))
            bar.update(1)
            bar.set_postfix(
                {
                    k: f"{sum(getattr(st, k) for st in stats.values()) / len(stats):.4g}"
                    for k in ("loss", "l0", "fvu")
                },
                refresh=False,
            )
            if (
                ckpt
                and cfg.checkpoint_every
                and (step % cfg.checkpoint_every == 0 or step == n_steps)
            ):
                write_checkpoint(ckpt, step, {**meta, "scales": scales}, trainers, history)

    model_name = getattr(model, "name", None)
    saes = {
        name: _finished_sae(trainers[name], history[name], cfg, model_name, a, b, scales)
        for name, a, b in mine
    }
    if world > 1:
        saes, rows = broadcast_saes(targets, ranks, saes, history, model_name, rank, device)
        history = {n: [StepMetrics(int(r[0]), *r[1:]) for r in rows[n]] for n in rows}
    if owns_group:
        torch.distributed.destroy_process_group()
    return SuiteResult(
        saes={n: saes[n] for n in names},
        history={n: history[n] for n in names},
        ranks=ranks,
        steps=step,
        seconds=time.perf_counter() - t0,
    )


def _scale(batches: list[torch.Tensor]) -> float:
    """The fixed input scale of a site: ``1 / sqrt(mean ||x||^2)`` over the first batches."""
    return float(torch.cat([x.pow(2).sum(1) for x in batches]).mean().rsqrt())


def _finished_sae(trainer, history, cfg, model_name, site_in, site_out, scales) -> JumpReLUSAE:
    late = [m.l0 for m in history[-max(1, len(history) // 10) :]]  # L0 over the last tenth
    sae_cfg = SAEConfig(
        d_in=trainer.p.W_encT.shape[1],
        d_sae=cfg.d_sae,
        d_out=trainer.p.W_dec.shape[1],
        model_name=model_name,
        site_in=site_in,
        site_out=site_out,
        input_scale=scales[site_in],
        l0_target=cfg.target_l0 or (sum(late) / len(late) if late else None),
    )
    return trainer.to_sae(sae_cfg, scales[site_in], scales[site_out])


def _ramp(step: int, warmup: int) -> float:
    return min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


def _decay(step: int, n_steps: int, fraction: float) -> float:
    decay = int(n_steps * fraction)
    return (n_steps - step) / (decay + 1) if decay > 0 and step >= n_steps - decay else 1.0


def _device(cfg: TrainConfig, model, world: int) -> torch.device:
    if cfg.device is not None:
        return torch.device(cfg.device)
    if world > 1 and torch.cuda.is_available():
        return torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}")
    return model.device if model is not None else torch.device("cpu")
