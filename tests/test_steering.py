"""Interventions change exactly what they say, generation matches transformers, nothing leaks."""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import pytest
import torch

from gsnb.analysis.steering import (
    Ablate,
    Add,
    Clamp,
    _generate_ids,
    compare,
    generate,
    intervene,
    steering_vector,
)
from gsnb.core.hooks import count_hooks
from gsnb.saes.sae import JumpReLUSAE, SAEConfig

TEXT = "the cat sat on the mat . a dog ran to the park"
PROMPT = "the cat sat on the mat"


def random_sae(model, site_in, site_out=None, d_sae=64, fire=0.2, seed=0, d_in=None):
    """A random JumpReLU SAE whose thresholds let about ``fire`` of the features fire on TEXT."""
    d_in = d_in or model.site_width(site_in)
    d_out = model.site_width(site_out or site_in) if d_in == model.site_width(site_in) else d_in
    cfg = SAEConfig(d_in, d_sae, d_out, model.name, site_in, site_out)
    sae = JumpReLUSAE(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w_dec = torch.randn(d_sae, d_out, generator=gen)
        sae.W_dec.copy_(w_dec / w_dec.norm(dim=1, keepdim=True))
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=gen) / d_in**0.5)
        if d_in == model.site_width(site_in):
            _, cache = model.run_with_cache(TEXT, [site_in])
            pre = sae.pre_activations(cache[site_in].reshape(-1, d_in))
            sae.threshold.copy_(pre.quantile(1 - fire, dim=0).clamp(min=1e-3))
    return sae.requires_grad_(False)


def site_value(model, tokens, site, interventions=()):
    """The value at ``site`` after the interventions (they are registered before the capture)."""
    with intervene(model, list(interventions)):
        _, cache = model.run_with_cache(tokens, [site])
    return cache[site]


# --- exactness ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sae", "transcoder"])
def test_clamp_to_current_value_changes_no_logits(model, kind):
    site_in, site_out = ("resid_post.1", None) if kind == "sae" else ("mlp_in.1", "mlp_out.1")
    sae = random_sae(model, site_in, site_out)
    tokens = model.to_tokens(PROMPT)
    clean = model(tokens)
    f = sae.encode(site_value(model, tokens, site_in))
    pos = 4
    active = torch.nonzero(f[0, pos] > 0).reshape(-1).tolist()
    assert active, "the random SAE should fire at this position"
    current = Clamp(sae, active[0], float(f[0, pos, active[0]]), positions=pos)
    with intervene(model, [current]):
        assert torch.equal(model(tokens), clean)
    assert count_hooks(model.hf) == 0


def test_empty_ablation_and_zero_strength_adds_change_no_logits(model):
    sae = random_sae(model, "resid_post.0")
    tokens = model.to_tokens(PROMPT)
    clean = model(tokens)
    nothing = [
        Ablate(sae, []),
        Add("resid_post.0", (sae, 3), 0.0),
        Add("attn_out.1", torch.randn(model.site_width("attn_out.1")), strength=0.0),
        Clamp(sae, [], 5.0),
    ]
    with intervene(model, nothing):
        assert torch.equal(model(tokens), clean)
    assert count_hooks(model.hf) == 0


@pytest.mark.parametrize("kind", ["sae", "transcoder"])
def test_clamp_changes_the_site_by_edited_features_times_decoder_rows(gemma3, kind):
    site_in, site_out = (
        ("resid_post.1", "resid_post.1") if kind == "sae" else ("mlp_in.1", "mlp_out.1")
    )
    sae = random_sae(gemma3, site_in, None if kind == "sae" else site_out)
    tokens = gemma3.to_tokens(PROMPT)
    _, cache = gemma3.run_with_cache(tokens, [site_in, site_out])
    f = sae.encode(cache[site_in])
    feats = [3, 17, 40]
    edited = site_value(gemma3, tokens, site_out, [Clamp(sae, feats, 2.5)])
    expected = (2.5 - f[..., feats]) @ sae.W_dec[feats]
    torch.testing.assert_close(edited - cache[site_out], expected, rtol=1e-5, atol=1e-5)
    # The same as decoding the edited features and adding back the SAE's error term.
    f_edit = f.clone()
    f_edit[..., feats] = 2.5
    error = cache[site_out] - sae.decode(f)
    torch.testing.assert_close(edited, sae.decode(f_edit) + error, rtol=1e-5, atol=1e-5)
    ablated = site_value(gemma3, tokens, site_out, [Ablate(sae, feats)])
    f_off = f.clone()
    f_off[..., feats] = 0.0
    torch.testing.assert_close(ablated, sae.decode(f_off) + error, rtol=1e-5, atol=1e-5)


