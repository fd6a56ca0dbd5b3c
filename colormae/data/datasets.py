"""Datasets and transforms for pretraining and classification.

Three dataset names (``DATASETS``), all built by ``build_dataset`` and all returning
``(image, target)`` pairs like torchvision (``target = -1`` when ``labeled=False``, so MAE's
``for samples, _ in loader`` works either way):

* ``embedded``: deterministic random crops of the photographs that ship inside the scikit-image and
  scikit-learn wheels. Needs no download, so it is the offline default; labeled, the task is "which
  photo is this crop from".
* ``cifar10``: ``train.tar``/``test.tar`` holding ``<split>/<class>/<file>.jpg`` (read in place),
  an extracted ``<split>/<class>/`` tree, or torchvision's ``cifar-10-batches-py``.
* ``imagefolder``: any ImageNet-style tree with ``train/`` and ``val/``.

A corrupt or unreadable image (undecodable or truncated data, a FIFO or device named ``.jpg``)
raises ``CorruptImageError`` naming the file. With ``skip_corrupt=True`` it is replaced by the next
readable sample and recorded in a byte-per-sample array in shared memory, created in the dataset's
constructor: DataLoader workers inherit it (fork) or receive it while being spawned
(spawn/forkserver), so ``skipped_images(dataset)`` read in the main process sees what every worker
skipped, and ``check_corrupt_fraction`` stops a run that skips too many.

Data that is wrong must not look right: 16-bit images are scaled to 8 bits (not clipped at 255),
pixel modes without a known range are an error, a truncated tar is an error, and a CIFAR-10 copy
whose size differs from the real one (``KNOWN_SIZES``) is an error naming the file and both counts.
"""
from __future__ import annotations

import functools
import io
import logging
import multiprocessing as mp
import os
import stat
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset, Subset
from torchvision import datasets, transforms
from torchvision.transforms import InterpolationMode

from ..files import ROOT

log = logging.getLogger(__name__)

DATASETS = ("embedded", "cifar10", "imagefolder")
SPLITS = ("train", "test", "val")  # "test" and "val" both mean the held-out split
EMBEDDED_LENGTH = {"train": 2048, "test": 512}
EMBEDDED_SEED = {"train": 0, "test": 1}  # different seeds: the test crops are not the train crops
# What a test score on a dataset measures, where that is not what its name suggests. The embedded test
# crops are other crops of the same photographs as the train crops (25-100 % of a photo's short side,
# so they overlap them heavily): the score is near-duplicate retrieval, not generalisation to new images.
SPLIT_CAVEATS = {"embedded": "the embedded test split holds other crops of the same photos as the train split, so "
                             "this score measures near-duplicate retrieval (which photo a crop comes from), not "
                             "generalisation; use cifar10 or imagefolder for a real test"}
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Images per split of the data sets whose real size is known. A dataset that has all of
# CIFAR-10's classes (so it claims to be CIFAR-10) must have exactly this many images; small
# synthetic copies with fewer classes (tests) are not checked.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
KNOWN_SIZES = {"cifar10": {"train": 50_000, "test": 10_000}}
MAX_CORRUPT_FRACTION = 0.01  # default ceiling on images skipped as corrupt (--max-corrupt-fraction)
SKIP_CORRUPT_HINT = ("to skip unreadable images and count them instead, pass --skip-corrupt "
                     "(build_dataset(..., skip_corrupt=True))")

# Loader name in skimage.data -> file it reads. Only photographs that ship inside the wheel: any
# other skimage image is fetched with pooch (a download, or a silent pytest skip when offline).
# Left out: synthetic or line-art images (horse silhouette, logo, text, page, checkerboards),
# and tiny ones (lfw_subset, microaneurysms).
_SKIMAGE_PHOTOS = {
    "astronaut": "astronaut.png", "brick": "brick.png", "camera": "camera.png",
    "chelsea": "chelsea.png", "coffee": "coffee.png", "coins": "coins.png", "grass": "grass.png",
    "gravel": "gravel.png", "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png", "moon": "moon.png", "motorcycle": "motorcycle_left.png",
    "retina": "retina.jpg", "rocket": "rocket.jpg",
}


