"""JumpReLUSAE: one class for SAEs, transcoders and skip transcoders, in Gemma Scope's formats.

Encode ``f = ReLU(pre) * (pre > threshold)`` with ``pre = x @ W_enc + b_enc``; decode
``x_hat = f @ W_dec + b_dec`` (plus ``x @ W_skip`` for a skip transcoder). An SAE reads and writes
one site; a transcoder reads ``mlp_in.L`` and writes ``mlp_out.L``.

On disk (see :meth:`JumpReLUSAE.load`):

* Gemma Scope 2: ``params.safetensors`` with ``w_enc, w_dec, b_enc, b_dec, threshold`` (and
  ``affine_skip_connection``), ``config.json`` beside it or facts taken from the folder name.
  gsnb saves in this layout, adding its own keys to ``config.json``.
* Gemma Scope: ``params.npz`` with ``W_enc, W_dec, b_enc, b_dec, threshold``.
* SAELens: ``cfg.json`` + ``sae_weights.safetensors`` (written by ``save(path, format="saelens")``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from gsnb.core.files import atomic_write
from gsnb.core.sites import KINDS, Site, parse_site

_GS2_KEYS = {
    "w_enc": "W_enc",
    "w_dec": "W_dec",
    "b_enc": "b_enc",
    "b_dec": "b_dec",
    "threshold": "threshold",
    "affine_skip_connection": "W_skip",
}
_REQUIRED = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
# Gemma Scope 2 folder names (``resid_post_all`` and friends) -> (input kind, output kind).
_FOLDER_KINDS = {
    "resid_post": ("resid_post", "resid_post"),
    "attn_out": ("attn_out", "attn_out"),
    "mlp_out": ("mlp_out", "mlp_out"),
    "transcoder": ("mlp_in", "mlp_out"),
}
_GS2_NAME = re.compile(r"layer_(\d+)_width_(\d+)([km]?)_l0_(\w+?)(_affine)?$")


@dataclass
class SAEConfig:
    """What an SAE is: its sizes and where in which model it reads and writes."""

    d_in: int
    """Width of the input site."""
    d_sae: int
    """Number of features (dictionary width)."""
    d_out: int | None = None
    """Width of the output site; ``None`` means ``d_in``."""
    model_name: str | None = None
    """Model the SAE was trained on (``"gemma-3-270m-q4km"``, ``"google/gemma-2-2b"``)."""
    site_in: str | None = None
    """Site the SAE reads (``"resid_post.3"``; ``"mlp_in.3"`` for a transcoder)."""
    site_out: str | None = None
    """Site the SAE writes; ``None`` means ``site_in``."""
    skip: bool = False
    """Has an affine skip connection ``W_skip [d_in, d_out]`` (skip transcoders)."""
    l0_target: float | None = None
    """Target or measured average L0 (``l0_small``'s value when known)."""
    input_scale: float = 1.0
    """Scalar the inputs were multiplied by during training, already folded into the weights."""
    release: str | None = None
    """Released suite it came from, if any (``"gemma-scope-2-270m-pt"``)."""
    sae_id: str | None = None
    """Its id inside that release (``"resid_post_all/layer_12_width_16k_l0_small"``)."""
    neuronpedia_id: str | None = None
    """Neuronpedia model/source id for links to feature pages, when it has one."""

    def __post_init__(self):
        self.d_out = self.d_out or self.d_in
        self.site_out = self.site_out or self.site_in
        for site in (self.site_in, self.site_out):
            if site is not None:
                parse_site(site)

    @property
    def is_transcoder(self) -> bool:
        return self.site_in is not None and self.site_in != self.site_out


class JumpReLUSAE(nn.Module):
    """A JumpReLU sparse autoencoder or transcoder.

    Parameters: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_out]``,
    ``b_dec [d_out]``, ``threshold [d_sae]`` and, for skip transcoders, ``W_skip [d_in, d_out]``.

    >>> sae = JumpReLUSAE(SAEConfig(d_in=640, d_sae=4096, site_in="resid_post.6"))
    >>> x_hat = sae(x)   # x: [..., 640]
    """

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        d_in, d_sae, d_out = cfg.d_in, cfg.d_sae, cfg.d_out
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_out))
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        self.threshold = nn.Parameter(torch.zeros(d_sae))
        self.W_skip = nn.Parameter(torch.zeros(d_in, d_out)) if cfg.skip else None

    def __repr__(self) -> str:
        kind = "skip transcoder" if self.cfg.skip else "transcoder" if self.is_transcoder else "SAE"
        where = (
            self.cfg.site_in
            if not self.is_transcoder
            else f"{self.cfg.site_in}->{self.cfg.site_out}"
        )
        return f"JumpReLUSAE({kind}, {where}, d_in={self.cfg.d_in}, d_sae={self.cfg.d_sae})"

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def is_transcoder(self) -> bool:
        return self.cfg.is_transcoder

    @property
    def site_in(self) -> str | None:
        return self.cfg.site_in

    @property
    def site_out(self) -> str | None:
        return self.cfg.site_out

    # --- maths -------------------------------------------------------------------------------

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W_enc + b_enc``: ``[..., d_in] -> [..., d_sae]``."""
        return x.to(self.W_enc.dtype) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations ``[..., d_in] -> [..., d_sae]`` (zero below the threshold)."""
        pre = self.pre_activations(x)
        return pre * (pre > self.threshold) * (pre > 0)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction without the skip path: ``[..., d_sae] -> [..., d_out]``."""
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x))`` plus ``x @ W_skip`` for skip transcoders: ``[..., d_out]``."""
        out = self.decode(self.encode(x))
        if self.W_skip is not None:
            out = out + x.to(self.W_skip.dtype) @ self.W_skip
        return out

    @torch.no_grad()
    def top_features(self, x: torch.Tensor, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` most active features per position: ``(values, indices)``, each ``[..., k]``."""
        return self.encode(x).topk(min(k, self.d_sae), dim=-1)

    # --- checks --------------------------------------------------------------------------------

    def check_model(self, model) -> None:
        """Raise if this SAE cannot be used on ``model`` (other model or width, missing site)."""
        for site, width in ((self.site_in, self.cfg.d_in), (self.site_out, self.cfg.d_out)):
            if site is None:
                raise ValueError(f"{self!r} does not know its site; set sae.cfg.site_in")
            model.parse_site(site)
            if model.site_width(site) != width:
                raise ValueError(
                    f"{self!r} expects width {width} at {site} but {model.name} has "
                    f"{model.site_width(site)} there: it was trained on another model "
                    f"({self.cfg.model_name})"
                )

    # --- files ---------------------------------------------------------------------------------

    def state_for_save(self) -> dict[str, torch.Tensor]:
        names = [*_REQUIRED, *(["W_skip"] if self.W_skip is not None else [])]
        return {name: getattr(self, name).detach().contiguous().cpu() for name in names}

    def save(self, path: str | os.PathLike, format: str = "gemma-scope-2") -> Path:
        """Write the SAE to the folder ``path``; files are replaced atomically.

        ``format="gemma-scope-2"`` writes ``params.safetensors`` + ``config.json``;
        ``format="saelens"`` writes ``sae_weights.safetensors`` + ``cfg.json`` that SAELens loads
        with ``SAE.load_from_disk(path)``.
        """
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        state = self.state_for_save()
        if format == "gemma-scope-2":
            reverse = {v: k for k, v in _GS2_KEYS.items()}
            tensors = {reverse[k]: v for k, v in state.items()}
            files = ("params.safetensors", "config.json", self._gs2_config())
        elif format == "saelens":
            tensors = dict(state)
            if "W_skip" in tensors:
                # SAELens stores W_skip as [d_out, d_in] and adds x @ W_skip.T.
                tensors["W_skip"] = tensors["W_skip"].T.contiguous()
            files = ("sae_weights.safetensors", "cfg.json", self._saelens_config())
        else:
            raise ValueError(f"unknown format {format!r}: use 'gemma-scope-2' or 'saelens'")
        weights_name, config_name, config = files
        atomic_write(folder / weights_name, lambda p: save_file(tensors, p))
        atomic_write(
            folder / config_name, lambda p: Path(p).write_text(json.dumps(config, indent=2))
        )
        return folder

    def _gs2_config(self) -> dict:
        site_in, site_out = self.site_in, self.site_out
        return {
            "width": self.cfg.d_sae,
            "model_name": self.cfg.model_name,
            "architecture": "jump_relu",
            "l0": self.cfg.l0_target,
            "affine_connection": self.cfg.skip,
            "type": "transcoder" if self.is_transcoder else "sae",
            "hf_hook_point_in": parse_site(site_in).hf_hook_point if site_in else None,
            "hf_hook_point_out": parse_site(site_out).hf_hook_point if site_out else None,
            "gsnb": asdict(self.cfg),
        }

    def _saelens_config(self) -> dict:
        hook = _transformer_lens_hook(self.site_in) if self.site_in else None
        architecture = "jumprelu"
        if self.is_transcoder or self.cfg.skip:
            architecture = "jumprelu_skip_transcoder" if self.cfg.skip else "jumprelu_transcoder"
        config = {
            "architecture": architecture,
            "d_in": self.cfg.d_in,
            "d_sae": self.cfg.d_sae,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": False,
            "normalize_activations": "none",
            "reshape_activations": "hook_z" if hook and hook.endswith("hook_z") else "none",
            "metadata": {
                # SAELens reads cfg.json in its v6 layout (this one) only when the version is >= 6.
                "sae_lens_version": "6.0.0",
                "model_name": self.cfg.model_name,
                "hook_name": hook,
                "hook_head_index": None,
                "prepend_bos": True,
                "context_size": None,
                "dataset_path": None,
                "sae_lens_training_version": None,
            },
        }
        if architecture != "jumprelu":
            config["d_out"] = self.cfg.d_out
            out = _transformer_lens_hook(self.site_out) if self.site_out else None
            config["metadata"].update(hook_name_out=out, hook_head_index_out=None)
        return config

    @classmethod
    def load(cls, path: str | os.PathLike, **overrides) -> JumpReLUSAE:
        """Load an SAE from a folder or weights file in any supported format.

        ``overrides`` set :class:`SAEConfig` fields the files do not carry (``site_in=``,
        ``model_name=``, ...). Shapes are checked against each other and the config; NaNs and
        pickles are refused.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no SAE at {path}: pass a folder or a params file")
        folder = path if path.is_dir() else path.parent
        for weights_name, reader in (
            ("params.safetensors", _read_gs2),
            ("sae_weights.safetensors", _read_saelens),
            ("params.npz", _read_npz),
        ):
            weights = (
                path if path.is_file() and path.name == weights_name else folder / weights_name
            )
            if weights.is_file() and (path.is_dir() or path == weights):
                tensors, facts = reader(weights)
                break
        else:
            raise FileNotFoundError(
                f"{path} holds no params.safetensors, params.npz or sae_weights.safetensors"
            )
        missing = [k for k in _REQUIRED if k not in tensors]
        if missing:
            raise ValueError(f"{weights} lacks arrays {missing}; found {sorted(tensors)}")
        facts.update({k: v for k, v in overrides.items() if v is not None})
        d_in, d_sae = tensors["W_enc"].shape
        cfg = SAEConfig(
            d_in=d_in,
            d_sae=d_sae,
            d_out=tensors["W_dec"].shape[1],
            skip="W_skip" in tensors,
            **{
                k: v
                for k, v in facts.items()
                if k in _CFG_FIELDS and k not in ("d_in", "d_sae", "d_out", "skip")
            },
        )
        _check_shapes(tensors, cfg, facts.get("width"), weights)
        sae = cls(cfg)
        with torch.no_grad():
            for name, value in tensors.items():
                getattr(sae, name).copy_(value)
        return sae


_CFG_FIELDS = {f.name for f in fields(SAEConfig)}


def _check_shapes(tensors: dict, cfg: SAEConfig, width: int | None, source: Path) -> None:
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
    if width is not None and int(width) != d_sae:
        raise ValueError(
            f"{source}: config says width {width} but the weights have {d_sae} features"
        )


def _read_gs2(weights: Path) -> tuple[dict, dict]:
    raw = load_file(str(weights))
    unknown = set(raw) - set(_GS2_KEYS)
    if unknown:
        raise ValueError(f"{weights}: unexpected arrays {sorted(unknown)} for a Gemma Scope 2 file")
    tensors = {_GS2_KEYS[k]: v.float() for k, v in raw.items()}
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


def _read_npz(weights: Path) -> tuple[dict, dict]:
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
            tensors[_NPZ_ALIASES.get(key, key)] = torch.from_numpy(array.astype(np.float32))
    facts = {}
    match = re.search(r"average_l0_(\d+)", str(weights))
    if match:
        facts["l0_target"] = float(match.group(1))
    return tensors, facts


def _read_saelens(weights: Path) -> tuple[dict, dict]:
    tensors = {k: v.float() for k, v in load_file(str(weights)).items()}
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
        # (x - b_dec) @ W_enc + b_enc == x @ W_enc + (b_enc - b_dec @ W_enc)
        tensors["b_enc"] = tensors["b_enc"] - tensors["b_dec"] @ tensors["W_enc"]
    meta = config.get("metadata", config)
    facts = {"model_name": meta.get("model_name"), "width": config.get("d_sae")}
    for key, field in (("hook_name", "site_in"), ("hook_name_out", "site_out")):
        site = _site_from_transformer_lens_hook(meta.get(key))
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
    if folder in _FOLDER_KINDS:
        kind_in, kind_out = _FOLDER_KINDS[folder]
        facts.update(site_in=f"{kind_in}.{layer}", site_out=f"{kind_out}.{layer}")
    return facts


def _site_from_hf_hook(hook: str | None) -> str | None:
    if not hook:
        return None
    # Gemma Scope 2 writes "model.layers.3.output", "model.layers.3.self_attn.o_proj.input", ...;
    # the bare module path is accepted too, meaning the end each site reads.
    match = re.fullmatch(r"(?:model\.)?(?:language_model\.)?(layers\.(\d+)(?:\.\w+)*)", hook)
    if not match:
        return None
    for kind in KINDS:
        module, end = Site(kind, int(match.group(2))).hook_point
        if match.group(1) in (module, f"{module}.{end}"):
            return f"{kind}.{match.group(2)}"
    return None


_TL_HOOKS = {
    "resid_post": "hook_resid_post",
    "attn_out": "attn.hook_z",
    "mlp_in": "ln2.hook_normalized",
    "mlp_out": "hook_mlp_out",
}


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
