"""The steering playground shows what gsnb.compare and an independent sweep compute, and turns
bad input into a message without leaving hooks behind."""

from __future__ import annotations

import math

import pytest
import torch
from test_steering import TEXT, random_sae
from tiny import tiny_model

from gsnb.analysis.steering import Add, compare, strength_sweep
from gsnb.core.hooks import count_hooks
from gsnb.viz.widgets import SteeringPlayground

PROMPT = "the cat sat on the"
SITE = "resid_post.1"


@pytest.fixture(scope="module")
def setup():
    model = tiny_model("gemma3")
    return model, random_sae(model, SITE)


def independent_probs(model, sae, feature, strength, words, scale=1.0):
    """``[len(words)]`` next-token probabilities with ``strength * scale * W_dec[feature]``
    added at every position of ``SITE`` by a plain hook (no gsnb.analysis.steering code)."""
    delta = strength * scale * sae.W_dec[feature]
    with torch.no_grad(), model.hooks({SITE: lambda x: x + delta}):
        probs = model(PROMPT)[0, -1].float().softmax(-1)
    ids = [model.tokenizer.convert_tokens_to_ids(w) for w in words]
    return probs[ids]


def playground(model, sae, **kwargs):
    play = SteeringPlayground(model, {SITE: sae}, prompt=PROMPT, n_sweep=3, **kwargs)
    play.max_new_tokens.value = 6
    return play


def test_clicking_fills_default_and_steered_completions_as_compare_does(setup):
    model, sae = setup
    play = playground(model, sae)
    play.feature.value, play.strength.value = 7, 30.0
    play.button.click()
    expected = compare(model, PROMPT, [Add(SITE, (sae, 7), 30.0)], max_new_tokens=6)
    assert play.message.value.startswith("<i>") or play.message.value == ""
    assert play.comparison.default == expected.default
    assert play.comparison.steered == expected.steered
    assert play.comparison.default != play.comparison.steered, "strength 30 should change text"
    for text in expected.default + expected.steered:
        assert text in play.completions.value
    assert count_hooks(model.hf) == 0


def test_sweep_draws_one_trace_per_target_with_independently_computed_probabilities(setup):
    model, sae = setup
    play = playground(model, sae, targets="mat, dog , park", max_strength=40.0)
    play.feature.value = 11
    play.button.click()
    assert [trace.name for trace in play.figure.data] == ["'mat'", "'dog'", "'park'"]
    strengths = [-40.0, 0.0, 40.0]
    for trace in play.figure.data:
        assert list(trace.x) == strengths
    for i, s in enumerate(strengths):
        expected = independent_probs(model, sae, 11, s, ["mat", "dog", "park"])
        got = torch.tensor([trace.y[i] for trace in play.figure.data])
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(play.sweep.probs[0], play.sweep.probs[-1])
    assert count_hooks(model.hf) == 0


def test_strength_sweep_takes_token_ids_and_matches_a_plain_hook(setup):
    model, sae = setup
    ids = [model.tokenizer.convert_tokens_to_ids(w) for w in ("cat", "ran")]
    sweep = strength_sweep(model, PROMPT, lambda s: Add(SITE, (sae, 3), s), [0.0, 25.0], ids)
    assert sweep.tokens == ["cat", "ran"] and sweep.probs.shape == (2, 2)
    for row, s in zip(sweep.probs, [0.0, 25.0], strict=True):
        torch.testing.assert_close(
            row, independent_probs(model, sae, 3, s, ["cat", "ran"]), rtol=1e-4, atol=1e-6
        )


def test_with_stats_strength_counts_max_activations_and_search_finds_top_tokens(setup):
    features = pytest.importorskip("gsnb.analysis.features")
    model, sae = setup
    tokens = model.to_tokens([TEXT, "a dog sat on the mat . the cat ran"])
    stats = features.feature_stats(model, sae, tokens, k=3, progress=False)
    alive = int(torch.nonzero(stats.max_activation > 0)[0])
    play = playground(model, sae, stats=stats, targets="mat")
    assert play.strength.description == "x max act"
    play.feature.value, play.strength.value = alive, 2.0
    play.button.click()
    scale = float(stats.max_activation[alive])
    expected = compare(model, PROMPT, [Add(SITE, (sae, alive), 2.0 * scale)], max_new_tokens=6)
    assert play.comparison.steered == expected.steered
    for i, s in enumerate(play.sweep.strengths):
        torch.testing.assert_close(
            play.sweep.probs[i, 0],
            independent_probs(model, sae, alive, s, ["mat"], scale)[0],
            rtol=1e-4,
            atol=1e-6,
        )
    # The search matches the tokens at each feature's top examples' peaks (and promoted tokens).
    peak = {
        f: {ex.str_tokens[ex.position] for ex in stats.top_examples(f)} for f in range(sae.d_sae)
    }
    word = next(iter(peak[alive]))
    found = play.find(word)
    promoted = {f: stats.logit_effects(f).top_tokens for f in range(sae.d_sae)}
    expected_found = {
        f for f in range(sae.d_sae) if any(word in t for t in peak[f] | set(promoted[f]))
    }
    assert alive in found and set(found) == expected_found
    assert play.feature.value == found[0]
    assert count_hooks(model.hf) == 0


@pytest.mark.parametrize(
    "field, value, says",
    [
        ("feature", 999, "feature 999 does not exist"),
        ("strength", math.nan, "strength is nan"),
        ("prompt", "   ", "prompt is empty"),
        ("targets", "cat sat", "2 tokens"),
    ],
)
def test_bad_input_shows_a_message_and_leaves_no_hooks(setup, field, value, says):
    model, sae = setup
    play = playground(model, sae, targets="mat")
    play.button.click()
    assert play.comparison is not None
    getattr(play, field).value = value
    play.button.click()
    assert says in play.message.value
    assert play.comparison is None and play.sweep is None
    assert play.completions.value == "" and len(play.figure.data) == 0
    assert count_hooks(model.hf) == 0


def test_stats_for_another_sae_are_refused_when_the_playground_is_built(setup):
    model, sae = setup
    other = random_sae(model, "resid_post.2")
    stats = type("Stats", (), {"site_in": "resid_post.2", "site_out": "resid_post.2"})()
    stats.d_sae = other.d_sae
    with pytest.raises(ValueError, match="fits none of the SAEs"):
        SteeringPlayground(model, [sae], stats=stats)
