"""Interop checks: gsnb against the peers' own code (SAELens, circuit-tracer), each peer run as a
subprocess in its own git-ignored venv (``scripts/peers.py``). ``make interop`` runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from peers import peer_python  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(ROOT / "tests"))  # the tiny random Gemmas of the unit tests


def run_peer(peer: str, code: str, args: dict, tmp_path: Path) -> dict:
    """Run ``code`` in ``peer``'s venv with ``args`` as JSON in ``sys.argv[1]``; the script
    prints one JSON object on its last line, which is returned."""
    script = tmp_path / f"peer_{peer}.py"
    script.write_text(textwrap.dedent(code))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [peer_python(peer), str(script), json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    if done.returncode != 0:
        raise AssertionError(f"{peer} script failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def peer():
    """``peer(name, code, args, tmp_path) -> dict``: run code with the peer's own library."""
    return run_peer
