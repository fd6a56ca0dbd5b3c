"""Pretraining engine: determinism, exact resume, DDP (gloo) agreement, clear errors."""
import json
import math

import pytest
import torch
from conftest import run_one_and_two_processes

from colormae.engines.pretrain import PretrainConfig, run
from colormae.files import load_checkpoint
from colormae.masks.schedule import parse_mask_schedule
from colormae.models.mae import MaskedAutoencoder
from colormae.run.rundir import read_metrics


def tiny_cfg(out, **kw) -> PretrainConfig:
    base = dict(preset="mae_vit_micro_patch4_32", dataset="embedded", dataset_length=64, epochs=2, batch_size=16,
                warmup_epochs=0.5, blr=1e-3, amp="none", output_dir=str(out), log_every=1, seed=0)
    return PretrainConfig(**{**base, **kw})


def losses(out):
    return [r["loss"] for r in read_metrics(out) if "loss" in r]


def test_run_writes_everything_and_same_seed_same_losses(tmp_path):
    s1 = run(tiny_cfg(tmp_path / "a"))
    s2 = run(tiny_cfg(tmp_path / "b"))
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert len(losses(tmp_path / "a")) == 8 and s1["steps"] == 8 and s1["finished"]
    for name in ("summary.json", "config.json", "metrics.jsonl", "checkpoint-last.pth", "encoder.pth"):
        assert (tmp_path / "a" / name).exists(), name
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    for key in ("config", "environment", "wall_time_s", "images_per_s", "peak_memory_bytes", "final_loss", "masks"):
        assert key in summary
    assert summary["environment"]["torch"] == torch.__version__
    assert summary["final_loss"] == s2["final_loss"]
    run(tiny_cfg(tmp_path / "c", seed=1, epochs=1))
    assert losses(tmp_path / "c") != losses(tmp_path / "a")[:4]
    assert not list(tmp_path.rglob("*.tmp"))


def test_interrupted_then_resumed_run_matches_uninterrupted(tmp_path):
    run(tiny_cfg(tmp_path / "full", mask="green,blue@1", accum_iter=2, batch_size=8))
    # stop mid-epoch (after 3 of 4 optimizer steps of epoch 0), then resume from checkpoint-last
    part = run(tiny_cfg(tmp_path / "cut", mask="green,blue@1", accum_iter=2, batch_size=8, max_steps=3))
    assert part["steps"] == 3 and not part["finished"]
    assert not (tmp_path / "cut" / "encoder.pth").exists()
    run(tiny_cfg(tmp_path / "cut", mask="green,blue@1", accum_iter=2, batch_size=8, resume="auto"))
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")
    a = load_checkpoint(tmp_path / "full" / "checkpoint-last.pth")["model"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoint-last.pth")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def mae_lr(it: int, total: int, warmup: int, lr: float, min_lr: float = 0.0) -> float:
    """MAE's util/lr_sched.adjust_learning_rate, per iteration."""
    if it < warmup:
        return lr * it / warmup
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * (it - warmup) / (total - warmup)))


def test_lr_schedule_is_maes_at_every_step(tmp_path):
    from colormae.run.scaffold import cosine_schedule
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = cosine_schedule(opt, 100, 10, 1e-3)
    for it in range(100):
        sched.step_update(num_updates=it)
        assert opt.param_groups[0]["lr"] == pytest.approx(mae_lr(it, 100, 10, 1.0, 1e-3), abs=1e-12), it
    # and the engine uses it: the lr logged after step s is the lr of iteration s
    run(tiny_cfg(tmp_path, epochs=2, warmup_epochs=0.5, blr=1e-3))
    records = [r for r in read_metrics(tmp_path) if "lr" in r]
    base = 1e-3 * 16 / 256
    for r in records:
        assert r["lr"] == pytest.approx(mae_lr(r["step"], 8, 2, base), rel=1e-9), r


