"""Released suites (Gemma Scope for Gemma 2, Gemma Scope 2 for Gemma 3) and :func:`load_sae`.

A release names a Hugging Face repo and an SAE id names a folder in it:

* Gemma Scope: ``load_sae("gemma-scope-2b-pt-res", "layer_20/width_16k/average_l0_71")`` reads
  ``google/gemma-scope-2b-pt-res`` / ``layer_20/width_16k/average_l0_71/params.npz``. The id
  ``layer_20/width_16k/canonical`` (the ``-canonical`` releases) picks the file whose average L0
  is closest to 100, from the files the repo lists (or, offline, those in the local hub cache).
* Gemma Scope 2: ``load_sae("gemma-scope-2-270m-pt", "resid_post_all/layer_12_width_16k_l0_small")``
  reads ``params.safetensors`` (and ``config.json`` when the repo has one) from that folder of
  ``google/gemma-scope-2-270m-pt``.
  Cross-layer transcoders: ``load_sae("gemma-scope-2-270m-pt", "clt/width_262k_l0_medium_affine")``
  reads ``params_layer_{L}.safetensors`` for every layer and returns a
  :class:`gsnb.CrossLayerTranscoder`.
* A local folder in either layout, such as a suite gsnb trained and saved, works as a release.

Files come through ``huggingface_hub.hf_hub_download``, so its cache, tokens and
``HF_HUB_OFFLINE`` apply as usual.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import NamedTuple

import torch

from gsnb.saes.clt import CrossLayerTranscoder
from gsnb.saes.sae import JumpReLUSAE


class ReleaseInfo(NamedTuple):
    """One released suite of SAEs and transcoders on the Hugging Face Hub."""

    name: str
    """Release name for :func:`load_sae` (``"gemma-scope-2b-pt-res"``)."""
    repo: str
    """Hub repo (``"google/gemma-scope-2b-pt-res"``)."""
    model_name: str
    """Model the suite was trained on (``"google/gemma-2-2b"``)."""
    kinds: tuple[str, ...]
    """``resid_post``, ``attn_out``, ``mlp_out`` (SAEs), ``transcoder`` (mlp_in -> mlp_out)."""
    id_pattern: str
    """Shape of its SAE ids."""
    format: str
    """``"gemma-scope"`` (``params.npz``) or ``"gemma-scope-2"`` (``params.safetensors``)."""
    neuronpedia_model: str
    """Neuronpedia's name for the model (``"gemma-2-2b"``)."""


# Gemma Scope repos "google/gemma-scope-{suite}" (SAELens pretrained_saes.yaml, FACTS.md).
_GS1_SUITES = ("2b-pt-res 2b-pt-mlp 2b-pt-att 2b-pt-transcoders "
               "9b-pt-res 9b-pt-mlp 9b-pt-att 9b-it-res 27b-pt-res")  # fmt: skip
_GS1_KINDS = {"res": "resid_post", "mlp": "mlp_out", "att": "attn_out", "transcoders": "transcoder"}
_GS1_ID = re.compile(r"layer_(\d+)/width_(\d+[km]?)/(?:average_l0_(\d+)|canonical)")
# The 2B transcoders' L0s that Neuronpedia shows (and circuit-tracer's "gemma" set uses), by
# layer; their canonical pick is this, not the L0 closest to 100 (SAELens pretrained_saes.yaml).
_TRANSCODER_L0 = [int(k) for k in "76 65 49 54 88 87 95 70 52 72 88 5 6 8 8 8 10 12 13 12 11 13 "
                   "15 25 37 41".split()]  # fmt: skip
# Ties in |L0 - 100| go to the lower L0, except where Neuronpedia's canonical took the higher.
_CANONICAL_TIES = {("gemma-scope-9b-pt-att", "layer_27/width_16k"): 136}

