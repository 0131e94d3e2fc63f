"""Gemma Scope 2's ``clt`` folders: writing them, and reading them straight into the target dtype
and device, with the decoders optionally left on disk and read on demand.

A folder holds one ``params_layer_{s}.safetensors`` per source layer with ``w_enc [d_in, d_sae]``,
``b_enc [d_sae]``, ``threshold [d_sae]``, ``b_dec [d_out]`` (layer ``s``'s output bias),
``w_dec [d_sae, n_layers, d_out]`` (the slices below ``s`` unused; a ``w_dec`` holding only the
slices from ``s`` on is read too) and, for ``_affine`` ids, ``affine_skip_connection
[d_in, d_out]``; a ``config.json`` may sit beside them.

The decoders are most of a CLT's bytes (``sum_s (n_layers - s) * d_sae * d_out``: about 29G
numbers for Gemma 3 270M's 262k-wide CLT, against 3G in the encoders), and tracing reads only the
rows of features active on the prompt. :class:`LazyDecoders` reads exactly those, tensor slice by
tensor slice (``safe_open(...).get_slice``), so a CLT loaded lazily costs its encoders' memory.
Every tensor is read on its own and converted once, so loading never holds a float32 copy of a
CLT stored or asked for in bfloat16.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from gsnb.core.files import atomic_write
from gsnb.core.tensor_files import read_tensor

LAYER_FILE = re.compile(r"params_layer_(\d+)\.safetensors")


def layer_files(folder: Path) -> list[Path]:
    """The ``params_layer_{s}.safetensors`` of ``folder`` in layer order; a
    ``FileNotFoundError`` naming what is missing otherwise."""
    found = {
        int(m.group(1)): p
        for p in folder.glob("params_layer_*.safetensors")
        if (m := LAYER_FILE.fullmatch(p.name))
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
    return [found[s] for s in range(n)]


def file_shapes(path: Path) -> dict[str, list[int]]:
    """``{key: shape}`` of a safetensors file, read from its header only."""
    with safe_open(str(path), framework="pt") as f:
        return {key: list(f.get_slice(key).get_shape()) for key in f.keys()}


def check_layer_file(shapes: dict, cfg, s: int, path: Path) -> int:
    """Refuse a layer file whose keys or shapes do not fit ``cfg`` (a :class:`CLTConfig`);
    return where source ``s``'s own slice starts in its ``w_dec`` (``s``, or 0 for a ``w_dec``
    that holds only the slices from ``s`` on)."""
    n, d_in, d_sae, d_out = cfg.n_layers, cfg.d_in, cfg.d_sae, cfg.d_out
    expected = {
        "w_enc": [[d_in, d_sae]],
        "b_enc": [[d_sae]],
        "threshold": [[d_sae]],
        "b_dec": [[d_out]],
        "w_dec": [[d_sae, n, d_out], [d_sae, n - s, d_out]],
    }
    if cfg.skip:
        expected["affine_skip_connection"] = [[d_in, d_out]]
    for key, allowed in expected.items():
        if key not in shapes:
            raise ValueError(f"{path} has no {key!r} (keys: {sorted(shapes)})")
        if shapes[key] not in allowed:
            raise ValueError(
                f"{path}: {key} has shape {shapes[key]}, expected "
                + " or ".join(str(a) for a in allowed)
                + f" for layer {s} of {n} with d_in={d_in}, d_sae={d_sae}"
            )
    return s if shapes["w_dec"][1] == n else 0


class LazyDecoders:
    """A CLT's decoders left in their files: ``decoders[s]`` reads source ``s``'s
    ``[d_sae, n_layers - s, d_out]`` whole, :meth:`rows` only some features' rows; both in
    :attr:`dtype` on :attr:`device`, which follow the CLT's ``.to(...)``."""

    def __init__(
        self, files: list[Path], starts: list[int], d_out: int, dtype: torch.dtype, device
    ):
        self.files, self.starts, self.d_out = files, starts, d_out
        self.dtype, self.device = dtype, torch.device(device)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, source: int) -> torch.Tensor:
        with safe_open(str(self.files[source]), framework="pt") as f:
            index = (slice(None), slice(self.starts[source], None))
            return read_tensor(f, "w_dec", self.files[source], self.dtype, self.device, index)

    def __iter__(self):
        return (self[s] for s in range(len(self)))

    def rows(self, source: int, features: torch.Tensor) -> torch.Tensor:
        """``[len(features), n_layers - source, d_out]`` decoder rows of ``features`` (sorted,
        unique ``[m]`` indices), read as one slice per run of consecutive indices."""
        features = features.tolist()
        runs, start = [], 0
        for i in range(1, len(features) + 1):
            if i == len(features) or features[i] != features[i - 1] + 1:
                runs.append((features[start], features[i - 1] + 1))
                start = i
        path, first = self.files[source], self.starts[source]
        with safe_open(str(path), framework="pt") as f:
            parts = [
                read_tensor(
                    f, "w_dec", path, self.dtype, self.device, (slice(a, b), slice(first, None))
                )
                for a, b in runs
            ]
        if not parts:
            shape = (0, len(self.files) - source, self.d_out)
            return torch.zeros(shape, dtype=self.dtype, device=self.device)
        return torch.cat(parts)


def save_clt(clt, path: str | os.PathLike) -> Path:
    """Write ``clt`` to the folder ``path`` in Gemma Scope 2's layout (files replaced
    atomically)."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    n, cfg = clt.n_layers, clt.cfg
    for s in range(n):
        decoder = clt.W_dec[s].detach().cpu()
        w_dec = torch.zeros(cfg.d_sae, n, cfg.d_out, dtype=decoder.dtype)
        w_dec[:, s:] = decoder
        tensors = {
            "w_enc": clt.W_enc[s],
            "b_enc": clt.b_enc[s],
            "threshold": clt.threshold[s],
            "b_dec": clt.b_dec[s],
            "w_dec": w_dec,
        }
        if clt.W_skip is not None:
            tensors["affine_skip_connection"] = clt.W_skip[s]
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        atomic_write(
            folder / f"params_layer_{s}.safetensors",
            lambda tmp, tensors=tensors: save_file(tensors, tmp),
        )
    config = {
        "architecture": "jump_relu",
        "type": "clt",
        "affine_connection": cfg.skip,
        "hf_hook_point_in": "model.layers.{layer}.pre_feedforward_layernorm.output",
        "hf_hook_point_out": "model.layers.{layer}.post_feedforward_layernorm.output",
        "gsnb": asdict(cfg),
    }
    atomic_write(folder / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(config)))
    return folder


def saved_facts(folder: Path) -> dict:
    """What gsnb wrote under ``"gsnb"`` in the folder's ``config.json`` (empty if none)."""
    if (folder / "config.json").is_file():
        return json.loads((folder / "config.json").read_text()).get("gsnb", {})
    return {}
