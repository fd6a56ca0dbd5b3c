"""Instance annotations in COCO format: loading with validation, Penn-Fudan as COCO ground truth in
memory, and box / mask AP with pycocotools' COCOeval (the metric of the paper's Tables 1-3).

Layout (``torchvision.datasets.CocoDetection``): ``<root>/<split>/<file_name>`` images and
``<root>/annotations/instances_<split>.json``. Validation follows COCO practice where it has one:
crowd regions and zero-area boxes are skipped from training targets and counted (COCOeval still
sees crowd regions as "ignore"); everything else that is wrong is an error naming the file and the
entry: no images, no annotations, an annotation of an unknown image or category, a box that leaves
the image by more than ``BOX_TOLERANCE`` pixels, an RLE mask whose size is not the image's.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .datasets import MAX_CORRUPT_FRACTION, decode_image_file, skip_unreadable

if TYPE_CHECKING:
    from pycocotools.coco import COCO

log = logging.getLogger(__name__)
BOX_TOLERANCE = 1.0  # pixels a box may overhang the image (rounding in exported annotations): clipped
METRICS = ("ap_box", "ap50_box", "ap_mask", "ap50_mask")


def pycocotools():
    """(mask_utils, COCO, COCOeval), imported where annotations or AP are needed: building and
    training the detector does not need pycocotools (GPU images often lack it; gpu_detect.py runs)."""
    try:
        from pycocotools import mask as mask_utils
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:
        raise ImportError(f"pycocotools is needed for COCO annotations and AP ({e}): pip install pycocotools") from e
    return mask_utils, COCO, COCOeval


def coco_paths(root: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """(image folder, annotation file) of ``split`` (e.g. "val2017") under a COCO ``root``."""
    root = Path(root)
    images, ann = root / split, root / "annotations" / f"instances_{split}.json"
    for p in (images, ann):
        if not p.exists():
            raise FileNotFoundError(f"COCO {split}: {p} not found (expected <root>/{split}/ and "
                                    f"<root>/annotations/instances_{split}.json, torchvision's CocoDetection layout)")
    return images, ann


def check_annotations(data: dict, where: str) -> dict:
    """Validate a COCO instances dict; returns counts of what training skips (crowd, zero area).
    Errors name ``where`` (the file) and the entry."""
    for key in ("images", "annotations", "categories"):
        if not data.get(key):
            raise ValueError(f"{where}: no {key} (the '{key}' list is missing or empty)")
    for key in ("images", "annotations", "categories"):
        for item in data[key]:
            if not isinstance(item, dict) or "id" not in item:
                raise ValueError(f"{where}: an entry of '{key}' has no id: {str(item)[:80]}")
        seen: set = set()
        dup = [item["id"] for item in data[key] if item["id"] in seen or seen.add(item["id"])]
        if dup:
            raise ValueError(f"{where}: duplicate {key[:-1].replace('categorie', 'category')} id(s) "
                             f"{sorted(set(map(str, dup)))[:5]} in '{key}' (ids must be unique)")
    images = {img["id"]: img for img in data["images"]}
    cats = {c["id"] for c in data["categories"]}
    skipped = {"crowd": 0, "zero_area": 0}
    for ann in data["annotations"]:
        entry = f"{where}: annotation id {ann.get('id')}"
        box = ann.get("bbox")
        if "bbox" not in ann:
            raise ValueError(f"{entry} has no bbox")
        if (not isinstance(box, (list, tuple)) or len(box) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)):
            raise ValueError(f"{entry}: bbox {box!r} is not 4 finite numbers [x, y, w, h]")
        img = images.get(ann.get("image_id"))
        if img is None:
            raise ValueError(f"{entry} refers to image_id {ann.get('image_id')}, absent from 'images'")
        if ann.get("category_id") not in cats:
            raise ValueError(f"{entry} has category_id {ann.get('category_id')}, absent from 'categories' "
                             f"(ids {sorted(cats)[:10]}{'...' if len(cats) > 10 else ''})")
        seg = ann.get("segmentation")
        if isinstance(seg, dict) and list(seg.get("size", [])) != [img["height"], img["width"]]:
            raise ValueError(f"{entry}: mask size {seg.get('size')} (h, w) differs from image {img['id']} "
                             f"({img.get('file_name')}) of size [{img['height']}, {img['width']}]")
        x, y, w, h = ann["bbox"]
        if ann.get("iscrowd", 0):
            skipped["crowd"] += 1
        elif w <= 0 or h <= 0:
            skipped["zero_area"] += 1
        elif x < -BOX_TOLERANCE or y < -BOX_TOLERANCE or x + w > img["width"] + BOX_TOLERANCE or \
                y + h > img["height"] + BOX_TOLERANCE:
            raise ValueError(f"{entry}: box [x, y, w, h] = {ann['bbox']} leaves image {img['id']} "
                             f"({img.get('file_name')}, {img['width']} x {img['height']})")
    return skipped


def load_coco(path: str | os.PathLike) -> tuple[COCO, dict]:
    """A pycocotools COCO object of a validated annotation file, and its skip counts."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read COCO annotations {path}: {e}") from e
    skipped = check_annotations(data, str(path))
    return coco_from_dict(data), skipped


def coco_from_dict(data: dict) -> COCO:
    coco = pycocotools()[1]()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


