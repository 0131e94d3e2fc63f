"""JumpReLUSAE: one class for SAEs, transcoders and skip transcoders, in Gemma Scope's formats.

Encode ``f = ReLU(pre) * (pre > threshold)`` with ``pre = x @ W_enc + b_enc``; decode
``x_hat = f @ W_dec + b_dec`` (plus ``x @ W_skip`` for a skip transcoder). An SAE reads and writes
one site; a transcoder reads ``mlp_in.L`` (or ``mlp_normalized.L``, see :mod:`gsnb.core.sites`) and
writes ``mlp_out.L``. :meth:`JumpReLUSAE.check_model` is the one check that an SAE fits a model;
everything that runs an SAE on a model calls it.

On disk: Gemma Scope 2's, Gemma Scope's and SAELens' layouts (:mod:`gsnb.saes.sae_files`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn

from gsnb.core.sites import parse_site, target_name
from gsnb.saes import sae_files
from gsnb.saes.sae_files import parse_width

__all__ = ["JumpReLUSAE", "SAEConfig", "describe", "fit_error", "parse_width"]


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
        where = f"{self.cfg.site_in}->{self.cfg.site_out}" if self.is_transcoder else self.name
        return f"JumpReLUSAE({kind}, {where}, d_in={self.cfg.d_in}, d_sae={self.cfg.d_sae})"

    @property
    def name(self) -> str:
        """The one name gsnb gives this SAE everywhere (stats, evals, widgets, attribution):
        its site (``"resid_post.3"``), or ``"transcoder.3"`` for a transcoder (see
        :func:`gsnb.core.sites.target_name`)."""
        return target_name(self.cfg.site_in, self.cfg.site_out)

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

    # --- checks --------------------------------------------------------------------------------

    def check_model(self, model) -> None:
        """Raise ``ValueError`` unless this SAE fits ``model``: it knows its sites, the model has
        them, and their widths are ``d_in`` and ``d_out``.

        Every function that runs an SAE on a model (evaluate, splice, feature_stats, steering,
        attribution, trace) calls this one check; its message names the SAE, what it expects,
        what the model has, and the fix."""
        for role, site, width in (
            ("reads", self.site_in, self.cfg.d_in),
            ("writes", self.site_out, self.cfg.d_out),
        ):
            if site is None:
                raise ValueError(
                    f"{describe(self)} does not know its site: set sae.cfg.site_in (and "
                    "sae.cfg.site_out for a transcoder), e.g. 'resid_post.3'"
                )
            parsed = parse_site(site)
            if parsed.layer is not None and not 0 <= parsed.layer < model.n_layers:
                raise fit_error(
                    self,
                    model,
                    f"it {role} {site} but the model has layers 0..{model.n_layers - 1}",
                )
            found = model.site_width(parsed)
            if found != width:
                hint = ""
                if parsed.kind == "attn_out" and width == model.d_model:
                    hint = (
                        " (attn_out is o_proj's input, n_heads x head_dim wide; this SAE is "
                        "d_model wide, as if trained on o_proj's output)"
                    )
                raise fit_error(
                    self,
                    model,
                    f"it expects width {width} at {site} (the site it {role}) but the model has "
                    f"{found} there{hint}",
                )

    # --- files ---------------------------------------------------------------------------------

    def state_for_save(self) -> dict[str, torch.Tensor]:
        names = [*sae_files.REQUIRED, *(["W_skip"] if self.W_skip is not None else [])]
        return {name: getattr(self, name).detach().contiguous().cpu() for name in names}

    def save(self, path: str | os.PathLike, format: str = "gemma-scope-2") -> Path:
        """Write the SAE to the folder ``path``; files are replaced atomically.

        ``format="gemma-scope-2"`` writes ``params.safetensors`` + ``config.json``;
        ``format="saelens"`` writes ``sae_weights.safetensors`` + ``cfg.json`` that SAELens loads
        with ``SAE.load_from_disk(path)``.
        """
        return sae_files.write(self, path, format)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        **overrides,
    ) -> JumpReLUSAE:
        """Load an SAE from a folder or weights file in any supported format, straight into
        ``dtype`` on ``device``: each tensor is converted as it is read, so no float32 copy of a
        bfloat16 SAE is ever made and the parameters are allocated once.

        ``overrides`` set :class:`SAEConfig` fields the files do not carry (``site_in=``,
        ``model_name=``, ...). Shapes are checked against each other and the config; NaNs and
        pickles are refused.
        """
        tensors, facts, weights = sae_files.read(Path(path), dtype, device)
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
        sae_files.check_shapes(tensors, cfg, facts.get("width"), weights)
        with torch.device("meta"):  # shapes only: the read tensors become the parameters
            sae = cls(cfg)
        for name, value in tensors.items():
            setattr(sae, name, nn.Parameter(value))
        return sae


_CFG_FIELDS = {f.name for f in fields(SAEConfig)}


def describe(sae) -> str:
    """How errors name an SAE or CLT: its release and id when it has them, and its repr."""
    cfg = sae.cfg
    if cfg.release and cfg.sae_id:
        return f"{cfg.sae_id!r} of {cfg.release} ({sae!r})"
    return repr(sae)


def fit_error(sae, model, problem: str) -> ValueError:
    """The error for an SAE or CLT that does not fit ``model``: which one, ``problem`` (what it
    expects and what the model has), which model it was made for, and the fix."""
    made_for = sae.cfg.model_name
    if made_for and made_for != model.name:
        fix = (
            f"It was made for {made_for}: use it with that model (gsnb.load_model({made_for!r})), "
            f"or pick one made for {model.name}."
        )
    else:
        fix = f"Use one made for {model.name} (from a release for it, or gsnb.train_sae)."
    return ValueError(f"{describe(sae)} does not fit {model.name}: {problem}. {fix}")


def named(saes) -> dict[str, JumpReLUSAE]:
    """``{sae.name: sae}`` for one SAE or a sequence of them, in order.

    Raises:
        ValueError: two SAEs share a name (they read and write the same sites): pass one of them.
    """
    items = [saes] if isinstance(saes, JumpReLUSAE) else list(saes)
    out: dict[str, JumpReLUSAE] = {}
    for sae in items:
        if not isinstance(sae, JumpReLUSAE):
            raise TypeError(f"expected JumpReLUSAE objects, got {type(sae).__name__}")
        if sae.name in out:
            raise ValueError(
                f"two SAEs are both named {sae.name} (same sites): pass one SAE per site"
            )
        out[sae.name] = sae
    return out
