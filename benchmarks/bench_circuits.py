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
  attribution call alone and its own peak RSS (``ru_maxrss``).

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

Defaults: width 4096, 500 feature nodes, 2 runs of each (about 9 minutes on 2 busy cores);
``--small``: width 1024, 200 feature nodes, 1 run of each (about 3 minutes).

Usage: ``python benchmarks/bench_circuits.py [--small] [--clt]``. Prints a markdown table and ends with
``trace_speedup_vs_circuit_tracer=<median circuit-tracer attribution time / median gsnb
attribution time> edge_corr=<Pearson r over shared edges>``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from peers import peer_python  # noqa: E402  (the one owner of peer environments)

PROMPT = "Fact: the capital of the state containing the city of Dallas is"
CALIBRATION = [
    "The old lighthouse keeper climbed the stairs every evening, and on that night he saw a ship.",
    "In 1969, astronauts landed on the Moon and walked on its dusty grey surface for hours.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "Photosynthesis converts light energy into chemical energy stored in glucose molecules.",
    "She bought three apples, two pears and a loaf of bread at the market on Saturday morning.",
    "The committee will meet again next week to discuss the budget and the new building plans.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "Water boils at one hundred degrees Celsius at sea level under normal atmospheric pressure.",
]
TARGET_L0 = 35
SEED = 0


# --- transcoder suite -----------------------------------------------------------------------------


def width_label(d_sae: int) -> str:
    return f"{d_sae // 1024}k" if d_sae % 1024 == 0 else str(d_sae)


def suite_id(layer: int, d_sae: int) -> str:
    return f"transcoder_all/layer_{layer}_width_{width_label(d_sae)}_l0_small"


def calibration(model, prompt_tokens: torch.Tensor) -> tuple[dict, dict]:
    """``mlp_in``/``mlp_out`` rows of every layer on the calibration texts (BOS excluded), and
    the prompt's cache."""
    sites = [f"{k}.{layer}" for layer in range(model.n_layers) for k in ("mlp_in", "mlp_out")]
    xs = {s: [] for s in sites}
    for text in CALIBRATION:
        _, cache = model.run_with_cache(text, sites, stop_early=True)
        for s in sites:
            xs[s].append(cache[s][0, 1:].float().cpu())
    _, prompt_cache = model.run_with_cache(prompt_tokens[None], sites, stop_early=True)
    return {s: torch.cat(v) for s, v in xs.items()}, prompt_cache


