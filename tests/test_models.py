"""load_model and Model: local folders, hub ids offline, dtype, tokens and bad input."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_hf, tiny_tokenizer

import gsnb
from gsnb.core.model import Model


@pytest.fixture
def saved_tiny(tmp_path):
    hf, tokenizer = tiny_hf("gemma2"), tiny_tokenizer()
    hf.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    return tmp_path, hf


def test_load_model_from_a_local_folder_matches_the_original(saved_tiny):
    folder, hf = saved_tiny
    model = gsnb.load_model(str(folder), device="cpu")
    assert (model.n_layers, model.d_model, model.dtype) == (3, 32, torch.float32)
    tokens = model.to_tokens("the cat sat on the mat")
    # Same weights; transformers may pick another attention kernel on load, hence not bit-equal.
    torch.testing.assert_close(model(tokens), hf(input_ids=tokens).logits, rtol=1e-5, atol=1e-6)


def test_dtype_can_be_given(saved_tiny):
    model = gsnb.load_model(str(saved_tiny[0]), device="cpu", dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert model.device == torch.device("cpu")


def test_load_model_places_the_weights_once(saved_tiny, monkeypatch):
    """from_pretrained puts the weights on the device in the dtype; the loaded model is never
    converted or moved after (which would hold two copies at once)."""
    import transformers

    original = transformers.AutoModelForCausalLM.from_pretrained
    loaded = []

    def from_pretrained(*args, **kwargs):
        hf = original(*args, **kwargs)

        def refuse(*a, **k):
            raise AssertionError("load_model moved or converted the model after loading it")

        for name in ("to", "float", "bfloat16", "half", "cuda", "cpu"):
            monkeypatch.setattr(hf, name, refuse)
        loaded.append(hf)
        return hf

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    model = gsnb.load_model(str(saved_tiny[0]), device="cpu", dtype=torch.bfloat16)
    assert model.hf is loaded[0]
    assert {p.dtype for p in model.hf.parameters()} == {torch.bfloat16}
    assert {p.device for p in model.hf.parameters()} == {torch.device("cpu")}


def test_unknown_hub_id_offline_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(OSError, match="download it once while online"):
        gsnb.load_model("google/gemma-nonexistent-1b", device="cpu")


def test_other_architectures_are_refused_by_name():
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=80,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
        )
    )
    with pytest.raises(
        NotImplementedError, match="'llama' is not supported yet.*Gemma 3 and Gemma 2"
    ):
        Model(hf, tiny_tokenizer(), "llama")


def test_tokens_start_with_bos_and_round_trip(gemma3):
    tokens = gemma3.to_tokens("the cat sat")
    assert tokens.tolist() == [[2, 64, 65, 66]]
    assert gemma3.to_str_tokens("the cat sat") == ["<bos>", "the", "cat", "sat"]
    assert gemma3.to_tokens("the cat", prepend_bos=False).tolist() == [[64, 65]]
    padded = gemma3.to_tokens(["the cat sat", "a"])
    assert padded.tolist() == [[2, 64, 65, 66], [2, 69, 0, 0]]


def test_to_str_tokens_takes_one_text_and_refuses_a_batch(gemma3):
    words = ["<bos>", "the", "cat", "sat"]
    ids = gemma3.to_tokens("the cat sat")  # [1, 4]
    assert gemma3.to_str_tokens(ids) == words
    assert gemma3.to_str_tokens(ids[0]) == words
    batch = gemma3.to_tokens(["the cat sat", "a"])  # [2, 4]
    with pytest.raises(ValueError, match=r"one text.*got shape \(2, 4\).*once per row"):
        gemma3.to_str_tokens(batch)
    with pytest.raises(ValueError, match=r"one text.*got shape \(1, 1, 4\)"):
        gemma3.to_str_tokens(ids[None])
    with pytest.raises(ValueError, match=r"one text.*got \['the cat', 'a'\]"):
        gemma3.to_str_tokens(["the cat", "a"])


@pytest.mark.parametrize("bad", ["", [], ["the cat", ""]])
def test_empty_text_is_refused(gemma3, bad):
    with pytest.raises(ValueError, match="text is empty"):
        gemma3.run_with_cache(bad, ["resid_post.0"])


def test_text_longer_than_the_context_is_refused(gemma3):
    with pytest.raises(ValueError, match="model's context is 128.*token_windows"):
        gemma3.to_tokens(" ".join(["cat"] * 200))
    with pytest.raises(ValueError, match="exceed the model's context"):
        gemma3(torch.zeros(1, 129, dtype=torch.long))


def test_float_tokens_are_refused(gemma3):
    with pytest.raises(ValueError, match=r"integer tensor \[batch, pos\]"):
        gemma3(torch.zeros(1, 4))


def test_publishing_the_converted_model_is_safe_when_two_processes_race(tmp_path):
    from gsnb.core.model import publish_dir

    target = tmp_path / "model"
    first, second = tmp_path / "tmp1", tmp_path / "tmp2"
    for folder, text in ((first, "first"), (second, "second")):
        folder.mkdir()
        (folder / "model.safetensors").write_text(text)
    publish_dir(first, target)
    publish_dir(second, target)  # the loser keeps the winner's copy and raises nothing
    assert (target / "model.safetensors").read_text() == "first"
    assert not first.exists() and second.exists()


def test_a_missing_model_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist: pass a folder"):
        gsnb.load_model(str(tmp_path / "no" / "such" / "model"), device="cpu")
