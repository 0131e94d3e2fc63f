"""``gsnb.evaluate`` against the forward passes it cannot avoid.

For a few SAEs of the tutorial suite, measures side by side in one run, interleaved and repeated:

- forwards: per batch, the clean pass, one pass per SAE and two per distinct output site (the
  zero and mean ablations), each computing the logits; nothing else. This is the floor.
- evaluate: ``gsnb.evaluate`` on the same windows and batches (the pass for the site means, the
  same forward passes, and the reconstruction, cross-entropy, KL and ablation bookkeeping).

Usage: ``python benchmarks/bench_evaluate.py [--windows N]``. The last line is
``evaluate_vs_forwards=<evaluate wall time / forwards wall time>``, the median of ratios paired
per repetition. The suite is ``gsnb.tutorial_suite(small=True)`` (trained once, in about a
minute, if not cached): the cost measured is that of the passes, not of the SAEs' quality.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import gsnb

SITES = ("resid_post.6", "attn_out.6", "transcoder.6")
BATCH = 4  # evaluate's default windows per forward pass


def forwards(model, saes: dict, tokens: torch.Tensor) -> float:
    """Seconds for the bare forward passes evaluate needs on ``tokens``."""
    n_passes = 1 + len(saes) + 2 * len({sae.site_out for sae in saes.values()})
    start = time.perf_counter()
    with torch.no_grad():
        for first in range(0, len(tokens), BATCH):
            for _ in range(n_passes):
                model(tokens[first : first + BATCH])
    return time.perf_counter() - start


def evaluate(model, saes: dict, tokens: torch.Tensor) -> float:
    start = time.perf_counter()
    gsnb.evaluate(model, saes, tokens, batch_size=BATCH, progress=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=8, help="held-out windows of 128 tokens")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = gsnb.load_model(device="cpu")
    suite = gsnb.tutorial_suite(model, small=True, progress=False)
    saes = {name: suite.saes[name] for name in SITES}
    tokens = gsnb.data.default_tokens(model, args.windows, 128, split="eval")
    evaluate(model, saes, tokens[:BATCH])  # warm up both paths
    ratios = []
    for rep in range(args.repeats):
        bare, full = forwards(model, saes, tokens), evaluate(model, saes, tokens)
        ratios.append(full / bare)
        print(f"repeat {rep}: forwards {bare:.1f} s, evaluate {full:.1f} s, ratio {ratios[-1]:.3f}")
    print(f"evaluate_vs_forwards={statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
