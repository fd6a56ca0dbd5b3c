"""Semantic segmentation: mIoU on hand-made cases, the neck's shapes and strides, sliding windows,
encoder transfer, a few UperNet steps on (synthetic) Penn-Fudan, exact resume, bad input."""
import json
import math

import numpy as np
import pytest
import torch
from conftest import MICRO
from PIL import Image
from test_dense_data import make_pennfudan

from colormae.cli import main as colormae_main
from colormae.data.dense import IGNORE_INDEX, build_segmentation, train_crop
from colormae.engines import segment as seg
from colormae.experiments import dense
from colormae.files import load_checkpoint, save_torch
from colormae.models.backbone import FeaturePyramid, ViTFeatures, feature_blocks, transfer_export
from colormae.models.mae import untrained_encoder
from colormae.models.upernet import UperNetViT, confusion_matrix, iou_from_confusion, predict_slide, predict_whole
from colormae.run.rundir import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny ops run faster on one thread


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    path = tmp_path_factory.mktemp("enc") / "encoder.pth"
    save_torch(untrained_encoder(MICRO, 0), path)
    return path


@pytest.fixture(scope="module")
def pennfudan(tmp_path_factory):
    """60 synthetic photos (10 train, 50 test) of 40 x 56 px with rectangle 'pedestrians'."""
    return make_pennfudan(tmp_path_factory.mktemp("pf"), n=60, size=(40, 56))


def tiny_cfg(encoder, pennfudan, out, **kw):
    base = dict(encoder=str(encoder) if encoder else None, recipe="cpu", data_root=str(pennfudan), crop_size=32,
                test_scale=32,
                slide_stride=16, iterations=6, batch_size=4, warmup_iters=2, head_channels=16, test_length=4,
                output_dir=str(out), device="cpu", amp="none", log_every=1)
    return seg.SegmentConfig(**{**base, **kw})


# -- mIoU -------------------------------------------------------------------------------------------

def test_miou_hand_made_cases():
    target = torch.tensor([[0, 0, 1, 1],
                           [0, 0, 1, 1]])
    perfect = iou_from_confusion(confusion_matrix(target.clone(), target, 2))
    assert perfect["miou"] == 1.0 and perfect["acc"] == 1.0
    # one pixel of class 1 predicted as 0: IoU(0) = 4 / 5, IoU(1) = 3 / 4
    pred = target.clone()
    pred[0, 2] = 0
    r = iou_from_confusion(confusion_matrix(pred, target, 2))
    assert r["iou"] == [4 / 5, 3 / 4] and r["miou"] == pytest.approx((4 / 5 + 3 / 4) / 2, abs=1e-15)
    assert r["acc"] == 7 / 8
    # ignored pixels do not count, whatever is predicted there
    t2 = target.clone()
    t2[0, 2] = IGNORE_INDEX
    assert iou_from_confusion(confusion_matrix(pred, t2, 2))["miou"] == 1.0
    # a class absent from prediction and ground truth is left out of the mean (not a 0)
    r3 = iou_from_confusion(confusion_matrix(pred, target, 3))
    assert math.isnan(r3["iou"][2]) and r3["miou"] == pytest.approx(r["miou"])
    # a class predicted but absent from the ground truth counts as 0
    pred4 = target.clone()
    pred4[0, 0] = 2
    assert iou_from_confusion(confusion_matrix(pred4, target, 3))["iou"][2] == 0.0
    with pytest.raises(ValueError, match="label 5"):
        confusion_matrix(pred, torch.full_like(target, 5), 2)


def test_miou_matches_torchmetrics():
    tm = pytest.importorskip("torchmetrics.classification")
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (3, 17, 23), generator=g)
    target[target == 4] = IGNORE_INDEX
    pred = torch.where(torch.rand(target.shape, generator=g) < 0.6, target.clamp(max=3),
                       torch.randint(0, 4, target.shape, generator=g))
    ours = torch.tensor(iou_from_confusion(confusion_matrix(pred, target, 4))["iou"])
    theirs = tm.MulticlassJaccardIndex(num_classes=4, average="none", ignore_index=IGNORE_INDEX)(pred, target)
    assert torch.allclose(ours.float(), theirs, atol=1e-6)


# -- encoder transfer, features, neck ----------------------------------------------------------------

def test_feature_blocks_scale_with_depth():
    assert feature_blocks(12) == [3, 5, 7, 11] and feature_blocks(24) == [7, 11, 15, 23]
    assert feature_blocks(4) == [0, 1, 2, 3]


