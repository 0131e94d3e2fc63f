"""Tracing runs on the model's and the transcoders' own weights: a bfloat16 model and bfloat16
transcoders are never copied whole (the embedding, which is Gemma's unembedding too, the MLPs,
the encoders and decoders), transcoders of another dtype or device are used as they are or
refused, and the bfloat16 graph agrees with the float32 one."""

from __future__ import annotations

import copy

import pytest
import torch
from test_circuits import PROMPT, random_transcoders
from tiny import tiny_hf, tiny_model, tiny_tokenizer
from torch.utils._python_dispatch import TorchDispatchMode

from gsnb.circuits.tracing import trace
from gsnb.core.model import Model
from gsnb.core.precision import float32_compute

COPIES = {"aten._to_copy.default", "aten.clone.default", "aten.copy_.default"}


class CopyWatch(TorchDispatchMode):
    """Records every copy (``_to_copy``, ``clone``, ``copy_``) read from a watched tensor's
    storage — ``.float()``, ``.to(...)``, ``.clone()`` and ``copy.deepcopy`` all come down to
    these — as ``(name, elements copied)``."""

    def __init__(self, watched: dict[str, torch.Tensor]):
        super().__init__()
        self.names = {t.untyped_storage().data_ptr(): name for name, t in watched.items()}
        self.copies: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if str(func) in COPIES:
            # copy_(dst, src) reads its second argument; the others their first.
            source = args[1] if str(func) == "aten.copy_.default" else args[0]
            name = self.names.get(source.untyped_storage().data_ptr())
            if name is not None:
                self.copies.append((name, source.numel()))
        return func(*args, **kwargs)


def models():
    """The same tiny Gemma 2 in float32 and bfloat16 (weights rounded to bfloat16 in both),
    with a vocabulary larger than the blocks of rows the unembedding is read in (32768)."""
    hf = tiny_hf("gemma2")
    hf.resize_token_embeddings(40_000, mean_resizing=False)
    with torch.no_grad():
        for param in hf.parameters():
            param.copy_(param.bfloat16().float())
    half = copy.deepcopy(hf).to(torch.bfloat16)
    return Model(hf, tiny_tokenizer(), "fp32"), Model(half, tiny_tokenizer(), "bf16")