class CocoInstances(torch.utils.data.Dataset):
    """(uint8 image [3, H, W], target) per image that has a training annotation; target holds
    ``boxes`` (xyxy float), ``labels`` (1..K, contiguous over the categories), ``masks`` (uint8
    [N, H, W]) and ``image_id``. ``cat_ids[label - 1]`` is the COCO category of a label."""

    def __init__(self, root: str | os.PathLike, split: str, length: int | None = None, train: bool = True,
                 skip_corrupt: bool = False, max_corrupt_fraction: float = MAX_CORRUPT_FRACTION):
        self.images_dir, ann_file = coco_paths(root, split)
        self.coco, self.skipped = load_coco(ann_file)
        self.cat_ids = sorted(self.coco.getCatIds())
        self.label_of = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        ids = sorted(self.coco.getImgIds())
        if train:  # as torchvision's references: images without a usable annotation teach nothing
            keep = [i for i in ids if any(self._usable(a) for a in self.coco.imgToAnns[i])]
            self.skipped["images_without_annotations"] = len(ids) - len(keep)
            ids = keep
        self.ids = evenly_spaced(ids, length)
        if skip_corrupt:  # image files that do not open are left out (and counted) before training
            self.ids, unreadable = skip_unreadable(
                self.ids, lambda i: [self.images_dir / self.coco.imgs[i]["file_name"]], max_corrupt_fraction)
            self.skipped["unreadable_images"] = len(unreadable)

    def coco_gt(self) -> COCO:
        return self.coco

    @staticmethod
    def _usable(ann: dict) -> bool:
        return not ann.get("iscrowd", 0) and ann["bbox"][2] > 0 and ann["bbox"][3] > 0

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        info = self.coco.imgs[self.ids[i]]
        path = self.images_dir / info["file_name"]
        image = torch.from_numpy(np.asarray(decode_image_file(str(path))).transpose(2, 0, 1).copy())
        if tuple(image.shape[1:]) != (info["height"], info["width"]):
            raise ValueError(f"{path}: image is {image.shape[2]} x {image.shape[1]}, its annotation says "
                             f"{info['width']} x {info['height']} (image id {info['id']})")
        anns = [a for a in self.coco.imgToAnns[info["id"]] if self._usable(a)]
        h, w = image.shape[1:]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        masks = np.stack([self.coco.annToMask(a) for a in anns]) if anns else np.zeros((0, h, w), np.uint8)
        return image, {"boxes": boxes, "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns],
                                                               dtype=torch.int64),
                       "masks": torch.from_numpy(masks), "image_id": info["id"]}


def evenly_spaced(items: list, length: int | None) -> list:
    """``length`` items spread over ``items`` (all of them when None)."""
    if length is None or length >= len(items):
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, length).round()]


def instances_to_coco(targets: list[tuple[int, int, int, torch.Tensor]], category: str = "person") -> COCO:
    """Ground truth in memory from (image_id, height, width, masks bool [N, H, W]) per image, one
    category (id 1): how Penn-Fudan is evaluated with the same COCOeval code as COCO."""
    mask_utils = pycocotools()[0]
    images, anns = [], []
    for image_id, h, w, masks in targets:
        images.append({"id": image_id, "height": h, "width": w, "file_name": f"{image_id}.png"})
        for m in masks:
            rle = encode_mask(m)
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 1, "segmentation": rle,
                         "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": 0})
    return coco_from_dict({"images": images, "annotations": anns, "categories": [{"id": 1, "name": category}]})


def encode_mask(mask: torch.Tensor) -> dict:
    rle = pycocotools()[0].encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")  # json-serialisable, as in COCO files
    return rle


def predictions_to_results(image_id: int, pred: dict, cat_ids: list[int], mask_threshold: float = 0.5) -> list[dict]:
    """torchvision Mask R-CNN output for one image (``boxes`` xyxy, ``scores``, ``labels`` 1..K,
    ``masks`` [N, 1, H, W] probabilities or [N, H, W] bool) -> COCO result entries."""
    boxes = pred["boxes"].detach().float().cpu()
    masks = pred["masks"].detach().cpu()
    masks = (masks[:, 0] if masks.ndim == 4 else masks).float() >= mask_threshold
    out = []
    for box, score, label, mask in zip(boxes.tolist(), pred["scores"].tolist(), pred["labels"].tolist(), masks):
        out.append({"image_id": image_id, "category_id": cat_ids[label - 1], "score": float(score),
                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "segmentation": encode_mask(mask)})
    return out


def coco_evaluate(coco_gt: COCO, results: list[dict], img_ids: list[int] | None = None) -> dict:
    """AP@[.5:.95] and AP50 for boxes and masks (COCOeval, 100 detections, all areas) over
    ``img_ids`` (default: every ground-truth image); no detections at all scores 0."""
    COCOeval = pycocotools()[2]
    out = {}
    for iou_type, key in (("bbox", "box"), ("segm", "mask")):
        if not results:
            out[f"ap_{key}"], out[f"ap50_{key}"] = 0.0, 0.0
            continue
        with contextlib.redirect_stdout(io.StringIO()) as text:
            ev = COCOeval(coco_gt, coco_gt.loadRes(results), iou_type)
            ev.params.imgIds = sorted(coco_gt.getImgIds() if img_ids is None else img_ids)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        log.debug("COCOeval %s:\n%s", iou_type, text.getvalue())
        # -1 means "no ground truth in this area range"; over all areas it can't happen with ground truth
        out[f"ap_{key}"], out[f"ap50_{key}"] = max(float(ev.stats[0]), 0.0), max(float(ev.stats[1]), 0.0)
    return out