def test_neck_shapes_and_strides_non_square():
    export = transfer_export(untrained_encoder(MICRO, 0), 64)  # patch 4 kept: a 16 x 16 grid
    feats = ViTFeatures(export).eval()
    x = torch.randn(2, 3, 48, 80)  # not the crop size, not square
    maps = FeaturePyramid(feats.embed_dim)(feats(x))
    assert [tuple(m.shape) for m in maps] == [(2, 64, 48, 80), (2, 64, 24, 40), (2, 64, 12, 20), (2, 64, 6, 10)]
    # strides 1, 2, 4, 8 = patch / rescale (a patch-16 ViT gives the paper's 4, 8, 16, 32)


def test_transfer_keeps_tokens_of_upsampled_patches():
    """Resampled patch embedding (FlexiViT's pseudo-inverse resize) + unchanged grid: a patch
    upsampled 4x (bicubic, as timm's resize) gets the token the 32-px encoder gives the original
    patch; the position table is untouched."""
    export = untrained_encoder(MICRO, 0)
    moved = transfer_export(export, 128, 16)
    assert torch.equal(moved["state_dict"]["pos_embed"], export["state_dict"]["pos_embed"])
    a = ViTFeatures(export).vit.patch_embed.proj
    b = ViTFeatures(moved).vit.patch_embed.proj
    x = torch.randn(5, 3, 4, 4)
    up = torch.nn.functional.interpolate(x, size=16, mode="bicubic", antialias=True, align_corners=False)
    with torch.no_grad():
        assert torch.allclose(a(x), b(up), atol=1e-4)
    # the segmentation config's choice: keep the pretraining grid (patch resampled) or the patch
    cfg = seg.resolve_defaults(seg.SegmentConfig(encoder="-", recipe="cpu", crop_size=64))
    kept = seg.transfer_for(export, cfg)["transfer"]
    assert cfg.keep_grid and kept["patch_size"] == 8 and kept["grid"] == [8, 8]
    other = seg.transfer_for(export, replace_cfg(cfg, keep_grid=False))["transfer"]
    assert other["patch_size"] == 4 and other["grid"] == [16, 16]
    with pytest.raises(ValueError, match="img_size=100 is not a multiple of the patch size 16"):
        transfer_export(export, 100, 16)
    interp = transfer_export(export, 64)
    assert interp["state_dict"]["pos_embed"].shape == (1, 1 + 16 * 16, 64)


# -- inference -------------------------------------------------------------------------------------

@torch.no_grad()
def test_slide_equals_whole_when_the_crop_covers_the_image():
    torch.manual_seed(0)
    model = UperNetViT(transfer_export(untrained_encoder(MICRO, 0), 32), 3, 16, 8).eval()
    img = torch.randn(1, 3, 30, 29)  # smaller than the crop, not a multiple of the patch
    whole = predict_whole(model, img)
    assert whole.shape == (1, 3, 30, 29)
    assert torch.equal(predict_slide(model, img, crop=32, stride=21), whole)
    # overlapping windows: every pixel covered, the result a per-pixel mean of window logits
    big = torch.randn(1, 3, 50, 70)
    slid = predict_slide(model, big, crop=32, stride=21)
    assert slid.shape == (1, 3, 50, 70) and torch.isfinite(slid).all()
    corner = predict_whole(model, big[:, :, :32, :32])
    # rows 0-17 and columns 0-20 lie in the first window only (the next ones start at y 18, x 21)
    assert torch.allclose(slid[:, :, :18, :21], corner[:, :, :18, :21])
    below = predict_whole(model, big[:, :, 18:50, :32])  # the second row of windows starts at y 18
    assert torch.allclose(slid[:, :, 18:32, :21], (corner[:, :, 18:32, :21] + below[:, :, :14, :21]) / 2, atol=1e-6)


def test_train_crop_pads_with_ignore_and_is_seeded():
    image = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
    label = torch.zeros(20, 30, dtype=torch.int64)
    label[5:15, 10:20] = 1
    torch.manual_seed(3)
    a = train_crop(image, label, crop=64, scale=20, ratio_range=(1.0, 1.0))
    torch.manual_seed(3)
    b = train_crop(image, label, crop=64, scale=20, ratio_range=(1.0, 1.0))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    img, lab = a
    assert img.shape == (3, 64, 64) and lab.shape == (64, 64)
    assert (lab[20:] == IGNORE_INDEX).all() and (lab[:, 30:] == IGNORE_INDEX).all() and (img[:, 20:] == 0).all()
    assert set(lab[:20, :30].unique().tolist()) == {0, 1} and (lab[:20, :30] == 1).sum() == 100


