"""The training loop without per-step host syncs (issue 24): the loss guard reads the device every
--log-every steps and before every checkpoint, never saves non-finite weights, stops within
log_every steps of a bad loss; fused/foreach AdamW; --compile; gradient accumulation."""
import dataclasses
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import MICRO

from colormae.engines import pretrain
from colormae.files import load_checkpoint
from colormae.models.mae import MaskedAutoencoder
from colormae.run import scaffold
from colormae.run.config import build_parser, experiment_fields
from colormae.run.rundir import RunDir, config_record, read_metrics

ROOT = Path(__file__).resolve().parents[1]
LOOP_FILES = ("colormae/run/scaffold.py", "colormae/run/rundir.py", "colormae/engines/pretrain.py")


def cfg(out, **kw) -> pretrain.PretrainConfig:
    # 256 crops at batch 16: 16 optimizer steps per epoch
    base = dict(preset=MICRO, dataset="embedded", dataset_length=256, epochs=2, batch_size=16, warmup_epochs=0.5,
                blr=1e-3, amp="none", output_dir=str(out), log_every=5, seed=0, device="cpu", checkpoint_minutes=0)
    return pretrain.PretrainConfig(**{**base, **kw})


def all_finite(state: dict) -> bool:
    return all(bool(v.isfinite().all()) for v in state.values() if torch.is_tensor(v) and v.is_floating_point())


def nan_loss_at(monkeypatch, call: int) -> list:
    """MaskedAutoencoder.loss returns NaN on its ``call``-th call (1-based); returns the call log."""
    real, calls = MaskedAutoencoder.loss, []

    def loss(self, imgs, pred, mask):
        calls.append(1)
        out = real(self, imgs, pred, mask)
        return out * float("nan") if len(calls) == call else out
    monkeypatch.setattr(MaskedAutoencoder, "loss", loss)
    return calls


def saved_steps(monkeypatch) -> list:
    saved, real = [], RunDir.save
    monkeypatch.setattr(RunDir, "save", lambda self, state, name="checkpoint-last.pth": saved.append(
        state["step"]) or real(self, state, name))
    return saved


def test_a_nan_loss_stops_by_the_next_read_and_the_checkpoint_is_from_before_it(tmp_path, monkeypatch):
    """NaN in the loss of optimizer step 22 (epoch 1; the error names the step count before it, 21):
    no read at steps 21-24 (log_every 5), so the run goes on to the read at step 25 and stops there
    (<= 21 + log_every); the last checkpoint is the epoch-0 one (step 16), finite."""
    calls = nan_loss_at(monkeypatch, 22)
    saved = saved_steps(monkeypatch)
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 1, step 21: stopping\. The last good "
                                                 r"checkpoint is .*checkpoint-last\.pth"):
        pretrain.run(cfg(tmp_path))
    assert len(calls) == 25  # stopped at the read of step 25, not at once
    assert saved == [16]
    ckpt = load_checkpoint(tmp_path / "checkpoint-last.pth")
    assert ckpt["step"] == 16 and all_finite(ckpt["model"])
    steps = [r["step"] for r in read_metrics(tmp_path) if "loss" in r]
    assert steps == [1, 5, 10, 15, 20]  # no record from the NaN step or after it


def test_no_checkpoint_holds_a_step_at_or_after_a_nan_loss(tmp_path, monkeypatch):
    """A checkpoint by the clock after every step: the save after the NaN step reads the queue first
    and stops; checkpoint-last on disk is the step before, finite. (Planted: a save without the read
    and the weights check wrote NaN weights at step 22.)"""
    nan_loss_at(monkeypatch, 22)
    saved = saved_steps(monkeypatch)
    with pytest.raises(FloatingPointError, match="loss is nan at epoch 1, step 21"):
        pretrain.run(cfg(tmp_path, checkpoint_minutes=1e-9))
    assert saved[-1] == 21
    ckpt = load_checkpoint(tmp_path / "checkpoint-last.pth")
    assert ckpt["step"] == 21 and all_finite(ckpt["model"])


def test_non_finite_weights_are_never_saved_even_with_finite_losses(tmp_path, monkeypatch):
    """Weights turned NaN after a finite loss (here: poisoned in place during step 6): the loss
    guard has nothing to see, the weights check before the save refuses them."""
    real, calls = MaskedAutoencoder.loss, []

    def loss(self, imgs, pred, mask):
        calls.append(1)
        out = real(self, imgs, pred, mask)
        if len(calls) == 6:
            with torch.no_grad():
                self.decoder_pred.bias.fill_(float("nan"))
        return out
    monkeypatch.setattr(MaskedAutoencoder, "loss", loss)
    with pytest.raises(FloatingPointError, match=r"non-finite weights at step 6 \(decoder_pred\.bias\): not saved; "
                                                 r"the last good checkpoint .*checkpoint-last\.pth is kept"):
        pretrain.run(cfg(tmp_path, checkpoint_minutes=1e-9))
    ckpt = load_checkpoint(tmp_path / "checkpoint-last.pth")
    assert ckpt["step"] == 5 and all_finite(ckpt["model"])


