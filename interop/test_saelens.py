"""gsnb against SAELens' own code (sae-lens 6.54.12, run in its own venv by ``peer``).

* SAELens' ``SAE.load_from_disk`` reads the folders gsnb writes with ``save(format="saelens")``
  (an SAE, an attention SAE in SAELens' hook_z layout, transcoders with and without a skip
  connection) and encodes and reconstructs exactly as gsnb does.
* gsnb reads folders SAELens' own ``save_model`` wrote (JumpReLU SAEs with random weights, with and
  without ``apply_b_dec_to_input``) and encodes exactly as SAELens does.
* gsnb's release names agree with SAELens' ``pretrained_saes.yaml``: every Gemma Scope 2 id there
  resolves to the same repo and folder through gsnb's aliases, gsnb's ``-canonical`` ids are
  SAELens' (with the same files and Neuronpedia ids), and Gemma Scope's transcoders read the
  hook SAELens' own loader gives them.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from gsnb.saes.sae import JumpReLUSAE, SAEConfig

TOL = dict(rtol=1e-5, atol=1e-5)


def random_sae(seed: int, d_in: int, d_sae: int = 64, **cfg) -> JumpReLUSAE:
    """A JumpReLU SAE whose features fire on about half of unit-Gaussian inputs."""
    gen = torch.Generator().manual_seed(seed)
    sae = JumpReLUSAE(SAEConfig(d_in=d_in, d_sae=d_sae, model_name="google/gemma-2-2b", **cfg))
    d_out = sae.cfg.d_out
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=gen) / d_in**0.5)
        sae.W_dec.copy_(torch.randn(d_sae, d_out, generator=gen) / d_sae**0.5)
        sae.b_enc.copy_(torch.randn(d_sae, generator=gen) * 0.1)
        sae.b_dec.copy_(torch.randn(d_out, generator=gen) * 0.1)
        sae.threshold.copy_(torch.rand(d_sae, generator=gen) * 0.5)
        if sae.W_skip is not None:
            sae.W_skip.copy_(torch.randn(d_in, d_out, generator=gen) / d_in**0.5)
    return sae


SAELENS_LOADS_GSNB = """
import json, sys
import torch
from safetensors.torch import load_file, save_file
from sae_lens import SAE

args = json.loads(sys.argv[1])
inputs, outputs, info = load_file(args["inputs"]), {}, {}
for name, folder in args["folders"].items():
    sae = SAE.load_from_disk(folder, device="cpu")
    x = inputs[name]
    if sae.cfg.reshape_activations == "hook_z":  # SAELens reads attention as [..., heads, d_head]
        x = x.unflatten(-1, (args["n_heads"], -1))
    with torch.no_grad():
        outputs[name + "/encode"] = sae.encode(x)
        outputs[name + "/forward"] = sae(x).flatten(-2) if x.dim() == 3 else sae(x)
    meta = sae.cfg.metadata
    info[name] = {"class": type(sae).__name__, "hook_name": meta.hook_name,
                  "hook_name_out": meta.hook_name_out, "d_sae": sae.cfg.d_sae}
