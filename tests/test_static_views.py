"""Every widget's display carries a static HTML snapshot next to the live widget: the SVG
figures match the data they draw, the snapshot holds the current state read from the underlying
computation, and nbconvert (no widget state) shows the snapshot."""

from __future__ import annotations

import html
import re

import plotly.graph_objects as go
import pytest
import torch
from test_circuits import PROMPT, random_transcoders
from test_feature_widgets import alive, tiny_model_sae_stats
from test_steering import random_sae as steering_sae

from gsnb.circuits.tracing import trace
from gsnb.viz.graph_plot import graph_layout
from gsnb.viz.graph_view import GraphView
from gsnb.viz.static_figures import figure_svg
from gsnb.viz.static_marks import VIRIDIS
from gsnb.viz.widgets import FeatureInspector, PromptInspector, SteeringPlayground

WIDGET = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def setup():
    return tiny_model_sae_stats()


def attrs(svg: str, tag: str, name: str) -> list[float]:
    return [float(v) for v in re.findall(rf'<{tag} [^>]*?\b{name}="([-0-9.]+)"', svg)]


def bars(svg: str) -> list[tuple[float, float, float, float]]:
    """``(x, y, width, height)`` of the rects that carry a tooltip (bars and cells)."""
    found = re.findall(
        r'<rect x="([-0-9.]+)" y="([-0-9.]+)" width="([-0-9.]+)" height="([-0-9.]+)"[^>]*>'
        r"<title>",
        svg,
    )
    return [tuple(map(float, row)) for row in found]


def test_bars_are_as_long_as_their_values_from_a_common_baseline():
    values = [1.0, 2.5, 4.0, 0.5]
    svg = figure_svg(go.Figure(go.Bar(x=["a", "b", "c", "d"], y=values)))
    heights = [h for *_, h in bars(svg)]
    bottoms = [y + h for _, y, _, h in bars(svg)]
    assert heights == pytest.approx([v / 4.0 * heights[2] for v in values], rel=1e-2)
    assert max(bottoms) - min(bottoms) < 0.2
    horizontal = figure_svg(go.Figure(go.Bar(x=values, y=["a", "b", "c", "d"], orientation="h")))
    widths = [w for _, _, w, _ in bars(horizontal)]
    assert widths == pytest.approx([v / 4.0 * widths[2] for v in values], rel=1e-2)


def test_markers_sit_at_their_data_on_linear_and_log_axes():
    fig = go.Figure(go.Scatter(x=[1, 10, 100], y=[0.0, 1.0, 3.0], mode="markers"))
    fig.update_layout(xaxis_type="log")
    svg = figure_svg(fig)
    cx, cy = attrs(svg, "circle", "cx"), attrs(svg, "circle", "cy")
    assert cx[1] - cx[0] == pytest.approx(cx[2] - cx[1], abs=0.2)  # decades equally apart
    assert (cy[0] - cy[2]) == pytest.approx(3 * (cy[0] - cy[1]), abs=0.3)  # y grows upwards


def test_heatmap_cells_run_from_the_lowest_to_the_highest_colour():
    z = torch.tensor([[0.0, 2.0], [1.0, 4.0]])
    svg = figure_svg(go.Figure(go.Heatmap(z=z.numpy(), x=["p", "q"], y=["r0", "r1"])))
    fills = re.findall(r'<rect [^>]*fill="(#[0-9a-f]{6})"><title>([^<]*)</title>', svg)
    by_cell = {title: fill for fill, title in fills}
    assert by_cell["r0 · p: 0"] == VIRIDIS[0] and by_cell["r1 · q: 4"] == VIRIDIS[-1]
    assert len(by_cell) == 4


