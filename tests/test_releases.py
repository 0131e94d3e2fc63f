"""load_sae() against a Hugging Face cache built on disk, offline; release names and ids."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save as safetensors_bytes

from gsnb.saes.releases import list_releases, list_sae_ids, load_sae
from gsnb.saes.sae import JumpReLUSAE

COMMIT = "0123456789abcdef0123456789abcdef01234567"
D_IN, D_SAE, WIDTH = 32, 1024, "1k"  # "1k" = 1024 features, as "16k" = 16384


class HubCache:
    """Files in huggingface_hub's on-disk layout: refs/main, snapshots/<commit>/..., blobs/."""

    def __init__(self, root: Path):
        self.root = root

    def add(self, repo: str, path: str, data: bytes) -> Path:
        repo_dir = self.root / ("models--" + repo.replace("/", "--"))
        (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / "main").write_text(COMMIT)
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo_dir / "snapshots" / COMMIT / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
        return link


@pytest.fixture
def hub(tmp_path, monkeypatch) -> HubCache:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return HubCache(tmp_path / "hub")


def arrays(d_in=D_IN, d_sae=D_SAE, skip=False, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {
        "W_enc": rng.normal(size=(d_in, d_sae)),
        "W_dec": rng.normal(size=(d_sae, d_in)),
        "b_enc": rng.normal(size=d_sae),
        "b_dec": rng.normal(size=d_in),
        "threshold": rng.uniform(0.1, 1.0, size=d_sae),
    }
    if skip:
        out["W_skip"] = rng.normal(size=(d_in, d_in))
    return {k: v.astype(np.float32) for k, v in out.items()}


def npz_bytes(a: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **a)
    return buffer.getvalue()


def gs2_bytes(a: dict[str, np.ndarray]) -> bytes:
    names = {"W_enc": "w_enc", "W_dec": "w_dec", "W_skip": "affine_skip_connection"}
    return safetensors_bytes({names.get(k, k): v for k, v in a.items()})


def assert_weights(sae: JumpReLUSAE, a: dict[str, np.ndarray]):
    for name, value in a.items():
        np.testing.assert_array_equal(getattr(sae, name).detach().cpu().numpy(), value)


def test_gemma_scope_npz_loads_offline_with_its_sites(hub):
    a = arrays()
    hub.add(
        "google/gemma-scope-2b-pt-res",
        f"layer_3/width_{WIDTH}/average_l0_71/params.npz",
        npz_bytes(a),
    )
    sae = load_sae("gemma-scope-2b-pt-res", f"layer_3/width_{WIDTH}/average_l0_71", device="cpu")
    assert_weights(sae, a)
    assert (sae.site_in, sae.site_out, sae.is_transcoder) == ("resid_post.3", "resid_post.3", False)
    assert sae.cfg.model_name == "google/gemma-2-2b"
    assert (sae.cfg.release, sae.cfg.sae_id) == (
        "gemma-scope-2b-pt-res",
        f"layer_3/width_{WIDTH}/average_l0_71",
    )
    assert sae.cfg.l0_target == 71


@pytest.mark.parametrize(
    ("release", "site_in", "site_out"),
    [
        ("gemma-scope-2b-pt-mlp", "mlp_out.5", "mlp_out.5"),
        ("gemma-scope-2b-pt-att", "attn_out.5", "attn_out.5"),
        # Gemma Scope's transcoders read x / rms(x), before the pre-MLP norm's gain.
        ("gemma-scope-2b-pt-transcoders", "mlp_normalized.5", "mlp_out.5"),
    ],
)
def test_gemma_scope_sites_follow_the_release(hub, release, site_in, site_out):
    hub.add(
        f"google/{release}", f"layer_5/width_{WIDTH}/average_l0_40/params.npz", npz_bytes(arrays())
    )
    sae = load_sae(release, f"layer_5/width_{WIDTH}/average_l0_40", device="cpu")
    assert (sae.site_in, sae.site_out) == (site_in, site_out)


def add_16k_files(hub: HubCache, suite: str, layer: int, l0s: tuple[int, ...]) -> None:
    """Gemma Scope files of width 16k at ``layer``, one per average L0 (seeded by the L0)."""
    for l0 in l0s:
        path = f"layer_{layer}/width_16k/average_l0_{l0}/params.npz"
        hub.add(f"google/gemma-scope-{suite}", path, npz_bytes(arrays(d_sae=16384, seed=l0)))


def test_canonical_is_saelens_pick_with_its_neuronpedia_id(hub):
    # SAELens' gemma-scope-2b-pt-res-canonical maps layer_20/width_16k/canonical to L0 71.
    add_16k_files(hub, "2b-pt-res", 20, (71, 139))
    sae = load_sae("gemma-scope-2b-pt-res-canonical", "layer_20/width_16k/canonical", device="cpu")
    assert_weights(sae, arrays(d_sae=16384, seed=71))
    assert sae.cfg.l0_target == 71
    assert sae.cfg.neuronpedia_id == "gemma-2-2b/20-gemmascope-res-16k"
    assert sae.cfg.sae_id == "layer_20/width_16k/canonical"
    # The explicit id of the canonical file gets the same Neuronpedia id; the others none.
    explicit = load_sae("gemma-scope-2b-pt-res", "layer_20/width_16k/average_l0_71", device="cpu")
    assert explicit.cfg.neuronpedia_id == "gemma-2-2b/20-gemmascope-res-16k"
    other = load_sae("gemma-scope-2b-pt-res", "layer_20/width_16k/average_l0_139", device="cpu")
    assert other.cfg.neuronpedia_id is None


def test_canonical_follows_saelens_not_the_l0_closest_to_100(hub):
    # SAELens' canonical 9B MLP SAE at layer 3, width 16k, has L0 126, though 99 exists.
    add_16k_files(hub, "9b-pt-mlp", 3, (99, 126))
    sae = load_sae("gemma-scope-9b-pt-mlp-canonical", "layer_3/width_16k/canonical", device="cpu")
    assert sae.cfg.l0_target == 126
    assert_weights(sae, arrays(d_sae=16384, seed=126))


@pytest.mark.parametrize(
    ("release", "sae_id", "widths"),
    [
        ("gemma-scope-2b-pt-res-canonical", "layer_12/width_131k/canonical", "16k, 32k, 65k, 262k"),
        ("gemma-scope-9b-pt-res-canonical", "layer_20/width_262k/canonical", "16k, 32k, 65k, 131k"),
    ],
)
def test_canonical_ids_saelens_lacks_are_refused(hub, release, sae_id, widths):
    # The repos hold these widths at these layers, but no canonical pick exists for them.
    with pytest.raises(
        ValueError,
        match=rf"has no canonical SAE '{sae_id}': SAELens and Neuronpedia have canonical SAEs at "
        rf"layer \d+ for width {widths}, .* and gsnb invents none. .*explicit L0",
    ):
        load_sae(release, sae_id)
    assert sae_id not in list_sae_ids(release)


def test_canonical_ids_are_listed_offline_as_saelens_has_them(hub):
    ids = list_sae_ids("gemma-scope-2b-pt-res-canonical")  # no cache, no network: the table
    assert len(ids) == 58  # 26 layers x (16k, 65k), 1m at 3 layers, 32k/262k/524k at layer 12
    assert "layer_12/width_262k/canonical" in ids and "layer_12/width_131k/canonical" not in ids
    assert list_sae_ids("gemma-scope-27b-pt-res-canonical") == [
        f"layer_{n}/width_131k/canonical" for n in (10, 22, 34)
    ]


def test_canonical_transcoders_are_neuronpedias_set(hub):
    add_16k_files(hub, "2b-pt-transcoders", 11, (5, 99))  # Neuronpedia shows L0 5, far from 100
    sae = load_sae("gemma-scope-2b-pt-transcoders-canonical", "layer_11/width_16k/canonical")
    assert (sae.cfg.l0_target, sae.cfg.neuronpedia_id) == (
        5,
        "gemma-2-2b/11-gemmascope-transcoder-16k",
    )
    # Other widths have no Neuronpedia set, so no canonical id either.
    with pytest.raises(ValueError, match="no canonical SAE 'layer_2/width_65k/canonical'"):
        load_sae("gemma-scope-2b-pt-transcoders-canonical", "layer_2/width_65k/canonical")


def test_canonical_resolves_offline_and_a_missing_file_is_named(hub):
    with pytest.raises(
        FileNotFoundError,
        match=r"google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71/params.npz is not "
        r"in the local Hugging Face cache",
    ):
        load_sae("gemma-scope-2b-pt-res-canonical", "layer_20/width_16k/canonical")


@pytest.mark.parametrize("with_config", [True, False])
def test_gemma_scope_2_safetensors_loads_with_and_without_config(hub, with_config):
    repo, sae_id = "google/gemma-scope-2-270m-pt", f"resid_post_all/layer_12_width_{WIDTH}_l0_small"
    a = arrays()
    hub.add(repo, f"{sae_id}/params.safetensors", gs2_bytes(a))
    if with_config:
        config = {
            "width": D_SAE,
            "model_name": "google/gemma-3-270m",
            "architecture": "jump_relu",
            "l0": 17,
            "affine_connection": False,
            "type": "sae",
            "hf_hook_point_in": "model.layers.12.output",
        }
        hub.add(repo, f"{sae_id}/config.json", json.dumps(config).encode())
    sae = load_sae("gemma-scope-2-270m-pt", sae_id, device="cpu")
    assert_weights(sae, a)
    assert (sae.site_in, sae.site_out) == ("resid_post.12", "resid_post.12")
    assert sae.cfg.model_name == "google/gemma-3-270m"
    assert sae.cfg.l0_target == (17 if with_config else None)


def test_gemma_scope_2_config_width_is_checked(hub):
    repo, sae_id = "google/gemma-scope-2-1b-it", f"attn_out_all/layer_2_width_{WIDTH}_l0_big"
    hub.add(repo, f"{sae_id}/params.safetensors", gs2_bytes(arrays()))
    hub.add(repo, f"{sae_id}/config.json", json.dumps({"width": 16384}).encode())
    with pytest.raises(ValueError, match="config says width 16384 but the weights have 1024"):
        load_sae("gemma-scope-2-1b-it", sae_id)


def test_file_whose_width_disagrees_with_its_id_is_refused(hub):
    sae_id = "mlp_out_all/layer_2_width_16k_l0_big"
    hub.add("google/gemma-scope-2-1b-pt", f"{sae_id}/params.safetensors", gs2_bytes(arrays()))
    with pytest.raises(ValueError, match="has 1024 features but its id .* says 16384"):
        load_sae("gemma-scope-2-1b-pt", sae_id)


def test_width_labels_name_powers_of_two():
    from gsnb.saes.sae import parse_width

    labels = {"1k": 1024, "4k": 4096, "16k": 16384, "32k": 32768, "65k": 65536, "131k": 131072,
              "262k": 262144, "524k": 524288, "1m": 1048576, "48": 48, 16384: 16384}  # fmt: skip
    assert {label: parse_width(label) for label in labels} == labels
    with pytest.raises(ValueError, match="width label '17k' names no power of two"):
        parse_width("17k")


def test_transcoder_reads_mlp_in_writes_mlp_out(hub, gemma3):
    sae_id = f"transcoder_all/layer_1_width_{WIDTH}_l0_small"
    hub.add("google/gemma-scope-2-270m-it", f"{sae_id}/params.safetensors", gs2_bytes(arrays()))
    sae = load_sae("gemma-scope-2-270m-it", sae_id, device="cpu")
    assert (sae.site_in, sae.site_out, sae.cfg.skip) == ("mlp_in.1", "mlp_out.1", False)
    assert sae.cfg.model_name == "google/gemma-3-270m-it"
    sae.check_model(gemma3)  # tiny model: d_model 32, three layers


def test_skip_transcoder_adds_the_affine_skip_connection(hub):
    repo, sae_id = (
        "google/gemma-scope-2-4b-it",
        f"transcoder_all/layer_3_width_{WIDTH}_l0_small_affine",
    )
    a = arrays(skip=True)
    hub.add(repo, f"{sae_id}/params.safetensors", gs2_bytes(a))
    sae = load_sae("gemma-scope-2-4b-it", sae_id, device="cpu", dtype=torch.float64)
    assert (sae.site_in, sae.site_out, sae.cfg.skip) == ("mlp_in.3", "mlp_out.3", True)
    assert sae.W_skip.dtype == torch.float64
    x = np.random.default_rng(3).normal(size=(4, D_IN))
    b = {k: v.astype(np.float64) for k, v in a.items()}
    pre = x @ b["W_enc"] + b["b_enc"]
    expected = np.where(pre > b["threshold"], pre, 0) @ b["W_dec"] + b["b_dec"] + x @ b["W_skip"]
    got = sae(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-9)


def test_neuronpedia_ids_follow_the_public_naming(hub):
    repo = "google/gemma-scope-2-4b-it"
    res, tc = (
        "resid_post/layer_17_width_1k_l0_medium",
        "transcoder_all/layer_3_width_1k_l0_small_affine",
    )
    for sae_id in (res, tc):
        hub.add(repo, f"{sae_id}/params.safetensors", gs2_bytes(arrays(skip="affine" in sae_id)))
    assert (
        load_sae("gemma-scope-2-4b-it", res, device="cpu").cfg.neuronpedia_id is None
    )  # no 1k set
    hub.add(
        "google/gemma-scope-2b-pt-transcoders",
        "layer_11/width_16k/average_l0_5/params.npz",
        npz_bytes(arrays(d_sae=16384)),
    )
    sae = load_sae("gemma-scope-2b-pt-transcoders", "layer_11/width_16k/average_l0_5", device="cpu")
    assert sae.cfg.neuronpedia_id == "gemma-2-2b/11-gemmascope-transcoder-16k"
    assert (sae.site_in, sae.site_out) == ("mlp_normalized.11", "mlp_out.11")


def test_missing_file_offline_names_the_cache_and_the_fix(hub):
    hub.add(
        "google/gemma-scope-2b-pt-res",
        f"layer_3/width_{WIDTH}/average_l0_71/params.npz",
        npz_bytes(arrays()),
    )
    with pytest.raises(
        FileNotFoundError,
        match=r"not in the local Hugging Face cache .*HF_HUB_OFFLINE is set.*HF_HUB_OFFLINE=0"
        r".*Cached ids close to it: layer_3/width_1k/average_l0_71",
    ):
        load_sae("gemma-scope-2b-pt-res", f"layer_3/width_{WIDTH}/average_l0_72")


def test_unknown_id_lists_close_matches(hub):
    hub.add(
        "google/gemma-scope-2b-pt-res",
        f"layer_3/width_{WIDTH}/average_l0_71/params.npz",
        npz_bytes(arrays()),
    )
    with pytest.raises(
        ValueError,
        match=r"unknown sae_id 'layer_3/width_1k/averge_l0_71'"
        r".*Close matches: layer_3/width_1k/average_l0_71",
    ):
        load_sae("gemma-scope-2b-pt-res", f"layer_3/width_{WIDTH}/averge_l0_71")
    # With nothing cached, suggestions follow the naming pattern.
    with pytest.raises(
        ValueError, match=r"Close matches: resid_post_all/layer_3_width_16k_l0_small"
    ):
        load_sae("gemma-scope-2-270m-pt", "resid_post_all/layer_3_width_16k_l0_smal")


def test_ids_outside_the_release_are_refused_before_any_download(hub):
    with pytest.raises(ValueError, match=r"google/gemma-2-2b has layers 0\.\.25, not 30"):
        load_sae("gemma-scope-2b-pt-res", "layer_30/width_16k/average_l0_71")
    with pytest.raises(
        ValueError, match=r"resid_post folder holds layers \(5, 9, 12, 15\); use resid_post_all"
    ):
        load_sae("gemma-scope-2-270m-pt", "resid_post/layer_3_width_16k_l0_small")
    with pytest.raises(NotImplementedError, match="crosscoder"):
        load_sae("gemma-scope-2-270m-pt", "crosscoder/layer_5_9_12_15_width_65k_l0_medium")
    with pytest.raises(ValueError, match="unknown sae_id 'clt/layer_3_width_16k_l0_medium'"):
        load_sae("gemma-scope-2-270m-pt", "clt/layer_3_width_16k_l0_medium")


def test_unknown_release_lists_close_matches(hub):
    with pytest.raises(
        ValueError,
        match="unknown release 'gemma-scop-2b-pt-res'.*Close matches: gemma-scope-2b-pt-res",
    ):
        load_sae("gemma-scop-2b-pt-res", "layer_3/width_16k/average_l0_71")


def test_repo_id_works_as_release_and_hf_home_redirects_the_cache(tmp_path, monkeypatch):
    # HF_HOME is read when load_sae runs, not when huggingface_hub was imported.
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    a = arrays()
    HubCache(tmp_path / "home" / "hub").add(
        "google/gemma-scope-9b-it-res",
        f"layer_9/width_{WIDTH}/average_l0_88/params.npz",
        npz_bytes(a),
    )
    sae = load_sae(
        "google/gemma-scope-9b-it-res", f"layer_9/width_{WIDTH}/average_l0_88", device="cpu"
    )
    assert_weights(sae, a)
    assert sae.cfg.model_name == "google/gemma-2-9b-it"


def test_local_folder_works_as_a_release(tmp_path, gemma3):
    from gsnb.saes.sae import SAEConfig

    suite = tmp_path / "suite"
    sae = JumpReLUSAE(
        SAEConfig(d_in=32, d_sae=48, site_in="resid_post.2", model_name="tiny-gemma3")
    )
    with torch.no_grad():
        for name, value in arrays(d_sae=48).items():
            getattr(sae, name).copy_(torch.from_numpy(value))
    sae.save(suite / "resid_post_all" / "layer_2_width_48_l0_small")
    loaded = load_sae(suite, "resid_post_all/layer_2_width_48_l0_small", device="cpu")
    assert torch.equal(loaded.W_enc, sae.W_enc)
    assert (loaded.site_in, loaded.cfg.release) == ("resid_post.2", str(suite))
    loaded.check_model(gemma3)
    assert list_sae_ids(str(suite)) == ["resid_post_all/layer_2_width_48_l0_small"]
    with pytest.raises(
        ValueError,
        match=r"no SAE 'resid_post_all/layer_2_width_48_l0_smal'"
        r".*Close matches: resid_post_all/layer_2_width_48_l0_small",
    ):
        load_sae(str(suite), "resid_post_all/layer_2_width_48_l0_smal")


def test_a_local_id_with_another_l0_label_loads_the_one_sae_there_with_a_warning(tmp_path):
    from gsnb.saes.sae import SAEConfig

    def save(folder):
        sae = JumpReLUSAE(SAEConfig(d_in=32, d_sae=48, site_in="resid_post.2"))
        with torch.no_grad():
            sae.W_enc.copy_(torch.randn(32, 48))
        sae.save(tmp_path / "resid_post_all" / folder)
        return sae

    big = save("layer_2_width_48_l0_big")
    save("layer_3_width_48_l0_small")
    with pytest.warns(UserWarning, match=r"no 'resid_post_all/layer_2_width_48_l0_small'; loadi"):
        loaded = load_sae(tmp_path, "resid_post_all/layer_2_width_48_l0_small", device="cpu")
    assert torch.equal(loaded.W_enc, big.W_enc)
    assert loaded.cfg.sae_id == "resid_post_all/layer_2_width_48_l0_big"  # what it really is
    save("layer_2_width_48_l0_medium")  # two candidates: no guess
    with pytest.raises(ValueError, match="no SAE 'resid_post_all/layer_2_width_48_l0_small'"):
        load_sae(tmp_path, "resid_post_all/layer_2_width_48_l0_small", device="cpu")
    with pytest.raises(ValueError, match="no SAE 'resid_post_all/layer_2_width_64_l0_big'"):
        load_sae(tmp_path, "resid_post_all/layer_2_width_64_l0_big", device="cpu")


def test_local_folder_in_gemma_scope_layout_resolves_canonical(tmp_path):
    for l0 in (40, 95, 180):
        folder = tmp_path / "layer_1" / "width_48" / f"average_l0_{l0}"
        folder.mkdir(parents=True)
        np.savez(folder / "params.npz", **arrays(d_sae=48, seed=l0))
    sae = load_sae(tmp_path, "layer_1/width_48/canonical", device="cpu")
    assert sae.cfg.l0_target == 95


def test_list_releases_covers_both_suites():
    releases = {r.name: r for r in list_releases()}
    for stem in (
        "2b-pt-res",
        "2b-pt-mlp",
        "2b-pt-att",
        "2b-pt-transcoders",
        "9b-pt-res",
        "9b-pt-mlp",
        "9b-pt-att",
        "9b-it-res",
        "27b-pt-res",
    ):
        for name in (f"gemma-scope-{stem}", f"gemma-scope-{stem}-canonical"):
            assert releases[name].repo == f"google/gemma-scope-{stem}"
            assert releases[name].format == "gemma-scope"
    for size in ("270m", "1b", "4b", "12b", "27b"):
        for variant in ("pt", "it"):
            info = releases[f"gemma-scope-2-{size}-{variant}"]
            assert (info.repo, info.format) == (
                f"google/gemma-scope-2-{size}-{variant}",
                "gemma-scope-2",
            )
    assert releases["gemma-scope-2b-pt-transcoders"].kinds == ("transcoder",)
    assert releases["gemma-scope-9b-it-res"].model_name == "google/gemma-2-9b-it"
    assert releases["gemma-scope-2-270m-pt"].model_name == "google/gemma-3-270m"
    assert releases["gemma-scope-2-1b-pt"].model_name == "google/gemma-3-1b-pt"
    assert releases["gemma-scope-2-27b-it"].neuronpedia_model == "gemma-3-27b-it"


def test_saelens_gemma_scope_2_names_are_aliases(hub):
    repo, folder = "google/gemma-scope-2-270m-pt", "resid_post_all/layer_3_width_16k_l0_small"
    a = arrays(d_sae=16384)
    hub.add(repo, f"{folder}/params.safetensors", gs2_bytes(a))
    sae = load_sae("gemma-scope-2-270m-pt-res-all", "layer_3_width_16k_l0_small", device="cpu")
    assert_weights(sae, a)
    # Loaded by either name, the SAE carries gsnb's names, so both spellings give equal SAEs.
    assert (sae.cfg.release, sae.cfg.sae_id, sae.site_in) == (
        "gemma-scope-2-270m-pt",
        folder,
        "resid_post.3",
    )


@pytest.mark.parametrize(
    ("alias", "sae_id", "folder", "sites"),
    [
        ("gemma-scope-2-1b-it-mlp-all", "layer_2_width_1k_l0_big", "mlp_out_all", "mlp_out.2"),
        ("gemma-scope-2-4b-pt-att", "layer_9_width_1k_l0_medium", "attn_out", "attn_out.9"),
        (
            "gemma-scope-2-270m-it-transcoders-all",
            "layer_4_width_1k_l0_small_affine",
            "transcoder_all",
            "mlp_in.4->mlp_out.4",
        ),
        # SAELens' ids in the depth-sweep transcoder releases keep the folder name.
        (
            "gemma-scope-2-270m-it-transcoders",
            "transcoder/layer_9_width_1k_l0_big_affine",
            "transcoder",
            "mlp_in.9->mlp_out.9",
        ),
    ],
)
def test_each_saelens_kind_maps_to_its_folder(hub, alias, sae_id, folder, sites):
    release = alias.removesuffix("-all").rsplit("-", 1)[0]
    name = sae_id.removeprefix("transcoder/")
    a = arrays(skip=name.endswith("_affine"))
    hub.add(f"google/{release}", f"{folder}/{name}/params.safetensors", gs2_bytes(a))
    sae = load_sae(alias, sae_id, device="cpu")
    assert_weights(sae, a)
    assert sae.cfg.sae_id == f"{folder}/{name}"
    assert (sae.site_in if not sae.is_transcoder else f"{sae.site_in}->{sae.site_out}") == sites


def test_list_sae_ids_speaks_the_naming_of_the_release_asked(hub):
    repo = "google/gemma-scope-2-270m-pt"
    folders = [
        "resid_post_all/layer_3_width_1k_l0_small",
        "resid_post_all/layer_4_width_1k_l0_big",
        "transcoder/layer_9_width_1k_l0_small_affine",
        "mlp_out_all/layer_1_width_1k_l0_small",
    ]
    for folder in folders:
        hub.add(repo, f"{folder}/params.safetensors", gs2_bytes(arrays()))
    assert list_sae_ids("gemma-scope-2-270m-pt") == sorted(folders)
    assert list_sae_ids("gemma-scope-2-270m-pt-res-all") == [
        "layer_3_width_1k_l0_small",
        "layer_4_width_1k_l0_big",
    ]
    assert list_sae_ids("gemma-scope-2-270m-pt-transcoders") == [
        "transcoder/layer_9_width_1k_l0_small_affine"
    ]
    assert list_sae_ids("gemma-scope-2-270m-pt-res") == []  # no resid_post/ depth sweep cached
    with pytest.raises(
        ValueError,
        match=r"unknown sae_id 'layer_3_width_1k_l0_smal' for gemma-scope-2-270m-pt-res-all "
        r"\(SAELens' name for gemma-scope-2-270m-pt's resid_post_all folder\)\. "
        r"Close matches: layer_3_width_1k_l0_small",
    ):
        load_sae("gemma-scope-2-270m-pt-res-all", "layer_3_width_1k_l0_smal")
    with pytest.raises(ValueError, match="Close matches: gemma-scope-2-270m-pt-res-all"):
        load_sae("gemma-scope-2-270m-pt-res-al", "layer_3_width_1k_l0_small")


def test_offline_listing_reads_the_revision_main_points_to(hub):
    repo, old = "google/gemma-scope-2-270m-pt", "f" * 40
    hub.add(repo, "resid_post_all/layer_3_width_1k_l0_small/params.safetensors", b"new")
    # An older snapshot holding another SAE: not part of what main is now.
    stale = hub.root / "models--google--gemma-scope-2-270m-pt" / "snapshots" / old
    (stale / "resid_post_all/layer_5_width_1k_l0_small").mkdir(parents=True)
    (stale / "resid_post_all/layer_5_width_1k_l0_small/params.safetensors").write_bytes(b"old")
    assert list_sae_ids("gemma-scope-2-270m-pt") == ["resid_post_all/layer_3_width_1k_l0_small"]
    (hub.root / "models--google--gemma-scope-2-270m-pt" / "refs" / "main").unlink()
    assert list_sae_ids("gemma-scope-2-270m-pt") == [  # no ref cached: every snapshot counts
        "resid_post_all/layer_3_width_1k_l0_small",
        "resid_post_all/layer_5_width_1k_l0_small",
    ]


def plain_pre_mlp_norm_inputs(hf, tokens: torch.Tensor) -> list[np.ndarray]:
    """Per layer ``[pos, d_model]`` input of ``pre_feedforward_layernorm`` from a plain torch hook
    on the transformers model (nothing of gsnb's), as float64 numpy."""
    inputs = []
    norms = [layer.pre_feedforward_layernorm for layer in hf.model.layers]
    handles = [n.register_forward_pre_hook(lambda _m, a: inputs.append(a[0])) for n in norms]
    try:
        with torch.no_grad():
            hf(input_ids=tokens)
    finally:
        for handle in handles:
            handle.remove()
    return [x[0].double().numpy() for x in inputs]


def test_gemma_scope_transcoders_encode_x_over_rms_before_the_gain(hub):
    """Gemma Scope (Gemma 2) transcoders were trained on x / rms(x), the pre-MLP RMSNorm's value
    before its (1 + w) gain; on a Gemma 2 with perturbed gains, gsnb's features equal a numpy
    encoder on that value, and tracing on them reproduces the model's logits."""
    from tiny import tiny_model

    from gsnb.circuits.tracing import ReplacementModel, freeze_prompt, trace

    model = tiny_model("gemma2")
    repo, params = "google/gemma-scope-2b-pt-transcoders", {}
    for layer in range(model.n_layers):
        params[layer] = arrays(d_in=model.d_model, seed=10 + layer)
        folder = f"layer_{layer}/width_{WIDTH}/average_l0_{40 + layer}"
        hub.add(repo, f"{folder}/params.npz", npz_bytes(params[layer]))
    transcoders = [
        load_sae(
            "gemma-scope-2b-pt-transcoders",
            f"layer_{layer}/width_{WIDTH}/average_l0_{40 + layer}",
            device="cpu",
        )
        for layer in range(model.n_layers)
    ]
    tokens = model.to_tokens("the cat sat on the mat .")
    inputs = plain_pre_mlp_norm_inputs(model.hf, tokens)
    eps = model.config.rms_norm_eps
    expected = []
    for layer, tc in enumerate(transcoders):
        x = inputs[layer] / np.sqrt((inputs[layer] ** 2).mean(-1, keepdims=True) + eps)
        a = {k: v.astype(np.float64) for k, v in params[layer].items()}
        pre = x @ a["W_enc"] + a["b_enc"]
        expected.append(np.where(pre > a["threshold"], np.maximum(pre, 0), 0))
        _, cache = model.run_with_cache(tokens, [tc.site_in])
        got = tc.encode(cache[tc.site_in])[0].detach().double().numpy()
        assert 0 < (expected[-1] > 0).mean() < 1  # some features fire, some do not
        np.testing.assert_allclose(got, expected[-1], rtol=1e-4, atol=1e-4)
    # The attribution graph's features are the same activations, and its replacement model
    # reproduces the logits.
    graph = trace(model, transcoders, tokens[0], max_feature_nodes=40, progress=False)
    for (layer, pos, feat), act in zip(graph.features.tolist(), graph.activations.tolist()):
        assert act == pytest.approx(expected[layer][pos, feat], rel=1e-4, abs=1e-4)
    frozen = freeze_prompt(model, transcoders, tokens[0])
    replacement = ReplacementModel(model, transcoders, frozen)
    logits = model(tokens)[0]
    assert (replacement.forward() - logits).abs().max() <= 1e-5
