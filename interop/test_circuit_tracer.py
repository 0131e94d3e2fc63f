"""gsnb's graph files against circuit-tracer's own code (0.5.0, in its own venv):

* its pydantic ``Model`` and ``Metadata`` (what its ``create_graph_files`` builds and its server
  serves) accept gsnb's ``{slug}.json`` and ``graph-metadata.json``, and dump gsnb's nodes back
  unchanged; its URL decoder reads gsnb's node ids as the features they are; its
  ``add_graph_metadata`` and gsnb share one index;
* a graph written by its own ``create_graph_files`` (its ``Graph`` built from the tensors of a
  gsnb trace) opens with ``gsnb.Graph.from_json`` and in ``GraphView``, and its pruning equals
  gsnb's own files of the same graph.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_circuits import PROMPT, random_transcoders
from tiny import tiny_model, tiny_tokenizer

from gsnb.circuits.graph import Graph
from gsnb.circuits.graph_json import FEATURE_TYPES, node_record
from gsnb.circuits.tracing import trace
from gsnb.viz.graph_view import GraphView

VALIDATE = """
import json, sys, urllib.parse
from pathlib import Path
from circuit_tracer.frontend.graph_models import Metadata, Model
from circuit_tracer.frontend.utils import add_graph_metadata
from circuit_tracer.utils.decode_url_features import decode_url_features

args = json.loads(sys.argv[1])
folder = Path(args["folder"])
out = {}
for slug in args["slugs"]:
    data = json.loads((folder / f"{slug}.json").read_text())
    model = Model.model_validate(data, strict=True)
    dumped = model.model_dump()
    ids = [node.node_id for node in model.nodes]
    query = {"pinnedIds": ",".join(ids), "supernodes": json.dumps(data["qParams"]["supernodes"])}
    supernodes, singles = decode_url_features("https://x/?" + urllib.parse.urlencode(query))
    out[slug] = {
        "nodes_unchanged": dumped["nodes"] == data["nodes"],
        "links_unchanged": dumped["links"] == data["links"],
        "qparams_unchanged": dumped["qParams"] == data["qParams"],
        "metadata": dumped["metadata"],
        "decoded": sorted([f.layer, f.pos, f.feature_idx] for f in singles),
        "supernodes": {k: sorted([f.layer, f.pos, f.feature_idx] for f in v)
                       for k, v in supernodes.items()},
    }
index = json.loads((folder / "graph-metadata.json").read_text())
out["index"] = [Metadata.model_validate(g, strict=True).model_dump() for g in index["graphs"]]
add_graph_metadata({**out["index"][0], "slug": "from-circuit-tracer"}, str(folder))
print(json.dumps(out))
"""

CREATE = """
import json, sys
import torch
from safetensors.torch import load_file
from circuit_tracer.attribution.targets import LogitTarget
from circuit_tracer.graph import Graph
from circuit_tracer.utils.create_graph_files import create_graph_files
from circuit_tracer.utils.tl_nnsight_mapping import UnifiedConfig

