"""Site names and where each one lives in a Gemma 2 / Gemma 3 decoder block.

A site string is ``"{kind}.{layer}"`` (``"resid_post.3"``) or ``"embed"``. The kinds follow
Gemma Scope 2's folder names, plus ``mlp_normalized`` for Gemma Scope (Gemma 2) transcoders:

==================  ===================================================  =====================
kind                Hugging Face module and hook point                    width
==================  ===================================================  =====================
``embed``           output of ``embed_tokens`` (already scaled)          d_model
``attn_out``        input of ``layers.L.self_attn.o_proj``               n_heads * head_dim
``mlp_normalized``  input ``x`` of ``layers.L.pre_feedforward_layernorm``  d_model
                    divided by its RMS, ``x / rms(x)``, before the
                    norm's ``(1 + w)`` gain (float32)
``mlp_in``          output of ``layers.L.pre_feedforward_layernorm``     d_model
                    (``mlp_normalized * (1 + w)``)
``mlp_out``         output of ``layers.L.post_feedforward_layernorm``    d_model
``resid_post``      output of ``layers.L``                               d_model
==================  ===================================================  =====================

Transcoders write ``mlp_out.L`` and read ``mlp_in.L`` (Gemma Scope 2, and those gsnb trains) or
``mlp_normalized.L`` (Gemma Scope: its model card folds the gain into the MLP weights, and
SAELens and circuit-tracer read TransformerLens' ``ln2.hook_normalized``, this same value).
:func:`transcoder_sites` and :func:`transcoder_layer` are the one place that says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

KINDS: tuple[str, ...] = ("resid_post", "attn_out", "mlp_in", "mlp_out")
"""Gemma Scope 2's per-layer site kinds, the ones :meth:`gsnb.Model.sites` lists by default;
``embed`` is the one site without a layer, ``mlp_normalized`` the one kind outside this list."""

TRANSCODER_INPUTS: tuple[str, ...] = ("mlp_in", "mlp_normalized")
"""Kinds a transcoder may read; it always writes ``mlp_out`` of the same layer."""

End = Literal["input", "output", "normalized"]
"""Where on its module a site's value sits: the module's input, its output, or (RMSNorm only)
its input divided by its RMS."""

# (module path relative to the decoder layer, which end of the module holds the value)
_HOOK_POINTS: dict[str, tuple[str, End]] = {
    "resid_post": ("", "output"),
    "attn_out": ("self_attn.o_proj", "input"),
    "mlp_normalized": ("pre_feedforward_layernorm", "normalized"),
    "mlp_in": ("pre_feedforward_layernorm", "output"),
    "mlp_out": ("post_feedforward_layernorm", "output"),
}

ALL_KINDS: tuple[str, ...] = (*KINDS, "mlp_normalized")
"""Every per-layer site kind."""

# Order in which the sites of one layer are computed during the forward pass.
_ORDER_IN_LAYER = {"attn_out": 0, "mlp_normalized": 1, "mlp_in": 2, "mlp_out": 3, "resid_post": 4}


@dataclass(frozen=True, order=False)
class Site:
    """A parsed site: a kind and a layer (``None`` for ``embed``)."""

    kind: str
    """One of ``KINDS``, ``"mlp_normalized"`` or ``"embed"``."""
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
    def hook_point(self) -> tuple[str, End]:
        """Module path (from the text model) and which end of it holds the value (see ``End``)."""
        if self.layer is None:
            return "embed_tokens", "output"
        rel, end = _HOOK_POINTS[self.kind]
        return (f"layers.{self.layer}" + (f".{rel}" if rel else "")), end

    @property
    def hf_hook_point(self) -> str:
        """The hook point as Gemma Scope 2's ``config.json`` names it
        (``"model.layers.3.self_attn.o_proj.input"``); ``mlp_normalized`` has no Hugging Face hook
        point and is named ``"model.layers.3.pre_feedforward_layernorm.normalized"``."""
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
        if kind not in ALL_KINDS or not layer_str.lstrip("-").isdigit():
            raise ValueError(
                f"unknown site {site!r}: a site is 'embed' or '{{kind}}.{{layer}}' with kind one of "
                f"{', '.join(ALL_KINDS)} (for example 'resid_post.3')"
            )
        parsed = Site(kind, int(layer_str))
    if parsed.layer is not None and parsed.layer < 0:
        # Python-style negative indices would name a different layer on every model size.
        known = f" (this model has layers 0..{n_layers - 1})" if n_layers is not None else ""
        raise ValueError(
            f"site {str(parsed)!r} has a negative layer: layers count from 0{known}; for the last "
            f"one pass its index, e.g. f'{parsed.kind}.{{model.n_layers - 1}}'"
        )
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


def transcoder_sites(layer: int, reads: str = "mlp_in") -> tuple[str, str]:
    """``(site_in, site_out)`` of a transcoder at ``layer`` that reads ``reads``.

    >>> transcoder_sites(3, reads="mlp_normalized")
    ('mlp_normalized.3', 'mlp_out.3')
    """
    if reads not in TRANSCODER_INPUTS:
        raise ValueError(f"a transcoder reads one of {', '.join(TRANSCODER_INPUTS)}, not {reads!r}")
    return f"{reads}.{layer}", f"mlp_out.{layer}"


def transcoder_layer(site_in: str | Site | None, site_out: str | Site | None) -> int | None:
    """The layer of a transcoder reading ``site_in`` and writing ``site_out``, or ``None`` when the
    pair is not one (``mlp_in.3``/``mlp_normalized.3`` -> ``mlp_out.3`` gives 3)."""
    if site_in is None or site_out is None:
        return None
    a, b = parse_site(site_in), parse_site(site_out)
    if a.kind in TRANSCODER_INPUTS and b.kind == "mlp_out" and a.layer == b.layer:
        return a.layer
    return None


def target_name(site_in: str, site_out: str) -> str:
    """The name of what reads ``site_in`` and writes ``site_out``: the site for an SAE
    (``"resid_post.3"``), ``"transcoder.L"`` for ``transcoder_sites(L)`` (gsnb's transcoders,
    reading ``mlp_in``), else ``"site_in->site_out"``."""
    if site_in == site_out:
        return str(site_in)
    layer = parse_site(site_in).layer
    if layer is not None and (site_in, site_out) == transcoder_sites(layer):
        return f"transcoder.{layer}"
    return f"{site_in}->{site_out}"
