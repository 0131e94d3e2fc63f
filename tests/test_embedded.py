"""The embedded Gemma 3 270M: offline, the right shape, and the same outputs as transformers."""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.embedded


def test_loads_offline_with_the_gemma_3_270m_shape(embedded):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert embedded.name == "gemma-3-270m-q4km"
    assert (embedded.n_layers, embedded.d_model) == (18, 640)
    assert embedded.site_width("attn_out.0") == 1024
    assert embedded.config.model_type == "gemma3_text"


def test_greedy_continuation_equals_plain_transformers(embedded):
    from transformers import AutoModelForCausalLM

    from gsnb.core.model import prepare_embedded_model

    plain = AutoModelForCausalLM.from_pretrained(str(prepare_embedded_model()), dtype=torch.float32)
    prompt = embedded.to_tokens("The capital of France is")
    expected = plain.generate(prompt, max_new_tokens=6, do_sample=False)

    tokens = prompt
    for _ in range(6):
        logits = embedded(tokens)
        tokens = torch.cat([tokens, logits[:, -1:].argmax(-1)], dim=1)
    assert tokens.tolist() == expected.tolist()


def test_capture_on_the_embedded_model_changes_no_logits(embedded):
    tokens = embedded.to_tokens("Interpretability with sparse autoencoders")
    logits, cache = embedded.run_with_cache(tokens, embedded.sites(layers=[0, 8, 17]))
    assert torch.equal(logits, embedded(tokens))
    assert cache["attn_out.8"].shape == (1, tokens.shape[1], 1024)
