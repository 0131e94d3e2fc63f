"""One attribution in a fresh process, for ``bench_circuits.py`` and ``bench_gpu.py``: gsnb's
``trace`` (in gsnb's venv) or circuit-tracer's ``attribute`` (nnsight backend, in the peer's
venv), each reporting its load time, the time of the attribution call alone, its own peak RSS
(``ru_maxrss``: the whole process, model and transcoders included) and, on a GPU, torch's peak
allocated memory from the attribution call on (weights included), with the graph.

``run_worker(kind, args, out, dtype)`` starts this file as ``python trace_workers.py KIND ...``
with gsnb's Python or the peer's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import peer_python  # noqa: E402  (the one owner of peer environments)
from random_transcoders import SEED, suite_id  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def reset_device_peak(device: str) -> None:
    """Start counting the accelerator's peak memory at the attribution call (weights already
    loaded stay counted: they are allocated)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def device_peak_mib(device: str) -> float:
    """Peak memory allocated by torch on the accelerator (0 on the CPU)."""
    if torch.device(device).type != "cuda":
        return 0.0
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def worker_gsnb(args) -> dict:
    import gsnb
    from gsnb.circuits.tracing import trace
    from gsnb.saes.releases import load_sae

    tokens = torch.tensor(json.loads(args.tokens))
    dtype = getattr(torch, args.dtype)
    start = time.perf_counter()
    model = gsnb.load_model(args.gsnb_model or None, device=args.device, dtype=dtype)
    if args.clt:
        transcoders = gsnb.CrossLayerTranscoder.load(
            Path(args.suite) / "gsnb", device=args.device, dtype=dtype
        )
    else:
        transcoders = [
            load_sae(args.suite, suite_id(layer, args.width), device=args.device, dtype=dtype)
            for layer in range(model.n_layers)
        ]
    load_s = time.perf_counter() - start
    reset_device_peak(args.device)
    start = time.perf_counter()
    graph = trace(
        model,
        transcoders,
        tokens,
        max_feature_nodes=args.max_feature_nodes,
        max_logits=10,
        logit_prob=0.95,
        batch_size=args.batch_size,
        progress=False,
    )
    attr_s = time.perf_counter() - start
    return dict(
        load_s=load_s,
        attr_s=attr_s,
        rss_mib=peak_rss_mib(),
        device_mib=device_peak_mib(args.device),
        n_layers=model.n_layers,
        d_model=model.d_model,
        features=graph.features.long(),
        adjacency=graph.adjacency.float(),
        logit_tokens=graph.logit_tokens.long(),
        n_active=graph.n_active_features,
        tokens=graph.prompt_tokens.long(),
    )


def worker_circuit_tracer(args) -> dict:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from circuit_tracer import ReplacementModel, attribute
    from circuit_tracer.transcoder.cross_layer_transcoder import load_clt
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

    tokens = torch.tensor(json.loads(args.tokens))
    n_layers = json.loads((Path(args.model_dir) / "config.json").read_text())["num_hidden_layers"]
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    start = time.perf_counter()
    paths = {
        layer: str(Path(args.suite) / suite_id(layer, args.width) / "params.safetensors")
        for layer in range(n_layers)
    }
    # circuit-tracer's names of gsnb's sites mlp_in.L and mlp_normalized.L
    input_hook = {"mlp_in": "mlp.hook_in", "mlp_normalized": "ln2.hook_normalized"}[args.reads]
    hooks = dict(feature_input_hook=input_hook, feature_output_hook="hook_mlp_out")
    if args.clt:
        transcoders = load_clt(
            str(Path(args.suite) / "circuit-tracer"),
            scan="gsnb-bench-random-clt",
            device=device,
            dtype=dtype,
            lazy_encoder=False,
            lazy_decoder=False,
            **hooks,
        )
    else:
        transcoders = load_transcoder_set(
            paths,
            scan="gsnb-bench-random",
            device=device,
            dtype=dtype,
            special_load_fn="gemma-scope-2",
            lazy_encoder=False,
            lazy_decoder=False,
            **hooks,
        )
    model = ReplacementModel.from_pretrained_and_transcoders(
        args.model_dir, transcoders, backend="nnsight", device=device, dtype=dtype
    )
    load_s = time.perf_counter() - start
    reset_device_peak(args.device)
    start = time.perf_counter()
    graph = attribute(
        tokens,
        model,
        max_n_logits=10,
        desired_logit_prob=0.95,
        batch_size=args.batch_size,
        max_feature_nodes=args.max_feature_nodes,
    )
    attr_s = time.perf_counter() - start
    return dict(
        load_s=load_s,
        attr_s=attr_s,
        rss_mib=peak_rss_mib(),
        device_mib=device_peak_mib(args.device),
        n_layers=n_layers,
        features=graph.active_features[graph.selected_features].long().cpu(),
        adjacency=graph.adjacency_matrix.float().cpu(),
        logit_tokens=graph.logit_token_ids.long().cpu(),
        n_active=len(graph.active_features),
        tokens=graph.input_tokens.long().cpu(),
    )


def run_worker(kind: str, args, out: Path, dtype: str = "float32") -> dict:
    """One attribution in a fresh process (``args``: suite, width, tokens, model_dir,
    gsnb_model, device, max_feature_nodes, batch_size, clt); its result dict."""
    python = sys.executable if kind == "gsnb" else peer_python("circuit-tracer")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [
        python,
        str(Path(__file__).resolve()),
        kind,
        "--out",
        str(out),
        "--suite",
        args.suite,
        "--width",
        str(args.width),
        "--tokens",
        args.tokens,
        "--model-dir",
        args.model_dir,
        "--max-feature-nodes",
        str(args.max_feature_nodes),
        "--batch-size",
        str(args.batch_size),
        "--device",
        args.device,
        "--dtype",
        dtype,
        "--gsnb-model",
        args.gsnb_model,
        "--reads",
        getattr(args, "reads", "mlp_in"),
        *(["--clt"] if args.clt else []),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise RuntimeError(f"{kind} worker failed with exit status {proc.returncode}")
    return torch.load(out, weights_only=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["gsnb", "circuit-tracer"])
    parser.add_argument("--out", required=True, help="where the result is saved (torch.save)")
    parser.add_argument("--suite", required=True, help="folder of the random transcoders")
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--tokens", required=True, help="the prompt's token ids, as JSON")
    parser.add_argument("--model-dir", required=True, help="the model's folder (circuit-tracer)")
    parser.add_argument("--gsnb-model", default="", help="gsnb.load_model's name ('' embedded)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--reads", default="mlp_in", help="mlp_in or mlp_normalized")
    parser.add_argument("--max-feature-nodes", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--clt", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(SEED)
    fn = worker_gsnb if args.kind == "gsnb" else worker_circuit_tracer
    torch.save(fn(args), args.out)


if __name__ == "__main__":
    main()
