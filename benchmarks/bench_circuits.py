"""Attribution graphs: gsnb.trace against circuit-tracer, on the same model, prompt and
transcoders, side by side in one run.

Setup (all offline but the first ``pip install`` of the peer):

* the peer, circuit-tracer 0.5.0 (nnsight backend), lives in its own git-ignored virtual
  environment ``.bench-venv-circuit-tracer`` (created here when missing);
* an 18-layer suite of random JumpReLU transcoders for the embedded Gemma 3 270M (width 4096,
  ``--small`` 1024): unit-norm random encoder columns with per-feature thresholds set to the
  ``1 - 35/width`` quantile of their pre-activations on eight sentences (mean L0 per token on
  the prompt ~55 at width 4096, ~37 at 1024; each layer between ~25 and ~85), random
  decoder rows scaled so reconstructions have the norm of the real MLP outputs, ``b_dec`` the mean
  MLP output. Saved in Gemma Scope 2 layout
  (``transcoder_all/layer_{L}_width_4k_l0_small/params.safetensors``) in a temporary folder;
* each attribution runs in its own fresh process (gsnb in gsnb's venv, circuit-tracer in the
  peer's), alternating gsnb / circuit-tracer; each process reports its load time, the time of the
  attribution call alone and its own peak RSS (``ru_maxrss``: the whole process, model and
  transcoders included, as a user's kernel would hold them);
* then one more gsnb process traces with the model (``gsnb.load_model(dtype=torch.bfloat16)``)
  and the transcoders (``.to(torch.bfloat16)``) in bfloat16, and its graph is compared with the
  last float32 gsnb graph edge by edge on the nodes both share (BOS sources included).

Both get the same token ids (BOS first), the same ``max_feature_nodes``, logit settings
(at most 10 logits covering 95% probability) and batch size.

The graphs are compared edge by edge on the nodes they share: features by (layer, pos, feature),
errors by (layer, pos), tokens by pos, logits by token id. circuit-tracer drops the BOS position
by design (its features and error vectors there are zeroed), so sources at position 0 are left
out of the comparison (counted separately); the breakdown by edge kind is printed as well.
circuit-tracer's token edges come out 1/sqrt(d_model) times gsnb's (it multiplies the gradient
at the scaled embedding by the unscaled embedding rows); edge_corr keeps them as they are.

With ``--clt`` the replacement is one random cross-layer transcoder instead (each source layer's
features write its own and every later layer's MLP output; width per layer 1024, ``--small``
512), calibrated the same way, saved in Gemma Scope 2's ``clt`` layout for gsnb and in
circuit-tracer's own CLT layout (``W_enc_{L}.safetensors``, ``W_dec_{L}.safetensors``) for it.

Defaults: width 4096, 500 feature nodes, 2 runs of each (about 10 minutes on 2 busy cores);
``--small``: width 1024, 200 feature nodes, 1 run of each (about 4 minutes);
``--large``: the first 64 tokens of LONG_PROMPT, 18 transcoders of width 16384 (mean L0 120,
~138k active features), 5000 feature nodes, 1 run of each (estimated 15-25 minutes on 2 cores
and ~16 GB of free memory: runs with 256 and 640 feature nodes took 6-10 minutes, with peak
RSS 10.4 GB for circuit-tracer and 4.7 / 5.5 GB for gsnb; see the README's benchmark notes).

Parts shared with ``bench_gpu.py`` (which runs the same workers on a GPU in bfloat16): the
random suites come from ``random_transcoders.py``, each attribution runs in
``trace_workers.py`` and graphs are compared by ``graph_edges.py``.

Usage: ``python benchmarks/bench_circuits.py [--small | --large] [--clt]``. Prints a markdown
table and ends with ``trace_speedup_vs_circuit_tracer=<median circuit-tracer attribution time /
median gsnb attribution time> edge_corr=<Pearson r over shared edges>
rss_vs_circuit_tracer=<median gsnb peak RSS / median circuit-tracer peak RSS>
bf16_edge_corr=<Pearson r over shared edges, gsnb in bfloat16 against gsnb in float32>``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from graph_edges import all_edges, pearson, shared_edges, slope  # noqa: E402
from random_transcoders import PROMPT, build_clt, build_suite, prompt_tokens  # noqa: E402
from trace_workers import peer_python, run_worker  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--small", action="store_true", help="narrower transcoders, fewer runs")
    size.add_argument(
        "--large",
        action="store_true",
        help="64-token prompt, width-16k transcoders, 5000 feature nodes, 1 run of each",
    )
    parser.add_argument(
        "--max-feature-nodes",
        type=int,
        default=None,
        help="feature nodes whose rows are computed (default 500; 200 small; 5000 large)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="target nodes per backward pass, the same for both (default 64)",
    )
    parser.add_argument("--reps", type=int, default=None, help="runs of each (default 2; 1 small)")
    parser.add_argument("--clt", action="store_true", help="one cross-layer transcoder instead")
    args = parser.parse_args()
    if args.large and args.clt:
        parser.error("--large is a per-layer transcoder case; drop --clt or --large")
    return args


def run_all(args) -> tuple[dict[str, list[dict]], list[float], torch.Tensor]:
    """Build the suite, then alternate fresh gsnb / circuit-tracer processes ``args.reps``
    times and end with one gsnb run in bfloat16; results by kind, L0s, prompt tokens."""
    import gsnb

    setup_start = time.perf_counter()
    peer_python("circuit-tracer")  # created before any timing
    model = gsnb.load_model(device="cpu")
    tokens = prompt_tokens(model, 64 if args.large else None)
    tmp = Path(tempfile.mkdtemp(prefix="gsnb-bench-circuits-"))
    try:
        suite = tmp / "suite"
        l0s = (build_clt if args.clt else build_suite)(model, args.width, suite, tokens)
        del model
        print(
            f"setup (peer check, model, {args.width}-wide transcoders): "
            f"{time.perf_counter() - setup_start:.0f} s",
            flush=True,
        )
        args.suite, args.tokens = str(suite), json.dumps(tokens.tolist())
        args.gsnb_model, args.device, args.reads = "", "cpu", "mlp_in"
        args.model_dir = str(gsnb.core.model.prepare_embedded_model())
        results: dict[str, list[dict]] = {"gsnb": [], "circuit-tracer": [], "gsnb-bf16": []}
        runs = []
        for r in range(args.reps):
            order = ["gsnb", "circuit-tracer"] if r % 2 == 0 else ["circuit-tracer", "gsnb"]
            runs += [(kind, "float32") for kind in order]
        runs.append(("gsnb", "bfloat16"))
        for i, (kind, dtype) in enumerate(runs):
            res = run_worker(kind, args, tmp / f"{kind}-{i}.pt", dtype)
            results[kind if dtype == "float32" else "gsnb-bf16"].append(res)
            print(
                f"  run {i} {kind} ({dtype}): load {res['load_s']:.1f} s, attribution "
                f"{res['attr_s']:.1f} s, peak RSS {res['rss_mib']:.0f} MiB",
                flush=True,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return results, l0s, tokens


def main() -> None:
    args = parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    if args.clt:
        args.width = 512 if args.small else 1024
    else:
        args.width = 1024 if args.small else 16384 if args.large else 4096
    args.reps = args.reps or (1 if args.small or args.large else 2)
    args.max_feature_nodes = args.max_feature_nodes or (
        200 if args.small else 5000 if args.large else 500
    )
    results, l0s, tokens = run_all(args)
    report(args, results, l0s, tokens)


def report(args, results: dict[str, list[dict]], l0s: list[float], tokens: torch.Tensor) -> None:
    g, c, h = results["gsnb"][-1], results["circuit-tracer"][-1], results["gsnb-bf16"][-1]
    med = {
        k: {f: statistics.median(r[f] for r in v) for f in ("load_s", "attr_s", "rss_mib")}
        for k, v in results.items()
    }
    edges = shared_edges(g, c)
    a_all = torch.cat([a for a, _ in edges.values()])
    b_all = torch.cat([b for _, b in edges.values()])
    edge_corr = pearson(a_all, b_all)
    speedup = med["circuit-tracer"]["attr_s"] / med["gsnb"]["attr_s"]
    rss_ratio = med["gsnb"]["rss_mib"] / med["circuit-tracer"]["rss_mib"]
    bf16_a, bf16_b = all_edges(g, h)
    bf16_corr = pearson(bf16_a, bf16_b)

    n_pos = len(tokens)
    prompt = f"the first {n_pos} tokens of LONG_PROMPT" if args.large else PROMPT
    print(
        f"\nAttribution graph of {n_pos} tokens (BOS included) {prompt!r} on gsnb's embedded "
        f"Gemma 3 270M (CPU, float32, {torch.get_num_threads()} threads, load average "
        f"{os.getloadavg()[0]:.1f} at the end); "
        + ("a random cross-layer transcoder" if args.clt else "18 random JumpReLU transcoders")
        + f" of width {args.width} "
        f"(L0 per token on the prompt {min(l0s):.0f}..{max(l0s):.0f}, mean "
        f"{statistics.mean(l0s):.0f}); max_feature_nodes={args.max_feature_nodes}, at most 10 "
        f"logits covering 95%, batch size {args.batch_size}; {args.reps} run(s) each in fresh "
        "processes, alternating, medians; then one gsnb run with model and transcoders in "
        "bfloat16\n"
    )
    print(
        "| tool | attribution (s) | load model+transcoders (s) | peak RSS (MiB) "
        "| active features | feature nodes | logit nodes | edges (nonzero) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = (
        ("gsnb.trace", "gsnb", g),
        ("circuit-tracer 0.5.0 attribute (nnsight)", "circuit-tracer", c),
        ("gsnb.trace, bfloat16 model and transcoders", "gsnb-bf16", h),
    )
    for name, kind, res in rows:
        m = med[kind]
        print(
            f"| {name} | {m['attr_s']:.1f} | {m['load_s']:.1f} | {m['rss_mib']:.0f} | "
            f"{res['n_active']} | {len(res['features'])} | {len(res['logit_tokens'])} | "
            f"{int((res['adjacency'] != 0).sum())} |"
        )
    edge_report(g, c, edges, a_all, b_all, edge_corr)
    bf16_report(g, h)
    print(
        f"trace_speedup_vs_circuit_tracer={speedup:.2f} edge_corr={edge_corr:.4f} "
        f"rss_vs_circuit_tracer={rss_ratio:.3f} bf16_edge_corr={bf16_corr:.4f}"
    )


def bf16_report(g: dict, h: dict) -> None:
    """gsnb in bfloat16 (``h``) against gsnb in float32 (``g``): shared nodes, and edges by kind
    among them, BOS-position sources included."""
    g_feats = {tuple(r) for r in g["features"].tolist()}
    h_feats = {tuple(r) for r in h["features"].tolist()}
    g_logits, h_logits = g["logit_tokens"].tolist(), h["logit_tokens"].tolist()
    print(
        f"\nbfloat16 against float32 (gsnb both): {len(g_feats & h_feats)} shared feature nodes "
        f"of {len(g_feats)}; {len(set(g_logits) & set(h_logits))} shared logit nodes of "
        f"{len(g_logits)} (same order: {g_logits == h_logits})"
    )
    print("\n| edges (source -> target), all sources | n | Pearson r | slope bf16/fp32 |")
    print("|---|---:|---:|---:|")
    by_kind = shared_edges(g, h)
    for name, (a, b) in shared_edges(g, h, bos=True).items():
        by_kind[name] = (torch.cat([by_kind[name][0], a]), torch.cat([by_kind[name][1], b]))
    for name, (a, b) in by_kind.items():
        if len(a):
            print(f"| {name} | {len(a)} | {pearson(a, b):.6f} | {slope(a, b):.4f} |")
    a, b = all_edges(g, h)
    print(f"| all | {len(a)} | {pearson(a, b):.6f} | {slope(a, b):.4f} |")


def edge_report(g: dict, c: dict, edges: dict, a_all, b_all, edge_corr: float) -> None:
    """The gsnb / circuit-tracer comparison: shared nodes, edges by kind, the token-edge scale
    and the BOS-position sources."""
    g_feats = {tuple(r) for r in g["features"].tolist()}
    c_feats = {tuple(r) for r in c["features"].tolist()}
    print(
        f"\nfeature nodes in both graphs: {len(g_feats & c_feats)} "
        f"(gsnb {len(g_feats)}, circuit-tracer {len(c_feats)}; gsnb's at BOS: "
        f"{sum(1 for f in g_feats if f[1] == 0)}); logit tokens equal: "
        f"{g['logit_tokens'].tolist() == c['logit_tokens'].tolist()}"
    )
    print(
        "\n| edges (source -> target), BOS sources left out | n | Pearson r "
        "| slope circuit-tracer/gsnb | max abs diff |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, (a, b) in edges.items():
        if len(a):
            print(
                f"| {name} | {len(a)} | {pearson(a, b):.6f} | {slope(a, b):.4f} | "
                f"{float((a - b).abs().max()):.3g} |"
            )
    print(
        f"| all | {len(a_all)} | {edge_corr:.6f} | {slope(a_all, b_all):.4f} | "
        f"{float((a_all - b_all).abs().max()):.3g} |"
    )
    token_slope = slope(*edges["token -> logit"])
    embed_scale = g["d_model"] ** 0.5
    if abs(token_slope * embed_scale - 1) < 1e-3:
        print(
            f"\ntoken edges: circuit-tracer's are gsnb's times {token_slope:.6f} = 1/sqrt(d_model) "
            f"(1/{embed_scale:.3f}): circuit-tracer contracts the gradient at the output of "
            "embed_tokens with the raw rows embed_tokens.weight[tokens], but Gemma's embedding "
            "output is those rows times sqrt(d_model), which gsnb's token nodes use"
        )
    bos_g = torch.cat([a for a, _ in shared_edges(g, c, bos=True).values()])
    bos_c = torch.cat([b for _, b in shared_edges(g, c, bos=True).values()])
    print(
        f"\nedges from BOS-position sources (left out above): {len(bos_g)} nonzero on either "
        f"side, {int((bos_g != 0).sum())} in gsnb, {int((bos_c != 0).sum())} in circuit-tracer; "
        f"all-edge Pearson r with them included: "
        f"{pearson(torch.cat([a_all, bos_g]), torch.cat([b_all, bos_c])):.6f}"
    )


if __name__ == "__main__":
    main()
