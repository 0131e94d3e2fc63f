"""Feature widgets: :class:`FeatureInspector` browses one SAE's features from their stats;
:class:`PromptInspector` lists the strongest features on each token of a prompt and opens them
in an inspector. Controls and wiring only: the panels come from :mod:`gsnb.viz.feature_plots`."""

from __future__ import annotations

from collections.abc import Mapping

import ipywidgets as widgets
import plotly.graph_objects as go
import torch

from gsnb.analysis.features import feature_activations
from gsnb.viz import widget_parts as parts
from gsnb.viz.feature_plots import (
    colored_tokens_html,
    density_marker,
    feature_density,
    feature_panels,
    prompt_features_html,
)
from gsnb.viz.plots import layer_position_heatmap


class FeatureInspector(parts.WidgetView):
    """Browse one SAE's features from their :class:`gsnb.FeatureStats`, Neuronpedia style.

    >>> view = FeatureInspector(stats, model, sae)
    >>> view                       # displays in a notebook
    >>> view.show(123)             # or type in the index box, or press prev / next
    >>> view.text.value = "def f(x): return x"; view.color_button.click()

    Panels, all read from ``stats`` (a switch recomputes nothing): density, max and mean
    activation with a Neuronpedia link when ``stats.neuronpedia_id`` is set, the activation
    histogram, logit effects, top examples and quantile samples as coloured tokens, and the
    dictionary's density with the feature marked. The search box finds features whose top
    examples peak on, or whose decoder promotes, a token. With ``model`` and ``sae`` the text
    box colours your own text by the feature's activation. Bad input shows as a message.
    """

    def __init__(self, stats, model=None, sae=None):
        self.stats, self.model, self.sae = stats, model, sae
        self._text_acts = None  # (text, str_tokens, [pos, d_sae]) of the last coloured text
        self.feature = widgets.IntText(value=0, description="feature", layout={"width": "180px"})
        self.prev_button = widgets.Button(description="prev", icon="arrow-left")
        self.next_button = widgets.Button(description="next", icon="arrow-right")
        self.message = widgets.HTML()
        self.searcher = parts.FeatureSearchBox(self.message, self.show)
        self.searcher.use(stats)
        self.search, self.matches = self.searcher.text, self.searcher.matches
        self.header = widgets.HTML()
        self.histogram = go.FigureWidget()
        self.logits = go.FigureWidget()
        self.top = widgets.HTML()
        self.quantiles = widgets.HTML()
        self.density = go.FigureWidget(feature_density(stats.density))
        self.text = widgets.Textarea(placeholder="test your own text", layout={"width": "60%"})
        self.color_button = widgets.Button(description="colour", icon="paint-brush")
        self.colored = widgets.HTML()
        self._text_error = None
        if model is None or sae is None:
            self._text_error = "pass model and sae to FeatureInspector to test your own text"
        else:
            try:
                stats.check_sae(sae)
            except ValueError as error:
                self._text_error = str(error)
        self.text.disabled = self.color_button.disabled = self._text_error is not None
        self.feature.observe(lambda _: self.redraw(), names="value")
        self.prev_button.on_click(lambda _: self.show(self.feature.value - 1))
        self.next_button.on_click(lambda _: self.show(self.feature.value + 1))
        self.color_button.on_click(lambda _: self.color_text())
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.feature, self.prev_button, self.next_button]),
                widgets.HBox([self.search, self.matches]),
                self.message,
                self.header,
                widgets.HBox([self.histogram, self.logits]),
                widgets.HTML("<b>Top examples</b>"),
                self.top,
                widgets.HTML("<b>Samples by quantile</b>"),
                self.quantiles,
                widgets.HBox([self.text, self.color_button]),
                self.colored,
                self.density,
            ]
        )
        self.widget.add_class("gsnb-feature-inspector")
        for fig in (self.histogram, self.logits):
            fig.layout.width = 480
        self.redraw()
        if self._text_error is not None and model is not None and sae is not None:
            self.message.value = parts.error_html(ValueError(self._text_error))

    def show(self, feature: int) -> None:
        """Select ``feature`` (redraws the panels; out of range shows a message)."""
        if self._out_of_range(feature):
            return
        self.feature.value = int(feature)

    def _out_of_range(self, feature: int) -> bool:
        if 0 <= int(feature) < self.stats.d_sae:
            return False
        self.message.value = parts.error_html(
            IndexError(f"feature {feature} is out of range: pick 0..{self.stats.d_sae - 1}")
        )
        return True

    def redraw(self) -> None:
        """Draw the panels of the feature in the index box."""
        f = self.feature.value
        if self._out_of_range(f):
            return
        try:
            panels = feature_panels(self.stats, f)
        except Exception as error:  # shown to the user, never a traceback
            self.message.value = parts.error_html(error)
            return
        self.message.value = ""
        self.header.value = panels["header"]
        parts.draw(self.histogram, panels["histogram"])
        parts.draw(self.logits, panels["logits"])
        for fig in (self.histogram, self.logits):
            fig.layout.width = 480
        self.top.value = panels["top"]
        self.quantiles.value = panels["quantiles"]
        self.density.layout.shapes = density_marker(self.stats.density, f)
        self._show_text()

    def static_parts(self) -> list[str]:
        """The panels of the feature shown, as :meth:`static_html` draws them."""
        text = self.colored.value and f"<b>Your text</b>{self.colored.value}"
        return [
            self.message.value,
            self.header.value,
            parts.figures_html(self.histogram, self.logits),
            f"<b>Top examples</b>{self.top.value}",
            f"<b>Samples by quantile</b>{self.quantiles.value}",
            text,
            parts.figures_html(self.density),
        ]

    def find(self, query: str) -> list[int]:
        """Features whose top examples peak on, or whose decoder promotes, a token containing
        ``query`` (case-insensitive), most matches first; they fill ``matches``, and the first
        is shown."""
        return self.searcher.find(query)

    def color_text(self, text: str | None = None) -> None:
        """Colour ``text`` (default: the text box) by the current feature's activation."""
        if text is not None:
            self.text.value = text
        self._text_acts = None
        try:
            if self._text_error is not None:
                raise ValueError(self._text_error)
            str_tokens, acts = feature_activations(self.model, self.sae, self.text.value)
            self._text_acts = (str_tokens, acts)
        except Exception as error:  # shown to the user, never a traceback
            self.colored.value = parts.error_html(error)
            return
        self._show_text()

    def _show_text(self) -> None:
        if self._text_acts is not None:
            f, (str_tokens, acts) = self.feature.value, self._text_acts
            self.colored.value = colored_tokens_html(
                str_tokens, acts[:, f].tolist(), float(self.stats.max_activation[f])
            )


