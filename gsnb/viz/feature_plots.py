"""Feature dashboard figures and HTML: one feature's panels read from its
:class:`gsnb.FeatureStats` (histogram, logit effects, coloured examples, header), the
dictionary's density, and a prompt's strongest features. Data in, figure or HTML out."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import plotly.graph_objects as go
import torch


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
