"""feature_stats against a brute-force computation over all tokens of a small corpus."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import tiny_model

from gsnb.analysis.attribution import direct_logit_attribution
from gsnb.analysis.features import FeatureStats, LogitEffects, feature_stats, sample_keys
from gsnb.core.data import special_token_mask
from gsnb.saes.evals import evaluate
from gsnb.saes.sae import JumpReLUSAE, SAEConfig

N_WINDOWS, SEQ, BATCH, K, R, BINS = 23, 12, 5, 4, 6, 40


def corpus(model, seed: int = 0) -> torch.Tensor:
    """Random text windows, BOS first, with an EOS inside some of them (left out like BOS)."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, len(model.tokenizer), (N_WINDOWS, SEQ), generator=gen)
    tokens[:, 0] = model.tokenizer.bos_token_id
    tokens[::4, SEQ // 2] = model.tokenizer.eos_token_id
    return tokens


def random_sae(model, tokens, site_in="resid_post.1", site_out=None, d_sae=48, seed=1):
    """A random JumpReLU SAE whose features fire on 5-30% of tokens, one dead, one rare."""
    cfg = SAEConfig(
        d_in=model.site_width(site_in),
        d_sae=d_sae,
        d_out=model.site_width(site_out or site_in),
        site_in=site_in,
        site_out=site_out,
        model_name=model.name,
    )
    sae = JumpReLUSAE(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(sae.W_enc.shape, generator=gen))
        sae.W_dec.copy_(torch.randn(sae.W_dec.shape, generator=gen))
        _, cache = model.run_with_cache(tokens, [site_in])
        pre = sae.pre_activations(cache[site_in]).flatten(0, 1)  # [tokens, d_sae]
        q = torch.linspace(0.7, 0.95, d_sae)
        thr = torch.stack([pre[:, i].quantile(q[i]) for i in range(d_sae)]).clamp_min(1e-3)
        thr[0] = 1e9  # never fires
        thr[1] = pre[:, 1].sort().values[-3] - 1e-6  # fires on 3 tokens: fewer than K windows
        sae.threshold.copy_(thr)
    return sae


def dense_acts(model, sae, tokens) -> torch.Tensor:
    """``[n, seq, d_sae]`` activations of every token, 0 at control tokens."""
    with torch.no_grad():
        parts = []
        for b0 in range(0, len(tokens), BATCH):  # same batches, so the same float rounding
            _, cache = model.run_with_cache(tokens[b0 : b0 + BATCH], [sae.site_in])
            parts.append(sae.encode(cache[sae.site_in]))
    acts = torch.cat(parts)
    return acts * ~special_token_mask(tokens, model)[..., None]


def through_norm(norm, d: torch.Tensor) -> torch.Tensor:
    """The norm's gain on the directions ``d [n, width]``: the module itself applied to unit-rms
    copies, scaled back (so this does not assume Gemma's ``1 + weight`` convention)."""
    rms = d.pow(2).mean(-1, keepdim=True).sqrt()
    return norm(d / rms) * rms


def unembed(model, d: torch.Tensor) -> torch.Tensor:
    """Logits ``[n, vocab]`` that residual directions ``d`` add, through the final norm's gain."""
    with torch.no_grad():
        return model.hf.lm_head(through_norm(model.text_model.norm, d))


def run(model, sae, tokens, **kw):
    kw = {"k": K, "n_quantile_samples": R, "n_bins": BINS, "batch_size": BATCH, **kw}
    return feature_stats(model, sae, tokens, progress=False, **kw)


@pytest.fixture(scope="module")
def setup():
    model = tiny_model("gemma3")
    tokens = corpus(model)
    sae = random_sae(model, tokens)
    return model, tokens, sae, run(model, sae, tokens), dense_acts(model, sae, tokens)


def test_density_mean_max_match_dense(setup):
    model, tokens, sae, stats, acts = setup
    valid = ~special_token_mask(tokens, model)
    fires = acts > 0
    assert stats.n_tokens == int(valid.sum()) == N_WINDOWS * (SEQ - 1) - len(tokens[::4])
    density = fires.sum((0, 1)) / valid.sum()
    assert 0.05 < density[2:].mean() < 0.35
    assert density[0] == 0 and round(float(density[1]) * stats.n_tokens) == 3
    torch.testing.assert_close(stats.density, density.float())
    torch.testing.assert_close(stats.max_activation, acts.amax((0, 1)))
    mean = acts.sum((0, 1)) / fires.sum((0, 1)).clamp_min(1)
    torch.testing.assert_close(stats.mean_activation, mean)


def test_top_examples_are_the_windows_with_the_highest_peaks(setup):
    model, tokens, sae, stats, acts = setup
    for f in range(sae.d_sae):
        peak, where = acts[:, :, f].max(1)
        order = [w for w in peak.argsort(descending=True).tolist() if peak[w] > 0][:K]
        got = stats.top_examples(f)
        assert [e.window for e in got] == order
        assert [e.position for e in got] == where[order].tolist()
        for e in got:
            assert e.tokens == tokens[e.window].tolist()
            assert e.str_tokens == model.to_str_tokens(tokens[e.window])
            torch.testing.assert_close(torch.tensor(e.activations), acts[e.window, :, f])
            assert e.activation == pytest.approx(float(peak[e.window]))
    assert stats.top_examples(0) == [] and len(stats.top_examples(1)) <= 3


def test_quantile_samples_are_the_firing_tokens_with_the_largest_keys(setup):
    model, tokens, sae, stats, acts = setup
    for f in range(sae.d_sae):
        w, s = (acts[:, :, f] > 0).nonzero().unbind(1)
        keys = sample_keys(w * SEQ + s, torch.full_like(w, f), sae.d_sae, seed=0)
        best = keys.argsort(descending=True)[:R]
        want = sorted(
            zip(acts[w[best], s[best], f].tolist(), w[best].tolist(), s[best].tolist(), strict=True)
        )
        groups = stats.quantile_examples(f, n_groups=3)
        got = [(e.activation, e.window, e.position) for g in groups for e in g]
        assert got == want  # ascending by activation, cut into equal groups
        if len(want) == R:
            assert [len(g) for g in groups] == [R // 3] * 3
        for e in (e for g in groups for e in g):
            torch.testing.assert_close(torch.tensor(e.activations), acts[e.window, :, f])


def test_sample_keys_do_not_depend_on_batch_and_spread_evenly():
    token = torch.arange(100_000)
    keys = sample_keys(token, token % 7, 7, seed=3)
    assert torch.equal(keys[5:9], sample_keys(token[5:9], token[5:9] % 7, 7, seed=3))
    assert not torch.equal(keys, sample_keys(token, token % 7, 7, seed=4))
    top_half = (keys.argsort(descending=True)[:50_000] < 50_000).float().mean()
    assert abs(float(top_half) - 0.5) < 0.01


def test_histogram_counts_every_nonzero_activation_in_fixed_log_bins(setup):
    model, tokens, sae, stats, acts = setup
    first = acts[:BATCH][acts[:BATCH] > 0]
    mid = np.log10(float(first.median()))
    edges = stats.hist_edges.numpy()
    np.testing.assert_allclose(edges, np.logspace(mid - 3, mid + 3, BINS + 1), rtol=1e-5)
    for f in range(sae.d_sae):
        values = acts[:, :, f][acts[:, :, f] > 0].numpy()
        counts = np.bincount(np.searchsorted(edges[1:-1], values, side="right"), minlength=BINS)
        np.testing.assert_array_equal(stats.hist_counts[f].numpy(), counts)
        e, c = stats.histogram(f)
        assert int(c.sum()) == len(values) and len(e) == len(c) + bool(len(values))
        if len(values):
            assert c[0] > 0 and c[-1] > 0 and e[0] <= values.min() and values.max() < e[-1]


def test_logit_effects_equal_the_dense_product(setup):
    model, _, sae, stats, _ = setup
    dense = unembed(model, sae.W_dec)  # [d_sae, vocab]
    for f in (0, 5, 47):
        fx = stats.logit_effects(f, k=5)
        top, bottom = dense[f].topk(5), dense[f].topk(5, largest=False)
        assert fx.top_ids == top.indices.tolist() and fx.bottom_ids == bottom.indices.tolist()
        torch.testing.assert_close(torch.tensor(fx.top_values), top.values.detach())
        torch.testing.assert_close(torch.tensor(fx.bottom_values), bottom.values.detach())
        assert fx.top_tokens == [model.tokenizer.decode([i]) for i in fx.top_ids]


def test_direct_logit_attribution_gives_the_logit_effects_feature_stats_stored(setup):
    """One computation and one type: both name a feature's promoted and suppressed tokens with
    the same LogitEffects, equal to the dense product's top and bottom tokens."""
    model, _, sae, stats, _ = setup
    dla = direct_logit_attribution(model, sae, [3, 7])
    dense = unembed(model, sae.W_dec)
    for f in (3, 7):
        direct, stored = dla.logit_effects(f, 5), stats.logit_effects(f, 5)
        assert type(direct) is type(stored) is LogitEffects
        assert direct.top_ids == stored.top_ids == dense[f].topk(5).indices.tolist()
        assert direct.bottom_tokens == stored.bottom_tokens
        torch.testing.assert_close(torch.tensor(direct.top_values), torch.tensor(stored.top_values))


def test_attn_out_logit_effects_go_through_o_proj_and_its_norm_gain(gemma3):
    tokens = corpus(gemma3)
    sae = random_sae(gemma3, tokens, site_in="attn_out.1", d_sae=8)
    stats = run(gemma3, sae, tokens, n_logit_tokens=3)
    layer = gemma3.text_model.layers[1]
    resid = through_norm(layer.post_attention_layernorm, layer.self_attn.o_proj(sae.W_dec))
    dense = unembed(gemma3, resid)
    assert stats.logit_effects(3).top_ids == dense[3].topk(3).indices.tolist()


def test_several_saes_in_one_pass_equal_separate_passes(setup, monkeypatch):
    model, tokens, sae, stats, _ = setup
    transcoder = random_sae(model, tokens, "mlp_in.2", "mlp_out.2", d_sae=16, seed=2)
    calls, forward = [], model.run_with_cache

    def counted(*args, **kw):
        calls.append(kw)
        return forward(*args, **kw)

    monkeypatch.setattr(model, "run_with_cache", counted)
    both = run(model, [sae, transcoder], tokens)
    assert len(calls) == -(-N_WINDOWS // BATCH) and all(kw["stop_early"] for kw in calls)
    monkeypatch.undo()
    assert set(both) == {"resid_post.1", "transcoder.2"}
    assert_same(both["resid_post.1"], stats)
    assert_same(both["transcoder.2"], run(model, transcoder, tokens))
    # A transcoder writes mlp_out, which is added to the residual: same formula as an SAE.
    dense = unembed(model, transcoder.W_dec)
    assert both["transcoder.2"].logit_effects(7, 4).top_ids == dense[7].topk(4).indices.tolist()


def test_stats_of_transcoders_are_keyed_by_the_names_evaluate_gives_them(setup):
    """One transcoder, one name: feature_stats, FeatureStats.name and evaluate agree."""
    model, tokens, sae, _, _ = setup
    transcoders = [
        random_sae(model, tokens, f"mlp_in.{layer}", f"mlp_out.{layer}", d_sae=8, seed=layer)
        for layer in (0, 1)
    ]
    stats = run(model, [*transcoders, sae], tokens, n_logit_tokens=0)
    evals = evaluate(model, [*transcoders, sae], tokens[:4])
    assert list(stats) == list(evals) == ["transcoder.0", "transcoder.1", "resid_post.1"]
    assert [s.name for s in stats.values()] == list(stats)
    assert run(model, dict(mine=transcoders[0]), tokens[:4]).keys() == {"mine"}


def assert_same(a: FeatureStats, b: FeatureStats) -> None:
    for name, value in vars(a).items():
        other = getattr(b, name)
        if isinstance(value, torch.Tensor):
            assert value.dtype == other.dtype and torch.equal(value, other), name
        else:
            assert value == other, name


def test_resumed_pass_equals_uninterrupted_pass(setup, tmp_path, monkeypatch):
    model, tokens, sae, stats, _ = setup
    forward, calls = model.run_with_cache, []

    def dies_on_fourth_batch(*args, **kw):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return forward(*args, **kw)

    monkeypatch.setattr(model, "run_with_cache", dies_on_fourth_batch)
    with pytest.raises(KeyboardInterrupt):  # after the checkpoint at batch 2, before batch 4's
        run(model, sae, tokens, out_dir=tmp_path, checkpoint_every=2)
    assert [p.name for p in tmp_path.iterdir()] == ["feature_stats.ckpt.safetensors"]
    calls.clear()
    assert_same(run(model, sae, tokens, out_dir=tmp_path, checkpoint_every=2), stats)
    assert len(calls) == 3  # batches 3, 4 and 5 of 5
    calls.clear()
    assert_same(run(model, sae, tokens, out_dir=tmp_path), stats)  # finished: nothing to redo
    assert calls == []
    monkeypatch.undo()
    with pytest.raises(ValueError, match="other arguments \\(k differ"):
        run(model, sae, tokens, out_dir=tmp_path, k=K + 1)


def test_save_load_round_trip_and_identity_checks(setup, tmp_path):
    model, tokens, sae, stats, _ = setup
    loaded = FeatureStats.load(stats.save(tmp_path / "stats"))
    assert_same(loaded, stats)
    loaded.check_sae(sae)
    assert loaded.top_examples(5) == stats.top_examples(5)
    with pytest.raises(ValueError, match="16 features where the stats have 48"):
        loaded.check_sae(random_sae(model, tokens, d_sae=16))
    with pytest.raises(ValueError, match="resid_post.2"):
        loaded.check_sae(random_sae(model, tokens, site_in="resid_post.2"))
    with pytest.raises(ValueError, match="other weights"):
        loaded.check_sae(random_sae(model, tokens, seed=9))
    with pytest.raises(FileNotFoundError):
        FeatureStats.load(tmp_path / "missing")
    with pytest.raises(IndexError, match="48"):
        stats.top_examples(48)


def test_bad_input_gives_clear_errors(setup):
    model, tokens, sae, _, _ = setup
    with pytest.raises(ValueError, match="corpus is empty"):
        run(model, sae, tokens[:0])
    with pytest.raises(ValueError, match="only control tokens"):
        run(model, sae, torch.full((2, 4), model.tokenizer.bos_token_id))
    other = JumpReLUSAE(SAEConfig(d_in=640, d_sae=8, site_in="resid_post.1", model_name="gemma"))
    with pytest.raises(ValueError, match="does not fit tiny-gemma3: it expects width 640"):
        run(model, other, tokens)
    with pytest.raises(ValueError, match="two SAEs read one site"):
        run(model, [sae, sae], tokens)
    with pytest.raises(ValueError, match="integer tensor"):
        run(model, sae, tokens.float())
