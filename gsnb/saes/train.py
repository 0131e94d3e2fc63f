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
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from gsnb.core.sites import parse_site, target_name, transcoder_sites
from gsnb.saes.checkpoints import read_checkpoint, write_checkpoint
from gsnb.saes.distributed import broadcast_saes, init_from_env
from gsnb.saes.sae import JumpReLUSAE, SAEConfig
from gsnb.saes.suite_names import l0_label, measured_l0, suite_id
from gsnb.saes.train_config import StepMetrics, TrainConfig, config_identity
from gsnb.saes.train_data import input_scale, take_site, training_batches
from gsnb.saes.trainer import SAETrainer


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

    def ids(self, label: str | None = None) -> dict[str, str]:
        """Every SAE's id in Gemma Scope 2's layout (see :func:`suite_id`), labelled ``label`` or,
        by default, by the L0 it reached (:func:`gsnb.saes.suite_names.l0_label`)."""
        ids = {}
        for n, sae in self.saes.items():
            l0 = measured_l0(self.history[n]) if label is None else None
            l0 = sae.cfg.l0_target if l0 is None else l0
            if label is None and l0 is None:
                raise ValueError(f"{n} has no measured L0 to label it by: pass l0_label")
            ids[n] = suite_id(n, sae.d_sae, label or l0_label(l0))
        return ids

    def save(self, root: str | os.PathLike, l0_label: str | None = None) -> dict[str, Path]:
        """Write every SAE under ``root`` at its id (:meth:`ids`); ``gsnb.load_sae(root, id)``
        reads them back."""
        root = Path(root)
        return {n: self.saes[n].save(root / i) for n, i in self.ids(l0_label).items()}


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


