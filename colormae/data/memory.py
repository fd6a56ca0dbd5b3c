"""Input pipeline for datasets that fit in memory: decode once, augment whole batches on the device.

The per-file pipeline (``colormae.data.datasets``: PIL decode + PIL transforms in DataLoader workers)
makes its workers compete with the model for a small machine's cores. Here a small dataset
(CIFAR-10: 50k x 3 x 32 x 32 uint8 = 150 MB; the embedded photos) is decoded ONCE into a uint8
tensor, cached on disk, and MAE's augmentation runs on the batch::

    images = decode_to_memory("cifar10", None, "train")                  # cached after the first call
    loader = BatchedLoader(images, GlobalBatchSampler(...), TrainAugment(32), device)
    for imgs, labels in loader: ...                                      # float [B,3,32,32] on device

Random parameters. Every sample's crop box and flip are drawn exactly as torchvision draws them
(``RandomResizedCrop.get_params``, 10 tries then center-crop fallback, then ``torch.rand(1) < 0.5``)
from a generator seeded with that sample's seed (``runtime.sample_seed``, yielded by
``data.samplers.GlobalBatchSampler``). That is the very stream ``data.samplers.SeededSamples`` gives the
per-file path, so the two pipelines crop the same boxes; outputs depend on nothing but (image, seed):
runs are deterministic, N DDP ranks equal one process, and mid-epoch resume is bit-exact with no state
saved.

Resampling: ``F.grid_sample`` (bicubic, per-sample affine grids), one call for the whole batch (one
kernel on GPU). It has no antialiasing, so a crop that must be *shrunk* (ImageNet-size images) goes
through a per-sample antialiased ``F.interpolate`` instead; on CIFAR-10 at 32 px every crop is
enlarged, so the batched path takes all of them. Torch's bicubic kernel (a=-0.75) is not PIL's
(a=-0.5), so pixels differ slightly from the per-file path with the same seeds (the bounds are tested
in tests/test_inmemory.py; the resamplers compared and their timings: docs/design.md).

GPU decode (``pipeline="gpu-decode"``, ``GpuDecodeLoader``, experimental): workers only read JPEG
bytes; decoding is ``torchvision.io.decode_jpeg(list, device=...)`` batched on the device, then the
same augmentation. torchvision 0.29 deprecates its image decoders in favour of TorchCodec (a
DeprecationWarning); they still work.

Cache: with DDP on a cold cache every rank decodes (safe: writes are atomic, the last rename wins);
let rank 0 call ``decode_to_memory`` first, then barrier, to decode once.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset, Subset
from torchvision.io import ImageReadMode, decode_jpeg

from ..files import save_torch
from ..runtime import progress
from . import datasets as data_lib

log = logging.getLogger(__name__)
PIPELINES = ("auto", "memory", "files", "gpu-decode", "dali")

MEMORY_DATASETS = ("cifar10", "embedded")  # always decoded to memory by "auto"
MEMORY_BUDGET_BYTES = 4 * 2 ** 30  # "auto" keeps an imagefolder in memory below this decoded size
MAX_MEMORY_FILES = 100_000  # ... and below this many files (counted before any header is read)
CACHE_FORMAT = 1  # bump when the cache layout or decoding changes


# ------------------------------------------------------------------------------------ decoded data
@dataclass
class InMemoryImages:
    """A decoded dataset: ``images`` uint8 [N, 3, H, W], ``labels`` int64 [N]."""
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str] = field(default_factory=list)
    name: str = ""
    split: str = ""
    skipped_names: list[str] = field(default_factory=list)  # corrupt files replaced (skip_corrupt)
    max_corrupt_fraction: float = data_lib.MAX_CORRUPT_FRACTION  # its ceiling (data_lib.check_skipped)

    def __len__(self) -> int:
        return self.images.shape[0]


def default_cache_dir() -> Path:
    """``$COLORMAE_CACHE`` or ``~/.cache/colormae`` (the shared data folder is read-only)."""
    return Path(os.environ.get("COLORMAE_CACHE") or Path.home() / ".cache" / "colormae")


def _unwrap(ds: Dataset) -> tuple[Dataset, list[int] | None]:
    """The base dataset of (nested) Subsets and the base indices they select (None = all)."""
    indices = None
    while isinstance(ds, Subset):
        indices = [ds.indices[i] for i in indices] if indices is not None else list(ds.indices)
        ds = ds.dataset
    return ds, indices


def _source_stamp(ds: Dataset) -> str:
    """Digest of what the decoded tensor depends on: the source files' paths, sizes and mtimes."""
    base, indices = _unwrap(ds)
    if isinstance(base, data_lib.TarImageFolder):
        files = [base.tar_path]
    elif isinstance(base, data_lib.CheckedImageFolder):
        files = [p for p, _ in base.samples]
    elif isinstance(base, data_lib.EmbeddedPhotos):  # the photos ship inside these wheels
        import skimage
        import sklearn
        files = [f"skimage {skimage.__version__}", f"sklearn {sklearn.__version__}",
                 f"seed {base.seed} size {base.img_size}"]
    else:  # e.g. torchvision's CIFAR10 pickles: every file under its root
        root = Path(getattr(base, "root", "."))
        files = sorted(str(p) for p in root.rglob("*") if p.is_file())
    stats = []
    for f in files:
        try:
            st = os.stat(f)
            stats.append((str(f), st.st_size, st.st_mtime_ns))
        except OSError:  # the version strings above, or a file that vanished: key on the name alone
            stats.append((str(f), None, None))
    blob = json.dumps([type(base).__name__, len(ds), indices, stats])
    return hashlib.sha256(blob.encode()).hexdigest()


