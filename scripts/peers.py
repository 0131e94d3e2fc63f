"""Peer tools (SAELens, circuit-tracer) in their own git-ignored virtual environments.

Benchmarks and interop checks compare gsnb with a peer's own code, never with a copy of it, and
never by installing the peer into gsnb's environment: each peer gets a venv at the project root
(``.bench-venv-<name>``), created on first use from PyPI with pinned versions, and is run as a
subprocess with that venv's Python.

>>> python = peer_python("circuit-tracer")   # creates the venv the first time (a few minutes)
>>> subprocess.run([python, "worker.py"], check=True)
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Installed first, so the peer's own requirements keep the CPU build from local disk.
TORCH = "torch==2.13.0"


@dataclass(frozen=True)
class Peer:
    """One peer tool and the pins of its environment."""

    pins: tuple[str, ...]
    """Requirements installed after torch, with exact versions."""
    check: str
    """Python statements that succeed once the environment is complete."""


PEERS = {
    "circuit-tracer": Peer(
        ("circuit-tracer==0.5.0", "nnsight==0.6.3", "transformers==4.57.3"),
        "import circuit_tracer, nnsight, transformers, torch",
    ),
    "saelens": Peer(("sae-lens==6.54.12",), "import sae_lens, torch"),
}


def peer_venv(name: str) -> Path:
    """The folder of peer ``name``'s virtual environment (it may not exist yet)."""
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; known peers: {sorted(PEERS)}")
    return ROOT / f".bench-venv-{name}"


def peer_python(name: str) -> str:
    """The Python of peer ``name``'s environment, created (PyPI only) when missing or broken."""
    peer, venv = PEERS.get(name), peer_venv(name)
    python = venv / "bin" / "python"
    if python.exists():
        if subprocess.run([python, "-c", peer.check], capture_output=True).returncode == 0:
            return str(python)
    print(f"creating {venv} ({', '.join(peer.pins)}; a few minutes, once)", flush=True)
    subprocess.run(["python3", "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, TORCH], check=True)
    subprocess.run([*pip, *peer.pins], check=True)
    subprocess.run([python, "-c", peer.check], check=True)
    return str(python)