def test_feature_inspector_snapshot_holds_the_shown_features_panels(setup):
    model, sae, stats = setup
    view = FeatureInspector(stats, model, sae)
    f, g = alive(stats)
    view.show(g)
    view.color_text("the cat sat on the mat")
    bundle = view._repr_mimebundle_()
    assert bundle[WIDGET]["model_id"] == view.widget.model_id
    page = bundle["text/html"]
    assert "<script" not in page and "feature " + str(g) in page
    top = page.split("<b>Top examples</b>")[1].split("<b>Samples by quantile</b>")[0]
    peaks = re.findall(r'data-act="([^"]+)"[^>]*outline:1px[^>]*>([^<]*)</span>', top)
    examples = stats.top_examples(g)
    assert [a for a, _ in peaks] == [f"{ex.activation:.6g}" for ex in examples]
    assert [t for _, t in peaks] == [html.escape(ex.str_tokens[ex.position]) for ex in examples]
    histogram = page.split("<svg")[1]
    drawn = [float(c) for c in re.findall(r"<title>[^<]*: ([-0-9.e+]+)</title></rect>", histogram)]
    assert drawn == stats.histogram(g)[1].tolist()
    assert "Your text" in page
    view.show(f)
    assert f"<b>feature {f}</b>" in view.static_html() and f"<b>feature {g}</b>" not in (
        view.static_html()
    )


def test_ipython_displays_the_widget_and_the_snapshot(setup):
    from IPython.core.formatters import DisplayFormatter

    _, _, stats = setup
    data, _ = DisplayFormatter().format(FeatureInspector(stats))
    assert WIDGET in data and "gsnb-static" in data["text/html"]


def test_prompt_inspector_snapshot_lists_the_tokens_top_features(setup):
    model, sae, _ = setup
    view = PromptInspector(model, {"resid_post.1": sae}, prompt="the cat sat", k=2)
    page = view._repr_mimebundle_()["text/html"]
    _, acts = view.str_tokens, view.acts["resid_post.1"]  # [pos, d_sae]
    for pos, tok in enumerate(view.str_tokens):
        assert html.escape(repr(tok)) in page
        best = int(acts[pos].argmax())
        if acts[pos, best] > 0:
            assert f"resid_post.1 #{best} ({float(acts[pos, best]):.3g})" in page
    assert len(bars(page)) == acts.shape[0]  # one heatmap cell per token (one SAE)


def test_steering_snapshot_holds_the_completions_and_one_line_per_target():
    from tiny import tiny_model

    model = tiny_model("gemma3")
    sae = steering_sae(model, "resid_post.1")
    play = SteeringPlayground(model, {"resid_post.1": sae}, prompt="the cat sat on the", n_sweep=3)
    play.max_new_tokens.value, play.targets.value = 4, "dog, mat"
    play.feature.value, play.strength.value = 7, 30.0
    play.button.click()
    page = play._repr_mimebundle_()["text/html"]
    for text in play.comparison.default + play.comparison.steered:
        assert html.escape(text) in page
    assert page.count("<circle") == 2 * 3  # two targets, three strengths
    assert "feature 7" in page and len(play.sweep.tokens) == 2
    for token in play.sweep.tokens:  # the legend
        assert f">{html.escape(repr(token))}</text>" in page


def test_graph_view_snapshot_draws_each_node_of_the_pruned_graph_with_its_label():
    from tiny import tiny_model

    model = tiny_model("gemma3")
    graph = trace(model, random_transcoders(model), PROMPT, progress=False)
    view = GraphView(graph)
    view.node_threshold.value = 0.6
    page = view._repr_mimebundle_()["text/html"]
    pruned = view.pruned
    shown = list(graph_layout(pruned).xy)
    assert page.count("<circle") == len(shown)
    for node in shown:
        assert html.escape(pruned.node_label(node)) in page
    assert f"{pruned.n_features} features" in page


def test_nbconvert_without_widget_state_shows_the_snapshot(setup):
    import nbformat
    from nbconvert import HTMLExporter

    _, _, stats = setup
    view = FeatureInspector(stats)
    bundle = view._repr_mimebundle_()
    output = nbformat.v4.new_output("display_data", data=bundle)
    cell = nbformat.v4.new_code_cell("view", outputs=[output], execution_count=1)
    page, _ = HTMLExporter().from_notebook_node(nbformat.v4.new_notebook(cells=[cell]))
    # nbconvert re-serialises the HTML (attribute quotes and case), so look for its parts.
    shown = page.split('data-mime-type="text/html"')[1]
    assert "gsnb-static" in shown and 'class="gsnb-static-figure"' in shown
    assert "<b>feature 0</b>" in shown and "feature 0: activations" in shown
    assert view.widget.model_id not in page  # no widget view without the widget state
