"""The package's shape: layers import only downwards, and ``import gsnb`` loads no UI library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UI_LIBRARIES = ("ipywidgets", "plotly", "anywidget", "circuitsvis")


def test_import_gsnb_loads_no_ui_library_until_a_widget_is_asked_for():
    code = (
        "import sys, gsnb\n"
        f"print(sorted(m for m in {UI_LIBRARIES!r} if m in sys.modules))\n"
        "gsnb.GraphView\n"
        f"print(sorted(m for m in {UI_LIBRARIES!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    before, after = done.stdout.splitlines()
    assert before == "[]"
    assert "ipywidgets" in after and "plotly" in after


def test_no_import_cycles_and_no_import_up_the_layers():
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "shape.py"), str(ROOT / "gsnb")],
        capture_output=True,
        text=True,
    )
    assert "import cycles: 0" in done.stdout and "imports up the layers: 0" in done.stdout, (
        done.stdout
    )
    assert done.returncode == 0
