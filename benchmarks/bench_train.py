"""JumpReLU SAE training: gsnb against SAELens on the same activations, plus suite vs single.

What it measures, side by side in one run (the peer in its own venv, as a subprocess, the two
alternating repetition by repetition so that a drifting machine load hits both alike):

1. Speed: one SAE at ``resid_post.6`` of the embedded Gemma 3 270M, same width, batch 4,096,
   same batches in the same order (a plain safetensors file of the rows is handed to the peer).
   Steady-state training tokens/s, skipping the first 2 steps; wall and CPU seconds per step
   (CPU = user + system of the training process, all threads).
   gsnb uses its defaults (TrainConfig: the recipe, encoder biases started so about 100 features
   fire, the sparse step chosen per step);
   SAELens uses ``JumpReLUTrainingSAE`` with ``jumprelu_sparsity_loss_mode="step"`` and its
   defaults otherwise, driven by its ``SAETrainer.fit``.
2. FVU at matched L0 on held-out rows (documents of the ``"eval"`` split): both tools get the
   recipe's hyperparameters in the same units (rows scaled to mean squared norm 1, threshold and
   bandwidth 0.001, Adam beta1 = 0, the same learning rate, warmups and decay) and the quadratic
   L0 penalty around the same target, for the same steps, batches and width. A short run may
   leave SAELens far from the target (its encoder biases start at zero, where half the features
   fire), so gsnb is trained once more with ``target_l0`` set to SAELens's held-out L0, and the
   two FVUs are compared at matched L0. If the L0s still differ by more than 10 %, the printout
   says so. On a CPU these are short runs (hundreds of steps): they compare early training, not
   converged SAEs.
3. Suite: one ``train_suite`` step for the 18 ``resid_post`` layers (batches from an
   ActivationStore) against 18 single-site ``train_sae`` steps, as wall/CPU time per step; and
   whole calls streaming activations from the model (the suite runs one forward pass for all
   18 sites, each single-site run its own). Width and batch are reduced (see the table).

Usage: ``python benchmarks/bench_train.py [--small] [--steps N] [--width W]``.
Ends with ``train_speedup_vs_saelens=<gsnb tokens/s / SAELens tokens/s>
fvu_ratio_vs_saelens=<gsnb FVU / SAELens FVU at matched L0>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

import gsnb
from gsnb.core.data import default_tokens
from gsnb.saes.train import TrainConfig, _schedule, train_sae, train_suite

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from peers import peer_python  # noqa: E402  (the one owner of peer environments)

SITE = "resid_post.6"
SKIP = 2  # steps left out of steady-state timings
FVU_TARGET_L0 = 32.0

PEER_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, time
    import torch
    from safetensors.torch import load_file
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    a = json.loads(sys.argv[1])
    rows = load_file(a["rows"])
    train, held = rows["train"], rows["heldout"]
    torch.manual_seed(a["seed"])
    extra = {"normalize_activations": a["normalize"]} if a["normalize"] else {}
    extra.update(a["sae_kwargs"])
    sae = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(
        d_in=train.shape[1], d_sae=a["d_sae"], **extra))
    B, n = a["batch"], a["steps"]
    stamps = []

    def clocks():
        u = resource.getrusage(resource.RUSAGE_SELF)
        return time.perf_counter(), u.ru_utime + u.ru_stime

    def provider():
        k = 0
        while True:
            stamps.append(clocks())
            i0 = (k * B) % (len(train) - B + 1)
            yield train[i0 : i0 + B]
            k += 1

    cfg = SAETrainerConfig(total_training_samples=n * B, train_batch_size_samples=B,
                           lr_end=3e-4 / 10,  # what its runner config's post-init sets
                           n_batches_for_norm_estimate=a["norm_batches"],
                           **a["trainer_kwargs"])
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=provider())
    est = None
    if a["normalize"]:
        # estimate the scale from its own batches before timing, then time only the steps
        trainer.activation_scaler.estimate_scaling_factor(
            train.shape[1], provider(), a["norm_batches"])
        stamps.clear()
    sae = trainer.fit()
    stamps.append(clocks())
    out = {"stamps": stamps}
    if a["eval"]:
        with torch.no_grad():
            sae.eval()
            f = sae.encode(held)
            x_hat = sae.decode(f)
            out["l0"] = float((f > 0).float().sum(-1).mean())
            out["fvu"] = float((held - x_hat).pow(2).sum() / (held - held.mean(0)).pow(2).sum())
    print("RESULT " + json.dumps(out))
    """
)


