"""Cross-layer transcoders: the maths against numpy, Gemma Scope 2's clt files (round trip and
offline hub loading), tracing with one, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import save as safetensors_bytes
from test_circuits import PROMPT, random_clt, random_transcoders
from test_releases import hub  # noqa: F401  (the fixture)
from tiny import tiny_model

import gsnb
from gsnb.circuits.tracing import trace
from gsnb.saes.clt import CrossLayerTranscoder

N_LAYERS, D_IN, D_SAE = 18, 8, 6  # 18 layers: Gemma 3 270M's depth, as the release expects


def layer_arrays(n_layers=N_LAYERS, d_in=D_IN, d_sae=D_SAE, skip=True, seed=0):
    """Per-layer files as Gemma Scope 2 writes them: w_dec spans every layer, zero below s."""
    rng = np.random.default_rng(seed)
    files = []
    for s in range(n_layers):
        w_dec = rng.normal(size=(d_sae, n_layers, d_in)).astype(np.float32)
        w_dec[:, :s] = 0.0
        a = {
            "w_enc": rng.normal(size=(d_in, d_sae)),
            "b_enc": rng.normal(size=d_sae),
            "threshold": rng.uniform(0.1, 1.0, size=d_sae),
            "b_dec": rng.normal(size=d_in),
            "w_dec": w_dec,
        }
        if skip:
            a["affine_skip_connection"] = rng.normal(size=(d_in, d_in))
        files.append({k: np.asarray(v, dtype=np.float32) for k, v in a.items()})
    return files


def numpy_outputs(files, inputs):
    """Every layer's reconstruction from the formulas, independently of gsnb."""
    acts = []
    for a, x in zip(files, inputs):
        pre = x @ a["w_enc"] + a["b_enc"]
        acts.append(pre * (pre > a["threshold"]) * (pre > 0))
    outs = []
    for layer, x in enumerate(inputs):
        out = files[layer]["b_dec"] + x @ files[layer]["affine_skip_connection"]
        for s in range(layer + 1):
            out = out + acts[s] @ files[s]["w_dec"][:, layer]
        outs.append(out)
    return acts, outs


def test_released_clt_loads_offline_and_computes_the_formulas(hub):  # noqa: F811
    files = layer_arrays()
    sae_id = "clt/width_262k_l0_medium_affine"
    for s, a in enumerate(files):
        hub.add(
            "google/gemma-scope-2-270m-pt",
            f"{sae_id}/params_layer_{s}.safetensors",
            safetensors_bytes(a),
        )
    assert sae_id in gsnb.list_sae_ids("gemma-scope-2-270m-pt")
    clt = gsnb.load_sae("gemma-scope-2-270m-pt", sae_id, device="cpu")
    assert isinstance(clt, CrossLayerTranscoder)
    assert (clt.n_layers, clt.d_sae, clt.cfg.skip) == (N_LAYERS, D_SAE, True)
    assert clt.cfg.model_name == "google/gemma-3-270m" and clt.cfg.sae_id == sae_id

    rng = np.random.default_rng(1)
    inputs = [rng.normal(size=(5, D_IN)).astype(np.float32) for _ in range(N_LAYERS)]
    acts, outs = numpy_outputs(files, inputs)
    with torch.no_grad():
        got = clt([torch.from_numpy(x) for x in inputs])
        encoded = [clt.encode(s, torch.from_numpy(x)) for s, x in enumerate(inputs)]
    for layer in range(N_LAYERS):
        np.testing.assert_allclose(encoded[layer].numpy(), acts[layer], rtol=1e-5)
        np.testing.assert_allclose(got[layer].numpy(), outs[layer], rtol=1e-4, atol=1e-4)


def test_missing_layer_file_offline_says_which(hub):  # noqa: F811
    files = layer_arrays()
    for s, a in enumerate(files):
        if s != 7:
            hub.add(
                "google/gemma-scope-2-270m-pt",
                f"clt/width_262k_l0_medium_affine/params_layer_{s}.safetensors",
                safetensors_bytes(a),
            )
    with pytest.raises(FileNotFoundError, match="params_layer_7.safetensors is not in the local"):
        gsnb.load_sae("gemma-scope-2-270m-pt", "clt/width_262k_l0_medium_affine")


