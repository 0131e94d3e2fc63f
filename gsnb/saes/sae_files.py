"""The file formats of :class:`gsnb.JumpReLUSAE`: reading, writing and checking them.

* Gemma Scope 2: ``params.safetensors`` with ``w_enc, w_dec, b_enc, b_dec, threshold`` (and
  ``affine_skip_connection``), ``config.json`` beside it or facts taken from the folder name.
  gsnb saves in this layout, adding its own keys to ``config.json``.
* Gemma Scope: ``params.npz`` with ``W_enc, W_dec, b_enc, b_dec, threshold``.
* SAELens: ``cfg.json`` + ``sae_weights.safetensors`` (written by ``save(path, format="saelens")``).

Readers return ``(tensors, facts)``: arrays under gsnb's names (``W_enc`` ...) and what the files
say about the SAE (its sites, model, width, L0), for :meth:`gsnb.JumpReLUSAE.load` to combine.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from gsnb.core.files import atomic_write
from gsnb.core.sites import ALL_KINDS, Site, parse_site, transcoder_sites
from gsnb.core.tensor_files import read_tensor

_GS2_KEYS = {
    "w_enc": "W_enc",
    "w_dec": "W_dec",
    "b_enc": "b_enc",
    "b_dec": "b_dec",
    "threshold": "threshold",
    "affine_skip_connection": "W_skip",
}
REQUIRED = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
# Gemma Scope 2 folder names (``resid_post_all`` and friends) -> their kind of SAE.
_FOLDER_KINDS = ("resid_post", "attn_out", "mlp_out", "transcoder")
_GS2_NAME = re.compile(r"layer_(\d+)_width_(\d+)([km]?)_l0_(\w+?)(_affine)?$")


def write(sae, path: str | Path, format: str) -> Path:
    """Write ``sae`` to the folder ``path`` in ``format``; files are replaced atomically."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    state = sae.state_for_save()
    if format == "gemma-scope-2":
        reverse = {v: k for k, v in _GS2_KEYS.items()}
        tensors = {reverse[k]: v for k, v in state.items()}
        files = ("params.safetensors", "config.json", gs2_config(sae))
    elif format == "saelens":
        tensors = dict(state)
        if "W_skip" in tensors:
            # SAELens stores W_skip as [d_out, d_in] and adds x @ W_skip.T.
            tensors["W_skip"] = tensors["W_skip"].T.contiguous()
        files = ("sae_weights.safetensors", "cfg.json", saelens_config(sae))
    else:
        raise ValueError(f"unknown format {format!r}: use 'gemma-scope-2' or 'saelens'")
    weights_name, config_name, config = files
    atomic_write(folder / weights_name, lambda p: save_file(tensors, p))
    atomic_write(folder / config_name, lambda p: Path(p).write_text(json.dumps(config, indent=2)))
    return folder


def gs2_config(sae) -> dict:
    """Gemma Scope 2's ``config.json`` keys, and gsnb's own config under ``"gsnb"``."""
    site_in, site_out = sae.site_in, sae.site_out
    return {
        "width": sae.cfg.d_sae,
        "model_name": sae.cfg.model_name,
        "architecture": "jump_relu",
        "l0": sae.cfg.l0_target,
        "affine_connection": sae.cfg.skip,
        "type": "transcoder" if sae.is_transcoder else "sae",
        "hf_hook_point_in": parse_site(site_in).hf_hook_point if site_in else None,
        "hf_hook_point_out": parse_site(site_out).hf_hook_point if site_out else None,
        "gsnb": asdict(sae.cfg),
    }