save_file({k: v.contiguous() for k, v in outputs.items()}, args["outputs"])
print(json.dumps(info))
"""


def test_saelens_loads_gsnb_folders_and_encodes_identically(peer, tmp_path):
    saes = {
        "resid": random_sae(0, 32, site_in="resid_post.3"),
        "attn": random_sae(1, 64, site_in="attn_out.2"),
        "transcoder": random_sae(2, 32, site_in="mlp_in.1", site_out="mlp_out.1"),
        "skip_transcoder": random_sae(3, 32, site_in="mlp_in.4", site_out="mlp_out.4", skip=True),
        "pre_gain_transcoder": random_sae(4, 32, site_in="mlp_normalized.5", site_out="mlp_out.5"),
    }
    gen = torch.Generator().manual_seed(9)
    inputs = {name: torch.randn(40, sae.cfg.d_in, generator=gen) for name, sae in saes.items()}
    save_file(inputs, str(tmp_path / "inputs.safetensors"))
    folders = {}
    for name, sae in saes.items():
        folders[name] = str(sae.save(tmp_path / name, format="saelens"))
    info = peer(
        "saelens",
        SAELENS_LOADS_GSNB,
        {
            "folders": folders,
            "inputs": str(tmp_path / "inputs.safetensors"),
            "outputs": str(tmp_path / "outputs.safetensors"),
            "n_heads": 4,
        },
        tmp_path,
    )
    theirs = load_file(str(tmp_path / "outputs.safetensors"))
    for name, sae in saes.items():
        with torch.no_grad():
            encoded, reconstructed = sae.encode(inputs[name]), sae(inputs[name])
        assert 0.05 < (encoded > 0).float().mean() < 0.95  # features both fire and stay off
        torch.testing.assert_close(theirs[name + "/encode"], encoded, **TOL)
        torch.testing.assert_close(theirs[name + "/forward"], reconstructed, **TOL)
    assert info["resid"]["class"] == "JumpReLUSAE"
    assert info["skip_transcoder"]["class"] == "JumpReLUSkipTranscoder"
    assert info["transcoder"]["class"] == "JumpReLUTranscoder"
    # The pre-gain input is TransformerLens' ln2.hook_normalized, as SAELens names it.
    assert info["pre_gain_transcoder"]["hook_name"] == "blocks.5.ln2.hook_normalized"
    assert info["pre_gain_transcoder"]["hook_name_out"] == "blocks.5.hook_mlp_out"
    assert info["attn"]["hook_name"] == "blocks.2.attn.hook_z"
    # Gemma Scope 2's transcoder input (the gained norm output), as SAELens' own loader names it.
    assert info["transcoder"]["hook_name"] == "blocks.1.hook_mlp_in"


GSNB_LOADS_SAELENS = """
import json, sys
import torch
from safetensors.torch import load_file, save_file
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.sae import SAEMetadata

args = json.loads(sys.argv[1])
inputs, outputs = load_file(args["inputs"]), {}
for i, spec in enumerate(args["saes"]):
    torch.manual_seed(100 + i)
    cfg = JumpReLUSAEConfig(
        d_in=spec["d_in"], d_sae=spec["d_sae"], apply_b_dec_to_input=spec["apply_b_dec"],
        metadata=SAEMetadata(model_name="gemma-2-2b", hook_name=spec["hook_name"]),
    )
    sae = JumpReLUSAE(cfg)
    with torch.no_grad():  # random weights: the initial zeros would hide every term
        sae.W_enc.copy_(torch.randn_like(sae.W_enc) / spec["d_in"] ** 0.5)
        sae.W_dec.copy_(torch.randn_like(sae.W_dec) / spec["d_sae"] ** 0.5)
        sae.b_enc.copy_(torch.randn_like(sae.b_enc) * 0.1)
        sae.b_dec.copy_(torch.randn_like(sae.b_dec) * 0.3)
        sae.threshold.copy_(torch.rand_like(sae.threshold) * 0.5)
    sae.save_model(spec["folder"])
    x = inputs[spec["name"]]
    with torch.no_grad():
        outputs[spec["name"] + "/encode"] = sae.encode(x)
        outputs[spec["name"] + "/forward"] = sae(x)
save_file(outputs, args["outputs"])
print(json.dumps({"saved": [spec["folder"] for spec in args["saes"]]}))
"""


def test_gsnb_loads_saelens_saved_folders_and_encodes_identically(peer, tmp_path):
    specs = [
        dict(name="b_dec_in", hook_name="blocks.6.hook_resid_post", apply_b_dec=True),
        dict(name="plain", hook_name="blocks.2.hook_mlp_out", apply_b_dec=False),
    ]
    for spec in specs:
        spec.update(d_in=32, d_sae=96, folder=str(tmp_path / spec["name"]))
    gen = torch.Generator().manual_seed(5)
    inputs = {spec["name"]: torch.randn(50, 32, generator=gen) for spec in specs}
    save_file(inputs, str(tmp_path / "inputs.safetensors"))
    args = {
        "saes": specs,
        "inputs": str(tmp_path / "inputs.safetensors"),
        "outputs": str(tmp_path / "outputs.safetensors"),
    }
    peer("saelens", GSNB_LOADS_SAELENS, args, tmp_path)
    theirs = load_file(str(tmp_path / "outputs.safetensors"))
    sites = {"b_dec_in": "resid_post.6", "plain": "mlp_out.2"}
    for spec in specs:
        sae = JumpReLUSAE.load(spec["folder"])
        assert (sae.site_in, sae.d_sae, sae.cfg.model_name) == (
            sites[spec["name"]],
            96,
            "gemma-2-2b",
        )
        x = inputs[spec["name"]]
        with torch.no_grad():
            encoded = sae.encode(x)
            torch.testing.assert_close(encoded, theirs[spec["name"] + "/encode"], **TOL)
            torch.testing.assert_close(sae(x), theirs[spec["name"] + "/forward"], **TOL)
        assert 0.05 < (encoded > 0).float().mean() < 0.95


SAELENS_DIRECTORY = """
import json, sys
from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
from sae_lens.loading.pretrained_sae_loaders import get_gemma_2_transcoder_config_from_hf

