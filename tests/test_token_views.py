"""circuitsvis views carry exactly the model's numbers: SAE activations per token, attention."""

from __future__ import annotations

import json
import re

import pytest
import torch
from test_steering import random_sae

from gsnb.core.hooks import count_hooks
from gsnb.viz import token_views

TEXT = "the cat sat on the mat"


def props(rendered, element: str) -> dict:
    """The properties circuitsvis hands to its React ``element`` in the rendered HTML."""
    match = re.search(
        rf"CircuitsVis\.{element},\s*(\{{.*?\}})\s*\)\s*</script>", rendered.data, re.S
    )
    assert match, f"no {element} in the rendered HTML"
    return json.loads(match.group(1))


def test_feature_activations_colour_tokens_by_sae_encode(gemma3):
    sae = random_sae(gemma3, "resid_post.1", fire=0.5)
    hidden = gemma3.hf(input_ids=gemma3.to_tokens(TEXT), output_hidden_states=True).hidden_states
    expected = sae.encode(hidden[2][0])  # resid_post.1 is the output of decoder layer 1
    hooks_before = count_hooks(gemma3.hf)  # transformers keeps its own output recorders
    one = props(token_views.feature_activations(gemma3, sae, TEXT, 5), "ColoredTokens")
    assert one["tokens"] == ["<bos>", "the", "cat", "sat", "on", "the", "mat"]
    torch.testing.assert_close(torch.tensor(one["values"]), expected[:, 5], atol=1e-5, rtol=1e-5)
    many = props(token_views.feature_activations(gemma3, sae, TEXT, [5, 9]), "ColoredTokensMulti")
    torch.testing.assert_close(
        torch.tensor(many["values"]), expected[:, [5, 9]], atol=1e-5, rtol=1e-5
    )
    assert many["labels"] == ["feature 5", "feature 9"]
    with pytest.raises(ValueError, match=r"features must be ids in \[0, 64\)"):
        token_views.feature_activations(gemma3, sae, TEXT, 64)
    assert count_hooks(gemma3.hf) == hooks_before


def test_attention_patterns_are_causal_softmax_rows_of_the_chosen_heads(model):
    rendered = token_views.attention_patterns(model, TEXT, layer=1, heads=[0, 2])
    shown = torch.tensor(props(rendered, "AttentionHeads")["attention"])  # [head, q, k]
    assert shown.shape == (2, 7, 7)
    torch.testing.assert_close(shown.sum(-1), torch.ones(2, 7))
    assert torch.all(shown.triu(1) == 0)  # no query looks ahead
    # The same heads differ on another layer, so the layer index is honoured.
    other = torch.tensor(
        props(token_views.attention_patterns(model, TEXT, 2, [0, 2]), "AttentionHeads")["attention"]
    )
    assert not torch.allclose(shown, other)
    with pytest.raises(ValueError, match=r"layer must be in \[0, 3\)"):
        token_views.attention_patterns(model, TEXT, layer=3)


def test_attention_patterns_switch_to_eager_for_one_pass_only(gemma3):
    gemma3.hf.set_attn_implementation("sdpa")
    eager = gemma3.attention_patterns(TEXT)  # [layer, batch, head, q, k]
    assert gemma3.hf.config._attn_implementation == "sdpa"
    assert eager.shape == (gemma3.n_layers, 1, gemma3.n_heads, 7, 7)
    with pytest.raises(IndexError):  # a pass that fails inside the model: id past the vocabulary
        gemma3.attention_patterns(torch.tensor([[2, 10_000]]))
    assert gemma3.hf.config._attn_implementation == "sdpa"
