"""The README's pictures, from tutorials executed in full mode.

Exports each executed notebook to HTML with its widgets' static snapshots (no script, no
network), opens it in the headless Chromium the browser test uses, and screenshots one widget's
snapshot per picture (its top 1,400 pixels) into docs/images/ as a PNG.

    GSNB_SMALL= jupyter nbconvert --to notebook --execute \\
        --ExecutePreprocessor.store_widget_state=False --output-dir /tmp/full tutorials/03_*.ipynb ...
    .venv/bin/python scripts/readme_screenshots.py /tmp/full
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images"
CHROMIUM = "/usr/bin/chromium"
PICTURES = {  # png name -> (executed notebook, the widget whose snapshot is shown)
    "feature_dashboard.png": ("03_inspect_features.ipynb", "FeatureInspector"),
    "graph_view.png": ("05_circuit_tracing.ipynb", "GraphView"),
    "steering_comparison.png": ("04_steering.ipynb", "SteeringPlayground"),
}
WIDTH = 1100  # CSS pixels: a README column, with room for the figures side by side
MAX_HEIGHT = 1400  # CSS pixels: the top of a long snapshot is enough for a picture


def export_html(notebook: Path, out_dir: Path) -> Path:
    """The executed ``notebook`` as HTML, its widget outputs shown by their snapshots."""
    if "application/vnd.jupyter.widget-state+json" in notebook.read_text():
        raise SystemExit(
            f"{notebook} stores widget state, so its HTML would need a widget manager from the "
            "network: execute it with --ExecutePreprocessor.store_widget_state=False"
        )
    subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", "--output-dir",
         str(out_dir), str(notebook)],
        check=True, capture_output=True,
    )  # fmt: skip
    return out_dir / notebook.with_suffix(".html").name


def main(executed_dir: str) -> None:
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
        context = browser.new_context(viewport={"width": WIDTH, "height": 900}, offline=True)
        for png, (name, widget) in PICTURES.items():
            page = context.new_page()
            page.goto(export_html(Path(executed_dir) / name, Path(tmp)).as_uri())
            snapshot = page.locator(f".gsnb-static:has-text('{widget}: a snapshot')").first
            if not snapshot.count():
                raise SystemExit(f"{name} shows no {widget} snapshot: was it executed in full?")
            box = snapshot.bounding_box()
            box["height"] = min(box["height"], MAX_HEIGHT)
            page.screenshot(path=str(OUT / png), clip=box, full_page=True)
            print(f"{OUT / png}: {(OUT / png).stat().st_size // 1024} kB")
            page.close()
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/full")
