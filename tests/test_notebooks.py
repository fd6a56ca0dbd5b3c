"""Every notebook executes under nbval (lax mode: cells marked ``# NBVAL_CHECK_OUTPUT`` must also
reproduce their stored output), with tiny papermill parameters where the default is too slow."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import papermill
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"

# Parameters that make a notebook finish in well under a minute on 2 CPU cores. The output dir is
# added by the test so nothing lands in the repository.
TINY: dict[str, dict] = {
    "00_color_noise.ipynb": {},
}


def run_nbval(notebook: str, tmp_path: Path, output_param: str = "out_dir") -> None:
    src = NOTEBOOKS / notebook
    prepared = tmp_path / notebook
    params = {**TINY.get(notebook, {}), output_param: str(tmp_path / "out")}
    papermill.execute_notebook(src, prepared, parameters=params, prepare_only=True, cwd=NOTEBOOKS)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
           "--nbval-sanitize-with", str(ROOT / "tests" / "nbval_sanitize.cfg"), str(prepared),
           "-o", "addopts=", "--rootdir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=NOTEBOOKS, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"nbval failed for {notebook}:\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"


@pytest.mark.parametrize("notebook", sorted(TINY))
def test_notebook_under_nbval(notebook, tmp_path):
    run_nbval(notebook, tmp_path)