# ---------------------------------------------------------------------------------------- transforms
def pretrain_transform(img_size: int) -> Callable:
    """MAE's pretraining augmentation: random resized crop (scale 0.2-1), flip, normalize."""
    return transforms.Compose([
        transforms.RandomResizedCrop(img_size, scale=(0.2, 1.0), interpolation=InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    ])


def eval_transform(img_size: int) -> Callable:
    """Evaluation: ImageNet's resize to img_size / 0.875 + center crop; small images just resize."""
    # 32 or 64 px images have no border to spare; the crop then only matters for non-square inputs.
    resize = int(img_size / 0.875) if img_size >= 224 else img_size
    return transforms.Compose([
        transforms.Resize(resize, interpolation=InterpolationMode.BICUBIC),
        transforms.CenterCrop(img_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    ])


# -------------------------------------------------------------------------------- corrupt images
class CorruptImageError(OSError):
    """An image file or tar member that cannot be read or decoded; ``filename`` names it."""

    def __init__(self, message: str, filename: str | None = None):
        # One positional argument: DataLoader re-raises a worker's error as ``type(err)(message)``.
        super().__init__(message)
        self.filename = filename

    def __str__(self) -> str:
        return str(self.args[0])  # not OSError's "[Errno None] None: <filename>" format

    def __reduce__(self):
        return type(self), (self.args[0], self.filename)


_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_SIXTEEN_BIT_AS_I = ("PNG", "PPM")  # formats whose mode "I" holds 16-bit grey scaled to 0-65535


def _to_rgb(img: Image.Image, name: str) -> Image.Image:
    """8-bit RGB with the full range kept: 16-bit grey (I;16*: 16-bit PNG / TIFF; mode I from a
    16-bit PGM) is scaled by 255 / 65535 instead of being clipped at 255 (PIL's ``convert`` would
    turn almost every pixel white). Other 32-bit integer or float pixels have no known range: an
    error, not a guess."""
    if img.mode in _SIXTEEN_BIT_MODES or (img.mode == "I" and img.format in _SIXTEEN_BIT_AS_I):
        a = np.asarray(img).astype(np.float64)
        return Image.fromarray(np.round(a * (255.0 / 65535.0)).astype(np.uint8), mode="L").convert("RGB")
    if img.mode in ("I", "F"):
        raise CorruptImageError(f"cannot read image {name}: pixel mode {img.mode} (32-bit "
                                f"{'integer' if img.mode == 'I' else 'float'}) has no known range; "
                                "convert it to 8 or 16 bits per channel", name)
    return img.convert("RGB")  # convert() forces the decode, so truncation shows up here


def _decode(fp, name: str) -> Image.Image:
    """Open and fully decode an image as RGB, or raise CorruptImageError naming ``name``."""
    try:
        with Image.open(fp) as img:
            img.load()  # decode everything now: truncated scan data raises here
            return _to_rgb(img, name)
    except CorruptImageError:
        raise
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, struct.error, ...)
        raise CorruptImageError(f"cannot read image {name}: {type(err).__name__}: {err}", name) from err


def _open_rgb(path: str) -> Image.Image:
    """Decode the regular file ``path``. A FIFO, device or socket named like an image is rejected
    without reading it: opened non-blocking (a FIFO without a writer would block forever) and
    checked with fstat."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as err:  # permission denied, vanished file, ...
        raise CorruptImageError(f"cannot read image {path}: {err}", path) from err
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
                    else "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
                    else "not a regular file")
            raise CorruptImageError(f"cannot read image {path}: it is {kind}, not a regular file", path)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        return _decode(f, path)


# the one image decoder of every dataset kind (classification, segmentation, detection): RGB,
# 16-bit scaled (not clipped), unreadable files a CorruptImageError naming them
decode_image = _decode            # (file object or path, name for messages) -> PIL RGB
decode_image_file = _open_rgb     # a path, refusing FIFOs and devices


class _SkipCorrupt:
    """Mixin for file-backed datasets: ``__getitem__`` with the corrupt-image policy.

    Subclasses define ``_read(i) -> (PIL image, target)``, ``sample_name(i)``, ``transform`` and
    ``labeled``, and call ``_init_skip`` in their constructor. With ``skip_corrupt=True`` the
    dataset can be pickled only while a process is being spawned (as DataLoader does), not
    deep-copied: multiprocessing shares its skip record by inheritance only.
    """

    def _init_skip(self, n: int, skip_corrupt: bool) -> None:
        self.skip_corrupt = skip_corrupt
        # One byte per sample (1.3 MB for ImageNet) in shared memory, made here so that workers
        # inherit it (fork) or get it pickled while they are spawned. Writes are idempotent, so no
        # lock is needed, and a file skipped in several epochs or workers counts once.
        self._skipped = mp.RawArray("B", max(n, 1)) if skip_corrupt else None

    def __getitem__(self, index: int):
        n = len(self)
        index = range(n)[index]  # IndexError past the end, negative indices allowed
        for offset in range(n):
            i = (index + offset) % n
            try:
                img, target = self._read(i)
                break
            except CorruptImageError as err:
                if not self.skip_corrupt:
                    raise CorruptImageError(f"{err} ({SKIP_CORRUPT_HINT})", err.filename) from err
                if not self._skipped[i]:
                    log.warning("skipping corrupt image (%s)", err)
                self._skipped[i] = 1
        else:
            raise CorruptImageError(f"no readable image among the {n} samples of {self!r}")
        if self.transform is not None:
            img = self.transform(img)
        return img, (target if self.labeled else -1)

    @property
    def skipped_names(self) -> list[str]:
        """Names of the samples skipped so far as corrupt, by any process using this dataset."""
        if self._skipped is None:
            return []
        flags = np.frombuffer(self._skipped, dtype=np.uint8)[:len(self)]
        return [self.sample_name(int(i)) for i in np.flatnonzero(flags)]

    @property
    def num_skipped(self) -> int:
        return len(self.skipped_names)


# ------------------------------------------------------------------------------------ datasets
class TarImageFolder(_SkipCorrupt, Dataset):
    """An ImageFolder stored in an uncompressed tar: members ``[<prefix>/]<class>/<file>``.

    The member list is indexed once here; reads are a seek + read at the member's offset. The file
    handle is opened lazily in each process (and dropped when pickled), so workers never share one.
    """

    def __init__(self, tar_path: str | os.PathLike, transform: Callable | None = None, *,
                 labeled: bool = True, skip_corrupt: bool = False):
        self.tar_path = str(tar_path)
        self.transform, self.labeled = transform, labeled
        every, cut_error = [], None
        try:
            with tarfile.open(self.tar_path, "r:") as tf:  # "r:": offsets only mean something uncompressed
                try:
                    for m in tf:
                        every.append(m)
                except tarfile.ReadError as err:  # "unexpected end of data": cut inside a member
                    cut_error = err
                end = tf.offset  # where tarfile stopped: the end-of-archive block, if the tar is whole
        except tarfile.ReadError as err:
            raise ValueError(f"{self.tar_path} is not a readable uncompressed tar ({err}); "
                             "extract it or repack it with plain `tar -cf`") from err
        members = [m for m in every if m.isreg() and m.name.lower().endswith(IMG_EXTENSIONS)]
        self._check_complete(every, end, members, cut_error)
        if not members:
            raise FileNotFoundError(f"no images ({', '.join(IMG_EXTENSIONS)}) inside {self.tar_path}")
        members.sort(key=lambda m: m.name)
        self.names = [m.name for m in members]
        self.offsets = np.array([m.offset_data for m in members], dtype=np.int64)
        self.sizes = np.array([m.size for m in members], dtype=np.int64)
        class_of = [PurePosixPath(m.name).parent.name for m in members]
        self.classes = sorted(set(class_of))
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.targets = [self.class_to_idx[c] for c in class_of]
        self._fh, self._fh_pid = None, None
        self._init_skip(len(self.names), skip_corrupt)

    def _check_complete(self, every: list, end: int, members: list, cut_error: Exception | None) -> None:
        """A cut tar must not read as a shorter one (tarfile stops quietly at a cut between
        members): the members' data must all be in the file and the end-of-archive block follow."""
        size = os.path.getsize(self.tar_path)
        cut = next((m for m in every if m.offset_data + m.size > size), None)
        if cut is None and every and cut_error is not None:
            cut = every[-1]  # tarfile gave up while skipping past the last member's data
        with open(self.tar_path, "rb") as f:
            f.seek(end)
            marker = f.read(tarfile.BLOCKSIZE)
        if cut is not None or len(marker) < tarfile.BLOCKSIZE or marker.count(0) != tarfile.BLOCKSIZE:
            where = (f"it ends inside member {cut.name}" if cut is not None
                     else f"no end-of-archive block after {len(every)} members")
            complete = sum(1 for m in members if m is not cut)
            raise ValueError(f"{self.tar_path} is truncated ({size:,} bytes; {where}): "
                             f"{complete:,} complete images before the cut. Copy or download the file again.")

    def __len__(self) -> int:
        return len(self.names)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fh"], state["_fh_pid"] = None, None
        return state

    def sample_name(self, index: int) -> str:
        return f"{self.tar_path}:{self.names[index]}"

    def _read(self, index: int) -> tuple[Image.Image, int]:
        if self._fh is None or self._fh_pid != os.getpid():  # a forked worker opens its own handle
            self._fh, self._fh_pid = open(self.tar_path, "rb"), os.getpid()
        name, size = self.sample_name(index), int(self.sizes[index])
        try:
            self._fh.seek(int(self.offsets[index]))
            data = self._fh.read(size)
        except OSError as err:
            raise CorruptImageError(f"cannot read image {name}: {err}", name) from err
        if len(data) != size:
            raise CorruptImageError(f"cannot read image {name}: truncated ({len(data)} of {size} bytes)", name)
        return _decode(io.BytesIO(data), name), self.targets[index]


class CheckedImageFolder(_SkipCorrupt, datasets.ImageFolder):
    """torchvision's ImageFolder whose unreadable files raise CorruptImageError (or are skipped)."""

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None, *,
                 labeled: bool = True, skip_corrupt: bool = False):
        super().__init__(str(root), transform=transform, loader=_open_rgb)
        self.labeled = labeled
        self._init_skip(len(self.samples), skip_corrupt)

    def sample_name(self, index: int) -> str:
        return self.samples[index][0]

    @staticmethod
    def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        """torchvision's scan without following directory symlinks (``os.walk`` with
        ``followlinks=True`` there: a link to a parent folder repeats the tree until the path is
        too long). A symlinked file is kept; a symlinked folder below a class folder is skipped, with a
        warning."""
        return scan_image_folder(directory, class_to_idx, extensions or IMG_EXTENSIONS)

    def _read(self, index: int) -> tuple[Image.Image, int]:
        path, target = self.samples[index]
        return self.loader(path), target


