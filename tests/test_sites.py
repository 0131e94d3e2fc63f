"""Every site kind equals an independent computation of the decoder block, by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gsnb.core.sites import parse_site, site_names, target_name, transcoder_layer, transcoder_sites


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Gemma's RMSNorm: the gain is stored as (scale - 1)."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1.0 + weight)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def attention_by_hand(model, layer: int, resid_pre: torch.Tensor) -> torch.Tensor:
    """Heads' outputs before ``o_proj``: ``[batch, pos, n_heads * head_dim]``.

    Sequences in these tests are shorter than the sliding window, so every layer is causal.
    """
    block = model.text_model.layers[layer]
    attn, cfg = block.self_attn, model.config
    batch, pos, _ = resid_pre.shape
    n_heads, n_kv, head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    x = rms_norm(resid_pre, block.input_layernorm.weight, cfg.rms_norm_eps)
    q = (x @ attn.q_proj.weight.T).view(batch, pos, n_heads, head_dim).transpose(1, 2)
    k = (x @ attn.k_proj.weight.T).view(batch, pos, n_kv, head_dim).transpose(1, 2)
    v = (x @ attn.v_proj.weight.T).view(batch, pos, n_kv, head_dim).transpose(1, 2)
    if hasattr(attn, "q_norm"):
        q = rms_norm(q, attn.q_norm.weight, cfg.rms_norm_eps)
        k = rms_norm(k, attn.k_norm.weight, cfg.rms_norm_eps)
    # Rotary angles from the model's own frequencies for this layer's attention type.
    layer_type = getattr(cfg, "layer_types", ["full_attention"] * cfg.num_hidden_layers)[layer]
    rope = model.text_model.rotary_emb
    inv_freq = getattr(rope, f"{layer_type}_inv_freq", getattr(rope, "inv_freq", None))
    angles = torch.arange(pos, dtype=torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat((angles, angles), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    k = k.repeat_interleave(n_heads // n_kv, dim=1)
    v = v.repeat_interleave(n_heads // n_kv, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(cfg.query_pre_attn_scalar)
    cap = getattr(cfg, "attn_logit_softcapping", None)
    if cap:
        scores = torch.tanh(scores / cap) * cap
    causal = torch.ones(pos, pos, dtype=torch.bool).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    out = F.softmax(scores, dim=-1) @ v
    return out.transpose(1, 2).reshape(batch, pos, n_heads * head_dim)


def mlp_by_hand(block, x: torch.Tensor) -> torch.Tensor:
    mlp = block.mlp
    hidden = F.gelu(x @ mlp.gate_proj.weight.T, approximate="tanh") * (x @ mlp.up_proj.weight.T)
    return hidden @ mlp.down_proj.weight.T


def test_every_site_equals_a_by_hand_decoder_block(model):
    tokens = model.to_tokens(["the cat sat on the mat .", "a dog ran to the park"])
    tokens = tokens[:, :7]
    sites = model.sites(("embed", "resid_post", "attn_out", "mlp_normalized", "mlp_in", "mlp_out"))
    logits, cache = model.run_with_cache(tokens, sites)
    eps = model.config.rms_norm_eps

    embed = model.text_model.embed_tokens.weight[tokens] * math.sqrt(model.d_model)
    torch.testing.assert_close(cache["embed"], embed, rtol=1e-5, atol=1e-5)

    resid = cache["embed"]
    for layer in range(model.n_layers):
        block = model.text_model.layers[layer]
        attn_out = attention_by_hand(model, layer, resid)
        torch.testing.assert_close(cache[f"attn_out.{layer}"], attn_out, rtol=1e-4, atol=1e-5)
        attn_update = rms_norm(
            attn_out @ block.self_attn.o_proj.weight.T, block.post_attention_layernorm.weight, eps
        )
        resid_mid = resid + attn_update
        # mlp_normalized: the pre-MLP norm's input over its RMS, before the (1 + w) gain.
        normalized = resid_mid / (resid_mid.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        torch.testing.assert_close(
            cache[f"mlp_normalized.{layer}"], normalized, rtol=1e-4, atol=1e-5
        )
        mlp_in = rms_norm(resid_mid, block.pre_feedforward_layernorm.weight, eps)
        torch.testing.assert_close(cache[f"mlp_in.{layer}"], mlp_in, rtol=1e-4, atol=1e-5)
        mlp_out = rms_norm(mlp_by_hand(block, mlp_in), block.post_feedforward_layernorm.weight, eps)
        torch.testing.assert_close(cache[f"mlp_out.{layer}"], mlp_out, rtol=1e-4, atol=1e-5)
        resid = resid_mid + mlp_out
        torch.testing.assert_close(cache[f"resid_post.{layer}"], resid, rtol=1e-4, atol=1e-5)
        resid = cache[f"resid_post.{layer}"]


def test_resid_post_matches_transformers_hidden_states(model):
    tokens = model.to_tokens("the cat sat on the mat")
    logits, cache = model.run_with_cache(tokens, model.sites("resid_post"))
    out = model.hf(input_ids=tokens, output_hidden_states=True)
    assert torch.equal(logits, out.logits)
    for layer in range(model.n_layers - 1):
        assert torch.equal(cache[f"resid_post.{layer}"], out.hidden_states[layer + 1])
    # The last hidden state transformers returns has the final norm applied.
    last = model.text_model.norm(cache[f"resid_post.{model.n_layers - 1}"])
    assert torch.equal(last, out.hidden_states[-1])


def test_site_widths(model):
    assert model.site_width("attn_out.0") == model.n_heads * model.head_dim
    assert model.site_width("mlp_in.1") == model.d_model
    assert model.site_width("mlp_normalized.1") == model.d_model
    _, cache = model.run_with_cache("the cat", ["attn_out.1"])
    assert cache["attn_out.1"].shape[-1] == model.site_width("attn_out.1")


def test_site_names_are_in_forward_order():
    assert site_names(2, ("resid_post", "attn_out")) == [
        "attn_out.0",
        "resid_post.0",
        "attn_out.1",
        "resid_post.1",
    ]
    assert site_names(3, "mlp_out", layers=[2, 0]) == ["mlp_out.0", "mlp_out.2"]
    assert str(parse_site("mlp_in.4")) == "mlp_in.4"
    assert parse_site("mlp_out.3").hf_hook_point == (
        "model.layers.3.post_feedforward_layernorm.output"
    )
    assert parse_site("attn_out.2").hf_hook_point == "model.layers.2.self_attn.o_proj.input"
    # The pre-gain value is computed just before mlp_in, from the same norm.
    assert site_names(1, ("mlp_in", "mlp_out", "mlp_normalized")) == [
        "mlp_normalized.0",
        "mlp_in.0",
        "mlp_out.0",
    ]


def test_transcoder_sites_are_named_in_one_place():
    assert transcoder_sites(3) == ("mlp_in.3", "mlp_out.3")
    assert transcoder_sites(3, reads="mlp_normalized") == ("mlp_normalized.3", "mlp_out.3")
    assert transcoder_layer("mlp_normalized.3", "mlp_out.3") == 3
    assert transcoder_layer("mlp_in.2", "mlp_out.2") == 2
    assert transcoder_layer("mlp_in.2", "mlp_out.3") is None
    assert transcoder_layer("resid_post.2", "resid_post.2") is None
    assert target_name("mlp_in.2", "mlp_out.2") == "transcoder.2"
    assert target_name("mlp_normalized.2", "mlp_out.2") == "mlp_normalized.2->mlp_out.2"
    with pytest.raises(ValueError, match="reads one of mlp_in, mlp_normalized, not 'resid_post'"):
        transcoder_sites(1, reads="resid_post")


@pytest.mark.parametrize("site", ["resid_post.-1", "mlp_in.-3"])
def test_negative_layers_are_refused_even_without_a_model(site):
    kind = site.split(".")[0]
    with pytest.raises(ValueError, match=rf"'{site}' has a negative layer: layers count from 0;"):
        parse_site(site)
    with pytest.raises(ValueError, match=r"negative layer.*\(this model has layers 0\.\.5\)"):
        parse_site(site, n_layers=6)
    assert parse_site(f"{kind}.0").layer == 0


@pytest.mark.parametrize(
    ("site", "message"),
    [
        ("resid_pre.1", "kind one of resid_post, attn_out, mlp_in, mlp_out, mlp_normalized"),
        ("resid_post", "kind one of"),
        ("mlp_out.x", "kind one of"),
        ("mlp_out.3", r"layers 0\.\.2"),
        ("mlp_out.-1", r"layers 0\.\.2"),
    ],
)
def test_bad_sites_list_the_valid_ones(gemma3, site, message):
    with pytest.raises(ValueError, match=message):
        gemma3.run_with_cache("the cat", [site])
