"""What the SAE ids of a release are: their patterns, what one resolves to (folder, weights file,
sites, width, Neuronpedia id; :class:`Spec`), which ids a release has, and the errors that
suggest close ones. :mod:`gsnb.saes.releases` fetches and loads what these name.
"""

from __future__ import annotations

import difflib
import re
from typing import NamedTuple

from gsnb.core.hub import repo_files
from gsnb.core.sites import transcoder_sites
from gsnb.saes.release_table import (
    CANONICAL_L0,
    GS2_DEPTH_LAYERS,
    GS2_KINDS,
    GS2_NP_RES,
    GS2_NP_TRANSCODER,
    N_LAYERS,
    ReleaseInfo,
    canonical_l0s,
)
from gsnb.saes.sae_files import parse_width

GS1_ID = re.compile(r"layer_(\d+)/width_(\d+[km]?)/(?:average_l0_(\d+)|canonical)")
GS2_ID = re.compile(
    r"(resid_post|attn_out|mlp_out|transcoder)(_all)?/layer_(\d+)_width_(\d+[km]?)"
    r"_l0_(small|medium|big)(_seed_\d+)?(_affine)?"
)
CLT_ID = re.compile(r"clt/width_(\d+[km]?)_l0_(small|medium|big)(_affine)?")
CLT_FIRST_FILE = "params_layer_0.safetensors"


# --- resolution ------------------------------------------------------------------------------


class Spec(NamedTuple):
    """Where one released SAE lives and what it reads and writes."""

    folder: str
    weights: str
    site_in: str
    site_out: str
    width: int
    neuronpedia_id: str | None


def resolve(info: ReleaseInfo, sae_id: str) -> Spec:
    if sae_id.split("/")[0] == "crosscoder":
        raise NotImplementedError(
            f"{sae_id!r} is a crosscoder (one dictionary over several residual streams), which "
            "gsnb does not load; per-layer SAEs, transcoders and clt/... ids it does"
        )
    if info.format == "gemma-scope":
        return _resolve_gemma_scope(info, sae_id)
    match = GS2_ID.fullmatch(sae_id)
    if match is None:
        raise unknown_id(info, sae_id)
    kind, all_layers, layer, width, l0, seed, affine = match.groups()
    layer = int(layer)
    check_layer(info, sae_id, layer)
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
    sites = _kind_sites(info, kind, layer)
    return Spec(sae_id, "params.safetensors", *sites, _id_width(info, sae_id, width), np_id)


def _resolve_gemma_scope(info: ReleaseInfo, sae_id: str) -> Spec:
    """A Gemma Scope id: an explicit ``average_l0_K``, or ``canonical`` from SAELens' table."""
    if sae_id.startswith("embedding/"):
        raise NotImplementedError(
            f"{sae_id!r}: Gemma Scope's embedding SAEs are not supported, because which scale "
            "of the token embeddings they were trained on is unverified. If you know it, load "
            "the file with JumpReLUSAE.load(path, site_in='embed')"
        )
    match = GS1_ID.fullmatch(sae_id)
    if match is None:
        raise unknown_id(info, sae_id)
    layer, width, l0 = int(match.group(1)), match.group(2), match.group(3)
    check_layer(info, sae_id, layer)
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
    sites = _kind_sites(info, kind, layer)
    return Spec(folder, "params.npz", *sites, _id_width(info, sae_id, width), np_id)


def _kind_sites(info: ReleaseInfo, kind: str, layer: int) -> tuple[str, str]:
    if kind == "transcoder":
        return transcoder_sites(layer, reads=info.transcoder_input)
    return f"{kind}.{layer}", f"{kind}.{layer}"


def _id_width(info: ReleaseInfo, sae_id: str, label: str) -> int:
    try:
        return parse_width(label)
    except ValueError:
        raise unknown_id(info, sae_id) from None


def check_layer(info: ReleaseInfo, sae_id: str, layer: int) -> None:
    n_layers = N_LAYERS[info.neuronpedia_model.removesuffix("-it")]
    if layer >= n_layers:
        raise ValueError(
            f"{sae_id!r}: {info.model_name} has layers 0..{n_layers - 1}, not {layer}; "
            f"ids look like {info.id_pattern!r}"
        )


def closest_l0(layer: int, width: str, ids: list[str]) -> int | None:
    """For a local folder in Gemma Scope's layout: the average L0 closest to 100 among ``ids``
    at this layer and width (lower on ties)."""
    pattern = re.compile(rf"layer_{layer}/width_{width}/average_l0_(\d+)")
    l0s = [int(m.group(1)) for i in ids if (m := pattern.fullmatch(i))]
    return min(l0s, key=lambda k: (abs(k - 100), k)) if l0s else None


def relabelled(sae_id: str, ids: list[str]) -> str | None:
    """The one id among ``ids`` that is the Gemma Scope 2 id ``sae_id`` but for its L0 label,
    if exactly one is (``..._l0_big`` for ``..._l0_small``)."""
    asked = GS2_ID.fullmatch(sae_id)
    if asked is None:
        return None
    before, after = sae_id[: asked.start(5)], sae_id[asked.end(5) :]
    others = [
        i
        for i in ids
        if (m := GS2_ID.fullmatch(i)) and (i[: m.start(5)], i[m.end(5) :]) == (before, after)
    ]
    return others[0] if len(others) == 1 and others[0] != sae_id else None


def _repo_ids(info: ReleaseInfo, files: list[str] | None = None) -> list[str]:
    """SAE ids present in a repo (explicit L0s for Gemma Scope), from its file listing."""
    files = repo_files(info.repo) if files is None else files
    gs1 = info.format == "gemma-scope"
    weights, pattern = ("params.npz", GS1_ID) if gs1 else ("params.safetensors", GS2_ID)
    folders = [f.rsplit("/", 1)[0] for f in files if f.endswith("/" + weights)]
    clts = [] if gs1 else [f.rsplit("/", 1)[0] for f in files if f.endswith("/" + CLT_FIRST_FILE)]
    return sorted(
        [i for i in folders if pattern.fullmatch(i)] + [i for i in clts if CLT_ID.fullmatch(i)]
    )


def release_ids(info: ReleaseInfo, files: list[str] | None = None) -> list[str]:
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


def unknown_id(info: ReleaseInfo, sae_id: str) -> ValueError:
    known = release_ids(info)
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