def test_check_finite_weights_names_the_entries(tmp_path):
    good = {"a": torch.ones(3), "n": torch.tensor(3)}  # integer entries are not weights
    scaffold.check_finite_weights(good, 1, tmp_path / "none.pth")
    with pytest.raises(FloatingPointError, match=r"step 7 \(b, c\): not saved; no checkpoint exists yet"):
        scaffold.check_finite_weights({**good, "b": torch.tensor([1.0, float("inf")]),
                                       "c": torch.tensor([float("nan")])}, 7, tmp_path / "none.pth")


class HostReads:
    """Counts host reads of tensors (.item, .tolist, bool, float, int, .cpu, .numpy) made by the
    loop's own code (LOOP_FILES), not by torch, timm or the data and mask code."""

    METHODS = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy")

    def __init__(self, monkeypatch):
        self.count = 0
        for name in self.METHODS:
            monkeypatch.setattr(torch.Tensor, name, self._wrap(getattr(torch.Tensor, name)))

    def _wrap(self, method):
        def counted(t, *a, **k):
            caller = sys._getframe(1).f_code.co_filename.replace("\\", "/")
            if caller.endswith(LOOP_FILES):
                self.count += 1
            return method(t, *a, **k)
        return counted


@pytest.mark.parametrize("log_every", [1, 4])
def test_host_reads_follow_log_every_not_the_step_count(tmp_path, monkeypatch, log_every):
    """16 steps (1 epoch): reads at step 1 and every log_every steps, plus one for the weights check of
    the epoch's checkpoint. (Planted: the old per-step loss.item() gave >= 16 at log_every 4.)"""
    reads = HostReads(monkeypatch)
    summary = pretrain.run(cfg(tmp_path, epochs=1, log_every=log_every))
    assert summary["steps"] == 16
    n_reads = len({1, *range(log_every, 17, log_every)})
    assert reads.count == n_reads + 1, reads.count
    records = [r for r in read_metrics(tmp_path) if "loss" in r]
    assert [r["step"] for r in records] == sorted({1, *range(log_every, 17, log_every)})


def test_log_every_changes_no_logged_value(tmp_path):
    """The same run logged every step and every 4 steps: the same losses at the common steps, the
    same epoch means and final loss (the delayed read sums what a per-step read summed)."""
    a = pretrain.run(cfg(tmp_path / "a", epochs=1, log_every=1))
    b = pretrain.run(cfg(tmp_path / "b", epochs=1, log_every=4))
    la = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "a") if "loss" in r}
    lb = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "b") if "loss" in r}
    assert lb == {s: la[s] for s in lb}
    ea = [r["epoch_loss"] for r in read_metrics(tmp_path / "a") if "epoch_loss" in r]
    eb = [r["epoch_loss"] for r in read_metrics(tmp_path / "b") if "epoch_loss" in r]
    assert ea == eb and a["final_loss"] == b["final_loss"] and a["last_batch_loss"] == b["last_batch_loss"]
    assert a["final_loss"] == pytest.approx(sum(la.values()) / 16, rel=1e-12)


# -- optimizer ---------------------------------------------------------------------------------

def test_adamw_is_foreach_on_cpu_fused_on_cuda_and_keeps_the_groups(tmp_path, monkeypatch):
    """The engine's optimizer: foreach on the CPU (fused on CUDA), through timm's factory with the
    weight-decay exemptions unchanged; the summary records the implementation."""
    assert scaffold.adamw_options(torch.device("cuda")) == {"fused": True}
    assert scaffold.adamw_options(torch.device("cpu")) == {"foreach": True}
    made = []
    real = pretrain.create_optimizer_v2
    monkeypatch.setattr(pretrain, "create_optimizer_v2", lambda model, **kw: made.append((model, kw)) or
                        real(model, **kw))
    summary = pretrain.run(cfg(tmp_path, epochs=1, max_steps=1))
    model, kw = made[0]
    assert kw["foreach"] is True and "fused" not in kw and summary["adamw"] == "foreach"
    opt = real(model, **kw)
    assert opt.defaults["foreach"] is True and not opt.defaults.get("fused")
    names = {id(p): n for n, p in model.named_parameters()}
    by_decay = {g["weight_decay"]: {names[id(p)] for p in g["params"]} for g in opt.param_groups}
    assert sorted(by_decay) == [0.0, 0.05]
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # sin-cos positions are fixed
    assert by_decay[0.0] == {n for n, p in trained if p.ndim <= 1 or n in model.no_weight_decay()}
    assert by_decay[0.0] | by_decay[0.05] == {n for n, _ in trained}
    assert "cls_token" in by_decay[0.0] and "blocks.0.attn.qkv.weight" in by_decay[0.05]


