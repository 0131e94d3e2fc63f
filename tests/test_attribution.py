"""Attributions match independent computations: finite differences, completeness, real patching."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest
import torch

from gsnb.analysis.attribution import (
    attribute,
    attribution_patching,
    direct_logit_attribution,
    logit_diff,
    logprob,
)
from gsnb.core.hooks import count_hooks
from gsnb.saes.sae import JumpReLUSAE, SAEConfig

TEXT = "the cat sat on the mat . a dog ran to the park"
CLEAN, CORRUPT = "the cat sat on the mat", "the dog sat on the mat"


def random_sae(model, site_in, site_out=None, d_sae=64, fire=0.2, seed=0):
    """A random JumpReLU SAE whose thresholds let about ``fire`` of the features fire on TEXT."""
    d_in, d_out = model.site_width(site_in), model.site_width(site_out or site_in)
    sae = JumpReLUSAE(SAEConfig(d_in, d_sae, d_out, model.name, site_in, site_out))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w_dec = torch.randn(d_sae, d_out, generator=gen)
        sae.W_dec.copy_(w_dec / w_dec.norm(dim=1, keepdim=True))
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=gen) / d_in**0.5)
        sae.b_dec.copy_(0.1 * torch.randn(d_out, generator=gen))
        _, cache = model.run_with_cache(TEXT, [site_in])
        pre = sae.pre_activations(cache[site_in].reshape(-1, d_in))
        sae.threshold.copy_(pre.quantile(1 - fire, dim=0).clamp(min=1e-3))
    return sae.requires_grad_(False)


@torch.no_grad()
def metric_with(model, tokens, metric, site=None, pos=None, delta=None):
    """The metric with ``delta`` added to ``site`` at ``pos`` (an independent patch)."""

    def add(x):
        x = x.clone()
        x[0, pos] += delta
        return x

    with model.hooks({site: add} if site else {}):
        return float(metric(model(tokens)))


def test_integrated_gradients_is_complete(model):
    saes = [
        random_sae(model, "resid_post.0"),
        random_sae(model, "mlp_in.1", "mlp_out.1", seed=1),
        random_sae(model, "attn_out.2", seed=2),
    ]
    metric = logit_diff("cat", "dog")
    result = attribute(model, saes, CLEAN, metric, method="ig", steps=32)
    change = result.metric - result.baseline_metric
    assert abs(change) > 1e-3
    assert abs(result.total() - change) <= 0.01 * abs(change)
    tokens = model.to_tokens(CLEAN)
    assert result.metric == pytest.approx(metric_with(model, tokens, metric.resolve(model)))
    # The baseline, by hand: every SAE site holds b_dec plus that SAE's clean error.
    _, cache = model.run_with_cache(
        tokens, sorted({s.site_in for s in saes} | {s.site_out for s in saes})
    )
    held = {
        s.site_out: s.b_dec + cache[s.site_out] - s.decode(s.encode(cache[s.site_in])) for s in saes
    }
    with torch.no_grad(), model.hooks({site: (lambda x, v=v: v) for site, v in held.items()}):
        baseline = float(metric.resolve(model)(model(tokens)))
    assert result.baseline_metric == pytest.approx(baseline, rel=1e-4, abs=1e-6)
    assert all(torch.equal(v, torch.zeros_like(v)) for v in result.errors.values())
    assert count_hooks(model.hf) == 0


def test_gradient_times_activation_matches_finite_differences(model):
    site = "mlp_out.1"
    sae = random_sae(model, site)
    metric = logprob("mat").resolve(model)
    tokens = model.to_tokens(CLEAN)
    result = attribute(model, sae, tokens, metric, method="grad")
    scores, acts = result.features[site], result.activations[site]
    # The four features with the largest attribution, plus error nodes at two positions.
    flat = scores.abs().reshape(-1).topk(4).indices.tolist()
    eps = 1e-2
    _, cache = model.run_with_cache(tokens, [site])
    error = cache[site][0] - sae.decode(sae.encode(cache[site][0]))
    checks = [(divmod(i, sae.d_sae), None) for i in flat] + [((p, None), "error") for p in (3, 6)]
    for (pos, feat), kind in checks:
        if kind is None:
            direction, expected = acts[pos, feat] * sae.W_dec[feat], scores[pos, feat]
        else:
            direction, expected = error[pos], result.errors[site][pos]
        # d metric / d t of metric(node * (1 + t)) at 0 is node * gradient.
        up = metric_with(model, tokens, metric, site, pos, eps * direction)
        down = metric_with(model, tokens, metric, site, pos, -eps * direction)
        fd = (up - down) / (2 * eps)
        assert fd == pytest.approx(float(expected), rel=2e-2, abs=2e-4)


def test_attribution_patching_ranks_features_like_real_patching(model):
    site = f"resid_post.{model.n_layers - 1}"  # last layer: metric ~ linear in the patch
    sae = random_sae(model, site)
    metric = logit_diff("cat", "dog").resolve(model)
    result = attribution_patching(model, sae, CLEAN, CORRUPT, metric)
    clean, corrupt = model.to_tokens(CLEAN), model.to_tokens(CORRUPT)
    _, c_clean = model.run_with_cache(clean, [site])
    _, c_corrupt = model.run_with_cache(corrupt, [site])
    f_clean, f_corrupt = sae.encode(c_clean[site][0]), sae.encode(c_corrupt[site][0])
    base = metric_with(model, clean, metric)
    assert result.metric == pytest.approx(base)
    assert result.baseline_metric == pytest.approx(metric_with(model, corrupt, metric))
    last = clean.shape[1] - 1
    # Only the last position reaches the metric from the last layer.
    assert torch.equal(result.features[site][:last], torch.zeros_like(result.features[site][:last]))
    real, est = [], []
    for feat in torch.nonzero(f_clean[last] != f_corrupt[last]).reshape(-1).tolist():
        delta = (f_corrupt[last, feat] - f_clean[last, feat]) * sae.W_dec[feat]
        real.append(metric_with(model, clean, metric, site, last, delta) - base)
        est.append(float(result.features[site][last, feat]))
    err_clean = c_clean[site][0, last] - sae.decode(f_clean[last])
    err_corrupt = c_corrupt[site][0, last] - sae.decode(f_corrupt[last])
    real.append(metric_with(model, clean, metric, site, last, err_corrupt - err_clean) - base)
    est.append(float(result.errors[site][last]))
    real, est = torch.tensor(real), torch.tensor(est)
    assert len(real) >= 5
    assert int(real.abs().argmax()) == int(est.abs().argmax())
    assert torch.corrcoef(torch.stack([real, est]))[0, 1] > 0.95
    rank_real = real.abs().argsort().argsort().float()
    rank_est = est.abs().argsort().argsort().float()
    assert torch.corrcoef(torch.stack([rank_real, rank_est]))[0, 1] > 0.85


@pytest.mark.parametrize("site", ["resid_post.2", "mlp_out.1", "attn_out.1"])
def test_direct_logit_attribution_is_the_unembedded_decoder_row(gemma3, site):
    sae = random_sae(gemma3, site)
    feats = [0, 7, 21]
    effects = direct_logit_attribution(gemma3, sae, feats).effects
    assert effects.shape == (3, gemma3.config.vocab_size)
    norm, unembed = gemma3.text_model.norm, gemma3.hf.lm_head

    def rms(v):
        return v.pow(2).mean(-1, keepdim=True).add(norm.eps).sqrt()

    with torch.no_grad():
        rows = sae.W_dec[feats]
        if site.startswith("attn_out"):
            block = gemma3.text_model.layers[1]
            o = block.self_attn.o_proj(rows)
            rows = block.post_attention_layernorm(o) * rms(o)
        # Undo the RMS division the final norm does, which DLA deliberately omits.
        expected = unembed(norm(rows) * rms(rows))
    torch.testing.assert_close(effects, expected, rtol=1e-4, atol=1e-5)
    table = direct_logit_attribution(gemma3, sae, feats).top(3)
    assert len(table) == 9 and table[0].promoted == gemma3.tokenizer.decode(
        [int(effects[0].argmax())]
    )


def test_token_metrics_resolve_strings_and_ids(gemma3):
    logits = gemma3(CLEAN)
    cat, dog = (gemma3.tokenizer.convert_tokens_to_ids(t) for t in ("cat", "dog"))
    by_name = logit_diff("cat", "dog").resolve(gemma3)
    assert by_name(logits) == logits[0, -1, cat] - logits[0, -1, dog]
    assert logit_diff(cat, dog)(logits) == by_name(logits)
    expected = torch.log_softmax(logits[0, 2], -1)[cat]
    torch.testing.assert_close(logprob("cat", pos=2).resolve(gemma3)(logits), expected)
    with pytest.raises(ValueError, match="2 tokens"):
        logit_diff("cat dog", "mat").resolve(gemma3)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        logprob(10_000).resolve(gemma3)
    with pytest.raises(ValueError, match="resolve"):
        logit_diff("cat", "dog")(logits)


def test_results_show_top_nodes_and_a_figure(gemma3):
    sae = random_sae(gemma3, "resid_post.1")
    result = attribute(gemma3, sae, CLEAN, lambda logits: logits[0, -1, 5])
    table = result.top(6)
    values = [abs(r.attribution) for r in table]
    assert len(table) == 6 and values == sorted(values, reverse=True)
    row = table[0]
    if row.feature is not None:
        assert row.attribution == pytest.approx(
            float(result.features["resid_post.1"][row.position, row.feature])
        )
    assert "<table" in table._repr_html_() and "attribution" in repr(table)
    fig = result.figure(k=5)
    assert isinstance(fig, go.Figure) and len(fig.data[0].x) == 5
    assert isinstance(direct_logit_attribution(gemma3, sae, [1, 2]).figure(k=3), go.Figure)


def test_bad_input_gives_clear_errors_and_leaves_no_hooks(gemma3):
    sae = random_sae(gemma3, "resid_post.1")
    metric = logit_diff("cat", "dog")

    def unhooked():
        assert count_hooks(gemma3.hf) == 0

    with pytest.raises(ValueError, match="empty"):
        attribute(gemma3, sae, "", metric)
    with pytest.raises(ValueError, match="feature 64 does not exist"):
        direct_logit_attribution(gemma3, sae, [3, 64])
    other = JumpReLUSAE(SAEConfig(d_in=48, d_sae=16, site_in="resid_post.1"))
    with pytest.raises(ValueError, match="expects width 48"):
        attribute(gemma3, [sae, other], CLEAN, metric)
    with pytest.raises(ValueError, match="both write resid_post.1"):
        attribute(gemma3, [sae, random_sae(gemma3, "resid_post.1", seed=5)], CLEAN, metric)
    with pytest.raises(ValueError, match="equal token length"):
        attribution_patching(gemma3, sae, CLEAN, "the dog sat", metric)
    with pytest.raises(ValueError, match="method"):
        attribute(gemma3, sae, CLEAN, metric, method="shap")
    with pytest.raises(ValueError, match="scalar"):
        attribute(gemma3, sae, CLEAN, lambda logits: logits[0, -1])
    unhooked()
    with pytest.raises(RuntimeError, match="metric broke"):

        def broken(logits):
            raise RuntimeError("metric broke")

        attribute(gemma3, sae, CLEAN, broken, method="ig", steps=2)
    unhooked()
    assert all(p.grad is None for p in gemma3.hf.parameters())
