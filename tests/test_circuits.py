"""Attribution graphs: exact replacement model, edges equal to autograd Jacobians, pruning,
scores, files and interventions, on tiny random Gemma 3 / Gemma 2 models, with per-layer
transcoders and with a cross-layer transcoder."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import tiny_model

import gsnb
from gsnb.circuits.graph import Graph
from gsnb.circuits.graph_json import FEATURE_TYPES, node_id
from gsnb.circuits.tracing import ReplacementModel, freeze_prompt, trace
from gsnb.saes.clt import CLTConfig, CrossLayerTranscoder
from gsnb.saes.sae import JumpReLUSAE, SAEConfig

PROMPT = "the cat sat on the mat ."


def random_transcoders(model, d_sae=48, seed=1, skip_layer=1, decoder_scale=0.3, reads="mlp_in"):
    torch.manual_seed(seed)
    transcoders = []
    for layer in range(model.n_layers):
        cfg = SAEConfig(
            d_in=model.d_model,
            d_sae=d_sae,
            site_in=f"{reads}.{layer}",
            site_out=f"mlp_out.{layer}",
            skip=layer == skip_layer,
        )
        tc = JumpReLUSAE(cfg)
        with torch.no_grad():
            tc.W_enc.normal_(0, 0.3)
            tc.W_dec.normal_(0, decoder_scale)
            tc.b_enc.normal_(0, 0.1)
            tc.b_dec.normal_(0, 0.1)
            tc.threshold.fill_(0.3)
            if tc.W_skip is not None:
                tc.W_skip.normal_(0, 0.1)
        transcoders.append(tc.requires_grad_(False))
    return transcoders


def random_clt(model, d_sae=32, seed=2, decoder_scale=0.2, skip=True):
    """A CLT whose every source writes every later layer (nonzero cross-layer decoders)."""
    torch.manual_seed(seed)
    cfg = CLTConfig(n_layers=model.n_layers, d_in=model.d_model, d_sae=d_sae, skip=skip)
    clt = CrossLayerTranscoder(cfg)
    with torch.no_grad():
        clt.W_enc.normal_(0, 0.3)
        clt.b_enc.normal_(0, 0.1)
        clt.threshold.fill_(0.3)
        clt.b_dec.normal_(0, 0.1)
        for dec in clt.W_dec:
            dec.normal_(0, decoder_scale)
        if skip:
            clt.W_skip.normal_(0, 0.1)
    return clt.requires_grad_(False)


def make_transcoders(model, kind: str):
    if kind == "pre-gain":  # Gemma Scope's kind: reading x / rms(x) before the norm's gain
        # Seed 2: no feature sits so near its threshold that a 1% change flips it, so the
        # frozen model is linear around the prompt where the intervention tests probe it.
        return random_transcoders(model, seed=2, reads="mlp_normalized")
    return random_transcoders(model) if kind == "per-layer" else random_clt(model)


def pre_gain_inputs(model, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Per layer ``[pos, d_model]`` ``x / rms(x)`` of each pre-MLP norm's input ``x``, from a plain
    torch hook on transformers' modules (independent of gsnb's sites)."""
    inputs = []
    norms = [block.pre_feedforward_layernorm for block in model.text_model.layers]
    handles = [n.register_forward_pre_hook(lambda _m, args: inputs.append(args[0])) for n in norms]
    try:
        with torch.no_grad():
            model.hf(input_ids=tokens[None])
    finally:
        for handle in handles:
            handle.remove()
    eps = model.config.rms_norm_eps
    return [x[0] / (x[0].pow(2).mean(-1, keepdim=True) + eps).sqrt() for x in inputs]


CONFIGS = dict(
    params=[("gemma3", "per-layer"), ("gemma2", "per-layer"), ("gemma3", "clt"),
            ("gemma2", "pre-gain")],
    ids=lambda p: "-".join(p),
)  # fmt: skip
"""Fixture parameters: the architectures and transcoder kinds graphs are traced with."""


@pytest.fixture(**CONFIGS)
def traced(request):
    arch, kind = request.param
    model = tiny_model(arch)
    transcoders = make_transcoders(model, kind)
    graph = trace(model, transcoders, PROMPT, max_feature_nodes=10_000, progress=False)
    return model, transcoders, graph


