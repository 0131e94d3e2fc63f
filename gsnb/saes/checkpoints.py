"""Training checkpoints: parameters, Adam state, histories and RNG state, written atomically.

A checkpoint folder holds one ``state-{step}.safetensors`` and a ``latest.json`` naming it; the
json is written last, so an interrupted write leaves the previous checkpoint in force.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from gsnb.core.files import atomic_write

CHECKPOINT_FORMAT = "gsnb-train-1"


def write_checkpoint(folder: Path, step: int, meta: dict, trainers: dict, history: dict) -> None:
    """Parameters, Adam state and histories to safetensors, the rest to json, each file written
    to a temporary name and renamed; ``latest.json`` commits, naming a complete state file."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"{n}/{k}": v for n, t in trainers.items() for k, v in t.state_dict().items()}
    for name, rows in history.items():
        tensors[f"{name}/history"] = torch.tensor(rows, dtype=torch.float64).reshape(-1, 5)
    tensors["rng/torch"] = torch.get_rng_state()
    state_name = f"state-{step:09d}.safetensors"
    atomic_write(folder / state_name, lambda p: save_file(tensors, p))
    body = {**meta, "format": CHECKPOINT_FORMAT, "step": step, "state": state_name}
    atomic_write(folder / "latest.json", lambda p: Path(p).write_text(json.dumps(body, indent=1)))
    for old in folder.glob("state-*.safetensors"):
        if old.name != state_name:
            old.unlink(missing_ok=True)


def read_checkpoint(folder: Path, meta: dict) -> tuple[dict, dict] | None:
    latest = folder / "latest.json"
    if not latest.is_file():
        return None
    saved = json.loads(latest.read_text())
    for key in ("config", "targets", "world_size"):
        if saved.get(key) != meta[key]:
            raise ValueError(
                f"the checkpoint in {folder} is from another run ({key}: {saved.get(key)} there, "
                f"{meta[key]} now): use another checkpoint_dir, or delete it to start afresh"
            )
    tensors = load_file(str(folder / saved["state"]))
    torch.set_rng_state(tensors.pop("rng/torch"))
    return saved, tensors