args = json.loads(sys.argv[1])
t = load_file(args["tensors"])
cfg = UnifiedConfig(**args["cfg"])
graph = Graph(
    input_string=args["prompt"],
    input_tokens=t["tokens"],
    active_features=t["features"],
    adjacency_matrix=t["adjacency"],
    cfg=cfg,
    selected_features=torch.arange(len(t["features"])),
    activation_values=t["activations"],
    logit_targets=[LogitTarget(s, int(i)) for s, i in zip(args["logit_strings"], t["logits"])],
    logit_probabilities=t["probs"],
    scan=args["scan"],
)
create_graph_files(graph, args["slug"], args["folder"], node_threshold=0.8, edge_threshold=0.98)
print(json.dumps({"ok": True}))
"""


@pytest.fixture(scope="module")
def traced():
    model = tiny_model("gemma3")
    return model, trace(model, random_transcoders(model), PROMPT, progress=False)


def test_circuit_tracers_models_accept_gsnb_graph_files(peer, traced, tmp_path):
    _, graph = traced
    folder = tmp_path / "graphs"
    node_mask, _ = graph.prune_masks()
    kept = node_mask[: graph.n_features].nonzero().flatten().tolist()
    graph.group("pair", kept[:2])
    try:
        graph.to_graph_files(folder, "tiny", labels={kept[0]: "a label"})
    finally:
        graph.supernodes.clear()
    graph.to_graph_files(folder, "tiny-sparse", node_threshold=0.5, scan="my-scan")
    result = peer(
        "circuit-tracer",
        VALIDATE,
        {"folder": str(folder), "slugs": ["tiny", "tiny-sparse"]},
        tmp_path,
    )

    for slug in ("tiny", "tiny-sparse"):
        data = json.loads((folder / f"{slug}.json").read_text())
        checked = result[slug]
        assert checked["nodes_unchanged"] and checked["links_unchanged"]
        assert checked["qparams_unchanged"]
        assert checked["metadata"] == {k: data["metadata"][k] for k in checked["metadata"]}
        # circuit-tracer's URL decoder reads exactly the feature nodes as features (token and
        # logit ids parse as layers -1 and n_layers + 1; error ids must not parse).
        features = sorted(
            [int(n["layer"]), n["ctx_idx"], int(n["node_id"].split("_")[1])]
            for n in data["nodes"]
            if n["feature_type"] == FEATURE_TYPES["feature"]
        )
        decoded = [f for f in checked["decoded"] if 0 <= f[0] < graph.n_layers]
        assert decoded == features and len(features) > 5
    pair = sorted(graph.features[i].tolist() for i in kept[:2])
    assert result["tiny"]["supernodes"] == {"pair": pair}
    assert [m["slug"] for m in result["index"]] == ["tiny", "tiny-sparse"]
    assert result["tiny-sparse"]["metadata"]["scan"] == "my-scan"
    # gsnb keeps the entry circuit-tracer added to the shared index, and replaces its own.
    graph.to_graph_files(folder, "tiny", node_threshold=0.7)
    index = json.loads((folder / "graph-metadata.json").read_text())["graphs"]
    assert [g["slug"] for g in index] == ["tiny-sparse", "from-circuit-tracer", "tiny"]


def node_key(node: dict, shift: int = 0) -> tuple:
    """A graph-file node by what it is, not by its id: kind, layer, position and the feature
    index less ``shift`` (features) or the token id (logits)."""
    index = node["feature"] if node["feature_type"] == FEATURE_TYPES["logit"] else None
    if node["feature_type"] == FEATURE_TYPES["feature"]:
        index = int(node["node_id"].split("_")[1]) - shift
    return node["feature_type"], node["layer"], node["ctx_idx"], index


def links_by_key(data: dict, shift: int = 0) -> set[tuple]:
    keys = {n["node_id"]: node_key(n, shift) for n in data["nodes"]}
    return {(keys[k["source"]], keys[k["target"]], k["weight"]) for k in data["links"]}


def circuit_tracer_files(peer, model, graph: Graph, shift: int, tmp_path) -> Path:
    """``{slug}.json`` and the index written by circuit-tracer's ``create_graph_files`` from its
    own ``Graph`` holding ``graph``'s tensors (feature indices plus ``shift``)."""
    features = graph.features.clone()
    features[:, 2] += shift
    tensors = {
        "tokens": graph.prompt_tokens,
        "features": features,
        "adjacency": graph.adjacency,
        "activations": graph.activations,
        "logits": graph.logit_tokens,
        "probs": graph.logit_probabilities,
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp_path / "graph.safetensors")
    tiny_tokenizer().save_pretrained(tmp_path / "tokenizer")
    # The peer's older transformers does not know the class name this one writes.
    config_path = tmp_path / "tokenizer" / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "tokenizer_class": "PreTrainedTokenizerFast"}))
    cfg = dict(
        n_layers=model.n_layers, d_model=model.d_model, d_head=model.head_dim,
        n_heads=model.config.num_attention_heads, d_mlp=model.config.intermediate_size,
        d_vocab=model.config.vocab_size, tokenizer_name=str(tmp_path / "tokenizer"),
        model_name=model.name, original_architecture="Gemma3ForCausalLM",
    )  # fmt: skip
    folder = tmp_path / "graphs"
    args = {
        "tensors": str(tmp_path / "graph.safetensors"),
        "cfg": cfg,
        "prompt": "".join(graph.str_tokens),
        "logit_strings": graph.logit_strings,
        "scan": "tiny-scan",
        "slug": "theirs",
        "folder": str(folder),
    }
    peer("circuit-tracer", CREATE, args, tmp_path)
    return folder / "theirs.json"


def test_create_graph_files_output_opens_in_gsnb(peer, traced, tmp_path):
    model, graph = traced
    # circuit-tracer's error ids "0_{layer}_{pos}" equal feature ids of layer 0 with index
    # < n_layers; shifting every feature index keeps its file free of such collisions.
    shift = 1000
    path = circuit_tracer_files(peer, model, graph, shift, tmp_path)
    theirs = json.loads(path.read_text())
    index = json.loads((path.parent / "graph-metadata.json").read_text())
    assert [g["slug"] for g in index["graphs"]] == ["theirs"]

    loaded = Graph.from_json(path)
    kinds = [n["feature_type"] for n in theirs["nodes"]]
    assert loaded.n_features == kinds.count(FEATURE_TYPES["feature"]) > 10
    assert loaded.n_layers == graph.n_layers and loaded.str_tokens == graph.str_tokens
    assert torch.equal(loaded.prompt_tokens, graph.prompt_tokens)
    assert torch.equal(loaded.logit_tokens, graph.logit_tokens)
    assert loaded.logit_strings == graph.logit_strings
    torch.testing.assert_close(loaded.logit_probabilities, graph.logit_probabilities)
    ids = {n["node_id"]: n for n in theirs["nodes"]}
    for i in range(loaded.n_features):
        layer, pos, feat = loaded.features[i].tolist()
        activation = ids[f"{layer}_{feat}_{pos}"]["activation"]
        assert loaded.activations[i] == activation
        assert graph.activations[graph.feature_node(layer, pos, feat - shift)] == activation
    # Every link of their file is the loaded graph's edge between the same two nodes.
    assert int((loaded.adjacency != 0).sum()) == len(theirs["links"])
    where = {node_key(node_record(loaded, i, 0.0), shift): i for i in range(loaded.n_nodes)}
    for source, target, weight in links_by_key(theirs, shift):
        assert loaded.adjacency[where[target], where[source]] == weight

    # circuit-tracer's pruning of the graph equals gsnb's: the same nodes, links and scores.
    ours = json.loads(graph.to_graph_files(tmp_path / "ours", "ours").read_text())
    ours_nodes = {node_key(n): n for n in ours["nodes"]}
    theirs_nodes = {node_key(n, shift): n for n in theirs["nodes"]}
    assert set(ours_nodes) == set(theirs_nodes)
    for key, node in theirs_nodes.items():
        mine = ours_nodes[key]["influence"]
        assert node["influence"] == (None if mine is None else pytest.approx(mine, rel=1e-5))
    assert links_by_key(ours) == links_by_key(theirs, shift)

    view = GraphView(loaded)
    assert view.pruned.n_features == loaded.n_features
    assert f"{loaded.n_features} features" in view.scores.value