def clocks() -> tuple[float, float]:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), u.ru_utime + u.ru_stime


def step_times(stamps: list[tuple[float, float]], skip: int = SKIP) -> list[tuple[float, float]]:
    """(wall, cpu) of each step from clock stamps taken as each step asked for its batch (and
    one at the end), leaving out the first ``skip`` steps."""
    d = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(stamps, stamps[1:], strict=False)]
    return d[skip:]


def run_peer(
    rows_path: Path,
    d_sae: int,
    batch: int,
    steps: int,
    normalize: str | None,
    evaluate: bool,
    script: Path,
    sae_kwargs: dict | None = None,
    trainer_kwargs: dict | None = None,
) -> dict:
    args = {
        "rows": str(rows_path),
        "d_sae": d_sae,
        "batch": batch,
        "steps": steps,
        "seed": 0,
        "normalize": normalize,
        "norm_batches": 4,
        "eval": evaluate,
        "sae_kwargs": {"jumprelu_sparsity_loss_mode": "step", **(sae_kwargs or {})},
        "trainer_kwargs": trainer_kwargs or {},
    }
    env = {**os.environ, "WANDB_MODE": "disabled", "TQDM_DISABLE": "1"}
    proc = subprocess.run(
        [peer_python("saelens"), str(script), json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
    )
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not line:
        raise RuntimeError(f"SAELens run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    out = json.loads(line[-1].removeprefix("RESULT "))
    # fit() asks for batch k at the start of step k; a final stamp closes the last step.
    out["steps"] = step_times([tuple(s) for s in out["stamps"]])
    return out


def batches_of(train: torch.Tensor, batch: int, stamps: list):
    k = 0
    while True:
        stamps.append(clocks())
        i0 = (k * batch) % (len(train) - batch + 1)
        yield {SITE: train[i0 : i0 + batch]}
        k += 1


def run_gsnb(train: torch.Tensor, cfg: TrainConfig, held: torch.Tensor | None) -> dict:
    stamps: list = []
    result = train_sae(None, SITE, cfg, data=batches_of(train, cfg.batch_size, stamps))
    stamps.append(clocks())
    # Stamp 0 is taken when the scale is measured (before setup); stamp k >= 1 when step k
    # starts, so step k lasts stamps[k + 1] - stamps[k] for k >= 1 (step 0 includes setup).
    out = {"steps": step_times(stamps[1:], SKIP - 1)}
    if held is not None:
        sae = result.sae
        with torch.no_grad():
            x = held.to(sae.W_enc.dtype)
            f = sae.encode(x)
            x_hat = sae.decode(f)
            out["l0"] = float((f > 0).float().sum(-1).mean())
            out["fvu"] = float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    out["history"] = result.history
    return out


def median_step(runs: list[dict]) -> tuple[float, float]:
    walls = [w for r in runs for w, _ in r["steps"]]
    cpus = [c for r in runs for _, c in r["steps"]]
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="a quick run (width 4096)")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="steps per speed run")
    parser.add_argument("--reps", type=int, default=2, help="alternating speed repetitions")
    parser.add_argument("--fvu-steps", type=int, default=None)
    parser.add_argument("--no-suite", action="store_true")
    args = parser.parse_args()
    small = args.small
    width = args.width or (4096 if small else 16384)
    steps = args.steps or (5 if small else 6)
    batch = 4096
    fvu_width, fvu_batch = (2048, 1024) if small else (4096, 1024)
    fvu_steps = args.fvu_steps or (200 if small else 1000)
    suite_width, suite_batch, suite_steps = (512, 1024, 3) if small else (1024, 2048, 3)
    stream_steps = 3
    n_windows_l6 = 56 if small else 100  # x 127 non-BOS rows
    n_windows_all = 40  # x 128 tokens, all 18 layers

    t_start = time.perf_counter()
    peer_python("saelens")  # created before any timing
    torch.manual_seed(0)
    model = gsnb.load_model(device="cpu")
    tmp = Path(tempfile.mkdtemp(prefix="gsnb-bench-train-"))
    script = tmp / "peer_saelens.py"
    script.write_text(PEER_SCRIPT)
    try:
        # --- activations: resid_post.6 rows (BOS dropped), shuffled once; training rows from
        # the "train" split, held-out rows from the "eval" split (documents neither SAE saw)
        n_held = 2048
        special = torch.tensor(sorted(set(model.tokenizer.all_special_ids)))

        def site_rows(split: str, n_windows: int, folder: str) -> torch.Tensor:
            tokens = default_tokens(model, n_windows, 128, split=split, progress=False)
            gsnb.cache_activations(model, tokens, [SITE], tmp / folder, progress=False)
            store = gsnb.ActivationStore(tmp / folder)
            acts = store.load(SITE)[~torch.isin(store.tokens.reshape(-1), special)]
            order = torch.randperm(len(acts), generator=torch.Generator().manual_seed(0))
            return acts[order].contiguous()

        t0 = time.perf_counter()
        train = site_rows("train", n_windows_l6 - n_held // 127, "l6")
        t_cache6 = time.perf_counter() - t0
        held = site_rows("eval", n_held // 127 + 2, "l6-eval")[:n_held]
        rows_path = tmp / "rows.safetensors"
        save_file({"train": train, "heldout": held}, str(rows_path))
        print(
            f"[data] {len(train)} train + {n_held} held-out rows of {SITE} "
            f"(cached in {t_cache6:.0f}s)",
            flush=True,
        )

        # --- 1. speed, alternating gsnb / SAELens
        gs_runs, sl_runs = [], []
        cfg = TrainConfig(
            d_sae=width, batch_size=batch, n_tokens=steps * batch, progress=False, log_every=1
        )
        for rep in range(args.reps):
            gs_runs.append(run_gsnb(train, cfg, None))
            sl_runs.append(run_peer(rows_path, width, batch, steps, None, False, script))
            print(
                f"[speed rep {rep}] gsnb {median_step(gs_runs[-1:])[0]:.2f}s/step, "
                f"SAELens {median_step(sl_runs[-1:])[0]:.2f}s/step",
                flush=True,
            )
        gs_wall, gs_cpu = median_step(gs_runs)
        sl_wall, sl_cpu = median_step(sl_runs)
        speedup = sl_wall / gs_wall
        dens = [h.l0 / width for r in gs_runs for h in r["history"][SKIP:]]

        # --- 2. FVU at matched L0. Both get the recipe's hyperparameters in the same units:
        # rows scaled to mean squared norm 1 (gsnb's fixed scale, applied to SAELens's copy),
        # threshold and bandwidth 0.001, Adam beta1 = 0, gsnb's learning rate, warmups and
        # decay, and the quadratic L0 penalty around FVU_TARGET_L0 (SAELens's per-token form
        # with half the coefficient equals gsnb's batch form at a constant L0).
        fcfg = TrainConfig(
            d_sae=fvu_width,
            batch_size=fvu_batch,
            n_tokens=fvu_steps * fvu_batch,
            target_l0=FVU_TARGET_L0,
            l0_coefficient=1e-2,
            progress=False,
        )
        lr, warm, l0_warm = _schedule(fcfg, fvu_steps)
        scale = float(train[:fvu_batch].double().pow(2).sum(1).mean().rsqrt())
        scaled_path = tmp / "rows_scaled.safetensors"
        save_file({"train": train * scale, "heldout": held * scale}, str(scaled_path))
        sl_f = run_peer(
            scaled_path,
            fvu_width,
            fvu_batch,
            fvu_steps,
            None,
            True,
            script,
            sae_kwargs=dict(
                jumprelu_sparsity_loss_mode="quadratic",
                target_l0=FVU_TARGET_L0,
                l0_coefficient=fcfg.l0_coefficient / 2,
                jumprelu_init_threshold=fcfg.threshold_init,
                jumprelu_bandwidth=fcfg.bandwidth,
                l0_warm_up_steps=l0_warm,
            ),
            trainer_kwargs=dict(
                lr=lr,
                adam_beta1=0.0,
                lr_warm_up_steps=warm,
                lr_decay_steps=round(fcfg.lr_decay_fraction * fvu_steps),
            ),
        )
        print(f"[fvu] SAELens L0 {sl_f['l0']:.1f} FVU {sl_f['fvu']:.4f}", flush=True)
        gs_same = run_gsnb(train, fcfg, held)
        print(f"[fvu] gsnb (same target) L0 {gs_same['l0']:.1f} FVU {gs_same['fvu']:.4f}")
        # SAELens may end far from the target in a short run; gsnb then targets the L0 it
        # reached, so the two FVUs compare at matched L0.
        mcfg = dataclasses.replace(fcfg, target_l0=max(1.0, sl_f["l0"]))
        gs_f = run_gsnb(train, mcfg, held)
        print(f"[fvu] gsnb (matched) L0 {gs_f['l0']:.1f} FVU {gs_f['fvu']:.4f}", flush=True)
        fvu_ratio = gs_f["fvu"] / sl_f["fvu"]
        l0_off = abs(gs_f["l0"] / max(sl_f["l0"], 1e-9) - 1)

        # --- 3. suite of 18 layers vs 18 single-site runs
        suite_rows = None
        if not args.no_suite:
            sites = model.sites("resid_post")
            toks_all = default_tokens(model, n_windows_all, 128, progress=False)
            t0 = time.perf_counter()
            gsnb.cache_activations(model, toks_all, sites, tmp / "all", progress=False)
            t_cache_all = time.perf_counter() - t0
            st = gsnb.ActivationStore(tmp / "all")
            scfg = TrainConfig(
                d_sae=suite_width,
                batch_size=suite_batch,
                n_tokens=suite_steps * suite_batch,
                progress=False,
            )

            def store_batches(ss, stamps):
                for b in st.batches_multi(ss, suite_batch, seed=0, epochs=100, drop_last=True):
                    stamps.append(clocks())
                    yield b

            def timed(ss):
                stamps: list = []
                train_suite(None, ss, scfg, data=store_batches(ss, stamps))
                stamps.append(clocks())
                return step_times(stamps[1:], 0)  # steps 1.. (step 0 includes setup)

            suite_t = timed(sites)
            single_t = [timed([s]) for s in sites]
            suite_step = (
                statistics.median(w for w, _ in suite_t),
                statistics.median(c for _, c in suite_t),
            )
            single_step = (
                sum(statistics.median(w for w, _ in t) for t in single_t),
                sum(statistics.median(c for _, c in t) for t in single_t),
            )
            # Streamed from the model, a suite shares one forward pass among its sites, where
            # each single-site run needs its own (truncated at its layer): whole calls, timed.
            stream_cfg = dataclasses.replace(scfg, n_tokens=stream_steps * suite_batch)
            t0 = time.perf_counter()
            train_suite(model, sites, stream_cfg)
            stream_suite = time.perf_counter() - t0
            stream_single = 0.0
            for site in sites:
                t0 = time.perf_counter()
                train_sae(model, site, stream_cfg)
                stream_single += time.perf_counter() - t0
            suite_rows = (sites, suite_step, single_step, t_cache_all, stream_suite, stream_single)

        # --- report
        tps = lambda wall: batch / wall  # noqa: E731
        print()
        print(
            f"## JumpReLU SAE training, gsnb vs SAELens ({SITE}, embedded Gemma 3 270M, CPU, "
            f"{torch.get_num_threads()} torch threads)"
        )
        print()
        print(
            "| case | tool | width | batch | steps timed | wall s/step | CPU s/step | "
            "tokens/s (wall) | L0 | FVU |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        n_gs = sum(len(r["steps"]) for r in gs_runs)
        n_sl = sum(len(r["steps"]) for r in sl_runs)
        print(
            f"| speed | gsnb | {width} | {batch} | {n_gs} | {gs_wall:.2f} | {gs_cpu:.2f} | "
            f"{tps(gs_wall):,.0f} | | |"
        )
        print(
            f"| speed | SAELens {sae_lens_version()} | {width} | {batch} | {n_sl} | "
            f"{sl_wall:.2f} | {sl_cpu:.2f} | {tps(sl_wall):,.0f} | | |"
        )
        for tool, res in (
            (f"SAELens (target_l0={FVU_TARGET_L0:.0f})", sl_f),
            (f"gsnb (target_l0={FVU_TARGET_L0:.0f})", gs_same),
            (f"gsnb (target_l0={mcfg.target_l0:.1f}, SAELens's L0)", gs_f),
        ):
            print(
                f"| FVU (held-out {n_held} rows) | {tool} | {fvu_width} | {fvu_batch} | "
                f"{fvu_steps} steps | | | | {res['l0']:.1f} | {res['fvu']:.4f} |"
            )
        if suite_rows:
            sites, (sw, sc), (gw, gc), tca, stream_suite, stream_single = suite_rows
            print(
                f"| suite | gsnb train_suite, {len(sites)} sites | {suite_width} | "
                f"{suite_batch} | {suite_steps - 1} | {sw:.2f} | {sc:.2f} | "
                f"{suite_batch / sw:,.0f} | | |"
            )
            print(
                f"| suite | gsnb {len(sites)} x train_sae (sum of medians) | {suite_width} | "
                f"{suite_batch} | {len(sites)} x {suite_steps - 1} | {gw:.2f} | {gc:.2f} | "
                f"{suite_batch / gw:,.0f} | | |"
            )
            print(
                f"| suite, streamed from the model | gsnb train_suite, {len(sites)} sites | "
                f"{suite_width} | {suite_batch} | {stream_steps} (whole call) | "
                f"{stream_suite / stream_steps:.2f} | | "
                f"{suite_batch * stream_steps / stream_suite:,.0f} | | |"
            )
            print(
                f"| suite, streamed from the model | gsnb {len(sites)} x train_sae (sum) | "
                f"{suite_width} | {suite_batch} | {len(sites)} x {stream_steps} (whole calls) | "
                f"{stream_single / stream_steps:.2f} | | "
                f"{suite_batch * stream_steps / stream_single:,.0f} | | |"
            )
        print()
        print(
            f"- Steady state: medians over steps {SKIP}..{steps - 1} of {args.reps} alternating "
            f"repetitions per tool, each with its defaults. gsnb's steps had a mean L0 of "
            f"{statistics.mean(dens) * width if dens else float('nan'):.0f} of {width} "
            "(its encoder biases start so about 100 features fire, so every step is sparse; "
            "SAELens starts at zero bias, where about half of them fire)."
        )
        print(
            f"- FVU: {fvu_steps} steps of {fvu_batch} rows from {len(train)} rows (repeated), "
            "so these are short-run numbers, not converged SAEs. Both tools get the same "
            "recipe hyperparameters in the same units (see the script)."
        )
        if l0_off > 0.1 and gs_f["l0"] < sl_f["l0"] and gs_f["fvu"] < sl_f["fvu"]:
            print(
                f"- Held-out L0s differ by {100 * l0_off:.0f}% (gsnb {gs_f['l0']:.1f} vs "
                f"SAELens {sl_f['l0']:.1f}), but gsnb has both the lower L0 and the lower FVU, "
                "so it is better on both axes; since FVU falls as L0 rises, the ratio printed "
                "is an upper bound on the ratio at matched L0."
            )
        elif l0_off > 0.1:
            print(
                f"- WARNING: held-out L0s differ by {100 * l0_off:.0f}% (gsnb {gs_f['l0']:.1f} "
                f"vs SAELens {sl_f['l0']:.1f}): the FVU ratio is not at matched L0."
            )
        if suite_rows:
            print(
                f"- Suite: {len(suite_rows[0])} resid_post layers cached from {n_windows_all} "
                f"windows in {suite_rows[3]:.0f}s. From that cache, suite / singles wall ratio "
                f"{suite_rows[1][0] / suite_rows[2][0]:.2f} per step (no forward pass to share). "
                "Streamed from the model, whole calls with set-up: suite / singles wall ratio "
                f"{suite_rows[4] / suite_rows[5]:.2f}."
            )
        print(
            f"- Speedup by wall time {speedup:.2f}x, by CPU time {sl_cpu / gs_cpu:.2f}x: on a loaded "
            "machine the CPU-time ratio is the steadier of the two."
        )
        print(f"- total benchmark wall time {time.perf_counter() - t_start:.0f}s")
        print()
        print(f"train_speedup_vs_saelens={speedup:.3g} fvu_ratio_vs_saelens={fvu_ratio:.3g}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sae_lens_version() -> str:
    out = subprocess.run(
        [peer_python("saelens"), "-c", "import sae_lens; print(sae_lens.__version__)"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() or "?"


if __name__ == "__main__":
    sys.exit(main())
