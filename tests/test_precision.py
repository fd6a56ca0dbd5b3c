"""Precision: what ``--amp auto`` resolves to (``runtime.resolve_amp``: on a CPU by encoder size), and that
it never changes the precision a run, a grid or a rebuild recorded (``Run.precision``,
``experiments.grids.grid_precision``, ``_rebuild_weights``).

"This machine" is simulated: ``cpu_has_native_bf16`` patched (the capability probe) and, where a test
needs auto to say bf16 for the micro preset, the size threshold lowered to 1."""
import json
import logging
from dataclasses import replace

import pytest
import torch
from conftest import MICRO

from colormae import runtime
from colormae.engines.pretrain import PretrainConfig
from colormae.engines.pretrain import run as pretrain
from colormae.experiments import grids
from colormae.files import load_checkpoint, save_torch
from colormae.models.backbone import encoder_width_tokens, export_width_tokens
from colormae.models.mae import MaskedAutoencoder, get_config, untrained_encoder

CPU = torch.device("cpu")

# (preset, encoder width x kept tokens at 75 % masking written out, what auto picks on a CPU with native
# bf16). The first three are the measured ones (bf16/fp32 speed 0.74, 0.95, 1.29: docs/runs.md).
RULE = [
    ("mae_vit_mini_patch4_32", 128 * 16, "none"),
    ("mae_vit_nano_patch2_32", 96 * 64, "none"),
    ("mae_vit_tiny_patch4_64", 192 * 64, "bf16"),
    ("mae_vit_micro_patch4_32", 64 * 16, "none"),
    ("mae_vit_tiny_patch4_32", 192 * 16, "none"),
    ("mae_vit_tiny_patch2_32", 192 * 64, "bf16"),
    ("mae_vit_base_patch16", 768 * 49, "bf16"),
]


@pytest.mark.parametrize("preset, width_tokens, auto", RULE)
def test_auto_on_a_cpu_follows_the_measured_size_rule(preset, width_tokens, auto, monkeypatch):
    mcfg = get_config(preset)
    assert encoder_width_tokens(MaskedAutoencoder(mcfg), mcfg.grid ** 2 // 4) == width_tokens
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert runtime.resolve_amp("auto", CPU, width_tokens) == auto
    assert runtime.resolve_amp("auto", CPU, None) == "none"  # size unknown: fp32
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)  # emulated bf16: always fp32
    assert runtime.resolve_amp("auto", CPU, width_tokens) == "none"
    assert runtime.resolve_amp("auto", torch.device("cuda"), width_tokens) == "bf16"  # CUDA as before
    for explicit in ("bf16", "fp16", "none"):
        assert runtime.resolve_amp(explicit, CPU, width_tokens) == explicit


