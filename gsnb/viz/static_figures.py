"""Plotly figures as static SVG, for where no JavaScript runs: a widget's fallback on GitHub,
nbviewer or an nbconvert page. Draws the traces gsnb's figures use (scatter lines and markers,
bars, histograms, heatmaps) on their axes and subplots, with the title, axis titles and ticks,
subplot titles, line shapes and a legend; hover text becomes the SVG tooltip (``<title>``).
Not a general plotly renderer: only colour, size and line width carry over from the styling."""

from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go

from gsnb.viz.static_marks import (
    PALETTE,
    Axis,
    Mark,
    css_color,
    draw,
    is_category,
    plain,
    text_svg,
    to_mark,
)

_CHAR = 6.2  # pixels per character at font size 11, to size margins from tick labels


def figure_svg(fig: go.Figure, width: int = 640) -> str:
    """``fig`` as one ``<svg>`` element (no script); the figure's own width and height win."""
    lay = fig.layout
    w, h = int(lay.width or width), int(lay.height or 360)
    marks = [to_mark(t) for t in fig.data if t.visible is not False]
    pairs = {(m.trace.xaxis or "x", m.trace.yaxis or "y") for m in marks} or {("x", "y")}
    legend = _legend(fig)
    top = 34 + (16 if legend else 0) + (14 if lay.annotations else 0)
    left = 50 + min(160, _CHAR * _longest(lay.yaxis, [v for m in marks for v in m.y]))
    bottom = 40 + _drop(lay.xaxis, [v for m in marks for v in m.x])
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="gsnb-static-figure" width="{w}" '
        f'height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        text_svg(w / 2, 20, plain(lay.title.text), "middle", 'font-size="14"'),
    ]
    box = (left, top, w - 20, h - bottom)  # the plotting area in pixels: x0, y0, x1, y1
    for xname, yname in sorted(pairs):
        on = [m for m in marks if (m.trace.xaxis or "x", m.trace.yaxis or "y") == (xname, yname)]
        xa = _axis(lay[_layout_key(xname)], _axis_values(on, "x"), box, True, _holds_bars(on, "x"))
        ya = _axis(lay[_layout_key(yname)], _axis_values(on, "y"), box, False, _holds_bars(on, "y"))
        out += _frame(lay[_layout_key(xname)], lay[_layout_key(yname)], xa, ya)
        for i, m in enumerate(on):
            out += draw(m, xa, ya, PALETTE[i % len(PALETTE)], lay.bargap)
        if (xname, yname) == ("x", "y"):
            out += _shapes(lay.shapes, xa, box)
    out += _annotations(lay.annotations, box)
    out += _legend_svg(legend, w, 30)
    out.append("</svg>")
    return "".join(out)


def _longest(spec, values: Sequence) -> int:
    """Characters in the longest tick label of an axis with these values and layout."""
    labels = [str(t) for t in spec.ticktext or ()]
    labels += [str(v) for v in values if isinstance(v, str)]
    return max(map(len, labels), default=4)


def _drop(spec, values: Sequence) -> float:
    """Pixels that an x axis's tick labels take below it (rotated when they are words)."""
    if not (spec.ticktext or is_category(values)):
        return 0.0
    return 0.6 * _CHAR * min(_longest(spec, values), 30) + 10


def _axis_values(marks: list[Mark], which: str) -> list:
    """The values an axis spans: the marks' own, and 0 where bars grow from it."""
    values = [v for m in marks for v in getattr(m, which)]
    if any(m.kind == "bars" and m.extra["horizontal"] == (which == "x") for m in marks):
        values.append(0)
    return values


def _holds_bars(marks: list[Mark], which: str) -> bool:
    """Whether bars stand along this axis (so it needs room for half a bar at each end)."""
    return any(m.kind == "bars" and m.extra["horizontal"] == (which == "y") for m in marks)


def _layout_key(name: str) -> str:
    """``"x2"`` -> ``"xaxis2"``."""
    return f"{name[0]}axis{name[1:]}"


def _axis(spec, values: Sequence, box, horizontal: bool, bars: bool = False) -> Axis:
    """An axis over ``values``, honouring a log type and reversal; with ``bars``, the ends leave
    room for half the narrowest gap between positions."""
    start, end = (box[0], box[2]) if horizontal else (box[3], box[1])
    domain = list(spec.domain or (0, 1))
    span = end - start
    start, end = start + domain[0] * span, start + domain[1] * span
    if spec.autorange == "reversed":
        start, end = end, start
    if is_category(values) or spec.type == "category":
        cats: dict[str, int] = {}
        for v in values:
            if v is not None:
                cats.setdefault(str(v), len(cats))
        return Axis(-0.5, max(len(cats), 1) - 0.5, False, cats, start, end)
    log = spec.type == "log"
    probe = Axis(0.0, 1.0, log, None, start, end)
    nums = [t for t in (probe.num(v) for v in values) if t is not None]
    if spec.tickvals:
        nums += [float(t) for t in spec.tickvals]
    lo, hi = (min(nums), max(nums)) if nums else (0.0, 1.0)
    pad = (hi - lo) * 0.05 or 0.5
    gaps = [b - a for a, b in zip(sorted(set(nums)), sorted(set(nums))[1:])]
    if bars and gaps:
        pad = max(pad, min(gaps) / 2)
    return Axis(lo - pad, hi + pad, log, None, start, end)


