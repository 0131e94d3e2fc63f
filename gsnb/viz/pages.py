"""Self-contained HTML pages written to disk: plotly.js inlined, nothing fetched from the network,
so a page opens offline and without a kernel. Every page is written atomically: a reader sees
the previous file or the new one, never half of one.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path

import plotly.graph_objects as go

from gsnb.analysis.features import FeatureStats
from gsnb.core.files import atomic_write
from gsnb.viz.feature_plots import feature_density, feature_panels


def feature_page_html(stats: FeatureStats, features: Sequence[int]) -> str:
    """A self-contained page (plotly.js inlined once, no network) with the dictionary's density
    and, per feature, its header, histogram, logit effects, top examples and quantile samples."""
    from plotly.offline import get_plotlyjs

    def fig_html(fig: go.Figure | None, width: str = "600px") -> str:
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


def feature_page(stats: FeatureStats, path: str | os.PathLike, features: Sequence[int]) -> Path:
    """Write the dashboards of ``features`` (ids of ``stats``' SAE) to ``path`` as one page.

    >>> gsnb.viz.pages.feature_page(stats, "features.html", features=[12, 40])

    Raises ``IndexError`` for a feature outside ``[0, stats.d_sae)`` before writing anything.
    """
    bad = [int(f) for f in features if not 0 <= int(f) < stats.d_sae]
    if bad:
        raise IndexError(
            f"features {bad} are out of range: this SAE has {stats.d_sae}, "
            f"pick ids in 0..{stats.d_sae - 1}"
        )
    return _write(path, feature_page_html(stats, features))


def figure_page(fig: go.Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` to ``path`` as a full page with plotly.js inlined."""
    return _write(path, fig.to_html(include_plotlyjs=True, full_html=True))


def _write(path: str | os.PathLike, page: str) -> Path:
    target = Path(path)
    atomic_write(target, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return target
