"""The submitit launcher: a clear exit without Slurm, the in-process debug cluster really runs the
pretraining CLI, and a preempted job requeues itself with ``--resume auto``."""
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("submitit", reason="submitit is the optional [slurm] extra")

from colormae.engines import submit  # noqa: E402
from colormae.engines.submit import Job, main, requeue_argv  # noqa: E402
from colormae.run.rundir import read_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NO_SLURM = "Slurm not found (no sbatch on PATH); use --cluster local to run on this machine"


def path_without_slurm(tmp_path):
    """A PATH with this Python but no sbatch/srun (tests must not depend on the machine having Slurm)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(sys.executable, bin_dir / "python")
    return str(bin_dir)


def test_no_slurm_is_one_clear_line(tmp_path):
    env = {**os.environ, "PATH": path_without_slurm(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "colormae", "submit", "--", "--epochs", "1",
                           "--output-dir", str(tmp_path / "run")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(NO_SLURM), proc.stderr
    assert not (tmp_path / "run").exists()  # nothing was submitted, no folder created


def test_no_slurm_in_process(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(submit.shutil, "which", lambda cmd: None)
    with pytest.raises(SystemExit) as e:
        main(["--cluster", "slurm", "--", "--output-dir", str(tmp_path / "run")])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().endswith(NO_SLURM)


def test_debug_cluster_runs_pretraining_in_process(tmp_path):
    out = tmp_path / "run"
    summary = main(["--cluster", "debug", "--gpus-per-node", "0", "--", "--preset", "mae_vit_micro_patch4_32",
                    "--dataset-length", "64", "--batch-size", "32", "--epochs", "1", "--device", "cpu",
                    "--output-dir", str(out)])
    assert (out / "summary.json").exists()  # it ran, here, before main returned
    assert isinstance(summary, dict) and summary["steps"] == 2
    assert json.loads((out / "summary.json").read_text())["steps"] == 2
    assert len([r for r in read_metrics(out) if "loss" in r and "step" in r]) >= 1


def test_requeue_resumes():
    resubmission = Job("pretrain", ["--epochs", "3", "--resume", "x.pth"]).checkpoint()
    assert resubmission.function.argv == ["--epochs", "3", "--resume", "auto"]
    assert resubmission.function.job == "pretrain"
    assert requeue_argv(["--resume=x.pth", "--epochs", "3"]) == ["--epochs", "3", "--resume", "auto"]
    assert requeue_argv(["--epochs", "3"]) == ["--epochs", "3", "--resume", "auto"]
    # requeued twice: still one --resume
    again = resubmission.function.checkpoint().function.argv
    assert again == ["--epochs", "3", "--resume", "auto"]


def test_job_is_picklable():
    job = pickle.loads(pickle.dumps(Job("finetune", ["--epochs", "1"])))
    assert (job.job, job.argv) == ("finetune", ["--epochs", "1"])
    resub = pickle.loads(pickle.dumps(job.checkpoint()))
    assert resub.function.argv == ["--epochs", "1", "--resume", "auto"]
