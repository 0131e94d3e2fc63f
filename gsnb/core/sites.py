"""Site names and where each one lives in a Gemma 2 / Gemma 3 decoder block.

A site string is ``"{kind}.{layer}"`` (``"resid_post.3"``) or ``"embed"``. The kinds follow
Gemma Scope 2's folder names:

=============  ===================================================  ==========================
kind           Hugging Face module and hook point                    width
=============  ===================================================  ==========================
``embed``      output of ``embed_tokens`` (already scaled)          d_model
``attn_out``   input of ``layers.L.self_attn.o_proj``               n_heads * head_dim
``mlp_in``     output of ``layers.L.pre_feedforward_layernorm``     d_model
``mlp_out``    output of ``layers.L.post_feedforward_layernorm``    d_model
``resid_post`` output of ``layers.L``                               d_model
=============  ===================================================  ==========================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

KINDS: tuple[str, ...] = ("resid_post", "attn_out", "mlp_in", "mlp_out")
"""Per-layer site kinds; ``embed`` is the one site without a layer."""

# Order in which the sites of one layer are computed during the forward pass.
_ORDER_IN_LAYER = {"attn_out": 0, "mlp_in": 1, "mlp_out": 2, "resid_post": 3}

# (module path relative to the decoder layer, which end of the module holds the value)
_HOOK_POINTS: dict[str, tuple[str, Literal["input", "output"]]] = {
    "resid_post": ("", "output"),
    "attn_out": ("self_attn.o_proj", "input"),
    "mlp_in": ("pre_feedforward_layernorm", "output"),
    "mlp_out": ("post_feedforward_layernorm", "output"),
}


@dataclass(frozen=True, order=False)
class Site:
    """A parsed site: a kind and a layer (``None`` for ``embed``)."""

    kind: str
    """One of ``KINDS`` or ``"embed"``."""
    layer: int | None
    """Decoder layer index, ``None`` for ``embed``."""

    def __str__(self) -> str:
        return self.kind if self.layer is None else f"{self.kind}.{self.layer}"

    @property
    def depth(self) -> tuple[int, int]:
        """Sort key in forward-pass order: embed first, then layer by layer."""
        if self.layer is None:
            return (-1, 0)
        return (self.layer, _ORDER_IN_LAYER[self.kind])

    @property
    def hook_point(self) -> tuple[str, Literal["input", "output"]]:
        """Module path (from the text model) and ``"input"``/``"output"`` of that module."""
        if self.layer is None:
            return "embed_tokens", "output"
        rel, end = _HOOK_POINTS[self.kind]
        return (f"layers.{self.layer}" + (f".{rel}" if rel else "")), end

    @property
    def hf_hook_point(self) -> str:
        """The hook point as Gemma Scope 2's ``config.json`` names it
        (``"model.layers.3.self_attn.o_proj.input"``)."""
        module, end = self.hook_point
        return f"model.{module}.{end}"


def parse_site(site: str | Site, n_layers: int | None = None) -> Site:
    """Parse ``"kind.layer"`` into a :class:`Site`, checking the kind and, if given, the layer.

    >>> parse_site("mlp_out.3")
    Site(kind='mlp_out', layer=3)
    """
    if isinstance(site, Site):
        parsed = site
    else:
        if not isinstance(site, str):
            raise TypeError(f"a site is a string like 'resid_post.3', got {type(site).__name__}")
        if site == "embed":
            return Site("embed", None)
        kind, _, layer_str = site.partition(".")
        if kind not in KINDS or not layer_str.lstrip("-").isdigit():
            raise ValueError(
                f"unknown site {site!r}: a site is 'embed' or '{{kind}}.{{layer}}' with kind one of "
                f"{', '.join(KINDS)} (for example 'resid_post.3')"
            )
        parsed = Site(kind, int(layer_str))
    if n_layers is not None and parsed.layer is not None and not 0 <= parsed.layer < n_layers:
        raise ValueError(
            f"site {str(parsed)!r} is out of range: this model has layers 0..{n_layers - 1}"
        )
    return parsed


def site_names(
    n_layers: int, kinds: str | tuple[str, ...] | list[str] = KINDS, layers="all"
) -> list[str]:
    """All site strings for ``kinds`` at ``layers`` (``"all"``, an int, or an iterable of ints),
    in forward-pass order."""
    if isinstance(kinds, str):
        kinds = (kinds,)
    if layers == "all":
        layers = range(n_layers)
    elif isinstance(layers, int):
        layers = [layers]
    sites: list[Site] = []
    for kind in kinds:
        if kind == "embed":
            sites.append(Site("embed", None))
            continue
        for layer in layers:
            sites.append(parse_site(f"{kind}.{layer}", n_layers))
    return [str(s) for s in sorted(set(sites), key=lambda s: s.depth)]
