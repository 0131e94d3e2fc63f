"""The notebook widgets, importable from one place: controls and wiring only, no maths.

:class:`FeatureInspector` and :class:`PromptInspector` live in :mod:`gsnb.viz.feature_widgets`,
:class:`SteeringPlayground` in :mod:`gsnb.viz.steering_widget`, the parts they share in
:mod:`gsnb.viz.widget_parts`; :class:`gsnb.GraphView` is in :mod:`gsnb.viz.graph_view`.
Each displays with a static snapshot beside the live widget (``view.static_html()``), its
figures drawn as SVG by :mod:`gsnb.viz.static_figures`.
"""

from gsnb.viz.feature_widgets import FeatureInspector, PromptInspector
from gsnb.viz.steering_widget import SteeringPlayground

__all__ = ["FeatureInspector", "PromptInspector", "SteeringPlayground"]