_GS2_SIZES = ("270m", "1b", "4b", "12b", "27b")
_GS2_KINDS = ("resid_post", "attn_out", "mlp_out", "transcoder")
_GS2_PATTERN = (
    "{resid_post|attn_out|mlp_out|transcoder}[_all]/layer_{L}_width_{W}_l0_{small|"
    "medium|big}[_affine], or clt/width_{W}_l0_{small|medium|big}[_affine]"
)
_GS2_ID = re.compile(
    r"(resid_post|attn_out|mlp_out|transcoder)(_all)?/layer_(\d+)_width_(\d+[km]?)"
    r"_l0_(small|medium|big)(_seed_\d+)?(_affine)?"
)
_CLT_ID = re.compile(r"clt/width_(\d+[km]?)_l0_(small|medium|big)(_affine)?")
_CLT_FIRST_FILE = "params_layer_0.safetensors"
# Layers of the wide sweeps (the folders without ``_all``): 25/50/65/85% depth.
_GS2_DEPTH_LAYERS = {"270m": (5, 9, 12, 15), "1b": (7, 13, 17, 22), "4b": (9, 17, 22, 29),
                     "12b": (12, 24, 31, 41), "27b": (16, 31, 40, 53)}  # fmt: skip
# Neuronpedia sources that exist (SAELens pretrained_saes.yaml, Neuronpedia's graph server):
# resid_post/..._l0_medium per suite and width, transcoder_all/..._l0_small_affine per suite.
_GS2_NP_RES = dict.fromkeys(["270m-pt", "1b-pt", "4b-pt", "12b-pt", "27b-it"], "16k 65k 262k 1m")
_GS2_NP_RES |= dict.fromkeys(["270m-it", "1b-it", "4b-it"], "16k 65k 262k")
_GS2_NP_TRANSCODER = {"4b-it": "16k", "27b-it": "262k"}

_N_LAYERS = {"gemma-2-2b": 26, "gemma-2-9b": 42, "gemma-2-27b": 46, "gemma-3-270m": 18,
             "gemma-3-1b": 26, "gemma-3-4b": 34, "gemma-3-12b": 48, "gemma-3-27b": 62}  # fmt: skip
_WEIGHT_FILES = ("params.safetensors", "params.npz", "sae_weights.safetensors", _CLT_FIRST_FILE)


def _build_releases() -> dict[str, ReleaseInfo]:
    out = {}
    for suite in _GS1_SUITES.split():
        size, variant, kind = suite.split("-")
        model, stem = f"gemma-2-{size}" + ("-it" if variant == "it" else ""), f"gemma-scope-{suite}"
        for name, ids in ((stem, "average_l0_{K}"), (stem + "-canonical", "canonical")):
            pattern = f"layer_{{L}}/width_{{16k|65k|...}}/{ids}"
            kinds = (_GS1_KINDS[kind],)
            out[name] = ReleaseInfo(
                name, f"google/{stem}", f"google/{model}", kinds, pattern, "gemma-scope", model
            )
    for size in _GS2_SIZES:
        for variant in ("pt", "it"):
            name = f"gemma-scope-2-{size}-{variant}"
            np_model = f"gemma-3-{size}" + ("-it" if variant == "it" else "")
            # Gemma 3 270M's base model is "google/gemma-3-270m"; the other base models end in -pt.
            model = np_model if (size, variant) == ("270m", "pt") else f"gemma-3-{size}-{variant}"
            args = (_GS2_KINDS, _GS2_PATTERN, "gemma-scope-2", np_model)
            out[name] = ReleaseInfo(name, f"google/{name}", f"google/{model}", *args)
    return out


_RELEASES = _build_releases()


def list_releases() -> list[ReleaseInfo]:
    """Every released suite :func:`load_sae` knows, Gemma Scope first.

    >>> [r.name for r in list_releases() if r.model_name == "google/gemma-3-270m"]
    ['gemma-scope-2-270m-pt']
    """
    return list(_RELEASES.values())


class _Spec(NamedTuple):
    """Where one released SAE lives and what it reads and writes."""

    folder: str
    weights: str
    site_in: str
    site_out: str
    width: int | None
    neuronpedia_id: str | None