def test_add_at_positions_touches_only_those_positions(gemma3):
    tokens = gemma3.to_tokens(PROMPT)
    vec = torch.randn(gemma3.d_model)
    clean = site_value(gemma3, tokens, "resid_post.0")
    for positions, touched in [(2, [2]), (-1, [6]), (slice(1, 3), [1, 2]), ([0, 5], [0, 5])]:
        edited = site_value(
            gemma3, tokens, "resid_post.0", [Add("resid_post.0", vec, 2.0, positions)]
        )
        diff = (edited - clean)[0]
        for pos in range(tokens.shape[1]):
            if pos in touched:
                torch.testing.assert_close(diff[pos], 2.0 * vec)
            else:
                assert torch.equal(diff[pos], torch.zeros_like(diff[pos]))


def test_strength_in_units_of_max_activation(gemma3):
    sae = random_sae(gemma3, "resid_post.1")
    stats = SimpleNamespace(max_activation=torch.linspace(0.5, 7.0, sae.d_sae))
    tokens = gemma3.to_tokens(PROMPT)
    with intervene(gemma3, [Add("resid_post.1", (sae, 9), 3.0, stats=stats)]):
        relative = gemma3(tokens)
    raw = Add("resid_post.1", sae.W_dec[9].clone(), 3.0 * float(stats.max_activation[9]))
    with intervene(gemma3, [raw]):
        torch.testing.assert_close(relative, gemma3(tokens))
    f = sae.encode(gemma3.run_with_cache(tokens, ["resid_post.1"])[1]["resid_post.1"])
    clamped = site_value(gemma3, tokens, "resid_post.1", [Clamp(sae, [9], 2.0, stats=stats)])
    clean = site_value(gemma3, tokens, "resid_post.1")
    target = 2.0 * float(stats.max_activation[9])
    torch.testing.assert_close(clamped - clean, (target - f[..., [9]]) @ sae.W_dec[[9]])


# --- generation --------------------------------------------------------------------------------


def test_generate_without_interventions_equals_transformers_greedy(model):
    tokens = model.to_tokens(PROMPT)
    # 20 new tokens run past the tiny models' sliding window of 8, through the KV cache.
    ours = _generate_ids(model, tokens, max_new_tokens=20)
    theirs = model.hf.generate(
        tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=20, do_sample=False
    )[0, tokens.shape[1] :]
    assert torch.equal(ours, theirs)
    text = model.tokenizer.decode(theirs.tolist(), skip_special_tokens=True)
    assert generate(model, PROMPT, max_new_tokens=20) == text
    assert count_hooks(model.hf) == 0


def test_generated_only_interventions_leave_the_prompt_alone(model):
    sae = random_sae(model, "resid_post.0")
    steer = [
        Add("resid_post.0", torch.randn(model.d_model), 20.0, positions="generated"),
        Clamp(sae, [1, 2, 3], 6.0, positions="generated"),
    ]
    tokens = model.to_tokens(PROMPT)
    n = tokens.shape[1]
    ids = _generate_ids(model, tokens, steer, max_new_tokens=6)
    # The first new token comes from the prompt's last position, which is not generated.
    assert ids[0] == _generate_ids(model, tokens, max_new_tokens=1)[0]
    full = torch.cat([tokens, ids[None]], dim=1)
    clean = model(full)
    with intervene(model, steer, prompt_length=n):
        steered = model(full)
    assert torch.equal(steered[:, :n], clean[:, :n])
    assert not torch.allclose(steered[:, n:], clean[:, n:])
    # Without prompt_length a plain forward pass generated nothing, so nothing changes.
    with intervene(model, steer):
        assert torch.equal(model(full), clean)
    assert count_hooks(model.hf) == 0


