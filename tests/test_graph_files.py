"""Graph files in circuit-tracer's layout: ids that never collide, the graph-metadata.json index,
feature labels, the scan, and graph JSON read back as a Graph that GraphView opens."""

from __future__ import annotations

import json

import pytest
import torch
from test_circuits import PROMPT, random_transcoders
from tiny import tiny_model

from gsnb.analysis.features import feature_stats
from gsnb.circuits.graph import Graph
from gsnb.circuits.graph_json import node_id
from gsnb.circuits.tracing import trace
from gsnb.viz.graph_view import GraphView


@pytest.fixture(scope="module")
def traced():
    model = tiny_model("gemma3")
    transcoders = random_transcoders(model)
    return model, transcoders, trace(model, transcoders, PROMPT, progress=False)


def colliding_graph() -> Graph:
    """Four layers, six positions; feature 3 of layer 0 at position 5 and error (layer 3,
    position 5) had the same node_id, feature 5 of layer 2 and error (layer 2, position 5) the
    same jsNodeId. Edges: token 5 -> A -> B -> logit, error (2, 5) -> B, error (3, 5) -> logit."""
    n_layers, n_pos = 4, 6
    features = torch.tensor([[0, 5, 3], [2, 5, 5]])
    n_nodes = 2 + n_layers * n_pos + n_pos + 1
    error = lambda layer, pos: 2 + layer * n_pos + pos  # noqa: E731
    token, logit = 2 + n_layers * n_pos + 5, n_nodes - 1
    adjacency = torch.zeros(n_nodes, n_nodes)
    for target, source, weight in [
        (0, token, 1.0),
        (1, 0, 2.0),
        (1, error(2, 5), 3.0),
        (logit, 1, 4.0),
        (logit, error(3, 5), 5.0),
    ]:
        adjacency[target, source] = weight
    return Graph(
        model_name="hand-made",
        prompt_tokens=torch.arange(10, 16),
        str_tokens=[f"t{i}" for i in range(n_pos)],
        n_layers=n_layers,
        features=features,
        activations=torch.tensor([1.0, 2.0]),
        logit_tokens=torch.tensor([7]),
        logit_probabilities=torch.tensor([1.0]),
        logit_strings=["x"],
        adjacency=adjacency,
    )


def describe(node: dict) -> tuple:
    return node["feature_type"], node["layer"], node["ctx_idx"], node["feature"]


def test_node_ids_never_collide_and_links_reach_the_intended_nodes(tmp_path):
    graph = colliding_graph()
    data = json.loads(
        graph.to_graph_files(tmp_path, "g", node_threshold=1.0, edge_threshold=1.0).read_text()
    )
    nodes = data["nodes"]
    assert len({n["node_id"] for n in nodes}) == len(nodes)
    assert len({n["jsNodeId"] for n in nodes}) == len(nodes)
    by_id = {n["node_id"]: describe(n) for n in nodes}
    a = ("cross layer transcoder", "0", 5, 9)  # Cantor pair of (0, 3)
    b = ("cross layer transcoder", "2", 5, 33)  # Cantor pair of (2, 5)
    tok = ("embedding", "E", 5, 5)
    err2, err3 = ("mlp reconstruction error", "2", 5, -1), ("mlp reconstruction error", "3", 5, -1)
    out = ("logit", "5", 5, 7)
    links = {(by_id[k["source"]], by_id[k["target"]], k["weight"]) for k in data["links"]}
    assert links == {
        (tok, a, 1.0),
        (a, b, 2.0),
        (err2, b, 3.0),
        (b, out, 4.0),
        (err3, out, 5.0),
    }