def scan_image_folder(directory, class_to_idx: dict[str, int], extensions) -> list[tuple[str, int]]:
    """(path, class index) of every image under ``directory/<class>/`` (sorted), walking real
    folders only: directory symlinks are not followed (a loop such as ``cat/up -> ..`` would
    multiply the data set)."""
    extensions = tuple(e.lower() for e in extensions)
    samples = []
    for cls in sorted(class_to_idx):
        top = os.path.join(directory, cls)  # a class folder may itself be a link; links below it are not followed
        for dirpath, dirnames, filenames in sorted(os.walk(top, followlinks=False)):
            for d in dirnames:
                if os.path.islink(os.path.join(dirpath, d)):
                    log.warning("not following the folder symlink %s", os.path.join(dirpath, d))
            for name in sorted(filenames):
                if name.lower().endswith(extensions):
                    samples.append((os.path.join(dirpath, name), class_to_idx[cls]))
    if not samples:
        raise FileNotFoundError(f"found no valid image file in {directory} (extensions {', '.join(extensions)})")
    return samples


def split_caveat(dataset_name: str) -> str | None:
    """What a test score on ``dataset_name`` measures when that is not what its name suggests, or None."""
    return SPLIT_CAVEATS.get(dataset_name)


@functools.lru_cache(maxsize=None)
def embedded_photos() -> tuple[tuple[str, Image.Image], ...]:
    """The bundled photographs as ``(name, RGB image)``, loaded once per process."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = []
    skimage_dir = Path(skimage.data.__file__).parent
    for name, filename in _SKIMAGE_PHOTOS.items():
        if not (skimage_dir / filename).is_file():  # never let skimage fall through to pooch
            log.debug("skimage photo %s not shipped in this version, skipped", name)
            continue
        try:
            array = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
        except Exception as err:  # e.g. a loader renamed in a future scikit-image
            log.warning("skimage photo %s could not be loaded (%s), skipped", name, err)
            continue
        photos.append((name, Image.fromarray(np.asarray(array, dtype=np.uint8)).convert("RGB")))
    sample = load_sample_images()
    for filename, array in zip(sample.filenames, sample.images):
        photos.append((Path(filename).stem, Image.fromarray(array).convert("RGB")))
    if len(photos) < 2:
        raise RuntimeError("fewer than 2 bundled photographs found in scikit-image / scikit-learn")
    return tuple(photos)


class EmbeddedPhotos(Dataset):
    """Deterministic random square crops of the bundled photographs, resized to ``img_size``.

    Sample ``i`` depends only on ``(seed, i)``: its photo, crop side (25-100% of the photo's short
    side) and position. Target = index of the source photo (``classes`` holds the photo names).
    """

    def __init__(self, length: int = 2048, img_size: int = 224, transform: Callable | None = None, *,
                 seed: int = 0, labeled: bool = True):
        self.length, self.img_size, self.seed = length, img_size, seed
        self.transform, self.labeled = transform, labeled
        self.classes = [name for name, _ in embedded_photos()]

    def __len__(self) -> int:
        return self.length

    def crop(self, index: int) -> tuple[Image.Image, int]:
        """The untransformed PIL crop of sample ``index`` and its photo index."""
        rng = np.random.default_rng((self.seed, index))
        label = int(rng.integers(len(self.classes)))
        photo = embedded_photos()[label][1]
        width, height = photo.size
        side = int(min(width, height) * rng.uniform(0.25, 1.0))
        left, top = int(rng.integers(width - side + 1)), int(rng.integers(height - side + 1))
        box = (left, top, left + side, top + side)
        return photo.resize((self.img_size, self.img_size), Image.BICUBIC, box=box), label

    def __getitem__(self, index: int):
        img, label = self.crop(range(self.length)[index])
        if self.transform is not None:
            img = self.transform(img)
        return img, (label if self.labeled else -1)


class _Subset(Subset):
    """A Subset that still answers ``classes``, ``labeled``, ``skipped_names``... of its dataset."""

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("dataset", "indices"):  # no recursion while unpickling
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _unlabeled(target: int) -> int:
    return -1  # module level, so spawn workers can pickle it


# ------------------------------------------------------------------------------------ builders
def default_data_root() -> Path:
    """``$COLORMAE_DATA`` if set, else ``<repo>/../shared/data``."""
    env = os.environ.get("COLORMAE_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def _find_split(root: Path, names: tuple[str, ...], suffix: str = "") -> Path | None:
    return next((root / f"{n}{suffix}" for n in names if (root / f"{n}{suffix}").exists()), None)


def build_dataset(name: str, root: str | os.PathLike | None = None, split: str = "train",
                  transform: Callable | None = None, *, labeled: bool = True, skip_corrupt: bool = False,
                  length: int | None = None, img_size: int | None = None,
                  max_corrupt_fraction: float = MAX_CORRUPT_FRACTION) -> Dataset:
    """Build dataset ``name`` (one of ``DATASETS``) for ``split`` ("train", or "test"/"val").

    ``root``: ignored for embedded; cifar10 defaults to ``default_data_root()/cifar10``; required
    for imagefolder. ``length``: number of crops for embedded (default 2048 train / 512 test), an
    evenly spaced subset of the others. ``img_size``: side of the embedded crops before ``transform``
    (default 224). ``max_corrupt_fraction``: the dataset's own ceiling on images skipped as corrupt
    (with ``skip_corrupt``), applied by ``check_skipped``.
    Names, split and paths are checked before any image is read.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset name={name!r}; expected one of {DATASETS}")
    if split not in SPLITS:
        raise ValueError(f"unknown split={split!r}; expected one of {SPLITS}")
    if length is not None and (not isinstance(length, int) or length < 1):
        raise ValueError(f"length must be a positive int or None, got {length!r}")
    held_out = split != "train"
    # The held-out split is "test" for CIFAR and "val" for ImageNet; accept either spelling.
    dir_names = (split,) if not held_out else (split, "val" if split == "test" else "test")

    if name == "embedded":
        key = "test" if held_out else "train"
        ds = EmbeddedPhotos(length or EMBEDDED_LENGTH[key], img_size or 224, transform,
                            seed=EMBEDDED_SEED[key], labeled=labeled)
        ds.max_corrupt_fraction = max_corrupt_fraction
        log.info("embedded %s: %d crops of %d photos", key, len(ds), len(ds.classes))
        return ds

    if name == "imagefolder" and root is None:
        raise ValueError("imagefolder needs root= (a folder with train/ and val/ class subfolders)")
    root = Path(root) if root is not None else default_data_root() / "cifar10"
    if name == "cifar10":
        expected = (f"{split}.tar (members {split}/<class>/*.jpg), an extracted {split}/<class>/ tree, "
                    "or torchvision's cifar-10-batches-py/")
        if not root.is_dir():
            raise FileNotFoundError(f"cifar10 root {root} does not exist; expected there: {expected}")
        if (tar := _find_split(root, dir_names, ".tar")) is not None:
            ds = TarImageFolder(tar, transform, labeled=labeled, skip_corrupt=skip_corrupt)
        elif (folder := _find_split(root, dir_names)) is not None:
            ds = CheckedImageFolder(folder, transform, labeled=labeled, skip_corrupt=skip_corrupt)
        elif (root / "cifar-10-batches-py").is_dir():
            ds = datasets.CIFAR10(str(root), train=not held_out, transform=transform, download=False,
                                  target_transform=None if labeled else _unlabeled)
            ds.labeled = labeled  # pickled arrays: nothing can be corrupt, skip_corrupt is moot
        else:
            raise FileNotFoundError(f"no cifar10 {split} split in {root}; expected there: {expected}")
        source = tar if tar is not None else folder if folder is not None else root / "cifar-10-batches-py"
        _check_known_size(ds, name, "test" if held_out else "train", source)
    else:
        if not root.is_dir():
            raise FileNotFoundError(f"imagefolder root {root} does not exist; expected train/ and val/ there")
        if (folder := _find_split(root, dir_names)) is None:
            raise FileNotFoundError(f"no {' or '.join(dir_names)}/ folder in imagefolder root {root}")
        ds = CheckedImageFolder(folder, transform, labeled=labeled, skip_corrupt=skip_corrupt)
    log.info("%s %s: %d images, %d classes, from %s", name, split, len(ds), len(ds.classes), root)
    ds.max_corrupt_fraction = max_corrupt_fraction  # the dataset owns its corrupt-image ceiling

    if length is not None and length < len(ds):
        # Evenly spaced, not the first `length`: folders are sorted by class, so this keeps all classes.
        ds = _Subset(ds, np.linspace(0, len(ds) - 1, length).round().astype(int).tolist())
    return ds


