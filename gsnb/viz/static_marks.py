"""Plotly traces as SVG marks for :mod:`gsnb.viz.static_figures`: the axis that maps data to
pixels, a trace reduced to what is drawn (lines, markers, bars, heatmap cells), and drawing it
on two axes with its hover text as tooltips."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from typing import NamedTuple

PALETTE = ["#4c78a8", "#f58518", "#e45756", "#72b7b2", "#54a24b", "#eeca3b", "#b279a2"]
"""Trace colours, in turn, for traces that set none."""
VIRIDIS = ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"]
"""Colour stops for heatmap cells and numeric marker colours (low to high)."""


class Axis(NamedTuple):
    """One axis: data ``lo..hi`` (log10 of the data on a log axis, index on a category axis)
    drawn from pixel ``start`` to ``end``."""

    lo: float
    hi: float
    log: bool
    cats: dict[str, int] | None
    start: float
    end: float

    def num(self, v) -> float | None:
        """``v`` in axis units (None for a gap, a missing category, or a non-positive log)."""
        if v is None:
            return None
        if self.cats is not None:
            return self.cats.get(str(v))
        v = float(v)
        if self.log:
            return math.log10(v) if v > 0 else None
        return v if math.isfinite(v) else None

    def px(self, v) -> float | None:
        t = self.num(v)
        return None if t is None else self.at(t)

    def at(self, t: float) -> float:
        """Pixel of axis units ``t``."""
        return self.start + (t - self.lo) / (self.hi - self.lo) * (self.end - self.start)


class Mark(NamedTuple):
    """A trace reduced to what is drawn: ``kind`` is lines, markers, bars or cells."""

    kind: str
    x: list
    y: list
    trace: object
    extra: dict


def trace_values(v) -> list:
    """A trace's data (None, tuple, or numpy array) as a list of Python values."""
    if v is None:
        return []
    return v.tolist() if hasattr(v, "tolist") else list(v)


def is_category(values: Sequence) -> bool:
    """Whether an axis with these values is one of categories (words, not numbers)."""
    return any(isinstance(v, str) for v in values)


def plain(text) -> str:
    """Plotly markup (``<br>``, escapes, tags) as escaped plain text for SVG."""
    text = re.sub(r"<br\s*/?>", "\n", str(text or ""))
    text = re.sub(r"</?(b|i|em|sub|sup|span|a)(\s[^>]*)?>", "", text)  # plotly's own tags
    return html.escape(html.unescape(text))


def text_svg(x, y, text: str, anchor: str = "start", extra: str = "") -> str:
    """An SVG ``<text>`` of already escaped ``text`` at pixel ``(x, y)``."""
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" {extra}>{text}</text>'


def to_mark(trace) -> Mark:
    """The drawable values of a trace (histograms binned here, as plotly.js does in the page)."""
    kind = trace.type
    if kind == "histogram":
        values = [float(v) for v in trace_values(trace.x) if v is not None]
        n = int(trace.nbinsx or 20)
        lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
        step = (hi - lo) / n or 1.0
        counts = [0] * n
        for v in values:
            counts[min(int((v - lo) / step), n - 1)] += 1
        mids = [lo + (i + 0.5) * step for i in range(n)]
        return Mark("bars", mids, counts, trace, {"horizontal": False})
    if kind == "bar":
        horizontal = trace.orientation == "h"
        return Mark(
            "bars", trace_values(trace.x), trace_values(trace.y), trace, {"horizontal": horizontal}
        )
    if kind == "heatmap":
        z = [trace_values(row) for row in trace_values(trace.z)]
        xs = trace_values(trace.x) if trace.x is not None else list(range(len(z[0]) if z else 0))
        ys = trace_values(trace.y) if trace.y is not None else list(range(len(z)))
        return Mark("cells", [str(v) for v in xs], [str(v) for v in ys], trace, {"z": z})
    mode = trace.mode or "lines+markers"
    kind = "markers" if "markers" in mode else "lines"
    return Mark(
        kind, trace_values(trace.x), trace_values(trace.y), trace, {"lines": "lines" in mode}
    )


def draw(m: Mark, xa: Axis, ya: Axis, default: str, bargap) -> list[str]:
    """SVG elements of one mark."""
    t = m.trace
    if m.kind == "cells":
        return _cells(m, xa, ya)
    if m.kind == "bars":
        return _bars(m, xa, ya, css_color(t.marker.color, default), bargap)
    out = []
    if m.kind == "lines" or m.extra.get("lines"):
        color = css_color(t.line.color, default)
        width = t.line.width or 2
        path, pen = [], "M"
        for x, y in zip(m.x, m.y):
            px, py = xa.px(x), ya.px(y)
            if px is None or py is None:
                pen = "M"
                continue
            path.append(f"{pen}{px:.1f},{py:.1f}")
            pen = "L"
        opacity = t.opacity if t.opacity is not None else 1
        out.append(
            f'<path d="{" ".join(path)}" fill="none" stroke="{color}" '
            f'stroke-width="{width}" opacity="{opacity}"/>'
        )
    if m.kind == "markers":
        out += _markers(m, xa, ya, default)
    return out