def test_graph_files_are_the_json_and_an_index_that_keeps_other_graphs(traced, tmp_path):
    _, _, graph = traced
    first = graph.to_graph_files(tmp_path, "alpha")
    graph.to_graph_files(tmp_path, "beta", node_threshold=0.5)
    again = graph.to_graph_files(tmp_path, "alpha", node_threshold=0.6)
    assert first == again == tmp_path / "alpha.json"
    index = json.loads((tmp_path / "graph-metadata.json").read_text())
    assert [g["slug"] for g in index["graphs"]] == ["beta", "alpha"]
    for entry in index["graphs"]:
        on_disk = json.loads((tmp_path / f"{entry['slug']}.json").read_text())["metadata"]
        assert entry == on_disk
    assert index["graphs"][1]["node_threshold"] == 0.6
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "alpha.json",
        "beta.json",
        "graph-metadata.json",
    ]
    with pytest.raises(ValueError, match="slug='../up'"):
        graph.to_graph_files(tmp_path, "../up")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "graph-metadata.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="is not a graph index"):
        graph.to_graph_files(tmp_path / "other", "alpha")


def test_clerps_come_from_user_labels_and_feature_stats(traced, tmp_path):
    model, transcoders, graph = traced
    tokens = torch.randint(3, model.hf.config.vocab_size, (6, 10), generator=torch.Generator())
    stats = feature_stats(model, transcoders, tokens, k=3, progress=False)
    node_mask, _ = graph.prune_masks()
    kept = node_mask[: graph.n_features].nonzero().flatten().tolist()
    labelled = kept[0]
    path = graph.to_graph_files(tmp_path, "s", labels={labelled: "my label"}, stats=stats)
    nodes = {n["node_id"]: n for n in json.loads(path.read_text())["nodes"]}
    assert nodes[node_id(graph, labelled)]["clerp"].startswith("my label · ")
    checked = 0
    for node in kept:
        layer, _, feat = graph.features[node].tolist()
        st = next(s for s in stats.values() if s.site_in == f"mlp_in.{layer}")
        record = nodes.get(node_id(graph, node))
        if record is None or not st.top_examples(feat):
            continue
        best = st.top_examples(feat)[0]
        assert f"fires on {best.str_tokens[best.position]!r}" in record["clerp"]
        assert f"promotes {st.logit_effects(feat).top_tokens[0]!r}" in record["clerp"]
        checked += 1
    assert checked > 5


def test_scan_is_neuronpedias_model_when_every_transcoder_has_an_id(tmp_path):
    model = tiny_model("gemma3")
    transcoders = random_transcoders(model)
    for layer, tc in enumerate(transcoders):
        tc.cfg.neuronpedia_id = f"gemma-2-2b/{layer}-gemmascope-transcoder-16k"
    graph = trace(model, transcoders, PROMPT, max_feature_nodes=30, progress=False)

    def metadata(**kwargs):
        return json.loads(graph.to_graph_files(tmp_path, "g", **kwargs).read_text())["metadata"]

    meta = metadata()
    assert meta["scan"] == "gemma-2-2b" and meta["transcoder_list"] == []
    assert meta["feature_details"] == {"neuronpedia_source_set": "gemmascope-transcoder-16k"}
    assert metadata(scan="my-scan")["scan"] == "my-scan"
    graph.neuronpedia_ids[1] = None
    custom = metadata()
    assert custom["scan"].startswith("custom-") and custom["scan"] != model.name
    assert custom["transcoder_list"] == graph.transcoder_ids == [f"mlp_in.{i}" for i in range(3)]
    assert "feature_details" not in custom
    assert metadata(scan=["a", "b", "c"])["transcoder_list"] == ["a", "b", "c"]
    assert metadata(scan=["a", "b", "c"])["scan"] != custom["scan"]


