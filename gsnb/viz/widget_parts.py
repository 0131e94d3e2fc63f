"""Parts the widgets share: naming the SAEs and their stats, showing messages, redrawing a
figure in place, the static snapshot in every widget's display, and the feature search box. Every message that may hold user text is built
here and escaped here."""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence

import ipywidgets as widgets
import plotly.graph_objects as go

from gsnb.analysis.features import FeatureStats
from gsnb.analysis.search import feature_tokens, search_features
from gsnb.saes.sae import JumpReLUSAE, named
from gsnb.viz.static_figures import figure_svg


def sae_dict(saes) -> dict[str, JumpReLUSAE]:
    """``{name: SAE}`` from a dict (such as ``suite.saes``), or from one SAE or a list of them
    named as everywhere in gsnb (:func:`gsnb.saes.sae.named`); raises for anything else or none."""
    if isinstance(saes, Mapping):
        out = dict(saes)
    elif isinstance(saes, JumpReLUSAE) or (
        isinstance(saes, Sequence) and not isinstance(saes, str)
    ):
        out = named(saes)
    else:
        raise TypeError(f"saes must be a dict name -> SAE or a list of SAEs, got {saes!r}")
    if not out:
        raise ValueError("no SAEs given: pass a dict name -> SAE (such as suite.saes) or a list")
    return out


def stats_dict(stats, saes: dict[str, JumpReLUSAE]) -> dict[str, FeatureStats]:
    """``{name: FeatureStats}`` for the SAEs of ``saes`` that ``stats`` describes: a dict keyed
    like ``saes``, or one FeatureStats (given to every SAE with its sites and width)."""
    if stats is None:
        return {}
    if not isinstance(stats, Mapping):
        same = [
            name
            for name, sae in saes.items()
            if (sae.site_in, sae.site_out, sae.d_sae)
            == (stats.site_in, stats.site_out, stats.d_sae)
        ]
        if not same:
            raise ValueError(
                f"{stats!r} fits none of the SAEs {list(saes)}: pass stats={{name: FeatureStats}}"
            )
        stats = dict.fromkeys(same, stats)
    unknown = set(stats) - set(saes)
    if unknown:
        raise ValueError(f"stats for {sorted(unknown)}, but the SAEs are {list(saes)}")
    return dict(stats)


def error_html(error: Exception) -> str:
    """An exception as a red message (escaped): what a widget shows instead of a traceback."""
    return (
        f"<span class='gsnb-error' style='color:#c00'>"
        f"{text_html(f'{type(error).__name__}: {error}')}</span>"
    )


def text_html(text: str) -> str:
    """Plain ``text`` (user input, token strings, reprs) as HTML that shows it as typed."""
    return html.escape(text)


def note_html(text: str) -> str:
    """Plain ``text`` as an italic note (escaped)."""
    return f"<i>{text_html(text)}</i>"


class WidgetView:
    """A view whose controls sit in one ``widget``.

    Its rich display holds two representations: the live widget
    (``application/vnd.jupyter.widget-view+json``), which front ends with a widget manager
    (JupyterLab, Notebook, VS Code, Colab) show, and :meth:`static_html`, a snapshot of the
    state when it was displayed, which readers without one (GitHub, nbviewer, nbconvert) show.
    A notebook that stores the widget state (``jupyter nbconvert --execute`` does) makes
    nbconvert embed the widget instead; ``--ExecutePreprocessor.store_widget_state=False``
    keeps the snapshot.
    """

    widget: widgets.Widget

    def static_parts(self) -> list[str]:
        """The current state as HTML pieces, top to bottom (each escaped where it holds text)."""
        raise NotImplementedError

    def static_html(self) -> str:
        """The current state as self-contained HTML: no script, no network, figures as SVG."""
        note = f"{type(self).__name__}: a snapshot; run the notebook for the live widget"
        body = "".join(f"<div>{piece}</div>" for piece in self.static_parts() if piece)
        return (
            f"<div class='gsnb-static' style='font-family:sans-serif'>"
            f"<div style='color:#888;font-size:smaller'>{text_html(note)}</div>{body}</div>"
        )

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        bundle = self.widget._repr_mimebundle_()
        bundle["text/html"] = self.static_html()
        return bundle


def figures_html(*figures: go.Figure | None) -> str:
    """Figures (or FigureWidgets) with traces as inline SVG side by side; empty ones left out."""
    svgs = [figure_svg(go.Figure(fig)) for fig in figures if fig is not None and fig.data]
    return f"<div style='display:flex;flex-wrap:wrap;gap:8px'>{''.join(svgs)}</div>" if svgs else ""


def draw(target: go.FigureWidget, fig: go.Figure | None) -> None:
    """Replace ``target``'s traces and layout with ``fig``'s (empty it for None)."""
    with target.batch_update():
        target.data = ()
        if fig is not None:
            target.add_traces(fig.data)
            target.layout = fig.layout


class FeatureSearchBox:
    """A text box and a dropdown of the features whose tokens contain its text
    (:func:`gsnb.analysis.search.search_features`); picking one calls ``on_pick(feature)``.

    Args:
        message: where "nothing found" shows (cleared when something is).
        on_pick: called with the feature id picked in the dropdown (the best match at first).
        placeholder: the text box's hint.
    """

    def __init__(
        self,
        message: widgets.HTML,
        on_pick: Callable[[int], None],
        placeholder: str = "search a token",
    ):
        self.stats: FeatureStats | None = None
        """The stats searched; None disables the box."""
        self.message, self.on_pick = message, on_pick
        self.text = widgets.Text(placeholder=placeholder, continuous_update=False)
        self.matches = widgets.Dropdown(options=[], description="matches")
        self.text.observe(lambda _: self.find(self.text.value), names="value")
        self.matches.observe(self._picked, names="value")

    def use(self, stats: FeatureStats | None) -> None:
        """Search ``stats`` from now on (None: disable the box); clears the matches."""
        self.stats = stats
        self.text.disabled = stats is None
        self.matches.options = []

    def find(self, query: str) -> list[int]:
        """Fill the dropdown with the features matching ``query``, best first, and pick the
        first; an empty query or no stats clears it."""
        if self.stats is None or not query.strip():
            self.matches.options = []
            return []
        found = search_features(self.stats, query)
        fires = feature_tokens(self.stats).fires
        self.matches.options = [
            (f"{f}: {', '.join(repr(t) for t in fires[f][:4])}", f) for f in found
        ]
        if found:
            self.matches.value = found[0]
            self.message.value = ""
        else:
            self.message.value = note_html(f"no feature's top tokens contain {query.strip()!r}")
        return found

    def _picked(self, change) -> None:
        if change["new"] is not None:
            self.on_pick(change["new"])