def saelens_config(sae) -> dict:
    """SAELens' ``cfg.json`` (its v6 layout) for ``sae``."""
    hook = _transformer_lens_hook(sae.site_in) if sae.site_in else None
    architecture = "jumprelu"
    if sae.is_transcoder or sae.cfg.skip:
        architecture = "jumprelu_skip_transcoder" if sae.cfg.skip else "jumprelu_transcoder"
    config = {
        "architecture": architecture,
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "hook_z" if hook and hook.endswith("hook_z") else "none",
        "metadata": {
            # SAELens reads cfg.json in its v6 layout (this one) only when the version is >= 6.
            "sae_lens_version": "6.0.0",
            "model_name": sae.cfg.model_name,
            "hook_name": hook,
            "hf_hook_name": _hf_hook(sae.site_in),
            "hook_head_index": None,
            "prepend_bos": True,
            "context_size": None,
            "dataset_path": None,
            "sae_lens_training_version": None,
        },
    }
    if architecture != "jumprelu":
        config["d_out"] = sae.cfg.d_out
        out = _transformer_lens_hook(sae.site_out) if sae.site_out else None
        config["metadata"].update(
            hook_name_out=out,
            hf_hook_name_out=_hf_hook(sae.site_out),
            hook_head_index_out=None,
        )
    return config