out = {}
for name, lookup in get_pretrained_saes_directory().items():
    if name.startswith("gemma-scope-"):
        out[name] = {"repo": lookup.repo_id, "paths": lookup.saes_map,
                     "neuronpedia": lookup.neuronpedia_id}
hooks = {}
for layer in (0, 11, 25):
    cfg = get_gemma_2_transcoder_config_from_hf(
        "google/gemma-scope-2b-pt-transcoders", f"layer_{layer}/width_16k/average_l0_5"
    )
    hooks[layer] = [cfg["hook_name"], cfg["hook_name_out"]]
with open(json.loads(sys.argv[1])["out"], "w") as f:
    json.dump({"releases": out, "transcoder_hooks": hooks}, f)
print("{}")
"""


def saelens_directory(peer, tmp_path) -> dict:
    path = tmp_path / "directory.json"
    peer("saelens", SAELENS_DIRECTORY, {"out": str(path)}, tmp_path)
    return json.loads(path.read_text())


def test_release_names_and_canonical_ids_agree_with_saelens(peer, tmp_path):
    from gsnb.saes import release_ids, releases

    directory = saelens_directory(peer, tmp_path)
    gs2 = {k: v for k, v in directory["releases"].items() if k.startswith("gemma-scope-2-")}
    canonical = {k: v for k, v in directory["releases"].items() if k.endswith("-canonical")}
    assert len(gs2) > 70 and len(canonical) == 8
    checked = 0
    for name, lookup in gs2.items():
        info, alias = releases._release(name)
        assert info.repo == lookup["repo"]
        for sae_id, path in lookup["paths"].items():
            assert releases._from_alias(alias, info, sae_id) == path, (name, sae_id)
            checked += 1
    assert checked > 5_000  # SAELens 6.54.12 lists 8,784 Gemma Scope 2 ids
    for name, lookup in canonical.items():
        info, alias = releases._release(name)
        assert alias is None and info.repo == lookup["repo"]
        # gsnb's canonical ids are exactly SAELens', each the same file and Neuronpedia source.
        assert releases.list_sae_ids(name) == sorted(lookup["paths"])
        for sae_id, path in lookup["paths"].items():
            spec = release_ids.resolve(info, sae_id)
            assert (spec.folder, spec.neuronpedia_id) == (path, lookup["neuronpedia"][sae_id])
    # The 2B transcoders SAELens lists (Neuronpedia's set) are gsnb's canonical transcoders.
    transcoders = directory["releases"]["gemma-scope-2b-pt-transcoders"]
    info, _ = releases._release("gemma-scope-2b-pt-transcoders-canonical")
    for path in transcoders["paths"].values():
        layer = int(path.split("/")[0].removeprefix("layer_"))
        spec = release_ids.resolve(info, f"layer_{layer}/width_16k/canonical")
        assert (spec.folder, spec.neuronpedia_id) == (path, transcoders["neuronpedia"][path])


def test_gemma_scope_transcoders_read_the_hook_saelens_gives_them(peer, tmp_path, monkeypatch):
    from gsnb.saes.releases import load_sae

    hooks = saelens_directory(peer, tmp_path)["transcoder_hooks"]
    # A hub cache holding one small file per layer in the release's layout (offline).
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--google--gemma-scope-2b-pt-transcoders"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("main-commit")
    for layer, (hook_in, hook_out) in hooks.items():
        sae_id = f"layer_{layer}/width_1k/average_l0_5"
        folder = repo / "snapshots" / "main-commit" / sae_id
        folder.mkdir(parents=True)
        state = random_sae(int(layer), d_in=8, d_sae=1024).state_for_save()
        np.savez(folder / "params.npz", **{k: v.numpy() for k, v in state.items()})
        sae = load_sae("gemma-scope-2b-pt-transcoders", sae_id, device="cpu")
        sae.save(tmp_path / f"saelens_{layer}", format="saelens")
        meta = json.loads((tmp_path / f"saelens_{layer}" / "cfg.json").read_text())["metadata"]
        assert (meta["hook_name"], meta["hook_name_out"]) == (hook_in, hook_out)