def _each(value, n: int) -> list:
    """A per-point list from a scalar or a sequence of ``n``."""
    if isinstance(value, (list, tuple)) or getattr(value, "ndim", 0) > 0:
        return trace_values(value)
    return [value] * n


def css_color(value, default: str, lo: float = 0.0, hi: float = 1.0) -> str:
    """A CSS colour for SVG; numbers map onto :data:`VIRIDIS` over ``lo..hi``."""
    if value is None or isinstance(value, (list, tuple)):
        return default
    if isinstance(value, (int, float)):
        s = (float(value) - lo) / (hi - lo) if hi > lo else 0.5
        s = min(max(s, 0.0), 1.0) * (len(VIRIDIS) - 1)
        a, b = VIRIDIS[int(s)], VIRIDIS[min(int(s) + 1, len(VIRIDIS) - 1)]
        f = s - int(s)
        rgb = [int(a[i : i + 2], 16) * (1 - f) + int(b[i : i + 2], 16) * f for i in (1, 3, 5)]
        return "#" + "".join(f"{round(c):02x}" for c in rgb)
    return html.escape(str(value))


def _markers(m: Mark, xa: Axis, ya: Axis, default: str) -> list[str]:
    t, n = m.trace, len(m.x)
    sizes = _each(t.marker.size or 8, n)
    colors = _each(t.marker.color, n)
    numbers = [c for c in colors if isinstance(c, (int, float))]
    lo, hi = (min(numbers), max(numbers)) if numbers else (0, 1)
    outline = _each(t.marker.line.width or 0, n)
    texts = _each(t.text, n)
    out = []
    for i, (x, y) in enumerate(zip(m.x, m.y)):
        px, py = xa.px(x), ya.px(y)
        if px is None or py is None:
            continue
        tip = plain(texts[i]) if texts[i] is not None else f"{x}, {y}"
        out.append(
            f'<circle cx="{px:.1f}" cy="{py:.1f}" r="{float(sizes[i]) / 2:.1f}" '
            f'fill="{css_color(colors[i], default, lo, hi)}" stroke="black" '
            f'stroke-width="{outline[i]}"><title>{tip}</title></circle>'
        )
    return out


def _bars(m: Mark, xa: Axis, ya: Axis, color: str, bargap) -> list[str]:
    """Bars from the baseline (0, or the axis' low end on a log axis) to each value; a bar
    spans the room to its neighbours, less ``bargap``."""
    horizontal = m.extra["horizontal"]
    pos, val = (ya, xa) if horizontal else (xa, ya)
    where, values = (m.y, m.x) if horizontal else (m.x, m.y)
    centers = [pos.px(v) for v in where]
    known = sorted(c for c in centers if c is not None)
    gaps = [b - a for a, b in zip(known, known[1:]) if b > a]
    half = (min(gaps) if gaps else 20.0) / 2 * (1 - (0.2 if bargap is None else bargap))
    zero = val.at(val.lo) if val.log else val.px(0)
    zero = zero if zero is not None else val.at(val.lo)
    out = []
    for c, v, w in zip(centers, values, where):
        end = val.px(v)
        if c is None or end is None:
            continue
        a, b = sorted((zero, end))
        if horizontal:
            rect = f'x="{a:.1f}" y="{c - half:.1f}" width="{b - a:.1f}" height="{2 * half:.1f}"'
        else:
            rect = f'x="{c - half:.1f}" y="{a:.1f}" width="{2 * half:.1f}" height="{b - a:.1f}"'
        tip = html.escape(f"{w}: {v:.4g}" if isinstance(v, (int, float)) else f"{w}: {v}")
        out.append(f'<rect {rect} fill="{color}"><title>{tip}</title></rect>')
    return out


def _cells(m: Mark, xa: Axis, ya: Axis) -> list[str]:
    """Heatmap cells coloured on :data:`VIRIDIS` from the smallest to the largest value."""
    z = m.extra["z"]
    flat = [float(v) for row in z for v in row if v is not None and math.isfinite(float(v))]
    lo, hi = (min(flat), max(flat)) if flat else (0.0, 1.0)
    out = []
    for r, ylabel in enumerate(m.y):
        for c, xlabel in enumerate(m.x):
            v = z[r][c]
            if v is None or not math.isfinite(float(v)):
                continue
            (ax, bx), (ay, by) = (
                sorted((xa.at(xa.num(xlabel) - 0.5), xa.at(xa.num(xlabel) + 0.5))),
                sorted((ya.at(ya.num(ylabel) - 0.5), ya.at(ya.num(ylabel) + 0.5))),
            )
            out.append(
                f'<rect x="{ax:.1f}" y="{ay:.1f}" width="{bx - ax:.1f}" height="{by - ay:.1f}" '
                f'fill="{css_color(float(v), "#ccc", lo, hi)}"><title>'
                f"{html.escape(f'{ylabel} · {xlabel}: {float(v):.4g}')}</title></rect>"
            )
    return out
