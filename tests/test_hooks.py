"""Hooks capture without changing anything, edit what they are asked to, and never leak."""

from __future__ import annotations

import pytest
import torch

from gsnb.core.hooks import count_hooks


def test_capturing_every_site_changes_no_logits(model):
    tokens = model.to_tokens(["the cat sat on the mat", "a dog ran to the park ."])
    plain = model.hf(input_ids=tokens).logits
    logits, cache = model.run_with_cache(
        tokens,
        model.sites(("embed", "resid_post", "attn_out", "mlp_normalized", "mlp_in", "mlp_out")),
    )
    assert torch.equal(logits, plain)
    assert len(cache) == 1 + 5 * model.n_layers
    assert count_hooks(model.hf) == 0


def test_sites_empty_gives_just_the_logits(gemma3):
    logits, cache = gemma3.run_with_cache("the cat sat", sites=[])
    assert cache == {}
    assert torch.equal(logits, gemma3("the cat sat"))


def test_stop_early_returns_the_same_values_and_no_logits(gemma3):
    tokens = gemma3.to_tokens("the cat sat on the mat")
    _, full = gemma3.run_with_cache(tokens, ["mlp_out.0", "attn_out.1"])
    logits, early = gemma3.run_with_cache(tokens, ["mlp_out.0", "attn_out.1"], stop_early=True)
    assert logits is None
    for site in full:
        assert torch.equal(full[site], early[site])
    assert count_hooks(gemma3.hf) == 0


def test_stop_early_skips_the_later_layers(gemma3, monkeypatch):
    calls = []
    later = gemma3.text_model.layers[2]
    handle = later.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        gemma3.run_with_cache("the cat", ["resid_post.1"], stop_early=True)
    finally:
        handle.remove()
    assert calls == []


def test_replacing_a_site_equals_running_the_rest_by_hand(gemma3):
    tokens = gemma3.to_tokens("the cat sat on the mat")
    _, cache = gemma3.run_with_cache(tokens, ["resid_post.1", "mlp_out.2", "attn_out.2"])
    with gemma3.hooks({"mlp_out.2": lambda x: torch.zeros_like(x)}):
        ablated = gemma3(tokens)
    # With the last MLP's output zeroed, the final residual is resid_post.2 - mlp_out.2.
    resid = cache["resid_post.1"]
    block = gemma3.text_model.layers[2]
    attn = block.post_attention_layernorm(block.self_attn.o_proj(cache["attn_out.2"]))
    final = gemma3.text_model.norm(resid + attn)
    expected = gemma3.hf.lm_head(final)
    cap = getattr(gemma3.config, "final_logit_softcapping", None)
    if cap:
        expected = torch.tanh(expected / cap) * cap
    torch.testing.assert_close(ablated, expected, rtol=1e-5, atol=1e-5)
    assert count_hooks(gemma3.hf) == 0


def test_input_site_hook_edits_o_proj_input(gemma3):
    tokens = gemma3.to_tokens("the cat sat")
    seen = {}
    with gemma3.hooks({"attn_out.0": lambda x: x * 2}):
        _, cache = gemma3.run_with_cache(tokens, ["attn_out.0"])
        seen["edited"] = cache["attn_out.0"]
    _, clean = gemma3.run_with_cache(tokens, ["attn_out.0"])
    torch.testing.assert_close(seen["edited"], clean["attn_out.0"] * 2)


def test_an_exception_inside_a_hook_context_leaves_no_hooks(gemma3):
    with pytest.raises(RuntimeError, match="user code"):
        with gemma3.hooks({"resid_post.0": lambda x: None, "attn_out.1": lambda x: None}):
            assert count_hooks(gemma3.hf) == 2
            raise RuntimeError("user code failed")
    assert count_hooks(gemma3.hf) == 0


def test_an_exception_inside_a_hook_leaves_no_hooks(gemma3):
    def broken(x):
        raise KeyError("inside the hook")

    with pytest.raises(KeyError, match="inside the hook"):
        with gemma3.hooks({"mlp_in.1": broken}):
            gemma3("the cat")
    assert count_hooks(gemma3.hf) == 0
    with pytest.raises(KeyError):
        with gemma3.hooks({"mlp_in.1": broken}):
            gemma3.run_with_cache("the cat", ["resid_post.2"])
    assert count_hooks(gemma3.hf) == 0


def test_a_hook_returning_the_wrong_shape_is_named(gemma3):
    with pytest.raises(ValueError, match=r"hook on mlp_out\.0 returned \(1, 3, 5\)"):
        with gemma3.hooks({"mlp_out.0": lambda x: torch.zeros(1, 3, 5)}):
            gemma3("the cat")
    assert count_hooks(gemma3.hf) == 0


