"""ipywidgets views built from :mod:`gsnb.viz.plots`: controls and wiring only, no maths."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import ipywidgets as widgets
import plotly.graph_objects as go
import torch

from gsnb.viz import plots


def _sae_dict(saes) -> dict:
    if hasattr(saes, "W_dec"):
        saes = [saes]
    if isinstance(saes, Mapping):
        out = dict(saes)
    elif isinstance(saes, Sequence) and not isinstance(saes, str):
        out = {
            sae.site_in if not sae.is_transcoder else f"{sae.site_in}->{sae.site_out}": sae
            for sae in saes
        }
    else:
        raise TypeError(f"saes must be a dict name -> SAE or a list of SAEs, got {saes!r}")
    if not out:
        raise ValueError("no SAEs given: pass a dict name -> SAE (such as suite.saes) or a list")
    return out


def _stats_dict(stats, saes: dict) -> dict:
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


def _search(
    fires: list[list[str]], promotes: list[list[str]], query: str, limit: int = 50
) -> list[int]:
    """Features with a peak or promoted token containing ``query``, most matches first."""
    hits = []
    for f in range(len(fires)):
        n = sum(query in t.strip().lower() for t in fires[f] + promotes[f])
        if n:
            hits.append((-n, f))
    return [f for _, f in sorted(hits)[:limit]]


class SteeringPlayground:
    """Steer with one SAE feature: default and steered completions, and a strength sweep.

    >>> play = gsnb.SteeringPlayground(model, suite.saes, stats={"resid_post.6": stats})
    >>> play            # displays in a notebook
    >>> play.feature.value, play.strength.value = 123, 4.0
    >>> play.button.click()
    >>> play.comparison.steered, play.sweep.probs

    The button adds ``strength * W_dec[feature]`` at the SAE's output site at every position
    (:class:`gsnb.Add`); with stats, ``strength`` counts multiples of the feature's largest
    activation seen in the corpus. Completions come from :func:`gsnb.compare` (greedy); the
    sweep from :func:`gsnb.analysis.steering.strength_sweep` over the slider's range, for the target
    words (each given a leading space, as words have mid-sentence). Errors show as a message.

    Args:
        saes: a dict name -> SAE (such as ``suite.saes``), a list of SAEs, or one SAE.
        stats: a :class:`gsnb.analysis.features.FeatureStats`, or a dict name -> FeatureStats; enables the
            feature search and strengths in multiples of the max activation.
        max_strength: the slider spans ``[-max_strength, max_strength]`` (default 10 with stats,
            100 raw).
        n_sweep: strengths in the sweep.
    """

    def __init__(
        self,
        model,
        saes,
        stats=None,
        prompt: str = "I think that",
        targets: str = "",
        max_strength: float | None = None,
        n_sweep: int = 11,
    ):
        self.model = model
        self.saes = _sae_dict(saes)
        self.stats = _stats_dict(stats, self.saes)
        self.n_sweep = n_sweep
        self.comparison = None
        self.sweep = None
        self._tokens: dict[str, tuple[list[list[str]], list[list[str]]]] = {}
        top = max_strength or (10.0 if self.stats else 100.0)
        self.sae_picker = widgets.Dropdown(options=list(self.saes), description="SAE")
        self.feature = widgets.IntText(value=0, description="feature")
        self.search = widgets.Text(
            placeholder="search top tokens" if self.stats else "(search needs stats)",
            disabled=not self.stats,
            continuous_update=False,
        )
        self.matches = widgets.Dropdown(options=[], description="matches")
        self.info = widgets.HTML()
        self.strength = widgets.FloatSlider(
            value=top / 2, min=-top, max=top, step=top / 40, continuous_update=False
        )
        self.prompt = widgets.Textarea(value=prompt, description="prompt")
        self.max_new_tokens = widgets.IntSlider(value=20, min=1, max=128, description="tokens")
        self.targets = widgets.Text(value=targets, description="targets", placeholder="dog, cat")
        self.button = widgets.Button(description="steer", icon="play", button_style="primary")
        self.message = widgets.HTML()
        self.completions = widgets.HTML()
        self.figure = go.FigureWidget()
        self.sae_picker.observe(lambda _: self._picked_sae(), names="value")
        self.feature.observe(lambda _: self._describe(), names="value")
        self.search.observe(lambda _: self.find(self.search.value), names="value")
        self.matches.observe(self._picked_match, names="value")
        self.button.on_click(lambda _: self.run())
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.sae_picker, self.feature, self.search, self.matches]),
                self.info,
                widgets.HBox([self.strength, self.max_new_tokens]),
                widgets.HBox([self.prompt, widgets.VBox([self.targets, self.button])]),
                self.message,
                self.completions,
                self.figure,
            ]
        )
        self._picked_sae()

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def _stats(self):
        return self.stats.get(self.sae_picker.value)

    def _picked_sae(self) -> None:
        stats = self._stats()
        self.strength.description = "x max act" if stats is not None else "strength"
        self.search.disabled = stats is None
        self.matches.options = []
        self._describe()

    def _feature_tokens(self):
        name = self.sae_picker.value
        if name not in self._tokens:
            self._tokens[name] = self.stats[name].top_tokens()
        return self._tokens[name]

    def _describe(self) -> None:
        stats, f = self._stats(), self.feature.value
        sae = self.saes[self.sae_picker.value]
        if not 0 <= f < sae.d_sae:
            self.info.value = f"<i>feature {f} does not exist: pick 0..{sae.d_sae - 1}</i>"
        elif stats is None:
            self.info.value = f"feature {f} of {html.escape(repr(sae))}"
        else:
            fires, promotes = self._feature_tokens()
            self.info.value = (
                f"feature {f} · max activation {float(stats.max_activation[f]):.3g} · density "
                f"{float(stats.density[f]):.2%} · fires on {html.escape(str(fires[f][:8]))}"
                f" · promotes {html.escape(str(promotes[f][:8]))}"
            )

    def find(self, query: str) -> list[int]:
        """Features whose top-example peak tokens or promoted tokens contain ``query``
        (case-insensitive), most often matching first; they fill ``matches``, which picks the first."""
        query = query.strip().lower()
        if self._stats() is None or not query:
            self.matches.options = []
            return []
        fires, promotes = self._feature_tokens()
        found = _search(fires, promotes, query)
        self.matches.options = [
            (f"{f}: {', '.join(repr(t) for t in fires[f][:4])}", f) for f in found
        ]
        if found:
            self.matches.value = found[0]
        self.message.value = "" if found else f"<i>no feature's top tokens contain {query!r}</i>"
        return found

    def _picked_match(self, change) -> None:
        if change["new"] is not None:
            self.feature.value = change["new"]

    def _intervention(self, strength: float):
        from gsnb.analysis.steering import Add

        sae = self.saes[self.sae_picker.value]
        return Add(sae.site_out, (sae, self.feature.value), strength, stats=self._stats())

    def run(self) -> None:
        """Steer the prompt with the chosen feature and strength; fill completions and sweep."""
        from gsnb.analysis.steering import compare, strength_sweep

        self.comparison, self.sweep = None, None
        self.completions.value = ""
        self.figure.data = ()
        self.message.value = "<i>running…</i>"
        try:
            prompt = self.prompt.value
            if not prompt.strip():
                raise ValueError("the prompt is empty: type some text to complete")
            steer = self._intervention(self.strength.value)
            targets = [" " + w.strip() for w in self.targets.value.split(",") if w.strip()]
            if targets:
                lo, hi = self.strength.min, self.strength.max
                strengths = [lo + (hi - lo) * i / (self.n_sweep - 1) for i in range(self.n_sweep)]
                self.sweep = strength_sweep(
                    self.model, prompt, self._intervention, strengths, targets
                )
            self.comparison = compare(
                self.model, prompt, [steer], max_new_tokens=self.max_new_tokens.value
            )
        except Exception as error:  # shown to the user, never a traceback
            self.comparison, self.sweep = None, None
            self.message.value = (
                f"<span style='color:#c00'>{html.escape(type(error).__name__)}: "
                f"{html.escape(str(error))}</span>"
            )
            return
        self.message.value = "" if targets else "<i>type target words to see a sweep</i>"
        self.completions.value = self.comparison._repr_html_()
        if self.sweep is not None:
            unit = "x max activation" if self._stats() is not None else "strength"
            fig = plots.strength_sweep(
                self.sweep.strengths,
                {repr(t): p for t, p in zip(self.sweep.tokens, self.sweep.probs.T, strict=True)},
                title=f"feature {self.feature.value} of {self.sae_picker.value}",
                xaxis_title=unit,
                mark=self.strength.value,
            )
            with self.figure.batch_update():
                self.figure.add_traces(fig.data)
                self.figure.layout = fig.layout


# --- feature dashboards -------------------------------------------------------------------------


def _error_html(error: Exception) -> str:
    return (
        f"<span class='gsnb-error' style='color:#c00'>{html.escape(type(error).__name__)}: "
        f"{html.escape(str(error))}</span>"
    )


def _draw(target: go.FigureWidget, fig: go.Figure | None) -> None:
    """Replace ``target``'s traces and layout with ``fig``'s (empty it for None)."""
    with target.batch_update():
        target.data = ()
        if fig is not None:
            target.add_traces(fig.data)
            target.layout = fig.layout


class FeatureInspector:
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
        self._tokens = None  # per feature: peak tokens and promoted tokens, built on first search
        self._text_acts = None  # (text, str_tokens, [pos, d_sae]) of the last coloured text
        self.feature = widgets.IntText(value=0, description="feature", layout={"width": "180px"})
        self.prev_button = widgets.Button(description="prev", icon="arrow-left")
        self.next_button = widgets.Button(description="next", icon="arrow-right")
        self.search = widgets.Text(placeholder="search a token", continuous_update=False)
        self.matches = widgets.Dropdown(options=[], description="matches")
        self.message = widgets.HTML()
        self.header = widgets.HTML()
        self.histogram = go.FigureWidget()
        self.logits = go.FigureWidget()
        self.top = widgets.HTML()
        self.quantiles = widgets.HTML()
        self.density = go.FigureWidget(plots.feature_density(stats.density))
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
        self.search.observe(lambda _: self.find(self.search.value), names="value")
        self.matches.observe(self._picked_match, names="value")
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
            self.message.value = _error_html(ValueError(self._text_error))

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def show(self, feature: int) -> None:
        """Select ``feature`` (redraws the panels; out of range shows a message)."""
        if self._out_of_range(feature):
            return
        self.feature.value = int(feature)

    def _out_of_range(self, feature: int) -> bool:
        if 0 <= int(feature) < self.stats.d_sae:
            return False
        self.message.value = _error_html(
            IndexError(f"feature {feature} is out of range: pick 0..{self.stats.d_sae - 1}")
        )
        return True

    def redraw(self) -> None:
        """Draw the panels of the feature in the index box."""
        f = self.feature.value
        if self._out_of_range(f):
            return
        try:
            panels = plots.feature_panels(self.stats, f)
        except Exception as error:  # shown to the user, never a traceback
            self.message.value = _error_html(error)
            return
        self.message.value = ""
        self.header.value = panels["header"]
        _draw(self.histogram, panels["histogram"])
        _draw(self.logits, panels["logits"])
        for fig in (self.histogram, self.logits):
            fig.layout.width = 480
        self.top.value = panels["top"]
        self.quantiles.value = panels["quantiles"]
        self.density.layout.shapes = plots.density_marker(self.stats.density, f)
        self._show_text()

    def find(self, query: str) -> list[int]:
        """Features whose top examples peak on, or whose decoder promotes, a token containing
        ``query`` (case-insensitive), most matches first; they fill ``matches``."""
        query = query.strip().lower()
        if not query:
            self.matches.options = []
            return []
        if self._tokens is None:
            self._tokens = self.stats.top_tokens()
        fires, promotes = self._tokens
        found = _search(fires, promotes, query)
        self.matches.options = [
            (f"{f}: {', '.join(repr(t) for t in fires[f][:4])}", f) for f in found
        ]
        if found:
            self.matches.value = found[0]
        else:
            self.message.value = f"<i>no feature's top tokens contain {html.escape(query)!r}</i>"
        return found

    def _picked_match(self, change) -> None:
        if change["new"] is not None:
            self.show(change["new"])

    def color_text(self, text: str | None = None) -> None:
        """Colour ``text`` (default: the text box) by the current feature's activation."""
        from gsnb.analysis.features import feature_activations

        if text is not None:
            self.text.value = text
        self._text_acts = None
        try:
            if self._text_error is not None:
                raise ValueError(self._text_error)
            str_tokens, acts = feature_activations(self.model, self.sae, self.text.value)
            self._text_acts = (str_tokens, acts)
        except Exception as error:  # shown to the user, never a traceback
            self.colored.value = _error_html(error)
            return
        self._show_text()

    def _show_text(self) -> None:
        if self._text_acts is not None:
            f, (str_tokens, acts) = self.feature.value, self._text_acts
            self.colored.value = plots.colored_tokens_html(
                str_tokens, acts[:, f].tolist(), float(self.stats.max_activation[f])
            )