def _checksum(images: torch.Tensor, labels: torch.Tensor) -> int:
    crc = zlib.crc32(memoryview(images.contiguous().numpy()).cast("B"))
    return zlib.crc32(memoryview(labels.contiguous().numpy()).cast("B"), crc)


def _load_cache(path: Path, stamp: str, n: int) -> InMemoryImages | None:
    """The cached tensor, or None (logged) when missing, stale, partial or corrupt."""
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, garbage, ...
        log.warning("decoded-image cache %s is unreadable (%s: %s); rebuilding it", path, type(err).__name__, err)
        return None
    try:
        images, labels = obj["images"], obj["labels"]
        problem = (f"format {obj['format']}, expected {CACHE_FORMAT}" if obj["format"] != CACHE_FORMAT else
                   f"images {tuple(images.shape)} {images.dtype}" if (images.dtype != torch.uint8 or images.ndim != 4
                                                                    or images.shape[:2] != (n, 3)) else
                   f"labels {tuple(labels.shape)} {labels.dtype}" if (labels.dtype != torch.int64
                                                                    or labels.shape != (n,)) else
                   "checksum mismatch" if _checksum(images, labels) != obj["checksum"] else None)
    except (KeyError, TypeError, AttributeError) as err:
        problem = f"missing or malformed entry {err}"
    if problem is not None:
        log.warning("decoded-image cache %s is corrupt or partial (%s; %d samples expected); rebuilding it",
                       path, problem, n)
        return None
    if obj["source"] != stamp:
        log.info("decoded-image cache %s is stale (source files changed); rebuilding it", path)
        return None
    return InMemoryImages(images, labels, list(obj["classes"]), obj["name"], obj["split"], list(obj.get("skipped", [])))


