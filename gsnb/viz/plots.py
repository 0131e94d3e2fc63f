"""plotly figures: pure functions from data to a figure (no model calls, no maths beyond layout)."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
import torch

from gsnb.core.sites import parse_site


def activation_norms(
    norms: Mapping[str, torch.Tensor], title: str = "Activation norms"
) -> go.Figure:
    """Mean L2 norm per layer, one line per site kind.

    Args:
        norms: ``{site: scalar tensor}``, e.g. ``{"resid_post.3": tensor(41.2), ...}``.
    """
    by_kind: dict[str, list[tuple[int, float]]] = {}
    for site, value in norms.items():
        parsed = parse_site(site)
        by_kind.setdefault(parsed.kind, []).append((parsed.layer or 0, float(value)))
    fig = go.Figure()
    for kind, points in by_kind.items():
        points.sort()
        fig.add_trace(
            go.Scatter(
                x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers", name=kind
            )
        )
    fig.update_layout(
        title=title,
        xaxis_title="layer",
        yaxis_title="mean L2 norm",
        yaxis_type="log",
        template="plotly_white",
    )
    return fig


def layer_position_heatmap(
    values: torch.Tensor,
    str_tokens: Sequence[str],
    layers: Sequence[int] | None = None,
    title: str = "",
    colorbar: str = "",
) -> go.Figure:
    """A ``[layer, pos]`` heatmap with the tokens along x.

    Args:
        values: ``[n_layers, pos]``.
        str_tokens: the ``pos`` tokens as strings.
        layers: labels for the rows (default ``0..n_layers-1``).
    """
    layers = list(layers) if layers is not None else list(range(values.shape[0]))
    labels = [f"{i}: {tok!r}"[:24] for i, tok in enumerate(str_tokens)]
    fig = go.Figure(
        go.Heatmap(
            z=values.float().cpu().numpy(),
            x=labels,
            y=layers,
            colorscale="Viridis",
            colorbar=dict(title=colorbar),
        )
    )
    fig.update_layout(
        title=title, xaxis_title="token", yaxis_title="layer", template="plotly_white"
    )
    return fig


_NODE_COLORS = {"feature": "#4c78a8", "error": "#9d9d9d", "token": "#54a24b", "logit": "#e45756"}


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
    feature_labels = feature_labels or {}
    influence = (graph.influence() + graph.logit_weights()).tolist()
    top = max(max(influence), 1e-12)
    cells: dict[tuple[int, int], list[int]] = {}
    for node in range(graph.n_nodes):
        kind = graph.node_kind(node)
        if kind == "error" and not graph.adjacency[:, node].any():
            continue  # error nodes with no remaining edges only clutter the picture
        cells.setdefault(graph.node_layer_pos(node), []).append(node)
    xy: dict[int, tuple[float, float]] = {}
    for (layer, pos), nodes in cells.items():
        for i, node in enumerate(nodes):
            spread = 0.8 * (i + 0.5) / len(nodes) - 0.4 if len(nodes) > 1 else 0.0
            xy[node] = (pos + spread, layer)

    fig = go.Figure()
    weights = graph.adjacency.abs() / graph.adjacency.abs().sum(1, keepdim=True).clamp_min(1e-12)
    shown = torch.zeros(graph.n_nodes, dtype=torch.bool)
    shown[list(xy)] = True
    weights = weights * shown[:, None] * shown[None, :]
    n_edges = min(max_edges, int((weights > 0).sum()))
    segments: dict[tuple[bool, int], tuple[list, list]] = {}
    if n_edges:
        flat = weights.flatten().topk(n_edges)
        strongest = float(flat.values[0])
        for value, index in zip(flat.values.tolist(), flat.indices.tolist()):
            target, source = divmod(index, graph.n_nodes)
            band = 0 if value >= 0.5 * strongest else 1 if value >= 0.15 * strongest else 2
            xs, ys = segments.setdefault(
                (bool(graph.adjacency[target, source] > 0), band), ([], [])
            )
            xs += [xy[source][0], xy[target][0], None]
            ys += [xy[source][1], xy[target][1], None]
    for (positive, band), (xs, ys) in segments.items():
        rgb = "76,120,168" if positive else "228,87,86"
        alpha, width = ((0.8, 3.0), (0.45, 1.5), (0.2, 1.0))[band]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                hoverinfo="skip",
                showlegend=False,
                line=dict(color=f"rgba({rgb},{alpha})", width=width),
            )
        )
    in_supernode = {n: label for label, nodes in graph.supernodes.items() for n in nodes}
    groups: dict[str, list[int]] = {}
    for node in xy:
        key = in_supernode.get(node, graph.node_kind(node))
        groups.setdefault(key, []).append(node)
    palette = ["#f58518", "#b279a2", "#72b7b2", "#eeca3b", "#ff9da6", "#9d755d"]
    for i, (key, nodes) in enumerate(groups.items()):
        color = _NODE_COLORS.get(key, palette[i % len(palette)])
        fig.add_trace(
            go.Scatter(
                x=[xy[n][0] for n in nodes],
                y=[xy[n][1] for n in nodes],
                mode="markers",
                name=key,
                customdata=nodes,
                marker=dict(
                    size=[6 + 24 * (influence[n] / top) ** 0.5 for n in nodes],
                    color=color,
                    line=dict(width=[3 if n in highlight else 0.5 for n in nodes], color="black"),
                ),
                text=[
                    _hover_text(graph.node_label(n))
                    + (f"<br>{_hover_text(feature_labels[n])}" if n in feature_labels else "")
                    + f"<br>influence {influence[n]:.3g}"
                    for n in nodes
                ],
                hovertemplate="%{text}<extra></extra>",
            )
        )
    labels = [f"{i}: {tok!r}"[:18] for i, tok in enumerate(graph.str_tokens)]
    fig.update_layout(
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
    return fig


def training_curves(history, title: str = "Training") -> go.Figure:
    """L0 and FVU against step, one line per SAE.

    Args:
        history: a list of :class:`gsnb.saes.train.StepMetrics`, or ``{name: list}`` for a suite.
    """
    from plotly.subplots import make_subplots

    runs = history if isinstance(history, Mapping) else {"sae": history}
    fig = make_subplots(rows=1, cols=2, subplot_titles=("L0 (active features per token)", "FVU"))
    for name, rows in runs.items():
        steps = [r.step for r in rows]
        fig.add_trace(
            go.Scatter(x=steps, y=[r.l0 for r in rows], name=name, legendgroup=name, mode="lines"),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=[r.fvu for r in rows],
                name=name,
                legendgroup=name,
                mode="lines",
                showlegend=False,
            ),
            row=1,
            col=2,
        )
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_layout(title=title, template="plotly_white")
    return fig


def _by_kind(results: Mapping) -> dict[str, list[tuple[int, object]]]:
    groups: dict[str, list[tuple[int, object]]] = {}
    for name, result in results.items():
        kind, _, layer = name.rpartition(".")
        groups.setdefault(kind or name, []).append((int(layer) if layer.isdigit() else 0, result))
    return {kind: sorted(items, key=lambda item: item[0]) for kind, items in groups.items()}


def l0_vs_delta_loss(results: Mapping, title: str = "Delta LM loss against L0") -> go.Figure:
    """The Gemma Scope paper's fidelity plot: one point per SAE, coloured by site kind.

    Args:
        results: ``{name: EvalResult}`` with names like ``"resid_post.3"`` or
            ``"transcoder.3"`` (what :func:`gsnb.evaluate` returns for a suite).
    """
    fig = go.Figure()
    for kind, items in _by_kind(results).items():
        fig.add_trace(
            go.Scatter(
                x=[r.l0 for _, r in items],
                y=[r.delta_loss for _, r in items],
                mode="markers",
                name=kind,
                text=[f"layer {layer}" for layer, _ in items],
                marker=dict(
                    size=9,
                    color=[layer for layer, _ in items],
                    colorscale="Viridis",
                    line=dict(width=1, color="black"),
                ),
                hovertemplate="%{text}<br>L0 %{x:.1f}<br>delta loss %{y:.4f}<extra>"
                + kind
                + "</extra>",
            )
        )
    fig.update_layout(
        title=title,
        xaxis_title="L0",
        yaxis_title="delta LM loss (nats)",
        xaxis_type="log",
        template="plotly_white",
    )
    return fig


def metric_by_layer(results: Mapping, metric: str = "fvu", title: str | None = None) -> go.Figure:
    """One line per site kind of ``metric`` (an :class:`EvalResult` field) against layer."""
    fig = go.Figure()
    for kind, items in _by_kind(results).items():
        fig.add_trace(
            go.Scatter(
                x=[layer for layer, _ in items],
                y=[r[metric] for _, r in items],
                mode="lines+markers",
                name=kind,
            )
        )
    fig.update_layout(
        title=title or f"{metric} by layer",
        xaxis_title="layer",
        yaxis_title=metric,
        template="plotly_white",
    )
    return fig


def strength_sweep(
    strengths: Sequence[float],
    probs_by_token: Mapping[str, Sequence[float]],
    title: str = "Next-token probability against steering strength",
    xaxis_title: str = "strength",
    mark: float | None = None,
) -> go.Figure:
    """One line per target token of its next-token probability against steering strength.

    Args:
        strengths: the ``n`` strengths tried.
        probs_by_token: ``{legend label: [n] probabilities}``, e.g. from
            :func:`gsnb.analysis.steering.strength_sweep` as ``dict(zip(sweep.tokens, sweep.probs.T))``.
        mark: a strength to mark with a dashed vertical line (the one in use).
    """
    fig = go.Figure()
    for token, probs in probs_by_token.items():
        values = probs.tolist() if isinstance(probs, torch.Tensor) else [float(p) for p in probs]
        fig.add_trace(go.Scatter(x=list(strengths), y=values, mode="lines+markers", name=token))
    fig.update_layout(
        title=title,
        xaxis_title=xaxis_title,
        yaxis_title="probability",
        template="plotly_white",
        hovermode="x unified",
    )
    if mark is not None:
        fig.add_vline(x=mark, line_dash="dash", line_color="gray")
    return fig


# --- feature dashboards -------------------------------------------------------------------------


def activation_histogram(
    edges: torch.Tensor, counts: torch.Tensor, title: str = "Activation histogram"
) -> go.Figure:
    """Counts of a feature's non-zero activations in log-spaced bins (log x axis).

    Args:
        edges: ``[n + 1]`` bin edges; counts: ``[n]`` (both from :meth:`FeatureStats.histogram`).
    """
    e, c = edges.double().tolist(), counts.tolist()
    mids = [(a * b) ** 0.5 for a, b in zip(e, e[1:], strict=False)]
    fig = go.Figure(
        go.Bar(
            x=mids,
            y=c,
            width=[b - a for a, b in zip(e, e[1:], strict=False)],
            marker_color="#f58518",
            customdata=list(zip(e, e[1:], strict=False)),
            hovertemplate="%{customdata[0]:.3g}–%{customdata[1]:.3g}: %{y}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title if c else f"{title} (never fires)",
        xaxis=dict(type="log", title="activation"),
        yaxis_title="count",
        template="plotly_white",
        height=260,
        margin=dict(l=50, r=20, t=40, b=40),
        bargap=0,
    )
    return fig


def logit_effects_bars(effects, title: str = "Logit effects") -> go.Figure:
    """Bars of the tokens a feature promotes (right, blue) and suppresses (left, red).

    Args:
        effects: a :class:`gsnb.LogitEffects` (``FeatureStats.logit_effects(feature, k)``).
    """
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("suppressed", "promoted"), horizontal_spacing=0.3
    )
    for col, tokens, values, color in (
        (1, effects.bottom_tokens, effects.bottom_values, "#e45756"),
        (2, effects.top_tokens, effects.top_values, "#4c78a8"),
    ):
        labels = [f"{i + 1}. {tok!r}"[:24] for i, tok in enumerate(tokens)]
        fig.add_trace(
            go.Bar(
                x=list(values),
                y=labels,
                orientation="h",
                marker_color=color,
                showlegend=False,
                hovertemplate="%{y}: %{x:.3g}<extra></extra>",
            ),
            row=1,
            col=col,
        )
        fig.update_yaxes(autorange="reversed", row=1, col=col)
    fig.update_layout(
        title=title,
        template="plotly_white",
        height=80 + 22 * max(len(effects.top_tokens), 1),
        margin=dict(l=20, r=20, t=60, b=30),
    )
    return fig


def feature_density(
    density: torch.Tensor, mark: int | None = None, title: str = "Feature density"
) -> go.Figure:
    """Histogram over the whole dictionary of log10 firing density (dead features counted in the
    title); ``mark`` draws a dashed line at that feature's density.

    Args:
        density: ``[d_sae]`` fraction of tokens each feature fires on.
    """
    alive = density > 0
    logd = density[alive].double().log10().tolist()
    fig = go.Figure(go.Histogram(x=logd, nbinsx=60, marker_color="#72b7b2"))
    n_dead = int((~alive).sum())
    fig.update_layout(
        title=f"{title} · {len(logd)} alive, {n_dead} dead of {len(density)}",
        xaxis_title="log10 density (fraction of tokens)",
        yaxis_title="features",
        template="plotly_white",
        height=260,
        margin=dict(l=50, r=20, t=40, b=40),
    )
    if mark is not None:
        fig.update_layout(shapes=density_marker(density, mark))
    return fig


def colored_tokens_html(
    str_tokens: Sequence[str],
    activations: Sequence[float],
    max_value: float | None = None,
    highlight: int | None = None,
) -> str:
    """Tokens as spans shaded by activation (self-contained HTML, no scripts).

    Each span carries ``data-act`` (the activation) and a ``title`` tooltip; the token at
    ``highlight`` gets an outline. ``max_value`` sets full colour (default: the largest value).
    """
    values = [float(a) for a in activations]
    top = max_value if max_value and max_value > 0 else max([v for v in values if v > 0] or [1.0])
    spans = []
    for i, (tok, v) in enumerate(zip(str_tokens, values, strict=True)):
        alpha = min(max(v / top, 0.0), 1.0)
        text = html.escape(tok.replace("\n", "↵"))
        border = "outline:1px solid #000;" if i == highlight else ""
        spans.append(
            f'<span class="gsnb-tok" data-act="{v:.6g}" title="{html.escape(repr(tok))}: {v:.4g}"'
            f' style="background:rgba(255,127,14,{alpha:.3f});{border}">{text}</span>'
        )
    return (
        '<div class="gsnb-tokens" style="font-family:monospace;white-space:pre-wrap;'
        f'line-height:1.6">{"".join(spans)}</div>'
    )


def examples_html(
    examples, max_value: float | None = None, before: int = 24, after: int = 8
) -> str:
    """Contexts (:class:`gsnb.Example`) as rows of coloured tokens, cut to ``before`` tokens
    before and ``after`` after the picked position, which is outlined."""
    if not examples:
        return "<i>no examples</i>"
    rows = []
    for ex in examples:
        lo, hi = max(ex.position - before, 0), ex.position + after + 1
        tokens = colored_tokens_html(
            ex.str_tokens[lo:hi], ex.activations[lo:hi], max_value, ex.position - lo
        )
        rows.append(
            f'<div class="gsnb-example" style="display:flex;gap:8px;border-bottom:1px solid #eee">'
            f'<span style="min-width:60px;color:#555">{ex.activation:.3g}</span>{tokens}</div>'
        )
    return "".join(rows)


def feature_header_html(stats, feature: int) -> str:
    """Density, max and mean activation of ``feature`` and its Neuronpedia link when known."""
    f = int(feature)
    link = ""
    if stats.neuronpedia_id:
        url = f"https://www.neuronpedia.org/{stats.neuronpedia_id}/{f}"
        link = f' · <a href="{html.escape(url)}" target="_blank">Neuronpedia</a>'
    return (
        f'<div class="gsnb-header"><b>feature {f}</b> of {html.escape(stats.site_in)} · density '
        f"{float(stats.density[f]):.3%} · max {float(stats.max_activation[f]):.4g} · mean "
        f"{float(stats.mean_activation[f]):.4g}{link}</div>"
    )


def quantiles_html(groups, max_value: float | None = None) -> str:
    """Groups of examples from :meth:`FeatureStats.quantile_examples`, strongest group first."""
    parts = []
    for i, group in reversed(list(enumerate(groups))):
        if group:
            lo, hi = group[0].activation, group[-1].activation
            parts.append(
                f"<div><b>quantile {i + 1}/{len(groups)}</b> ({lo:.3g}–{hi:.3g})</div>"
                + examples_html(group, max_value)
            )
    return "".join(parts) or "<i>no samples: the feature never fired</i>"


def feature_panels(stats, feature: int, k: int = 10) -> dict:
    """``{"header", "top", "quantiles": html str, "histogram", "logits": go.Figure | None}``
    for one feature, read from its stats (nothing recomputed)."""
    f, peak = int(feature), float(stats.max_activation[int(feature)])
    edges, counts = stats.histogram(f)
    has_logits = stats.logit_top_ids.shape[1] > 0
    return {
        "header": feature_header_html(stats, f),
        "histogram": activation_histogram(edges, counts, f"feature {f}: activations"),
        "logits": logit_effects_bars(stats.logit_effects(f, k), f"feature {f}: logit effects")
        if has_logits
        else None,
        "top": examples_html(stats.top_examples(f), peak),
        "quantiles": quantiles_html(stats.quantile_examples(f), peak),
    }


def feature_page_html(stats, features: Sequence[int]) -> str:
    """A self-contained page (plotly.js inlined once, no network) with the dictionary's density
    and, per feature, its header, histogram, logit effects, top examples and quantile samples."""
    from plotly.offline import get_plotlyjs

    def fig_html(fig, width: str = "600px") -> str:
        if fig is None:
            return ""
        return fig.to_html(full_html=False, include_plotlyjs=False, default_width=width)

    body = [
        f"<h1>{html.escape(repr(stats))}</h1>",
        fig_html(feature_density(stats.density), "100%"),
    ]
    for f in features:
        p = feature_panels(stats, f)
        body.append(
            f'<section class="gsnb-feature" id="feature-{int(f)}">{p["header"]}'
            f'<div style="display:flex;flex-wrap:wrap;gap:8px">{fig_html(p["histogram"])}'
            f"{fig_html(p['logits'])}</div><h3>Top examples</h3>{p['top']}"
            f"<h3>Samples by quantile</h3>{p['quantiles']}</section><hr>"
        )
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>gsnb features</title>'
        f'<script type="text/javascript">{get_plotlyjs()}</script></head>'
        f'<body style="font-family:sans-serif;margin:16px">{"".join(body)}</body></html>'
    )


def prompt_features_html(
    str_tokens: Sequence[str], rows: Sequence[Sequence[tuple[str, int, float]]]
) -> str:
    """A table: each token and its strongest features as ``site #feature (activation)``.

    Args:
        rows: per token, ``(site, feature, activation)`` strongest first.
    """
    lines = [
        f"<tr><td>{i}</td><td><code>{html.escape(repr(tok))}</code></td><td>"
        + ", ".join(f"{html.escape(s)} #{f} ({a:.3g})" for s, f, a in row)
        + "</td></tr>"
        for i, (tok, row) in enumerate(zip(str_tokens, rows, strict=True))
    ]
    return (
        '<table class="gsnb-prompt-features"><tr><th>pos</th><th>token</th>'
        f"<th>top features</th></tr>{''.join(lines)}</table>"
    )


def density_marker(density: torch.Tensor, feature: int) -> list[dict]:
    """Layout shapes marking ``feature``'s log10 density on :func:`feature_density`'s figure."""
    d = float(density[int(feature)])
    if d <= 0:
        return []
    x = math.log10(d)
    line = dict(color="black", dash="dash")
    return [dict(type="line", x0=x, x1=x, y0=0, y1=1, yref="paper", line=line)]


def _hover_text(text: str) -> str:
    """Plain text as plotly hover markup: escaped, newlines as line breaks."""
    return html.escape(text).replace("\n", "<br>")