def read(
    path: Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[dict, dict, Path]:
    """``(tensors, facts, weights file)`` of the SAE at ``path`` (a folder or a weights file),
    the tensors in ``dtype`` on ``device``.

    safetensors files are read slice by slice straight into the result
    (:func:`gsnb.core.tensor_files.read_tensor`), so a load to bfloat16 never holds a float32
    copy of the file or of one of its tensors."""
    convert = Convert(dtype, torch.device(device))
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no SAE at {path}: pass a folder or a params file")
    folder = path if path.is_dir() else path.parent
    for weights_name, reader in (
        ("params.safetensors", _read_gs2),
        ("sae_weights.safetensors", _read_saelens),
        ("params.npz", _read_npz),
    ):
        weights = path if path.is_file() and path.name == weights_name else folder / weights_name
        if weights.is_file() and (path.is_dir() or path == weights):
            tensors, facts = reader(weights, convert)
            break
    else:
        raise FileNotFoundError(
            f"{path} holds no params.safetensors, params.npz or sae_weights.safetensors"
        )
    missing = [k for k in REQUIRED if k not in tensors]
    if missing:
        raise ValueError(f"{weights} lacks arrays {missing}; found {sorted(tensors)}")
    return tensors, facts, weights


def parse_width(width: int | str) -> int:
    """Features a width stands for: an int, or a label as in Gemma Scope's paths and configs,
    which truncate powers of two (``"16k"`` = 16384, ``"65k"`` = 65536, ``"262k"`` = 262144,
    ``"1m"`` = 2**20); a plain number (``"48"``) is itself.

    >>> parse_width("16k"), parse_width(16384)
    (16384, 16384)
    """
    if isinstance(width, int) and not isinstance(width, bool):
        return width
    match = re.fullmatch(r"(\d+)([km]?)", str(width).strip().lower())
    if match is None:
        raise ValueError(f"width {width!r} is not a number or a label like '16k' or '1m'")
    number, unit = int(match.group(1)), match.group(2)
    if not unit:
        return number
    scale = 1000 if unit == "k" else 1000**2
    for n in range(64):
        if (1 << n) // scale == number:
            return 1 << n
    raise ValueError(
        f"width label {width!r} names no power of two (labels such as '16k' = 16384 truncate one)"
    )


def check_shapes(tensors: dict, cfg, width: int | str | None, source: Path) -> None:
    """Refuse arrays of the wrong shape (against ``cfg``'s sizes), NaNs, and a ``width``
    (from a config, an int or a label) that disagrees with the weights."""
    d_in, d_sae, d_out = cfg.d_in, cfg.d_sae, cfg.d_out
    expected = {
        "W_enc": (d_in, d_sae),
        "W_dec": (d_sae, d_out),
        "b_enc": (d_sae,),
        "b_dec": (d_out,),
        "threshold": (d_sae,),
        "W_skip": (d_in, d_out),
    }
    for name, tensor in tensors.items():
        if name not in expected:
            raise ValueError(
                f"{source}: unexpected array {name!r}; a JumpReLU SAE file holds "
                f"{', '.join(expected)} only. Convert the file or drop that array"
            )
        if tuple(tensor.shape) != expected[name]:
            raise ValueError(
                f"{source}: {name} has shape {tuple(tensor.shape)} but W_enc {d_in}x{d_sae} and "
                f"W_dec {d_sae}x{d_out} imply {expected[name]}; the file is damaged or mixed up"
            )
        if not torch.isfinite(tensor).all():
            raise ValueError(
                f"{source}: {name} holds NaN or infinite values; re-download or retrain it"
            )
    if width is not None and parse_width(width) != d_sae:
        raise ValueError(
            f"{source}: config says width {width} but the weights have {d_sae} features"
        )


class Convert(NamedTuple):
    """Where and in which dtype a reader puts the tensors it reads."""

    dtype: torch.dtype
    device: torch.device

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(device=self.device, dtype=self.dtype)


def _read_safetensors(weights: Path, convert: Convert) -> dict[str, torch.Tensor]:
    with safe_open(str(weights), framework="pt") as f:
        return {key: read_tensor(f, key, weights, *convert) for key in f.keys()}


def _read_gs2(weights: Path, convert: Convert) -> tuple[dict, dict]:
    with safe_open(str(weights), framework="pt") as f:
        unknown = set(f.keys()) - set(_GS2_KEYS)
    if unknown:
        raise ValueError(f"{weights}: unexpected arrays {sorted(unknown)} for a Gemma Scope 2 file")
    tensors = {_GS2_KEYS[k]: v for k, v in _read_safetensors(weights, convert).items()}
    facts = _facts_from_path(weights)
    config_path = weights.parent / "config.json"
    if config_path.exists():
        config = json.loads(config_path.read_text())
        facts.update({k: v for k, v in config.get("gsnb", {}).items() if v is not None})
        if config.get("width") is not None:
            facts["width"] = config["width"]
        if config.get("model_name") and "model_name" not in facts:
            facts["model_name"] = config["model_name"]
        for key, field in (("hf_hook_point_in", "site_in"), ("hf_hook_point_out", "site_out")):
            site = _site_from_hf_hook(config.get(key))
            if site and field not in config.get("gsnb", {}):
                facts[field] = site
        if isinstance(config.get("l0"), (int, float)) and "l0_target" not in facts:
            facts["l0_target"] = float(config["l0"])
    return tensors, facts


_NPZ_ALIASES = {"w_enc": "W_enc", "w_dec": "W_dec"}


def _read_npz(weights: Path, convert: Convert) -> tuple[dict, dict]:
    tensors = {}
    with np.load(weights, allow_pickle=False) as arrays:
        for key in arrays.files:
            try:
                array = arrays[key]
            except ValueError as err:  # numpy refuses object arrays when pickles are off
                raise ValueError(
                    f"{weights}: array {key!r} holds pickled objects, which gsnb never loads; "
                    "re-save the file with plain float arrays"
                ) from err
            if array.dtype.kind != "f":
                raise ValueError(f"{weights}: array {key!r} has dtype {array.dtype}, not floats")
            tensors[_NPZ_ALIASES.get(key, key)] = convert(torch.from_numpy(array))
    facts = {}
    match = re.search(r"average_l0_(\d+)", str(weights))
    if match:
        facts["l0_target"] = float(match.group(1))
    return tensors, facts


def _read_saelens(weights: Path, convert: Convert) -> tuple[dict, dict]:
    tensors = _read_safetensors(weights, convert)
    config_path = weights.parent / "cfg.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{weights} has no cfg.json beside it; SAELens folders need both")
    config = json.loads(config_path.read_text())
    architecture = config.get("architecture", "standard")
    if architecture not in ("jumprelu", "jumprelu_transcoder", "jumprelu_skip_transcoder"):
        raise ValueError(f"{weights}: SAELens architecture {architecture!r} is not a JumpReLU SAE")
    if config.get("normalize_activations", "none") not in ("none", None):
        raise ValueError(
            f"{weights}: normalize_activations={config['normalize_activations']!r} rescales inputs "
            "at run time, which JumpReLUSAE does not; fold the scale into W_enc and b_dec first"
        )
    if "W_skip" in tensors:
        tensors["W_skip"] = tensors["W_skip"].T.contiguous()  # SAELens: [d_out, d_in]
    if config.get("apply_b_dec_to_input") and {"W_enc", "b_enc", "b_dec"} <= set(tensors):
        # (x - b_dec) @ W_enc + b_enc == x @ W_enc + (b_enc - b_dec @ W_enc), in float32
        fold = tensors["b_dec"].float() @ tensors["W_enc"].float()
        tensors["b_enc"] = (tensors["b_enc"].float() - fold).to(tensors["b_enc"].dtype)
    meta = config.get("metadata", config)
    facts = {"model_name": meta.get("model_name"), "width": config.get("d_sae")}
    for suffix, field in (("", "site_in"), ("_out", "site_out")):
        # The Hugging Face hook point is exact where given; TransformerLens' name otherwise.
        site = _site_from_hf_hook(meta.get(f"hf_hook_name{suffix}"))
        site = site or _site_from_transformer_lens_hook(meta.get(f"hook_name{suffix}"))
        if site:
            facts[field] = site
    return tensors, facts


