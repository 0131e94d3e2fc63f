"""circuit-tracer's graph JSON (its frontend and Neuronpedia open it): a :class:`gsnb.Graph` as
the ``{metadata, qParams, nodes, links}`` object, and such an object read back as the fields of
a Graph (``Graph.from_json`` assembles them; this module never imports the class).

Links name their ends by ``node_id``, and both frontends key nodes by it, so ids must never
collide. gsnb's ids:

=========  ==================================  ===============================================
node       ``node_id``                          why
=========  ==================================  ===============================================
feature    ``{layer}_{feature}_{pos}``          circuit-tracer's; its URL decoder parses it
error      ``{layer}_error_mlp_{pos}``          Neuronpedia's graph server's form; circuit-tracer's
                                                ``0_{layer}_{pos}`` equals feature ``layer`` of
                                                layer 0 at ``pos``
token      ``E_{token}_{pos}``                  circuit-tracer's
logit      ``{n_layers + 1}_{token}_{pos}``     circuit-tracer's; no feature sits at that layer
=========  ==================================  ===============================================

``jsNodeId`` repeats ``node_id`` (circuit-tracer's ``{layer}_{feature}-0`` and
``{layer}_{pos}-0`` collide too; its pydantic ``Node`` and Neuronpedia's graph server both fall
back to the ``node_id``). Custom targets sit on logit nodes with virtual token ids
``vocab_size + i``, as circuit-tracer numbers its custom targets.
"""

from __future__ import annotations

import math
import re
import warnings

import torch

FEATURE_TYPES = {
    "feature": "cross layer transcoder",
    "error": "mlp reconstruction error",
    "token": "embedding",
    "logit": "logit",
}
SCHEMA_VERSION = 1


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def _uncantor(z: int) -> tuple[int, int]:
    w = (math.isqrt(8 * z + 1) - 1) // 2
    y = z - w * (w + 1) // 2
    return w - y, y


def node_id(graph, index: int) -> str:
    """The ``node_id`` of node ``index`` of ``graph`` (see the module docstring)."""
    kind = graph.node_kind(index)
    layer, pos = graph.node_layer_pos(index)
    if kind == "feature":
        return f"{layer}_{int(graph.features[index, 2])}_{pos}"
    if kind == "error":
        return f"{layer}_error_mlp_{pos}"
    if kind == "token":
        return f"E_{int(graph.prompt_tokens[pos])}_{pos}"
    token = int(graph.logit_tokens[index - graph.slices()["logit"].start])
    return f"{graph.n_layers + 1}_{token}_{pos}"


def node_record(graph, index: int, influence: float, clerp: str = "") -> dict:
    """Node ``index`` of ``graph`` in circuit-tracer's schema; ``influence`` is its cumulative
    share of influence (circuit-tracer's pruning score), ``clerp`` its label."""
    kind = graph.node_kind(index)
    layer, pos = graph.node_layer_pos(index)
    ident = node_id(graph, index)
    record = {
        "node_id": ident,
        "feature": -1,
        "layer": str(layer),
        "ctx_idx": pos,
        "feature_type": FEATURE_TYPES[kind],
        "token_prob": 0.0,
        "is_target_logit": False,
        "run_idx": 0,
        "reverse_ctx_idx": 0,
        "jsNodeId": ident,
        "clerp": clerp,
        "influence": influence,
        "activation": None,
    }
    if kind == "feature":
        record["feature"] = _cantor(layer, int(graph.features[index, 2]))
        record["activation"] = float(graph.activations[index])
    elif kind == "token":
        record.update(feature=pos, layer="E")
    elif kind == "logit":
        logit = index - graph.slices()["logit"].start
        prob = float(graph.logit_probabilities[logit])
        record.update(
            feature=int(graph.logit_tokens[logit]),
            layer=str(graph.n_layers + 1),
            token_prob=prob,
            is_target_logit=logit == 0,
            clerp=f'Output "{graph.logit_strings[logit]}" (p={prob:.3f})',
            influence=None,
        )
    return record