def random_encoder(x: torch.Tensor, d_sae: int, gen) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm random encoder columns ``[d, d_sae]`` and thresholds at the quantile of their
    pre-activations on ``x`` that leaves about TARGET_L0 active."""
    w_enc = torch.randn(x.shape[1], d_sae, generator=gen)
    w_enc /= w_enc.norm(dim=0, keepdim=True)
    threshold = (x @ w_enc).quantile(1 - TARGET_L0 / d_sae, dim=0).clamp_min(1e-3)
    return w_enc, threshold


@torch.no_grad()
def build_suite(model, d_sae: int, folder: Path, prompt_tokens: torch.Tensor) -> list[float]:
    """Random transcoders calibrated on real activations; returns each layer's mean L0 on the
    prompt (BOS excluded)."""
    from gsnb.saes.sae import JumpReLUSAE, SAEConfig

    xs, prompt_cache = calibration(model, prompt_tokens)
    gen = torch.Generator().manual_seed(SEED)
    l0s = []
    for layer in range(model.n_layers):
        x = xs[f"mlp_in.{layer}"]
        y = xs[f"mlp_out.{layer}"]
        d = x.shape[1]
        tc = JumpReLUSAE(
            SAEConfig(
                d_in=d,
                d_sae=d_sae,
                model_name=model.name,
                site_in=f"mlp_in.{layer}",
                site_out=f"mlp_out.{layer}",
                l0_target=TARGET_L0,
            )
        )
        w_enc, threshold = random_encoder(x, d_sae, gen)
        pre = x @ w_enc
        w_dec = torch.randn(d_sae, d, generator=gen)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        acts = pre * (pre > threshold)
        recon_norm = (acts @ w_dec).norm(dim=1).median()
        target_norm = (y - y.mean(0)).norm(dim=1).median()
        tc.W_enc.copy_(w_enc)
        tc.threshold.copy_(threshold)
        tc.W_dec.copy_(w_dec * (target_norm / recon_norm.clamp_min(1e-6)))
        tc.b_dec.copy_(y.mean(0))
        tc.save(folder / suite_id(layer, d_sae))
        on_prompt = prompt_cache[f"mlp_in.{layer}"][0, 1:].float().cpu()
        l0s.append(float((tc.encode(on_prompt) > 0).sum(-1).float().mean()))
    return l0s


@torch.no_grad()
def build_clt(model, d_sae: int, folder: Path, prompt_tokens: torch.Tensor) -> list[float]:
    """A random cross-layer transcoder calibrated like :func:`build_suite` (each target layer's
    decoder slices scaled together), saved for both tools; returns each source layer's mean L0
    on the prompt (BOS excluded)."""
    from safetensors.torch import save_file

    from gsnb.saes.clt import CLTConfig, CrossLayerTranscoder

    xs, prompt_cache = calibration(model, prompt_tokens)
    gen = torch.Generator().manual_seed(SEED)
    n, d = model.n_layers, model.d_model
    clt = CrossLayerTranscoder(CLTConfig(n_layers=n, d_in=d, d_sae=d_sae, model_name=model.name))
    acts = []
    for s in range(n):
        w_enc, threshold = random_encoder(xs[f"mlp_in.{s}"], d_sae, gen)
        clt.W_enc[s].copy_(w_enc)
        clt.threshold[s].copy_(threshold)
        pre = xs[f"mlp_in.{s}"] @ w_enc
        acts.append(pre * (pre > threshold))
        w_dec = torch.randn(d_sae, n - s, d, generator=gen)
        clt.W_dec[s].copy_(w_dec / w_dec.norm(dim=-1, keepdim=True))
    for t in range(n):
        y = xs[f"mlp_out.{t}"]
        recon = sum(acts[s] @ clt.W_dec[s][:, t - s] for s in range(t + 1))
        scale = (y - y.mean(0)).norm(dim=1).median() / recon.norm(dim=1).median().clamp_min(1e-6)
        for s in range(t + 1):
            clt.W_dec[s][:, t - s] *= scale
        clt.b_dec[t].copy_(y.mean(0))
    clt.save(folder / "gsnb")
    ct = folder / "circuit-tracer"
    ct.mkdir(parents=True)
    for s in range(n):
        encoder = {
            f"W_enc_{s}": clt.W_enc[s].T.contiguous(),
            f"b_enc_{s}": clt.b_enc[s].clone(),
            f"b_dec_{s}": clt.b_dec[s].clone(),
            f"threshold_{s}": clt.threshold[s].clone(),
        }
        save_file(encoder, str(ct / f"W_enc_{s}.safetensors"))
        save_file({f"W_dec_{s}": clt.W_dec[s].contiguous()}, str(ct / f"W_dec_{s}.safetensors"))
    return [
        float(
            (clt.encode(s, prompt_cache[f"mlp_in.{s}"][0, 1:].float().cpu()) > 0)
            .float()
            .sum(-1)
            .mean()
        )
        for s in range(n)
    ]


# --- workers (each runs in its own process) --------------------------------------------------------


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker_gsnb(args) -> dict:
    import gsnb
    from gsnb.circuits.tracing import trace
    from gsnb.saes.releases import load_sae

    tokens = torch.tensor(json.loads(args.tokens))
    start = time.perf_counter()
    model = gsnb.load_model(device="cpu")
    if args.clt:
        transcoders = gsnb.CrossLayerTranscoder.load(Path(args.suite) / "gsnb")
    else:
        transcoders = [
            load_sae(args.suite, suite_id(layer, args.width), device="cpu")
            for layer in range(model.n_layers)
        ]
    load_s = time.perf_counter() - start
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
    device = torch.device("cpu")
    start = time.perf_counter()
    paths = {
        layer: str(Path(args.suite) / suite_id(layer, args.width) / "params.safetensors")
        for layer in range(n_layers)
    }
    hooks = dict(feature_input_hook="mlp.hook_in", feature_output_hook="hook_mlp_out")
    if args.clt:
        transcoders = load_clt(
            str(Path(args.suite) / "circuit-tracer"),
            scan="gsnb-bench-random-clt",
            device=device,
            dtype=torch.float32,
            lazy_encoder=False,
            lazy_decoder=False,
            **hooks,
        )
    else:
        transcoders = load_transcoder_set(
            paths,
            scan="gsnb-bench-random",
            device=device,
            dtype=torch.float32,
            special_load_fn="gemma-scope-2",
            lazy_encoder=False,
            lazy_decoder=False,
            **hooks,
        )
    model = ReplacementModel.from_pretrained_and_transcoders(
        args.model_dir, transcoders, backend="nnsight", device=device, dtype=torch.float32
    )
    load_s = time.perf_counter() - start
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
        n_layers=n_layers,
        features=graph.active_features[graph.selected_features].long().cpu(),
        adjacency=graph.adjacency_matrix.float().cpu(),
        logit_tokens=graph.logit_token_ids.long().cpu(),
        n_active=len(graph.active_features),
        tokens=graph.input_tokens.long().cpu(),
    )


def run_worker(kind: str, args, out: Path) -> dict:
    python = sys.executable if kind == "gsnb" else peer_python("circuit-tracer")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [
        python,
        str(Path(__file__).resolve()),
        "--worker",
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
        *(["--clt"] if args.clt else []),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise RuntimeError(f"{kind} worker failed with exit status {proc.returncode}")
    return torch.load(out, weights_only=True)


# --- comparison ----------------------------------------------------------------------------------


def node_keys(result: dict) -> list[tuple]:
    """Identity of every node in adjacency order: features, errors (layer-major), tokens, logits."""
    n_pos, n_layers = len(result["tokens"]), result["n_layers"]
    keys = [("feature", *map(int, row)) for row in result["features"].tolist()]
    keys += [("error", layer, pos) for layer in range(n_layers) for pos in range(n_pos)]
    keys += [("token", pos) for pos in range(n_pos)]
    keys += [("logit", int(t)) for t in result["logit_tokens"].tolist()]
    assert len(keys) == result["adjacency"].shape[0] == result["adjacency"].shape[1]
    return keys


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    if len(a) < 2:
        return float("nan")
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a @ b) / (a.norm() * b.norm()).clamp_min(1e-300))


def slope(a: torch.Tensor, b: torch.Tensor) -> float:
    """Least-squares ratio b ~ k a through the origin (how much larger b's edges are)."""
    a, b = a.double(), b.double()
    return float((a @ b) / (a @ a).clamp_min(1e-300))


def shared_edges(
    g: dict, c: dict, bos: bool = False
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Edges among nodes present in both graphs (targets with computed rows in both), at least one
    side nonzero, grouped by (source kind, target kind): ``(gsnb weights, circuit-tracer weights)``.
    Sources at the BOS position are left out (``bos=True``: only those)."""
    gk, ck = node_keys(g), node_keys(c)
    c_index = {k: i for i, k in enumerate(ck)}
    pairs = [(i, c_index[k]) for i, k in enumerate(gk) if k in c_index]
    gi = torch.tensor([p[0] for p in pairs])
    ci = torch.tensor([p[1] for p in pairs])
    kinds = [gk[i][0] for i in gi.tolist()]
    # BOS test: features are ("feature", layer, pos, index), errors ("error", layer, pos),
    # tokens ("token", pos); logits have no position.
    pos = [
        gk[i][2] if gk[i][0] in ("feature", "error") else gk[i][1] if gk[i][0] == "token" else -1
        for i in gi.tolist()
    ]
    pos = torch.tensor(pos)
    kind_t = torch.tensor([["feature", "error", "token", "logit"].index(k) for k in kinds])
    is_target = (kind_t == 0) | (kind_t == 3)
    is_source = (kind_t <= 2) & ((pos == 0) if bos else (pos != 0))
    t_idx, s_idx = is_target.nonzero().flatten(), is_source.nonzero().flatten()
    ga = g["adjacency"][gi[t_idx]][:, gi[s_idx]]
    ca = c["adjacency"][ci[t_idx]][:, ci[s_idx]]
    names = ["feature", "error", "token", "logit"]
    out = {}
    for tk in (0, 3):
        for sk in (0, 1, 2):
            rows = (kind_t[t_idx] == tk).nonzero().flatten()
            cols = (kind_t[s_idx] == sk).nonzero().flatten()
            a = ga[rows][:, cols].flatten()
            b = ca[rows][:, cols].flatten()
            keep = (a != 0) | (b != 0)
            out[f"{names[sk]} -> {names[tk]}"] = (a[keep], b[keep])
    return out


# --- main ------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="narrower transcoders, fewer runs")
    parser.add_argument("--worker", choices=["gsnb", "circuit-tracer"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--suite", help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tokens", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument(
        "--max-feature-nodes",
        type=int,
        default=None,
        help="feature nodes whose rows are computed (default 500; 200 small)",
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

    if args.worker:
        torch.manual_seed(SEED)
        fn = worker_gsnb if args.worker == "gsnb" else worker_circuit_tracer
        torch.save(fn(args), args.out)
        return

    import gsnb

    os.environ["HF_HUB_OFFLINE"] = "1"
    d_sae = (512 if args.small else 1024) if args.clt else (1024 if args.small else 4096)
    reps = args.reps or (1 if args.small else 2)
    args.max_feature_nodes = args.max_feature_nodes or (200 if args.small else 500)
    setup_start = time.perf_counter()
    peer_python("circuit-tracer")  # created before any timing
    model = gsnb.load_model(device="cpu")
    tokens = model.to_tokens(PROMPT)[0].cpu()
    tmp = Path(tempfile.mkdtemp(prefix="gsnb-bench-circuits-"))
    try:
        suite = tmp / "suite"
        l0s = (build_clt if args.clt else build_suite)(model, d_sae, suite, tokens)
        del model
        print(
            f"setup (peer check, model, {d_sae}-wide transcoders): "
            f"{time.perf_counter() - setup_start:.0f} s",
            flush=True,
        )
        args.suite, args.width, args.tokens = str(suite), d_sae, json.dumps(tokens.tolist())
        args.model_dir = str(gsnb.core.model.prepare_embedded_model())
        results: dict[str, list[dict]] = {"gsnb": [], "circuit-tracer": []}
        for r in range(reps):
            order = ["gsnb", "circuit-tracer"] if r % 2 == 0 else ["circuit-tracer", "gsnb"]
            for kind in order:
                res = run_worker(kind, args, tmp / f"{kind}-{r}.pt")
                results[kind].append(res)
                print(
                    f"  run {r} {kind}: load {res['load_s']:.1f} s, attribution "
                    f"{res['attr_s']:.1f} s, peak RSS {res['rss_mib']:.0f} MiB",
                    flush=True,
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    g, c = results["gsnb"][-1], results["circuit-tracer"][-1]
    med = {
        k: {f: statistics.median(r[f] for r in v) for f in ("load_s", "attr_s", "rss_mib")}
        for k, v in results.items()
    }
    edges = shared_edges(g, c)
    a_all = torch.cat([a for a, _ in edges.values()])
    b_all = torch.cat([b for _, b in edges.values()])
    edge_corr = pearson(a_all, b_all)
    speedup = med["circuit-tracer"]["attr_s"] / med["gsnb"]["attr_s"]

    n_pos = len(tokens)
    print(
        f"\nAttribution graph of {n_pos} tokens (BOS included) {PROMPT!r} on gsnb's embedded "
        f"Gemma 3 270M (CPU, float32, {torch.get_num_threads()} threads, load average "
        f"{os.getloadavg()[0]:.1f} at the end); "
        + ("a random cross-layer transcoder" if args.clt else "18 random JumpReLU transcoders")
        + f" of width {d_sae} "
        f"(L0 per token on the prompt {min(l0s):.0f}..{max(l0s):.0f}, mean "
        f"{statistics.mean(l0s):.0f}); max_feature_nodes={args.max_feature_nodes}, at most 10 "
        f"logits covering 95%, batch size {args.batch_size}; {reps} run(s) each in fresh "
        "processes, alternating, medians\n"
    )
    print(
        "| tool | attribution (s) | load model+transcoders (s) | peak RSS (MiB) "
        "| active features | feature nodes | logit nodes | edges (nonzero) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, res in (("gsnb.trace", g), ("circuit-tracer 0.5.0 attribute (nnsight)", c)):
        m = med["gsnb" if name.startswith("gsnb") else "circuit-tracer"]
        print(
            f"| {name} | {m['attr_s']:.1f} | {m['load_s']:.1f} | {m['rss_mib']:.0f} | "
            f"{res['n_active']} | {len(res['features'])} | {len(res['logit_tokens'])} | "
            f"{int((res['adjacency'] != 0).sum())} |"
        )

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
    print(f"trace_speedup_vs_circuit_tracer={speedup:.2f} edge_corr={edge_corr:.4f}")


if __name__ == "__main__":
    main()