def target_values(
    rm: ReplacementModel, graph: Graph, source_scale: torch.Tensor, outputs=None
) -> torch.Tensor:
    """Every target's input (feature pre-activations, then the output nodes: demeaned logits
    before soft-capping, or ``outputs(final [d_model])`` of the last position's unembedding
    input) with each source's contribution multiplied by ``source_scale`` — by autograd-able
    forward code, independent of the hand-written transpose that ``trace`` uses."""
    frozen, n_feat, n_pos = rm.frozen, graph.n_features, graph.n_pos
    feat_scale = source_scale[:n_feat]
    err_scale = source_scale[n_feat : n_feat + graph.n_errors].view(graph.n_layers, n_pos)
    tok_scale = source_scale[n_feat + graph.n_errors :]
    resid = frozen.embed * tok_scale[:, None]
    preacts = torch.zeros(n_feat)
    stack, sources = rm.stack, []
    for layer in range(stack.n_layers):
        resid_mid = resid + rm._attention(layer, resid)
        x = rm.mlp_input(layer, resid_mid)
        pre = stack.pre_activations(layer, x)
        mine = (graph.features[:, 0] == layer).nonzero().flatten()
        preacts = preacts.index_put((mine,), pre[graph.features[mine, 1], graph.features[mine, 2]])
        acts = torch.zeros_like(pre)
        sources.append(
            acts.index_put(
                (graph.features[mine, 1], graph.features[mine, 2]),
                graph.activations[mine] * feat_scale[mine],
            )
        )
        # Every source at or below this layer whose decoder reaches it writes here.
        out = stack.output_bias(layer) + frozen.errors[layer] * err_scale[layer][:, None]
        for s, acts in enumerate(sources):
            if layer - s < stack.decoders(s).shape[1]:
                out = out + acts @ stack.decoders(s)[:, layer - s]
        if stack.skip(layer) is not None:
            out = out + x @ stack.skip(layer)
        resid = resid_mid + out
    final = resid[-1] * frozen.norm_scales["final"][-1] * rm.g_final
    if outputs is not None:
        return torch.cat([preacts, outputs(final)])
    logits = final @ rm.W_U.T
    demeaned = logits[graph.logit_tokens] - logits.mean()
    return torch.cat([preacts, demeaned])


@pytest.mark.parametrize("kind", ["per-layer", "clt", "pre-gain"])
def test_replacement_model_reproduces_the_logits(kind):
    for arch in ("gemma3", "gemma2"):
        model = tiny_model(arch)
        transcoders = make_transcoders(model, kind)
        tokens = model.to_tokens(PROMPT)[0]
        frozen = freeze_prompt(model, transcoders, tokens)
        rm = ReplacementModel(model, transcoders, frozen)
        expected = model(tokens[None])[0]
        assert (rm.forward() - expected).abs().max() <= 1e-4
        # Re-encoding from the replacement model's own transcoder inputs gives the same logits:
        # it rebuilds each input (with the norm's gain or without) as the transcoder reads it.
        assert (rm.forward(recompute_features=True) - expected).abs().max() <= 1e-4


def test_pre_gain_transcoders_read_x_over_rms_in_the_replacement_model():
    model = tiny_model("gemma2")
    transcoders = make_transcoders(model, "pre-gain")
    tokens = model.to_tokens(PROMPT)[0]
    frozen = freeze_prompt(model, transcoders, tokens)
    rm = ReplacementModel(model, transcoders, frozen)
    expected = pre_gain_inputs(model, tokens)
    _, cache = model.run_with_cache(tokens[None], model.sites(("resid_post", "mlp_out")))
    for layer in range(model.n_layers):
        resid_mid = cache[f"resid_post.{layer}"][0] - cache[f"mlp_out.{layer}"][0]
        torch.testing.assert_close(rm.mlp_input(layer, resid_mid), expected[layer])
        torch.testing.assert_close(frozen.mlp_in[layer], expected[layer])


