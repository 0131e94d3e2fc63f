"""SteeringPlayground: steer a model with one SAE feature from a notebook. Controls and wiring
only: the steering is :mod:`gsnb.analysis.steering`'s, the sweep figure is
:func:`gsnb.viz.plots.strength_sweep`."""

from __future__ import annotations

import ipywidgets as widgets
import plotly.graph_objects as go

from gsnb.analysis.search import feature_tokens
from gsnb.analysis.steering import Add, compare, strength_sweep
from gsnb.viz import plots
from gsnb.viz import widget_parts as parts


class SteeringPlayground(parts.WidgetView):
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
        self.saes = parts.sae_dict(saes)
        self.stats = parts.stats_dict(stats, self.saes)
        self.n_sweep = n_sweep
        self.comparison = None
        self.sweep = None
        top = max_strength or (10.0 if self.stats else 100.0)
        self.sae_picker = widgets.Dropdown(options=list(self.saes), description="SAE")
        self.feature = widgets.IntText(value=0, description="feature")
        self.message = widgets.HTML()
        self.searcher = parts.FeatureSearchBox(
            self.message,
            self._picked_match,
            "search top tokens" if self.stats else "(search needs stats)",
        )
        self.search, self.matches = self.searcher.text, self.searcher.matches
        self.info = widgets.HTML()
        self.strength = widgets.FloatSlider(
            value=top / 2, min=-top, max=top, step=top / 40, continuous_update=False
        )
        self.prompt = widgets.Textarea(value=prompt, description="prompt")
        self.max_new_tokens = widgets.IntSlider(value=20, min=1, max=128, description="tokens")
        self.targets = widgets.Text(value=targets, description="targets", placeholder="dog, cat")
        self.button = widgets.Button(description="steer", icon="play", button_style="primary")
        self.completions = widgets.HTML()
        self.figure = go.FigureWidget()
        self.sae_picker.observe(lambda _: self._picked_sae(), names="value")
        self.feature.observe(lambda _: self._describe(), names="value")
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

    def _stats(self):
        return self.stats.get(self.sae_picker.value)

    def _picked_sae(self) -> None:
        stats = self._stats()
        self.strength.description = "x max act" if stats is not None else "strength"
        self.searcher.use(stats)
        self._describe()

    def _describe(self) -> None:
        stats, f = self._stats(), self.feature.value
        sae = self.saes[self.sae_picker.value]
        if not 0 <= f < sae.d_sae:
            self.info.value = parts.note_html(
                f"feature {f} does not exist: pick 0..{sae.d_sae - 1}"
            )
        elif stats is None:
            self.info.value = parts.text_html(f"feature {f} of {sae!r}")
        else:
            fires, promotes = feature_tokens(stats)
            self.info.value = parts.text_html(
                f"feature {f} · max activation {float(stats.max_activation[f]):.3g} · density "
                f"{float(stats.density[f]):.2%} · fires on {fires[f][:8]} · promotes "
                f"{promotes[f][:8]}"
            )

    def find(self, query: str) -> list[int]:
        """Features of the picked SAE whose top-example peak tokens or promoted tokens contain
        ``query`` (case-insensitive), most often matching first; they fill ``matches``, which
        picks the first."""
        return self.searcher.find(query)

    def static_parts(self) -> list[str]:
        """The settings, completions and sweep, as :meth:`static_html` draws them."""
        unit = "x max activation" if self._stats() is not None else "strength"
        return [
            parts.text_html(
                f"{self.sae_picker.value} · feature {self.feature.value} · {unit} "
                f"{self.strength.value:g} · prompt {self.prompt.value!r}"
            ),
            self.info.value,
            self.message.value,
            self.completions.value,
            parts.figures_html(self.figure),
        ]

    def _picked_match(self, feature: int) -> None:
        self.feature.value = feature

    def _intervention(self, strength: float):
        sae = self.saes[self.sae_picker.value]
        return Add(sae.site_out, (sae, self.feature.value), strength, stats=self._stats())

    def run(self) -> None:
        """Steer the prompt with the chosen feature and strength; fill completions and sweep."""
        self.comparison, self.sweep = None, None
        self.completions.value = ""
        parts.draw(self.figure, None)
        self.message.value = parts.note_html("running…")
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
            self.message.value = parts.error_html(error)
            return
        self.message.value = "" if targets else parts.note_html("type target words to see a sweep")
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
            parts.draw(self.figure, fig)
