"""gsnb on a CUDA GPU: activation caching, JumpReLU training and attribution graphs (against
circuit-tracer 0.5.0 on the same GPU), in one run. ``benchmarks/gpu.sh`` sets up and calls it.

1. Caching: ``gsnb.cache_activations`` of ``resid_post.6`` of the embedded Gemma 3 270M
   (bfloat16 on the GPU, rows stored as float32, the default) over offline-corpus windows of
   128 tokens, 64 windows a batch, after an untimed warm-up; tokens/s of the whole call (forward,
   device-to-host copies, shard files on disk).
2. Training: ``gsnb.train_sae`` at width 16k, batch 4096, float32, on the rows cached in 1 (held
   on the GPU, cycled); steady-state tokens/s from the median step (the GPU synchronised as each
   step asks for its batch), the first 5 steps left out.
3. Tracing: ``gsnb.trace`` against circuit-tracer's ``attribute`` (nnsight backend), each in its
   own fresh process, alternating, both in bfloat16 on the same GPU with the same token ids,
   transcoders, ``max_feature_nodes``, logit settings and batch size (the workers of
   ``trace_workers.py``):

   * ``embedded``: the embedded Gemma 3 270M with 18 random width-16k transcoders calibrated as
     in ``bench_circuits.py``, the 64-token prompt of its ``--large`` case, 5000 feature nodes;
   * ``2b``: a random Gemma-2-2B-shaped model (Gemma2Config: 26 layers, d_model 2304, MLP 9216,
     8 heads of 256, 4 KV heads, vocabulary 256000, soft-capping as Gemma 2 2B; random init
     saved in bfloat16, the embedded model's tokenizer) with 26 random width-16k transcoders
     calibrated the same way, reading ``mlp_normalized.L`` as Gemma Scope's Gemma 2
     transcoders do (circuit-tracer's ``ln2.hook_normalized``), the same 64-token prompt, 5000
     feature nodes.

Sizes: default 4096 windows cached, 200 training steps, 5000 feature nodes, 1 run of each tool
per tracing case (estimated 6-8 minutes on one H100/H200 after set-up, most of it process
start-up, model loading and writing the 2B-shaped model and its 7.8 GB of float32
transcoders); ``--quick``: 2048 windows, 60 steps, 2000 feature nodes (estimated 4-5 minutes). ``--device cpu`` (implies the tiny sizes of ``--quick`` on a CPU: width-1024
transcoders, a 4-layer Gemma-2-shaped model of d_model 128, 100 feature nodes) only checks the
code path end to end; its numbers mean nothing for a GPU.

Prints a markdown table, then ``name=value`` lines: caching_tokens_per_s,
training_tokens_per_s, trace_speedup_vs_circuit_tracer_embedded,
trace_speedup_vs_circuit_tracer_2b (median circuit-tracer attribution time / median gsnb).
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
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import graph_edges  # noqa: E402
import random_transcoders as rt  # noqa: E402
import trace_workers as tw  # noqa: E402

SITE = "resid_post.6"
SKIP_STEPS = 5
TARGETS = dict(caching=200_000, training=1_000_000, trace=2.0)


@dataclass(frozen=True)
class Sizes:
    """One preset of every size in the run."""

    cache_windows: int
    """Windows of 128 tokens cached (timed), after a warm-up of one batch."""
    cache_batch: int
    """Windows per forward pass."""
    train_width: int
    """SAE width of the training run."""
    train_batch: int
    """Rows per training step."""
    train_steps: int
    """Training steps (the first SKIP_STEPS are not timed)."""
    tc_width: int
    """Width of every random transcoder."""
    n_tokens: int
    """Prompt length of the tracing cases (BOS included)."""
    max_feature_nodes: int
    """Feature nodes whose rows are computed, both tools."""
    reps: int
    """Fresh-process runs of each tool per tracing case."""
    big: dict
    """Gemma2Config sizes of the ``2b`` case."""


GEMMA2_2B = dict(
    num_hidden_layers=26,
    hidden_size=2304,
    intermediate_size=9216,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=256,
    query_pre_attn_scalar=256,
    vocab_size=256000,
)
PRESETS = {
    "full": Sizes(4096, 64, 16384, 4096, 200, 16384, 64, 5000, 1, GEMMA2_2B),
    "quick": Sizes(2048, 64, 16384, 4096, 60, 16384, 64, 2000, 1, GEMMA2_2B),
    "cpu": Sizes(
        32,
        16,
        2048,
        1024,
        10,
        1024,
        16,
        100,
        1,
        dict(GEMMA2_2B, num_hidden_layers=4, hidden_size=128, intermediate_size=256, head_dim=32),
    ),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_caching(model, sizes: Sizes, root: Path) -> tuple[float, Path]:
    """Caching tokens/s of ``SITE`` and the folder it cached (kept for training)."""
    from gsnb.core.data import default_tokens
    from gsnb.saes.activations import cache_activations

    tokens = default_tokens(model, sizes.cache_windows, 128, progress=False)
    warm = root / "warm-up"
    cache_activations(
        model, tokens[: sizes.cache_batch], [SITE], warm, sizes.cache_batch, progress=False
    )
    shutil.rmtree(warm)
    out = root / "cache"
    sync(model.device)
    start = time.perf_counter()
    cache_activations(model, tokens, [SITE], out, sizes.cache_batch, progress=False)
    sync(model.device)
    return tokens.numel() / (time.perf_counter() - start), out


def bench_training(cache: Path, sizes: Sizes, device: torch.device) -> float:
    """Steady-state training tokens/s at the median step."""
    import gsnb
    from gsnb.saes.train import TrainConfig, train_sae

    rows = gsnb.ActivationStore(cache).load(SITE).to(device)
    b = sizes.train_batch
    if len(rows) < b:
        raise ValueError(f"{len(rows)} cached rows, fewer than one batch of {b}")
    stamps: list[float] = []

    def batches():
        k = 0
        while True:
            sync(device)
            stamps.append(time.perf_counter())
            i0 = (k * b) % (len(rows) - b + 1)
            yield {SITE: rows[i0 : i0 + b]}
            k += 1

    cfg = TrainConfig(
        d_sae=sizes.train_width,
        batch_size=b,
        n_tokens=sizes.train_steps * b,
        device=str(device),
        progress=False,
    )
    train_sae(None, SITE, cfg, data=batches())
    sync(device)
    stamps.append(time.perf_counter())
    # stamps[0]: the scale batch; stamps[k] for k >= 1: step k - 1 asks for its batch.
    steps = [t1 - t0 for t0, t1 in zip(stamps[1:], stamps[2:], strict=False)][SKIP_STEPS:]
    return b / statistics.median(steps)


def random_gemma2(folder: Path, sizes: Sizes, device: torch.device, tokenizer_dir: Path) -> Path:
    """A random Gemma-2-shaped model saved in bfloat16 with the embedded model's tokenizer."""
    from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(
        **sizes.big,
        max_position_embeddings=8192,
        sliding_window=4096,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(rt.SEED)
    with torch.device(device):
        hf = Gemma2ForCausalLM(config)
    hf.to(torch.bfloat16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)
    del hf
    return folder


def prepare_trace(case: str, model, folder: Path, sizes: Sizes, args, root: Path):
    """The random transcoder suite of ``model`` and the workers' arguments."""
    tokens = rt.prompt_tokens(model, sizes.n_tokens)
    suite = root / f"suite-{case}"
    # Gemma 2's transcoders read the normalised MLP input, as Gemma Scope's do (circuit-tracer
    # knows no mlp_in hook on Gemma 2).
    reads = "mlp_in" if case == "embedded" else "mlp_normalized"
    l0s = rt.build_suite(model, sizes.tc_width, suite, tokens, reads)
    return SimpleNamespace(
        case=case,
        l0=statistics.mean(l0s),
        suite=str(suite),
        width=sizes.tc_width,
        tokens=json.dumps(tokens.tolist()),
        model_dir=str(folder),
        gsnb_model="" if case == "embedded" else str(folder),
        device=args.device,
        max_feature_nodes=sizes.max_feature_nodes,
        batch_size=64,
        clt=False,
        reads=reads,
    )


def bench_trace(ns, sizes: Sizes, dtype: str, root: Path, peer: bool) -> dict:
    """Median attribution times, peaks and edge agreement of gsnb and circuit-tracer, each
    run in fresh processes, alternating (``peer`` False: gsnb alone)."""
    kinds = ["gsnb", "circuit-tracer"] if peer else ["gsnb"]
    results: dict[str, list[dict]] = {k: [] for k in kinds}
    for r in range(sizes.reps):
        for kind in kinds[:: 1 if r % 2 == 0 else -1]:
            res = tw.run_worker(kind, ns, root / f"{ns.case}-{kind}-{r}.pt", dtype)
            results[kind].append(res)
            print(
                f"  [{ns.case}] run {r} {kind}: load {res['load_s']:.1f} s, attribution "
                f"{res['attr_s']:.2f} s, peak RSS {res['rss_mib']:.0f} MiB, peak GPU "
                f"{res['device_mib']:.0f} MiB",
                flush=True,
            )
    shutil.rmtree(ns.suite)
    med = {
        k: {f: statistics.median(r[f] for r in v) for f in ("attr_s", "rss_mib", "device_mib")}
        for k, v in results.items()
    }
    g = results["gsnb"][-1]
    out = dict(
        med=med,
        speedup=float("nan"),
        edge_corr=float("nan"),
        l0=ns.l0,
        n_active=g["n_active"],
        n_layers=g["n_layers"],
        d_model=g["d_model"],
        n_tokens=len(g["tokens"]),
    )
    if peer:
        # BOS-position sources left out, as in bench_circuits.py: circuit-tracer zeroes them.
        edges = graph_edges.shared_edges(g, results["circuit-tracer"][-1]).values()
        a, b = torch.cat([a for a, _ in edges]), torch.cat([b for _, b in edges])
        out["speedup"] = med["circuit-tracer"]["attr_s"] / med["gsnb"]["attr_s"]
        out["edge_corr"] = graph_edges.pearson(a, b)
    return out


def run(args, sizes: Sizes, root: Path) -> dict:
    """Every measurement, in order; the GPU is freed of this process's models before the
    attribution workers start."""
    import gsnb

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    out: dict = {}
    t0 = time.perf_counter()
    if args.peer:
        tw.peer_python("circuit-tracer")  # created before any timing
    model = gsnb.load_model(device=device, dtype=dtype)
    out["caching"], cache = bench_caching(model, sizes, root)
    print(f"caching: {out['caching']:,.0f} tokens/s", flush=True)
    out["training"] = bench_training(cache, sizes, device)
    print(f"training: {out['training']:,.0f} tokens/s", flush=True)
    shutil.rmtree(cache)
    embedded_dir = gsnb.core.model.prepare_embedded_model()
    ns = prepare_trace("embedded", model, embedded_dir, sizes, args, root)
    del model
    free(device)
    out["embedded"] = bench_trace(ns, sizes, args.dtype, root, args.peer)
    folder = random_gemma2(root / "gemma2-random", sizes, device, embedded_dir)
    free(device)
    big = gsnb.load_model(str(folder), device=device, dtype=dtype)
    ns = prepare_trace("2b", big, folder, sizes, args, root)
    del big
    free(device)
    print(f"random Gemma-2-shaped model and its suite: {time.perf_counter() - t0:.0f} s so far")
    out["2b"] = bench_trace(ns, sizes, args.dtype, root, args.peer)
    out["wall_s"] = time.perf_counter() - t0
    return out


def free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def report(out: dict, sizes: Sizes, args) -> None:
    on_gpu = torch.device(args.device).type == "cuda"
    name = torch.cuda.get_device_name() if on_gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"\n## gsnb on {name}, {args.dtype} models ({args.preset} sizes, "
        f"{out['wall_s']:.0f} s in all)\n"
    )
    print("| benchmark | gsnb | circuit-tracer 0.5.0 | gsnb / peer | target (H100/H200) | met |")
    print("|---|---:|---:|---:|---:|---|")

    def met(ok: bool) -> str:
        return ("yes" if ok else "NO") if on_gpu else "(not a GPU)"

    c, t = out["caching"], out["training"]
    print(
        f"| caching {SITE}, embedded 270M, {sizes.cache_windows} x 128 tokens (tokens/s) "
        f"| {c:,.0f} | | | >= {TARGETS['caching']:,} | {met(c >= TARGETS['caching'])} |"
    )
    print(
        f"| JumpReLU training, width {sizes.train_width}, batch {sizes.train_batch} (tokens/s) "
        f"| {t:,.0f} | | | >= {TARGETS['training']:,} | {met(t >= TARGETS['training'])} |"
    )
    for case in ("embedded", "2b"):
        r = out[case]
        g = r["med"]["gsnb"]
        nan = dict(attr_s=float("nan"), rss_mib=float("nan"), device_mib=float("nan"))
        p = r["med"].get("circuit-tracer", nan)
        what = (
            f"trace {case} ({r['n_layers']} layers, d_model {r['d_model']}, {r['n_tokens']} "
            f"tokens, width {sizes.tc_width}, {sizes.max_feature_nodes} feature nodes"
        )
        print(
            f"| {what}): attribution (s) | {g['attr_s']:.2f} | {p['attr_s']:.2f} | "
            f"{1 / r['speedup']:.2f} (speed-up {r['speedup']:.2f}x) | speed-up >= "
            f"{TARGETS['trace']:.0f}x | "
            f"{met(r['speedup'] >= TARGETS['trace']) if args.peer else 'n/a'} |"
        )
        if on_gpu:
            print(
                f"| {what}): peak GPU memory (MiB) | {g['device_mib']:,.0f} | "
                f"{p['device_mib']:,.0f} | {g['device_mib'] / p['device_mib']:.2f} | | |"
            )
        print(
            f"| {what}): peak RSS (MiB) | {g['rss_mib']:,.0f} | {p['rss_mib']:,.0f} | "
            f"{g['rss_mib'] / p['rss_mib']:.2f} | | |"
        )
    for case in ("embedded", "2b"):
        r = out[case]
        print(
            f"\n{case}: mean L0 per token on the prompt {r['l0']:.0f}, {r['n_active']} active "
            f"features; edges among shared nodes (BOS sources left out) gsnb vs circuit-tracer: "
            f"Pearson r {r['edge_corr']:.4f}"
        )
    if not args.peer:
        print("\n(circuit-tracer was not run: its columns and speed-ups are nan)")
    if not on_gpu:
        print("\n(a CPU dry run: it checks the code path; the numbers mean nothing for a GPU)")
    print(f"\ncaching_tokens_per_s={c:.0f}")
    print(f"training_tokens_per_s={t:.0f}")
    print(f"trace_speedup_vs_circuit_tracer_embedded={out['embedded']['speedup']:.2f}")
    print(f"trace_speedup_vs_circuit_tracer_2b={out['2b']['speedup']:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tokens, steps and runs")
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu for a dry run")
    parser.add_argument("--out-root", default=None, help="folder for temporary files")
    parser.add_argument(
        "--no-peer", dest="peer", action="store_false", help="gsnb alone (no circuit-tracer)"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "bench_gpu: no CUDA GPU is visible to torch "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); nothing measured. "
            "Run it on a machine with an NVIDIA GPU, or `--device cpu --quick` for a dry run."
        )
        return 0
    args.preset = "cpu" if device.type == "cpu" else "quick" if args.quick else "full"
    args.dtype = "bfloat16" if device.type == "cuda" else "float32"
    os.environ["HF_HUB_OFFLINE"] = "1"
    root = Path(tempfile.mkdtemp(prefix="gsnb-bench-gpu-", dir=args.out_root))
    try:
        out = run(args, PRESETS[args.preset], root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(out, PRESETS[args.preset], args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
