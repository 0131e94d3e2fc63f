"""Custom output targets of trace (a logit difference, a residual direction) and interventions
that set activations to values, as circuit-tracer allows; checked against autograd Jacobians,
the real model's forward pass and an independent linear solve."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_circuits import (
    CONFIGS,
    PROMPT,
    make_transcoders,
    random_transcoders,
    target_values,
)
from tiny import tiny_model

import gsnb
from gsnb.circuits.tracing import trace


@pytest.fixture(**CONFIGS)
def custom(request):
    arch, kind = request.param
    model = tiny_model(arch)
    probe = torch.randn(model.d_model, generator=torch.Generator().manual_seed(5))
    target = {"cat-dog": gsnb.logit_diff("cat", "dog"), "probe": probe}
    transcoders = make_transcoders(model, kind)
    graph = trace(
        model, transcoders, PROMPT, max_feature_nodes=10_000, progress=False, target=target
    )
    return model, graph, probe


def custom_outputs(model, probe):
    """The two targets from the final norm's output ``[d_model]``, written out independently:
    a difference of two logits, and a dot product."""
    a, b = (model.tokenizer.encode(t, add_special_tokens=False)[0] for t in ("cat", "dog"))
    W_U = model.hf.lm_head.weight.detach().float()

    def outputs(final: torch.Tensor) -> torch.Tensor:
        logits = final @ W_U.T
        return torch.stack([logits[a] - logits[b], final @ probe])

    return outputs, (a, b)


def test_custom_targets_are_output_nodes_with_virtual_ids(custom):
    model, graph, _ = custom
    vocab = model.hf.lm_head.weight.shape[0]
    assert graph.logit_strings == ["cat-dog", "probe"]
    assert graph.logit_tokens.tolist() == [vocab, vocab + 1]
    assert graph.logit_probabilities.tolist() == [0.5, 0.5]


def test_custom_target_edges_equal_the_jacobian_of_that_target(custom):
    model, graph, probe = custom
    rm, outputs = graph.context.replacement, custom_outputs(model, probe)[0]
    n_sources = graph.n_features + graph.n_errors + graph.n_pos
    jacobian = torch.autograd.functional.jacobian(
        lambda s: target_values(rm, graph, s, outputs)[graph.n_features :],
        torch.ones(n_sources),
        vectorize=True,
    )
    edges = graph.adjacency[graph.slices()["logit"], :n_sources]
    assert edges.abs().max() > 0
    torch.testing.assert_close(edges, jacobian, rtol=1e-4, atol=1e-5)


def test_custom_target_input_is_its_edges_plus_biases_and_the_models_value(custom):
    model, graph, probe = custom
    rm = graph.context.replacement
    outputs, (a, b) = custom_outputs(model, probe)
    n_sources = graph.n_features + graph.n_errors + graph.n_pos
    full = target_values(rm, graph, torch.ones(n_sources), outputs)[graph.n_features :]
    biases = target_values(rm, graph, torch.zeros(n_sources), outputs)[graph.n_features :]
    incoming = graph.adjacency[graph.slices()["logit"]].sum(1)
    torch.testing.assert_close(incoming + biases, full, rtol=1e-4, atol=1e-4)
    # The same values from the real model: its logits (Gemma 2's soft-capping undone) and the
    # unembedding's input.
    tokens = graph.prompt_tokens[None]
    logits = model(tokens)[0, -1].float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.atanh(logits / cap) * cap
    final = model.text_model(input_ids=tokens).last_hidden_state[0, -1].float()
    real = torch.stack([logits[a] - logits[b], final @ probe])
    torch.testing.assert_close(incoming + biases, real, rtol=1e-4, atol=1e-4)


def test_targets_that_are_not_linear_or_misshapen_are_refused():
    model = tiny_model("gemma3")
    transcoders = random_transcoders(model)
    for target, error, match in [
        (gsnb.logprob("cat"), ValueError, "is not linear in the residual stream"),
        (torch.ones(7), ValueError, r"finite tensor \[d_model=32\]; got shape \(7,\)"),
        (gsnb.logit_diff("cat", "dog", pos=2), ValueError, "reads position 2"),
        (gsnb.logit_diff("cat dog", "dog"), ValueError, "is 2 tokens"),
        ("cat", TypeError, "target must be gsnb.logit_diff"),
        ({}, ValueError, "names no target"),
    ]:
        with pytest.raises(error, match=match):
            trace(model, transcoders, PROMPT, progress=False, target=target)


@pytest.fixture(**CONFIGS)
def graph(request):
    arch, kind = request.param
    model = tiny_model(arch)
    return trace(model, make_transcoders(model, kind), PROMPT, progress=False)


def test_setting_a_feature_to_v_equals_scaling_it_by_v_over_its_activation(graph):
    for node in graph.influence()[: graph.n_features].topk(3).indices.tolist():
        layer, pos, feat = graph.features[node].tolist()
        act = float(graph.activations[node])
        for live in (False, True):
            kwargs = dict(freeze_attention=not live)
            for value in (0.0, 0.7 * act, 2.5 * act):
                by_value = graph.intervene([(layer, pos, feat, value)], mode="set", **kwargs)
                by_scale = graph.intervene([(layer, pos, feat, value / act)], **kwargs)
                scale = by_scale.measured.abs().max() + 1e-6
                torch.testing.assert_close(
                    by_value.measured, by_scale.measured, rtol=0, atol=1e-5 * scale
                )
                torch.testing.assert_close(by_value.predicted, by_scale.predicted)
    own = graph.intervene([(layer, pos, feat, act)], mode="set")
    assert own.predicted.abs().max() == 0
    assert own.measured.abs().max() <= 1e-5 * (
        1 + graph.intervene([(layer, pos, feat, 0.0)]).measured.abs().max()
    )


def test_predicted_change_of_a_set_feature_solves_the_graphs_linear_system(graph):
    n = graph.n_features
    acts = graph.activations.double().numpy()
    per_unit = graph.adjacency.double().numpy()[:, :n] / acts
    node = int(graph.influence()[:n].argmax())
    layer, pos, feat = graph.features[node].tolist()
    value = 3.0
    # delta = W delta off the set node, delta[node] = value - a: (I - W') delta = e (value - a).
    inner = per_unit[:n].copy()
    inner[node] = 0.0
    rhs = np.zeros(n)
    rhs[node] = value - acts[node]
    delta = np.linalg.solve(np.eye(n) - inner, rhs)
    expected = per_unit[graph.slices()["logit"]] @ delta
    result = graph.intervene([(layer, pos, feat, value)], mode="set")
    np.testing.assert_allclose(result.predicted.double().numpy(), expected, rtol=1e-4, atol=1e-6)
    # Small set changes keep every JumpReLU on its side: measured and predicted agree.
    small = graph.intervene([(layer, pos, feat, 0.99 * acts[node])], mode="set")
    scale = small.measured.abs().max()
    assert scale > 0 and (small.measured - small.predicted).abs().max() <= 1e-3 * scale + 1e-6


def test_unknown_intervention_modes_and_values_are_refused(graph):
    layer, pos, feat = graph.features[0].tolist()
    with pytest.raises(ValueError, match="mode='add': use 'scale'"):
        graph.intervene([(layer, pos, feat, 1.0)], mode="add")
    with pytest.raises(ValueError, match="value inf for feature"):
        graph.intervene([(layer, pos, feat, float("inf"))], mode="set")
