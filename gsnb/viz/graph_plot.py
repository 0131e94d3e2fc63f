"""The attribution-graph figure: tokens along x, layers along y, drawn in three phases: the
layout (where each node sits), the edges (the strongest normalised weights, banded by
strength), and the nodes (sized by influence, coloured by kind or supernode)."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import plotly.graph_objects as go
import torch

NODE_COLORS = {"feature": "#4c78a8", "error": "#9d9d9d", "token": "#54a24b", "logit": "#e45756"}
"""Colour per node kind; supernodes take colours from ``SUPERNODE_PALETTE`` in turn."""
SUPERNODE_PALETTE = ["#f58518", "#b279a2", "#72b7b2", "#eeca3b", "#ff9da6", "#9d755d"]
# (alpha, line width) of the edges at or above 50%, 15% and below 15% of the strongest weight.
_EDGE_BANDS = ((0.5, 0.8, 3.0), (0.15, 0.45, 1.5), (0.0, 0.2, 1.0))


class GraphLayout(NamedTuple):
    """Where the drawn nodes of a graph sit."""

    xy: dict[int, tuple[float, float]]
    """``{node: (x, y)}``: x is the token position (nodes sharing a cell spread within
    ±0.4), y the layer (-1 for embeddings, ``n_layers`` for logits)."""
    shown: torch.Tensor
    """``[n_nodes]`` bool: the nodes in ``xy``."""


class NodeStyle(NamedTuple):
    """What the node phase needs beyond the graph and its layout."""

    influence: list[float]
    """Per node, its influence on the logits (logit nodes: their weight)."""
    labels: Mapping[int, str]
    """Extra plain-text hover per node index."""
    highlight: Sequence[int]
    """Node indices drawn with a thick outline."""


def attribution_graph(
    graph,
    feature_labels: Mapping[int, str] | None = None,
    max_edges: int = 400,
    highlight: Sequence[int] = (),
    title: str | None = None,
) -> go.Figure:
    """An attribution graph drawn with tokens along x and layers along y.

    Nodes are sized by their influence on the logits and coloured by kind (feature, error,
    token, logit); supernodes get their own colour and legend entry; edges are drawn for the
    ``max_edges`` strongest normalised weights, blue for positive and red for negative.

    Args:
        graph: a :class:`gsnb.Graph` (usually pruned).
        feature_labels: extra hover text per node index (for example a feature's top tokens);
            plain text, with newlines for line breaks.
        highlight: node indices drawn with a thick outline (pinned nodes).
    """
    layout = graph_layout(graph)
    style = NodeStyle(
        (graph.influence() + graph.logit_weights()).tolist(), feature_labels or {}, highlight
    )
    fig = go.Figure([*edge_traces(graph, layout, max_edges), *node_traces(graph, layout, style)])
    fig.update_layout(**_axes(graph, title))
    return fig


def graph_layout(graph) -> GraphLayout:
    """Place every node at its (position, layer) cell, spreading the nodes that share a cell;
    error nodes with no remaining edges are left out (they only clutter the picture)."""
    cells: dict[tuple[int, int], list[int]] = {}
    for node in range(graph.n_nodes):
        if graph.node_kind(node) == "error" and not graph.adjacency[:, node].any():
            continue
        cells.setdefault(graph.node_layer_pos(node), []).append(node)
    xy: dict[int, tuple[float, float]] = {}
    for (layer, pos), nodes in cells.items():
        for i, node in enumerate(nodes):
            spread = 0.8 * (i + 0.5) / len(nodes) - 0.4 if len(nodes) > 1 else 0.0
            xy[node] = (pos + spread, layer)
    shown = torch.zeros(graph.n_nodes, dtype=torch.bool)
    shown[list(xy)] = True
    return GraphLayout(xy, shown)


def edge_traces(graph, layout: GraphLayout, max_edges: int) -> list[go.Scatter]:
    """One line trace per (sign, strength band) holding the ``max_edges`` strongest edges
    between shown nodes, weights normalised by each target's total absolute input."""
    weights = graph.adjacency.abs() / graph.adjacency.abs().sum(1, keepdim=True).clamp_min(1e-12)
    weights = weights * layout.shown[:, None] * layout.shown[None, :]
    n_edges = min(max_edges, int((weights > 0).sum()))
    if not n_edges:
        return []
    flat = weights.flatten().topk(n_edges)
    strongest = float(flat.values[0])
    segments: dict[tuple[bool, int], tuple[list, list]] = {}
    for value, index in zip(flat.values.tolist(), flat.indices.tolist(), strict=True):
        target, source = divmod(index, graph.n_nodes)
        band = next(i for i, (cut, *_) in enumerate(_EDGE_BANDS) if value >= cut * strongest)
        positive = bool(graph.adjacency[target, source] > 0)
        xs, ys = segments.setdefault((positive, band), ([], []))
        (x0, y0), (x1, y1) = layout.xy[source], layout.xy[target]
        xs += [x0, x1, None]
        ys += [y0, y1, None]
    traces = []
    for (positive, band), (xs, ys) in segments.items():
        rgb = "76,120,168" if positive else "228,87,86"
        _, alpha, width = _EDGE_BANDS[band]
        line = dict(color=f"rgba({rgb},{alpha})", width=width)
        traces.append(
            go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False, line=line)
        )
    return traces