def test_layer_decay_groups(encoder):
    cfg = seg.resolve_defaults(seg.SegmentConfig(encoder=str(encoder), recipe="cpu", crop_size=32))
    model = seg.build_model(seg.transfer_for(torch.load(encoder, weights_only=False), cfg), 2, cfg)
    opt = seg.create_optimizer_v2(model, opt="adamw", lr=1.0, weight_decay=0.05, layer_decay=0.65)
    scale = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    depth = len(model.backbone.vit.blocks)  # 2: embeddings 0.65^3, block i 0.65^(2 - i), heads 1
    assert scale[id(named["backbone.vit.patch_embed.proj.weight"])] == pytest.approx(0.65 ** (depth + 1))
    assert scale[id(named["backbone.vit.blocks.1.mlp.fc1.weight"])] == pytest.approx(0.65)
    assert scale[id(named["decode_head.classifier.weight"])] == 1.0 and scale[id(named["neck.ops.0.0.weight"])] == 1.0
    assert decay[id(named["backbone.vit.pos_embed"])] == 0
    assert decay[id(named["backbone.vit.blocks.0.norm1.weight"])] == 0
    assert decay[id(named["backbone.vit.blocks.0.attn.qkv.weight"])] == 0.05
    assert seg.lr_factor(0, replace_cfg(cfg, iterations=100, warmup_iters=10)) == pytest.approx(1e-6)
    assert seg.lr_factor(10, replace_cfg(cfg, iterations=100, warmup_iters=10)) == 1.0
    assert seg.lr_factor(55, replace_cfg(cfg, iterations=100, warmup_iters=10)) == 0.5


def replace_cfg(cfg, **kw):
    from dataclasses import replace
    return replace(cfg, **kw)


# -- the engine --------------------------------------------------------------------------------------

def test_few_steps_on_pennfudan_then_resume_is_bit_identical(encoder, pennfudan, tmp_path):
    full = seg.run(tiny_cfg(encoder, pennfudan, tmp_path / "full"))
    assert full["finished"] and full["steps"] == 6 and full["num_train"] == 10 and full["num_test"] == 4
    assert set(full["iou"]) == {"background", "person"} and 0 <= full["miou"] <= 1
    assert full["transfer"]["grid"] == [8, 8] and full["transfer"]["patch_size"] == 4
    part = seg.run(tiny_cfg(encoder, pennfudan, tmp_path / "cut", max_steps=3))  # mid-epoch 1 (2 batches/epoch)
    assert part["steps"] == 3 and not part["finished"]
    resumed = seg.run(tiny_cfg(encoder, pennfudan, tmp_path / "cut", resume="auto"))

    def records(out):
        return [{k: v for k, v in r.items() if k != "img_per_s"} for r in read_metrics(out)
                if "test_miou" not in r or r["step"] == 6]
    assert records(tmp_path / "cut") == records(tmp_path / "full")
    assert resumed["miou"] == full["miou"] and resumed["final_eval"]["confusion"] == full["final_eval"]["confusion"]
    a = load_checkpoint(tmp_path / "full" / "checkpoint-last.pth")["model"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoint-last.pth")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # finished: a second call does nothing and returns the summary
    again = seg.run(tiny_cfg(encoder, pennfudan, tmp_path / "full", resume="auto"))
    assert again["miou"] == full["miou"]
    saved = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert saved["engine"] == "segment" and saved["config"]["head_channels"] == 16


def make_folder(root, n=3, *, num_classes=3, bad_value=None, drop_mask=None, bad_size=None):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            name = f"{split}{i}"
            pixels = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "images" / split / f"{name}.jpg")
            mask = rng.integers(0, num_classes, (24, 32)).astype(np.uint8)
            if name == bad_value:
                mask[0, 0] = num_classes
            if name == bad_size:
                mask = mask[:, :-2]
            if name != drop_mask:
                Image.fromarray(mask, mode="L").save(root / "masks" / split / f"{name}.png")
    return root


def test_folder_layout_loads(tmp_path):
    root = make_folder(tmp_path / "f")
    ds = build_segmentation("folder", root, "test", num_classes=3)
    name, img, lab = ds[0]
    assert name == "val0" and img.shape == (3, 24, 32) and lab.shape == (24, 32) and lab.max() < 3


