"""Released suites (Gemma Scope for Gemma 2, Gemma Scope 2 for Gemma 3) and :func:`load_sae`.

A release names a Hugging Face repo and an SAE id names a folder in it:

* Gemma Scope: ``load_sae("gemma-scope-2b-pt-res", "layer_20/width_16k/average_l0_71")`` reads
  ``google/gemma-scope-2b-pt-res`` / ``layer_20/width_16k/average_l0_71/params.npz``. The id
  ``layer_20/width_16k/canonical`` (the ``-canonical`` releases) is the file SAELens' canonical
  release and Neuronpedia use, from :data:`gsnb.saes.release_table.CANONICAL_L0`; gsnb has exactly
  their canonical ids and invents none. Its transcoders read ``mlp_normalized.L``.
* Gemma Scope 2: ``load_sae("gemma-scope-2-270m-pt", "resid_post_all/layer_12_width_16k_l0_small")``
  reads ``params.safetensors`` (and ``config.json`` when the repo has one) from that folder of
  ``google/gemma-scope-2-270m-pt``. SAELens' names work too:
  ``load_sae("gemma-scope-2-270m-pt-res-all", "layer_12_width_16k_l0_small")`` is the same SAE.
  Cross-layer transcoders: ``load_sae("gemma-scope-2-270m-pt", "clt/width_262k_l0_medium_affine")``
  reads ``params_layer_{L}.safetensors`` for every layer and returns a
  :class:`gsnb.CrossLayerTranscoder`.
* A local folder in either layout, such as a suite gsnb trained and saved, works as a release
  (there ``layer_L/width_W/canonical`` picks the average L0 closest to 100).

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

from gsnb.core.hub import cache_dir, cached_files, offline, repo_files
from gsnb.core.sites import transcoder_sites
from gsnb.saes.clt import CrossLayerTranscoder
from gsnb.saes.release_table import (
    CANONICAL_L0,
    GS2_DEPTH_LAYERS,
    GS2_KINDS,
    GS2_NP_RES,
    GS2_NP_TRANSCODER,
    N_LAYERS,
    Alias,
    ReleaseInfo,
    build_aliases,
    build_releases,
    canonical_l0s,
)
from gsnb.saes.sae import JumpReLUSAE
from gsnb.saes.sae_files import parse_width

__all__ = ["ReleaseInfo", "list_releases", "list_sae_ids", "load_sae"]


_RELEASES = build_releases()
_ALIASES = build_aliases()
_GS1_ID = re.compile(r"layer_(\d+)/width_(\d+[km]?)/(?:average_l0_(\d+)|canonical)")
_GS2_ID = re.compile(
    r"(resid_post|attn_out|mlp_out|transcoder)(_all)?/layer_(\d+)_width_(\d+[km]?)"
    r"_l0_(small|medium|big)(_seed_\d+)?(_affine)?"
)
_CLT_ID = re.compile(r"clt/width_(\d+[km]?)_l0_(small|medium|big)(_affine)?")
_CLT_FIRST_FILE = "params_layer_0.safetensors"
_WEIGHT_FILES = ("params.safetensors", "params.npz", "sae_weights.safetensors", _CLT_FIRST_FILE)


def list_releases() -> list[ReleaseInfo]:
    """Every released suite :func:`load_sae` knows, Gemma Scope first. SAELens' names for Gemma
    Scope 2's folders (``"gemma-scope-2-270m-pt-res-all"``) work too, as aliases of these.

    >>> [r.name for r in list_releases() if r.model_name == "google/gemma-3-270m"]
    ['gemma-scope-2-270m-pt']
    """
    return list(_RELEASES.values())


def load_sae(
    release: str | os.PathLike,
    sae_id: str,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> JumpReLUSAE | CrossLayerTranscoder:
    """Load one SAE or transcoder of a released suite, or of a local folder in the same layout.

    Args:
        release: a name from :func:`list_releases` (or its repo id), SAELens' name for a Gemma
            Scope 2 folder (``"gemma-scope-2-270m-pt-res-all"``), or a local folder.
        sae_id: its id in the release, e.g. ``"layer_20/width_16k/average_l0_71"`` (Gemma Scope),
            ``"layer_20/width_16k/canonical"``, ``"resid_post_all/layer_12_width_16k_l0_small"``
            (Gemma Scope 2), ``"layer_12_width_16k_l0_small"`` (SAELens' names);
            ``"clt/width_262k_l0_medium_affine"`` gives a :class:`gsnb.CrossLayerTranscoder`.
        device: default CUDA, then MPS, then CPU (as :func:`gsnb.load_model`).
        dtype: default the file's float32.

    The SAE knows its sites (``sae.site_in``, ``sae.site_out``), ``model_name``, ``release``,
    ``sae_id`` (gsnb's names, also when loaded by SAELens' names) and, where Neuronpedia hosts
    it, ``sae.cfg.neuronpedia_id``.

    >>> sae = load_sae("gemma-scope-2-270m-pt", "resid_post_all/layer_12_width_16k_l0_small")
    >>> sae.site_in
    'resid_post.12'
    """
    from gsnb.core.model import default_device

    folder = _local_folder(release)
    if folder is not None:
        sae = _load_local(folder, sae_id)
    else:
        info, alias = _release(str(release))
        if alias is not None:
            sae_id = _from_alias(alias, info, sae_id)
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
        if sae.d_sae != spec.width:
            raise ValueError(
                f"{weights} has {sae.d_sae} features but its id {sae_id!r} says {spec.width}: "
                "the cached file is damaged or mixed up; delete it and download it again"
            )
    return sae.to(device=device or default_device(), dtype=dtype)


def list_sae_ids(release: str | os.PathLike) -> list[str]:
    """The SAE ids of a release, in that release's naming: from the Hub, or offline from the
    local hub cache; or those in a local folder. ``-canonical`` releases list SAELens' canonical
    ids (no listing needed)."""
    folder = _local_folder(release)
    if folder is not None:
        return sorted(
            str(p.parent.relative_to(folder).as_posix())
            for name in _WEIGHT_FILES
            for p in folder.rglob(name)
        )
    info, alias = _release(str(release))
    ids = _release_ids(info)
    return ids if alias is None else _to_alias(alias, ids)


# --- names -----------------------------------------------------------------------------------


def _release(name: str) -> tuple[ReleaseInfo, Alias | None]:
    """The release ``name`` names (gsnb's name, its repo id, or SAELens' alias), and the alias."""
    info = _RELEASES.get(name) or next((r for r in _RELEASES.values() if r.repo == name), None)
    if info is not None:
        return info, None
    if name in _ALIASES:
        return _RELEASES[_ALIASES[name].release], _ALIASES[name]
    close = difflib.get_close_matches(name, [*_RELEASES, *_ALIASES], n=5)
    raise ValueError(
        f"unknown release {name!r} (and no folder of that name exists)."
        + (f" Close matches: {', '.join(close)}." if close else "")
        + " gsnb.list_releases() lists them all; SAELens' Gemma Scope 2 names "
        "(gemma-scope-2-270m-pt-res-all) and a local folder of SAEs work too."
    )


def _from_alias(alias: Alias, info: ReleaseInfo, sae_id: str) -> str:
    """gsnb's id for SAELens' id ``sae_id`` of ``alias`` (``layer_3_width_16k_l0_small`` ->
    ``resid_post_all/layer_3_width_16k_l0_small``); the prefix SAELens writes is optional."""
    gsnb_id = f"{alias.folder}/{sae_id.removeprefix(alias.id_prefix)}"
    if _GS2_ID.fullmatch(gsnb_id) is None:
        known = _to_alias(alias, _release_ids(info))
        close = difflib.get_close_matches(sae_id, known or [], n=5, cutoff=0.6)
        raise ValueError(
            f"unknown sae_id {sae_id!r} for {alias.name} (SAELens' name for {info.name}'s "
            f"{alias.folder} folder)."
            + (f" Close matches: {', '.join(close)}." if close else "")
            + f" Ids look like '{alias.id_prefix}layer_{{L}}_width_{{W}}_l0_{{small|medium|big}}"
            f"[_affine]'; list_sae_ids({alias.name!r}) lists them."
        )
    return gsnb_id


def _to_alias(alias: Alias, ids: list[str]) -> list[str]:
    """Those of gsnb's ``ids`` in the alias's folder, in SAELens' naming."""
    prefix = alias.folder + "/"
    return sorted(alias.id_prefix + i.removeprefix(prefix) for i in ids if i.startswith(prefix))


def _local_folder(release: str | os.PathLike) -> Path | None:
    if not isinstance(release, os.PathLike) and (release in _RELEASES or release in _ALIASES):
        return None
    path = Path(release).expanduser()
    return path if path.is_dir() else None


# --- resolution ------------------------------------------------------------------------------


class _Spec(NamedTuple):
    """Where one released SAE lives and what it reads and writes."""

    folder: str
    weights: str
    site_in: str
    site_out: str
    width: int
    neuronpedia_id: str | None


def _resolve(info: ReleaseInfo, sae_id: str) -> _Spec:
    if sae_id.split("/")[0] == "crosscoder":
        raise NotImplementedError(
            f"{sae_id!r} is a crosscoder (one dictionary over several residual streams), which "
            "gsnb does not load; per-layer SAEs, transcoders and clt/... ids it does"
        )
    if info.format == "gemma-scope":
        return _resolve_gemma_scope(info, sae_id)
    match = _GS2_ID.fullmatch(sae_id)
    if match is None:
        raise _unknown_id(info, sae_id)
    kind, all_layers, layer, width, l0, seed, affine = match.groups()
    layer = int(layer)
    _check_layer(info, sae_id, layer)
    size, variant = info.name.removeprefix("gemma-scope-2-").split("-")
    if not all_layers and layer not in GS2_DEPTH_LAYERS[size]:
        raise ValueError(
            f"{info.name} has no {kind}/layer_{layer}_...: the {kind} folder holds layers "
            f"{GS2_DEPTH_LAYERS[size]}; use {kind}_all/layer_{layer}_... for every layer"
        )
    np_id = None
    suite = f"{size}-{variant}"
    if kind == "resid_post" and not all_layers and l0 == "medium" and not (seed or affine):
        if width in GS2_NP_RES.get(suite, "").split():
            np_id = f"{info.neuronpedia_model}/{layer}-gemmascope-2-res-{width}"
    elif kind == "transcoder" and all_layers and l0 == "small" and affine:
        if width in GS2_NP_TRANSCODER.get(suite, "").split():
            np_id = f"{info.neuronpedia_model}/{layer}-gemmascope-2-transcoder-{width}"
    sites = _sites(info, kind, layer)
    return _Spec(sae_id, "params.safetensors", *sites, _id_width(info, sae_id, width), np_id)


def _resolve_gemma_scope(info: ReleaseInfo, sae_id: str) -> _Spec:
    """A Gemma Scope id: an explicit ``average_l0_K``, or ``canonical`` from SAELens' table."""
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
    stem = info.repo.removeprefix("google/gemma-scope-")
    canonical = canonical_l0s(stem, width).get(layer)
    if l0 is None and canonical is None:
        widths = [w for w in CANONICAL_L0.get(stem, {}) if layer in canonical_l0s(stem, w)]
        plain = info.name.removesuffix("-canonical")
        raise ValueError(
            f"{info.name} has no canonical SAE {sae_id!r}: SAELens and Neuronpedia have canonical "
            f"SAEs at layer {layer} for width {', '.join(widths) or 'none'} only, and gsnb "
            f"invents none. Pick one of those, or an explicit L0 (list_sae_ids({plain!r}) lists "
            f"the layer_{layer}/width_{width}/average_l0_* files the repo has)"
        )
    l0 = canonical if l0 is None else int(l0)
    kind, np_id = info.kinds[0], None
    if l0 == canonical:
        np_set = "transcoder" if kind == "transcoder" else info.repo.rsplit("-", 1)[1]
        np_id = f"{info.neuronpedia_model}/{layer}-gemmascope-{np_set}-{width}"
    folder = f"layer_{layer}/width_{width}/average_l0_{l0}"
    sites = _sites(info, kind, layer)
    return _Spec(folder, "params.npz", *sites, _id_width(info, sae_id, width), np_id)


def _load_clt(info: ReleaseInfo, sae_id: str) -> CrossLayerTranscoder:
    """A Gemma Scope 2 cross-layer transcoder: one file per layer of the model."""
    if info.format != "gemma-scope-2" or _CLT_ID.fullmatch(sae_id) is None:
        raise _unknown_id(info, sae_id)
    n_layers = N_LAYERS[info.neuronpedia_model.removesuffix("-it")]
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


def _sites(info: ReleaseInfo, kind: str, layer: int) -> tuple[str, str]:
    if kind == "transcoder":
        return transcoder_sites(layer, reads=info.transcoder_input)
    return f"{kind}.{layer}", f"{kind}.{layer}"


def _id_width(info: ReleaseInfo, sae_id: str, label: str) -> int:
    try:
        return parse_width(label)
    except ValueError:
        raise _unknown_id(info, sae_id) from None


def _check_layer(info: ReleaseInfo, sae_id: str, layer: int) -> None:
    n_layers = N_LAYERS[info.neuronpedia_model.removesuffix("-it")]
    if layer >= n_layers:
        raise ValueError(
            f"{sae_id!r}: {info.model_name} has layers 0..{n_layers - 1}, not {layer}; "
            f"ids look like {info.id_pattern!r}"
        )


def _closest_l0(layer: int, width: str, ids: list[str]) -> int | None:
    """For a local folder in Gemma Scope's layout: the average L0 closest to 100 among ``ids``
    at this layer and width (lower on ties)."""
    pattern = re.compile(rf"layer_{layer}/width_{width}/average_l0_(\d+)")
    l0s = [int(m.group(1)) for i in ids if (m := pattern.fullmatch(i))]
    return min(l0s, key=lambda k: (abs(k - 100), k)) if l0s else None


def _repo_ids(info: ReleaseInfo, files: list[str] | None = None) -> list[str]:
    """SAE ids present in a repo (explicit L0s for Gemma Scope), from its file listing."""
    files = repo_files(info.repo) if files is None else files
    gs1 = info.format == "gemma-scope"
    weights, pattern = ("params.npz", _GS1_ID) if gs1 else ("params.safetensors", _GS2_ID)
    folders = [f.rsplit("/", 1)[0] for f in files if f.endswith("/" + weights)]
    clts = [] if gs1 else [f.rsplit("/", 1)[0] for f in files if f.endswith("/" + _CLT_FIRST_FILE)]
    return sorted(
        [i for i in folders if pattern.fullmatch(i)] + [i for i in clts if _CLT_ID.fullmatch(i)]
    )


def _release_ids(info: ReleaseInfo, files: list[str] | None = None) -> list[str]:
    """A release's ids: SAELens' canonical table for ``-canonical`` releases, else the ids in
    the repo's file listing (``files``, or listed now)."""
    if info.name.endswith("-canonical"):
        return _canonical_ids(info)
    return _repo_ids(info, files)


def _canonical_ids(info: ReleaseInfo) -> list[str]:
    """Every canonical id of a Gemma Scope suite, from SAELens' table."""
    stem = info.repo.removeprefix("google/gemma-scope-")
    return sorted(
        f"layer_{layer}/width_{width}/canonical"
        for width in CANONICAL_L0.get(stem, {})
        for layer in canonical_l0s(stem, width)
    )


def _unknown_id(info: ReleaseInfo, sae_id: str) -> ValueError:
    known = _release_ids(info)
    close = difflib.get_close_matches(sae_id, known or _example_ids(info, sae_id), n=5, cutoff=0.6)
    return ValueError(
        f"unknown sae_id {sae_id!r} for {info.name}."
        + (f" Close matches: {', '.join(close)}." if close else "")
        + f" Ids look like {info.id_pattern!r}; list_sae_ids({info.name!r}) lists them."
    )


def _example_ids(info: ReleaseInfo, sae_id: str) -> list[str]:
    """Ids that follow the naming pattern, for suggestions when no file listing is at hand."""
    layers = [int(x) for x in re.findall(r"layer_(\d+)", sae_id)[:1]]
    layers = layers or range(N_LAYERS[info.neuronpedia_model.removesuffix("-it")])
    if info.format == "gemma-scope":
        return [i for i in _canonical_ids(info) if int(i.split("/")[0][6:]) in layers]
    depth = GS2_DEPTH_LAYERS[info.name.split("-")[3]]
    ids = [f"{k}_all/layer_{n}_width_{w}_l0_{l0}" for k in GS2_KINDS for n in layers
           for w in ("16k", "262k") for l0 in ("small", "big")]  # fmt: skip
    ids += [f"{k}/layer_{n}_width_{w}_l0_{l0}" for k in GS2_KINDS for n in layers if n in depth
            for w in ("16k", "65k", "262k") for l0 in ("small", "medium", "big")]  # fmt: skip
    clts = [f"clt/width_{w}_l0_{l0}" for w in ("262k", "524k") for l0 in ("medium", "big")]
    return ids + [i + "_affine" for i in ids + clts if i.startswith(("transcoder", "clt"))] + clts


# --- files -----------------------------------------------------------------------------------


def _fetch(info: ReleaseInfo, filename: str, sae_id: str, optional: bool = False) -> str | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        return hf_hub_download(
            info.repo, filename, cache_dir=cache_dir(), local_files_only=offline()
        )
    except LocalEntryNotFoundError as err:
        if optional:
            return None
        cached = _release_ids(info, cached_files(info.repo))
        close = difflib.get_close_matches(sae_id, cached, n=5, cutoff=0.6)
        why = "HF_HUB_OFFLINE is set" if offline() else "the Hub could not be reached"
        raise FileNotFoundError(
            f"{info.repo}/{filename} is not in the local Hugging Face cache ({cache_dir()}) and "
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


def _load_local(root: Path, sae_id: str) -> JumpReLUSAE | CrossLayerTranscoder:
    ids = list_sae_ids(root)
    folder = sae_id
    match = _GS1_ID.fullmatch(sae_id)
    if match and match.group(3) is None:  # a canonical id over a Gemma Scope layout
        layer, width = int(match.group(1)), match.group(2)
        l0 = _closest_l0(layer, width, ids)
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