# -- gradient accumulation ------------------------------------------------------------------------

def test_accum_iter_scales_the_lr_by_the_effective_batch_and_accumulates(tmp_path, monkeypatch):
    """--batch-size 8 --accum-iter 2 is one optimizer step per 16 images: lr = blr x 16 / 256, and the
    gradient the step applies equals batch 16's (same images, same masks) up to float rounding."""
    grads = []
    real = torch.optim.AdamW.step

    def step(self, *a, **k):
        grads.append([p.grad.clone() for g in self.param_groups for p in g["params"]])
        return real(self, *a, **k)
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    one_step = dict(epochs=1, max_steps=1, mask="random")
    a = pretrain.run(cfg(tmp_path / "acc", batch_size=8, accum_iter=2, **one_step))
    b = pretrain.run(cfg(tmp_path / "one", batch_size=16, **one_step))
    assert a["effective_batch"] == b["effective_batch"] == 16 and a["accum_iter"] == 2
    assert a["lr"] == b["lr"] == pytest.approx(1e-3 * 16 / 256, rel=1e-12)
    big = pretrain.run(cfg(tmp_path / "big", epochs=1, batch_size=8, accum_iter=4, max_steps=1))
    assert big["lr"] == pytest.approx(1e-3 * 32 / 256, rel=1e-12) and big["effective_batch"] == 32
    assert len(grads) == 3
    ga, gb = grads[0], grads[1]
    assert len(ga) == len(gb) and max(g.abs().max().item() for g in gb) > 1e-3
    for x, y in zip(ga, gb):
        assert torch.allclose(x, y, atol=1e-6, rtol=1e-4)


# -- torch.compile ---------------------------------------------------------------------------------

def test_compile_flags_are_how_it_runs_not_what(tmp_path):
    c = cfg(tmp_path)
    assert "compile" not in experiment_fields(pretrain.PretrainConfig)
    assert "compile_mode" not in experiment_fields(pretrain.PretrainConfig)
    from colormae.run.rundir import check_same_experiment
    check_same_experiment({**config_record(c), "compile": True, "compile_mode": "reduce-overhead"}, c, "x")
    args = build_parser(pretrain.PretrainConfig).parse_args(["--compile", "--compile-mode", "reduce-overhead"])
    assert args.compile and args.compile_mode == "reduce-overhead"
    with pytest.raises(ValueError, match="compile_mode='reduce-overhead' without compile=True is unused"):
        pretrain.run(dataclasses.replace(c, compile_mode="reduce-overhead"))
    with pytest.raises(ValueError, match="compile_mode='fast' is not supported; allowed values: default, "
                                         "reduce-overhead"):
        pretrain.run(dataclasses.replace(c, compile=True, compile_mode="fast"))
    assert not (tmp_path / "config.json").exists()


@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None,
                    reason="torch.compile's CPU backend (inductor) needs a C compiler")
def test_compile_runs_close_to_eager_and_resumes_either_way(tmp_path, one_thread):
    """4 steps of the micro preset compiled: losses within 1e-4 of eager's (not bit-identical);
    an eager run cut at step 2 resumes compiled and ends close to the eager run."""
    small = dict(dataset_length=64, epochs=1, log_every=1)
    eager = pretrain.run(cfg(tmp_path / "eager", **small))
    compiled = pretrain.run(cfg(tmp_path / "compiled", compile=True, **small))
    assert compiled["compile"] == "default" and eager["compile"] == "off"
    assert config_record(cfg(tmp_path, compile=True))["compile"] is True
    le = [r["loss"] for r in read_metrics(tmp_path / "eager") if "loss" in r]
    lc = [r["loss"] for r in read_metrics(tmp_path / "compiled") if "loss" in r]
    assert len(le) == len(lc) == 4
    assert lc == pytest.approx(le, rel=1e-4)
    pretrain.run(cfg(tmp_path / "mixed", max_steps=2, **small))
    pretrain.run(cfg(tmp_path / "mixed", compile=True, resume="auto", **small))
    lm = [r["loss"] for r in read_metrics(tmp_path / "mixed") if "loss" in r]
    assert lm[:2] == le[:2] and lm == pytest.approx(le, rel=1e-4)
