"""Data for the dense tasks: Penn-Fudan pedestrians, ADE20K, and a generic image+mask folder.

* **Penn-Fudan** (``../shared/data/pennfudan/PennFudanPed.tar``, read in place, or an extracted
  ``PennFudanPed/`` folder): 170 photos with per-pedestrian masks. ``load_pennfudan`` decodes them
  once per process and returns ``PennFudanSample`` (uint8 image, int64 instance map). The split is
  FIXED: images sorted by name, the last ``PENNFUDAN_TEST_SIZE`` = 50 are the test split, the
  first 120 the train split. Segmentation uses ``instances > 0`` (2 classes: background, person);
  detection uses ``instance_targets``.
* **ADE20K** (``ADEChallengeData2016/{images,annotations}/{training,validation}``): 150 classes;
  annotation value 0 ("other") is ignored and 1..150 become 0..149 (mmseg's ``reduce_zero_label``).
* **folder**: ``<root>/{images,masks}/{train,val}/<name>.<ext>`` with ``<name>.png`` masks holding
  class indices (255 = ignore) — the layout for users' own data.

``SegmentationSet`` turns any of them into training crops or whole test images.
Bad input (an image without a mask, a mask whose size differs from its image) is an error naming
the file, raised while loading, before any training.
"""
from __future__ import annotations

import functools
import io
import logging
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from colormae.data import IMG_EXTENSIONS, default_data_root

logger = logging.getLogger(__name__)

PENNFUDAN_TEST_SIZE = 50  # last 50 images (sorted by name) = test split; the first 120 = train
PENNFUDAN_TAR = "PennFudanPed.tar"
PENNFUDAN_SPLITS = ("train", "test")


@dataclass
class PennFudanSample:
    """One Penn-Fudan photo: ``image`` uint8 [3, H, W]; ``instances`` int64 [H, W] with
    0 = background and k = the k-th pedestrian (ids as stored, not necessarily contiguous)."""
    name: str
    image: torch.Tensor
    instances: torch.Tensor


def pennfudan_root(root: str | os.PathLike | None = None) -> Path:
    """The folder holding ``PennFudanPed.tar`` or an extracted ``PennFudanPed/``; default
    ``$COLORMAE_DATA/pennfudan`` or ``<repo>/../shared/data/pennfudan`` (like ``colormae.data``)."""
    path = Path(root) if root is not None else default_data_root() / "pennfudan"
    if not ((path / PENNFUDAN_TAR).is_file() or (path / "PennFudanPed" / "PNGImages").is_dir()
            or (path / "PNGImages").is_dir()):
        raise FileNotFoundError(
            f"Penn-Fudan root={str(path)!r} holds neither {PENNFUDAN_TAR} nor an extracted "
            "PennFudanPed/{PNGImages,PedMasks}/ folder; pass root= (or set $COLORMAE_DATA)")
    return path


def _decode_mask(data, name: str) -> np.ndarray:
    """A mask image as a 2-D integer array (mode L / P / I; RGB masks are refused, not guessed)."""
    try:
        with Image.open(data) as img:
            img.load()
            if img.mode not in ("L", "P", "I", "I;16", "I;16L", "I;16B", "1"):
                raise ValueError(f"mask {name} has pixel mode {img.mode}; expected a single-channel "
                                 "index image (mode L, P or I)")
            return np.asarray(img).astype(np.int64)
    except ValueError:
        raise
    except Exception as err:
        raise ValueError(f"cannot read mask {name}: {type(err).__name__}: {err}") from err


def _decode_rgb(data, name: str) -> np.ndarray:
    try:
        with Image.open(data) as img:
            img.load()
            return np.asarray(img.convert("RGB"))
    except Exception as err:
        raise ValueError(f"cannot read image {name}: {type(err).__name__}: {err}") from err


Entry = tuple[str, object]  # (file name for messages, bytes or a path to decode)


def pair_images_masks(images: dict[str, Entry], masks: dict[str, Entry], where: str
                      ) -> list[tuple[str, Entry, Entry]]:
    """Join ``name -> image`` with ``name -> mask``, sorted by name; an image without a mask is an
    error naming it (masks without images are ignored: nothing to train on)."""
    missing = sorted(set(images) - set(masks))
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) in {where} have no mask, e.g. "
                                f"{images[missing[0]][0]} (no mask for name {missing[0]!r})")
    return [(n, images[n], masks[n]) for n in sorted(images)]


def check_same_size(image: np.ndarray, mask: np.ndarray, name: str) -> None:
    if image.shape[:2] != mask.shape[:2]:
        raise ValueError(f"{name}: mask size {mask.shape[1]}x{mask.shape[0]} differs from its image's "
                         f"{image.shape[1]}x{image.shape[0]} (width x height)")


