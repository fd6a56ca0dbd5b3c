"""Detection: window attention, the simple pyramid, COCO loading and its errors, AP on hand-made
cases, the engine (a few steps on synthetic COCO and on Penn-Fudan, exact resume) and the
CPU-scale experiment's table."""
import copy
import csv
import json

import numpy as np
import pytest
import torch
from conftest import MICRO
from PIL import Image
from timm.models.vision_transformer_sam import Block

from colormae.data.coco import (
    CocoInstances,
    check_annotations,
    coco_evaluate,
    instances_to_coco,
    predictions_to_results,
)
from colormae.engines import detect
from colormae.engines.detect import DetectConfig, Jittered
from colormae.experiments.dense import DETECTION_COLUMNS, run_detection_experiment
from colormae.files import load_checkpoint, save_torch
from colormae.models.mae import untrained_encoder
from colormae.models.vitdet import (
    SimpleFeaturePyramid,
    ViTDetBackbone,
    backbone_from_export,
    block_forward,
    global_blocks,
)

# a tiny detector: 64 px, patch 8 (the micro encoder's 8x8 grid), narrow heads
TINY = dict(img_size=64, patch_size=8, fpn_channels=16, roi_batch=16, batch_size=2, amp="none", log_every=1,
            warmup_steps=1, blr=1e-2)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny ops run faster on one thread


@pytest.fixture(scope="module")
def encoder(micro_run):
    """A finished micro pretraining run (conftest.micro_run)."""
    return micro_run()


def rectangles(n: int, size: int = 48, seed: int = 0):
    """Images with 1-2 bright rectangles on noise, their masks and xywh boxes."""
    g = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = g.integers(0, 60, (size, size + 8, 3), dtype=np.uint8)
        objs = []
        for _ in range(1 + i % 2):
            x, y = g.integers(0, size - 20, 2)
            w, h = g.integers(10, 20, 2)
            img[y:y + h, x:x + w] = 220
            objs.append([int(x), int(y), int(w), int(h)])
        out.append((img, objs))
    return out


