"""Shared test helpers."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the smallest preset (32 px, patch 4: an 8 x 8 grid, 2 blocks of width 64): every test that trains uses it
MICRO = "mae_vit_micro_patch4_32"


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory):
    """Factory of finished micro pretraining runs: ``micro_run(mask="green", norm_pix_loss=None)`` ->
    the run directory (encoder.pth, checkpoint-last.pth, summary.json) of MICRO pretrained for 1 epoch
    on 64 embedded crops, batch 32, fp32 (amp none), seed 0, on the CPU; ``norm_pix_loss`` None is the
    preset's (off). One run per argument set for the whole session (a few seconds each): treat it as
    read-only, copy it (``shutil.copytree``) where a test writes beside it. Pinned numbers
    (tests/test_notebooks.py) come from these settings."""
    runs: dict[tuple, Path] = {}

    def make(mask: str = "green", norm_pix_loss: bool | None = None) -> Path:
        key = (mask, norm_pix_loss)
        if key not in runs:
            from colormae.engines.pretrain import PretrainConfig, run
            out = tmp_path_factory.mktemp(f"micro_{mask}_{'preset' if norm_pix_loss is None else norm_pix_loss}")
            run(PretrainConfig(preset=MICRO, dataset="embedded", dataset_length=64, epochs=1, batch_size=32, amp="none",
                               mask=mask, norm_pix_loss=norm_pix_loss, seed=0, device="cpu", output_dir=str(out)))
            runs[key] = out
        return runs[key]

    return make


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