class PromptInspector:
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
        self.saes = _sae_dict(saes)
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

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def run(self, prompt: str | None = None) -> None:
        """Encode the prompt with every SAE; fill the heatmap, the table and the dropdown."""
        from gsnb.analysis.features import feature_activations

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
            self.message.value = _error_html(error)
            self.table.value, self.choice.options = "", []
            _draw(self.figure, None)
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
        _draw(
            self.figure,
            plots.layer_position_heatmap(
                peaks, self.str_tokens, list(self.acts), "Strongest feature", "activation"
            ),
        )
        self.figure.layout.yaxis.type = "category"
        self.table.value = plots.prompt_features_html(self.str_tokens, rows)
        options = {}
        for pos, row in enumerate(rows):
            for name, f, v in row:
                label = f"{name} #{f}: {v:.3g} at {pos} {self.str_tokens[pos]!r}"
                options.setdefault((name, f), label)
        self.choice.options = [(label, key) for key, label in options.items()]

    def open(self, name: str | None = None, feature: int | None = None) -> None:
        """Show a feature (default: the dropdown's) in the inspector for its SAE."""
        if name is None or feature is None:
            if self.choice.value is None:
                self.message.value = "<i>inspect a prompt first, then pick a feature</i>"
                return
            name, feature = self.choice.value
        inspector = self.inspectors.get(name)
        if inspector is None:
            self.message.value = _error_html(
                KeyError(f"no FeatureInspector for {name}: pass inspector={{{name!r}: ...}}")
            )
            return
        try:
            inspector.stats.check_sae(self.saes[name])
        except ValueError as error:
            self.message.value = _error_html(error)
            return
        self.message.value = ""
        inspector.show(feature)
