"""GraphView: explore an attribution graph in a notebook, with feature dashboards on click."""

from __future__ import annotations

import html
from pathlib import Path

import ipywidgets as widgets
import plotly.graph_objects as go

from gsnb.circuits.graph_labels import feature_labels, stats_by_layer
from gsnb.viz.feature_widgets import FeatureInspector
from gsnb.viz.graph_plot import attribution_graph
from gsnb.viz.pages import figure_page
from gsnb.viz.widget_parts import WidgetView, figures_html


class GraphView(WidgetView):
    """Explore an attribution graph: prune with sliders, hover and click nodes, group supernodes.

    >>> stats = gsnb.feature_stats(model, transcoders, corpus)   # optional dashboards
    >>> view = gsnb.GraphView(graph, stats=stats, labels={node: "Texas"})
    >>> view            # displays in a notebook
    >>> view.to_html("graph.html")   # a page that works offline (plotly.js inlined)
    >>> view.static_html()           # what readers without a kernel show (SVG, no script)

    Args:
        graph: a :class:`gsnb.Graph` from :func:`gsnb.trace` (unpruned; the sliders prune it),
            or from :meth:`gsnb.Graph.from_json` (pruned already: the sliders start at 1).
        stats: optional :class:`gsnb.FeatureStats` of the graph's transcoders (one, a list, or
            the dict :func:`gsnb.feature_stats` returns), matched to layers by the site they
            read (``mlp_in.L``). Hovering a feature then shows the tokens it fires on and
            promotes; clicking it opens it in a :class:`gsnb.FeatureInspector` below the graph.
        labels: optional hover text per feature node index of ``graph`` (descriptions); they
            take the place of the graph's own ``labels``.
        on_select: optional callback ``fn(layer, pos, feature)`` run when a feature is clicked.
    """

    def __init__(
        self,
        graph,
        stats=None,
        labels: dict[int, str] | None = None,
        on_select=None,
    ):
        self.graph = graph
        self.stats = stats_by_layer(stats, graph)
        self.labels = feature_labels(graph, self.stats, labels)
        self.on_select = on_select
        self.pinned: list[tuple[int, int, int]] = []
        self.inspector: FeatureInspector | None = None
        self._inspectors: dict[int, FeatureInspector] = {}
        # A graph read from a file is pruned already: show all of it to begin with.
        node_start, edge_start = (1.0, 1.0) if graph.file_metadata else (0.8, 0.98)
        self.node_threshold = widgets.FloatSlider(
            value=node_start,
            min=0.05,
            max=1.0,
            step=0.05,
            description="nodes",
            continuous_update=False,
        )
        self.edge_threshold = widgets.FloatSlider(
            value=edge_start,
            min=0.5,
            max=1.0,
            step=0.01,
            description="edges",
            continuous_update=False,
        )
        self.supernode_label = widgets.Text(placeholder="label for pinned features")
        self.group_button = widgets.Button(description="group pinned", icon="object-group")
        self.clear_button = widgets.Button(description="clear pins")
        self.details = widgets.HTML(value="<i>click a node</i>")
        self.scores = widgets.HTML()
        self.figure = go.FigureWidget()
        self.inspector_box = widgets.VBox([])
        self.node_threshold.observe(lambda _: self.redraw(), names="value")
        self.edge_threshold.observe(lambda _: self.redraw(), names="value")
        self.group_button.on_click(lambda _: self.group_pinned())
        self.clear_button.on_click(lambda _: self._clear())
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.node_threshold, self.edge_threshold, self.scores]),
                self.figure,
                widgets.HBox([self.supernode_label, self.group_button, self.clear_button]),
                self.details,
                self.inspector_box,
            ]
        )
        self.redraw()

    @property
    def pruned(self):
        return self._pruned

    def redraw(self) -> None:
        """Prune with the sliders' thresholds and redraw the figure."""
        self._pruned = self.graph.prune(self.node_threshold.value, self.edge_threshold.value)
        self._index = {tuple(f.tolist()): i for i, f in enumerate(self._pruned.features)}
        labels = {}
        for node, text in self.labels.items():
            if self.graph.node_kind(node) == "feature":
                new = self._index.get(tuple(self.graph.features[node].tolist()))
                if new is not None:
                    labels[new] = text
        highlight = [self._index[key] for key in self.pinned if key in self._index]
        fig = attribution_graph(self._pruned, labels, highlight=highlight)
        with self.figure.batch_update():
            self.figure.data = ()
            self.figure.add_traces(fig.data)
            self.figure.layout = fig.layout
        for trace in self.figure.data:
            if trace.mode == "markers":
                trace.on_click(self._clicked)
        scores = self._pruned.scores()
        self.scores.value = (
            f"{self._pruned.n_features} features · replacement {scores.replacement:.2f} · "
            f"completeness {scores.completeness:.2f}"
        )

    def static_parts(self) -> list[str]:
        """The pruned graph (node labels as tooltips), the selection and the open dashboard,
        as :meth:`static_html` draws them."""
        shown = self.inspector is not None and bool(self.inspector_box.children)
        return [
            self.scores.value,
            figures_html(self.figure),
            self.details.value,
            *(self.inspector.static_parts() if shown else []),
        ]

    def _clicked(self, trace, points, _state) -> None:
        if not points.point_inds:
            return
        self.select(int(trace.customdata[points.point_inds[0]]))

    def select(self, node: int) -> None:
        """Show a node of the pruned graph; pin it if it is a feature and open its dashboard."""
        pruned = self._pruned
        text = [f"<b>{html.escape(pruned.node_label(node))}</b>"]
        if pruned.node_kind(node) == "feature":
            key = tuple(pruned.features[node].tolist())
            if key not in self.pinned:
                self.pinned.append(key)
            text.append(f"activation {float(pruned.activations[node]):.3g}")
            self._inspect(key[0], key[2])
            if self.on_select is not None:
                self.on_select(*key)
        for title, row in (
            ("strongest inputs", pruned.adjacency[node]),
            ("strongest outputs", pruned.adjacency[:, node]),
        ):
            order = row.abs().argsort(descending=True)[:5]
            items = [
                f"{html.escape(pruned.node_label(int(i)))}: {float(row[i]):+.3g}"
                for i in order
                if row[i] != 0
            ]
            if items:
                text.append(f"{title}:<br>" + "<br>".join(items))
        text.append(f"pinned: {len(self.pinned)}")
        self.details.value = "<br>".join(text)

    def _inspect(self, layer: int, feature: int) -> None:
        """Open ``feature`` of ``layer`` in that layer's FeatureInspector (one per layer, made
        on first use), if stats were given for it."""
        if layer not in self.stats:
            return
        if layer not in self._inspectors:
            self._inspectors[layer] = FeatureInspector(self.stats[layer])
        self.inspector = self._inspectors[layer]
        self.inspector.show(feature)
        self.inspector_box.children = [self.inspector.widget]

    def group_pinned(self, label: str | None = None) -> None:
        """Group the pinned features into a supernode named ``label`` (or the text box)."""
        label = label or self.supernode_label.value.strip()
        if not label or not self.pinned:
            self.details.value = "<i>pin features by clicking them, and type a label</i>"
            return
        self.graph.group(label, list(self.pinned))
        self.pinned = []
        self.redraw()

    def _clear(self) -> None:
        self.pinned = []
        self.redraw()

    def to_html(self, path: str | Path) -> Path:
        """Write the current view as a self-contained page (plotly.js inlined; no network)."""
        return figure_page(go.Figure(self.figure), path)