def write_coco(root, split: str, n: int, seed: int = 0, **edit) -> dict:
    """A COCO folder: <root>/<split>/*.png and annotations/instances_<split>.json (polygon masks)."""
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    images, anns = [], []
    for i, (img, objs) in enumerate(rectangles(n, seed=seed)):
        Image.fromarray(img).save(root / split / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": img.shape[0], "width": img.shape[1]})
        for x, y, w, h in objs:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 7, "bbox": [x, y, w, h], "iscrowd": 0,
                         "area": w * h, "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
    data = {"images": images, "annotations": anns, "categories": [{"id": 7, "name": "box"}], **edit}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return data


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    write_coco(root, "train2017", 4, seed=0)
    write_coco(root, "val2017", 2, seed=1)
    return root


# -- backbone and pyramid --------------------------------------------------------------------------

def test_global_blocks_are_vitdets_and_scale_with_depth():
    assert global_blocks(12) == (2, 5, 8, 11)
    assert global_blocks(24) == (5, 11, 17, 23)
    assert global_blocks(4) == (0, 1, 2, 3)


def test_padded_window_covering_the_map_equals_global_attention():
    """A 14-window over a 10 x 7 map (padding on both sides) sees every token once: with the
    padding masked and the global block's relative tables the matching slice of the window's, the
    outputs agree. timm's own forward (padding attended as zero vectors) does not."""
    torch.manual_seed(0)
    h, w, ws, dim = 10, 7, 14, 32
    win = Block(dim, 4, use_rel_pos=True, window_size=ws, input_size=(h, w))
    glob = Block(dim, 4, use_rel_pos=True, window_size=0, input_size=(h, w))
    with torch.no_grad():
        win.attn.rel_pos_h.normal_()
        win.attn.rel_pos_w.normal_()
        state = {k: v for k, v in win.state_dict().items() if "rel_pos" not in k}
        glob.load_state_dict(state, strict=False)
        # relative offset d is row d + ws - 1 of the window's table and row d + h - 1 of the global one
        glob.attn.rel_pos_h.copy_(win.attn.rel_pos_h[ws - h: ws + h - 1])
        glob.attn.rel_pos_w.copy_(win.attn.rel_pos_w[ws - w: ws + w - 1])
    x = torch.randn(2, h, w, dim)
    torch.testing.assert_close(block_forward(win, x), block_forward(glob, x), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(win(x), glob(x), atol=1e-3)  # timm's unmasked padding


def test_pyramid_shapes_and_strides_for_a_non_square_input():
    bb = ViTDetBackbone(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2, window_size=3)
    fpn = SimpleFeaturePyramid(bb, out_channels=16)
    out = fpn(torch.randn(1, 3, 64, 96))  # an 8 x 12 grid, not a multiple of the window
    assert fpn.strides == (2, 4, 8, 16)
    assert list(out) == ["0", "1", "2", "3", "pool"]
    assert [tuple(v.shape) for v in out.values()] == [(1, 16, 32, 48), (1, 16, 16, 24), (1, 16, 8, 12),
                                                     (1, 16, 4, 6), (1, 16, 2, 3)]


def test_backbone_loads_the_export_with_only_relative_tables_new():
    export = untrained_encoder(MICRO, 3)
    bb = backbone_from_export(export, img_size=64, patch_size=8)
    sd = export["state_dict"]
    torch.testing.assert_close(bb.blocks[1].attn.qkv.weight, sd["blocks.1.attn.qkv.weight"])
    torch.testing.assert_close(bb.pos_embed.reshape(64, -1), sd["pos_embed"][0, 1:])  # same 8x8 grid
    assert all(not b.attn.rel_pos_h.detach().any() for b in bb.blocks)
    bad = copy.deepcopy(export)
    bad["state_dict"]["blocks.9.attn.qkv.weight"] = torch.zeros(3, 3)  # a block the backbone lacks
    with pytest.raises(ValueError, match="unexpected \\['blocks.9.attn.qkv.weight'\\]"):
        backbone_from_export(bad, img_size=64, patch_size=8)


# -- COCO-format data and AP -----------------------------------------------------------------------

def gt_two_images():
    m1 = torch.zeros(2, 40, 50, dtype=torch.bool)
    m1[0, 5:20, 5:15] = True
    m1[1, 22:38, 30:48] = True
    m2 = torch.zeros(1, 30, 30, dtype=torch.bool)
    m2[0, 3:25, 10:20] = True
    return [(1, 40, 50, m1), (2, 30, 30, m2)]


def perfect(masks):
    boxes = torch.stack([torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
                         for ys, xs in (torch.nonzero(m, as_tuple=True) for m in masks)])
    return {"boxes": boxes, "scores": torch.ones(len(masks)), "labels": torch.ones(len(masks), dtype=torch.int64),
            "masks": masks[:, None].float()}


def test_ap_is_one_when_predictions_equal_the_ground_truth():
    gt = gt_two_images()
    results = [r for image_id, _, _, m in gt for r in predictions_to_results(image_id, perfect(m), [1])]
    assert coco_evaluate(instances_to_coco(gt), results) == {"ap_box": 1.0, "ap50_box": 1.0, "ap_mask": 1.0,
                                                             "ap50_mask": 1.0}


def test_ap_of_a_known_miss_is_cocoevals_value():
    """Two of three objects found exactly: precision 1 up to recall 2/3, none beyond: COCOeval's
    101-point interpolation gives 67/101 at every IoU threshold; no predictions give 0."""
    gt = gt_two_images()
    results = predictions_to_results(1, perfect(gt[0][3]), [1])  # image 2's object missed
    ap = coco_evaluate(instances_to_coco(gt), results)
    assert ap == pytest.approx({k: 67 / 101 for k in ap}, abs=1e-12)
    assert coco_evaluate(instances_to_coco(gt), []) == {k: 0.0 for k in ap}


def test_coco_folder_loads_targets_in_xyxy_with_contiguous_labels(coco_root):
    data = CocoInstances(coco_root, "train2017")
    img, t = data[1]
    assert img.dtype == torch.uint8 and img.shape == (3, 48, 56)
    assert data.cat_ids == [7] and t["labels"].tolist() == [1, 1]
    x, y, w, h = data.coco.imgToAnns[t["image_id"]][0]["bbox"]
    assert t["boxes"][0].tolist() == [x, y, x + w, y + h]
    assert t["masks"].shape == (2, 48, 56) and int(t["masks"][0].sum()) >= w * h


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(images=[]), "no images"),
    (lambda d: d.update(annotations=[]), "no annotations"),
    (lambda d: d["annotations"][1].update(bbox=[40, 0, 30, 10]), "annotation id 2: box .* leaves image"),
    (lambda d: d["annotations"][0].update(category_id=3), "annotation id 1 has category_id 3, absent"),
    (lambda d: d["annotations"][0].update(image_id=99), "annotation id 1 refers to image_id 99"),
    (lambda d: d["annotations"][2].update(segmentation={"size": [10, 10], "counts": "0"}),
     "annotation id 3: mask size \\[10, 10\\] .* differs from image"),
])
def test_bad_annotations_are_errors_naming_file_and_entry(edit, message):
    data = {"images": [{"id": 1, "file_name": "a.png", "height": 48, "width": 56},
                       {"id": 2, "file_name": "b.png", "height": 48, "width": 56}],
            "annotations": [{"id": i + 1, "image_id": 1 + i % 2, "category_id": 7, "bbox": [1, 2, 10, 10],
                             "iscrowd": 0} for i in range(3)],
            "categories": [{"id": 7, "name": "box"}]}
    edit(data)
    with pytest.raises(ValueError, match=f"instances_x.json: .*{message}"):
        check_annotations(data, "instances_x.json")