def decode_to_memory(name: str, root: str | os.PathLike | None, split: str, *,
                     cache_dir: str | os.PathLike | None = None, img_size: int | None = None,
                     length: int | None = None, skip_corrupt: bool = False,
                     max_corrupt_fraction: float = data_lib.MAX_CORRUPT_FRACTION) -> InMemoryImages:
    """Decode ``build_dataset(name, root, split, None, length=, img_size=)`` once into memory.

    Cached in ``cache_dir`` (default ``default_cache_dir()``) as a ``.pt`` keyed by the source files'
    size and mtime and the dataset's length; stale, partial or corrupt caches are rebuilt. All images
    must have one size (``img_size`` sets it for ``embedded``); otherwise use the per-file pipeline.
    A corrupt image raises ``data.CorruptImageError``; with ``skip_corrupt`` it is replaced by the
    next readable sample, as ``build_dataset`` does.
    """
    ds = data_lib.build_dataset(name, root, split, None, labeled=True, length=length, img_size=img_size,
                                skip_corrupt=skip_corrupt)
    n, stamp = len(ds), _source_stamp(ds)
    if root is None and name == "cifar10":  # the same files under either spelling -> the same cache
        root = data_lib.default_data_root() / "cifar10"
    where = json.dumps([name, split, str(Path(root).resolve()) if root is not None else None, length, img_size,
                        skip_corrupt])
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / f"{name}-{split}-{hashlib.sha256(where.encode()).hexdigest()[:16]}.pt"
    cached = _load_cache(path, stamp, n)
    if cached is not None:
        log.info("%s %s: %d decoded images from %s", name, split, n, path)
        cached.max_corrupt_fraction = max_corrupt_fraction
        return cached

    first, _ = ds[0]
    width, height = first.size
    images = torch.empty(n, 3, height, width, dtype=torch.uint8)
    labels = torch.empty(n, dtype=torch.int64)
    for i in progress(range(n), desc=f"decode {name} {split}", unit="img"):
        img, target = ds[i]
        if img.size != (width, height):
            raise ValueError(f"{name} {split}: sample {i} is {img.size[0]}x{img.size[1]}, sample 0 is "
                             f"{width}x{height}; decode_to_memory needs one image size (use pipeline='files')")
        images[i] = torch.from_numpy(np.array(img, dtype=np.uint8).transpose(2, 0, 1))
        labels[i] = target
    skipped = data_lib.skipped_images(ds)
    if skipped:
        log.warning("%s %s: %d corrupt images replaced by their next readable sample: %s", name, split,
                       len(skipped), ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    classes = list(getattr(_unwrap(ds)[0], "classes", []))
    try:
        save_torch({"format": CACHE_FORMAT, "source": stamp, "name": name, "split": split, "classes": classes,
                    "images": images, "labels": labels, "skipped": skipped, "checksum": _checksum(images, labels)},
                   path)
        log.info("%s %s: %d images decoded, cached in %s (%.0f MB)", name, split, n, path, images.numel() / 1e6)
    except OSError as err:  # a read-only home must not stop training
        log.warning("could not write decoded-image cache %s (%s); continuing without it", path, err)
    return InMemoryImages(images, labels, classes, name, split, skipped, max_corrupt_fraction)


# ----------------------------------------------------------------------------------- which path
def _image_files(folder: Path, limit: int) -> list[Path] | None:
    """Image files under ``folder``, or None as soon as there are more than ``limit``."""
    files: list[Path] = []
    for dirpath, _, names in os.walk(folder):
        # regular files only: opening a FIFO named .jpg would block
        files += [Path(dirpath, f) for f in names
                  if f.lower().endswith(data_lib.IMG_EXTENSIONS) and os.path.isfile(os.path.join(dirpath, f))]
        if len(files) > limit:
            return None
    return files


def fits_in_memory(name: str, root: str | os.PathLike | None = None, split: str = "train") -> bool:
    """Whether ``decode_to_memory`` suits the dataset: always for cifar10 / embedded; for an
    imagefolder, at most ``MAX_MEMORY_FILES`` images of one size, ``MEMORY_BUDGET_BYTES`` decoded."""
    if name not in data_lib.DATASETS:
        raise ValueError(f"unknown dataset name={name!r}; expected one of {data_lib.DATASETS}")
    if name in MEMORY_DATASETS:
        return True
    if root is None:
        return False
    alias = {"test": "val", "val": "test"}.get(split)
    folder = next((Path(root) / s for s in (split, alias) if s and (Path(root) / s).is_dir()), None)
    files = _image_files(folder, MAX_MEMORY_FILES) if folder is not None else None
    if not files:
        return False
    sizes = set()
    for f in files:  # headers only: PIL does not decode until asked
        try:
            with Image.open(f) as img:
                sizes.add(img.size)
        except OSError:
            return False  # let the per-file path report (or skip) the bad file
        if len(sizes) > 1:
            return False
    (w, h), = sizes
    return len(files) * 3 * w * h <= MEMORY_BUDGET_BYTES


def choose_pipeline(name: str, pipeline: str = "auto", *, root: str | os.PathLike | None = None,
                    split: str = "train") -> str:
    """"memory", "files", "gpu-decode" or "dali" for ``pipeline`` (one of ``PIPELINES``); "auto" is memory
    for cifar10 / embedded / small one-size image folders, files otherwise (ImageNet)."""
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown pipeline={pipeline!r}; allowed values: {', '.join(PIPELINES)}")
    if pipeline != "auto":
        return pipeline
    return "memory" if fits_in_memory(name, root, split) else "files"


# ----------------------------------------------------------------------------- batched transforms
def _normalize(x: torch.Tensor) -> torch.Tensor:
    """[0, 255] float -> ImageNet-normalized, in place (ToTensor + Normalize of the PIL path)."""
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD, device=x.device).view(1, 3, 1, 1)
    return x.clamp_(0, 255).div_(255).sub_(mean).div_(std)  # clamp: bicubic overshoots, PIL clips