def graph_to_json(
    graph,
    metadata: dict,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    labels: dict[int, str] | None = None,
) -> dict:
    """The graph pruned at the thresholds, as a circuit-tracer graph object (ready for
    ``json.dumps``).

    Args:
        graph: a :class:`gsnb.Graph` (unpruned: the thresholds prune it as circuit-tracer does).
        metadata: ``slug``, ``scan``, ``transcoder_list`` and any extra keys (such as
            Neuronpedia's ``feature_details``); the prompt and thresholds are added here.
        labels: ``{feature node index: clerp}``.
    """
    labels = labels or {}
    node_mask, edge_mask = graph.prune_masks(node_threshold, edge_threshold)
    influence = graph.influence()
    order = influence.argsort(descending=True)
    cumulative = torch.zeros_like(influence)
    cumulative[order] = influence[order].cumsum(0) / influence.sum().clamp_min(1e-30)
    nodes = {
        i: node_record(graph, i, float(cumulative[i]), labels.get(i, ""))
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
    head = {k: metadata[k] for k in ("slug", "scan", "transcoder_list")}
    return {
        "metadata": {
            **head,
            "prompt_tokens": list(graph.str_tokens),
            "prompt": "".join(graph.str_tokens),
            "node_threshold": node_threshold,
            "schema_version": SCHEMA_VERSION,
            **{k: v for k, v in metadata.items() if k not in head},
            "pruning_settings": {
                "node_threshold": node_threshold,
                "edge_threshold": edge_threshold,
            },
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


def _kind(node: dict) -> str:
    kind = node["feature_type"]
    if kind == "embedding":
        return "token"
    if kind == "logit":
        return "logit"
    return "error" if "error" in kind else "feature"


def _feature_index(node: dict, layer: int) -> int:
    """A feature node's index within its layer: from a ``{layer}_{feature}_{pos}`` id, else from
    the Cantor-paired ``feature``, else ``feature`` as it is."""
    parts = node["node_id"].split("_")
    if len(parts) == 3 and all(p.isdigit() for p in parts) and int(parts[0]) == layer:
        return int(parts[1])
    feature = node.get("feature")
    if not isinstance(feature, int) or feature < 0:
        raise ValueError(
            f"feature node {node['node_id']!r} names no feature index: its id is not "
            f"'layer_feature_pos' and its 'feature' is {feature!r}"
        )
    paired_layer, index = _uncantor(feature)
    return index if paired_layer == layer else feature


_LOGIT_CLERP = re.compile(r'^\w+ "(.*)" \(p=[^)]*\)$', re.DOTALL)


def _logit_string(node: dict) -> str:
    match = _LOGIT_CLERP.match(node.get("clerp") or "")
    if match:
        return match.group(1)
    return str(node.get("token", node.get("feature")))


def _layer(node: dict) -> int:
    try:
        return int(node["layer"])
    except (TypeError, ValueError):
        raise ValueError(
            f"node {node['node_id']!r} of type {node['feature_type']!r} has layer "
            f"{node['layer']!r}; a feature or error node needs an integer layer"
        ) from None


def graph_from_json(data: dict, source: str = "the graph") -> dict:
    """The fields of a :class:`gsnb.Graph` (keyword arguments of its constructor) from a
    circuit-tracer or Neuronpedia graph object: its nodes and links (an adjacency that holds
    only the file's pruned edges), labels (``clerp``), supernodes and metadata. ``source`` names
    the file in error messages.

    The error nodes are the file's (the ones pruning kept). Tokens without an embedding node,
    and features without an ``activation``, read as -1 and NaN. Links whose ends are no node are
    dropped, as the frontends drop them; ids that appear twice (circuit-tracer's error ids can
    equal feature ids) warn, and their links go to the last such node, as in the frontends. The
    file's ``scan`` becomes the graph's ``model_name`` (Neuronpedia reads a scan as a model id);
    its metadata is kept in ``file_metadata``.
    """
    missing = [key for key in ("metadata", "nodes", "links") if key not in data]
    if not missing and "prompt_tokens" not in data["metadata"]:
        missing = ["metadata.prompt_tokens"]
    if missing:
        raise ValueError(f"{source} is no circuit-tracer graph: it has no {missing}")
    meta = data["metadata"]
    str_tokens = list(meta["prompt_tokens"])
    by_kind: dict[str, list[dict]] = {"feature": [], "error": [], "token": [], "logit": []}
    for node in data["nodes"]:
        by_kind[_kind(node)].append(node)
    by_kind["error"].sort(key=lambda n: (_layer(n), n["ctx_idx"]))
    by_kind["logit"].sort(key=lambda n: not n.get("is_target_logit", False))
    inner = [_layer(n) for n in by_kind["feature"] + by_kind["error"]]
    outer = [int(n["layer"]) - 1 for n in by_kind["logit"] if str(n["layer"]).isdigit()]
    features = [(_layer(n), n["ctx_idx"], _feature_index(n, _layer(n))) for n in by_kind["feature"]]
    logits = by_kind["logit"]
    prompt_tokens = torch.full((len(str_tokens),), -1, dtype=torch.long)
    for node in by_kind["token"]:
        parts = node["node_id"].split("_")
        if len(parts) == 3 and parts[1].isdigit():
            prompt_tokens[node["ctx_idx"]] = int(parts[1])
    index = _node_indices(by_kind, len(str_tokens))
    n_nodes = len(features) + len(by_kind["error"]) + len(str_tokens) + len(logits)
    supernodes: dict[str, list[int]] = {}
    for label, *ids in data.get("qParams", {}).get("supernodes", []):
        members = [index[i] for i in ids if i in index and index[i] < len(features)]
        if members:
            supernodes[label] = sorted(set(members))
    return dict(
        model_name=str(meta.get("scan", "")),
        prompt_tokens=prompt_tokens,
        str_tokens=str_tokens,
        n_layers=max([layer + 1 for layer in inner] + outer + [0]),
        features=torch.tensor(features, dtype=torch.long).reshape(-1, 3),
        errors=torch.tensor(
            [(_layer(n), n["ctx_idx"]) for n in by_kind["error"]], dtype=torch.long
        ).reshape(-1, 2),
        activations=torch.tensor(
            [_float(n.get("activation")) for n in by_kind["feature"]], dtype=torch.float32
        ),
        logit_tokens=torch.tensor([int(n["feature"]) for n in logits], dtype=torch.long),
        logit_probabilities=torch.tensor([float(n.get("token_prob") or 0.0) for n in logits]),
        logit_strings=[_logit_string(n) for n in logits],
        adjacency=_adjacency(n_nodes, index, data["links"], source),
        transcoder_ids=list(meta.get("transcoder_list") or []),
        n_active_features=len(features),
        labels={i: n["clerp"] for i, n in enumerate(by_kind["feature"]) if n.get("clerp")},
        supernodes=supernodes,
        file_metadata=dict(meta),
    )


def _float(value) -> float:
    return float("nan") if value is None else float(value)


def _node_indices(by_kind: dict[str, list[dict]], n_pos: int) -> dict[str, int]:
    """``{node_id: index in the node order}`` (features, errors, tokens at their position,
    logits); warns on ids that appear more than once."""
    start = len(by_kind["feature"]) + len(by_kind["error"])
    pairs = [(n["node_id"], i) for i, n in enumerate(by_kind["feature"] + by_kind["error"])]
    pairs += [(n["node_id"], start + n["ctx_idx"]) for n in by_kind["token"]]
    pairs += [(n["node_id"], start + n_pos + i) for i, n in enumerate(by_kind["logit"])]
    index = dict(pairs)
    if len(index) < len(pairs):
        seen: set[str] = set()
        twice = sorted({k for k, _ in pairs if k in seen or seen.add(k)})
        warnings.warn(
            f"{len(twice)} node ids appear more than once ({twice[:5]}); links to them go to "
            "the last such node, as in circuit-tracer's frontend",
            stacklevel=3,
        )
    return index


def _adjacency(n_nodes: int, index: dict[str, int], links: list[dict], source: str):
    """``[n_nodes, n_nodes]`` with ``adjacency[target, source]`` = each link's weight."""
    adjacency = torch.zeros(n_nodes, n_nodes)
    kept = [(index.get(k["target"]), index.get(k["source"]), k["weight"]) for k in links]
    known = [(t, s, w) for t, s, w in kept if t is not None and s is not None]
    if len(known) < len(kept):
        warnings.warn(
            f"{len(kept) - len(known)} of the {len(kept)} links of {source} name a node that is "
            "not in it; they are dropped, as the frontends drop them",
            stacklevel=3,
        )
    if known:
        t, s, w = zip(*known, strict=True)
        adjacency[list(t), list(s)] = torch.tensor(w, dtype=torch.float32)
    return adjacency
