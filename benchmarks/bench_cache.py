"""Activation caching against the bare forward pass it cannot avoid, in both storage dtypes.

For one layer (all four site kinds) and for every layer (all four kinds), measures side by side in
one run, interleaved and repeated:

- bare: ``model.hf`` over the same token windows and batches, stopped by a hook that raises
  StopForward at the deepest site, capturing nothing. This is the floor for caching.
- cache bfloat16 (the default storage) and cache float32: ``gsnb.cache_activations`` into a fresh
  folder (forward, device-to-host copies, shard files fsynced to disk, manifest).

Then, unless ``--no-fvu``, one small SAE is trained on the single layer's ``resid_post`` shards of
each dtype (same seed) and both are measured on held-out activations: what bfloat16 storage costs
in FVU and L0.

Usage: ``python benchmarks/bench_cache.py [--small] [--device cpu|cuda] [--no-fvu]``. The last
line is ``cache_vs_forward=<caching wall time / bare wall time for the default bfloat16 storage,
the worse of the two cases>``, then ``float32=`` the same for float32 storage, then each case's
ratio: medians of ratios paired per repetition, so that a load that drifts during the run affects
both sides of each ratio alike.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

import gsnb
from gsnb.core.data import default_tokens
from gsnb.saes.activations import ActivationStore, cache_activations
from gsnb.saes.train import TrainConfig, train_sae

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
"""Storage dtypes measured, the default first."""


def clocks(model) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process: all threads, user + system)."""
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), usage.ru_utime + usage.ru_stime


def since(model, start: tuple[float, float]) -> tuple[float, float]:
    now = clocks(model)
    return now[0] - start[0], now[1] - start[1]


def bare_forward(model, tokens, sites, batch_size: int) -> tuple[float, float]:
    deepest = max((model.parse_site(s) for s in sites), key=lambda s: s.depth)

    def stop(_value):
        raise gsnb.StopForward

    start = clocks(model)
    with torch.no_grad(), model.hooks({str(deepest): stop}):
        for b0 in range(0, len(tokens), batch_size):
            try:
                model.hf(input_ids=tokens[b0 : b0 + batch_size].to(model.device), use_cache=False)
            except gsnb.StopForward:
                pass
    return since(model, start)


def cached(model, tokens, sites, batch_size: int, dtype, out: Path) -> tuple[float, float]:
    shutil.rmtree(out, ignore_errors=True)
    start = clocks(model)
    cache_activations(model, tokens, sites, out, batch_size=batch_size, dtype=dtype, progress=False)
    return since(model, start)


def fvu_and_l0(model, stores: dict[str, Path], site: str, n_tokens: int) -> dict[str, tuple]:
    """Train one small SAE per store (same seed) and measure it on held-out activations."""
    held_out = default_tokens(model, 8, 128, split="eval", progress=False)
    x = model.run_with_cache(held_out, [site], stop_early=True)[1][site][:, 1:]
    x = x.reshape(-1, x.shape[-1]).float()
    cfg = TrainConfig(d_sae=2048, batch_size=512, n_tokens=4 * n_tokens, init_l0=32, progress=False)
    result = {}
    for name, out in stores.items():
        sae = train_sae(model, site, cfg, ActivationStore(out)).sae.to(x.device)
        with torch.no_grad():
            fvu = (x - sae(x)).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
            l0 = (sae.encode(x) > 0).sum(-1).float().mean()
        result[name] = (float(fvu), float(l0))
    return result


