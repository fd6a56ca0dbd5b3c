"""The submitit launcher runs the same pretraining CLI (submitit's in-process debug cluster)."""
import pytest

pytest.importorskip("submitit", reason="submitit is the optional [slurm] extra")

from colormae.runtime import read_metrics  # noqa: E402
from colormae.submit import Job, main  # noqa: E402


def test_submit_runs_pretrain_cli(tmp_path):
    out = tmp_path / "run"
    job = main(["--cluster", "debug", "--gpus-per-node", "0", "--nodes", "1", "--", "--preset",
                "mae_vit_micro_patch4_32", "--dataset-length", "32", "--batch-size", "16", "--epochs", "1",
                "--amp", "none", "--device", "cpu", "--log-every", "1", "--output-dir", str(out)])
    summary = job.result()
    assert summary["steps"] == 2 and (out / "encoder.pth").exists()
    assert len(read_metrics(out)) == 2


def test_requeue_resumes():
    resubmission = Job("pretrain", ["--epochs", "3", "--resume", "x.pth"]).checkpoint()
    assert resubmission.function.argv == ["--epochs", "3", "--resume", "auto"]