def test_zero_area_boxes_and_crowds_are_counted_skips(tmp_path):
    data = write_coco(tmp_path, "train2017", 3)
    data["annotations"][0]["bbox"][2] = 0
    data["annotations"][1]["iscrowd"] = 1
    (tmp_path / "annotations" / "instances_train2017.json").write_text(json.dumps(data))
    ds = CocoInstances(tmp_path, "train2017")
    assert ds.skipped == {"crowd": 1, "zero_area": 1, "images_without_annotations": 1}
    assert len(ds) == 2


def test_large_scale_jitter_keeps_boxes_masks_and_labels_together(coco_root):
    cfg = DetectConfig(encoder="x", **TINY)
    data = Jittered(CocoInstances(coco_root, "train2017"), cfg)
    for seed in range(6):
        torch.manual_seed(seed)
        img, t = data[1]
        assert img.shape == (3, 64, 64) and t["masks"].shape[1:] == (64, 64)
        assert len(t["boxes"]) == len(t["labels"]) == len(t["masks"])
        assert (t["boxes"] >= 0).all() and (t["boxes"] <= 64).all()
        for box, m in zip(t["boxes"], t["masks"]):  # the box still holds its (possibly cropped) mask
            ys, xs = torch.nonzero(m, as_tuple=True)
            if len(xs):
                assert xs.min() >= box[0] - 1 and xs.max() <= box[2] + 1


# -- the engine --------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, message", [
    ("data", "voc", "data='voc' is not supported"),
    ("patch_size", 12, "patch_size=12 must divide img_size=64"),
    ("jitter_min", 3.0, "jitter_min <= jitter_max"),
    ("encoder", None, "encoder is required"),
])
def test_bad_config_is_an_error_before_any_work(field, value, message, encoder):
    cfg = DetectConfig(**{**TINY, "encoder": str(encoder), field: value})
    with pytest.raises(ValueError, match=message):
        detect.run(cfg)


