"""Shared test helpers."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def one_thread():
    """Thousands of tiny ops: with 2 threads on busy shared cores, every op waits out a descheduled
    OpenMP thread (a 0.2 s probe took 30 s). One thread is also faster at these sizes."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_one_and_two_processes(cli: list[str], out: Path, global_batch: int) -> tuple[Path, Path]:
    """Run ``python -m ...`` once in one process and once under ``torchrun`` with 2 gloo processes,
    same global batch; returns the two output directories (``out/one``, ``out/two``)."""
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun is not on PATH")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {"one": [sys.executable, *cli, "--batch-size", str(global_batch)],
            "two": ["torchrun", "--standalone", "--nproc_per_node", "2", *cli, "--batch-size", str(global_batch // 2)]}
    for name, cmd in runs.items():
        proc = subprocess.run([*cmd, "--device", "cpu", "--output-dir", str(out / name)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}"
    return out / "one", out / "two"
