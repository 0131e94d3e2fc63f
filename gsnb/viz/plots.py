"""plotly figures: pure functions from data to a figure (no model calls, no maths beyond layout).

This module holds the model-wide, training, evaluation and steering figures, and is the one place
to import figures from: the feature dashboards live in :mod:`gsnb.viz.feature_plots` and the
attribution graph in :mod:`gsnb.viz.graph_plot`, both re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
import torch

from gsnb.core.sites import parse_site
from gsnb.viz.feature_plots import (
    activation_histogram,
    colored_tokens_html,
    density_marker,
    examples_html,
    feature_density,
    feature_header_html,
    feature_panels,
    logit_effects_bars,
    prompt_features_html,
    quantiles_html,
)
from gsnb.viz.graph_plot import attribution_graph

__all__ = [
    "activation_histogram",
    "activation_norms",
    "attribution_graph",
    "colored_tokens_html",
    "density_marker",
    "examples_html",
    "feature_density",
    "feature_header_html",
    "feature_panels",
    "l0_vs_delta_loss",
    "layer_position_heatmap",
    "logit_effects_bars",
    "metric_by_layer",
    "prompt_features_html",
    "quantiles_html",
    "strength_sweep",
    "training_curves",
]


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
    """The Gemma Scope paper's fidelity plot: one point per SAE, coloured by site kind; hovering
    a point shows its loss recovered against zero and mean ablation as well.

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
                customdata=[[r.loss_recovered_zero, r.loss_recovered_mean] for _, r in items],
                marker=dict(
                    size=9,
                    color=[layer for layer, _ in items],
                    colorscale="Viridis",
                    line=dict(width=1, color="black"),
                ),
                hovertemplate="%{text}<br>L0 %{x:.1f}<br>delta loss %{y:.4f}"
                "<br>loss recovered %{customdata[0]:.1%} (zero) / %{customdata[1]:.1%} (mean)"
                "<extra>" + kind + "</extra>",
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
    """One line per site kind of ``metric`` (an :class:`EvalResult` field, such as ``"fvu"``,
    ``"delta_loss"`` or ``"loss_recovered_mean"``) against layer."""
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