def test_save_load_round_trips_bit_exactly(tmp_path):
    model = tiny_model("gemma3")
    clt = random_clt(model)
    clt.cfg.model_name = "tiny-gemma3"
    folder = clt.save(tmp_path / "clt" / "width_32_l0_small_affine")
    back = CrossLayerTranscoder.load(folder)
    assert back.cfg == clt.cfg
    for (name, a), (_, b) in zip(clt.named_parameters(), back.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    # And a local folder works as a release.
    loaded = gsnb.load_sae(tmp_path, "clt/width_32_l0_small_affine", device="cpu")
    assert torch.equal(loaded.W_dec[1], clt.W_dec[1])


def test_clt_with_only_same_layer_decoders_traces_like_per_layer_transcoders():
    model = tiny_model("gemma3")
    transcoders = random_transcoders(model, d_sae=24)
    clt = CrossLayerTranscoder.from_transcoders(transcoders)
    for layer, tc in enumerate(transcoders):
        assert torch.equal(clt.W_dec[layer][:, 0], tc.W_dec)
        assert not clt.W_dec[layer][:, 1:].any()
        skip = tc.W_skip if tc.W_skip is not None else torch.zeros_like(clt.W_skip[layer])
        assert torch.equal(clt.W_skip[layer], skip)
    a = trace(model, transcoders, PROMPT, progress=False)
    b = trace(model, clt, PROMPT, progress=False)
    assert torch.equal(a.features, b.features)
    torch.testing.assert_close(a.adjacency, b.adjacency, rtol=1e-5, atol=1e-6)
    # With cross-layer decoders the graph changes: later layers get edges from earlier sources.
    with torch.no_grad():
        clt.W_dec[0][:, 2].normal_(0, 0.3)
    c = trace(model, clt, PROMPT, progress=False)
    assert not torch.allclose(c.adjacency[-c.n_logits :], b.adjacency[-b.n_logits :])


def test_bad_clt_files_and_models_are_named(tmp_path):
    model = tiny_model("gemma3")
    clt = random_clt(model)
    folder = clt.save(tmp_path / "clt")
    (folder / "params_layer_1.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks params_layer_\{L\} for layers \[1\]"):
        CrossLayerTranscoder.load(folder)

    files = layer_arrays(n_layers=3, skip=False)
    files[2]["w_dec"] = files[2]["w_dec"][:, :2]
    for s, a in enumerate(files):
        (tmp_path / "bad").mkdir(exist_ok=True)
        (tmp_path / "bad" / f"params_layer_{s}.safetensors").write_bytes(safetensors_bytes(a))
    with pytest.raises(ValueError, match=r"w_dec has shape \[6, 2, 8\], expected \[6, 3, 8\]"):
        CrossLayerTranscoder.load(tmp_path / "bad")

    other = random_clt(tiny_model("gemma3", n_layers=2))
    with pytest.raises(
        ValueError, match="does not fit tiny-gemma3: it covers 2 layers but the model has 3"
    ):
        trace(model, other, PROMPT, progress=False)


def test_tracing_works_on_a_copy_and_leaves_the_clt_as_it_was():
    model = tiny_model("gemma3")
    clt = random_clt(model)
    wide = random_clt(model).double()  # same seed: the same weights in float64
    graph = trace(model, clt, PROMPT, progress=False)
    again = trace(model, wide, PROMPT, progress=False)
    assert wide.W_enc.dtype == torch.float64 and wide.W_dec[1].dtype == torch.float64
    torch.testing.assert_close(again.adjacency, graph.adjacency, rtol=1e-4, atol=1e-5)


def test_lazy_decoders_give_the_eager_graph_and_hold_no_decoder_memory(tmp_path):
    model = tiny_model("gemma3")
    folder = random_clt(model).save(tmp_path / "clt")
    eager = CrossLayerTranscoder.load(folder, progress=False)
    lazy = CrossLayerTranscoder.load(folder, progress=False, lazy=True)
    decoder_numbers = sum(d.numel() for d in eager.W_dec)
    eager_numbers = sum(p.numel() for p in eager.parameters())
    assert sum(p.numel() for p in lazy.parameters()) == eager_numbers - decoder_numbers
    for s in range(eager.n_layers):
        assert torch.equal(lazy.W_dec[s], eager.W_dec[s])
    features = torch.tensor([0, 1, 2, 7, 9, 10, 31])
    assert torch.equal(lazy.decoder_rows(1, features), eager.W_dec[1][features])
    assert lazy.decoder_rows(2, features[:0]).shape == (0, 1, model.d_model)

    a = trace(model, eager, PROMPT, progress=False)
    b = trace(model, lazy, PROMPT, progress=False)
    assert torch.equal(a.features, b.features)
    assert torch.equal(a.adjacency, b.adjacency)
    # Interventions read decoder rows beyond the prompt's active ones.
    node = int(a.activations.argmax())
    layer, pos, feat = a.features[node].tolist()
    ia = a.intervene([(layer, pos, feat, 3.0)], freeze_attention=False)
    ib = b.intervene([(layer, pos, feat, 3.0)], freeze_attention=False)
    assert torch.equal(ia.measured, ib.measured)

    # .to() reaches the decoders left on disk.
    lazy.to(torch.float64)
    assert lazy.W_enc.dtype == lazy.W_dec[0].dtype == lazy.decoder_rows(0, features).dtype
    assert lazy.W_dec[0].dtype == torch.float64