def test_edges_equal_the_jacobian_of_the_frozen_model(traced):
    model, transcoders, graph = traced
    rm = graph.context.replacement
    n_sources = graph.n_features + graph.n_errors + graph.n_pos
    assert graph.n_features == graph.n_active_features > 50
    jacobian = torch.autograd.functional.jacobian(
        lambda s: target_values(rm, graph, s), torch.ones(n_sources), vectorize=True
    )
    targets = torch.cat(
        [
            torch.arange(graph.n_features),
            torch.arange(graph.n_nodes - graph.n_logits, graph.n_nodes),
        ]
    )
    edges = graph.adjacency[targets][:, :n_sources]
    torch.testing.assert_close(edges, jacobian, rtol=1e-4, atol=1e-5)
    # Features only read from earlier layers: same-layer and later edges are zero.
    layer = graph.features[:, 0]
    later = layer[:, None] <= layer[None, :]
    assert (graph.adjacency[: graph.n_features, : graph.n_features][later] == 0).all()


def test_every_node_input_is_its_edges_plus_fixed_biases(traced):
    model, transcoders, graph = traced
    rm = graph.context.replacement
    n_sources = graph.n_features + graph.n_errors + graph.n_pos
    full = target_values(rm, graph, torch.ones(n_sources))
    biases_only = target_values(rm, graph, torch.zeros(n_sources))
    targets = torch.cat(
        [
            torch.arange(graph.n_features),
            torch.arange(graph.n_nodes - graph.n_logits, graph.n_nodes),
        ]
    )
    incoming = graph.adjacency[targets].sum(1)
    torch.testing.assert_close(incoming + biases_only, full, rtol=1e-4, atol=1e-4)
    # And the feature inputs are the transcoders' real pre-activations on the prompt, from the
    # value each one reads: the norm's output, or x / rms(x) from a plain torch hook.
    _, cache = model.run_with_cache(PROMPT, model.sites("mlp_in"))
    pre_gain = pre_gain_inputs(model, graph.prompt_tokens)
    for node in range(0, graph.n_features, 7):
        layer, pos, feat = graph.features[node].tolist()
        reads_pre_gain = not isinstance(transcoders, CrossLayerTranscoder) and transcoders[
            layer
        ].site_in.startswith("mlp_normalized")
        x = pre_gain[layer][pos] if reads_pre_gain else cache[f"mlp_in.{layer}"][0, pos]
        if isinstance(transcoders, CrossLayerTranscoder):
            pre = (x @ transcoders.W_enc[layer] + transcoders.b_enc[layer])[feat]
        else:
            pre = transcoders[layer].pre_activations(x)[feat]
        torch.testing.assert_close(full[node], pre, rtol=1e-4, atol=1e-4)


def test_limited_feature_budget_keeps_the_most_influential(traced):
    model, transcoders, full = traced
    small = trace(model, transcoders, PROMPT, max_feature_nodes=20, batch_size=8, progress=False)
    assert small.n_features == 20 and small.n_active_features == full.n_features
    # Rows of visited features equal the full graph's rows over the shared sources.
    node = 0
    big = full.feature_node(*small.features[node].tolist())
    shared = [full.feature_node(*f.tolist()) for f in small.features]
    torch.testing.assert_close(small.adjacency[node, :20], full.adjacency[big, shared])
    influence = full.influence()[: full.n_features]
    chosen = torch.tensor(shared)
    assert influence[chosen].mean() > influence.mean()


def test_pruning_keeps_logits_and_the_stated_share_of_influence(traced):
    _, _, graph = traced
    pruned = graph.prune(node_threshold=0.8, edge_threshold=0.98)
    assert pruned.n_logits == graph.n_logits
    assert 0 < pruned.n_features < graph.n_features
    assert torch.equal(pruned.logit_tokens, graph.logit_tokens)
    # With every edge kept, the kept nodes carry at least the stated share of all influence.
    node_mask, _ = graph.prune_masks(node_threshold=0.8, edge_threshold=1.0)
    influence = graph.influence()
    assert influence[node_mask].sum() >= 0.8 * influence.sum()
    assert influence[~node_mask].max() <= influence[node_mask & (influence > 0)].min()
    with pytest.raises(ValueError, match=r"node_threshold=1.5 must be in \(0, 1\]"):
        graph.prune(node_threshold=1.5)


