"""A run directory is one experiment: resume checks the config, finished runs are left alone, fresh
runs never replace old ones, one writer at a time, checkpoints on signals and on a clock, torn
metrics, explosions, disk full. Both engines share the mechanism (colormae.run.scaffold / rundir)."""
import errno
import json
import os
import signal
import stat
import subprocess
import sys

import pytest
import torch
from conftest import MICRO

from colormae.engines import finetune, pretrain
from colormae.engines.launch import parse_engine_args
from colormae.files import DiskFullError, load_checkpoint
from colormae.models.mae import MaskedAutoencoder
from colormae.run import scaffold as engine
from colormae.run.config import build_parser
from colormae.run.rundir import RunDir, RunInUseError, read_metrics


def pre_cfg(out, **kw) -> pretrain.PretrainConfig:
    base = dict(preset=MICRO, dataset="embedded", dataset_length=64, epochs=2, batch_size=16, warmup_epochs=0.5,
                blr=1e-3, amp="none", output_dir=str(out), log_every=1, seed=0, device="cpu")
    return pretrain.PretrainConfig(**{**base, **kw})


def ft_cfg(encoder, out, **kw) -> finetune.FinetuneConfig:
    base = dict(encoder=str(encoder), dataset="embedded", train_length=32, test_length=16, epochs=1, batch_size=16,
                warmup_epochs=0.5, blr=1e-3, amp="none", output_dir=str(out), log_every=1, seed=0, device="cpu")
    return finetune.FinetuneConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def encoder(micro_run):
    return micro_run()  # conftest: a finished micro pretraining run


def losses(out):
    return [r["loss"] for r in read_metrics(out) if "loss" in r]


def snapshot(run_dir):
    """Bytes and mtimes of every file: 'untouched' means both are equal."""
    return {p.relative_to(run_dir): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != "run.lock"}


# -- resume checks the config -----------------------------------------------------------------------

def test_resume_with_another_experiment_config_names_each_field(tmp_path):
    pretrain.run(pre_cfg(tmp_path, max_steps=2))
    with pytest.raises(ValueError, match=r"mask: 'green' -> 'blue'; mask_ratio: 0.75 -> 0.6.*--output-dir.*"
                                         r"--overwrite"):
        pretrain.run(pre_cfg(tmp_path, resume="auto", mask="blue", mask_ratio=0.6))
    with pytest.raises(ValueError, match="seed: 0 -> 1"):
        pretrain.run(pre_cfg(tmp_path, resume="auto", seed=1))
    # knobs that do not change the experiment may differ; epochs may grow
    s = pretrain.run(pre_cfg(tmp_path, resume="auto", log_every=3, num_workers=0, epochs=3))
    assert s["finished"] and s["config"]["epochs"] == 3


def test_finetune_resume_with_another_config_is_refused(encoder, tmp_path):
    finetune.run(ft_cfg(encoder, tmp_path, max_steps=1))
    with pytest.raises(ValueError, match="blr: 0.001 -> 0.002"):
        finetune.run(ft_cfg(encoder, tmp_path, resume="auto", blr=2e-3))


def test_a_checkpoint_from_another_run_is_checked_too(tmp_path):
    pretrain.run(pre_cfg(tmp_path / "a", max_steps=2))
    with pytest.raises(ValueError, match="mask: 'green' -> 'red'"):
        pretrain.run(pre_cfg(tmp_path / "b", mask="red", resume=str(tmp_path / "a" / "checkpoint-last.pth")))


# -- finished runs, fresh runs, overwrite -----------------------------------------------------------

@pytest.mark.parametrize("engine_name", ["pretrain", "finetune", "knn"])
def test_resuming_a_finished_run_changes_nothing(engine_name, encoder, tmp_path):
    cfg = (pre_cfg(tmp_path) if engine_name == "pretrain" else
           ft_cfg(encoder, tmp_path, protocol=engine_name))
    module = pretrain if engine_name == "pretrain" else finetune
    first = module.run(cfg)
    before = snapshot(tmp_path)
    cfg.resume = "auto"
    again = module.run(cfg)
    assert snapshot(tmp_path) == before
    assert again == json.loads((tmp_path / "summary.json").read_text())
    assert again["top1" if engine_name != "pretrain" else "final_loss"] == first[
        "top1" if engine_name != "pretrain" else "final_loss"]


@pytest.mark.parametrize("engine_name", ["pretrain", "finetune"])
def test_a_fresh_run_never_replaces_an_existing_one(engine_name, encoder, tmp_path):
    module = pretrain if engine_name == "pretrain" else finetune
    make = (lambda **kw: pre_cfg(tmp_path, epochs=1, **kw)) if engine_name == "pretrain" else (
        lambda **kw: ft_cfg(encoder, tmp_path, **kw))
    module.run(make(max_steps=1))
    before = snapshot(tmp_path)
    with pytest.raises(FileExistsError, match="already holds a run.*--resume auto.*--overwrite"):
        module.run(make())
    assert snapshot(tmp_path) == before  # metrics.jsonl included
    s = module.run(make(overwrite=True))
    assert s["finished"] and s["steps"] > 1
    with pytest.raises(ValueError, match="resume and overwrite contradict"):
        module.run(make(overwrite=True, resume="auto"))


