"""feature_stats against the activation-caching pass over the same tokens and site.

On the embedded Gemma 3 270M with a random-init 16k-wide JumpReLU SAE at ``resid_post.12``
(thresholds set so that L0 is 50-100), measures side by side in one run, interleaved and
repeated:

- cache: ``gsnb.cache_activations`` of ``resid_post.12`` into a fresh folder (forward pass stopped
  after the site, device-to-host copy, shard files on disk). Any per-feature statistic needs at
  least this forward pass, so it is the floor.
- features: ``gsnb.analysis.features.feature_stats`` over the same windows (forward pass, SAE encoding,
  top-k contexts, quantile samples, histograms, density), logit effects off.
- logit effects: the one-off ``[d_sae, vocab]`` product that ``feature_stats`` adds at the end,
  timed on 1024 features and scaled to 16k (it does not depend on the corpus size).

Usage: ``python benchmarks/bench_features.py [--small] [--device cpu|cuda] [--windows N]``.
The last line is ``features_vs_cache=<ratio>``: the median over repetitions of the paired ratio
of wall times, so that a load that drifts during the run affects both sides of each ratio alike.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import tempfile
import time

import torch

import gsnb
from gsnb.analysis.features import feature_stats
from gsnb.analysis.logit_effects import feature_logit_ranks
from gsnb.core.data import default_tokens
from gsnb.saes.activations import cache_activations
from gsnb.saes.sae import JumpReLUSAE, SAEConfig

SITE = "resid_post.12"
D_SAE = 16384
L0 = 60  # calibration target; features rarer than 1 in 2k calibration tokens overshoot it,
# so the measured L0 lands near 85


def clocks(device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process: all threads, user + system)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), usage.ru_utime + usage.ru_stime


def timed(device, fn) -> tuple[float, float]:
    start = clocks(device)
    fn()
    end = clocks(device)
    return end[0] - start[0], end[1] - start[1]


@torch.no_grad()
def random_sae(model, tokens: torch.Tensor, d_sae: int = D_SAE) -> JumpReLUSAE:
    """Random encoder and unit decoder rows; per-feature thresholds from a calibration batch so
    that densities spread log-uniformly over 1e-4..3e-2 with a mean L0 of ``L0``."""
    d_in = model.site_width(SITE)
    sae = JumpReLUSAE(SAEConfig(d_in=d_in, d_sae=d_sae, site_in=SITE, model_name=model.name))
    sae = sae.to(model.device)
    gen = torch.Generator().manual_seed(0)
    _, cache = model.run_with_cache(tokens, [SITE], stop_early=True)
    x = cache[SITE][:, 1:].flatten(0, 1).float()  # without BOS, as feature_stats counts
    sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=gen) / x.norm(dim=-1).mean().cpu())
    sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=gen), dim=-1))
    density = 10 ** torch.empty(d_sae).uniform_(-4, -1.5, generator=gen)
    density *= L0 / density.sum()
    pre = sae.pre_activations(x)  # [tokens, d_sae]
    rank = (density * len(x)).long().clamp(0, len(x) - 1).to(pre.device)
    thr = pre.sort(0, descending=True).values.gather(0, rank[None]).squeeze(0)
    sae.threshold.copy_(thr.clamp_min(1e-3))
    return sae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="fewer windows and repetitions")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--windows", type=int, default=None, help="token windows of 128")
    parser.add_argument("--reps", type=int, default=None)
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    n_windows = args.windows or (4096 if gpu else 16 if args.small else 48)
    reps = args.reps or (1 if args.small else 3 if gpu else 2)
    batch_size = 64 if gpu else 16

    model = gsnb.load_model(device=device)
    # Statistics are measured on held-out text, as everywhere in gsnb.
    tokens = default_tokens(model, n_windows + 16, 128, split="eval", progress=False)
    calib, tokens = tokens[:16], tokens[16:]
    sae = random_sae(model, calib.to(device))

    def cache_pass() -> None:
        out = tempfile.mkdtemp(prefix="gsnb-bench-features-")
        try:
            cache_activations(model, tokens, [SITE], out, batch_size=batch_size, progress=False)
        finally:
            shutil.rmtree(out, ignore_errors=True)

    stats = None

    def features_pass() -> None:
        nonlocal stats
        stats = feature_stats(
            model, sae, tokens, batch_size=batch_size, n_logit_tokens=0, progress=False
        )

    # Warm-up on two windows: first-call costs (allocator, kernels) are not per token.
    feature_stats(model, sae, tokens[:2], n_logit_tokens=0, progress=False)
    times: dict[str, list[tuple[float, float]]] = {"cache": [], "features": []}
    for _ in range(reps):
        times["cache"].append(timed(device, cache_pass))
        times["features"].append(timed(device, features_pass))
    pairs = list(zip(times["cache"], times["features"], strict=True))
    ratio = statistics.median(f[0] / c[0] for c, f in pairs)

    part = JumpReLUSAE(SAEConfig(d_in=sae.cfg.d_in, d_sae=1024, site_in=SITE)).to(device)
    with torch.no_grad():
        part.W_dec.copy_(sae.W_dec[:1024])
    logit_wall, logit_cpu = timed(device, lambda: feature_logit_ranks(model, part, 10))
    scale = D_SAE / 1024

    n_tok = tokens.numel()
    l0 = float(stats.density.sum())
    print(
        f"\n{model.name} on {device} ({torch.get_num_threads()} threads), {n_windows} windows x "
        f"128 = {n_tok} tokens, batch {batch_size}, {reps} reps; SAE 16k at {SITE}, L0 {l0:.0f}\n"
    )
    print("| pass | median wall s | median CPU s | tokens/s (wall) |")
    print("|---|---|---|---|")
    for name, label in (("cache", "cache_activations"), ("features", "feature_stats")):
        wall = statistics.median(t[0] for t in times[name])
        cpu = statistics.median(t[1] for t in times[name])
        print(f"| {label} | {wall:.2f} | {cpu:.2f} | {n_tok / wall:,.0f} |")
    print(
        f"| logit effects, 16k x {model.hf.lm_head.weight.shape[0]:,} vocab, one-off "
        f"(1024 timed, x{scale:.0f}) | {logit_wall * scale:.2f} | {logit_cpu * scale:.2f} | - |"
    )
    print(f"\nfeatures/cache per rep, wall: {[round(f[0] / c[0], 3) for c, f in pairs]}, CPU: "
          f"{[round(f[1] / c[1], 3) for c, f in pairs]}")  # fmt: skip
    print(f"features_vs_cache={ratio:.3f}")


if __name__ == "__main__":
    main()