def measure(model, tokens, cases, args, root: Path) -> dict:
    """{case: {"bare" | dtype name: [(wall, cpu) per repetition]}}, interleaved."""
    # Warm up kernels, allocator and page cache once per case, untimed.
    for sites in cases.values():
        bare_forward(model, tokens[: args.batch_size], sites, args.batch_size)
        for dtype in DTYPES.values():
            cached(model, tokens[: args.batch_size], sites, args.batch_size, dtype, root / "warm")
    times = {case: {"bare": [], **{name: [] for name in DTYPES}} for case in cases}
    for _ in range(args.reps):
        for k, (case, sites) in enumerate(cases.items()):
            times[case]["bare"].append(bare_forward(model, tokens, sites, args.batch_size))
            for name, dtype in DTYPES.items():
                # The single layer's last shards stay for the FVU comparison.
                out = root / (f"keep-{name}" if k == 0 else "scratch")
                times[case][name].append(cached(model, tokens, sites, args.batch_size, dtype, out))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="a quick run: 16 windows x 64")
    parser.add_argument("--device", default=None, help="default: CUDA if present, else CPU")
    parser.add_argument("--windows", type=int, default=None)
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--no-fvu", action="store_true", help="skip the SAE trained per dtype")
    parser.add_argument("--out-root", default=None, help="folder for the shards (default: temp)")
    args = parser.parse_args()
    args.windows = args.windows or (16 if args.small else 64)
    args.seq_len = args.seq_len or (64 if args.small else 128)
    args.reps = args.reps or (2 if args.small else 3)

    model = gsnb.load_model(device=args.device)
    tokens = default_tokens(model, args.windows, args.seq_len, progress=False)
    n_tok = tokens.numel()
    cases = {
        f"layer {args.layer}, 4 kinds": model.sites(layers=args.layer),
        f"all {model.n_layers} layers, 4 kinds": model.sites(),
    }
    root = Path(tempfile.mkdtemp(prefix="gsnb-bench-cache-", dir=args.out_root))
    quality = {}
    try:
        times = measure(model, tokens, cases, args, root)
        if not args.no_fvu:
            stores = {name: root / f"keep-{name}" for name in DTYPES}
            quality = fvu_and_l0(model, stores, f"resid_post.{args.layer}", n_tok)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(model, cases, times, quality, args, n_tok, root)


def report(model, cases, times, quality, args, n_tok: int, root: Path) -> None:
    threads = torch.get_num_threads() if model.device.type == "cpu" else "-"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\n{model.name} on {model.device} ({threads} threads, {os.cpu_count()} cores, load "
        f"{load:.1f}), {args.windows} windows x {args.seq_len} tokens, "
        f"batch {args.batch_size}, {args.reps} interleaved repetitions, shards in {root.parent}\n"
    )
    print(
        "| case | storage | sites | bare forward tok/s | cache_activations tok/s "
        "| cache / bare (wall) | cache / bare (CPU time) | written |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    ratios: dict[str, dict[str, float]] = {name: {} for name in DTYPES}
    wall = {}
    for case, sites in cases.items():
        bare = statistics.median(b[0] for b in times[case]["bare"])
        wall[case] = {k: [round(t[0], 2) for t in v] for k, v in times[case].items()}
        for name, dtype in DTYPES.items():
            pairs = list(zip(times[case]["bare"], times[case][name], strict=True))
            ratios[name][case] = statistics.median(c[0] / b[0] for b, c in pairs)
            cpu_ratio = statistics.median(c[1] / b[1] for b, c in pairs)
            cache = statistics.median(c[0] for _, c in pairs)
            written = n_tok * sum(model.site_width(s) for s in sites) * dtype.itemsize
            print(
                f"| {case} | {name} | {len(sites)} | {n_tok / bare:,.0f} | {n_tok / cache:,.0f} | "
                f"{ratios[name][case]:.3f} | {cpu_ratio:.3f} | {written / 1e9:.2f} GB "
                f"({written / 1e6 / cache:,.0f} MB/s) |"
            )
    print(f"\nwall seconds per repetition: {wall}")
    for name, (fvu, l0) in quality.items():
        print(
            f"SAE on resid_post.{args.layer} trained from {name} shards: FVU {fvu:.4f}, L0 {l0:.1f}"
        )
    default, other = DTYPES
    layer_key, all_key = list(cases)
    print(
        f"cache_vs_forward={max(ratios[default].values()):.3f} "
        f"{other}={max(ratios[other].values()):.3f} "
        f"layer{args.layer}={ratios[default][layer_key]:.3f} "
        f"all_layers={ratios[default][all_key]:.3f}"
    )


if __name__ == "__main__":
    main()
