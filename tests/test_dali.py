"""The DALI pipeline (``--pipeline dali``) on DALI's CPU backend: its crops are TrainAugment's, sample
for sample (the same seeded boxes and flips, decoded and resized by DALI), it is deterministic, and
without DALI it fails with one clear error. Skipped where the optional extra is not installed."""
from dataclasses import replace

import pytest
import torch
from test_inmemory import smooth_images, write_tar
from torchvision.io import ImageReadMode, decode_jpeg

from colormae.data import dali
from colormae.data import memory as im
from colormae.data.datasets import build_dataset
from colormae.data.samplers import GlobalBatchSampler
from colormae.engines import finetune, pretrain
from colormae.run.config import check_common
from colormae.run.rundir import read_metrics
from colormae.runtime import DistInfo

needs_dali = pytest.mark.skipif(not dali.dali_available(), reason='NVIDIA DALI is not installed (pip install '
                                '"colormae[dali]")')


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    """16 JPEGs of two sizes, large and small against the 32-px output (crops shrunk and enlarged)."""
    root = tmp_path_factory.mktemp("dali")
    write_tar(root / "train.tar", smooth_images(8, 48, 64, seed=3) + smooth_images(8, 80, 56, seed=4), fmt="JPEG")
    return build_dataset("cifar10", root, "train", None)


def reference(dataset, batch, augment):
    """TrainAugment on the same samples decoded by torchvision (the gpu-decode path, on the CPU)."""
    items = [im.JpegBytes(dataset)[b] for b in batch]
    return augment([decode_jpeg(d, mode=ImageReadMode.RGB) for d, _, _ in items], [s for _, _, s in items])


@needs_dali
def test_dali_crops_are_train_augments(jpegs, monkeypatch):
    sampler = GlobalBatchSampler(len(jpegs), 8, DistInfo(), seed=0)
    augment = im.TrainAugment(32)
    loader = dali.DaliLoader(jpegs, sampler, augment, "cpu", num_workers=1)
    got = list(loader)
    assert len(got) == len(loader) == 2
    for (images, labels), batch in zip(got, sampler):
        assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
        assert labels.tolist() == [jpegs.targets[i] for i, _ in batch]
        want = reference(jpegs, batch, augment)
        # two libjpeg-turbo decodes and two antialiased cubic resamplers: rounding apart (in normalized
        # units; one 8-bit level is ~0.017); a wrong box or a lost flip moves whole crops (tested below)
        assert (images - want).abs().mean() < 0.002 and (images - want).abs().max() < 0.05
    again = list(dali.DaliLoader(jpegs, sampler, augment, "cpu", num_workers=0))
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(got, again))  # deterministic: boxes from seeds

    # planted: boxes drawn from another seed, or the flip dropped -> far from the reference
    draw = im.TrainAugment.params
    for plant in (lambda self, h, w, seed: draw(self, h, w, seed + 1),
                  lambda self, h, w, seed: (*draw(self, h, w, seed)[:4], False)):
        monkeypatch.setattr(im.TrainAugment, "params", plant)
        images, _ = next(iter(dali.DaliLoader(jpegs, sampler, augment, "cpu", num_workers=0)))
        monkeypatch.setattr(im.TrainAugment, "params", draw)
        assert (images - reference(jpegs, next(iter(sampler)), augment)).abs().mean() > 0.02


@needs_dali
def test_dali_refuses_other_augmentations(jpegs):
    sampler = GlobalBatchSampler(len(jpegs), 8, DistInfo(), seed=0)
    with pytest.raises(ValueError, match="pretraining augmentation only, not EvalResize"):
        dali.DaliLoader(jpegs, sampler, im.EvalResize(32), "cpu")


def test_without_dali_the_error_names_the_extra(monkeypatch):
    monkeypatch.setattr(dali, "fn", None)
    with pytest.raises(ImportError, match=r'pip install "colormae\[dali\]".*auto, memory, files, gpu-decode'):
        dali.require_dali()


def test_pipeline_dali_is_checked_before_any_work(monkeypatch):
    """Without DALI, --pipeline dali is one clear error at validation; fine-tuning and frozen
    evaluation refuse it (their augmentation is not MAE's crop)."""
    monkeypatch.setattr(dali, "fn", None)
    with pytest.raises(ImportError, match=r"colormae\[dali\]"):
        check_common(pretrain.PretrainConfig(pipeline="dali"))  # what every engine's run checks first
    check_common(pretrain.PretrainConfig(pipeline="gpu-decode"))  # the others need nothing extra
    with pytest.raises(ValueError, match="allowed values here: auto, files"):
        finetune.validate(finetune.FinetuneConfig(encoder="e.pth", pipeline="dali", protocol="finetune"))
    for pipeline in ("dali", "gpu-decode"):  # frozen features would silently read files: refused instead
        with pytest.raises(ValueError, match=rf"pipeline='{pipeline}' is not used by protocol='knn'.*auto, memory"):
            finetune.validate(finetune.FinetuneConfig(encoder="e.pth", pipeline=pipeline, protocol="knn"))


@needs_dali
def test_pretraining_on_dali_resumes_exactly(tmp_path):
    """``colormae pretrain --pipeline dali`` on a JPEG folder (DALI's CPU backend): a run cut mid-epoch and
    resumed logs the uninterrupted run's losses, step for step (boxes come from the samples' seeds)."""
    for k, img in enumerate(smooth_images(16, 40, 48, seed=5)):
        (tmp_path / "jpegs" / "train" / f"c{k % 2}").mkdir(parents=True, exist_ok=True)
        img.save(tmp_path / "jpegs" / "train" / f"c{k % 2}" / f"{k:02d}.jpg", quality=90)
    cfg = pretrain.PretrainConfig(preset="mae_vit_micro_patch4_32", dataset="imagefolder", pipeline="dali",
                                  data_root=str(tmp_path / "jpegs"), epochs=2, batch_size=4, warmup_epochs=0.5,
                                  blr=1e-3, amp="none", device="cpu", num_workers=0, log_every=1, seed=0,
                                  output_dir=str(tmp_path / "full"))
    full = pretrain.run(cfg)
    assert full["finished"] and full["pipeline"] == "dali" and full["steps"] == 8
    assert not pretrain.run(replace(cfg, output_dir=str(tmp_path / "cut"), max_steps=3))["finished"]
    pretrain.run(replace(cfg, output_dir=str(tmp_path / "cut"), resume="auto"))
    losses = [[r["loss"] for r in read_metrics(tmp_path / d) if "loss" in r] for d in ("full", "cut")]
    assert len(losses[0]) == 8 and losses[0] == losses[1]