def _check_known_size(ds: Dataset, name: str, split: str, source: Path) -> None:
    """A copy of a data set with a known size (``KNOWN_SIZES``) that has all its classes must have
    exactly that many images: fewer means a cut download or a half-extracted tree, never data to
    train on. Copies with fewer classes (small synthetic test sets) are not checked."""
    known = KNOWN_SIZES.get(name, {}).get(split)
    if known is None or set(getattr(ds, "classes", ())) != set(CIFAR10_CLASSES):
        return
    if len(ds) != known:
        raise ValueError(f"{source}: {len(ds):,} images, but {name} {split} has {known:,}: "
                         f"the copy is {'incomplete' if len(ds) < known else 'not the original'} "
                         "(a truncated tar or a partly extracted folder?). Copy or download it again.")


def _unwrap(dataset: Dataset) -> Dataset:
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


def num_classes(dataset: Dataset) -> int:
    """Number of classes of a dataset from ``build_dataset`` (0 if built with labeled=False)."""
    base = _unwrap(dataset)
    if not getattr(base, "labeled", True):
        return 0
    if not hasattr(base, "classes"):
        raise ValueError(f"{type(base).__name__} has no `classes`; cannot tell its number of classes")
    return len(base.classes)


def skipped_images(dataset: Dataset) -> list[str]:
    """Files skipped as corrupt so far (by all DataLoader workers); [] when nothing can be skipped."""
    return list(getattr(_unwrap(dataset), "skipped_names", []))


