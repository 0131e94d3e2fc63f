"""Every notebook's first code cell installs gsnb on Colab (no JupyterLab) and turns on Colab's
widget manager, and does nothing anywhere else."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from IPython.core.inputtransformer2 import TransformerManager

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted([*ROOT.glob("tutorials/*.ipynb"), *ROOT.glob("notebooks/*.ipynb")])


class FakeShell:
    """Stands in for IPython: records the line magics the cell runs (``%pip ...``)."""

    def __init__(self):
        self.magics: list[tuple[str, str]] = []

    def run_line_magic(self, name: str, line: str, _stack_depth: int = 0):
        self.magics.append((name, line))


def run_first_cell(path: Path, on_colab: bool, monkeypatch) -> tuple[FakeShell, list[str]]:
    cells = json.loads(path.read_text())["cells"]
    source = "".join(next(c for c in cells if c["cell_type"] == "code")["source"])
    calls: list[str] = []
    if on_colab:
        colab = types.ModuleType("google.colab")
        colab.output = types.SimpleNamespace(
            enable_custom_widget_manager=lambda: calls.append("enable_custom_widget_manager")
        )
        google = types.ModuleType("google")
        google.colab = colab
        monkeypatch.setitem(sys.modules, "google", google)
        monkeypatch.setitem(sys.modules, "google.colab", colab)
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    shell = FakeShell()
    code = TransformerManager().transform_cell(source)
    exec(compile(code, str(path), "exec"), {"get_ipython": lambda: shell})
    return shell, calls


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_cell_installs_gsnb_and_widgets_on_colab_only(path, monkeypatch):
    shell, calls = run_first_cell(path, on_colab=True, monkeypatch=monkeypatch)
    assert len(shell.magics) == 1 and shell.magics[0][0] == "pip"
    line = shell.magics[0][1]
    assert "install" in line and "gsnb @ git+" in line and "[" not in line  # no extras: no Lab
    assert calls == ["enable_custom_widget_manager"]
    shell, calls = run_first_cell(path, on_colab=False, monkeypatch=monkeypatch)
    assert shell.magics == [] and calls == []