@pytest.mark.parametrize("positions", ["generated", slice(7, None), 8, [6, 8]])
def test_positions_are_absolute_through_the_kv_cache(gemma3, positions):
    sae = random_sae(gemma3, "mlp_in.1", "mlp_out.1")
    steer = [
        Add("resid_post.0", torch.randn(gemma3.d_model), 5.0, positions),
        Clamp(sae, [5, 6], 3.0, positions),
    ]
    tokens = gemma3.to_tokens(PROMPT + " . a dog")  # 10 tokens: 7 prompt, 3 fed one by one
    full = tokens
    prompt, rest = tokens[:, :7], tokens[:, 7:]
    with intervene(gemma3, steer, prompt_length=7):
        reference = gemma3(full)
    with intervene(gemma3, steer):
        logits, kv = gemma3.forward_cached(prompt)
        cached = [logits]
        for i in range(rest.shape[1]):
            logits, kv = gemma3.forward_cached(rest[:, i : i + 1], kv)
            cached.append(logits)
    torch.testing.assert_close(torch.cat(cached, dim=1), reference, rtol=1e-4, atol=1e-5)


def steered_greedy_without_cache(model, tokens, steer, n_new):
    """Reference: a full forward pass per new token (no KV cache), the interventions applied
    to the generated positions only, by absolute position."""
    n_prompt = tokens.shape[1]
    for _ in range(n_new):
        with intervene(model, steer, prompt_length=n_prompt):
            nxt = model(tokens)[0, -1].argmax()
        tokens = torch.cat([tokens, nxt.view(1, 1)], dim=1)
    return tokens[0, n_prompt:]


def generated_steer(model):
    sae = random_sae(model, "mlp_in.1", "mlp_out.1", fire=0.5)
    direction = torch.randn(model.d_model, generator=torch.Generator().manual_seed(1))
    return [
        Add("resid_post.0", direction, 3.0, positions="generated"),
        Clamp(sae, [0, 1, 2, 3], 4.0, positions="generated"),
    ]


def test_generate_steers_generated_positions_like_a_no_cache_reference(model):
    steer = generated_steer(model)
    tokens = model.to_tokens(PROMPT)
    ours = _generate_ids(model, tokens, steer, max_new_tokens=12)  # past the window of 8
    reference = steered_greedy_without_cache(model, tokens, steer, 12)
    assert torch.equal(ours, reference)
    # The steering matters from the second new token on: unsteered greedy differs.
    assert not torch.equal(ours, _generate_ids(model, tokens, max_new_tokens=12))


@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
def test_transformers_generate_is_steered_through_its_own_cache(gemma3, cache_implementation):
    steer = generated_steer(gemma3)
    tokens = gemma3.to_tokens(PROMPT)
    with intervene(gemma3, steer):  # the prompt length is read off the prefill
        out = gemma3.hf.generate(
            tokens,
            attention_mask=torch.ones_like(tokens),
            max_new_tokens=6,
            do_sample=False,
            cache_implementation=cache_implementation,
        )
    reference = steered_greedy_without_cache(gemma3, tokens, steer, 6)
    assert torch.equal(out[0, tokens.shape[1] :], reference)
    assert count_hooks(gemma3.hf) == 0