def _resize_crop_aa(img: torch.Tensor, top: int, left: int, h: int, w: int, size: tuple[int, int]) -> torch.Tensor:
    """One image's integer crop resized with PIL's antialiased bicubic: [3, H, W] -> [3, *size] float."""
    crop = img[None, :, top:top + h, left:left + w].float()
    return F.interpolate(crop, size=size, mode="bicubic", antialias=True, align_corners=False)[0]


class TrainAugment:
    """MAE's pretraining augmentation on a batch: RandomResizedCrop (bicubic) + flip + normalize.

    ``augment(images, seeds)``: images uint8 [B, 3, H, W] (or a list of [3, Hi, Wi]) on any device,
    one integer seed per sample; returns float [B, 3, S, S] on the same device.
    """

    def __init__(self, img_size: int, scale: tuple[float, float] = (0.2, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.5):
        self.size, self.scale, self.flip_p = img_size, scale, flip_p
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        # reused buffers: drawing through them costs a third of fresh torch.empty(1) calls
        self._gen, self._f, self._i = torch.Generator(), torch.empty(1), torch.empty(1, dtype=torch.int64)

    def params(self, height: int, width: int, seed: int) -> tuple[int, int, int, int, bool]:
        """(top, left, h, w, flip) of one sample: torchvision's get_params + flip, same draws."""
        g, f = self._gen, self._f
        g.manual_seed(seed)
        area = height * width
        for _ in range(10):
            target_area = area * f.uniform_(self.scale[0], self.scale[1], generator=g).item()
            aspect = math.exp(f.uniform_(self.log_ratio[0], self.log_ratio[1], generator=g).item())
            w, h = int(round(math.sqrt(target_area * aspect))), int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(self._i.random_(0, height - h + 1, generator=g))
                left = int(self._i.random_(0, width - w + 1, generator=g))
                break
        else:  # torchvision's fallback: the central crop at the nearest allowed aspect ratio
            in_ratio, lo, hi = width / height, math.exp(self.log_ratio[0]), math.exp(self.log_ratio[1])
            w, h = ((width, int(round(width / lo))) if in_ratio < lo else
                    (int(round(height * hi)), height) if in_ratio > hi else (width, height))
            top, left = (height - h) // 2, (width - w) // 2
        flip = f.uniform_(0, 1, generator=g).item() < self.flip_p
        return top, left, h, w, flip

    def __call__(self, images: torch.Tensor | list[torch.Tensor], seeds: Sequence[int] | None) -> torch.Tensor:
        if seeds is None:
            raise ValueError("TrainAugment needs one seed per sample: use a batch sampler yielding (index, seed) "
                             "pairs, e.g. runtime.GlobalBatchSampler")
        S, B = self.size, len(images)
        device = images[0].device
        if torch.is_tensor(images):
            H, W = images.shape[-2:]
            p = [self.params(H, W, int(s)) for s in seeds]
        else:
            p = [self.params(img.shape[-2], img.shape[-1], int(s)) for img, s in zip(images, seeds)]
        out = torch.empty(B, 3, S, S, device=device)
        # crops that are enlarged (all of them at CIFAR size) go through one batched grid_sample;
        # shrunk ones need antialiasing, which grid_sample lacks
        up = [k for k, (_, _, h, w, _) in enumerate(p) if h <= S and w <= S] if torch.is_tensor(images) else []
        if up:
            t = torch.tensor([p[k][:4] for k in up], dtype=torch.float32)
            top, left, h, w = t.unbind(1)
            sign = torch.tensor([-1.0 if p[k][4] else 1.0 for k in up])  # a flip mirrors the x axis
            theta = torch.zeros(len(up), 2, 3)
            # output coordinate u in [-1, 1] -> input x = (w/W) u + (2 left + w)/W - 1 (align_corners=False)
            theta[:, 0, 0], theta[:, 0, 2] = sign * w / W, (2 * left + w) / W - 1
            theta[:, 1, 1], theta[:, 1, 2] = h / H, (2 * top + h) / H - 1
            grid = F.affine_grid(theta.to(device), [len(up), 3, S, S], align_corners=False)
            src = images if len(up) == B else images[torch.tensor(up, device=device)]
            res = F.grid_sample(src.float(), grid, mode="bicubic", padding_mode="border", align_corners=False)
            if len(up) == B:
                out = res
            else:
                out[up] = res
        for k in sorted(set(range(B)) - set(up)):
            top, left, h, w, flip = p[k]
            res = _resize_crop_aa(images[k], top, left, h, w, (S, S))
            out[k] = res.flip(-1) if flip else res
        return _normalize(out)


class EvalResize:
    """``data.eval_transform`` on a batch: resize the short side (to S, or S / 0.875 from 224 px up)
    with antialiased bicubic, center crop S, normalize. Seeds are accepted and ignored."""

    def __init__(self, img_size: int):
        self.size = img_size
        self.resize = int(img_size / 0.875) if img_size >= 224 else img_size

    def _one_size(self, x: torch.Tensor) -> torch.Tensor:
        """Images of one size, [B, 3, H, W] -> float [B, 3, S, S] (not yet normalized)."""
        H, W = x.shape[-2:]
        short, long = min(H, W), max(H, W)
        new_long = int(self.resize * long / short)  # torchvision's Resize(int) rule
        rh, rw = (self.resize, new_long) if H <= W else (new_long, self.resize)
        x = x.float()
        if (rh, rw) != (H, W):
            x = F.interpolate(x, size=(rh, rw), mode="bicubic", antialias=True, align_corners=False)
        top, left = int(round((rh - self.size) / 2.0)), int(round((rw - self.size) / 2.0))
        return x[..., top:top + self.size, left:left + self.size]

    def __call__(self, images: torch.Tensor | list[torch.Tensor], seeds: Sequence[int] | None = None) -> torch.Tensor:
        if torch.is_tensor(images):
            return _normalize(self._one_size(images).contiguous())
        return _normalize(torch.cat([self._one_size(img[None]) for img in images]))


# ------------------------------------------------------------------------------------- loaders
def _split_batch(batch: list) -> tuple[list[int], list[int] | None]:
    """(indices, seeds) from a list of (index, seed) pairs, or (indices, None) from plain indices."""
    if batch and isinstance(batch[0], (tuple, list)):
        indices, seeds = zip(*batch)
        return list(indices), list(seeds)
    return list(batch), None


class BatchedLoader:
    """Iterates like a DataLoader with ``batch_sampler``: (float images [B,3,S,S], int64 labels [B]),
    both on ``device``. The sampler yields (index, seed) pairs (training) or indices (evaluation)."""

    def __init__(self, images: InMemoryImages, batch_sampler, transform, device: torch.device | str):
        self.images, self.batch_sampler, self.transform = images, batch_sampler, transform
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        cuda = self.device.type == "cuda"
        for batch in self.batch_sampler:
            indices, seeds = _split_batch(batch)
            idx = torch.as_tensor(indices, dtype=torch.int64)
            x, y = self.images.images.index_select(0, idx), self.images.labels.index_select(0, idx)
            if cuda:  # pinned: the copy overlaps the previous step's kernels
                x, y = x.pin_memory(), y.pin_memory()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            yield self.transform(x, seeds), y


class JpegBytes(Dataset):
    """The raw bytes of each image of a ``build_dataset`` tar or folder dataset: no decoding, so
    workers only do I/O. Items: ``index`` or ``(index, seed)`` -> (uint8 bytes, target, seed)."""

    def __init__(self, dataset: Dataset):
        self.base, self.indices = _unwrap(dataset)
        if not isinstance(self.base, (data_lib.TarImageFolder, data_lib.CheckedImageFolder)):
            raise ValueError(f"gpu-decode needs JPEG files (a tar or image folder), not {type(self.base).__name__}")
        self.length = len(dataset)
        self._fh, self._pid = None, None

    def __len__(self) -> int:
        return self.length

    def __getstate__(self):
        return {**self.__dict__, "_fh": None, "_pid": None}

    def __getitem__(self, item):
        index, seed = item if isinstance(item, (tuple, list)) else (item, None)
        i = self.indices[index] if self.indices is not None else index
        base = self.base
        if isinstance(base, data_lib.TarImageFolder):
            if self._fh is None or self._pid != os.getpid():  # one handle per worker process
                self._fh, self._pid = open(base.tar_path, "rb"), os.getpid()
            self._fh.seek(int(base.offsets[i]))
            raw, target = self._fh.read(int(base.sizes[i])), base.targets[i]
        else:
            path, target = base.samples[i]
            raw = Path(path).read_bytes()
        return torch.frombuffer(bytearray(raw), dtype=torch.uint8), target, seed


def _collate_bytes(batch):
    data, targets, seeds = zip(*batch)
    return list(data), torch.tensor(targets, dtype=torch.int64), (None if seeds[0] is None else list(seeds))


class GpuDecodeLoader:
    """Like ``BatchedLoader`` for JPEG datasets too big for memory: ``num_workers`` processes read
    bytes, ``torchvision.io.decode_jpeg`` decodes the batch on ``device`` (nvJPEG on CUDA), then
    ``transform`` augments it there. Experimental (``pipeline="gpu-decode"``; measured in
    docs/gpu_and_clusters.md)."""

    def __init__(self, dataset: Dataset, batch_sampler, transform, device: torch.device | str, num_workers: int = 4):
        self.device, self.transform = torch.device(device), transform
        self.loader = torch.utils.data.DataLoader(JpegBytes(dataset), batch_sampler=batch_sampler,
                                                  num_workers=num_workers, collate_fn=_collate_bytes,
                                                  persistent_workers=num_workers > 0)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for data, labels, seeds in self.loader:
            images = decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
            yield self.transform(images, seeds), labels.to(self.device, non_blocking=True)
