"""Cross-layer transcoders (CLTs): features that read one layer's MLP input and write the MLP
outputs of that layer and every later one, in Gemma Scope 2's ``clt`` layout.

For source layer ``s`` with input ``x_s = mlp_in.s``:

    f_s = JumpReLU(x_s @ W_enc[s] + b_enc[s])                                 [..., d_sae]
    mlp_out.L ~ sum_{s <= L} f_s @ W_dec[s][:, L - s] + b_dec[L]  (+ x_L @ W_skip[L])

so ``W_dec[s]`` is ``[d_sae, n_layers - s, d_out]``. A list of per-layer transcoders is the special
case with one decoder slice per source; :class:`PerLayerTranscoders` views such a list through
the same methods (without copying weights), so circuit tracing has one code path for both.

On disk (``clt/width_262k_l0_medium[_affine]`` in ``google/gemma-scope-2-{270m,1b}-{pt,it}``):
one ``params_layer_{s}.safetensors`` per source layer with ``w_enc [d_in, d_sae]``,
``b_enc [d_sae]``, ``threshold [d_sae]``, ``b_dec [d_out]`` (layer ``s``'s output bias),
``w_dec [d_sae, n_layers, d_out]`` (the slices below ``s`` unused) and, for ``_affine``,
``affine_skip_connection [d_in, d_out]``; a ``config.json`` may sit beside them. gsnb writes the
same files, and reads a ``w_dec`` that holds only the slices from ``s`` on as well.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from gsnb.core.files import atomic_write
from gsnb.saes.sae import fit_error

_LAYER_FILE = re.compile(r"params_layer_(\d+)\.safetensors")


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
        """``[d_sae, n_targets, d_out]``: slice ``k`` writes ``mlp_out.(source + k)``."""
        return self.W_dec[source]

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
        return [reconstruct(self, acts, layer, inputs[layer]) for layer in range(self.n_layers)]

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
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        n = self.n_layers
        for s in range(n):
            w_dec = torch.zeros(self.d_sae, n, self.cfg.d_out, dtype=self.W_dec[s].dtype)
            w_dec[:, s:] = self.W_dec[s].detach().cpu()
            tensors = {
                "w_enc": self.W_enc[s],
                "b_enc": self.b_enc[s],
                "threshold": self.threshold[s],
                "b_dec": self.b_dec[s],
                "w_dec": w_dec,
            }
            if self.W_skip is not None:
                tensors["affine_skip_connection"] = self.W_skip[s]
            tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
            atomic_write(
                folder / f"params_layer_{s}.safetensors",
                lambda tmp, tensors=tensors: save_file(tensors, tmp),
            )
        config = {
            "architecture": "jump_relu",
            "type": "clt",
            "affine_connection": self.cfg.skip,
            "hf_hook_point_in": "model.layers.{layer}.pre_feedforward_layernorm.output",
            "hf_hook_point_out": "model.layers.{layer}.post_feedforward_layernorm.output",
            "gsnb": asdict(self.cfg),
        }
        atomic_write(folder / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(config)))
        return folder

    @classmethod
    def load(
        cls, path: str | os.PathLike, progress: bool = True, **overrides
    ) -> CrossLayerTranscoder:
        """Read a folder of ``params_layer_{s}.safetensors`` (and ``config.json`` if present).

        ``overrides`` set :class:`CLTConfig` fields (``model_name=``, ``sae_id=``...)."""
        folder = Path(path)
        found = {
            int(m.group(1)): p
            for p in folder.glob("params_layer_*.safetensors")
            if (m := _LAYER_FILE.fullmatch(p.name))
        }
        if not found:
            raise FileNotFoundError(
                f"{folder} holds no params_layer_{{L}}.safetensors: a cross-layer transcoder "
                "folder has one per layer (Gemma Scope 2's clt/... layout)"
            )
        n = max(found) + 1
        missing = sorted(set(range(n)) - set(found))
        if missing:
            raise FileNotFoundError(f"{folder} lacks params_layer_{{L}} for layers {missing}")
        facts = {}
        if (folder / "config.json").is_file():
            facts = json.loads((folder / "config.json").read_text()).get("gsnb", {})
        with safe_open(str(found[0]), framework="pt") as f:
            shapes = {key: f.get_slice(key).get_shape() for key in f.keys()}
        if "w_enc" not in shapes or "b_dec" not in shapes:
            raise ValueError(f"{found[0]} has no 'w_enc' or 'b_dec' (keys: {sorted(shapes)})")
        d_in, d_sae = shapes["w_enc"]
        known = {f.name for f in fields(CLTConfig)}
        cfg = CLTConfig(
            **{
                **{k: v for k, v in facts.items() if k in known},
                "n_layers": n,
                "d_in": d_in,
                "d_sae": d_sae,
                "d_out": shapes["b_dec"][0],
                "skip": "affine_skip_connection" in shapes,
                **overrides,
            }
        )
        clt = cls(cfg)
        with torch.no_grad():
            # One file at a time: a released CLT is many GB.
            for s in tqdm(range(n), desc="loading CLT layers", unit="layer", disable=not progress):
                tensors = load_file(str(found[s]))
                _check_layer_file(tensors, cfg, s, found[s])
                clt.W_enc[s].copy_(tensors["w_enc"])
                clt.b_enc[s].copy_(tensors["b_enc"])
                clt.threshold[s].copy_(tensors["threshold"])
                clt.b_dec[s].copy_(tensors["b_dec"])
                w_dec = tensors["w_dec"]
                clt.W_dec[s].copy_(w_dec[:, s:] if w_dec.shape[1] == n else w_dec)
                if cfg.skip:
                    clt.W_skip[s].copy_(tensors["affine_skip_connection"])
                del tensors, w_dec
        return clt


def _check_layer_file(tensors: dict, cfg: CLTConfig, s: int, path: Path) -> None:
    n, d_in, d_sae, d_out = cfg.n_layers, cfg.d_in, cfg.d_sae, cfg.d_out
    expected = {
        "w_enc": [(d_in, d_sae)],
        "b_enc": [(d_sae,)],
        "threshold": [(d_sae,)],
        "b_dec": [(d_out,)],
        "w_dec": [(d_sae, n, d_out), (d_sae, n - s, d_out)],
    }
    if cfg.skip:
        expected["affine_skip_connection"] = [(d_in, d_out)]
    for key, shapes in expected.items():
        if key not in tensors:
            raise ValueError(f"{path} has no {key!r} (keys: {sorted(tensors)})")
        shape = tuple(tensors[key].shape)
        if shape not in shapes:
            raise ValueError(
                f"{path}: {key} has shape {list(shape)}, expected "
                + " or ".join(str(list(s)) for s in shapes)
                + f" for layer {s} of {n} with d_in={d_in}, d_sae={d_sae}"
            )
        if not torch.isfinite(tensors[key]).all():
            raise ValueError(f"{path}: {key} holds NaN or infinite values; the file is damaged")


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


def reconstruct(
    stack, acts: Sequence[torch.Tensor], layer: int, x: torch.Tensor | None
) -> torch.Tensor:
    """``mlp_out.layer`` of a :class:`CrossLayerTranscoder` or :class:`PerLayerTranscoders`
    from the activations ``acts[s] [..., d_sae]`` of sources ``0..layer``, plus the skip path
    when ``x [..., d_in]`` (``mlp_in.layer``) is given: ``[..., d_out]``."""
    out = stack.output_bias(layer).float()
    for s in range(layer + 1):
        dec = stack.decoders(s)
        if layer - s < dec.shape[1]:
            out = out + acts[s].float() @ dec[:, layer - s].float()
    skip = stack.skip(layer)
    if x is not None and skip is not None:
        out = out + x.float() @ skip.float()
    return out