def skip_unreadable(items: list, paths: Callable[[Any], Sequence], max_fraction: float) -> tuple[list, list[str]]:
    """``--skip-corrupt`` of datasets that index their files up front (segmentation, detection):
    (the items whose files all open, headers read, the names of the others). The skipped are named
    in one warning; more than ``max_fraction`` of ``items`` is a ValueError listing them."""
    kept, skipped = [], []
    for item in items:
        try:
            for path in paths(item):
                with Image.open(path):
                    pass
            kept.append(item)
        except Exception:  # noqa: BLE001 - zero-byte, truncated header, foreign file
            skipped.append(str(paths(item)[0]))
    if skipped:
        log.warning("skipping %d unreadable image(s) (--skip-corrupt): %s", len(skipped), ", ".join(skipped[:10]))
    if len(skipped) > max_fraction * len(items):
        raise ValueError(f"{len(skipped)} of {len(items)} images ({len(skipped) / len(items):.2%}) are unreadable, "
                         f"more than the allowed {max_fraction:.2%} (--max-corrupt-fraction): "
                         + ", ".join(skipped[:20]))
    return kept, skipped


def check_skipped(datasets: Sequence[Dataset]) -> None:
    """``check_corrupt_fraction`` for each dataset, against the ceiling it was built with: what a
    training loop calls after each epoch (datasets built without ``skip_corrupt`` skip nothing)."""
    for ds in datasets:
        check_corrupt_fraction(ds)