def node_traces(graph, layout: GraphLayout, style: NodeStyle) -> list[go.Scatter]:
    """One marker trace per node kind or supernode (its legend entry), the node indices in
    ``customdata`` so that a click can tell which node it hit."""
    in_supernode = {n: label for label, nodes in graph.supernodes.items() for n in nodes}
    groups: dict[str, list[int]] = {}
    for node in layout.xy:
        groups.setdefault(in_supernode.get(node, graph.node_kind(node)), []).append(node)
    top = max(max(style.influence), 1e-12)
    traces = []
    for i, (key, nodes) in enumerate(groups.items()):
        color = NODE_COLORS.get(key, SUPERNODE_PALETTE[i % len(SUPERNODE_PALETTE)])
        outline = [3 if n in style.highlight else 0.5 for n in nodes]
        traces.append(
            go.Scatter(
                x=[layout.xy[n][0] for n in nodes],
                y=[layout.xy[n][1] for n in nodes],
                mode="markers",
                name=hover_text(key),  # a supernode's label is the user's text
                customdata=nodes,
                marker=dict(
                    size=[6 + 24 * (style.influence[n] / top) ** 0.5 for n in nodes],
                    color=color,
                    line=dict(width=outline, color="black"),
                ),
                text=[_node_hover(graph, n, style) for n in nodes],
                hovertemplate="%{text}<extra></extra>",
            )
        )
    return traces


def _node_hover(graph, node: int, style: NodeStyle) -> str:
    parts = [graph.node_label(node)]
    if node in style.labels:
        parts.append(style.labels[node])
    return "<br>".join(map(hover_text, parts)) + f"<br>influence {style.influence[node]:.3g}"


def _axes(graph, title: str | None) -> dict:
    """Layout keywords: token labels along x, ``emb``, ``L0``... ``logits`` along y."""
    labels = [f"{i}: {tok!r}"[:18] for i, tok in enumerate(graph.str_tokens)]
    return dict(
        title=title or f"Attribution graph · {graph.n_features} features",
        xaxis=dict(
            tickmode="array", tickvals=list(range(graph.n_pos)), ticktext=labels, title="token"
        ),
        yaxis=dict(
            tickmode="array",
            tickvals=[-1, *range(graph.n_layers), graph.n_layers],
            ticktext=["emb", *[f"L{i}" for i in range(graph.n_layers)], "logits"],
            title="layer",
        ),
        template="plotly_white",
        height=200 + 32 * graph.n_layers,
        hovermode="closest",
    )


def hover_text(text: str) -> str:
    """Plain text as plotly markup (hover text, legend names): escaped, newlines as breaks."""
    return html.escape(text).replace("\n", "<br>")
