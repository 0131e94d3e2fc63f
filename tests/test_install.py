"""A plain ``pip install gsnb`` (no extras, as on Colab) gives a working library and no JupyterLab.

The package is built from this checkout into a fresh virtual environment through the lock
(``constraints.txt``), torch first at its locked release as the Makefile does; a script there
traces and steers a tiny random Gemma 3.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

CHECK = """
import importlib.util, sys
import torch
sys.path.insert(0, {tests!r})
import gsnb
from tiny import tiny_model

assert "site-packages" in gsnb.__file__, gsnb.__file__  # the installed package, not the checkout
assert importlib.util.find_spec("jupyterlab") is None, "JupyterLab came with a plain install"
model = tiny_model("gemma3")
torch.manual_seed(0)
transcoders = []
for layer in range(model.n_layers):
    config = gsnb.SAEConfig(model.d_model, 32, site_in=f"mlp_in.{{layer}}", site_out=f"mlp_out.{{layer}}")
    tc = gsnb.JumpReLUSAE(config)
    with torch.no_grad():
        tc.W_enc.normal_(0, 0.3), tc.W_dec.normal_(0, 0.3), tc.threshold.fill_(0.3)
    transcoders.append(tc)
graph = gsnb.trace(model, transcoders, "the cat sat on the mat")
assert graph.adjacency.abs().sum() > 0
direction = torch.randn(model.d_model)
plain = model("the cat sat")
with model.intervene([gsnb.Add("resid_post.0", direction, 5.0)]):
    steered = model("the cat sat")
assert not torch.allclose(plain, steered)
print("plain install works")
"""


def run(*command, cwd: Path = ROOT) -> None:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stderr[-4000:]}"


def test_plain_install_traces_and_steers_without_jupyterlab(tmp_path):
    lock = ROOT / "constraints.txt"
    torch_pin = next(line for line in lock.read_text().splitlines() if line.startswith("torch=="))
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", str(venv))
    python = str(venv / "bin" / "python")
    pip = (python, "-m", "pip", "install", "-q", "-c", str(lock))
    run(*pip, torch_pin)
    run(*pip, str(ROOT))
    done = subprocess.run(
        [python, "-c", CHECK.format(tests=str(TESTS))],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "plain install works" in done.stdout
