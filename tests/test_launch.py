"""Notebook parameters -> engine configs and CLI arguments, and the launcher's checks."""
import pytest
from conftest import MICRO

from colormae.engines.launch import notebook_params, parse_engine_args, run_engine
from colormae.engines.pretrain import PretrainConfig
from colormae.run.config import to_argv


def test_to_argv_round_trips_through_the_generated_parser():
    params = {"mask_ratio": 0.6, "norm_pix_loss": False, "resume": None, "skip_corrupt": True,
              "preset": "mae_vit_base_patch16", "epochs": 8}
    argv = to_argv(PretrainConfig, params)
    # fields at their default (epochs 8, resume None) are left out; False is spelled --no-x
    assert argv == ["--skip-corrupt", "--preset", "mae_vit_base_patch16", "--no-norm-pix-loss", "--mask-ratio", "0.6"]
    assert parse_engine_args("pretrain", argv) == PretrainConfig(**params)


def test_notebook_params_pick_config_fields_only():
    namespace = {"mask": "blue", "epochs": 2, "nproc": 4, "n_show": 8, "In": [], "__name__": "x"}
    assert notebook_params("pretrain", namespace) == {"mask": "blue", "epochs": 2}


def test_run_engine_rejects_bad_arguments():
    with pytest.raises(ValueError, match="engine='train'.*allowed values: pretrain, finetune"):
        run_engine("train", {})
    with pytest.raises(ValueError, match="nproc=0"):
        run_engine("pretrain", {}, nproc=0)
    with pytest.raises(ValueError, match=r"unknown PretrainConfig parameter\(s\) \['no_such_flag'\]"):
        run_engine("pretrain", {"no_such_flag": 1}, nproc=2)  # before any process starts


def test_run_engine_in_process(tmp_path):
    summary = run_engine("pretrain", {"preset": MICRO, "dataset_length": 32, "batch_size": 16,
                                      "epochs": 1, "amp": "none", "output_dir": str(tmp_path)})
    assert summary["steps"] == 2 and (tmp_path / "summary.json").exists()


def test_project_path_is_relative_to_the_repository_root(tmp_path):
    from colormae.files import ROOT, project_path
    assert project_path("results/x") == ROOT / "results" / "x"
    assert project_path(tmp_path) == tmp_path
    assert (ROOT / "colormae" / "runtime.py").exists()


def test_only_the_notebooks_default_encoder_is_pretrained_when_missing(tmp_path):
    from colormae.engines.launch import pretrained_encoder
    default = tmp_path / "default_run"
    with pytest.raises(FileNotFoundError, match="typo_run not found.*Only the notebook's default"):
        pretrained_encoder(str(tmp_path / "typo_run"), default=str(default))
    assert not (tmp_path / "typo_run").exists()  # a typo never turns into a freshly trained model
    with pytest.raises(FileNotFoundError, match="has no encoder.pth: run notebook 01"):
        pretrained_encoder(str(default), default=str(default), pretrain_if_missing=False)
    micro = {"preset": MICRO, "dataset_length": 32, "batch_size": 16, "epochs": 1, "amp": "none"}
    assert pretrained_encoder(str(default), default=str(default), pretrain_params=micro) == str(default)
    assert (default / "encoder.pth").exists()
    stamp = (default / "encoder.pth").stat().st_mtime_ns
    pretrained_encoder(str(default), default=str(default), pretrain_params=micro)  # present: used as it is
    assert (default / "encoder.pth").stat().st_mtime_ns == stamp