def test_a_written_graph_reads_back_with_its_nodes_links_and_labels(traced, tmp_path):
    _, _, graph = traced
    node_mask, _ = graph.prune_masks()
    kept = node_mask[: graph.n_features].nonzero().flatten()
    graph.group("pair", kept[:2].tolist())
    try:
        path = graph.to_graph_files(tmp_path, "tiny", labels={int(kept[0]): "first"})
    finally:
        graph.supernodes.clear()
    data = json.loads(path.read_text())
    loaded = Graph.from_json(path)

    features = [n for n in data["nodes"] if n["feature_type"] == "cross layer transcoder"]
    assert loaded.n_features == len(features) > 10
    errors = [n for n in data["nodes"] if n["feature_type"] == "mlp reconstruction error"]
    assert loaded.n_errors == len(errors) == graph.prune().n_errors
    assert loaded.n_layers == graph.n_layers and loaded.str_tokens == graph.str_tokens
    assert torch.equal(loaded.prompt_tokens, graph.prompt_tokens)
    assert torch.equal(loaded.logit_tokens, graph.logit_tokens)
    torch.testing.assert_close(loaded.logit_probabilities, graph.logit_probabilities)
    assert loaded.logit_strings == graph.logit_strings
    for i in range(loaded.n_features):
        original = graph.feature_node(*loaded.features[i].tolist())
        assert loaded.activations[i] == graph.activations[original]
    index = {node_id(loaded, i): i for i in range(loaded.n_nodes)}
    assert int((loaded.adjacency != 0).sum()) == len(data["links"])
    for link in data["links"]:
        assert loaded.adjacency[index[link["target"]], index[link["source"]]] == link["weight"]
    # Each kept edge is the traced graph's edge between the same two nodes.
    original_index = {node_id(graph, i): i for i in range(graph.n_nodes)}
    for link in data["links"][::17]:
        t, s = original_index[link["target"]], original_index[link["source"]]
        assert graph.adjacency[t, s] == link["weight"]
    assert loaded.labels == {index[node_id(graph, int(kept[0]))]: "first"}
    assert loaded.supernodes == {"pair": sorted(index[node_id(graph, int(k))] for k in kept[:2])}
    assert loaded.file_metadata["slug"] == "tiny"

    view = GraphView(loaded)
    assert view.pruned.n_features == loaded.n_features  # a file's graph shows whole at first
    hover = [t for tr in view.figure.data if tr.mode == "markers" for t in (tr.text or ())]
    assert any("first" in t for t in hover)


def test_reading_what_is_no_graph_says_so(tmp_path):
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        Graph.from_json(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({"nodes": [], "links": []}))
    with pytest.raises(ValueError, match=r"is no circuit-tracer graph: it has no \['metadata'\]"):
        Graph.from_json(tmp_path / "b.json")
    (tmp_path / "c.json").write_text(json.dumps({"metadata": {}, "nodes": [], "links": []}))
    with pytest.raises(ValueError, match=r"it has no \['metadata.prompt_tokens'\]"):
        Graph.from_json(tmp_path / "c.json")


def test_circuit_tracer_error_ids_that_equal_a_feature_id_warn(tmp_path):
    meta = {"slug": "s", "scan": "x", "prompt_tokens": ["a", "b"], "prompt": "ab"}
    feature = {"node_id": "0_1_1", "feature": 2, "layer": "0", "ctx_idx": 1,
               "feature_type": "cross layer transcoder", "activation": 1.0}  # fmt: skip
    error = {"node_id": "0_1_1", "feature": -1, "layer": "1", "ctx_idx": 1,
             "feature_type": "mlp reconstruction error"}  # fmt: skip
    logit = {"node_id": "3_5_1", "feature": 5, "layer": "3", "ctx_idx": 1, "token_prob": 1.0,
             "feature_type": "logit", "clerp": 'Output "q" (p=1.000)'}  # fmt: skip
    link = {"source": "0_1_1", "target": "3_5_1", "weight": 1.0}
    data = {"metadata": meta, "nodes": [feature, error, logit], "links": [link]}
    (tmp_path / "g.json").write_text(json.dumps(data))
    with pytest.warns(UserWarning, match=r"1 node ids appear more than once \(\['0_1_1'\]\)"):
        graph = Graph.from_json(tmp_path / "g.json")
    assert graph.n_layers == 2 and graph.logit_strings == ["q"]
    assert graph.features.tolist() == [[0, 1, 1]]