def _ticks(spec, axis: Axis) -> list[tuple[float, str]]:
    """``(axis units, label)`` of the ticks: the layout's own, each category, or round values."""
    if spec.tickvals:
        labels = spec.ticktext or [f"{v:g}" for v in spec.tickvals]
        return [(float(v), str(t)) for v, t in zip(spec.tickvals, labels)]
    if axis.cats is not None:
        every = max(1, len(axis.cats) // 30)
        return [(i, c) for c, i in axis.cats.items() if i % every == 0]
    lo, hi = sorted((axis.lo, axis.hi))
    if axis.log and hi - lo >= 1:
        return [(float(e), f"{10.0**e:g}") for e in range(math.ceil(lo), math.floor(hi) + 1)]
    raw = (hi - lo) / 5
    step = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step *= next(m for m in (1, 2, 5, 10) if step * m >= raw)
    first = math.ceil(lo / step) * step
    ticks = [first + i * step for i in range(int((hi - first) / step) + 1)]
    return [(t, f"{10.0**t:.3g}" if axis.log else f"{t:.4g}") for t in ticks]


def _frame(xspec, yspec, xa: Axis, ya: Axis) -> list[str]:
    """The axes' lines, ticks, tick labels and titles."""
    x0, x1, y0, y1 = min(xa.start, xa.end), max(xa.start, xa.end), ya.start, ya.end
    base, side = max(y0, y1), min(x0, x1)
    out = [
        f'<rect x="{x0:.1f}" y="{min(y0, y1):.1f}" width="{x1 - x0:.1f}" '
        f'height="{abs(y1 - y0):.1f}" fill="none" stroke="#ccc"/>'
    ]
    rotate = xa.cats is not None or bool(xspec.ticktext)
    for t, label in _ticks(xspec, xa):
        px = xa.at(t)
        if x0 - 1 <= px <= x1 + 1:
            extra = f'transform="rotate(-35 {px:.1f} {base + 14:.1f})"' if rotate else ""
            anchor = "end" if rotate else "middle"
            out.append(text_svg(px, base + 14, plain(label), anchor, extra))
    for t, label in _ticks(yspec, ya):
        py = ya.at(t)
        if min(y0, y1) - 1 <= py <= max(y0, y1) + 1:
            out.append(text_svg(side - 4, py + 4, plain(label), "end"))
    if xspec.title.text:
        drop = _drop(xspec, list(xa.cats or ()))
        out.append(text_svg((x0 + x1) / 2, base + 32 + drop, plain(xspec.title.text), "middle"))
    if yspec.title.text:
        mid = (y0 + y1) / 2
        out.append(
            text_svg(
                14, mid, plain(yspec.title.text), "middle", f'transform="rotate(-90 14 {mid})"'
            )
        )
    return out


def _shapes(shapes, xa: Axis, box) -> list[str]:
    """Line shapes in data x and paper y (such as the density marker)."""
    out = []
    for s in shapes or ():
        if s.type != "line" or (s.xref or "x") != "x" or s.yref not in ("paper", "y domain"):
            continue
        px = xa.px(s.x0)
        if px is None:
            continue
        y0 = box[3] - float(s.y0 or 0) * (box[3] - box[1])
        y1 = box[3] - float(s.y1 or 0) * (box[3] - box[1])
        dash = ' stroke-dasharray="5,3"' if s.line.dash else ""
        color = css_color(s.line.color, "black")
        out.append(
            f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{y0:.1f}" y2="{y1:.1f}" stroke="{color}"{dash}/>'
        )
    return out


def _annotations(annotations, box) -> list[str]:
    """Text placed in paper coordinates (subplot titles)."""
    out = []
    for a in annotations or ():
        if (a.xref, a.yref) != ("paper", "paper") or a.text is None:
            continue
        x = box[0] + float(a.x) * (box[2] - box[0])
        y = box[3] - float(a.y) * (box[3] - box[1])
        out.append(text_svg(x, y - 4, plain(a.text), "middle", 'font-weight="bold"'))
    return out


def _legend(fig: go.Figure) -> list[tuple[str, str]]:
    """``(name, colour)`` of the traces a legend lists: named, shown, and more than one."""
    entries = []
    for i, t in enumerate(fig.data):
        if t.name and t.showlegend is not False and t.type != "heatmap":
            marker = getattr(t, "marker", None)
            line = getattr(t, "line", None)
            color = marker.color if marker is not None else None
            if (color is None or isinstance(color, (list, tuple))) and line is not None:
                color = line.color
            entries.append((t.name, css_color(color, PALETTE[i % len(PALETTE)])))
    return entries if len(entries) > 1 or fig.layout.showlegend else []


def _legend_svg(entries: list[tuple[str, str]], width: int, y: float) -> list[str]:
    out, x = [], 20.0
    for name, color in entries:
        label = plain(name).replace("\n", " ")
        if x + 20 + _CHAR * len(label) > width:
            break
        out.append(f'<rect x="{x:.1f}" y="{y + 4:.1f}" width="10" height="10" fill="{color}"/>')
        out.append(text_svg(x + 14, y + 13, label))
        x += 28 + _CHAR * len(label)
    return out
