"""Notebook parameters -> CLI arguments, and the launcher's checks."""
import pytest

from colormae.launch import run_engine, to_argv


def test_to_argv():
    assert to_argv({"mask_ratio": 0.75, "norm_pix_loss": True, "resume": None, "skip_corrupt": False,
                    "preset": "mae_vit_base_patch16"}) == ["--mask-ratio", "0.75", "--norm-pix-loss", "--preset",
                                                          "mae_vit_base_patch16"]


def test_run_engine_rejects_bad_arguments():
    with pytest.raises(ValueError, match="engine='train'.*allowed values: pretrain, finetune"):
        run_engine("train", {})
    with pytest.raises(ValueError, match="nproc=0"):
        run_engine("pretrain", {}, nproc=0)
    with pytest.raises(SystemExit):  # argparse: unknown flag, before any process starts
        run_engine("pretrain", {"no_such_flag": 1}, nproc=2)


def test_run_engine_in_process(tmp_path):
    summary = run_engine("pretrain", {"preset": "mae_vit_micro_patch4_32", "dataset_length": 32, "batch_size": 16,
                                      "epochs": 1, "amp": "none", "output_dir": str(tmp_path)})
    assert summary["steps"] == 2 and (tmp_path / "summary.json").exists()


def test_project_path_is_relative_to_the_repository_root(tmp_path):
    from colormae.runtime import ROOT, project_path
    assert project_path("results/x") == ROOT / "results" / "x"
    assert project_path(tmp_path) == tmp_path
    assert (ROOT / "colormae" / "runtime.py").exists()
