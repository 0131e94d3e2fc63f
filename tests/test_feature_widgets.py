"""FeatureInspector and PromptInspector show what the stats and an independent sae.encode say,
and turn bad input into a message."""

from __future__ import annotations

import re
import time

import pytest
import torch
from test_features import corpus, random_sae
from tiny import tiny_model

from gsnb.analysis.features import FeatureStats, feature_activations, feature_stats
from gsnb.viz import plots
from gsnb.viz.pages import feature_page
from gsnb.viz.widgets import FeatureInspector, PromptInspector

TEXT = "the cat sat on the mat . a dog ran to the park"


def tiny_model_sae_stats():
    """The tiny Gemma 3, a random SAE at ``resid_post.1`` and its stats over a random corpus."""
    model = tiny_model("gemma3")
    tokens = corpus(model)
    sae = random_sae(model, tokens)
    stats = feature_stats(model, sae, tokens, k=4, n_quantile_samples=6, progress=False)
    return model, sae, stats


@pytest.fixture(scope="module")
def setup():
    return tiny_model_sae_stats()


def acts_in(html_text: str) -> list[float]:
    return [float(v) for v in re.findall(r'data-act="([^"]+)"', html_text)]


def alive(stats: FeatureStats, n: int = 2) -> list[int]:
    return (stats.density > 0).nonzero().flatten()[:n].tolist()


def test_setting_the_feature_redraws_every_panel_from_the_stats(setup):
    model, sae, stats = setup
    view = FeatureInspector(stats, model, sae)
    f, g = alive(stats)
    view.feature.value = f
    top_f, hist_f = view.top.value, view.histogram.data[0].y
    view.feature.value = g
    assert f"feature {g}" in view.header.value
    edges, counts = stats.histogram(g)
    assert list(view.histogram.data[0].y) == counts.tolist() and tuple(hist_f) != ()
    effects = stats.logit_effects(g, 10)
    assert list(view.logits.data[1].x) == pytest.approx(effects.top_values)
    assert list(view.logits.data[0].x) == pytest.approx(effects.bottom_values)
    assert view.top.value != top_f
    first = stats.top_examples(g)[0]
    assert f"{first.activation:.6g}" in view.top.value  # the peak token's data-act
    assert view.quantiles.value.count("gsnb-example") == len(stats._examples("sample", g))
    view.next_button.click()
    assert view.feature.value == g + 1
    view.prev_button.click()
    assert view.feature.value == g and view.message.value == ""


def test_a_feature_switch_reads_stats_only_and_is_fast(setup, monkeypatch):
    model, sae, stats = setup
    view = FeatureInspector(stats, model, sae)
    monkeypatch.setattr(model, "run_with_cache", lambda *a, **k: pytest.fail("model ran"))
    start = time.perf_counter()
    for f in range(10):
        view.show(f)
    assert (time.perf_counter() - start) / 10 < 0.5


def test_text_box_colours_tokens_by_the_features_activation_from_sae_encode(setup):
    model, sae, stats = setup
    view = FeatureInspector(stats, model, sae)
    for f in alive(stats, 3):
        view.show(f)
        view.text.value = TEXT
        view.color_button.click()
        tokens = model.to_tokens(TEXT)
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, [sae.site_in])
            expected = sae.encode(cache[sae.site_in])[0, :, f]
        expected[0] = 0  # BOS
        shown = acts_in(view.colored.value)
        assert shown == pytest.approx(expected.tolist(), rel=1e-4, abs=1e-5)
        assert len(re.findall(r'class="gsnb-tok"', view.colored.value)) == tokens.shape[1]


def test_prompt_inspector_open_selects_the_feature_in_the_inspector(setup):
    model, sae, stats = setup
    inspector = FeatureInspector(stats, model, sae)
    view = PromptInspector(model, {"resid_post.1": sae}, inspector=inspector)
    view.run(TEXT)
    assert view.message.value == ""
    _, acts = feature_activations(model, sae, TEXT)
    pos, f = divmod(int(acts.argmax()), acts.shape[1])
    assert view.figure.data[0].z[0][pos] == pytest.approx(float(acts[pos, f]))
    assert ("resid_post.1", f) in [key for _, key in view.choice.options]
    view.choice.value = ("resid_post.1", f)
    view.open_button.click()
    assert inspector.feature.value == f and f"feature {f}" in inspector.header.value


@pytest.mark.parametrize(
    "text, needle",
    [("", "empty"), ("   ", "empty"), (" ".join(["cat"] * 200), "context")],
)
def test_bad_text_shows_a_message_not_a_traceback(setup, text, needle):
    model, sae, stats = setup
    inspector = FeatureInspector(stats, model, sae)
    inspector.color_text(text)
    assert "gsnb-error" in inspector.colored.value and needle in inspector.colored.value
    view = PromptInspector(model, [sae], inspector=inspector)
    view.run(text)
    assert "gsnb-error" in view.message.value and needle in view.message.value


def test_out_of_range_feature_shows_a_message(setup):
    model, sae, stats = setup
    view = FeatureInspector(stats, model, sae)
    view.show(stats.d_sae + 5)
    assert "out of range" in view.message.value and view.feature.value == 0
    view.feature.value = stats.d_sae + 100  # typed into the box
    assert f"feature {stats.d_sae + 100} is out of range" in view.message.value
    view.feature.value = -1
    assert "out of range" in view.message.value


def test_stats_of_another_sae_show_a_message_and_disable_the_text_box(setup):
    model, sae, stats = setup
    other = random_sae(model, corpus(model), seed=7)
    view = FeatureInspector(stats, model, other)
    assert "do not belong" in view.message.value and view.text.disabled
    view.color_text(TEXT)
    assert "do not belong" in view.colored.value
    prompts = PromptInspector(model, {"resid_post.1": other}, inspector=view)
    prompts.run(TEXT)
    prompts.open("resid_post.1", 3)
    assert "do not belong" in prompts.message.value


def test_neuronpedia_link_when_the_stats_name_it(setup):
    _, _, stats = setup
    named = FeatureStats.__new__(FeatureStats)
    named.__dict__.update(stats.__dict__, neuronpedia_id="gemma-2-2b/20-gemmascope-res-16k")
    html_text = plots.feature_header_html(named, 5)
    assert "https://www.neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k/5" in html_text
    assert "neuronpedia" not in plots.feature_header_html(stats, 5)


def test_exported_page_is_self_contained_with_every_panel(setup, tmp_path):
    _, _, stats = setup
    feats = alive(stats, 2)
    path = feature_page(stats, tmp_path / "features.html", features=feats)
    page = path.read_text()
    from plotly.offline import get_plotlyjs

    assert page.count(get_plotlyjs()) == 1  # inlined once
    rest = page.replace(get_plotlyjs(), "")
    assert "<script src" not in rest and "https://" not in rest  # nothing fetched
    for f in feats:
        assert f'id="feature-{f}"' in page
    assert page.count("Plotly.newPlot") == 1 + 2 * len(feats)
    assert page.count("gsnb-example") >= len(stats.top_examples(feats[0]))


def test_a_page_with_an_unknown_feature_raises_and_leaves_the_old_page_whole(setup, tmp_path):
    _, _, stats = setup
    path = feature_page(stats, tmp_path / "features.html", features=alive(stats, 1))
    before = path.read_text()
    with pytest.raises(IndexError, match="out of range"):
        feature_page(stats, path, features=[stats.d_sae])
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["features.html"]  # no temporary file left
