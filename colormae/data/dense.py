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

``build_segmentation`` gives any of them as ``SegmentationData`` (image, label map);
``TrainCrops`` applies the paper's training augmentation (``train_crop``).
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
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .datasets import IMG_EXTENSIONS, CorruptImageError, decode_image, default_data_root, skip_unreadable

log = logging.getLogger(__name__)

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
    ``$COLORMAE_DATA/pennfudan`` or ``<repo>/../shared/data/pennfudan`` (like ``colormae.data.datasets``)."""
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
    """uint8 [H, W, 3] through the classification datasets' decoder (16-bit images scaled, not
    clipped; an unreadable file is a CorruptImageError naming it)."""
    return np.asarray(decode_image(data, name))


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
    log.info("Penn-Fudan: decoded %d images from %s", len(out), where)
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


# ------------------------------------------------------------------ semantic segmentation data
SEG_DATA = ("pennfudan", "ade20k", "folder")
SEG_NUM_CLASSES = {"pennfudan": 2, "ade20k": 150}
PENNFUDAN_CLASSES = ("background", "person")
IGNORE_INDEX = 255
_ADE_SPLITS = {"train": "training", "test": "validation"}
_FOLDER_SPLITS = {"train": ("train", "training"), "test": ("val", "test", "validation")}


class SegmentationData(torch.utils.data.Dataset):
    """Image + label-map pairs: ``ds[i] -> (name, image uint8 [3, H, W], label int64 [H, W])``.

    Labels are class indices 0..num_classes-1 or ``IGNORE_INDEX``. Items are decoded arrays
    (Penn-Fudan, in memory) or (image path, mask path) pairs decoded on access (ADE20K, folders);
    ``label_fn`` maps a stored mask to labels (ADE20K: 0 -> ignore, k -> k - 1; Penn-Fudan:
    instance ids -> person). A label outside the classes is an error naming the mask file.
    """

    def __init__(self, items: list, num_classes: int, label_fn=None, names: tuple[str, ...] | None = None):
        self.items, self.num_classes, self.label_fn = items, num_classes, label_fn
        self.class_names = names or tuple(str(k) for k in range(num_classes))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor, torch.Tensor]:
        name, image, mask = self.items[i]
        mask_name = name
        if isinstance(image, (str, Path)):
            mask_name = str(mask)
            image, mask = decode_pair(str(image), image, mask_name, mask)
        label = torch.as_tensor(self.label_fn(mask) if self.label_fn else mask, dtype=torch.int64)
        check_labels(label, self.num_classes, mask_name)
        img = (torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))) if isinstance(image, np.ndarray)
               else image)
        return name, img, label


def check_labels(label: torch.Tensor, num_classes: int, name: str) -> None:
    bad = (label >= num_classes) & (label != IGNORE_INDEX) | (label < 0)
    if bad.any():
        values = sorted(set(label[bad].unique().tolist()))[:5]
        raise ValueError(f"{name}: mask values {values} are not classes 0..{num_classes - 1} nor the ignore "
                         f"label {IGNORE_INDEX}; check num_classes or the mask encoding")


def check_folder_masks(ds: SegmentationData) -> None:
    """Users' masks, checked before training: each mask's size against its image's (read from the
    image header, not decoded) and its values against the classes; errors name the file."""
    for name, img_path, mask_path in ds.items:
        try:
            with Image.open(img_path) as img:
                width, height = img.size
        except Exception as err:  # zero-byte or foreign file: name it
            raise CorruptImageError(f"cannot read image {img_path}: {type(err).__name__}: {err}",
                                    str(img_path)) from err
        mask = _decode_mask(mask_path, str(mask_path))
        if mask.shape != (height, width):
            raise ValueError(f"{mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from its image's "
                             f"{width}x{height} (width x height)")
        check_labels(torch.from_numpy(mask), ds.num_classes, str(mask_path))


def _pennfudan_label(instances: np.ndarray) -> np.ndarray:
    return (instances > 0).astype(np.int64)


def _ade_label(mask: np.ndarray) -> np.ndarray:
    """mmseg's reduce_zero_label: 0 ("other") -> ignore, 1..150 -> 0..149."""
    label = mask.astype(np.int64) - 1
    label[label < 0] = IGNORE_INDEX
    return label


def _files(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Entry]:
    return {p.stem: (str(p), p) for p in sorted(folder.iterdir()) if p.suffix.lower() in suffixes and p.is_file()}


def _readable(items: list, max_fraction: float) -> list:
    """``skip_corrupt``: the (name, image, mask) items whose image and mask files open (as
    classification's --skip-corrupt counts unreadable files); ``datasets.skip_unreadable``."""
    return skip_unreadable(items, lambda item: item[1:], max_fraction)[0]