def _schedule(cfg: TrainConfig, n_steps: int) -> tuple[float, int, int]:
    lr = cfg.lr if cfg.lr is not None else 7e-5 * min(4.0, max(1.0, math.sqrt(1e5 / n_steps)))
    warm = cfg.lr_warmup_steps if cfg.lr_warmup_steps is not None else min(1000, n_steps // 20)
    l0_warm = cfg.l0_warmup_steps if cfg.l0_warmup_steps is not None else min(10_000, n_steps // 5)
    return lr, warm, l0_warm


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
    t0 = time.perf_counter()
    targets = [target_sites(t) for t in sites]
    names = [t[0] for t in targets]
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"sites must be a non-empty list without repeats, got {names}")
    rank, world, owns_group = init_from_env(cfg.device)
    try:
        plan = _plan(model, targets, cfg, rank, world)
        batches = training_batches(model, plan.need, cfg, data) if plan.mine else iter(())
        saved = read_checkpoint(plan.ckpt, plan.meta) if plan.ckpt is not None else None
        if saved is not None:
            state, batches = _restore(plan, saved, batches)
        else:
            state, batches = _init(plan, batches)
        _steps(plan, state, batches)
        saes, history = _finish(plan, state, getattr(model, "name", None))
    finally:
        if owns_group:
            torch.distributed.destroy_process_group()
    return SuiteResult(
        saes={n: saes[n] for n in names},
        history={n: history[n] for n in names},
        ranks=plan.ranks,
        steps=state.step,
        seconds=time.perf_counter() - t0,
    )


# --- the phases of a run --------------------------------------------------------------------


@dataclass
class _Plan:
    """What this process trains, where, and for how long."""

    cfg: TrainConfig
    targets: list[tuple[str, str, str]]
    """``(name, site_in, site_out)`` of every SAE in the suite, all processes together."""
    ranks: dict[str, int]
    """Name -> the process that trains it."""
    rank: int
    world: int
    widths: dict[str, int]
    """Width of every site this process reads (empty without a model: not checked)."""
    device: torch.device
    dtype: torch.dtype
    n_steps: int
    schedule: tuple[float, int, int]
    """``(lr, lr warmup steps, L0 warmup steps)``, see :func:`_schedule`."""
    meta: dict
    """What a checkpoint must match to be resumed."""
    ckpt: Path | None

    @property
    def mine(self) -> list[tuple[str, str, str]]:
        """The targets this process trains."""
        return [t for t in self.targets if self.ranks[t[0]] == self.rank]

    @property
    def need(self) -> list[str]:
        """The sites this process reads, in forward order."""
        sites = {s for _, a, b in self.mine for s in (a, b)}
        return sorted(sites, key=lambda s: parse_site(s).depth)


@dataclass
class _State:
    """Where a run stands: steps taken, input scales, trainers and histories."""

    step: int
    scales: dict[str, float]
    """Site -> the fixed scalar its activations are multiplied by."""
    trainers: dict[str, SAETrainer]
    history: dict[str, list[StepMetrics]]


def _plan(model, targets, cfg: TrainConfig, rank: int, world: int) -> _Plan:
    ranks = {name: i % world for i, (name, _, _) in enumerate(targets)}
    mine = [t for t in targets if ranks[t[0]] == rank]
    need = {s for _, a, b in mine for s in (a, b)}
    n_steps = max(1, cfg.n_tokens // cfg.batch_size)
    meta = {
        "config": config_identity(cfg),
        "targets": [list(t) for t in targets],
        "world_size": world,
    }
    return _Plan(
        cfg=cfg,
        targets=targets,
        ranks=ranks,
        rank=rank,
        world=world,
        widths={s: model.site_width(s) for s in need} if model is not None else {},
        device=_device(cfg, model, world),
        dtype=getattr(torch, cfg.dtype),
        n_steps=n_steps,
        schedule=_schedule(cfg, n_steps),
        meta=meta,
        ckpt=Path(cfg.checkpoint_dir) / f"rank{rank}-of-{world}" if cfg.checkpoint_dir else None,
    )


def _new_trainer(plan: _Plan, name: str, d_in: int, d_out: int) -> SAETrainer:
    cfg = plan.cfg
    # Seeded per target, so an SAE does not depend on which others share its suite.
    seed = cfg.seed * 1_000_003 + zlib.crc32(name.encode())
    return SAETrainer(d_in, d_out, cfg.d_sae, cfg.threshold_init, seed, plan.device, plan.dtype)


def _restore(plan: _Plan, saved: tuple[dict, dict], batches: Iterator) -> tuple[_State, Iterator]:
    """The state a checkpoint holds, and the batches after the ones it has seen."""
    body, tensors = saved
    for _ in range(body["step"]):  # replay the data order up to where the checkpoint left off
        next(batches, None)
    trainers, history = {}, {}
    for name, _, _ in plan.mine:
        prefix = f"{name}/"
        state = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
        rows = state.pop("history").tolist()
        history[name] = [StepMetrics(int(r[0]), *r[1:]) for r in rows]
        trainers[name] = _new_trainer(plan, name, state["W_encT"].shape[1], state["W_dec"].shape[1])
        trainers[name].load_state_dict(state)
    return _State(body["step"], body["scales"], trainers, history), batches


def _init(plan: _Plan, batches: Iterator) -> tuple[_State, Iterator]:
    """Fresh trainers: input scales from the first batches, the output bias at the data's mean,
    the encoder bias so about ``init_l0`` features fire (see :class:`TrainConfig`)."""
    cfg = plan.cfg
    first = list(itertools.islice(batches, cfg.scale_batches))
    if plan.mine and not first:
        raise ValueError("the training data yielded no batches")
    scales = {
        s: input_scale(
            [take_site(b, s, plan.widths.get(s), plan.device, torch.float64) for b in first]
        )
        for s in plan.need
    }
    trainers = {}
    for name, a, b in plan.mine:
        x_a, x_b = (
            take_site(first[0], s, plan.widths.get(s), plan.device, plan.dtype) * scales[s]
            for s in (a, b)
        )
        trainer = trainers[name] = _new_trainer(plan, name, x_a.shape[1], x_b.shape[1])
        trainer.p.b_dec.data.copy_(x_b.mean(0))
        if cfg.init_l0 is not None:
            pre = x_a @ trainer.p.W_encT.data.T  # [batch, d_sae]
            share = min(cfg.init_l0 / cfg.d_sae, 0.5)
            k = max(1, round(len(pre) * (1 - share)))
            trainer.p.b_enc.data.copy_(cfg.threshold_init - pre.kthvalue(k, 0).values)
    history = {name: [] for name, _, _ in plan.mine}
    return _State(0, scales, trainers, history), itertools.chain(first, batches)


@torch.no_grad()
def _steps(plan: _Plan, state: _State, batches: Iterator) -> None:
    """Train until ``plan.n_steps`` (or the data ends), logging and checkpointing on the way."""
    cfg, mine = plan.cfg, plan.mine
    lr, warm, l0_warm = plan.schedule
    bar = tqdm(
        total=plan.n_steps,
        initial=state.step,
        desc="training SAEs",
        unit="step",
        disable=not cfg.progress or plan.rank != 0 or not mine,
    )
    with bar:
        for batch in itertools.islice(batches, max(0, plan.n_steps - state.step)):
            xs = {
                s: take_site(batch, s, plan.widths.get(s), plan.device, plan.dtype)
                * state.scales[s]
                for s in plan.need
            }
            step = state.step
            lr_t = _ramp(step, warm) * _decay(step, plan.n_steps, cfg.lr_decay_fraction) * lr
            coef = _ramp(step, l0_warm) * cfg.l0_coefficient
            stats = {
                name: state.trainers[name].step(
                    xs[a], xs[b], lr_t, cfg.bandwidth, coef, cfg.target_l0, cfg.sparse_step
                )
                for name, a, b in mine
            }
            state.step = step = step + 1
            if step % cfg.log_every == 0 or step == plan.n_steps:
                for name, st in stats.items():
                    state.history[name].append(StepMetrics(step, st.loss, st.mse, st.l0, st.fvu))
            bar.update(1)
            means = {k: sum(getattr(st, k) for st in stats.values()) / len(stats) for k in _SHOWN}
            bar.set_postfix({k: f"{v:.4g}" for k, v in means.items()}, refresh=False)
            every = cfg.checkpoint_every
            if plan.ckpt and every and (step % every == 0 or step == plan.n_steps):
                meta = {**plan.meta, "scales": state.scales}
                write_checkpoint(plan.ckpt, step, meta, state.trainers, state.history)


_SHOWN = ("loss", "l0", "fvu")  # on the progress bar, averaged over the suite


def _finish(
    plan: _Plan, state: _State, model_name: str | None
) -> tuple[dict[str, JumpReLUSAE], dict[str, list[StepMetrics]]]:
    """This process's SAEs on raw activations, then (under torchrun) everyone's."""
    saes = {}
    for name, site_in, site_out in plan.mine:
        trainer, scales = state.trainers[name], state.scales
        sae_cfg = SAEConfig(
            d_in=trainer.p.W_encT.shape[1],
            d_sae=plan.cfg.d_sae,
            d_out=trainer.p.W_dec.shape[1],
            model_name=model_name,
            site_in=site_in,
            site_out=site_out,
            input_scale=scales[site_in],
            l0_target=plan.cfg.target_l0 or measured_l0(state.history[name]),
        )
        saes[name] = trainer.to_sae(sae_cfg, scales[site_in], scales[site_out])
    history = state.history
    if plan.world > 1:
        saes, rows = broadcast_saes(
            plan.targets, plan.ranks, saes, history, model_name, plan.rank, plan.device
        )
        history = {n: [StepMetrics(int(r[0]), *r[1:]) for r in rows[n]] for n in rows}
    return saes, history


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
