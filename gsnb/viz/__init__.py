"""Figures, HTML pages and widgets: data in, picture out. The only layer that imports plotly,
ipywidgets or circuitsvis."""
