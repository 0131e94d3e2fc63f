"""Feature labels for an attribution graph's nodes: the user's own, the graph's (read from a
file), and the tokens each feature fires on and promotes (from its :class:`gsnb.FeatureStats`).

One owner for both places labels show up: the hover text of :class:`gsnb.GraphView` and the
``clerp`` of the graph files circuit-tracer's frontend and Neuronpedia open.
"""

from __future__ import annotations

from collections.abc import Mapping

from gsnb.core.sites import TRANSCODER_INPUTS, parse_site


def stats_by_layer(stats, graph) -> dict:
    """``{layer: FeatureStats}`` from one FeatureStats, a list or a dict of them (as
    :func:`gsnb.feature_stats` returns), matched to layers by the site they read (``mlp_in.L``,
    or ``mlp_normalized.L`` for Gemma Scope's transcoders).

    Raises ``ValueError`` for stats of an SAE that is no transcoder, or of transcoders narrower
    than the graph's feature indices."""
    if stats is None:
        return {}
    items = list(stats.values()) if isinstance(stats, Mapping) else stats
    items = [items] if hasattr(items, "d_sae") else list(items)
    by_layer = {}
    for st in items:
        site = parse_site(st.site_in)
        if site.kind not in TRANSCODER_INPUTS:
            raise ValueError(
                f"{st!r} describes an SAE reading {st.site_in}; a graph's features are "
                f"transcoder features reading one of {', '.join(TRANSCODER_INPUTS)}: pass the "
                "transcoders' FeatureStats"
            )
        by_layer[site.layer] = st
    features = graph.features
    for layer, st in by_layer.items():
        mine = features[features[:, 0] == layer]
        if len(mine) and int(mine[:, 2].max()) >= st.d_sae:
            raise ValueError(
                f"the graph has feature {int(mine[:, 2].max())} at layer {layer} but the stats "
                f"for {st.site_in} cover {st.d_sae} features: they describe other transcoders"
            )
    return by_layer


def feature_labels(
    graph,
    stats=None,
    labels: Mapping[int, str] | None = None,
    sep: str = "\n",
    n_tokens: int = 5,
) -> dict[int, str]:
    """A label per feature node of ``graph`` that has one, joined from (in this order) the
    user's label (``labels``, else the graph's own ``graph.labels``), the tokens it fires on
    and the tokens it promotes (from ``stats``, see :func:`stats_by_layer`).

    Args:
        graph: a :class:`gsnb.Graph`.
        stats: optional FeatureStats of the graph's transcoders (one, a list or a dict).
        labels: optional ``{feature node index: text}``; they take the place of the graph's.
        sep: what joins the parts (a newline for hover text, ``" · "`` for one line).
        n_tokens: tokens listed per part.

    Returns:
        ``{feature node index: text}``.
    """
    own = {**graph.labels, **(labels or {})}
    out: dict[int, str] = {}
    for node, text in own.items():
        if graph.node_kind(node) == "feature" and text:
            out[node] = text
    for layer, st in stats_by_layer(stats, graph).items():
        nodes = (graph.features[:, 0] == layer).nonzero().flatten().tolist()
        fires, promotes = st.top_tokens(graph.features[nodes, 2].tolist())
        for node, fire, promote in zip(nodes, fires, promotes, strict=True):
            parts = [out[node]] if node in out else []
            if fire:
                parts.append("fires on " + " ".join(repr(t) for t in fire[:n_tokens]))
            if promote:
                parts.append("promotes " + " ".join(repr(t) for t in promote[:n_tokens]))
            if parts:
                out[node] = sep.join(parts)
    return out