def common_nodes(a, b) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Node indices of ``a`` and ``b`` for the features both hold (in ``a``'s order), then every
    error, token and output node; and how many features that is."""
    where_a = {tuple(f): i for i, f in enumerate(a.features.tolist())}
    where_b = {tuple(f): i for i, f in enumerate(b.features.tolist())}
    keys = [k for k in where_a if k in where_b]
    nodes_a = torch.tensor([where_a[k] for k in keys] + list(range(a.n_features, a.n_nodes)))
    nodes_b = torch.tensor([where_b[k] for k in keys] + list(range(b.n_features, b.n_nodes)))
    return nodes_a, nodes_b, len(keys)


def rounded_transcoders(model):
    """Random transcoders with weights on bfloat16's grid: a float32 set and a bfloat16 copy."""
    full = random_transcoders(model)
    with torch.no_grad():
        for tc in full:
            for param in tc.parameters():
                param.copy_(param.bfloat16().float())
    return full, [copy.deepcopy(tc).to(torch.bfloat16) for tc in full]


def test_tracing_bfloat16_weights_never_copies_them_and_matches_float32():
    full, half = models()
    transcoders, half_transcoders = rounded_transcoders(full)
    text = half.text_model
    watched = {"embedding": text.embed_tokens.weight}
    for layer, block in enumerate(text.layers):
        for proj in ("gate_proj", "up_proj", "down_proj"):
            watched[f"mlp.{proj}.{layer}"] = getattr(block.mlp, proj).weight
        for proj in ("q_proj", "k_proj"):  # attention scores come frozen from the prompt
            watched[f"attn.{proj}.{layer}"] = getattr(block.self_attn, proj).weight
        watched[f"W_enc.{layer}"] = half_transcoders[layer].W_enc
        watched[f"W_dec.{layer}"] = half_transcoders[layer].W_dec
    assert half.hf.get_output_embeddings().weight.data_ptr() == text.embed_tokens.weight.data_ptr()
    direction = torch.randn(full.d_model, generator=torch.Generator().manual_seed(0))

    watch = CopyWatch(watched)
    with watch:
        graph = trace(half, half_transcoders, PROMPT, progress=False, target=direction)
    embedding = text.embed_tokens.weight.numel()
    whole = [(name, n) for name, n in watch.copies if name == "embedding" and n >= embedding]
    assert whole == [], "the embedding (the unembedding too) was copied whole"
    transcoder_copies = [name for name, _ in watch.copies if name.startswith("W_")]
    assert transcoder_copies == [], f"copies of the transcoders' weights: {transcoder_copies}"
    # The prompt's forward pass converts each layer's weights once, for that layer alone
    # (see test_float32_compute_holds_one_layer_in_float32_at_a_time).
    layer_copies = [name for name, _ in watch.copies if name.startswith(("mlp.", "attn."))]
    assert sorted(layer_copies) == sorted(k for k in watched if k.startswith(("mlp.", "attn.")))
    assert all(tc.W_enc.dtype == torch.bfloat16 for tc in half_transcoders)
    assert graph.context.replacement.frozen.embed.dtype == torch.float32

    # The float32 trace of the same weights: the same graph up to bfloat16's rounding of the
    # forward pass (which may move a feature across its threshold).
    reference = trace(full, transcoders, PROMPT, progress=False, target=direction)
    nodes, ref_nodes, n_common = common_nodes(graph, reference)
    assert n_common >= 0.98 * max(graph.n_features, reference.n_features)
    torch.testing.assert_close(
        graph.activations[nodes[:n_common]],
        reference.activations[ref_nodes[:n_common]],
        rtol=0.05,
        atol=0.05,
    )
    edges = graph.adjacency[nodes][:, nodes]
    expected = reference.adjacency[ref_nodes][:, ref_nodes]
    assert float((edges - expected).norm() / expected.norm()) < 0.02
    assert float((edges - expected).abs().max()) < 0.03 * float(expected.abs().max())
    nonzero = (edges != 0) | (expected != 0)
    r = torch.corrcoef(torch.stack([edges[nonzero], expected[nonzero]]))[0, 1]
    assert float(r) >= 0.99


def test_transcoders_of_another_dtype_are_used_as_they_are():
    model = tiny_model("gemma3")
    transcoders = random_transcoders(model)
    wide = [copy.deepcopy(tc).double() for tc in transcoders]
    graph = trace(model, transcoders, PROMPT, progress=False)
    again = trace(model, wide, PROMPT, progress=False)
    assert all(tc.W_enc.dtype == tc.W_dec.dtype == torch.float64 for tc in wide)
    assert again.context.replacement.stack.transcoders[0] is wide[0]
    torch.testing.assert_close(again.adjacency, graph.adjacency, rtol=1e-4, atol=1e-5)


def test_transcoders_on_another_device_are_refused_with_the_fix():
    model = tiny_model("gemma3")
    elsewhere = [tc.to("meta") for tc in random_transcoders(model)]
    with pytest.raises(
        ValueError, match=r"layer 0 is on meta but the model is on cpu.*\.to\('cpu'\)"
    ):
        trace(model, elsewhere, PROMPT, progress=False)


def test_float32_compute_holds_one_layer_in_float32_at_a_time():
    full, half = models()
    layers = half.text_model.layers
    seen = []

    def record(module, args):
        assert args[0].dtype == torch.float32  # the residual stream arrives in float32
        per_layer = [all(p.dtype == torch.float32 for p in b.parameters()) for b in layers]
        assert per_layer == [b is module for b in layers]
        seen.append(module)

    tokens = half.to_tokens(PROMPT)
    with torch.no_grad(), float32_compute(half):
        # Registered after float32_compute's own hooks, so these see what the layer runs with.
        handles = [block.register_forward_pre_hook(record) for block in layers]
        try:
            logits = half(tokens)
        finally:
            for handle in handles:
                handle.remove()
    assert len(seen) == len(layers)
    assert {p.dtype for p in half.hf.parameters()} == {torch.bfloat16}
    assert (
        type(half.hf.get_output_embeddings()).forward
        is half.hf.get_output_embeddings().forward.__func__
    )
    # Its logits are closer to the float32 model's on the same (rounded) weights than the plain
    # bfloat16 pass's: what is left comes from the embedding scale and the rotary tables, which
    # the model makes in bfloat16 before any layer runs.
    assert logits.dtype == torch.float32
    with torch.no_grad():
        reference, plain_logits = full(tokens), half(tokens).float()
    error = float((logits - reference).abs().max())
    plain = float((plain_logits - reference).abs().max())
    assert error < 0.01 * float(reference.abs().max()) and plain > 2 * error, (error, plain)