def check_corrupt_fraction(dataset: Dataset, max_fraction: float | None = None) -> None:
    """Raise ValueError, listing the skipped files, when more than ``max_fraction`` (default: the
    dataset's own ``max_corrupt_fraction``, set where it was built) of ``dataset`` was skipped as
    corrupt (``skip_corrupt=True``); a dataset that skips nothing passes.

    The fraction is the number of distinct skipped files over ``len(dataset)`` (one epoch's
    samples). Meant to be called after each epoch, so a run over a badly damaged copy stops
    instead of training on whatever is left.
    """
    if max_fraction is None:
        max_fraction = getattr(_unwrap(dataset), "max_corrupt_fraction", MAX_CORRUPT_FRACTION)
    if not 0 <= max_fraction <= 1:
        raise ValueError(f"max_fraction={max_fraction} must be in [0, 1]")
    skipped = skipped_images(dataset)
    n = len(dataset)
    if n and len(skipped) > max_fraction * n:
        shown = "\n  ".join(skipped[:50]) + (f"\n  ... and {len(skipped) - 50} more" if len(skipped) > 50 else "")
        raise ValueError(f"{len(skipped)} of {n} images ({len(skipped) / n:.2%}) were skipped as corrupt, "
                         f"more than the allowed {max_fraction:.2%} (--max-corrupt-fraction); "
                         f"skipped:\n  {shown}")


def sample_images(name: str, root: str | os.PathLike | None, split: str, img_size: int, n: int,
                  spacing: int = 16) -> torch.Tensor:
    """``n`` evaluation-transformed images [n, C, H, W], evenly spaced through the split (every
    ``spacing``-th of an evenly spaced subset): a fixed, varied set for figures."""
    ds = build_dataset(name, root, split, eval_transform(img_size), labeled=False, img_size=img_size,
                       length=n * spacing)
    if len(ds) < n:
        raise ValueError(f"n={n} images asked for, but the {split} split of {name} has {len(ds)}: ask for at "
                         f"most {len(ds)}")
    # a split smaller than n x spacing: n evenly spaced images of all it has
    picks = range(0, n * spacing, spacing) if len(ds) >= n * spacing else np.linspace(0, len(ds) - 1, n).round()
    return torch.stack([ds[int(i)][0] for i in picks])
