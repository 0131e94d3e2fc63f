"""Cross-layer transcoders (CLTs): features that read one layer's MLP input and write the MLP
outputs of that layer and every later one, in Gemma Scope 2's ``clt`` layout.

For source layer ``s`` with input ``x_s = mlp_in.s``:

    f_s = JumpReLU(x_s @ W_enc[s] + b_enc[s])                                 [..., d_sae]
    mlp_out.L ~ sum_{s <= L} f_s @ W_dec[s][:, L - s] + b_dec[L]  (+ x_L @ W_skip[L])

so ``W_dec[s]`` is ``[d_sae, n_layers - s, d_out]``. A list of per-layer transcoders is the special
case with one decoder slice per source; :class:`PerLayerTranscoders` views such a list through
the same methods (without copying weights), so circuit tracing has one code path for both.

On disk: ``clt/width_262k_l0_medium[_affine]`` in ``google/gemma-scope-2-{270m,1b}-{pt,it}``, one
file per source layer (:mod:`gsnb.saes.clt_files`, which also reads the decoders lazily).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from tqdm.auto import tqdm

from gsnb.core.tensor_files import read_tensor
from gsnb.saes.clt_files import (
    LazyDecoders,
    check_layer_file,
    file_shapes,
    layer_files,
    save_clt,
    saved_facts,
)
from gsnb.saes.sae import fit_error


@dataclass
class CLTConfig:
    """What a cross-layer transcoder is: its sizes and the model it was trained on."""

    n_layers: int
    """Layers it reads and writes (all of the model's)."""
    d_in: int
    """Width of ``mlp_in`` (the input of each MLP, after its pre-norm)."""
    d_sae: int
    """Features per source layer."""
    d_out: int | None = None
    """Width of ``mlp_out``; ``None`` means ``d_in``."""
    skip: bool = False
    """Has an affine skip connection ``W_skip[L] [d_in, d_out]`` per layer (``_affine`` ids)."""
    model_name: str | None = None
    """Model it was trained on (``"google/gemma-3-270m"``)."""
    release: str | None = None
    """Released suite it came from, if any."""
    sae_id: str | None = None
    """Its id in that release (``"clt/width_262k_l0_medium_affine"``)."""

    def __post_init__(self):
        self.d_out = self.d_out or self.d_in


class CrossLayerTranscoder(nn.Module):
    """A JumpReLU cross-layer transcoder over all layers of a model.

    Parameters: ``W_enc [n_layers, d_in, d_sae]``, ``b_enc`` and ``threshold [n_layers, d_sae]``,
    ``b_dec [n_layers, d_out]``, ``W_dec[s] [d_sae, n_layers - s, d_out]`` and, with ``skip``,
    ``W_skip [n_layers, d_in, d_out]``.

    >>> clt = gsnb.load_sae("gemma-scope-2-270m-pt", "clt/width_262k_l0_medium_affine")
    >>> graph = gsnb.trace(model, clt, "The Eiffel Tower is in the city of")
    """

    def __init__(self, cfg: CLTConfig):
        super().__init__()
        self.cfg = cfg
        n, d_in, d_sae, d_out = cfg.n_layers, cfg.d_in, cfg.d_sae, cfg.d_out
        self.W_enc = nn.Parameter(torch.zeros(n, d_in, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(n, d_sae))
        self.threshold = nn.Parameter(torch.zeros(n, d_sae))
        self.b_dec = nn.Parameter(torch.zeros(n, d_out))
        self.W_dec = nn.ParameterList(
            [nn.Parameter(torch.zeros(d_sae, n - s, d_out)) for s in range(n)]
        )
        self.W_skip = nn.Parameter(torch.zeros(n, d_in, d_out)) if cfg.skip else None

    def __repr__(self) -> str:
        c = self.cfg
        kind = "skip " if c.skip else ""
        return (
            f"CrossLayerTranscoder({kind}{c.n_layers} layers, d_in={c.d_in}, "
            f"d_sae={c.d_sae} per layer{f', {c.sae_id}' if c.sae_id else ''})"
        )

    @property
    def n_layers(self) -> int:
        return self.cfg.n_layers

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    # --- the interface circuit tracing uses (shared with PerLayerTranscoders) -----------------

    def encoder(self, layer: int) -> torch.Tensor:
        """``W_enc [d_in, d_sae]`` of source ``layer``."""
        return self.W_enc[layer]

    def decoders(self, source: int) -> torch.Tensor:
        """``[d_sae, n_targets, d_out]``: slice ``k`` writes ``mlp_out.(source + k)`` (read from
        the file whole when the decoders are lazy)."""
        return self.W_dec[source]

    def decoder_rows(self, source: int, features: torch.Tensor) -> torch.Tensor:
        """``[len(features), n_targets, d_out]`` the decoder rows of ``features`` (sorted, unique
        indices) of ``source``; only those are read when the decoders are lazy."""
        if isinstance(self.W_dec, LazyDecoders):
            return self.W_dec.rows(source, features)
        return self.W_dec[source][features.to(self.W_dec[source].device)]

    def n_targets(self, source: int) -> int:
        """Layers ``source``'s features write: itself and every later one."""
        return self.n_layers - source

    def output_bias(self, layer: int) -> torch.Tensor:
        """``b_dec [d_out]`` added to ``mlp_out.layer``."""
        return self.b_dec[layer]

    def skip(self, layer: int) -> torch.Tensor | None:
        """``W_skip [d_in, d_out]`` of ``layer``, or ``None``."""
        return None if self.W_skip is None else self.W_skip[layer]

    def pre_activations(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """``x @ W_enc[layer] + b_enc[layer]``: ``[..., d_in] -> [..., d_sae]``."""
        return x.to(self.W_enc.dtype) @ self.W_enc[layer] + self.b_enc[layer]

    def encode(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Activations of source ``layer``'s features: ``[..., d_in] -> [..., d_sae]``."""
        pre = self.pre_activations(layer, x)
        return pre * (pre > self.threshold[layer]) * (pre > 0)

    def transcoder_ids(self) -> list[str]:
        """A name per layer, for a graph's metadata."""
        return [self.cfg.sae_id or "clt"] * self.n_layers

    def neuronpedia_ids(self) -> list[str | None]:
        """Neuronpedia's id per layer (none known for CLTs)."""
        return [None] * self.n_layers

    def input_site(self, layer: int) -> str:
        """The site source ``layer`` reads: ``mlp_in.layer`` (Gemma Scope 2's CLTs)."""
        return f"mlp_in.{layer}"

    # --- whole-model maths -------------------------------------------------------------------

    def decode(self, acts: Sequence[torch.Tensor], layer: int) -> torch.Tensor:
        """``mlp_out.layer`` without the skip path from the activations of sources
        ``0..layer`` (``acts[s] [..., d_sae]``): ``[..., d_out]``."""
        return reconstruct(self, acts, layer, None)

    def forward(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Every layer's ``mlp_out`` from every layer's ``mlp_in``: lists of ``[..., d]``."""
        acts = [self.encode(s, x) for s, x in enumerate(inputs)]
        rows = ActiveRows(self)
        return [reconstruct(self, acts, L, inputs[L], rows) for L in range(self.n_layers)]

    def check_model(self, model) -> None:
        """Raise ``ValueError`` unless this CLT fits ``model`` (its depth, and the widths of
        ``mlp_in`` and ``mlp_out``), with the same message as :meth:`JumpReLUSAE.check_model`."""
        if model.n_layers != self.n_layers:
            problem = f"it covers {self.n_layers} layers but the model has {model.n_layers}"
            raise fit_error(self, model, problem)
        for kind, width in (("mlp_in", self.cfg.d_in), ("mlp_out", self.cfg.d_out)):
            found = model.site_width(f"{kind}.0")
            if found != width:
                problem = f"it expects width {width} at {kind} but the model has {found} there"
                raise fit_error(self, model, problem)

    @classmethod
    def from_transcoders(cls, transcoders: Sequence) -> CrossLayerTranscoder:
        """The CLT equal to per-layer transcoders (``transcoders[L]`` reads ``mlp_in.L``): each
        source writes only its own layer, every cross-layer decoder slice is zero. The weights
        are copied; all must have the same width."""
        first = transcoders[0]
        widths = {tc.d_sae for tc in transcoders}
        if len(widths) != 1:
            raise ValueError(f"the transcoders differ in width {sorted(widths)}; a CLT has one")
        cfg = CLTConfig(
            n_layers=len(transcoders),
            d_in=first.cfg.d_in,
            d_sae=first.d_sae,
            d_out=first.cfg.d_out,
            skip=any(tc.W_skip is not None for tc in transcoders),
            model_name=first.cfg.model_name,
        )
        clt = cls(cfg).to(first.W_enc.device, first.W_enc.dtype)
        with torch.no_grad():
            for layer, tc in enumerate(transcoders):
                clt.W_enc[layer].copy_(tc.W_enc)
                clt.b_enc[layer].copy_(tc.b_enc)
                clt.threshold[layer].copy_(tc.threshold)
                clt.b_dec[layer].copy_(tc.b_dec)
                clt.W_dec[layer][:, 0].copy_(tc.W_dec)
                if tc.W_skip is not None:
                    clt.W_skip[layer].copy_(tc.W_skip)
        return clt

    # --- files -------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write Gemma Scope 2's layout to the folder ``path`` (files replaced atomically)."""
        return save_clt(self, path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        progress: bool = True,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        lazy: bool = False,
        **overrides,
    ) -> CrossLayerTranscoder:
        """Read a folder of ``params_layer_{s}.safetensors`` (and ``config.json`` if present).

        Each tensor is read a slice at a time straight into ``dtype`` on ``device``
        (:func:`gsnb.core.tensor_files.read_tensor`): no float32 copy of a bfloat16 CLT. ``lazy=True`` leaves the decoders in their files (:class:`LazyDecoders`), read
        on demand: tracing reads only the rows of the features active on its prompt.
        ``overrides`` set :class:`CLTConfig` fields (``model_name=``, ``sae_id=``...)."""
        files = layer_files(Path(path))
        shapes = file_shapes(files[0])
        if "w_enc" not in shapes or "b_dec" not in shapes:
            raise ValueError(f"{files[0]} has no 'w_enc' or 'b_dec' (keys: {sorted(shapes)})")
        known = {f.name for f in fields(CLTConfig)}
        cfg = CLTConfig(
            **{
                **{k: v for k, v in saved_facts(Path(path)).items() if k in known},
                "n_layers": len(files),
                "d_in": shapes["w_enc"][0],
                "d_sae": shapes["w_enc"][1],
                "d_out": shapes["b_dec"][0],
                "skip": "affine_skip_connection" in shapes,
                **overrides,
            }
        )
        n, device = cfg.n_layers, torch.device(device)
        with torch.device("meta"):
            clt = cls(cfg)
        stacked = {"W_enc": "w_enc", "b_enc": "b_enc", "threshold": "threshold", "b_dec": "b_dec"}
        if cfg.skip:
            stacked["W_skip"] = "affine_skip_connection"
        full = {
            name: torch.empty(getattr(clt, name).shape, dtype=dtype, device=device)
            for name in stacked
        }
        decoders, starts = [], []
        for s in tqdm(range(n), desc="loading CLT layers", unit="layer", disable=not progress):
            starts.append(check_layer_file(file_shapes(files[s]), cfg, s, files[s]))
            with safe_open(str(files[s]), framework="pt") as f:
                for name, key in stacked.items():
                    full[name][s] = read_tensor(f, key, files[s], dtype, device)
                if not lazy:
                    index = (slice(None), slice(starts[s], None))
                    decoders.append(read_tensor(f, "w_dec", files[s], dtype, device, index))
        for name, value in full.items():
            setattr(clt, name, nn.Parameter(value))
        del clt.W_dec
        if lazy:
            clt.W_dec = LazyDecoders(files, starts, cfg.d_out, dtype, device)
        else:
            clt.W_dec = nn.ParameterList([nn.Parameter(d) for d in decoders])
        return clt

    def _apply(self, fn, recurse=True):
        # Module.to/.half/.cuda reach parameters through _apply: lazy decoders follow the same
        # conversion, found by applying it to an empty tensor of theirs.
        super()._apply(fn, recurse)
        if isinstance(self.W_dec, LazyDecoders):
            probe = fn(torch.empty(0, dtype=self.W_dec.dtype, device=self.W_dec.device))
            self.W_dec.dtype, self.W_dec.device = probe.dtype, probe.device
        return self


class PerLayerTranscoders:
    """A list of per-layer transcoders (``transcoders[L]`` reads ``mlp_in.L`` or
    ``mlp_normalized.L``, writes ``mlp_out.L``) seen through :class:`CrossLayerTranscoder`'s methods: each source writes only
    its own layer. Weights are shared, not copied."""

    def __init__(self, transcoders: Sequence):
        self.transcoders = list(transcoders)
        self.n_layers = len(self.transcoders)

    def encoder(self, layer: int) -> torch.Tensor:
        return self.transcoders[layer].W_enc

    def decoders(self, source: int) -> torch.Tensor:
        return self.transcoders[source].W_dec[:, None, :]

    def decoder_rows(self, source: int, features: torch.Tensor) -> torch.Tensor:
        w_dec = self.transcoders[source].W_dec
        return w_dec[features.to(w_dec.device)][:, None, :]

    def n_targets(self, source: int) -> int:
        return 1

    def output_bias(self, layer: int) -> torch.Tensor:
        return self.transcoders[layer].b_dec

    def skip(self, layer: int) -> torch.Tensor | None:
        return self.transcoders[layer].W_skip

    def pre_activations(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return self.transcoders[layer].pre_activations(x)

    def encode(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return self.transcoders[layer].encode(x)

    def transcoder_ids(self) -> list[str]:
        return [tc.cfg.sae_id or tc.site_in for tc in self.transcoders]

    def neuronpedia_ids(self) -> list[str | None]:
        return [tc.cfg.neuronpedia_id for tc in self.transcoders]

    def input_site(self, layer: int) -> str:
        return self.transcoders[layer].site_in


class ActiveRows:
    """The decoder rows of the features active in some activations, gathered once per source
    and reused for every layer they write (and read from disk only once for lazy decoders)."""

    def __init__(self, stack):
        self.stack = stack
        self._rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, source: int, acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features [m], rows [m, n_targets, d_out])`` covering the features nonzero anywhere
        in ``acts [..., d_sae]`` of ``source``."""
        active = acts.detach().reshape(-1, acts.shape[-1]).ne(0).any(0).nonzero().flatten()
        cached = self._rows.get(source)
        if cached is None or not torch.isin(active, cached[0]).all():
            union = active if cached is None else torch.cat([cached[0], active]).unique()
            self._rows[source] = (union, self.stack.decoder_rows(source, union))
        return self._rows[source]


def reconstruct(
    stack,
    acts: Sequence[torch.Tensor],
    layer: int,
    x: torch.Tensor | None,
    rows: ActiveRows | None = None,
) -> torch.Tensor:
    """``mlp_out.layer`` of a :class:`CrossLayerTranscoder` or :class:`PerLayerTranscoders`
    from the activations ``acts[s] [..., d_sae]`` of sources ``0..layer``, plus the skip path
    when ``x [..., d_in]`` (``mlp_in.layer``) is given: ``[..., d_out]``, in float32.

    Only the decoder rows of active features are read; pass one ``rows`` (:class:`ActiveRows`)
    to every layer of a pass so each source's rows are gathered once."""
    rows = rows or ActiveRows(stack)
    out = stack.output_bias(layer).float()
    for s in range(layer + 1):
        if layer - s < stack.n_targets(s):
            features, dec = rows.get(s, acts[s])
            out = out + acts[s][..., features].float() @ dec[:, layer - s].float()
    skip = stack.skip(layer)
    if x is not None and skip is not None:
        out = out + x.float() @ skip.float()
    return out