def test_generation_loop_raises_no_future_warning(model):
    steer = generated_steer(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        generate(model, PROMPT, steer, max_new_tokens=4)
        generate(model, PROMPT, max_new_tokens=4, temperature=1.0)


def test_sampling_is_reproducible_by_seed(gemma3):
    a = generate(gemma3, PROMPT, max_new_tokens=8, temperature=1.0, seed=3)
    b = generate(gemma3, PROMPT, max_new_tokens=8, temperature=1.0, seed=3)
    assert a == b


def test_compare_puts_default_and_steered_side_by_side(gemma3):
    sae = random_sae(gemma3, "resid_post.1")
    steer = [Add("resid_post.1", (sae, 4), 30.0)]
    result = compare(gemma3, PROMPT, steer, max_new_tokens=5, temperature=0.8, seed=1, samples=2)
    assert result.default == [
        generate(gemma3, PROMPT, max_new_tokens=5, temperature=0.8, seed=s) for s in (1, 2)
    ]
    assert result.steered[0] == generate(gemma3, PROMPT, steer, 5, 0.8, seed=1)
    html = result._repr_html_()
    assert "<table" in html and "steered" in html and "feature 4" in html
    assert count_hooks(gemma3.hf) == 0


@pytest.mark.parametrize("position", ["last", "mean"])
def test_steering_vector_is_the_difference_of_means(gemma3, position):
    pos_prompts, neg_prompts = ["the cat sat", "a dog ran to the park"], ["the mat ."]

    def mean_of(prompts):
        acts = []
        for text in prompts:  # one at a time: no padding involved
            x = gemma3.run_with_cache(text, ["attn_out.1"])[1]["attn_out.1"][0]
            acts.append(x[-1] if position == "last" else x[1:].mean(0))
        return torch.stack(acts).mean(0)

    vec = steering_vector(gemma3, "attn_out.1", pos_prompts, neg_prompts, position)
    assert vec.shape == (gemma3.site_width("attn_out.1"),)
    torch.testing.assert_close(vec, mean_of(pos_prompts) - mean_of(neg_prompts))


# --- bad input ------------------------------------------------------------------------------------


def test_bad_input_gives_clear_errors_and_leaves_no_hooks(gemma3):
    sae = random_sae(gemma3, "resid_post.1")
    tokens = gemma3.to_tokens(PROMPT)
    good = Add("resid_post.0", torch.ones(gemma3.d_model), 1.0)

    def unhooked():
        assert count_hooks(gemma3.hf) == 0

    with pytest.raises(ValueError, match="feature 64 does not exist"):
        Clamp(sae, [1, 64], 1.0)
    with pytest.raises(ValueError, match="feature -1 does not exist"):
        Add("resid_post.1", (sae, -1))
    with pytest.raises(ValueError, match="strength is nan"):
        Add("resid_post.1", (sae, 1), math.nan)
    with pytest.raises(ValueError, match="value is inf"):
        Clamp(sae, 1, math.inf)
    with pytest.raises(ValueError, match="NaN"):
        Add("resid_post.1", torch.full((gemma3.d_model,), math.nan))
    with pytest.raises(ValueError, match="positions"):
        Ablate(sae, 1, positions="prompt")
    with pytest.raises(ValueError, match="max_activation"):
        Clamp(sae, 1, 2.0, stats=SimpleNamespace(max_activation=torch.ones(3)))
    unhooked()
    # Wrong width: raised on entry, after a valid intervention was already looked at.
    with pytest.raises(ValueError, match="33 values but resid_post.1 .* is 32 wide"):
        with intervene(gemma3, [good, Add("resid_post.1", torch.ones(33))]):
            gemma3(tokens)
    unhooked()
    other = random_sae(gemma3, "resid_post.1", d_in=48)  # trained on a wider model
    with pytest.raises(ValueError, match="expects width 48"):
        with intervene(gemma3, [good, Clamp(other, 1, 1.0)]):
            gemma3(tokens)
    unhooked()
    with pytest.raises(ValueError, match="expects width 48"):
        generate(gemma3, PROMPT, [Add("resid_post.1", (other, 2), 1.0)])
    unhooked()
    with pytest.raises(ValueError, match="empty"):
        generate(gemma3, "", [good])
    with pytest.raises(ValueError, match="empty"):
        compare(gemma3, "", [good])
    with pytest.raises(TypeError, match="not an intervention"):
        with intervene(gemma3, [good, "resid_post.1"]):
            pass
    with pytest.raises(ValueError, match="temperature is nan"):
        generate(gemma3, PROMPT, [good], temperature=math.nan)
    unhooked()
    with pytest.raises(RuntimeError, match="user code"):
        with intervene(gemma3, [good, Ablate(sae, [1])]):
            assert count_hooks(gemma3.hf) == 3  # the position tracker plus one per site
            raise RuntimeError("user code")
    unhooked()