class PromptInspector(parts.WidgetView):
    """The strongest SAE features on each token of a prompt, across several SAEs.

    >>> view = PromptInspector(model, suite.saes, inspector=FeatureInspector(stats, model, sae))
    >>> view.run("The cat sat on the mat")
    >>> view.choice.value = ("resid_post.6", 123); view.open_button.click()   # shows it

    A heatmap of each SAE's largest feature activation per token (rows: the SAEs' sites), a
    table of the top ``k`` features per token, and a dropdown of them whose "open" button shows
    the feature in ``inspector`` (a :class:`FeatureInspector`, or a dict of them keyed like
    ``saes``). Bad input (an empty or too long prompt) shows as a message.
    """

    def __init__(self, model, saes, inspector=None, prompt: str = "", k: int = 3):
        self.model = model
        self.saes = parts.sae_dict(saes)
        if inspector is None:
            self.inspectors = {}
        elif isinstance(inspector, Mapping):
            self.inspectors = dict(inspector)
        else:
            self.inspectors = {
                name: inspector
                for name, sae in self.saes.items()
                if (sae.site_in, sae.d_sae) == (inspector.stats.site_in, inspector.stats.d_sae)
            }
        self.acts: dict[str, torch.Tensor] = {}
        """``{name: [pos, d_sae]}`` activations of the last prompt."""
        self.str_tokens: list[str] = []
        self.rows: list[list[tuple[str, int, float]]] = []
        """Per token, its top ``(name, feature, activation)``, strongest first."""
        self.prompt = widgets.Textarea(value=prompt, description="prompt")
        self.k = widgets.BoundedIntText(value=k, min=1, max=20, description="top k")
        self.run_button = widgets.Button(description="inspect", icon="search")
        self.message = widgets.HTML()
        self.figure = go.FigureWidget()
        self.table = widgets.HTML()
        self.choice = widgets.Dropdown(options=[], description="feature")
        self.open_button = widgets.Button(description="open", icon="external-link")
        self.run_button.on_click(lambda _: self.run())
        self.open_button.on_click(lambda _: self.open())
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.prompt, self.k, self.run_button]),
                self.message,
                self.figure,
                widgets.HBox([self.choice, self.open_button]),
                self.table,
            ]
        )
        self.widget.add_class("gsnb-prompt-inspector")
        if prompt:
            self.run()

    def run(self, prompt: str | None = None) -> None:
        """Encode the prompt with every SAE; fill the heatmap, the table and the dropdown."""
        if prompt is not None:
            self.prompt.value = prompt
        self.acts, self.str_tokens, self.rows = {}, [], []
        try:
            for name, sae in self.saes.items():
                self.str_tokens, self.acts[name] = feature_activations(
                    self.model, sae, self.prompt.value
                )
        except Exception as error:  # shown to the user, never a traceback
            self.acts = {}
            self.message.value = parts.error_html(error)
            self.table.value, self.choice.options = "", []
            parts.draw(self.figure, None)
            return
        self.message.value = ""
        rows = [[] for _ in self.str_tokens]
        for name, acts in self.acts.items():  # acts [pos, d_sae]
            top = acts.topk(min(self.k.value, acts.shape[1]), dim=1)
            for pos, (vals, feats) in enumerate(zip(top.values, top.indices, strict=True)):
                rows[pos] += [(name, f, v) for f, v in zip(feats.tolist(), vals.tolist()) if v > 0]
        rows = [sorted(row, key=lambda r: -r[2])[: self.k.value] for row in rows]
        self.rows = rows
        peaks = torch.stack([acts.amax(1) for acts in self.acts.values()])  # [n_saes, pos]
        parts.draw(
            self.figure,
            layer_position_heatmap(
                peaks, self.str_tokens, list(self.acts), "Strongest feature", "activation"
            ),
        )
        self.figure.layout.yaxis.type = "category"
        self.table.value = prompt_features_html(self.str_tokens, rows)
        options = {}
        for pos, row in enumerate(rows):
            for name, f, v in row:
                label = f"{name} #{f}: {v:.3g} at {pos} {self.str_tokens[pos]!r}"
                options.setdefault((name, f), label)
        self.choice.options = [(label, key) for key, label in options.items()]

    def static_parts(self) -> list[str]:
        """The prompt, the heatmap and the table, as :meth:`static_html` draws them."""
        return [
            parts.text_html(f"prompt: {self.prompt.value!r} · top {self.k.value}"),
            self.message.value,
            parts.figures_html(self.figure),
            self.table.value,
        ]

    def open(self, name: str | None = None, feature: int | None = None) -> None:
        """Show a feature (default: the dropdown's) in the inspector for its SAE."""
        if name is None or feature is None:
            if self.choice.value is None:
                self.message.value = parts.note_html("inspect a prompt first, then pick a feature")
                return
            name, feature = self.choice.value
        inspector = self.inspectors.get(name)
        if inspector is None:
            self.message.value = parts.error_html(
                KeyError(f"no FeatureInspector for {name}: pass inspector={{{name!r}: ...}}")
            )
            return
        try:
            inspector.stats.check_sae(self.saes[name])
        except ValueError as error:
            self.message.value = parts.error_html(error)
            return
        self.message.value = ""
        inspector.show(feature)
