"""The feature widgets and the exported page render in a real browser: headless Chromium driving
JupyterLab running tutorial 03, and a file:// page with the network cut off.

Needs /usr/bin/chromium (``scripts/install_browser.sh``) and the playwright package (the dev
extra); ``make test`` installs both. Screenshots go to ``test-output/browser/`` (git-ignored).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_features import corpus, random_sae
from tiny import tiny_model

from gsnb.analysis.features import feature_stats
from gsnb.viz.pages import feature_page

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "tutorials" / "03_inspect_features.ipynb"
SHOTS = ROOT / "test-output" / "browser"
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "no Chromium: run scripts/install_browser.sh"
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer {url} in {timeout}s")


@pytest.fixture
def jupyterlab(tmp_path):
    """JupyterLab serving a copy of tutorial 03 in small mode; yields its base URL and token."""
    root = tmp_path / "notebooks"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    port, token = free_port(), secrets.token_hex(16)
    env = os.environ | {"GSNB_SMALL": "1", "HF_HUB_OFFLINE": "1", "JUPYTER_NO_CONFIG": "1"}
    env["JUPYTERLAB_SETTINGS_DIR"] = str(tmp_path / "settings")
    env["JUPYTERLAB_WORKSPACES_DIR"] = str(tmp_path / "workspaces")
    env["JUPYTER_RUNTIME_DIR"] = str(tmp_path / "runtime")
    log = open(tmp_path / "jupyterlab.log", "wb")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "jupyter"), "lab", "--no-browser",
            f"--port={port}", f"--IdentityProvider.token={token}", "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0",
            "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly", *(["--allow-root"] if os.getuid() == 0 else []),
        ],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_for_server(f"{base}/api/status?token={token}", proc)
        except Exception as error:
            raise RuntimeError((tmp_path / "jupyterlab.log").read_text()[-3000:]) from error
        yield base, token
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the group this fixture started: lab + kernel
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def test_tutorial_03_widgets_render_and_redraw_in_jupyterlab(browser, jupyterlab, tmp_path):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    base, token = jupyterlab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        page.goto(f"{base}/lab/tree/{NOTEBOOK.name}?token={token}", timeout=60_000)
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        select = page.locator(".jp-Dialog button:has-text('Select')")
        try:  # JupyterLab may ask which kernel to start
            select.wait_for(timeout=10_000)
            select.click()
        except PlaywrightTimeout:
            pass
        page.wait_for_selector(
            ".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000
        )
        page.click(".lm-MenuBar-itemLabel:text-is('Run')")
        page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
        page.wait_for_function(  # the last exercise prints "correct: feature ..."
            "() => [...document.querySelectorAll('.jp-OutputArea-output')]"
            ".some(e => e.textContent.includes('correct: feature'))",
            # On a fresh machine the notebook first trains the small suite it shares with 04.
            timeout=900_000,
            polling=1000,
        )
        errors = page.locator(
            ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
        )
        assert "Traceback" not in " ".join(errors.all_text_contents())
        inspector = page.locator(".gsnb-feature-inspector").first
        inspector.scroll_into_view_if_needed()
        page.wait_for_selector(".gsnb-feature-inspector .js-plotly-plot", timeout=30_000)
        assert inspector.locator(".js-plotly-plot").count() >= 3  # histogram, logits, density
        assert inspector.locator(".gsnb-tok").count() > 0  # coloured tokens
        assert page.locator(".gsnb-prompt-inspector .js-plotly-plot").count() >= 1  # heatmap
        header = inspector.locator(".gsnb-header")
        header.scroll_into_view_if_needed()
        # textContent, not innerText: JupyterLab may skip rendering cells scrolled out of view,
        # and innerText of unrendered content is empty.
        current = int(header.text_content().split()[1])
        target = current + 1 if current < 500 else current - 1
        box = inspector.locator("input[type='number']").first
        box.fill(str(target))
        box.press("Enter")
        page.wait_for_function(
            "t => document.querySelector('.gsnb-feature-inspector .gsnb-header')"
            ".textContent.startsWith('feature ' + t + ' ')",
            arg=target,
            timeout=20_000,
        )
        page.wait_for_function(  # the histogram's title names the new feature
            "t => [...document.querySelectorAll('.gsnb-feature-inspector .js-plotly-plot .gtitle')]"
            ".some(e => e.textContent.startsWith('feature ' + t + ':'))",
            arg=target,
            timeout=20_000,
        )
        assert inspector.locator(".gsnb-tok").count() > 0  # the test text, coloured anew
        for _ in range(30):  # "next" until a feature that fired in the corpus (shows examples)
            if inspector.locator(".gsnb-example .gsnb-tok").count():
                break
            shown = inspector.locator(".gsnb-header").text_content()
            inspector.locator("button:has-text('next')").click()
            page.wait_for_function(
                "old => document.querySelector('.gsnb-feature-inspector .gsnb-header')"
                ".textContent != old",
                arg=shown,
                timeout=20_000,
            )
        peak = inspector.locator(".gsnb-example .gsnb-tok").first.get_attribute("data-act")
        assert peak is not None and float(peak) >= 0
        no_news = page.locator(".jp-toast-button:has-text('No')")
        if no_news.count():
            no_news.first.click()
        header.evaluate("e => e.scrollIntoView({block: 'start'})")
        page.screenshot(path=str(SHOTS / "feature_inspector.png"), full_page=False)
    except Exception:
        page.screenshot(path=str(SHOTS / "feature_inspector_failure.png"))
        raise
    finally:
        page.close()


def test_exported_page_renders_offline_from_a_file_url(browser, tmp_path):
    model = tiny_model("gemma3")
    tokens = corpus(model)
    stats = feature_stats(model, random_sae(model, tokens), tokens, k=4, progress=False)
    features = (stats.density > 0).nonzero().flatten()[:3].tolist()
    path = feature_page(stats, tmp_path / "features.html", features=features)
    context = browser.new_context(offline=True)
    requested = []
    context.route(  # anything but the file itself would need a network: refuse and record it
        "**/*",
        lambda route: (
            route.continue_()
            if route.request.url.startswith("file:")
            else (requested.append(route.request.url), route.abort())
        ),
    )
    page = context.new_page()
    try:
        page.goto(path.as_uri())
        page.wait_for_selector(".js-plotly-plot .main-svg", timeout=30_000)
        assert page.locator(".js-plotly-plot").count() == 1 + 2 * len(features)
        for f in features:
            section = page.locator(f"#feature-{f}")
            assert section.locator(".gsnb-header").inner_text().startswith(f"feature {f} ")
            assert section.locator(".gsnb-example .gsnb-tok").count() > 0
            assert section.locator(".js-plotly-plot .main-svg").count() >= 2
        assert requested == []
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "exported_page.png"))
    finally:
        context.close()
