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
  (there ``layer_L/width_W/canonical`` picks the average L0 closest to 100, and a Gemma Scope 2
  id whose L0 label is not there loads, with a warning, the one SAE that differs only in it).

Files come through ``huggingface_hub.hf_hub_download``, so its cache, tokens and
``HF_HUB_OFFLINE`` apply as usual.
"""

from __future__ import annotations

import difflib
import os
import warnings
from pathlib import Path

import torch

from gsnb.core.hub import cache_dir, cached_files, offline
from gsnb.saes.clt import CrossLayerTranscoder
from gsnb.saes.release_ids import (
    CLT_FIRST_FILE,
    CLT_ID,
    GS1_ID,
    GS2_ID,
    closest_l0,
    relabelled,
    release_ids,
    resolve,
    unknown_id,
)
from gsnb.saes.release_table import N_LAYERS, Alias, ReleaseInfo, build_aliases, build_releases
from gsnb.saes.sae import JumpReLUSAE

__all__ = ["ReleaseInfo", "list_releases", "list_sae_ids", "load_sae"]


_RELEASES = build_releases()
_ALIASES = build_aliases()
_WEIGHT_FILES = ("params.safetensors", "params.npz", "sae_weights.safetensors", CLT_FIRST_FILE)


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
    lazy: bool = True,
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
        dtype: default float32. Each tensor is converted as it is read, straight onto
            ``device``: loading in bfloat16 never makes a float32 copy.
        lazy: cross-layer transcoders only: leave the decoders (most of a CLT's bytes) in their
            files and read the rows tracing needs on demand (``False`` loads them all).

    The SAE knows its sites (``sae.site_in``, ``sae.site_out``), ``model_name``, ``release``,
    ``sae_id`` (gsnb's names, also when loaded by SAELens' names) and, where Neuronpedia hosts
    it, ``sae.cfg.neuronpedia_id``.

    >>> sae = load_sae("gemma-scope-2-270m-pt", "resid_post_all/layer_12_width_16k_l0_small")
    >>> sae.site_in
    'resid_post.12'
    """
    from gsnb.core.model import default_device

    where = {"device": device or default_device(), "dtype": dtype or torch.float32}
    folder = _local_folder(release)
    if folder is not None:
        return _load_local(folder, sae_id, where, lazy)
    info, alias = _release(str(release))
    if alias is not None:
        sae_id = _from_alias(alias, info, sae_id)
    if sae_id.startswith("clt/"):
        return _load_clt(info, sae_id, where, lazy)
    spec = resolve(info, sae_id)
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
        **where,
    )
    if sae.d_sae != spec.width:
        raise ValueError(
            f"{weights} has {sae.d_sae} features but its id {sae_id!r} says {spec.width}: "
            "the cached file is damaged or mixed up; delete it and download it again"
        )
    return sae


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
    ids = release_ids(info)
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
    if GS2_ID.fullmatch(gsnb_id) is None:
        known = _to_alias(alias, release_ids(info))
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


def _load_clt(info: ReleaseInfo, sae_id: str, where: dict, lazy: bool) -> CrossLayerTranscoder:
    """A Gemma Scope 2 cross-layer transcoder: one file per layer of the model."""
    if info.format != "gemma-scope-2" or CLT_ID.fullmatch(sae_id) is None:
        raise unknown_id(info, sae_id)
    n_layers = N_LAYERS[info.neuronpedia_model.removesuffix("-it")]
    first = _fetch(info, f"{sae_id}/{CLT_FIRST_FILE}", sae_id)
    for layer in range(1, n_layers):
        _fetch(info, f"{sae_id}/params_layer_{layer}.safetensors", sae_id)
    _fetch(info, f"{sae_id}/config.json", sae_id, optional=True)
    clt = CrossLayerTranscoder.load(
        Path(first).parent,
        lazy=lazy,
        model_name=info.model_name,
        release=info.name,
        sae_id=sae_id,
        **where,
    )
    if clt.n_layers != n_layers:
        raise ValueError(
            f"{Path(first).parent} holds {clt.n_layers} layer files but {info.model_name} has "
            f"{n_layers} layers: the cached folder is damaged or mixed up; delete it and "
            "download it again"
        )
    return clt


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
        cached = release_ids(info, cached_files(info.repo))
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
        raise unknown_id(info, sae_id) from err
    except RepositoryNotFoundError as err:
        raise OSError(
            f"could not open {info.repo} on the Hub: if it is gated, accept its licence on "
            f"huggingface.co and run `hf auth login`. Cause: {err}"
        ) from err


def _load_local(
    root: Path, sae_id: str, where: dict, lazy: bool
) -> JumpReLUSAE | CrossLayerTranscoder:
    ids = list_sae_ids(root)
    folder = sae_id
    match = GS1_ID.fullmatch(sae_id)
    if match and match.group(3) is None:  # a canonical id over a Gemma Scope layout
        layer, width = int(match.group(1)), match.group(2)
        l0 = closest_l0(layer, width, ids)
        folder = f"layer_{layer}/width_{width}/average_l0_{l0}"
    if folder not in ids and (other := relabelled(sae_id, ids)) is not None:
        # The L0 label is the part of an id people guess: suites gsnb trains are labelled by
        # the L0 they reached, which a notebook written before training cannot know.
        warnings.warn(
            f"{root} has no {sae_id!r}; loading {other!r}, its one SAE of that kind, layer and "
            f"width (its label is the L0 it reached). Ask for {other!r} to silence this",
            stacklevel=3,
        )
        folder = sae_id = other
    if folder not in ids:
        close = difflib.get_close_matches(sae_id, ids, n=5, cutoff=0.6)
        raise ValueError(
            f"no SAE {sae_id!r} in {root}."
            + (f" Close matches: {', '.join(close)}." if close else "")
            + f" It holds {len(ids)} SAE folders; list_sae_ids({str(root)!r}) lists them."
        )
    if (root / folder / CLT_FIRST_FILE).is_file():
        return CrossLayerTranscoder.load(
            root / folder, lazy=lazy, release=str(root), sae_id=sae_id, **where
        )
    return JumpReLUSAE.load(root / folder, release=str(root), sae_id=sae_id, **where)