def test_grad_flows_when_asked(gemma3):
    logits, cache = gemma3.run_with_cache("the cat sat", ["resid_post.0"], grad=True)
    logits[0, -1].sum().backward()
    assert gemma3.text_model.embed_tokens.weight.grad is not None
    _, cache = gemma3.run_with_cache("the cat sat", ["resid_post.0"])
    assert not cache["resid_post.0"].requires_grad


# --- mlp_normalized: x / rms(x) inside the pre-MLP norm, before its gain ------------------------


def plain_mlp_edit(model, layer: int, edit):
    """A torch hook on transformers' own norm that sets its output to ``(1 + w) * edit(x / rms)``,
    computed here from the norm's input (independent of gsnb's hooks)."""
    norm = model.text_model.layers[layer].pre_feedforward_layernorm

    def hook(_module, args, _output):
        x = args[0]
        normalized = x / (x.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()
        return edit(normalized) * (1.0 + norm.weight)

    return norm.register_forward_hook(hook)


def test_editing_mlp_normalized_reaches_the_mlp_through_the_gain(model):
    tokens = model.to_tokens("the cat sat on the mat")
    shift = torch.linspace(-1, 1, model.d_model)
    edit = lambda v: v * 2 + shift  # noqa: E731
    with model.hooks({"mlp_normalized.1": edit}):
        edited = model(tokens)
    handle = plain_mlp_edit(model, 1, edit)
    try:
        expected = model.hf(input_ids=tokens).logits
    finally:
        handle.remove()
    torch.testing.assert_close(edited, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(edited, model(tokens), atol=1e-3)
    assert count_hooks(model.hf) == 0


def test_mlp_normalized_edits_run_in_order_before_mlp_in_ones(gemma3):
    tokens = gemma3.to_tokens("the cat sat on the mat")
    first, second = (lambda v: v * 3), (lambda v: v - 0.5)
    seen = {}

    def read_mlp_in(value):
        seen["mlp_in"] = value

    # Registered outer-first, in nested blocks, with mlp_in's hook before both.
    with gemma3.hooks({"mlp_in.2": read_mlp_in}):
        with gemma3.hooks({"mlp_normalized.2": first}):
            with gemma3.hooks({"mlp_normalized.2": second}):
                edited = gemma3(tokens)
    handle = plain_mlp_edit(gemma3, 2, lambda v: second(first(v)))
    try:
        expected = gemma3.hf(input_ids=tokens).logits
    finally:
        handle.remove()
    torch.testing.assert_close(edited, expected, rtol=1e-5, atol=1e-5)
    # mlp_in saw both edits, in order, with the gain applied.
    _, clean = gemma3.run_with_cache(tokens, ["mlp_normalized.2"])
    gain = 1.0 + gemma3.text_model.layers[2].pre_feedforward_layernorm.weight
    torch.testing.assert_close(seen["mlp_in"], second(first(clean["mlp_normalized.2"])) * gain)
    assert count_hooks(gemma3.hf) == 0


def test_capturing_mlp_normalized_in_bfloat16_changes_no_logits():
    from tiny import tiny_hf, tiny_tokenizer

    from gsnb.core.model import Model

    model = Model(tiny_hf("gemma2").to(torch.bfloat16), tiny_tokenizer(), "tiny-bf16")
    tokens = model.to_tokens("the cat sat on the mat")
    logits, cache = model.run_with_cache(tokens, model.sites(("mlp_normalized", "mlp_in")))
    assert torch.equal(logits, model.hf(input_ids=tokens).logits)
    # The value is the norm's own float32 intermediate; mlp_in is it times the gain, rounded.
    assert cache["mlp_normalized.1"].dtype == torch.float32
    gain = 1.0 + model.text_model.layers[1].pre_feedforward_layernorm.weight.float()
    assert torch.equal((cache["mlp_normalized.1"] * gain).bfloat16(), cache["mlp_in.1"])


def test_an_exception_in_an_mlp_normalized_hook_leaves_no_hooks(gemma3):
    def broken(x):
        raise KeyError("inside the hook")

    with pytest.raises(KeyError, match="inside the hook"):
        with gemma3.hooks({"mlp_normalized.0": [lambda v: None, broken]}):
            assert count_hooks(gemma3.hf) == 1  # one hook on the norm serves every function
            gemma3("the cat")
    assert count_hooks(gemma3.hf) == 0