@functools.lru_cache(maxsize=2)
def _load_all_pennfudan(path: str, stamp: float) -> tuple[tuple[str, np.ndarray, np.ndarray], ...]:
    """Decode every Penn-Fudan pair once (keyed by the source's path and mtime)."""
    src = Path(path)
    images, masks = {}, {}
    if (src / PENNFUDAN_TAR).is_file():
        tar_path = src / PENNFUDAN_TAR
        try:
            with tarfile.open(tar_path) as tar:
                for m in tar:
                    p = Path(m.name)
                    if not m.isfile() or p.suffix.lower() != ".png":
                        continue
                    if p.parent.name == "PNGImages":
                        images[p.stem] = (f"{tar_path}:{m.name}", tar.extractfile(m).read())
                    elif p.parent.name == "PedMasks" and p.stem.endswith("_mask"):
                        masks[p.stem[:-5]] = (f"{tar_path}:{m.name}", tar.extractfile(m).read())
        except tarfile.TarError as err:
            raise ValueError(f"cannot read {tar_path}: {err}") from err
        where = str(tar_path)
    else:
        folder = src / "PennFudanPed" if (src / "PennFudanPed").is_dir() else src
        images = {p.stem: (str(p), p) for p in (folder / "PNGImages").glob("*.png")}
        masks = {p.stem[:-5]: (str(p), p) for p in (folder / "PedMasks").glob("*_mask.png")}
        where = str(folder)
    if not images:
        raise FileNotFoundError(f"no PNGImages/*.png in Penn-Fudan source {where}")
    out = []
    for name, (img_name, img_src), (mask_name, mask_src) in pair_images_masks(images, masks, where):
        image, mask = decode_pair(img_name, img_src, mask_name, mask_src)
        out.append((name, image, mask.astype(np.uint8 if mask.max() < 256 else np.int64)))
    logger.info("Penn-Fudan: decoded %d images from %s", len(out), where)
    return tuple(out)


def decode_pair(img_name: str, img_src, mask_name: str, mask_src) -> tuple[np.ndarray, np.ndarray]:
    """Decode an image (uint8 [H, W, 3]) and its mask (int64 [H, W]); sizes must agree."""
    as_file = (lambda s: io.BytesIO(s) if isinstance(s, bytes) else s)
    image = _decode_rgb(as_file(img_src), img_name)
    mask = _decode_mask(as_file(mask_src), mask_name)
    check_same_size(image, mask, mask_name)
    return image, mask


def load_pennfudan(root: str | os.PathLike | None = None, split: str = "train") -> list[PennFudanSample]:
    """The ``split`` ("train": first 120 by name, "test": last 50, "all") of Penn-Fudan, sorted by
    name. Decoded once per process; each call returns fresh tensors."""
    if split not in PENNFUDAN_SPLITS + ("all",):
        raise ValueError(f"unknown split={split!r}; expected one of {PENNFUDAN_SPLITS + ('all',)}")
    path = pennfudan_root(root)
    src = path / PENNFUDAN_TAR if (path / PENNFUDAN_TAR).is_file() else path
    every = _load_all_pennfudan(str(path.resolve()), src.stat().st_mtime)
    if len(every) <= PENNFUDAN_TEST_SIZE:
        raise ValueError(f"Penn-Fudan at {path} has {len(every)} images; the fixed split needs more "
                         f"than {PENNFUDAN_TEST_SIZE} (the last {PENNFUDAN_TEST_SIZE} are the test split)")
    cut = len(every) - PENNFUDAN_TEST_SIZE
    chosen = every[:cut] if split == "train" else every[cut:] if split == "test" else every
    return [PennFudanSample(n, torch.from_numpy(img.transpose(2, 0, 1).copy()),
                            torch.from_numpy(mask.astype(np.int64))) for n, img, mask in chosen]


def instance_targets(instances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-instance ``masks`` (bool [N, H, W], ids ascending) and ``boxes`` (float32 [N, 4], xyxy).

    Boxes are pixel-EXCLUSIVE at the max side: ``x2 = last column + 1`` (so ``x2 - x1`` is the
    width in pixels). torchvision's ``masks_to_boxes`` returns the last column itself (inclusive);
    this adds 1 to its x2/y2, matching the continuous-coordinate boxes torchvision's detection
    models predict. An image with no instance gives [0, H, W] and [0, 4].
    """
    if instances.ndim != 2:
        raise ValueError(f"instances must be a [H, W] id map, got shape {tuple(instances.shape)}")
    ids = torch.unique(instances)
    ids = ids[ids != 0]
    masks = instances[None] == ids[:, None, None]
    boxes = torch.zeros((len(ids), 4), dtype=torch.float32)
    for i, m in enumerate(masks):
        ys, xs = torch.nonzero(m, as_tuple=True)
        boxes[i] = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
    return masks, boxes
