"""JumpReLUSAE: the maths against numpy, file round trips, and refusals of bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy

from gsnb.saes.sae import JumpReLUSAE, SAEConfig

D_IN, D_SAE = 32, 48


def random_arrays(d_in=D_IN, d_sae=D_SAE, d_out=None, skip=False, seed=0) -> dict[str, np.ndarray]:
    """Gemma Scope-shaped float32 arrays with positive thresholds."""
    rng = np.random.default_rng(seed)
    d_out = d_out or d_in
    arrays = {
        "W_enc": rng.normal(size=(d_in, d_sae)) / np.sqrt(d_in),
        "W_dec": rng.normal(size=(d_sae, d_out)) / np.sqrt(d_sae),
        "b_enc": rng.normal(size=d_sae) * 0.1,
        "b_dec": rng.normal(size=d_out) * 0.1,
        "threshold": rng.uniform(0.2, 0.8, size=d_sae),
    }
    if skip:
        arrays["W_skip"] = rng.normal(size=(d_in, d_out)) / np.sqrt(d_in)
    return {k: v.astype(np.float32) for k, v in arrays.items()}


def sae_from(arrays: dict[str, np.ndarray], **cfg) -> JumpReLUSAE:
    d_in, d_sae = arrays["W_enc"].shape
    sae = JumpReLUSAE(
        SAEConfig(
            d_in=d_in, d_sae=d_sae, d_out=arrays["W_dec"].shape[1], skip="W_skip" in arrays, **cfg
        )
    )
    with torch.no_grad():
        for name, value in arrays.items():
            getattr(sae, name).copy_(torch.from_numpy(value))
    return sae


def reference(arrays: dict[str, np.ndarray], x: np.ndarray):
    """The FACTS.md formulas in float64 numpy: (features, decode, forward)."""
    a = {k: v.astype(np.float64) for k, v in arrays.items()}
    pre = x @ a["W_enc"] + a["b_enc"]
    f = np.where(pre > a["threshold"], np.maximum(pre, 0.0), 0.0)
    decoded = f @ a["W_dec"] + a["b_dec"]
    skip = x @ a["W_skip"] if "W_skip" in a else 0.0
    return pre, f, decoded, decoded + skip


KINDS = {
    "sae": dict(site_in="resid_post.1"),
    "transcoder": dict(site_in="mlp_in.1", site_out="mlp_out.1"),
    "skip_transcoder": dict(site_in="mlp_in.1", site_out="mlp_out.1"),
    "pre_gain_transcoder": dict(site_in="mlp_normalized.1", site_out="mlp_out.1"),
}


@pytest.mark.parametrize("kind", KINDS)
def test_encode_decode_forward_match_numpy(kind):
    arrays = random_arrays(
        d_out=24 if kind == "transcoder" else None, skip=kind == "skip_transcoder"
    )
    sae = sae_from(arrays, **KINDS[kind])
    x = np.random.default_rng(1).normal(size=(5, 7, D_IN))
    pre, f_ref, dec_ref, out_ref = reference(arrays, x)
    thr = arrays["threshold"]
    # The inputs exercise all three regimes: active, jumped to zero, and negative.
    assert (pre > thr).any() and ((pre > 0) & (pre <= thr)).any() and (pre < 0).any()
    assert np.abs(pre - thr).min() > 1e-4  # no mask flips from float32 rounding
    xt = torch.from_numpy(x).float()
    feats = sae.encode(xt)
    np.testing.assert_allclose(feats.detach().numpy(), f_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(feats.detach().numpy() > 0, f_ref > 0)
    np.testing.assert_allclose(sae.decode(feats).detach().numpy(), dec_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sae(xt).detach().numpy(), out_ref, rtol=1e-4, atol=1e-5)


def test_skip_transcoder_adds_x_times_W_skip_not_its_transpose():
    arrays = random_arrays(skip=True)
    sae = sae_from(arrays, **KINDS["skip_transcoder"])
    x = torch.randn(6, D_IN)
    skip = (sae(x) - sae.decode(sae.encode(x))).detach().numpy()
    W_skip = arrays["W_skip"]
    assert not np.allclose(W_skip, W_skip.T)
    np.testing.assert_allclose(skip, x.numpy() @ W_skip, rtol=1e-4, atol=1e-5)
    assert not np.allclose(skip, x.numpy() @ W_skip.T, atol=1e-2)


def assert_same_sae(a: JumpReLUSAE, b: JumpReLUSAE):
    for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold", "W_skip"):
        left, right = getattr(a, name), getattr(b, name)
        assert (left is None) == (right is None), name
        if left is not None:
            assert torch.equal(left, right), f"{name} differs after the round trip"
    assert (a.site_in, a.site_out, a.cfg.d_out, a.cfg.skip) == (
        b.site_in,
        b.site_out,
        b.cfg.d_out,
        b.cfg.skip,
    )


@pytest.mark.parametrize("fmt", ["gemma-scope-2", "saelens"])
@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip_is_bit_exact(tmp_path, fmt, kind):
    arrays = random_arrays(skip=kind == "skip_transcoder")
    sae = sae_from(arrays, model_name="tiny-gemma3", l0_target=12.5, **KINDS[kind])
    sae.save(tmp_path / "sae", format=fmt)
    loaded = JumpReLUSAE.load(tmp_path / "sae")
    assert_same_sae(sae, loaded)
    assert loaded.cfg.model_name == "tiny-gemma3"
    if fmt == "gemma-scope-2":
        assert loaded.cfg == sae.cfg


def test_saelens_files_use_saelens_names_and_skip_orientation(tmp_path):
    sae = sae_from(random_arrays(skip=True), **KINDS["skip_transcoder"])
    sae.save(tmp_path, format="saelens")
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu_skip_transcoder"
    # As SAELens names Gemma Scope 2's transcoders: hook_mlp_in, with the exact HF hook point.
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_mlp_in"
    assert cfg["metadata"]["hf_hook_name"] == "model.layers.1.pre_feedforward_layernorm.output"
    assert cfg["metadata"]["hook_name_out"] == "blocks.1.hook_mlp_out"
    stored = load_numpy(str(tmp_path / "sae_weights.safetensors"))
    # SAELens adds x @ W_skip.T, so it stores our W_skip transposed.
    np.testing.assert_array_equal(stored["W_skip"], sae.W_skip.detach().numpy().T)


def test_saelens_names_the_pre_gain_input_ln2_hook_normalized(tmp_path):
    # TransformerLens' ln2.hook_normalized is x / rms(x) before the gain: SAELens' name for what
    # Gemma Scope (Gemma 2) transcoders read, gsnb's mlp_normalized.
    sae_from(random_arrays(), **KINDS["pre_gain_transcoder"]).save(tmp_path, format="saelens")
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert (cfg["metadata"]["hook_name"], cfg["metadata"]["hf_hook_name"]) == (
        "blocks.1.ln2.hook_normalized",
        None,
    )
    # As SAELens configures Gemma Scope's transcoders: TransformerLens names only.
    cfg["metadata"] = {
        "hook_name": "blocks.4.ln2.hook_normalized",
        "hook_name_out": "blocks.4.hook_mlp_out",
        "sae_lens_version": "6.0.0",
    }
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    loaded = JumpReLUSAE.load(tmp_path)
    assert (loaded.site_in, loaded.site_out) == ("mlp_normalized.4", "mlp_out.4")


def test_saelens_apply_b_dec_to_input_is_folded_into_b_enc(tmp_path):
    arrays = random_arrays()
    sae = sae_from(arrays, site_in="resid_post.1")
    sae.save(tmp_path, format="saelens")
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "apply_b_dec_to_input": True}))
    loaded = JumpReLUSAE.load(tmp_path)
    x = np.random.default_rng(2).normal(size=(6, D_IN))
    # SAELens encodes x - b_dec when apply_b_dec_to_input is set.
    _, f_ref, _, out_ref = reference(arrays, x - arrays["b_dec"].astype(np.float64))
    xt = torch.from_numpy(x).float()
    np.testing.assert_allclose(loaded.encode(xt).detach().numpy(), f_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(loaded(xt).detach().numpy(), out_ref, rtol=1e-4, atol=1e-5)


def test_saelens_files_that_are_not_plain_jumprelu_are_refused(tmp_path):
    sae_from(random_arrays(), site_in="resid_post.1").save(tmp_path, format="saelens")
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "architecture": "topk"}))
    with pytest.raises(ValueError, match="architecture 'topk' is not a JumpReLU SAE"):
        JumpReLUSAE.load(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "normalize_activations": "layer_norm"}))
    with pytest.raises(ValueError, match="normalize_activations='layer_norm' rescales inputs"):
        JumpReLUSAE.load(tmp_path)


def test_gemma_scope_2_config_names_hook_points_as_gemma_scope_2_does(tmp_path):
    sae_from(random_arrays(), **KINDS["transcoder"]).save(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["hf_hook_point_in"] == "model.layers.1.pre_feedforward_layernorm.output"
    assert cfg["hf_hook_point_out"] == "model.layers.1.post_feedforward_layernorm.output"
    assert set(load_numpy(str(tmp_path / "params.safetensors"))) == {
        "w_enc",
        "w_dec",
        "b_enc",
        "b_dec",
        "threshold",
    }


def write_gs2(folder, arrays, config=None):
    """A Gemma Scope 2 folder: lowercase keys, ``affine_skip_connection``, optional config."""
    names = {"W_enc": "w_enc", "W_dec": "w_dec", "W_skip": "affine_skip_connection"}
    folder.mkdir(parents=True, exist_ok=True)
    save_numpy({names.get(k, k): v for k, v in arrays.items()}, str(folder / "params.safetensors"))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_gemma_scope_2_config_json_gives_sites_when_the_folder_name_does_not(tmp_path):
    hook = "model.layers.2.{}_feedforward_layernorm.output"
    config = {
        "width": D_SAE,
        "model_name": "google/gemma-3-270m",
        "architecture": "jump_relu",
        "l0": 20,
        "affine_connection": True,
        "type": "transcoder",
        "hf_hook_point_in": hook.format("pre"),
        "hf_hook_point_out": hook.format("post"),
    }
    folder = write_gs2(tmp_path / "my_transcoder", random_arrays(skip=True), config)
    sae = JumpReLUSAE.load(folder)
    assert (sae.site_in, sae.site_out, sae.cfg.skip) == ("mlp_in.2", "mlp_out.2", True)
    assert (sae.cfg.l0_target, sae.cfg.model_name) == (20.0, "google/gemma-3-270m")


def test_gemma_scope_npz_loads_and_round_trips(tmp_path):
    arrays = random_arrays()
    folder = tmp_path / "layer_3" / "width_16k" / "average_l0_71"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **arrays)
    sae = JumpReLUSAE.load(folder / "params.npz", site_in="resid_post.3")
    for name, value in arrays.items():
        np.testing.assert_array_equal(getattr(sae, name).detach().numpy(), value)
    assert (sae.cfg.l0_target, sae.site_in) == (71.0, "resid_post.3")
    sae.save(tmp_path / "again")
    assert_same_sae(sae, JumpReLUSAE.load(tmp_path / "again"))


# --- refusals ---------------------------------------------------------------------------------


def test_arrays_that_disagree_in_shape_are_refused(tmp_path):
    arrays = random_arrays()
    arrays["W_dec"] = arrays["W_dec"][:-1]
    with pytest.raises(ValueError, match=r"W_dec has shape \(47, 32\).*imply \(48, 32\)"):
        JumpReLUSAE.load(write_gs2(tmp_path, arrays))


def test_threshold_of_wrong_length_is_refused(tmp_path):
    arrays = random_arrays()
    arrays["threshold"] = arrays["threshold"][:10]
    with pytest.raises(ValueError, match=r"threshold has shape \(10,\)"):
        JumpReLUSAE.load(write_gs2(tmp_path, arrays))


def test_width_disagreeing_with_config_json_is_refused(tmp_path):
    folder = write_gs2(tmp_path, random_arrays(), {"width": 16384})
    with pytest.raises(ValueError, match="config says width 16384 but the weights have 48"):
        JumpReLUSAE.load(folder)


def test_config_json_width_may_be_a_label(tmp_path):
    # Gemma Scope 2's config.json may give the width as its label ("16k" = 16384 features).
    folder = write_gs2(tmp_path / "a", random_arrays(d_sae=1024), {"width": "1k"})
    assert JumpReLUSAE.load(folder).d_sae == 1024
    folder = write_gs2(tmp_path / "b", random_arrays(d_sae=1024), {"width": "16k"})
    with pytest.raises(ValueError, match="config says width 16k but the weights have 1024"):
        JumpReLUSAE.load(folder)
    folder = write_gs2(tmp_path / "c", random_arrays(d_sae=1024), {"width": "big"})
    with pytest.raises(ValueError, match="width 'big' is not a number or a label like '16k'"):
        JumpReLUSAE.load(folder)


def test_nan_weights_are_refused(tmp_path):
    arrays = random_arrays()
    arrays["b_enc"][3] = np.nan
    with pytest.raises(ValueError, match="b_enc holds NaN"):
        JumpReLUSAE.load(write_gs2(tmp_path, arrays))


def test_pickle_bearing_npz_is_refused(tmp_path):
    arrays = random_arrays()
    np.savez(tmp_path / "params.npz", **arrays, note=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickled objects, which gsnb never loads"):
        JumpReLUSAE.load(tmp_path / "params.npz")


def test_unknown_and_missing_arrays_are_refused(tmp_path):
    np.savez(tmp_path / "params.npz", **random_arrays(), scaling_factor=np.ones(3, np.float32))
    with pytest.raises(ValueError, match="unexpected array 'scaling_factor'"):
        JumpReLUSAE.load(tmp_path / "params.npz")
    arrays = random_arrays()
    del arrays["threshold"]
    with pytest.raises(ValueError, match=r"lacks arrays \['threshold'\]"):
        JumpReLUSAE.load(write_gs2(tmp_path / "b", arrays))


def test_missing_path_and_unknown_format_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no SAE at"):
        JumpReLUSAE.load(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="holds no params.safetensors"):
        JumpReLUSAE.load(tmp_path)
    with pytest.raises(ValueError, match="unknown format 'npz'"):
        sae_from(random_arrays(), site_in="resid_post.0").save(tmp_path, format="npz")


def test_check_model_accepts_matching_sites(model):
    sae_from(random_arrays(d_in=32), **KINDS["transcoder"]).check_model(model)
    attn_width = model.n_heads * model.head_dim  # 64 in the tiny models
    sae_from(random_arrays(d_in=attn_width), site_in="attn_out.2").check_model(model)


def test_check_model_refuses_a_site_the_model_lacks(model):
    sae = sae_from(random_arrays(), site_in="resid_post.7")
    with pytest.raises(ValueError, match=r"it reads resid_post.7 but the model has layers 0\.\.2"):
        sae.check_model(model)


def test_check_model_refuses_another_models_width(model):
    sae = sae_from(
        random_arrays(d_in=48),
        site_in="resid_post.1",
        model_name="google/gemma-2-2b",
        release="gemma-scope-2b-pt-res",
        sae_id="layer_1/width_16k/average_l0_71",
    )
    # One message: which SAE (release and id), expected and found widths, and the fix.
    with pytest.raises(
        ValueError,
        match=r"'layer_1/width_16k/average_l0_71' of gemma-scope-2b-pt-res .* does not fit "
        r"tiny-gemma\d: it expects width 48 at resid_post.1 \(the site it reads\) but the model "
        r"has 32 there\. It was made for google/gemma-2-2b: use it with that model "
        r"\(gsnb.load_model\('google/gemma-2-2b'\)\)",
    ):
        sae.check_model(model)
    sae = sae_from(random_arrays(d_in=32), site_in="attn_out.1")
    with pytest.raises(ValueError, match="expects width 32 at attn_out.1 .* has 64 there .*o_proj"):
        sae.check_model(model)


def test_check_model_refuses_an_sae_without_a_site(gemma3):
    with pytest.raises(ValueError, match="does not know its site"):
        sae_from(random_arrays()).check_model(gemma3)