def test_bad_input_fails_before_the_model(encoder, pennfudan, tmp_path, monkeypatch):
    monkeypatch.setattr(seg, "build_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("built")))
    cfg = lambda **kw: tiny_cfg(encoder, pennfudan, tmp_path / "x", overwrite=True, **kw)  # noqa: E731
    with pytest.raises(FileNotFoundError, match="train1"):
        seg.run(cfg(data="folder", num_classes=3, data_root=str(make_folder(tmp_path / "a", drop_mask="train1"))))
    with pytest.raises(ValueError, match=r"val2.png: mask values \[3\] are not classes 0..2"):
        seg.run(cfg(data="folder", num_classes=3, data_root=str(make_folder(tmp_path / "b", bad_value="val2"))))
    with pytest.raises(ValueError, match="train0.png: mask size 30x24 differs"):
        seg.run(cfg(data="folder", num_classes=3, data_root=str(make_folder(tmp_path / "c", bad_size="train0"))))
    with pytest.raises(ValueError, match="img_size=30 is not a multiple of the patch size 4"):
        seg.run(cfg(crop_size=30, keep_grid=False))
    with pytest.raises(ValueError, match="crop_size=36 is not a multiple of the encoder's 8x8 grid"):
        seg.run(cfg(crop_size=36))
    with pytest.raises(ValueError, match="needs num_classes"):
        seg.run(cfg(data="folder"))
    with pytest.raises(ValueError, match="num_classes=3, but pennfudan has 2"):
        seg.run(cfg(num_classes=3))
    with pytest.raises(ValueError, match="data='coco' is not supported"):
        seg.run(cfg(data="coco"))
    with pytest.raises(TypeError, match="dataset"):  # a classification field: not segment's any more
        cfg(dataset="cifar10")
    with pytest.raises(ValueError, match="encoder is required"):
        seg.run(tiny_cfg(None, pennfudan, tmp_path / "x"))
    with pytest.raises(FileNotFoundError, match="root="):
        seg.run(cfg(data_root=str(tmp_path / "nowhere")))
    with pytest.raises(SystemExit):
        colormae_main(["segment", "--encoder", str(encoder), "--recipe", "cpu", "--crop-size", "30",
                       "--output-dir", str(tmp_path / "y")])


def test_pennfudan_experiment_table(encoder, pennfudan, tmp_path, monkeypatch):
    grid = tmp_path / "grid"
    (grid / "runs" / "random_seed0").mkdir(parents=True)
    save_torch(torch.load(encoder, weights_only=False), grid / "runs" / "random_seed0" / "encoder.pth")
    (grid / "grid.json").write_text(json.dumps({"pretrain": {"preset": MICRO}}))
    tiny = dict(data_root=str(pennfudan), crop_size=32, test_scale=32, slide_stride=16, iterations=2, batch_size=4,
                warmup_iters=1, head_channels=16, test_length=2, device="cpu", amp="none")
    with pytest.raises(FileNotFoundError, match="green_seed0"):  # every encoder is looked up before training
        dense.run_segmentation_experiment(grid, masks=("random", "green"), pretrain_seeds=(0,), seeds=(0,),
                                          out=tmp_path / "out", **tiny)
    path = dense.run_segmentation_experiment(grid, masks=("random",), pretrain_seeds=(0,), seeds=(0, 1),
                                             out=tmp_path / "out", **tiny)
    rows = path.read_text().splitlines()
    assert rows[0] == ",".join(dense.SEGMENTATION_COLUMNS) and len(rows) == 5
    assert [r.split(",")[:3] for r in rows[1:]] == [["none", "0", "0"], ["none", "0", "1"], ["random", "0", "0"],
                                                    ["random", "0", "1"]]
    control = torch.load(tmp_path / "out" / "encoders" / "none_seed0.pth", weights_only=False)
    assert torch.equal(control["state_dict"]["patch_embed.proj.weight"],
                       untrained_encoder(MICRO, 0)["state_dict"]["patch_embed.proj.weight"])
    # finished runs are read back, those of other fine-tuning seeds too: a one-seed call trains nothing
    # and its table keeps seed 1's runs
    monkeypatch.setattr(seg, "build_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained again")))
    assert dense.run_segmentation_experiment(grid, masks=("random",), pretrain_seeds=(0,), seeds=(0,),
                                             out=tmp_path / "out", **tiny).read_text() == path.read_text()
    # a fresh clone (weights git-ignored: the grid's and the runs' own): finished runs are read back
    # from their records, never recomputed and rewritten; a run still to train needs the grid's weights
    (grid / "runs" / "random_seed0" / "encoder.pth").unlink()
    for checkpoint in (tmp_path / "out" / "runs").glob("*/checkpoint-last.pth"):
        checkpoint.unlink()
    records = {f: f.read_bytes() for f in (tmp_path / "out" / "runs").glob("*/summary.json")}
    assert dense.run_segmentation_experiment(grid, masks=("random",), pretrain_seeds=(0,), seeds=(0,),
                                             out=tmp_path / "out", **tiny).read_text() == path.read_text()
    assert len(records) == 4 and all(f.read_bytes() == b for f, b in records.items())
    with pytest.raises(FileNotFoundError, match="random_seed0.*--rebuild-weights"):
        dense.run_segmentation_experiment(grid, masks=("random",), pretrain_seeds=(0,), seeds=(2,),
                                          out=tmp_path / "out", **tiny)