def _facts_from_path(weights: Path) -> dict:
    """Site and L0 from a Gemma Scope 2 path like ``resid_post_all/layer_12_width_16k_l0_small``."""
    match = _GS2_NAME.match(weights.parent.name)
    if not match:
        return {}
    layer = int(match.group(1))
    folder = weights.parent.parent.name.removesuffix("_all")
    facts: dict = {}
    if folder == "transcoder":  # Gemma Scope 2's transcoders read the norm's gained output
        facts["site_in"], facts["site_out"] = transcoder_sites(layer, reads="mlp_in")
    elif folder in _FOLDER_KINDS:
        facts["site_in"] = facts["site_out"] = f"{folder}.{layer}"
    return facts


def _site_from_hf_hook(hook: str | None) -> str | None:
    if not hook:
        return None
    # Gemma Scope 2 writes "model.layers.3.output", "model.layers.3.self_attn.o_proj.input", ...;
    # the bare module path is accepted too, meaning its input or output as each site reads it
    # (never the normalised value, which gsnb names "...pre_feedforward_layernorm.normalized").
    match = re.fullmatch(r"(?:model\.)?(?:language_model\.)?(layers\.(\d+)(?:\.\w+)*)", hook)
    if not match:
        return None
    for kind in ALL_KINDS:
        module, end = Site(kind, int(match.group(2))).hook_point
        bare = (module,) if end != "normalized" else ()
        if match.group(1) in (*bare, f"{module}.{end}"):
            return f"{kind}.{match.group(2)}"
    return None


# TransformerLens hook names in SAELens configs. ``ln2.hook_normalized`` is x / rms(x), before
# the gain (SAELens' Gemma Scope transcoders); SAELens names the gained norm output that Gemma
# Scope 2's transcoders read ``hook_mlp_in`` and gives the exact point in ``hf_hook_name``.
_TL_HOOKS = {
    "resid_post": "hook_resid_post",
    "attn_out": "attn.hook_z",
    "mlp_normalized": "ln2.hook_normalized",
    "mlp_in": "hook_mlp_in",
    "mlp_out": "hook_mlp_out",
}


def _hf_hook(site: str | None) -> str | None:
    """A site's Hugging Face hook point, or None where it has none (``mlp_normalized``)."""
    if site is None or parse_site(site).hook_point[1] == "normalized":
        return None
    return parse_site(site).hf_hook_point


def _transformer_lens_hook(site: str) -> str:
    parsed = parse_site(site)
    if parsed.layer is None:
        return "hook_embed"
    return f"blocks.{parsed.layer}.{_TL_HOOKS[parsed.kind]}"


def _site_from_transformer_lens_hook(hook: str | None) -> str | None:
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", hook or "")
    if not match:
        return None
    kind = {v: k for k, v in _TL_HOOKS.items()}.get(match.group(2))
    return f"{kind}.{match.group(1)}" if kind else None
