"""Tiny random Gemma 3 / Gemma 2 models with a tiny word-level tokenizer (no pytest needed, so
the fresh-install test can build them in a venv without the dev extra)."""

from __future__ import annotations

import torch

VOCAB = (
    ["<pad>", "<eos>", "<bos>", "<unk>"]
    + [f"w{i}" for i in range(60)]
    + [
        "the",
        "cat",
        "sat",
        "on",
        "mat",
        "a",
        "dog",
        "ran",
        "to",
        "park",
        ".",
        ",",
    ]
)


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(VOCAB)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def tiny_hf(arch: str = "gemma3", n_layers: int = 3, seed: int = 0):
    """A tiny random Gemma model in float32 on the CPU (attention without softcapping noise)."""
    from transformers import Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    common = dict(
        vocab_size=len(VOCAB),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=128,
        sliding_window=8,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        attn_implementation="eager",
    )
    if arch == "gemma3":
        config = Gemma3TextConfig(**common, query_pre_attn_scalar=16)
        hf = Gemma3ForCausalLM(config)
    elif arch == "gemma2":
        config = Gemma2Config(**common, query_pre_attn_scalar=16)
        hf = Gemma2ForCausalLM(config)
    else:
        raise ValueError(arch)
    # Random init leaves norm gains at 0/1; perturb them so every norm matters in the tests.
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if "norm" in name:
                param.normal_(0.0, 0.3)
    return hf.float().eval()


def tiny_model(arch: str = "gemma3", n_layers: int = 3, seed: int = 0):
    from gsnb.core.model import Model

    return Model(tiny_hf(arch, n_layers, seed), tiny_tokenizer(), f"tiny-{arch}")