def test_pruning_drops_error_nodes_left_without_edges_as_circuit_tracer_does(traced, tmp_path):
    _, _, graph = traced
    pruned = graph.prune()
    errors = pruned.slices()["error"]
    assert 0 < pruned.n_errors < graph.n_errors
    # Every error node left writes into the pruned graph.
    assert (pruned.adjacency[:, errors] != 0).any(0).all()
    # The same error nodes as the graph file, which lists only nodes with a link.
    data = json.loads(graph.to_json(tmp_path / "graph.json").read_text())
    in_file = {n["node_id"] for n in data["nodes"] if n["feature_type"] == FEATURE_TYPES["error"]}
    assert {node_id(pruned, i) for i in range(errors.start, errors.stop)} == in_file
    # Each keeps its (layer, pos) and its edges.
    original = {node_id(graph, i): i for i in range(graph.n_nodes)}
    for i in range(errors.start, errors.stop):
        source = original[node_id(pruned, i)]
        assert graph.node_layer_pos(source) == pruned.node_layer_pos(i)
        for target in (pruned.adjacency[:, i] != 0).nonzero().flatten().tolist():
            edge = graph.adjacency[original[node_id(pruned, target)], source]
            assert pruned.adjacency[target, i] == edge
    loaded = Graph.load(pruned.save(tmp_path / "pruned"))
    assert torch.equal(loaded.errors, pruned.errors)
    assert loaded.scores() == pruned.scores()


def test_scores_are_one_without_error_and_drop_with_it():
    model = tiny_model("gemma3")
    with torch.no_grad():
        for block in model.text_model.layers:
            block.post_feedforward_layernorm.weight.fill_(-1.0)  # the MLPs now output exactly 0
    exact = random_transcoders(model, decoder_scale=0.0)
    for tc in exact:
        with torch.no_grad():
            tc.b_dec.zero_()
            if tc.W_skip is not None:
                tc.W_skip.zero_()
    graph = trace(model, exact, PROMPT, progress=False)
    assert graph.adjacency[:, graph.slices()["error"]].abs().max() == 0
    scores = graph.scores()
    assert scores.replacement == pytest.approx(1.0) and scores.completeness == pytest.approx(1.0)

    noisy = trace(model, random_transcoders(model), PROMPT, progress=False).scores()
    assert noisy.replacement < 0.99 and noisy.completeness < 0.99


def test_interventions_with_factor_one_change_nothing(traced):
    _, _, graph = traced
    node = int(graph.influence()[: graph.n_features].argmax())
    layer, pos, feat = graph.features[node].tolist()
    result = graph.intervene([(layer, pos, feat, 1.0)])
    assert result.measured.abs().max() == 0
    assert result.predicted.abs().max() == 0


def test_predicted_and_measured_logit_changes_agree_with_frozen_attention(traced):
    _, _, graph = traced
    influence = graph.influence()[: graph.n_features]
    # Small changes keep every downstream JumpReLU on the same side of its threshold, where the
    # frozen model is exactly linear; a feature that flips on or off would jump by its threshold.
    for node in influence.topk(3).indices.tolist():
        layer, pos, feat = graph.features[node].tolist()
        result = graph.intervene([(layer, pos, feat, 0.99)])
        scale = result.measured.abs().max()
        assert scale > 0
        assert (result.measured - result.predicted).abs().max() <= 1e-3 * scale + 1e-6
    # The live model with its real attention moves the same way.
    layer, pos, feat = graph.features[int(influence.argmax())].tolist()
    live = graph.intervene([(layer, pos, feat, 0.95)], freeze_attention=False)
    frozen = graph.intervene([(layer, pos, feat, 0.95)])
    assert torch.sign(live.measured[0]) == torch.sign(frozen.measured[0])


def test_intervening_on_a_feature_not_in_the_graph_is_an_error(traced):
    _, _, graph = traced
    with pytest.raises(KeyError, match="is not in the graph"):
        graph.intervene([(0, 0, 10_000, 0.0)])


CIRCUIT_TRACER_NODE_TYPES = {
    "node_id": str,
    "feature": int,
    "layer": str,
    "ctx_idx": int,
    "feature_type": str,
    "token_prob": float,
    "is_target_logit": bool,
    "run_idx": int,
    "reverse_ctx_idx": int,
    "jsNodeId": str,
    "clerp": str,
}