def build_segmentation(data: str, root: str | os.PathLike | None, split: str, num_classes: int | None = None,
                       length: int | None = None, skip_corrupt: bool = False,
                       max_corrupt_fraction: float = 0.01) -> SegmentationData:
    """``split`` ("train" or "test") of ``data`` (one of ``SEG_DATA``); ``length``: an evenly spaced subset.

    * pennfudan: ``root`` as ``pennfudan_root``; the fixed split (test = last 50 by name); 2 classes.
    * ade20k: ``root`` holds ``ADEChallengeData2016/`` (or is it); images/{training,validation}/*.jpg,
      annotations/.../*.png; 150 classes.
    * folder: ``root/images/{train,val}/<name>.<ext>`` and ``root/masks/{train,val}/<name>.png`` (class
      indices, 255 = ignore); ``num_classes`` required.
    """
    if data not in SEG_DATA:
        raise ValueError(f"unknown data={data!r}; expected one of {SEG_DATA}")
    if split not in ("train", "test"):
        raise ValueError(f"unknown split={split!r}; expected 'train' or 'test'")
    expected = SEG_NUM_CLASSES.get(data)
    if expected is not None and num_classes not in (None, expected):
        raise ValueError(f"num_classes={num_classes} but {data} has {expected} classes")
    if data == "folder" and (num_classes is None or num_classes < 1):
        raise ValueError("data='folder' needs num_classes (the number of classes in the masks)")
    if data == "pennfudan":
        samples = load_pennfudan(root, split)
        items = [(s.name, s.image, s.instances.numpy()) for s in samples]
        ds = SegmentationData(items, 2, _pennfudan_label, PENNFUDAN_CLASSES)
    else:
        if root is None:
            if data == "folder":
                raise ValueError("data='folder' needs data_root (a folder with images/ and masks/)")
            root = default_data_root() / "ade20k"
        root = Path(root)
        if data == "ade20k":
            base = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
            img_dir, mask_dir = base / "images" / _ADE_SPLITS[split], base / "annotations" / _ADE_SPLITS[split]
        else:
            names = _FOLDER_SPLITS[split]
            sub = next((n for n in names if (root / "images" / n).is_dir()), names[0])
            img_dir, mask_dir = root / "images" / sub, root / "masks" / sub
        for d in (img_dir, mask_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"{data} data_root={str(root)!r}: no folder {d}")
        pairs = pair_images_masks(_files(img_dir, IMG_EXTENSIONS), _files(mask_dir, (".png",)), str(img_dir))
        items = [(n, img[1], mask[1]) for n, img, mask in pairs]
        if skip_corrupt:
            items = _readable(items, max_corrupt_fraction)
        ds = SegmentationData(items, expected or num_classes, _ade_label if data == "ade20k" else None)
        if data == "folder":
            check_folder_masks(ds)
    if not len(ds):
        raise FileNotFoundError(f"no images in the {split} split of {data} at {root}")
    if length is not None and length < len(ds):
        ds.items = [ds.items[i] for i in np.linspace(0, len(ds) - 1, length).round().astype(int)]
    log.info("%s %s: %d images, %d classes", data, split, len(ds), ds.num_classes)
    return ds


# --------------------------------------------------- the recipe's augmentation (mmseg pipeline)
_MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)


def rescale_factor(h: int, w: int, scale: float) -> float:
    """mmseg's keep-ratio Resize to ``(4 * scale, scale)`` (ADE20K: (2048, 512)): the short side
    becomes ``scale`` unless the long side would exceed ``4 * scale``."""
    return min(4 * scale / max(h, w), scale / min(h, w))


def resize_normalize(image: torch.Tensor, factor: float) -> torch.Tensor:
    """uint8 [3, H, W] -> float [3, round(H f), round(W f)], bilinear, ImageNet-normalized."""
    h, w = image.shape[1:]
    size = (max(1, round(h * factor)), max(1, round(w * factor)))
    x = image.float()[None] / 255.0
    if size != (h, w):
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return ((x[0] - _MEAN) / _STD).contiguous()


def train_crop(image: torch.Tensor, label: torch.Tensor, *, crop: int, scale: float,
               ratio_range: tuple[float, float] = (0.5, 2.0), cat_max_ratio: float = 0.75
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The training augmentation of the paper's mmseg config, drawing from torch's global RNG (the
    engine seeds it per sample): random rescale (``ratio_range`` x the test scale), a random
    ``crop`` x ``crop`` window re-drawn up to 10 times while one class covers more than
    ``cat_max_ratio`` of it, horizontal flip, and padding to the crop (image 0 after
    normalization, label ``IGNORE_INDEX``). mmseg's photometric distortion is left out."""
    r = ratio_range[0] + (ratio_range[1] - ratio_range[0]) * torch.rand(()).item()
    factor = rescale_factor(*image.shape[1:], scale * r)
    img = resize_normalize(image, factor)
    h, w = img.shape[1:]
    lab = torch.nn.functional.interpolate(label[None, None].float(), size=(h, w), mode="nearest")[0, 0].long()
    ch, cw = min(crop, h), min(crop, w)
    for _ in range(10):
        y = int(torch.randint(0, h - ch + 1, ()).item())
        x = int(torch.randint(0, w - cw + 1, ()).item())
        window = lab[y:y + ch, x:x + cw]
        counts = torch.bincount(window[window != IGNORE_INDEX].flatten())
        counts = counts[counts > 0]
        if cat_max_ratio >= 1 or (len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio):
            break
    img, lab = img[:, y:y + ch, x:x + cw], window
    if torch.rand(()).item() < 0.5:
        img, lab = img.flip(-1), lab.flip(-1)
    out_img = torch.zeros(3, crop, crop)
    out_lab = torch.full((crop, crop), IGNORE_INDEX, dtype=torch.int64)
    out_img[:, :ch, :cw], out_lab[:ch, :cw] = img, lab
    return out_img, out_lab


class TrainCrops(torch.utils.data.Dataset):
    """``SegmentationData`` -> (crop, label) pairs through ``train_crop`` (seeded by the engine's
    ``SeededSamples``)."""

    def __init__(self, data: SegmentationData, **crop_kwargs):
        self.data, self.crop_kwargs = data, crop_kwargs

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        _, image, label = self.data[i]
        return train_crop(image, label, **self.crop_kwargs)
