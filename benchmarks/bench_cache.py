"""Activation caching against the bare forward pass it cannot avoid.

For one layer (all four site kinds) and for every layer (all four kinds), measures side by side in
one run, interleaved and repeated:

- bare: ``model.hf`` over the same token windows and batches, stopped by a hook that raises
  StopForward at the deepest site, capturing nothing. This is the floor for caching.
- cache: ``gsnb.cache_activations`` into a fresh folder (forward, device-to-host copies, shard
  files fsynced to disk, manifest).

Usage: ``python benchmarks/bench_cache.py [--small] [--device cpu|cuda] [--dtype bfloat16]``.
The last line is ``cache_vs_forward=<caching wall time / bare wall time, the worse of the two
cases>`` followed by each case's ratio: medians of ratios paired per repetition, so that a load
that drifts during the run affects both sides of each ratio alike.
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
from gsnb.saes.activations import cache_activations


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


def cached(model, tokens, sites, batch_size: int, dtype, root: Path) -> tuple[float, float]:
    out = root / f"run-{time.monotonic_ns()}"
    start = clocks(model)
    cache_activations(model, tokens, sites, out, batch_size=batch_size, dtype=dtype, progress=False)
    elapsed = since(model, start)
    shutil.rmtree(out)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="a quick run: 16 windows x 64")
    parser.add_argument("--device", default=None, help="default: CUDA if present, else CPU")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--windows", type=int, default=None)
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--out-root", default=None, help="folder for the shards (default: temp)")
    args = parser.parse_args()
    n_windows = args.windows or (16 if args.small else 64)
    seq_len = args.seq_len or (64 if args.small else 128)
    reps = args.reps or (2 if args.small else 3)
    dtype = getattr(torch, args.dtype)

    model = gsnb.load_model(device=args.device)
    tokens = default_tokens(model, n_windows, seq_len, progress=False)
    n_tok = tokens.numel()
    cases = {
        f"layer {args.layer}, 4 kinds": model.sites(layers=args.layer),
        f"all {model.n_layers} layers, 4 kinds": model.sites(),
    }
    root = Path(tempfile.mkdtemp(prefix="gsnb-bench-cache-", dir=args.out_root))
    times: dict[str, dict[str, list[tuple[float, float]]]] = {}
    try:
        # Warm up kernels, allocator and page cache once per case, untimed.
        for sites in cases.values():
            bare_forward(model, tokens[: args.batch_size], sites, args.batch_size)
            cached(model, tokens[: args.batch_size], sites, args.batch_size, dtype, root)
        times = {case: {"bare": [], "cache": []} for case in cases}
        for _ in range(reps):
            for case, sites in cases.items():
                times[case]["bare"].append(bare_forward(model, tokens, sites, args.batch_size))
                times[case]["cache"].append(
                    cached(model, tokens, sites, args.batch_size, dtype, root)
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)

    threads = torch.get_num_threads() if model.device.type == "cpu" else "-"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\n{model.name} on {model.device} ({threads} threads, {os.cpu_count()} cores, load "
        f"{load:.1f}), {n_windows} windows x {seq_len} tokens, batch {args.batch_size}, "
        f"storage {args.dtype}, {reps} interleaved repetitions, shards in {root.parent}\n"
    )
    print(
        "| case | sites | bare forward tok/s | cache_activations tok/s | cache / bare (wall) "
        "| cache / bare (CPU time) | written |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    ratios, wall = {}, {}
    for case, sites in cases.items():
        pairs = list(zip(times[case]["bare"], times[case]["cache"], strict=True))
        wall[case] = [(round(b[0], 2), round(c[0], 2)) for b, c in pairs]
        ratios[case] = statistics.median(c[0] / b[0] for b, c in pairs)
        cpu_ratio = statistics.median(c[1] / b[1] for b, c in pairs)
        bare = statistics.median(b[0] for b, _ in pairs)
        cache = statistics.median(c[0] for _, c in pairs)
        written = n_tok * sum(model.site_width(s) for s in sites) * dtype.itemsize
        print(
            f"| {case} | {len(sites)} | {n_tok / bare:,.0f} | {n_tok / cache:,.0f} | "
            f"{ratios[case]:.3f} | {cpu_ratio:.3f} | {written / 1e9:.2f} GB "
            f"({written / 1e6 / cache:,.0f} MB/s) |"
        )
    print(f"\nwall seconds per repetition (bare, cache): {wall}")
    layer_key, all_key = list(cases)
    print(
        f"cache_vs_forward={max(ratios.values()):.3f} "
        f"layer{args.layer}={ratios[layer_key]:.3f} all_layers={ratios[all_key]:.3f}"
    )


if __name__ == "__main__":
    main()