def test_json_follows_circuit_tracers_schema(traced, tmp_path):
    _, _, graph = traced
    graph.group("cat", [graph.feature_node(*graph.features[0].tolist())])
    data = json.loads(graph.to_json(tmp_path / "graph.json", slug="tiny").read_text())
    assert set(data) == {"metadata", "qParams", "nodes", "links"}
    meta = data["metadata"]
    for key, kind in {
        "slug": str,
        "scan": str,
        "transcoder_list": list,
        "prompt_tokens": list,
        "prompt": str,
    }.items():
        assert isinstance(meta[key], kind)
    assert set(data["qParams"]) == {"pinnedIds", "supernodes", "linkType", "clickedId", "sg_pos"}
    for node in data["nodes"]:
        for key, kind in CIRCUIT_TRACER_NODE_TYPES.items():
            assert isinstance(node[key], kind), (key, node)
        assert node["influence"] is None or isinstance(node["influence"], float)
    ids = {node["node_id"] for node in data["nodes"]}
    assert len(ids) == len(data["nodes"])
    assert len({node["jsNodeId"] for node in data["nodes"]}) == len(data["nodes"])
    for link in data["links"]:
        assert link["source"] in ids and link["target"] in ids and isinstance(link["weight"], float)
    kinds = {node["feature_type"] for node in data["nodes"]}
    assert {"embedding", "logit", "cross layer transcoder"} <= kinds
    assert sum(node["is_target_logit"] for node in data["nodes"]) == 1


def test_save_load_round_trips(traced, tmp_path):
    _, _, graph = traced
    graph.group("first", [0, 1])
    graph.labels = {1: "a label"}
    loaded = Graph.load(graph.save(tmp_path / "g"))
    assert loaded.labels == {1: "a label"}
    assert loaded.neuronpedia_ids == graph.neuronpedia_ids == [None] * graph.n_layers
    for name in ("prompt_tokens", "features", "activations", "logit_tokens", "adjacency"):
        assert torch.equal(getattr(loaded, name), getattr(graph, name))
    assert loaded.supernodes == {"first": [0, 1]}
    assert loaded.str_tokens == graph.str_tokens
    assert loaded.scores() == graph.scores()


def test_missing_or_misplaced_transcoders_are_named():
    model = tiny_model("gemma3")
    transcoders = random_transcoders(model)
    with pytest.raises(ValueError, match=r"missing layers \[1\]"):
        trace(model, {0: transcoders[0], 2: transcoders[2]}, PROMPT)
    wrong = JumpReLUSAE(SAEConfig(d_in=32, d_sae=8, site_in="resid_post.1"))
    with pytest.raises(
        ValueError,
        match=r"is given as the transcoder for layer 1 but reads resid_post.1 and writes "
        r"resid_post.1: tracing needs one per layer that reads mlp_in.1 or mlp_normalized.1 and "
        r"writes mlp_out.1",
    ):
        trace(model, [transcoders[0], wrong, transcoders[2]], PROMPT)
    with pytest.raises(ValueError, match=r"logit_prob=0 must be in \(0, 1\]"):
        trace(model, transcoders, PROMPT, logit_prob=0)
    assert gsnb.core.hooks.count_hooks(model.hf) == 0


def test_influence_estimate_equals_the_dense_power_series():
    """visit_features' estimate against ``direct (I - A)^-1`` with ``A`` the dense normalised
    matrix whose only nonzero rows are the visited features' (lower-triangular: acyclic)."""
    from gsnb.circuits.pruning import normalize
    from gsnb.circuits.tracing import _feature_influence

    gen = torch.Generator().manual_seed(0)
    n_feat, n_other = 40, 7
    visited = torch.randperm(n_feat, generator=gen)[:15]
    rows = torch.randn(len(visited), n_feat + n_other, generator=gen)
    for i, target in enumerate(visited.tolist()):
        rows[i, target:n_feat] = 0.0  # a feature's sources come before it
    direct = torch.rand(n_feat, generator=gen)
    dense = torch.zeros(n_feat, n_feat)
    dense[visited] = normalize(rows)[:, :n_feat]
    expected = direct @ torch.linalg.inv(torch.eye(n_feat) - dense)
    got = _feature_influence(direct, visited, rows, 1 / rows.abs().sum(1))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(_feature_influence(direct, visited[:0], rows[:0], rows[:0, 0]), direct)