def test_threshold_and_the_sizes_of_exports(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert runtime.CPU_BF16_MIN_WIDTH_TOKENS == 8192  # between nano (6,144: 0.95) and tiny_patch4_64 (12,288: 1.29)
    assert runtime.resolve_amp("auto", CPU, 8191) == "none" and runtime.resolve_amp("auto", CPU, 8192) == "bf16"
    # evaluation and fine-tuning see every patch: the grid16 encoder is 96 x 256
    nano = untrained_encoder("mae_vit_nano_patch2_32", 0)
    assert export_width_tokens(nano) == 96 * 256 and export_width_tokens(nano, 16) == 96 * 64


def _cfg(out, **kw) -> PretrainConfig:
    return PretrainConfig(**{"preset": MICRO, "dataset": "embedded", "dataset_length": 64, "epochs": 2,
                             "batch_size": 32, "amp": "auto", "seed": 0, "device": "cpu", "output_dir": str(out),
                             **kw})


def _this_machine_says_bf16(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(runtime, "CPU_BF16_MIN_WIDTH_TOKENS", 1)


@pytest.mark.parametrize("checkpoint_records_it", [True, False])  # False: a checkpoint older than the record
def test_a_resumed_fp32_run_stays_fp32_where_auto_would_now_choose_bf16(checkpoint_records_it, tmp_path,
                                                                        monkeypatch, caplog, one_thread):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)  # the AVX2 machine that started it
    cut = pretrain(_cfg(tmp_path / "run", max_steps=2))
    assert cut["amp"] == "none" and not cut["finished"]
    last = tmp_path / "run" / "checkpoint-last.pth"
    assert load_checkpoint(last)["amp"] == "none"
    if not checkpoint_records_it:  # then the summary written at the stop says it
        ckpt = load_checkpoint(last)
        del ckpt["amp"]
        save_torch(ckpt, last)
    _this_machine_says_bf16(monkeypatch)
    assert pretrain(_cfg(tmp_path / "fresh", max_steps=1))["amp"] == "bf16"  # a new run here: bf16
    with caplog.at_level(logging.INFO, logger="colormae.run.scaffold"):
        resumed = pretrain(_cfg(tmp_path / "run", resume="auto"))
    assert resumed["finished"] and resumed["amp"] == "none" and load_checkpoint(last)["amp"] == "none"
    assert caplog.text.count("auto would choose bf16") == 1
    # it really computed in fp32: the weights of an uninterrupted fp32 run, bit for bit
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    pretrain(_cfg(tmp_path / "whole"))
    whole = load_checkpoint(tmp_path / "whole" / "checkpoint-last.pth")["model"]
    for name, value in load_checkpoint(last)["model"].items():
        assert torch.equal(value, whole[name]), name


def _grid(out, seeds=(0,)) -> grids.GridSpec:
    return grids.GridSpec(masks=("random",), seeds=seeds, out=str(out),
                          pretrain=dict(preset=MICRO, dataset="embedded", dataset_length=64, epochs=1, batch_size=32,
                                        amp="auto", mask_ratio=0.75),
                          evaluate=dict(linprobe_epochs=2, knn_k=5, amp="auto", batch_size=64, train_length=64,
                                        test_length=32))


def test_a_grid_resolves_its_precision_once_and_keeps_it(tmp_path, monkeypatch, one_thread):
    out = tmp_path / "grid"
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    grids.run_grid(_grid(out), "cpu")
    recorded = json.loads((out / "grid.json").read_text())
    assert recorded["precision"] == {"pretrain": "none", "evaluate": "none"}
    assert recorded["pretrain"]["amp"] == recorded["evaluate"]["amp"] == "auto"  # the settings as given
    _this_machine_says_bf16(monkeypatch)
    new_grid = {"pretrain": "bf16", "evaluate": "bf16", "finetune": None}
    assert grids.grid_precision(_grid(tmp_path / "elsewhere"), "cpu") == new_grid  # a new grid here: bf16
    assert grids.grid_precision(_grid(out), "cpu") == {**new_grid, "pretrain": "none", "evaluate": "none"}
    # a grid.json written before the record: the runs' own records decide (an older eval.json without
    # its precision: the pretraining's)
    del recorded["precision"]
    (out / "grid.json").write_text(json.dumps(recorded))
    ev_path = out / "runs" / "random_seed0" / "eval.json"
    ev = json.loads(ev_path.read_text())
    assert ev["evaluation"]["amp"] == "none"
    del ev["evaluation"]["amp"]
    ev_path.write_text(json.dumps(ev))
    assert grids.grid_precision(_grid(out), "cpu")["evaluate"] == "none"
    # the grid grows by a seed on this machine: the new run computes in the grid's precision
    grids.run_grid(_grid(out, seeds=(0, 1)), "cpu")
    assert json.loads((out / "runs" / "random_seed1" / "summary.json").read_text())["amp"] == "none"
    assert json.loads((out / "runs" / "random_seed1" / "eval.json").read_text())["evaluation"]["amp"] == "none"
    assert json.loads((out / "grid.json").read_text())["precision"] == {"pretrain": "none", "evaluate": "none"}


def test_runs_of_several_precisions_in_one_grid_are_refused(tmp_path):
    out = tmp_path / "grid"
    for seed, amp in ((0, "none"), (1, "bf16")):
        (out / "runs" / f"random_seed{seed}").mkdir(parents=True)
        (out / "runs" / f"random_seed{seed}" / "summary.json").write_text(json.dumps({"amp": amp}))
    with pytest.raises(ValueError, match="pretrain precision differs \\(bf16, none\\)"):
        grids.grid_precision(_grid(out), "cpu")


def test_rebuild_weights_computes_in_the_recorded_precision(tmp_path, monkeypatch, caplog, one_thread):
    """A fresh clone on a CPU where auto says bf16: the rebuild still reproduces the fp32 record."""
    out = tmp_path / "grid"
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    grids.run_grid(_grid(out), "cpu")
    run = out / "runs" / "random_seed0"
    for name in ("encoder.pth", "checkpoint-last.pth"):
        (run / name).unlink()
    _this_machine_says_bf16(monkeypatch)
    with caplog.at_level(logging.INFO, logger="colormae.experiments.grids"):
        grids.run_grid(replace(_grid(out)), "cpu", rebuild_weights=True)
    assert json.loads((run / "rebuild" / "summary.json").read_text())["amp"] == "none"
    assert "reproduces the record" in caplog.text and (run / "encoder.pth").is_file()
