"""Notebook 09's mask explorer in a real browser: JupyterLab on a free loopback port, headless Chromium
(driven by playwright, Debian's ``chromium``; playwright never downloads a browser here), Run All Cells,
move the seed slider, and check that the explorer's image changes and that no cell shows an error.

Skips with the reason where playwright or Chromium is missing. Set ``COLORMAE_EXPLORE_SCREENSHOT=path``
to also save a screenshot of the explorer there (``docs/explore_masks.png`` comes from such a run).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "09_explore.ipynb"
CHROMIUM = os.environ.get("COLORMAE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
RUN_ALL_TIMEOUT_S = 150  # kernel start + torch import + every cell, on 2 busy cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_copy(src: Path, dst: Path) -> None:
    """The notebook without outputs or saved widget state, so everything seen comes from this run."""
    nb = json.loads(src.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    nb["metadata"].pop("widgets", None)
    dst.write_text(json.dumps(nb))


def start_lab(root_dir: Path, port: int, home: Path) -> subprocess.Popen:
    settings = home / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false",
                                                                           "checkForUpdates": False}))
    cmd = [sys.executable, "-m", "jupyter", "lab", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", "--ServerApp.open_browser=False", "--IdentityProvider.token=",
           "--ServerApp.password=", f"--ServerApp.root_dir={root_dir}", "--LabApp.extension_manager=readonly",
           f"--LabApp.user_settings_dir={home / 'user-settings'}", f"--LabApp.workspaces_dir={home / 'workspaces'}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTER_PLATFORM_DIRS": "1"}
    log = open(home / "lab.log", "w")
    return subprocess.Popen(cmd, cwd=root_dir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_server(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/status", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer at {url} within {timeout} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its kernels (their own session)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


PROMPTS = "() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent.trim())"


def wait_until(page, script: str, timeout_s: float, what: str, arg=None):
    try:
        return page.wait_for_function(script, arg=arg, timeout=timeout_s * 1000, polling=250)
    except Exception as e:  # playwright's TimeoutError: say what we waited for, and what the page shows
        shot = Path(os.environ.get("PYTEST_TMPDIR", "/tmp")) / "colormae_browser_failure.png"
        page.screenshot(path=str(shot), full_page=True)
        pytest.fail(f"waited {timeout_s} s for {what}: {type(e).__name__}: {str(e)[:200]}; prompts "
                    f"{page.evaluate(PROMPTS)}, images {page.locator('.jp-OutputArea-output img').count()}, "
                    f"page screenshot {shot}")


ALL_RUN = """() => {
  const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent.trim());
  // every code cell numbered (none pending "[*]" or unrun "[ ]") and both images shown
  const imgs = document.querySelectorAll('.jp-OutputArea-output img');
  return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p)) && imgs.length >= 2;
}"""
OUTPUT_ERRORS = """() => [...document.querySelectorAll('.jp-OutputArea-output')]
  .filter(o => o.dataset.mimeType === 'application/vnd.jupyter.stderr' || /Error displaying widget|Traceback/
  .test(o.textContent)).map(o => o.textContent.slice(0, 500))"""


def drive(page, url: str) -> bytes:
    """Open notebook 09, Run All Cells, check the outputs, move the seed slider; the explorer's screenshot."""
    page.goto(f"{url}/lab/tree/{NOTEBOOK.name}")
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=60_000)
    wait_until(page, "() => /\\| Idle/.test(document.querySelector('#jp-main-statusbar')?.innerText || '')", 60,
               "the kernel to start (status bar: '| Idle')")
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    wait_until(page, ALL_RUN, RUN_ALL_TIMEOUT_S, "every cell to run and both images to show")
    errors = page.evaluate(OUTPUT_ERRORS)
    assert errors == [], f"cells show errors / stderr: {errors}"

    explorer = page.locator(".jp-OutputArea-output .widget-hbox").first
    image = explorer.locator("img.widget-image").first
    image.wait_for(timeout=30_000)
    explorer.scroll_into_view_if_needed()
    before_src, before_png = image.get_attribute("src"), image.screenshot()
    seed = explorer.locator(".widget-slider", has=page.locator(".widget-label", has_text="seed")).first
    readout = seed.locator(".widget-readout")
    old_value = readout.inner_text()
    seed.locator(".noUi-handle").first.focus()
    for _ in range(3):
        page.keyboard.press("ArrowRight")
    wait_until(page, "([el, old]) => el.src !== old", 60, "the explorer's image to change",
               arg=[image.element_handle(), before_src])
    page.wait_for_timeout(300)  # let the new image decode before the screenshot
    assert readout.inner_text() != old_value, "the seed slider did not move"
    after_png = image.screenshot()
    assert after_png != before_png, "the mask image looks the same after moving the seed slider"
    assert page.evaluate(OUTPUT_ERRORS) == []
    return explorer.screenshot()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_explorer_in_jupyterlab(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright)")
    if CHROMIUM is None or not Path(CHROMIUM).exists():
        pytest.skip("needs Chromium (apt-get install -y chromium; or set COLORMAE_CHROMIUM)")
    start = time.monotonic()
    root_dir, home = tmp_path / "lab", tmp_path / "home"
    root_dir.mkdir()
    home.mkdir()
    clean_copy(NOTEBOOK, root_dir / NOTEBOOK.name)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_lab(root_dir, port, home)
    try:
        wait_for_server(url, server, home / "lab.log")
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                shot = drive(page=browser.new_page(viewport={"width": 1500, "height": 1100}), url=url)
            finally:
                browser.close()
    finally:
        stop(server)
    (tmp_path / "explore_masks.png").write_bytes(shot)
    if os.environ.get("COLORMAE_EXPLORE_SCREENSHOT"):
        Path(os.environ["COLORMAE_EXPLORE_SCREENSHOT"]).write_bytes(shot)
    print(f"browser test wall time: {time.monotonic() - start:.1f} s")