def load_sae(
    release: str | os.PathLike,
    sae_id: str,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> JumpReLUSAE | CrossLayerTranscoder:
    """Load one SAE or transcoder of a released suite, or of a local folder in the same layout.

    Args:
        release: a name from :func:`list_releases` (or its repo id), or a local folder.
        sae_id: its id in the release, e.g. ``"layer_20/width_16k/average_l0_71"`` (Gemma Scope),
            ``"layer_20/width_16k/canonical"``, ``"resid_post_all/layer_12_width_16k_l0_small"``
            (Gemma Scope 2); ``"clt/width_262k_l0_medium_affine"`` gives a
            :class:`gsnb.CrossLayerTranscoder` over all layers.
        device: default CUDA, then MPS, then CPU (as :func:`gsnb.load_model`).
        dtype: default the file's float32.

    The SAE knows its sites (``sae.site_in``, ``sae.site_out``), ``model_name``, ``release``,
    ``sae_id`` and, where Neuronpedia hosts it, ``sae.cfg.neuronpedia_id``.

    >>> sae = load_sae("gemma-scope-2-270m-pt", "resid_post_all/layer_12_width_16k_l0_small")
    >>> sae.site_in
    'resid_post.12'
    """
    from gsnb.core.model import default_device

    folder = _local_folder(release)
    if folder is not None:
        sae = _load_local(folder, sae_id)
    else:
        info = _release(str(release))
        if sae_id.startswith("clt/"):
            return _load_clt(info, sae_id).to(device=device or default_device(), dtype=dtype)
        spec = _resolve(info, sae_id)
        weights = _fetch(info, f"{spec.folder}/{spec.weights}", sae_id)
        if info.format == "gemma-scope-2":
            _fetch(info, f"{spec.folder}/config.json", sae_id, optional=True)
        sae = JumpReLUSAE.load(
            weights,
            model_name=info.model_name,
            site_in=spec.site_in,
            site_out=spec.site_out,
            release=info.name,
            sae_id=sae_id,
            neuronpedia_id=spec.neuronpedia_id,
        )
        if spec.width is not None and sae.d_sae != spec.width:
            raise ValueError(
                f"{weights} has {sae.d_sae} features but its id {sae_id!r} says {spec.width}: "
                "the cached file is damaged or mixed up; delete it and download it again"
            )
    return sae.to(device=device or default_device(), dtype=dtype)


def list_sae_ids(release: str | os.PathLike) -> list[str]:
    """The SAE ids of a release: from the Hub, or offline from the local hub cache; or those in a
    local folder. ``-canonical`` releases list their canonical ids."""
    folder = _local_folder(release)
    if folder is not None:
        return sorted(
            str(p.parent.relative_to(folder).as_posix())
            for name in _WEIGHT_FILES
            for p in folder.rglob(name)
        )
    info = _release(str(release))
    return _release_ids(info, _repo_ids(info))


# --- resolution ------------------------------------------------------------------------------


def _release(name: str) -> ReleaseInfo:
    info = _RELEASES.get(name) or next((r for r in _RELEASES.values() if r.repo == name), None)
    if info is None:
        close = difflib.get_close_matches(name, list(_RELEASES), n=5)
        raise ValueError(
            f"unknown release {name!r} (and no folder of that name exists)."
            + (f" Close matches: {', '.join(close)}." if close else "")
            + " gsnb.list_releases() lists them all; a local folder of SAEs works too."
        )
    return info


def _local_folder(release: str | os.PathLike) -> Path | None:
    if not isinstance(release, os.PathLike) and release in _RELEASES:
        return None
    path = Path(release).expanduser()
    return path if path.is_dir() else None


def _resolve(info: ReleaseInfo, sae_id: str) -> _Spec:
    stem = info.repo.removeprefix("google/")
    if sae_id.split("/")[0] == "crosscoder":
        raise NotImplementedError(
            f"{sae_id!r} is a crosscoder (one dictionary over several residual streams), which "
            "gsnb does not load; per-layer SAEs, transcoders and clt/... ids it does"
        )
    if info.format == "gemma-scope":
        if sae_id.startswith("embedding/"):
            raise NotImplementedError(
                f"{sae_id!r}: Gemma Scope's embedding SAEs are not supported, because which scale "
                "of the token embeddings they were trained on is unverified. If you know it, load "
                "the file with JumpReLUSAE.load(path, site_in='embed')"
            )
        match = _GS1_ID.fullmatch(sae_id)
        if match is None:
            raise _unknown_id(info, sae_id)
        layer, width, l0 = int(match.group(1)), match.group(2), match.group(3)
        _check_layer(info, sae_id, layer)
        kind, np_id = info.kinds[0], None
        transcoder_set = kind == "transcoder" and width == "16k"
        if transcoder_set:
            canonical = _TRANSCODER_L0[layer]
        else:
            # An explicit L0 gets Neuronpedia's id if a listing at hand shows it is canonical; a
            # slow network listing just for a link is not worth it.
            files = _repo_files(info.repo, online=l0 is None)
            canonical = _canonical_l0(stem, layer, width, _repo_ids(info, files), l0 is None)
        l0 = int(l0) if l0 is not None else canonical
        if l0 == canonical and (kind != "transcoder" or transcoder_set):
            np_set = "transcoder" if kind == "transcoder" else info.repo.rsplit("-", 1)[1]
            np_id = f"{info.neuronpedia_model}/{layer}-gemmascope-{np_set}-{width}"
        folder = f"layer_{layer}/width_{width}/average_l0_{l0}"
        return _Spec(folder, "params.npz", *_sites(kind, layer), _width(width), np_id)
    match = _GS2_ID.fullmatch(sae_id)
    if match is None:
        raise _unknown_id(info, sae_id)
    kind, all_layers, layer, width, l0, seed, affine = match.groups()
    layer = int(layer)
    _check_layer(info, sae_id, layer)
    size, variant = stem.removeprefix("gemma-scope-2-").split("-")
    if not all_layers and layer not in _GS2_DEPTH_LAYERS[size]:
        raise ValueError(
            f"{info.name} has no {kind}/layer_{layer}_...: the {kind} folder holds layers "
            f"{_GS2_DEPTH_LAYERS[size]}; use {kind}_all/layer_{layer}_... for every layer"
        )
    np_id = None
    suite = f"{size}-{variant}"
    if kind == "resid_post" and not all_layers and l0 == "medium" and not (seed or affine):
        if width in _GS2_NP_RES.get(suite, "").split():
            np_id = f"{info.neuronpedia_model}/{layer}-gemmascope-2-res-{width}"
    elif kind == "transcoder" and all_layers and l0 == "small" and affine:
        if width == _GS2_NP_TRANSCODER.get(suite):
            np_id = f"{info.neuronpedia_model}/{layer}-gemmascope-2-transcoder-{width}"
    return _Spec(sae_id, "params.safetensors", *_sites(kind, layer), _width(width), np_id)


def _load_clt(info: ReleaseInfo, sae_id: str) -> CrossLayerTranscoder:
    """A Gemma Scope 2 cross-layer transcoder: one file per layer of the model."""
    if info.format != "gemma-scope-2" or _CLT_ID.fullmatch(sae_id) is None:
        raise _unknown_id(info, sae_id)
    n_layers = _N_LAYERS[info.neuronpedia_model.removesuffix("-it")]
    first = _fetch(info, f"{sae_id}/{_CLT_FIRST_FILE}", sae_id)
    for layer in range(1, n_layers):
        _fetch(info, f"{sae_id}/params_layer_{layer}.safetensors", sae_id)
    _fetch(info, f"{sae_id}/config.json", sae_id, optional=True)
    clt = CrossLayerTranscoder.load(
        Path(first).parent, model_name=info.model_name, release=info.name, sae_id=sae_id
    )
    if clt.n_layers != n_layers:
        raise ValueError(
            f"{Path(first).parent} holds {clt.n_layers} layer files but {info.model_name} has "
            f"{n_layers} layers: the cached folder is damaged or mixed up; delete it and "
            "download it again"
        )
    return clt


def _sites(kind: str, layer: int) -> tuple[str, str]:
    if kind == "transcoder":
        return f"mlp_in.{layer}", f"mlp_out.{layer}"
    return f"{kind}.{layer}", f"{kind}.{layer}"


def _width(label: str) -> int | None:
    """Features a width label stands for: Gemma Scope's labels truncate powers of two
    (``"16k"`` = 16384, ``"65k"`` = 65536, ``"262k"`` = 262144, ``"1m"`` = 2**20); ``"48"`` = 48."""
    scale = {"k": 1000, "m": 1000**2}.get(label[-1], 1)
    if scale == 1:
        return int(label)
    return next((1 << n for n in range(64) if (1 << n) // scale == int(label[:-1])), None)


def _check_layer(info: ReleaseInfo, sae_id: str, layer: int) -> None:
    n_layers = _N_LAYERS[info.neuronpedia_model.removesuffix("-it")]
    if layer >= n_layers:
        raise ValueError(
            f"{sae_id!r}: {info.model_name} has layers 0..{n_layers - 1}, not {layer}; "
            f"ids look like {info.id_pattern!r}"
        )


def _canonical_l0(
    stem: str | None, layer: int, width: str, ids: list[str], required: bool = True
) -> int | None:
    """The average L0 closest to 100 among ``ids`` at this layer and width (lower on ties)."""
    if (stem, f"layer_{layer}/width_{width}") in _CANONICAL_TIES:
        return _CANONICAL_TIES[(stem, f"layer_{layer}/width_{width}")]
    pattern = re.compile(rf"layer_{layer}/width_{width}/average_l0_(\d+)")
    l0s = [int(m.group(1)) for i in ids if (m := pattern.fullmatch(i))]
    if not l0s and required:
        raise FileNotFoundError(
            f"cannot resolve layer_{layer}/width_{width}/canonical: no file listing shows a "
            f"layer_{layer}/width_{width}/average_l0_* (the Hub is unreachable or HF_HUB_OFFLINE "
            f"is set, and the local cache {_cache_dir()} has none). Run once online, or pass an "
            "explicit id such as layer_20/width_16k/average_l0_71"
        )
    return min(l0s, key=lambda k: (abs(k - 100), k)) if l0s else None


def _repo_ids(info: ReleaseInfo, files: list[str] | None = None) -> list[str]:
    """SAE ids present in a repo (explicit L0s for Gemma Scope), from its file listing."""
    files = _repo_files(info.repo) if files is None else files
    gs1 = info.format == "gemma-scope"
    weights, pattern = ("params.npz", _GS1_ID) if gs1 else ("params.safetensors", _GS2_ID)
    folders = [f.rsplit("/", 1)[0] for f in files if f.endswith("/" + weights)]
    clts = [] if gs1 else [f.rsplit("/", 1)[0] for f in files if f.endswith("/" + _CLT_FIRST_FILE)]
    return sorted(
        [i for i in folders if pattern.fullmatch(i)] + [i for i in clts if _CLT_ID.fullmatch(i)]
    )


def _release_ids(info: ReleaseInfo, ids: list[str]) -> list[str]:
    if info.name.endswith("-canonical"):
        return sorted({i.rsplit("/", 1)[0] + "/canonical" for i in ids})
    return ids


def _unknown_id(info: ReleaseInfo, sae_id: str, known: list[str] | None = None) -> ValueError:
    known = known if known is not None else _release_ids(info, _repo_ids(info))
    close = difflib.get_close_matches(sae_id, known or _example_ids(info, sae_id), n=5, cutoff=0.6)
    return ValueError(
        f"unknown sae_id {sae_id!r} for {info.name}."
        + (f" Close matches: {', '.join(close)}." if close else "")
        + f" Ids look like {info.id_pattern!r}; list_sae_ids({info.name!r}) lists them."
    )


def _example_ids(info: ReleaseInfo, sae_id: str) -> list[str]:
    """Ids that follow the naming pattern, for suggestions when no file listing is at hand."""
    layers = [int(x) for x in re.findall(r"layer_(\d+)", sae_id)[:1]]
    layers = layers or range(_N_LAYERS[info.neuronpedia_model.removesuffix("-it")])
    if info.format == "gemma-scope":
        return [f"layer_{n}/width_{w}/canonical" for n in layers for w in ("16k", "65k", "131k")]
    depth = _GS2_DEPTH_LAYERS[info.name.split("-")[3]]
    ids = [f"{k}_all/layer_{n}_width_{w}_l0_{l0}" for k in _GS2_KINDS for n in layers
           for w in ("16k", "262k") for l0 in ("small", "big")]  # fmt: skip
    ids += [f"{k}/layer_{n}_width_{w}_l0_{l0}" for k in _GS2_KINDS for n in layers if n in depth
            for w in ("16k", "65k", "262k") for l0 in ("small", "medium", "big")]  # fmt: skip
    clts = [f"clt/width_{w}_l0_{l0}" for w in ("262k", "524k") for l0 in ("medium", "big")]
    return ids + [i + "_affine" for i in ids + clts if i.startswith(("transcoder", "clt"))] + clts


# --- files -----------------------------------------------------------------------------------


def _offline() -> bool:
    from huggingface_hub import constants

    # huggingface_hub reads HF_HUB_OFFLINE once at import; reading it here as well lets a notebook
    # (or a test) switch offline mode on after importing.
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    return env or bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _cache_dir() -> str:
    from huggingface_hub import constants

    # Same precedence as huggingface_hub, but read at call time (it reads the variables at import).
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return constants.HF_HUB_CACHE


def _fetch(info: ReleaseInfo, filename: str, sae_id: str, optional: bool = False) -> str | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        return hf_hub_download(
            info.repo, filename, cache_dir=_cache_dir(), local_files_only=_offline()
        )
    except LocalEntryNotFoundError as err:
        if optional:
            return None
        cached = _release_ids(info, _repo_ids(info, _cached_files(info.repo)))
        close = difflib.get_close_matches(sae_id, cached, n=5, cutoff=0.6)
        why = "HF_HUB_OFFLINE is set" if _offline() else "the Hub could not be reached"
        raise FileNotFoundError(
            f"{info.repo}/{filename} is not in the local Hugging Face cache ({_cache_dir()}) and "
            f"{why}: run once online (HF_HUB_OFFLINE=0, set before Python starts) to download it, "
            "or pass a local folder as the release."
            + (f" Cached ids close to it: {', '.join(close)}." if close else "")
        ) from err
    except EntryNotFoundError as err:
        if optional:
            return None
        raise _unknown_id(info, sae_id) from err
    except RepositoryNotFoundError as err:
        raise OSError(
            f"could not open {info.repo} on the Hub: if it is gated, accept its licence on "
            f"huggingface.co and run `hf auth login`. Cause: {err}"
        ) from err


_LISTED: dict[str, list[str]] = {}  # repo -> its files as listed online, once per process


def _repo_files(repo: str, online: bool = True) -> list[str]:
    """Files of a hub repo: listed online (if ``online``), else those in the local hub cache."""
    if repo in _LISTED:
        return _LISTED[repo]
    if online and not _offline():
        from huggingface_hub import list_repo_files

        try:
            _LISTED[repo] = list_repo_files(repo)
            return _LISTED[repo]
        except Exception:  # no network, gated, rate limited: the cache is the next best answer
            pass
    return _cached_files(repo)


def _cached_files(repo: str) -> list[str]:
    """Files of ``repo`` in the local hub cache, at the revision ``main`` points to."""
    root = Path(_cache_dir()) / ("models--" + repo.replace("/", "--"))
    ref = root / "refs" / "main"
    if ref.is_file():
        snapshots = [root / "snapshots" / ref.read_text().strip()]
    else:
        snapshots = sorted((root / "snapshots").glob("*"))
    # is_file() follows the snapshot's symlinks, so blobs that were never fetched drop out.
    return sorted(
        {p.relative_to(s).as_posix() for s in snapshots for p in s.rglob("*") if p.is_file()}
    )


def _load_local(root: Path, sae_id: str) -> JumpReLUSAE | CrossLayerTranscoder:
    ids = list_sae_ids(root)
    folder = sae_id
    match = _GS1_ID.fullmatch(sae_id)
    if match and match.group(3) is None:  # a canonical id over a Gemma Scope layout
        layer, width = int(match.group(1)), match.group(2)
        l0 = _canonical_l0(None, layer, width, ids, required=False)
        folder = f"layer_{layer}/width_{width}/average_l0_{l0}"
    if folder not in ids:
        close = difflib.get_close_matches(sae_id, ids, n=5, cutoff=0.6)
        raise ValueError(
            f"no SAE {sae_id!r} in {root}."
            + (f" Close matches: {', '.join(close)}." if close else "")
            + f" It holds {len(ids)} SAE folders; list_sae_ids({str(root)!r}) lists them."
        )
    if (root / folder / _CLT_FIRST_FILE).is_file():
        return CrossLayerTranscoder.load(root / folder, release=str(root), sae_id=sae_id)
    return JumpReLUSAE.load(root / folder, release=str(root), sae_id=sae_id)