def test_mask_schedule_switches_the_masks_not_only_the_label(tmp_path, monkeypatch):
    """green,blue@1: epoch 0 trains on green masks, epoch 1 on blue ones, drawn from the run's mask
    generator (seed + 1) in order; replayed here with fresh maskers."""
    from colormae import make_masker
    seen = []
    real = MaskedAutoencoder.forward
    monkeypatch.setattr(MaskedAutoencoder, "forward", lambda self, imgs, mask: seen.append(mask[0].clone()) or
                        real(self, imgs, mask))
    run(tiny_cfg(tmp_path, mask="green,blue@1"))
    assert len(seen) == 8
    labels = [(r["epoch"], r["mask"]) for r in read_metrics(tmp_path) if "mask" in r]
    assert {m for e, m in labels if e <= 1.0} == {"green"} and {m for e, m in labels if e > 1.0} == {"blue"}
    g = torch.Generator().manual_seed(1)
    green, blue = make_masker("green", 8, 0.75), make_masker("blue", 8, 0.75)
    for i, mask in enumerate(seen):
        expected = (green if i < 4 else blue)(16, generator=g)[0]
        assert torch.equal(mask, expected), f"step {i}: not the {'green' if i < 4 else 'blue'} mask"


def test_mask_schedule():
    assert parse_mask_schedule("green") == [(0, "green")]
    assert parse_mask_schedule("green,blue@200") == [(0, "green"), (200, "blue")]
    for bad in ("pink", "green,blue", "green@3", "green,blue@5,red@2"):
        with pytest.raises(ValueError, match="mask="):
            parse_mask_schedule(bad)


def test_bad_inputs_fail_before_the_model_is_built(tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(MaskedAutoencoder, "__init__", lambda *a, **k: built.append(1) or (_ for _ in ()).throw(
        AssertionError("model built")))
    with pytest.raises(ValueError, match="kind 'pink' is not supported"):
        run(tiny_cfg(tmp_path, mask="pink"))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        run(tiny_cfg(tmp_path, dataset="imagefolder", data_root=str(tmp_path / "nowhere")))
    with pytest.raises(ValueError, match="preset="):
        run(tiny_cfg(tmp_path, preset="vit_gigantic"))
    with pytest.raises(ValueError, match="amp="):
        run(tiny_cfg(tmp_path, amp="fp8"))
    assert not built


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "checkpoint-last.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="checkpoint .*checkpoint-last.pth is corrupt"):
        run(tiny_cfg(tmp_path, resume="auto"))
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        run(tiny_cfg(tmp_path, resume=str(tmp_path / "missing.pth")))


def test_corrupt_image_is_named(tmp_path):
    from PIL import Image
    for cls in ("a", "b"):
        (tmp_path / "data" / "train" / cls).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (40, 40), (i * 20, 0, 0)).save(tmp_path / "data" / "train" / cls / f"{i}.jpg")
    (tmp_path / "data" / "train" / "b" / "broken.jpg").write_bytes(b"\x00garbage")
    cfg = tiny_cfg(tmp_path / "run", dataset="imagefolder", data_root=str(tmp_path / "data"), epochs=1, batch_size=17)
    with pytest.raises(OSError, match="broken.jpg"):
        run(cfg)
    cfg.skip_corrupt, cfg.batch_size, cfg.max_corrupt_fraction, cfg.overwrite = True, 8, 0.1, True
    summary = run(cfg)
    assert any("broken.jpg" in name for name in summary["skipped_images"])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    run(tiny_cfg(tmp_path, epochs=1))
    good = (tmp_path / "checkpoint-last.pth").read_bytes()
    monkeypatch.setattr(MaskedAutoencoder, "loss", lambda self, imgs, pred, mask: pred.sum() * float("nan"))
    with pytest.raises(FloatingPointError, match="loss is nan"):
        run(tiny_cfg(tmp_path, epochs=2, resume="auto"))
    assert (tmp_path / "checkpoint-last.pth").read_bytes() == good


@pytest.mark.slow
def test_two_process_gloo_matches_one_process(tmp_path):
    cli = ["-m", "colormae", "pretrain", "--preset", "mae_vit_micro_patch4_32", "--dataset", "embedded",
           "--dataset-length", "64", "--epochs", "1", "--amp", "none", "--blr", "1e-3", "--log-every", "1",
           "--warmup-epochs", "0.5"]
    one, two = run_one_and_two_processes(cli, tmp_path, global_batch=16)
    l1, l2 = losses(one), losses(two)
    assert len(l1) == len(l2) == 4
    assert json.loads((two / "summary.json").read_text())["world_size"] == 2
    for a, b in zip(l1, l2):
        assert abs(a - b) <= 1e-4 * abs(a) + 1e-6, (l1, l2)
