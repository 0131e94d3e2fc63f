"""GraphView and the attribution-graph figure, driven from Python."""

from __future__ import annotations

import plotly.graph_objects as go
from test_circuits import PROMPT, random_transcoders
from tiny import tiny_model

from gsnb.circuits.tracing import trace
from gsnb.viz import plots
from gsnb.viz.graph_view import GraphView


def _graph():
    model = tiny_model("gemma3")
    return trace(model, random_transcoders(model), PROMPT, progress=False)


def test_figure_places_nodes_by_position_and_layer():
    graph = _graph().prune()
    fig = plots.attribution_graph(graph)
    markers = [t for t in fig.data if t.mode == "markers"]
    nodes = [n for t in markers for n in t.customdata]
    assert set(range(graph.slices()["logit"].start, graph.n_nodes)) <= set(nodes)
    for trace_ in markers:
        for node, x, y in zip(trace_.customdata, trace_.x, trace_.y):
            layer, pos = graph.node_layer_pos(node)
            assert y == layer and abs(x - pos) <= 0.4
    assert any(t.mode == "lines" for t in fig.data)


def test_sliders_prune_and_clicks_pin_and_group(tmp_path):
    graph = _graph()
    selected = []
    view = GraphView(graph, on_select=lambda *key: selected.append(key))
    full = view.pruned.n_features
    view.node_threshold.value = 0.6
    assert 0 < view.pruned.n_features < full
    assert f"{view.pruned.n_features} features" in view.scores.value
    view.select(0)
    view.select(1)
    assert selected == [tuple(view.pruned.features[i].tolist()) for i in (0, 1)]
    view.supernode_label.value = "group a"
    view.group_pinned()
    assert len(graph.supernodes["group a"]) == 2
    assert "group a" in {t.name for t in view.figure.data}
    page = view.to_html(tmp_path / "graph.html").read_text()
    assert "plotly" in page and "https://cdn" not in page.split("<body>")[0]
    assert isinstance(view.figure, go.FigureWidget)


def test_stats_give_hover_tokens_and_clicks_open_the_feature_inspector():
    import pytest
    import torch

    from gsnb.analysis.features import feature_stats

    model = tiny_model("gemma3")
    transcoders = random_transcoders(model)
    graph = trace(model, transcoders, PROMPT, progress=False)
    tokens = torch.randint(3, model.hf.config.vocab_size, (6, 10), generator=torch.Generator())
    stats = feature_stats(model, transcoders, tokens, k=3, progress=False)
    view = GraphView(graph, stats=stats)
    assert set(view.stats) == set(range(model.n_layers))

    # Hover text: the top tokens each feature's stats record, for every feature that fires.
    node = next(
        n
        for n in range(graph.n_features)
        if view.stats[int(graph.features[n, 0])].density[int(graph.features[n, 2])] > 0
    )
    layer, _, feat = graph.features[node].tolist()
    st = view.stats[layer]
    row = torch.searchsorted(st.windows, st.top_windows[feat, 0])
    peak = st.token_strs[int(st.window_tokens[row, st.top_positions[feat, 0]])]
    assert "fires on" in view.labels[node] and repr(peak) in view.labels[node]
    hover = [t for trace_ in view.figure.data if trace_.mode == "markers" for t in trace_.text]
    assert any("fires on" in t for t in hover)

    # A click opens that feature in the inspector of its layer.
    pruned_node = view._index.get(tuple(graph.features[node].tolist()))
    target = pruned_node if pruned_node is not None else 0
    view.select(target)
    layer, _, feat = view.pruned.features[target].tolist()
    assert view.inspector is not None and view.inspector.stats is view.stats[layer]
    assert view.inspector.feature.value == feat
    assert view.inspector_box.children == (view.inspector.widget,)

    with pytest.raises(ValueError, match="reading resid_post.0"):
        wrong = feature_stats(model, _resid_sae(model), tokens, k=3, progress=False)
        GraphView(graph, stats=wrong)


def _resid_sae(model):
    from gsnb.saes.sae import JumpReLUSAE, SAEConfig

    return JumpReLUSAE(SAEConfig(d_in=model.d_model, d_sae=8, site_in="resid_post.0"))


def test_gemma_scope_transcoders_reading_the_pre_gain_input_give_hover_stats():
    import torch

    from gsnb.analysis.features import feature_stats

    model = tiny_model("gemma2")
    transcoders = random_transcoders(model, reads="mlp_normalized")
    graph = trace(model, transcoders, PROMPT, progress=False)
    tokens = torch.randint(3, model.hf.config.vocab_size, (4, 8), generator=torch.Generator())
    stats = feature_stats(model, transcoders, tokens, k=2, progress=False)
    view = GraphView(graph, stats=stats)
    assert {layer: st.site_in for layer, st in view.stats.items()} == {
        layer: f"mlp_normalized.{layer}" for layer in range(model.n_layers)
    }


def test_a_supernode_label_shows_as_text_in_the_legend_never_as_markup():
    graph = _graph()
    view = GraphView(graph)
    view.select(0)
    view.group_pinned("<b>Texas</b>")
    names = {t.name for t in view.figure.data if t.mode == "markers"}
    assert "&lt;b&gt;Texas&lt;/b&gt;" in names and "<b>Texas</b>" not in names
