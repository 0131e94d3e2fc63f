"""Tracing a bfloat16 model copies only what the replacement model reads: never the embedding
(Gemma's unembedding too) nor the MLPs, and its graph agrees with the float32 trace."""

from __future__ import annotations

import copy

import torch
from test_circuits import PROMPT, random_transcoders
from tiny import tiny_hf, tiny_model, tiny_tokenizer
from torch.utils._python_dispatch import TorchDispatchMode

from gsnb.circuits.tracing import trace
from gsnb.core.model import Model

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


def test_tracing_a_bfloat16_model_never_copies_its_embedding_or_mlps():
    full, half = models()
    transcoders = random_transcoders(full)
    text = half.text_model
    watched = {"embedding": text.embed_tokens.weight}
    for layer, block in enumerate(text.layers):
        for proj in ("gate_proj", "up_proj", "down_proj"):
            watched[f"mlp.{proj}.{layer}"] = getattr(block.mlp, proj).weight
        for proj in ("q_proj", "k_proj"):  # attention scores come frozen from the prompt
            watched[f"attn.{proj}.{layer}"] = getattr(block.self_attn, proj).weight
    assert half.hf.get_output_embeddings().weight.data_ptr() == text.embed_tokens.weight.data_ptr()
    direction = torch.randn(full.d_model, generator=torch.Generator().manual_seed(0))

    watch = CopyWatch(watched)
    with watch:
        graph = trace(half, transcoders, PROMPT, progress=False, target=direction)
    embedding = text.embed_tokens.weight.numel()
    big = [(name, n) for name, n in watch.copies if name != "embedding" or n >= embedding]
    assert big == [], f"copies of the model's large weights: {big}"

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


def test_per_layer_transcoders_off_float32_trace_on_a_copy_and_stay_as_they_were():
    model = tiny_model("gemma3")
    transcoders = random_transcoders(model)
    wide = [copy.deepcopy(tc).double() for tc in transcoders]
    graph = trace(model, transcoders, PROMPT, progress=False)
    again = trace(model, wide, PROMPT, progress=False)
    assert all(tc.W_enc.dtype == tc.W_dec.dtype == torch.float64 for tc in wide)
    assert again.context.replacement.stack.transcoders[0].W_enc.dtype == torch.float32
    torch.testing.assert_close(again.adjacency, graph.adjacency, rtol=1e-4, atol=1e-5)