# -- one writer ---------------------------------------------------------------------------------------

def test_a_second_writer_fails_at_once_and_a_stale_lock_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tmp_path.mkdir(exist_ok=True)
        (tmp_path / "run.lock").write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename,
                                                       "since": "now"}))
        with pytest.raises(RunInUseError, match=f"in use by process {holder.pid}"):
            pretrain.run(pre_cfg(tmp_path, epochs=1))
        assert not (tmp_path / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    s = pretrain.run(pre_cfg(tmp_path, epochs=1))  # the holder is dead: its lock is stale
    assert s["finished"] and not (tmp_path / "run.lock").exists()


def test_two_concurrent_cli_runs_one_fails_with_a_clear_message(tmp_path):
    import time
    cmd = [sys.executable, "-m", "colormae", "pretrain", "--preset", MICRO, "--dataset-length", "100000",
           "--epochs", "1",
           "--batch-size", "16", "--amp", "none", "--device", "cpu", "--output-dir", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(1200):  # wait until the first holds the lock
            if (tmp_path / "run.lock").exists() or first.poll() is not None:
                break
            time.sleep(0.1)
        second = subprocess.run(cmd + ["--resume", "auto"], env=env, capture_output=True, text=True, timeout=300)
    finally:
        first.send_signal(signal.SIGTERM)  # stops at the next step with a checkpoint
        _, err = first.communicate(timeout=300)
    assert second.returncode == 2 and "is in use by process" in second.stderr, second.stderr[-2000:]
    assert first.returncode == 143, err[-2000:]


# -- checkpoint cadence and interruption ---------------------------------------------------------------

def test_save_every_zero_means_no_snapshots_and_n_means_every_n_epochs(tmp_path):
    pretrain.run(pre_cfg(tmp_path / "zero", save_every=0, epochs=2))
    assert sorted(p.name for p in (tmp_path / "zero").glob("checkpoint-*.pth")) == ["checkpoint-last.pth"]
    pretrain.run(pre_cfg(tmp_path / "one", save_every=1, epochs=2))
    assert sorted(p.name for p in (tmp_path / "one").glob("checkpoint-*.pth")) == [
        "checkpoint-0001.pth", "checkpoint-0002.pth", "checkpoint-last.pth"]


def test_checkpoint_every_n_minutes_within_an_epoch(tmp_path, monkeypatch):
    saved = []
    real = RunDir.save
    monkeypatch.setattr(RunDir, "save", lambda self, state, name="checkpoint-last.pth": saved.append(
        (state["step"], name)) or real(self, state, name))
    pretrain.run(pre_cfg(tmp_path, epochs=1, dataset_length=64, checkpoint_minutes=1e-9))
    assert [s for s, _ in saved] == [1, 2, 3, 4]  # every step boundary (3 by the clock, then the epoch end)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_at_a_step_boundary_and_resume_is_bit_identical(sig, tmp_path, monkeypatch):
    cfg = dict(mask="green,blue@1", accum_iter=2, batch_size=8)
    pretrain.run(pre_cfg(tmp_path / "full", **cfg))
    real = engine.Run.log_step

    def log_step(self, step, *a, **k):
        out = real(self, step, *a, **k)
        if step == 3:
            os.kill(os.getpid(), sig)  # arrives mid-run, like Slurm's preemption
        return out
    monkeypatch.setattr(engine.Run, "log_step", log_step)
    before = signal.getsignal(sig)
    with pytest.raises(engine.RunInterrupted, match=f"{signal.Signals(sig).name}: stopped at step 3"):
        pretrain.run(pre_cfg(tmp_path / "cut", **cfg))
    assert load_checkpoint(tmp_path / "cut" / "checkpoint-last.pth")["step"] == 3
    assert signal.getsignal(sig) == before  # the engine's handler is gone again
    monkeypatch.undo()
    s = pretrain.run(pre_cfg(tmp_path / "cut", resume="auto", **cfg))
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")
    a = load_checkpoint(tmp_path / "full" / "checkpoint-last.pth")["model"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoint-last.pth")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert s["wall_time_s"] > s["session_wall_time_s"]  # both sessions count


def test_cli_exit_status_and_line_on_sigterm(tmp_path):
    cmd = [sys.executable, "-m", "colormae", "pretrain", "--preset", MICRO, "--dataset-length", "4096", "--epochs", "1",
           "--batch-size", "16", "--amp", "none", "--device", "cpu", "--output-dir", str(tmp_path), "--log-every", "1"]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    import time
    for _ in range(1200):
        if (tmp_path / "metrics.jsonl").exists() and (tmp_path / "metrics.jsonl").read_text().count("\n") >= 2:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-2000:]
    assert "SIGTERM: stopped at step" in err and "--resume auto" in err
    step = load_checkpoint(tmp_path / "checkpoint-last.pth")["step"]
    assert step >= 2 and json.loads((tmp_path / "summary.json").read_text())["steps"] == step


def test_orphaned_temp_files_are_removed_and_checkpoints_are_readable_by_others(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / ".checkpoint-last.pth.abc123.tmp").write_bytes(b"half a checkpoint")
    old = os.umask(0o022)
    try:
        pretrain.run(pre_cfg(tmp_path, epochs=1))
    finally:
        os.umask(old)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
    for name in ("checkpoint-last.pth", "encoder.pth", "summary.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_a_torn_metrics_line_is_truncated_on_resume(tmp_path, caplog):
    pretrain.run(pre_cfg(tmp_path, max_steps=3))
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "epoch": 1.0, "lo')  # killed mid-write
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    pretrain.run(pre_cfg(tmp_path, resume="auto"))
    assert "torn" in caplog.text
    steps = [r["step"] for r in read_metrics(tmp_path) if "loss" in r]
    assert steps == list(range(1, 9))


# -- the loss guard and the disk --------------------------------------------------------------------

def test_an_exploding_loss_stops_before_nan_naming_an_existing_checkpoint(tmp_path, monkeypatch):
    real = MaskedAutoencoder.loss
    calls = []

    def loss(self, imgs, pred, mask):
        calls.append(1)
        out = real(self, imgs, pred, mask)
        return out * 1e4 if len(calls) > 14 else out
    monkeypatch.setattr(MaskedAutoencoder, "loss", loss)
    with pytest.raises(FloatingPointError, match=r"loss exploded .* at epoch 3, step 14.*checkpoint-last.pth"):
        pretrain.run(pre_cfg(tmp_path, epochs=5))
    assert (tmp_path / "checkpoint-last.pth").exists()
    calls.clear()
    monkeypatch.setattr(MaskedAutoencoder, "loss", lambda self, imgs, pred, mask: pred.sum() * float("nan"))
    with pytest.raises(FloatingPointError, match="loss is nan at epoch 0, step 0: stopping. No checkpoint exists yet"):
        pretrain.run(pre_cfg(tmp_path / "fresh"))


def test_disk_full_says_so(tmp_path, monkeypatch):
    def full(obj, path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DiskFullError, match="the disk is full: could not write .*checkpoint-last.pth"):
        pretrain.run(pre_cfg(tmp_path, epochs=1))
    assert not list(tmp_path.glob(".*.tmp"))


# -- the generated CLI ------------------------------------------------------------------------------------

def test_help_groups_defaults_and_choices():
    text = build_parser(pretrain.PretrainConfig, prog="colormae pretrain").format_help()
    for piece in ("model:", "masking:", "optimization:", "run:", "(default: 0.75)", "{online,bank}",
                  "mae_vit_base_patch16", "--no-norm-pix-loss", "--checkpoint-minutes"):
        assert piece in text, piece
    ft_text = build_parser(finetune.FinetuneConfig).format_help()
    assert "{finetune,linprobe,linprobe-cached,knn}" in ft_text


@pytest.mark.parametrize("argv, message", [
    (["--mask", "green,blue@abc"], "mask='green,blue@abc': 'abc' after '@' is not an epoch number"),
    (["--mask", "green,blue@9"], "switches at epoch 9, but the run has epochs=8"),
    (["--log-every", "0"], "log_every=0 must be >= 1"),
    (["--weight-decay", "-1"], "weight_decay=-1.0 must be >= 0"),
    (["--warmup-epochs", "-2"], "warmup_epochs=-2.0 must be >= 0"),
    (["--mask-ratio", "1.0"], "mask_ratio=1.0 must be in"),
])
def test_bad_pretrain_flags_are_named(argv, message, tmp_path):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        pretrain.run(parse_engine_args("pretrain", [*argv, "--output-dir", str(tmp_path)]))
    assert not (tmp_path / "config.json").exists()


def test_paths_are_recorded_relative_to_the_repository_and_compare_either_way():
    import shutil

    from colormae.files import ROOT
    rel = "results/scratch/test_relative_paths"  # git-ignored
    out = ROOT / rel
    shutil.rmtree(out, ignore_errors=True)
    try:
        pretrain.run(pre_cfg(out, max_steps=1))  # notebooks pass absolute paths inside the repository
        for name in ("config.json", "summary.json"):
            record = json.loads((out / name).read_text())
            assert (record.get("config") or record)["output_dir"] == rel, name
            assert str(ROOT) not in (out / name).read_text(), name
        assert load_checkpoint(out / "checkpoint-last.pth")["config"]["output_dir"] == rel
        s = pretrain.run(pre_cfg(rel, resume="auto"))  # the same run, named relatively
        assert s["finished"] and s["steps"] == 8
    finally:
        shutil.rmtree(out, ignore_errors=True)
