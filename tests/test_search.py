"""The feature search finds what a reading of the stats by hand finds, and every widget that
searches shows the user's query as text, never as markup."""

from __future__ import annotations

import pytest
import torch
from test_feature_widgets import tiny_model_sae_stats

from gsnb.analysis.features import FeatureStats
from gsnb.analysis.search import feature_tokens, search_features
from gsnb.viz.widgets import FeatureInspector, SteeringPlayground


def hand_made_stats(peaks: list[list[str]], promotes: list[list[str]]) -> FeatureStats:
    """Stats whose feature ``f`` peaks on the tokens ``peaks[f]`` (one window each, the token at
    position 0) and promotes ``promotes[f]`` (all of one length)."""
    vocab = sorted({t for row in peaks + promotes for t in row})
    ids = {t: i for i, t in enumerate(vocab)}
    d_sae, k = len(peaks), max(len(row) for row in peaks)
    window_tokens = torch.tensor([[ids[t]] for row in peaks for t in row])  # [m, S=1]
    top_windows = torch.full((d_sae, k), -1)
    n = 0
    for f, row in enumerate(peaks):
        top_windows[f, : len(row)] = torch.arange(n, n + len(row))
        n += len(row)
    zeros = torch.zeros(d_sae)
    return FeatureStats(
        model_name="hand", site_in="resid_post.0", site_out="resid_post.0", d_sae=d_sae,
        neuronpedia_id=None, sae_id=None, sae_fingerprint="", n_tokens=n, density=zeros,
        max_activation=zeros, mean_activation=zeros, top_windows=top_windows,
        top_positions=torch.zeros(d_sae, k, dtype=torch.long), top_values=torch.ones(d_sae, k),
        top_acts=torch.ones(d_sae, k, 1), sample_windows=torch.full((d_sae, 0), -1),
        sample_positions=torch.zeros(d_sae, 0, dtype=torch.long),
        sample_values=torch.zeros(d_sae, 0), sample_acts=torch.zeros(d_sae, 0, 1),
        hist_edges=torch.zeros(1), hist_counts=torch.zeros(d_sae, 0, dtype=torch.long),
        logit_top_ids=torch.tensor([[ids[t] for t in row] for row in promotes]),
        logit_top_values=torch.ones(d_sae, len(promotes[0])),
        logit_bottom_ids=torch.zeros(d_sae, 0, dtype=torch.long),
        logit_bottom_values=torch.zeros(d_sae, 0), windows=torch.arange(n),
        window_tokens=window_tokens, token_strs=dict(enumerate(vocab)),
    )  # fmt: skip


HAND = hand_made_stats(
    peaks=[[" Cat", " dog"], [" the", " a"], [" mat"], [" cat", " Cathedral", " cattle"]],
    promotes=[["cats", "x"], ["y", "z"], ["CAT", "cat"], ["z", "y"]],
)


@pytest.mark.parametrize(
    "query, expected",
    [
        ("cat", [3, 0, 2]),  # 3 matches, then two features with 2 each, lower id first
        ("  CAT ", [3, 0, 2]),  # case and surrounding spaces are ignored
        ("dog", [0]),
        ("cattle", [3]),
        ("y", [1, 3]),  # promoted tokens count too
        ("nothing", []),
        ("", []),
        ("   ", []),
    ],
)
def test_search_ranks_features_by_how_many_fired_or_promoted_tokens_contain_the_query(
    query, expected
):
    assert search_features(HAND, query) == expected


def test_search_returns_at_most_limit_ids():
    assert search_features(HAND, "cat", limit=2) == [3, 0]


def test_feature_tokens_lists_peak_tokens_once_and_promoted_tokens_in_order():
    stats = hand_made_stats(peaks=[[" a", " b", " a"]], promotes=[["p", "q"]])
    assert feature_tokens(stats) == ([[" a", " b"]], [["p", "q"]])
    assert search_features(stats, "a") == [0]


@pytest.fixture(scope="module")
def setup():
    return tiny_model_sae_stats()


def test_search_matches_a_brute_force_reading_of_top_examples_and_logit_effects(setup):
    _, _, stats = setup
    words = {}
    for f in range(stats.d_sae):
        fired = {ex.str_tokens[ex.position] for ex in stats.top_examples(f)}
        words[f] = [t.strip().lower() for t in [*fired, *stats.logit_effects(f).top_tokens]]
    queries = {w[:2] for ws in words.values() for w in ws if len(w) >= 2}
    assert len(queries) > 5
    for query in sorted(queries)[:20]:
        counts = {f: sum(query in w for w in ws) for f, ws in words.items()}
        expected = sorted((f for f in counts if counts[f]), key=lambda f: (-counts[f], f))
        assert search_features(stats, query, limit=stats.d_sae) == expected, query


def inspector(setup):
    model, sae, stats = setup
    return FeatureInspector(stats, model, sae)


def playground(setup):
    model, sae, stats = setup
    return SteeringPlayground(model, {"resid_post.1": sae}, stats=stats)


@pytest.mark.parametrize("make", [inspector, playground])
def test_typing_a_token_in_a_widgets_search_box_picks_the_best_match(setup, make):
    _, _, stats = setup
    view = make(setup)
    query = next(t for row in feature_tokens(stats).fires for t in row if t.strip())
    view.search.value = query
    found = search_features(stats, query)
    assert [f for _, f in view.matches.options] == found
    assert view.feature.value == found[0]


@pytest.mark.parametrize("make", [inspector, playground])
def test_a_query_that_matches_nothing_shows_escaped_never_as_markup(setup, make):
    view = make(setup)
    query = "<b>bold</b><script>alert(1)</script>"
    view.search.value = query
    assert view.matches.options == ()
    message = view.message.value
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in message and "&lt;b&gt;bold" in message
    assert "<script>" not in message and "<b>" not in message
