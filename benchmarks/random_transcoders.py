"""Random JumpReLU transcoders calibrated on a model's real activations, for benchmarks that need
a realistic suite without downloading one (``bench_circuits.py``, ``bench_gpu.py``).

Per layer: unit-norm random encoder columns with per-feature thresholds set to the
``1 - TARGET_L0/width`` quantile of their pre-activations on the eight CALIBRATION sentences
(mean L0 per token on the prompt ~55 at width 4096, ~37 at 1024: the quantile is taken over
only ~150 rows, so wider suites land above TARGET_L0), random decoder rows scaled so
reconstructions have the norm of the real MLP outputs, ``b_dec`` the mean MLP output. A suite
reads ``mlp_in.L`` (default) or ``mlp_normalized.L`` (as Gemma Scope's Gemma 2 transcoders do)
and writes ``mlp_out.L``; saved in Gemma Scope 2 layout (``transcoder_all/layer_{L}_width_4k_l0_small/params.safetensors``). Or one
cross-layer transcoder calibrated the same way, saved for gsnb and in circuit-tracer's layout.
"""

from __future__ import annotations

from pathlib import Path

import torch

PROMPT = "Fact: the capital of the state containing the city of Dallas is"
# --large: its first 64 tokens (BOS included).
LONG_PROMPT = (
    "The river that runs through the old town was once the main road for trade. Boats carried "
    "wool, salt and timber down to the coast, and merchants built tall houses along its banks. "
    "When the railway arrived, the boats disappeared, but the houses remained. Today visitors "
    "walk along the quay, and the largest of the merchant houses is a museum. Its most famous "
    "painting shows the harbour at night, and the painter was born in the city of"
)
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


# --- transcoder suite -------------------------------------------------------------------------


def width_label(d_sae: int) -> str:
    return f"{d_sae // 1024}k" if d_sae % 1024 == 0 else str(d_sae)


def suite_id(layer: int, d_sae: int) -> str:
    return f"transcoder_all/layer_{layer}_width_{width_label(d_sae)}_l0_small"


def calibration(model, prompt_tokens: torch.Tensor, reads: str = "mlp_in") -> tuple[dict, dict]:
    """``reads``/``mlp_out`` rows of every layer on the calibration texts (BOS excluded), and
    the prompt's cache."""
    sites = [f"{k}.{layer}" for layer in range(model.n_layers) for k in (reads, "mlp_out")]
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
def build_suite(
    model, d_sae: int, folder: Path, prompt_tokens: torch.Tensor, reads: str = "mlp_in"
) -> list[float]:
    """Random transcoders calibrated on real activations, reading ``reads.L`` (``mlp_in`` or
    Gemma Scope's ``mlp_normalized``) and writing ``mlp_out.L``; returns each layer's mean L0 on
    the prompt (BOS excluded)."""
    from gsnb.saes.sae import JumpReLUSAE, SAEConfig

    xs, prompt_cache = calibration(model, prompt_tokens, reads)
    gen = torch.Generator().manual_seed(SEED)
    l0s = []
    for layer in range(model.n_layers):
        x = xs[f"{reads}.{layer}"]
        y = xs[f"mlp_out.{layer}"]
        d = x.shape[1]
        tc = JumpReLUSAE(
            SAEConfig(
                d_in=d,
                d_sae=d_sae,
                model_name=model.name,
                site_in=f"{reads}.{layer}",
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
        on_prompt = prompt_cache[f"{reads}.{layer}"][0, 1:].float().cpu()
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


def prompt_tokens(model, n_tokens: int | None) -> torch.Tensor:
    """``[pos]`` ids of PROMPT, or the first ``n_tokens`` of LONG_PROMPT (BOS included)."""
    if n_tokens is None:
        return model.to_tokens(PROMPT)[0].cpu()
    tokens = model.to_tokens(LONG_PROMPT)[0].cpu()
    if len(tokens) < n_tokens:
        raise ValueError(f"LONG_PROMPT has {len(tokens)} tokens, fewer than {n_tokens}")
    return tokens[:n_tokens]
