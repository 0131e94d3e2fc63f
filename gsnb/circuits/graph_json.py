"""Export a :class:`gsnb.Graph` in circuit-tracer's JSON schema (its frontend and Neuronpedia).

The file holds ``metadata`` (slug, scan, transcoder list, prompt tokens, prompt, node
threshold), ``qParams`` (pinned ids, supernodes, link type, clicked id, subgraph positions),
``nodes`` and ``links``. Node ids follow circuit-tracer: features ``"{layer}_{feature}_{pos}"``,
errors ``"0_{layer}_{pos}"``, tokens ``"E_{token}_{pos}"``, logits ``"{n_layers+1}_{token}_{pos}"``.
"""

from __future__ import annotations

import torch

_TYPES = {
    "feature": "cross layer transcoder",
    "error": "mlp reconstruction error",
    "token": "embedding",
    "logit": "logit",
}


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def _printable(token: str) -> str:
    return token.replace("\n", "⏎").replace("\t", "→").replace("\r", "↵")


def node_record(graph, index: int, cumulative: float) -> dict:
    """One node in circuit-tracer's schema."""
    kind = graph.node_kind(index)
    layer, pos = graph.node_layer_pos(index)
    record = {
        "ctx_idx": pos,
        "feature_type": _TYPES[kind],
        "token_prob": 0.0,
        "is_target_logit": False,
        "run_idx": 0,
        "reverse_ctx_idx": 0,
        "clerp": "",
        "influence": cumulative,
        "activation": None,
    }
    if kind == "feature":
        feature = int(graph.features[index, 2])
        record.update(
            node_id=f"{layer}_{feature}_{pos}",
            feature=_cantor(layer, feature),
            layer=str(layer),
            jsNodeId=f"{layer}_{feature}-0",
            activation=float(graph.activations[index]),
        )
    elif kind == "error":
        record.update(
            node_id=f"0_{layer}_{pos}", feature=-1, layer=str(layer), jsNodeId=f"{layer}_{pos}-0"
        )
    elif kind == "token":
        token = int(graph.prompt_tokens[pos])
        record.update(
            node_id=f"E_{token}_{pos}", feature=pos, layer="E", jsNodeId=f"E_{token}-{pos}"
        )
    else:
        logit = index - graph.slices()["logit"].start
        token, prob = int(graph.logit_tokens[logit]), float(graph.logit_probabilities[logit])
        out_layer = str(graph.n_layers + 1)
        record.update(
            node_id=f"{out_layer}_{token}_{pos}",
            feature=token,
            layer=out_layer,
            jsNodeId=f"L_{token}-{pos}",
            token_prob=prob,
            is_target_logit=logit == 0,
            clerp=f'Output "{graph.logit_strings[logit]}" (p={prob:.3f})',
            influence=None,
        )
    return record


def graph_to_json(
    graph, slug: str, scan: str | None, node_threshold: float = 0.8, edge_threshold: float = 0.98
) -> dict:
    """The pruned graph as a circuit-tracer JSON object (a dict ready for ``json.dumps``)."""
    node_mask, edge_mask = graph.prune_masks(node_threshold, edge_threshold)
    influence = graph.influence()
    order = influence.argsort(descending=True)
    cumulative = torch.zeros_like(influence)
    cumulative[order] = influence[order].cumsum(0) / influence.sum().clamp_min(1e-30)
    nodes = {
        i: node_record(graph, i, float(cumulative[i]))
        for i in node_mask.nonzero().flatten().tolist()
    }
    targets, sources = (edge_mask & (graph.adjacency != 0)).nonzero(as_tuple=True)
    links = [
        {
            "source": nodes[s]["node_id"],
            "target": nodes[t]["node_id"],
            "weight": float(graph.adjacency[t, s]),
        }
        for t, s in zip(targets.tolist(), sources.tolist())
        if s in nodes and t in nodes
    ]
    connected = {link["source"] for link in links} | {link["target"] for link in links}
    used = [
        n
        for n in nodes.values()
        if n["node_id"] in connected or n["feature_type"] in ("embedding", "logit")
    ]
    ids = {i: nodes[i]["node_id"] for i in nodes}
    supernodes = [
        [label, *[ids[i] for i in members if i in ids]]
        for label, members in graph.supernodes.items()
    ]
    return {
        "metadata": {
            "slug": slug,
            "scan": scan or graph.model_name,
            "transcoder_list": list(graph.transcoder_ids),
            "prompt_tokens": [_printable(t) for t in graph.str_tokens],
            "prompt": "".join(graph.str_tokens),
            "node_threshold": node_threshold,
            "schema_version": 1,
        },
        "qParams": {
            "pinnedIds": [],
            "supernodes": supernodes,
            "linkType": "both",
            "clickedId": "",
            "sg_pos": "",
        },
        "nodes": used,
        "links": links,
    }
