"""Steered generation speed: tokens/s with and without interventions, side by side.

Runs the embedded Gemma 3 270M (offline) with a random-init 16k JumpReLU SAE at the middle
layer's resid_post. Three configurations are timed in interleaved rounds (so drifting machine
load hits all of them alike) and summarised by their medians:

* gsnb.generate with no interventions,
* gsnb.generate with one Add (a feature's decoder row) and one Clamp (encode, edit, decode delta),
* transformers' own greedy ``model.hf.generate``, the reference for the generation loop itself.

Usage: ``python benchmarks/bench_steering.py [--small] [--device cpu|cuda] [--threads N]``.
Prints a markdown table and ends with
``steer_overhead=<median over rounds of steered / plain time per token>``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import gsnb
from gsnb.analysis.steering import Add, Clamp, _generate_ids
from gsnb.saes.sae import JumpReLUSAE, SAEConfig

PROMPT = "The old lighthouse keeper climbed the stairs every evening, and on that night he saw"


def random_sae(model: gsnb.Model, site: str, d_sae: int = 16384, seed: int = 0) -> JumpReLUSAE:
    """Random JumpReLU SAE (unit decoder rows, encoder = decoder transpose); ~2% firing."""
    d = model.site_width(site)
    sae = JumpReLUSAE(SAEConfig(d, d_sae, d, model.name, site))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w_dec = torch.randn(d_sae, d, generator=gen)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        sae.W_dec.copy_(w_dec)
        sae.W_enc.copy_(w_dec.T)
        _, cache = model.run_with_cache(PROMPT, [site], stop_early=True)
        pre = sae.pre_activations(cache[site][0, 1:].float().cpu())
        sae.threshold.copy_(pre.quantile(0.98, dim=0).clamp(min=1e-3))
    return sae.requires_grad_(False).to(model.device)


def hf_generate(model: gsnb.Model, tokens: torch.Tensor, n: int) -> torch.Tensor:
    out = model.hf.generate(
        tokens,
        attention_mask=torch.ones_like(tokens),
        max_new_tokens=n,
        do_sample=False,
        top_p=None,
        top_k=None,
    )
    return out[0, tokens.shape[1] :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="fewer tokens and rounds")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: best available)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's choice); on a CPU shared with other jobs "
        "1 thread is faster and far steadier than 2",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # Many short rounds rather than a few long ones: pairs of runs seconds apart see the same
    # machine load, which matters on shared CPUs.
    new_tokens, rounds = (6, 4) if args.small else (16, 10)

    torch.manual_seed(0)
    model = gsnb.load_model(device=args.device)
    site = f"resid_post.{model.n_layers // 2}"
    sae = random_sae(model, site)
    steer = [Add(site, (sae, 123), 8.0), Clamp(sae, [456], 5.0)]
    tokens = model.to_tokens(PROMPT)

    def sync() -> None:
        if model.device.type == "cuda":
            torch.cuda.synchronize()

    plain_name, steered_name = "gsnb.generate, no interventions", "gsnb.generate, Add + Clamp"
    runs = {
        plain_name: lambda n: _generate_ids(model, tokens, [], n),
        steered_name: lambda n: _generate_ids(model, tokens, steer, n),
        "transformers hf.generate (reference)": lambda n: hf_generate(model, tokens, n),
    }
    per_token: dict[str, list[float]] = {name: [] for name in runs}
    counts: dict[str, int] = {}
    with torch.no_grad():
        for fn in runs.values():  # warm-up: allocator, kernels, caches
            fn(4)
        names = list(runs)
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                sync()
                start = time.perf_counter()
                ids = runs[name](new_tokens)
                sync()
                elapsed = time.perf_counter() - start
                counts[name] = len(ids)
                per_token[name].append(elapsed / len(ids))

    plain = statistics.median(per_token[plain_name])
    # Each round's steered/plain ratio compares runs seconds apart, so load that drifts between
    # rounds (other processes on a shared machine) cancels; the median ratio is the overhead.
    ratios = [s / p for s, p in zip(per_token[steered_name], per_token[plain_name], strict=True)]
    print(
        f"\nSteered generation on {model.name} ({model.device}, {model.dtype}, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} at the end): "
        f"prompt {tokens.shape[1]} tokens, "
        f"{new_tokens} new, {rounds} interleaved rounds, medians; 16k SAE at {site}\n"
    )
    print(
        "| configuration | tokens/s (median) | ms/token (min..max) | new tokens "
        "| vs no interventions |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, times in per_token.items():
        med = statistics.median(times)
        print(
            f"| {name} | {1 / med:.1f} | {1e3 * min(times):.1f}..{1e3 * max(times):.1f} | "
            f"{counts[name]} | {med / plain:.3f} |"
        )
    # Decoding is memory-bound: each token reads every weight once. The Clamp adds one read of
    # W_enc (it encodes the full dictionary), the Add one decoder row.
    model_bytes = sum(p.numel() * p.element_size() for p in model.hf.parameters())
    sae_bytes = sae.W_enc.numel() * sae.W_enc.element_size()
    print(
        f"| expected from weight bytes read per token | | | | {1 + sae_bytes / model_bytes:.3f} |"
    )
    print(f"\nper-round steered/plain ratios: {', '.join(f'{r:.3f}' for r in ratios)}")
    print(f"steer_overhead={statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
