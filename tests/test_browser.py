"""The explorers in a real browser: JupyterLab on a free loopback port (one server for the module),
headless Chromium (driven by playwright, Debian's ``chromium``; playwright never downloads a browser
here). For notebook 09 (masks) and notebook 10 (reconstructions): Run All Cells, move the seed slider,
and check that the explorer's image changes and that no cell shows an error; in notebook 10 also type
a checkpoint path that does not exist and check that it shows as one line in the widget.

Skips with the reason where playwright or Chromium is missing. Set ``COLORMAE_EXPLORE_SCREENSHOT=path``
(notebook 09) or ``COLORMAE_EXPLORE_RECONSTRUCTION_SCREENSHOT=path`` (notebook 10) to also save a
screenshot of the explorer there (``docs/explore_masks.png`` and ``docs/explore_reconstructions.png``
come from such runs).
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
RECONSTRUCTION_NOTEBOOK = ROOT / "notebooks" / "10_explore_reconstructions.ipynb"
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
           "--ServerApp.password=",
           "--ServerApp.disable_check_xsrf=True",  # the kernels' DELETE from the test (loopback, test only)
           f"--ServerApp.root_dir={root_dir}", "--LabApp.extension_manager=readonly",
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


IDLE = "() => /\\| Idle/.test(document.querySelector('#jp-main-statusbar')?.innerText || '')"


def open_and_run_all(page, url: str, notebook: Path) -> None:
    """Open ``notebook`` in JupyterLab, Run All Cells, wait until every cell ran; no cell shows an error."""
    # a workspace of its own, reset: the page shows this notebook only (not the one a test before opened)
    page.goto(f"{url}/lab/workspaces/{notebook.stem}/tree/{notebook.name}?reset")
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=60_000)
    wait_until(page, IDLE, 60, "the kernel to start (status bar: '| Idle')")
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    wait_until(page, ALL_RUN, RUN_ALL_TIMEOUT_S, "every cell to run and both images to show")
    errors = page.evaluate(OUTPUT_ERRORS)
    assert errors == [], f"cells show errors / stderr: {errors}"


def move_seed_slider(page, explorer) -> None:
    """Press ArrowRight three times on the explorer's seed slider; check that its image changes."""
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
    wait_until(page, IDLE, 60, "the kernel to finish the slider's updates")
    page.wait_for_timeout(300)  # let the last image decode before the screenshot
    assert readout.inner_text() != old_value, "the seed slider did not move"
    after_png = image.screenshot()
    assert after_png != before_png, "the explorer's image looks the same after moving the seed slider"


def drive(page, url: str) -> bytes:
    """Open notebook 09, Run All Cells, check the outputs, move the seed slider; the explorer's screenshot."""
    open_and_run_all(page, url, NOTEBOOK)
    explorer = page.locator(".jp-OutputArea-output .widget-hbox").first
    move_seed_slider(page, explorer)
    assert page.evaluate(OUTPUT_ERRORS) == []
    return explorer.screenshot()


def drive_reconstructions(page, url: str) -> bytes:
    """Notebook 10: Run All Cells, move the seed slider (the reconstructions change), type a checkpoint
    path that does not exist (one line under it, no traceback); the explorer's screenshot."""
    open_and_run_all(page, url, RECONSTRUCTION_NOTEBOOK)
    explorer = page.locator(".jp-OutputArea-output .widget-hbox").first
    move_seed_slider(page, explorer)
    assert page.evaluate(OUTPUT_ERRORS) == []
    shot = explorer.screenshot()
    path_a = explorer.locator(".widget-text input").first
    path_a.fill("results/nowhere/model.pth")
    path_a.press("Enter")
    line = explorer.locator(".widget-html", has_text="no such file or folder").first
    line.wait_for(timeout=30_000)
    text = line.inner_text()
    assert "results/nowhere/model.pth: no such file or folder" in text and "\n" not in text.strip(), text
    assert "Traceback" not in explorer.inner_text() and page.evaluate(OUTPUT_ERRORS) == []
    return shot


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """(url, browser): one JupyterLab server (a clean copy of each explorer notebook) and one headless
    Chromium for the module's tests."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright)")
    if CHROMIUM is None or not Path(CHROMIUM).exists():
        pytest.skip("needs Chromium (apt-get install -y chromium; or set COLORMAE_CHROMIUM)")
    tmp = tmp_path_factory.mktemp("lab")
    root_dir, home = tmp / "lab", tmp / "home"
    root_dir.mkdir()
    home.mkdir()
    for notebook in (NOTEBOOK, RECONSTRUCTION_NOTEBOOK):
        clean_copy(notebook, root_dir / notebook.name)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_lab(root_dir, port, home)
    try:
        wait_for_server(url, server, home / "lab.log")
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                yield url, browser
            finally:
                browser.close()
    finally:
        stop(server)


def shutdown_kernels(url: str) -> None:
    """Stop the server's kernels (the next test's notebook then has the CPU to itself)."""
    with urllib.request.urlopen(f"{url}/api/kernels", timeout=10) as r:
        kernels = json.load(r)
    for kernel in kernels:
        urllib.request.urlopen(urllib.request.Request(f"{url}/api/kernels/{kernel['id']}", method="DELETE"),
                               timeout=30).close()


def run_in_browser(lab, drive_notebook, tmp_path: Path, name: str, env: str) -> None:
    start = time.monotonic()
    url, browser = lab
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    try:
        shot = drive_notebook(page=page, url=url)
    finally:
        page.close()
        shutdown_kernels(url)
    (tmp_path / name).write_bytes(shot)
    if os.environ.get(env):
        Path(os.environ[env]).write_bytes(shot)
    print(f"browser test wall time ({name}): {time.monotonic() - start:.1f} s")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_explorer_in_jupyterlab(lab, tmp_path):
    run_in_browser(lab, drive, tmp_path, "explore_masks.png", "COLORMAE_EXPLORE_SCREENSHOT")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_reconstruction_explorer_in_jupyterlab(lab, tmp_path):
    run_in_browser(lab, drive_reconstructions, tmp_path, "explore_reconstructions.png",
                   "COLORMAE_EXPLORE_RECONSTRUCTION_SCREENSHOT")