def test_engine_trains_evaluates_and_resumes_bit_identically(encoder, coco_root, tmp_path):
    common = dict(TINY, encoder=str(encoder), data="coco", data_root=str(coco_root), epochs=2)
    full = detect.run(DetectConfig(**common, output_dir=str(tmp_path / "full")))
    assert full["finished"] and full["steps"] == 4 and full["num_classes"] == 1 and full["num_test"] == 2
    assert all(0.0 <= full[k] <= 1.0 for k in ("ap_box", "ap50_box", "ap_mask", "ap50_mask"))
    cut = detect.run(DetectConfig(**common, output_dir=str(tmp_path / "cut"), max_steps=1))
    assert not cut["finished"] and cut["steps"] == 1
    resumed = detect.run(DetectConfig(**common, output_dir=str(tmp_path / "cut"), resume="auto"))
    a = load_checkpoint(tmp_path / "full" / "checkpoint-last.pth")["model"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoint-last.pth")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert {k: resumed[k] for k in ("ap_box", "ap_mask")} == {k: full[k] for k in ("ap_box", "ap_mask")}
    again = detect.run(DetectConfig(**common, output_dir=str(tmp_path / "full"), resume="auto"))
    assert again["wall_time_s"] == full["wall_time_s"]  # finished: read back, not rerun


def test_a_few_steps_on_pennfudan(encoder, tmp_path):
    pytest.importorskip("colormae.data.dense")
    from colormae.data.dense import pennfudan_root
    try:
        pennfudan_root()
    except FileNotFoundError as e:
        pytest.skip(f"Penn-Fudan is not available: {e}")
    s = detect.run(DetectConfig(**TINY, encoder=str(encoder), data="pennfudan", train_length=4, test_length=2,
                                epochs=1, output_dir=str(tmp_path / "pf")))
    assert s["finished"] and s["num_train"] == 4 and s["num_test"] == 2 and s["num_classes"] == 1
    assert all(0.0 <= s[k] <= 1.0 for k in ("ap_box", "ap_mask"))


def test_experiment_writes_the_table_and_skips_finished_runs(encoder, coco_root, tmp_path):
    grid = tmp_path / "grid"
    (grid / "runs" / "random_seed0").mkdir(parents=True)
    save_torch(torch.load(encoder / "encoder.pth", weights_only=False), grid / "runs" / "random_seed0" / "encoder.pth")
    (grid / "runs" / "random_seed0" / "config.json").write_text((encoder / "config.json").read_text())  # preset MICRO
    kw = dict(grid_dir=str(grid), masks=("random",), pretrain_seeds=(0,), seeds=(0,), out=str(tmp_path / "out"),
              **{**TINY, "data": "coco", "data_root": str(coco_root), "epochs": 1})
    path = run_detection_experiment(**kw)
    rows = list(csv.DictReader(open(path)))
    assert [(r["mask"], r["pretrain_seed"], r["seed"]) for r in rows] == [("random", "0", "0"), ("none", "0", "0")]
    assert list(rows[0]) == DETECTION_COLUMNS
    assert run_detection_experiment(**kw).read_text() == path.read_text()  # finished runs are read back
    # weights are git-ignored (the grid's and the runs' own): finished runs are read back from their records
    (grid / "runs" / "random_seed0" / "encoder.pth").unlink()
    for checkpoint in (tmp_path / "out" / "runs").glob("*/checkpoint-last.pth"):
        checkpoint.unlink()
    assert run_detection_experiment(**kw).read_text() == path.read_text()
    with pytest.raises(FileNotFoundError, match="random_seed0"):
        run_detection_experiment(**{**kw, "seeds": (1,)})
    with pytest.raises(FileNotFoundError, match="green_seed0"):
        run_detection_experiment(**{**kw, "masks": ("green",)})


def notebook_setup(tmp_path, micro_run) -> None:
    """What notebook 05's tiny nbval run needs (tests/test_notebooks.py SETUP): micro encoders
    pretrained with random and green masks (conftest.micro_run, copied), and a synthetic COCO folder
    (no shared data needed)."""
    import shutil
    for mask in ("random", "green"):
        shutil.copytree(micro_run(mask), tmp_path / f"encoder_{mask}")
    write_coco(tmp_path / "coco", "train2017", 4, seed=0)
    write_coco(tmp_path / "coco", "val2017", 2, seed=1)


def test_detector_builds_without_pycocotools_and_ap_names_it():
    """GPU images often lack pycocotools (the device check failed on it): building and running the
    detector must not need it; AP evaluation says what is missing."""
    import subprocess
    import sys
    code = f"""
import sys, torch
sys.modules["pycocotools"] = None  # as if not installed
from colormae.engines.detect import DetectConfig, build_model
from colormae.data.coco import coco_evaluate
from colormae.models.mae import untrained_encoder
cfg = DetectConfig(encoder="x", **{TINY!r})
model = build_model(untrained_encoder({MICRO!r}, 0), 1, cfg).eval()
with torch.no_grad():
    model([torch.rand(3, cfg.img_size, cfg.img_size)])
try:
    coco_evaluate(None, [{{"image_id": 1}}])
except ImportError as e:
    print("ImportError:", e)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "pip install pycocotools" in out.stdout
