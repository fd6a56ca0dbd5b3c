"""Datasets and transforms: embedded photos, CIFAR tars, ImageFolders, corrupt images, errors."""
import io
import os
import pickle
import socket
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from colormae.data import datasets as data
from colormae.data.datasets import (
    CIFAR10_CLASSES,
    CorruptImageError,
    build_dataset,
    check_corrupt_fraction,
    default_data_root,
    eval_transform,
    num_classes,
    pretrain_transform,
    skipped_images,
)

REAL_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
CLASSES = ("cat", "dog", "frog")


def _jpeg_bytes(seed: int, size: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _make_tree(root: Path, split: str, per_class: int = 4, corrupt: str | None = None) -> None:
    for c, cls in enumerate(CLASSES):
        (root / split / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (root / split / cls / f"{i:04d}.jpg").write_bytes(_jpeg_bytes(10 * c + i))
    if corrupt:
        (root / split / corrupt).write_bytes(b"this is not a jpeg" * 10)


def _make_tar(root: Path, split: str, per_class: int = 4, corrupt: str | None = None,
              extra: dict[str, bytes] | None = None, classes=CLASSES) -> Path:
    """A tar in the layout of /work/shared/data/cifar10: <split>/<class>/<NNNN>.jpg."""
    members = {f"{split}/{cls}/{i:04d}.jpg": _jpeg_bytes(10 * c + i)
               for c, cls in enumerate(classes) for i in range(per_class)}
    if corrupt:
        members[f"{split}/{corrupt}"] = b"garbage bytes" * 20
    members.update(extra or {})
    path = root / f"{split}.tar"
    with tarfile.open(path, "w") as tf:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    return path


def _collect(ds, **loader_kwargs):
    batches = iter(DataLoader(ds, batch_size=5, **loader_kwargs))
    try:
        xs, ys = zip(*batches)
        return torch.cat(xs), torch.cat(ys)
    finally:
        # After a worker error torch's re-raise leaves the iterator in a reference cycle; shut its
        # workers down now, or the garbage collector later waits 5 s per worker to join them.
        if hasattr(batches, "_shutdown_workers"):
            batches._shutdown_workers()


# ------------------------------------------------------------------------------------ transforms
@pytest.mark.parametrize("size", [32, 64, 224])
def test_transform_output_sizes(size):
    img = Image.fromarray(np.zeros((300, 200, 3), dtype=np.uint8))  # 200 wide, 300 tall
    assert pretrain_transform(size)(img).shape == (3, size, size)
    assert eval_transform(size)(img).shape == (3, size, size)


def test_eval_transform_resizes_by_crop_pct():
    assert eval_transform(224).transforms[0].size == 256
    assert eval_transform(32).transforms[0].size == 32


# -------------------------------------------------------------------------------------- embedded
def test_embedded_needs_no_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the embedded dataset tried to use the network")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    data.embedded_photos.cache_clear()
    photos = data.embedded_photos()
    names = [n for n, _ in photos]
    assert {"astronaut", "chelsea", "coffee", "china", "flower"} <= set(names)
    assert len(names) == len(set(names)) >= 10
    assert all(img.mode == "RGB" for _, img in photos)  # grayscale ones converted


def test_embedded_deterministic_and_shapes():
    ds = build_dataset("embedded", None, "train", eval_transform(64), img_size=64, length=16)
    assert len(ds) == 16
    x, y = ds[3]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert torch.equal(x, ds[3][0])
    again = build_dataset("embedded", None, "train", eval_transform(64), img_size=64, length=16)
    assert torch.equal(x, again[3][0]) and y == again[3][1]
    assert not torch.equal(x, ds[4][0])
    assert ds.crop(0)[0].size == (64, 64)
    assert build_dataset("embedded", None, "train", pretrain_transform(32), img_size=48)[0][0].shape == (3, 32, 32)


def test_embedded_labels_and_splits():
    train = build_dataset("embedded", None, "train", eval_transform(32), img_size=32)
    test = build_dataset("embedded", None, "test", eval_transform(32), img_size=32)
    assert (len(train), len(test)) == (2048, 512)
    k = num_classes(train)
    assert k == num_classes(test) == len(data.embedded_photos())
    labels = [train.crop(i)[1] for i in range(200)]
    assert all(0 <= y < k for y in labels) and len(set(labels)) == k
    assert labels != [test.crop(i)[1] for i in range(200)]
    assert not torch.equal(train[0][0], test[0][0])
    unlabeled = build_dataset("embedded", None, "train", eval_transform(32), img_size=32, labeled=False)
    assert unlabeled[0][1] == -1 and num_classes(unlabeled) == 0
    assert torch.equal(unlabeled[0][0], train[0][0])


# ---------------------------------------------------------------------------- folders and tars
def test_imagefolder_tree(tmp_path):
    _make_tree(tmp_path, "train")
    _make_tree(tmp_path, "val", per_class=2)
    train = build_dataset("imagefolder", tmp_path, "train", eval_transform(32))
    val = build_dataset("imagefolder", tmp_path, "test", eval_transform(32))  # "test" finds val/
    assert (len(train), len(val)) == (12, 6)
    assert train.classes == list(CLASSES) and num_classes(train) == 3
    x, y = train[5]
    assert x.shape == (3, 32, 32) and y == 1
    sub = build_dataset("imagefolder", tmp_path, "train", eval_transform(32), length=3)
    assert len(sub) == 3 and [y for _, y in sub] == [0, 1, 2] and num_classes(sub) == 3


def test_cifar_tar_layout_with_workers(tmp_path):
    _make_tar(tmp_path, "train")
    _make_tar(tmp_path, "test", per_class=2)
    train = build_dataset("cifar10", tmp_path, "train", eval_transform(32))
    test = build_dataset("cifar10", tmp_path, "val", eval_transform(32))  # "val" finds test.tar
    assert (len(train), len(test)) == (12, 6)
    assert train.classes == list(CLASSES) and num_classes(train) == 3
    assert train[0][0].shape == (3, 32, 32)  # opens the tar in this process before the fork
    x0, y0 = _collect(train)
    x2, y2 = _collect(train, num_workers=2)
    assert torch.equal(x0, x2) and torch.equal(y0, y2)
    assert y0.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # An extracted tree in the same root layout works too.
    _make_tree(tmp_path / "extracted", "train")
    tree = build_dataset("cifar10", tmp_path / "extracted", "train", eval_transform(32))
    assert torch.equal(_collect(tree)[1], y0)


def test_cifar_torchvision_format(tmp_path, monkeypatch):
    """torchvision's cifar-10-batches-py pickles (md5 checks patched out: these batches are fakes)."""
    import torchvision.datasets.cifar
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args: True)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 1]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list(CLASSES)}))
    train = build_dataset("cifar10", tmp_path, "train", eval_transform(32))
    test = build_dataset("cifar10", tmp_path, "test", eval_transform(32), labeled=False)
    assert (len(train), len(test), num_classes(train), num_classes(test)) == (20, 4, 3, 0)
    assert train[1][0].shape == (3, 32, 32) and train[1][1] == 1 and test[1][1] == -1


# -------------------------------------------------------------------------------- corrupt images
def test_corrupt_image_raises_naming_file(tmp_path):
    _make_tree(tmp_path, "train", per_class=2, corrupt="dog/bad.jpg")
    ds = build_dataset("imagefolder", tmp_path, "train", eval_transform(32))
    bad = next(i for i, (p, _) in enumerate(ds.samples) if p.endswith("bad.jpg"))
    with pytest.raises(CorruptImageError, match="bad.jpg") as err:
        ds[bad]
    assert err.value.filename.endswith("dog/bad.jpg") and isinstance(err.value, OSError)
    assert str(err.value).startswith("cannot read image ")
    assert pickle.loads(pickle.dumps(err.value)).filename == err.value.filename
    with pytest.raises(CorruptImageError, match="bad.jpg"):  # re-raised from a worker, still named
        _collect(ds, num_workers=2)


def test_corrupt_image_skipped_and_counted(tmp_path):
    _make_tree(tmp_path, "train", per_class=2, corrupt="dog/bad.jpg")
    ds = build_dataset("imagefolder", tmp_path, "train", eval_transform(32), skip_corrupt=True)
    assert len(ds) == 7 and ds.num_skipped == 0
    xs, ys = _collect(ds)
    assert len(xs) == 7 and ds.num_skipped == 1
    assert skipped_images(ds) == [str(tmp_path / "train" / "dog" / "bad.jpg")]
    # A fresh dataset read only by workers: the count crosses back to this process.
    ds = build_dataset("imagefolder", tmp_path, "train", eval_transform(32), skip_corrupt=True)
    for _ in range(2):  # two epochs: the same file still counts once
        assert len(_collect(ds, num_workers=2)[0]) == 7
    assert ds.num_skipped == 1 and skipped_images(ds)[0].endswith("bad.jpg")


def test_corrupt_tar_member_skipped_with_spawn_workers(tmp_path):
    _make_tar(tmp_path, "train", per_class=2, corrupt="cat/9999.jpg")
    ds = build_dataset("cifar10", tmp_path, "train", eval_transform(32))
    with pytest.raises(CorruptImageError, match="train/cat/9999.jpg"):
        _collect(ds)
    ds = build_dataset("cifar10", tmp_path, "train", eval_transform(32), skip_corrupt=True)
    # One spawn worker (each one re-imports torch, ~5 s): enough to show the tar handle and the
    # skip record survive pickling; fork workers are covered above.
    xs, ys = _collect(ds, num_workers=1, multiprocessing_context="spawn")
    assert len(xs) == 7 and skipped_images(ds) == [f"{tmp_path / 'train.tar'}:train/cat/9999.jpg"]


def _truncated(fmt: str) -> bytes:
    """A valid image file cut inside its compressed data: the header still reads, the pixels not."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format=fmt)
    whole = buf.getvalue()
    cut = whole[:len(whole) * 2 // 3]
    Image.open(io.BytesIO(cut))  # the header is valid: PIL identifies the cut file...
    with pytest.raises(OSError):  # ...and fails while decoding it (not UnidentifiedImageError)
        Image.open(io.BytesIO(cut)).load()
    return cut


@pytest.mark.parametrize("fmt, ext", [("JPEG", "jpg"), ("PNG", "png")])
def test_truncated_image_in_folder(tmp_path, fmt, ext):
    _make_tree(tmp_path, "train", per_class=2)
    (tmp_path / "train" / "dog" / f"cut.{ext}").write_bytes(_truncated(fmt))
    ds = build_dataset("imagefolder", tmp_path, "train", eval_transform(32))
    bad = next(i for i, (p, _) in enumerate(ds.samples) if p.endswith(f"cut.{ext}"))
    with pytest.raises(CorruptImageError, match=f"dog/cut.{ext}") as err:
        ds[bad]
    assert err.value.filename == str(tmp_path / "train" / "dog" / f"cut.{ext}")
    assert "--skip-corrupt" in str(err.value)  # the error says how to go on
    ds = build_dataset("imagefolder", tmp_path, "train", eval_transform(32), skip_corrupt=True)
    assert len(_collect(ds)[0]) == 7 and skipped_images(ds) == [str(tmp_path / "train" / "dog" / f"cut.{ext}")]


@pytest.mark.parametrize("fmt, ext", [("JPEG", "jpg"), ("PNG", "png")])
def test_truncated_image_in_tar(tmp_path, fmt, ext):
    _make_tar(tmp_path, "train", per_class=2, extra={f"train/dog/cut.{ext}": _truncated(fmt)})
    ds = build_dataset("cifar10", tmp_path, "train", eval_transform(32))
    with pytest.raises(CorruptImageError, match=f"train.tar:train/dog/cut.{ext}") as err:
        _collect(ds)
    assert err.value.filename == f"{tmp_path / 'train.tar'}:train/dog/cut.{ext}"
    assert "--skip-corrupt" in str(err.value)
    ds = build_dataset("cifar10", tmp_path, "train", eval_transform(32), skip_corrupt=True)
    assert len(_collect(ds, num_workers=2)[0]) == 7 and ds.num_skipped == 1
    assert skipped_images(ds) == [f"{tmp_path / 'train.tar'}:train/dog/cut.{ext}"]


def test_corrupt_fraction_ceiling(tmp_path):
    _make_tree(tmp_path, "train", per_class=3, corrupt="dog/bad.jpg")  # 1 corrupt of 10
    ds = build_dataset("imagefolder", tmp_path, "train", eval_transform(32), skip_corrupt=True)
    check_corrupt_fraction(ds)  # nothing skipped yet
    _collect(ds)
    check_corrupt_fraction(ds, 0.1)  # 10 % skipped: at the ceiling, allowed
    with pytest.raises(ValueError, match=r"1 of 10 images \(10.00%\).*more than the allowed 5.00%") as err:
        check_corrupt_fraction(ds, 0.05)
    assert str(tmp_path / "train" / "dog" / "bad.jpg") in str(err.value)
    with pytest.raises(ValueError, match="skipped"):
        check_corrupt_fraction(ds)  # default 1 %
    # a subset: the fraction is of the samples one epoch reads
    sub = build_dataset("imagefolder", tmp_path, "train", eval_transform(32), skip_corrupt=True, length=5)
    _collect(sub)
    check_corrupt_fraction(sub, 0.2)
    with pytest.raises(ValueError, match="must be in"):
        check_corrupt_fraction(ds, 1.5)
    plain = build_dataset("embedded", None, "train", eval_transform(32), img_size=32, length=4)
    check_corrupt_fraction(plain, 0.0)  # nothing can be skipped


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    """I;16 PNG (and 16-bit PGM): 8-bit value = round(v * 255 / 65535), not min(v, 255)."""
    values = (np.arange(32 * 32, dtype=np.float64).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    (tmp_path / "train" / "cat").mkdir(parents=True)
    Image.fromarray(values).save(tmp_path / "train" / "cat" / "deep.png")
    assert Image.open(tmp_path / "train" / "cat" / "deep.png").mode == "I;16"
    header = b"P5\n32 32\n65535\n"
    (tmp_path / "train" / "cat" / "deep.pgm").write_bytes(header + values.astype(">u2").tobytes())
    ds = build_dataset("imagefolder", tmp_path, "train", None)
    expected = np.round(values * (255 / 65535)).astype(np.uint8)
    for i in range(2):
        img = np.asarray(ds[i][0])
        assert img.shape == (32, 32, 3) and img.dtype == np.uint8
        assert np.array_equal(img[..., 0], expected) and np.array_equal(img[..., 2], expected)
        assert (img == 255).mean() < 0.01  # before: 99.6 % of the pixels were 255


def test_float_images_are_an_error(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    Image.fromarray(np.ones((8, 8), dtype=np.float32)).save(tmp_path / "train" / "cat" / "float.tif")
    ds = build_dataset("imagefolder", tmp_path, "train", None)
    with pytest.raises(CorruptImageError, match="float.tif.*pixel mode F"):
        ds[0]


@pytest.mark.timeout(30)
def test_fifo_named_jpg_is_rejected_not_waited_on(tmp_path):
    """A FIFO without a writer would block open() forever; it is an unreadable image instead."""
    _make_tree(tmp_path, "train", per_class=2)
    fifo = tmp_path / "train" / "dog" / "pipe.jpg"
    os.mkfifo(fifo)
    ds = build_dataset("imagefolder", tmp_path, "train", eval_transform(32))
    bad = next(i for i, (p, _) in enumerate(ds.samples) if p.endswith("pipe.jpg"))
    with pytest.raises(CorruptImageError, match="pipe.jpg: it is a FIFO, not a regular file"):
        ds[bad]
    ds = build_dataset("imagefolder", tmp_path, "train", eval_transform(32), skip_corrupt=True)
    assert len(_collect(ds, num_workers=2)[0]) == 7 and skipped_images(ds) == [str(fifo)]
    # inside a tar, only regular members are images
    (tmp_path / "tarred").mkdir()
    path = _make_tar(tmp_path / "tarred", "train", per_class=2)
    with tarfile.open(path, "a") as tf:
        info = tarfile.TarInfo("train/dog/pipe.jpg")
        info.type = tarfile.FIFOTYPE
        tf.addfile(info)
    assert len(build_dataset("cifar10", tmp_path / "tarred", "train", None)) == 6


# ------------------------------------------------------------------------------ sizes, truncation
def test_cifar10_with_fewer_images_than_its_known_size(tmp_path):
    """All ten CIFAR-10 classes (so: CIFAR-10) but 2 images each: an error naming file and counts."""
    _make_tar(tmp_path, "train", per_class=2, classes=CIFAR10_CLASSES)
    incomplete = r"train\.tar: 20 images, but cifar10 train has 50,000: the copy is incomplete"
    with pytest.raises(ValueError, match=incomplete):
        build_dataset("cifar10", tmp_path, "train", None)
    _make_tree(tmp_path / "tree", "test", per_class=1)
    for cls in CIFAR10_CLASSES:
        (tmp_path / "tree" / "test" / cls).mkdir(exist_ok=True)
        (tmp_path / "tree" / "test" / cls / "x.jpg").write_bytes(_jpeg_bytes(1))
    with pytest.raises(ValueError, match=r"test: 13 images, but cifar10 test has 10,000"):
        build_dataset("cifar10", tmp_path / "tree", "val", None)
    # synthetic copies with fewer classes are not held to CIFAR-10's size
    (tmp_path / "small").mkdir()
    _make_tar(tmp_path / "small", "train", per_class=2)
    assert len(build_dataset("cifar10", tmp_path / "small", "train", None)) == 6


@pytest.mark.parametrize("where", ["inside a member", "between members"])
def test_truncated_tar_is_an_error(tmp_path, where):
    path = _make_tar(tmp_path, "train", per_class=4)
    with tarfile.open(path) as tf:
        members = tf.getmembers()
    m = members[7]
    cut = m.offset_data + m.size // 2 if where == "inside a member" else members[8].offset
    path.write_bytes(path.read_bytes()[:cut])
    if where == "between members":
        with tarfile.open(path) as tf:  # tarfile itself reads this cut tar as a shorter one, quietly
            assert len(tf.getmembers()) == 8
    detail = (f"it ends inside member {m.name}" if where == "inside a member"
              else "no end-of-archive block after 8 members")
    with pytest.raises(ValueError, match=rf"train\.tar is truncated \({cut:,} bytes; {detail}\): "
                                         rf"{7 if where == 'inside a member' else 8} complete images before the cut"):
        build_dataset("cifar10", tmp_path, "train", None)


# ---------------------------------------------------------------------------------------- errors
def test_errors_before_loading(tmp_path):
    with pytest.raises(ValueError, match=r"name='cifar100'.*embedded"):
        build_dataset("cifar100", tmp_path, "train", None)
    with pytest.raises(ValueError, match="split='validation'"):
        build_dataset("embedded", None, "validation", None)
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"nowhere.*train\.tar"):
        build_dataset("cifar10", missing, "train", None)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_dataset("imagefolder", missing, "train", None)
    with pytest.raises(FileNotFoundError, match=r"no cifar10 test split"):
        build_dataset("cifar10", tmp_path, "test", None)  # exists, but holds nothing usable
    with pytest.raises(ValueError, match="root"):
        build_dataset("imagefolder", None, "train", None)


def test_default_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("COLORMAE_DATA", str(tmp_path))
    assert default_data_root() == tmp_path
    monkeypatch.delenv("COLORMAE_DATA")
    assert default_data_root() == Path(__file__).resolve().parents[2] / "shared" / "data"  # beside the checkout


# ----------------------------------------------------------------------------------- real CIFAR
@pytest.mark.skipif(not REAL_CIFAR.exists(), reason=f"real CIFAR-10 tars not found at {REAL_CIFAR}")
def test_real_cifar10(monkeypatch):
    monkeypatch.setenv("COLORMAE_DATA", str(REAL_CIFAR.parent))
    train = build_dataset("cifar10", None, "train", eval_transform(32))
    test = build_dataset("cifar10", None, "test", eval_transform(32))
    assert (len(train), len(test)) == (50000, 10000)
    assert num_classes(train) == num_classes(test) == 10
    assert train.classes == ["airplane", "automobile", "bird", "cat", "deer",
                             "dog", "frog", "horse", "ship", "truck"]
    x, y = train[0]
    assert x.shape == (3, 32, 32) and y == 0
    assert test[len(test) - 1][1] == 9


def test_a_dataset_owns_its_corrupt_image_ceiling(tmp_path):
    """The training loop calls check_skipped(datasets) with no config: each dataset is checked against
    the --max-corrupt-fraction it was built with (the scaffold read the config with getattr before)."""
    from colormae.data.datasets import check_skipped
    _make_tree(tmp_path, "train", per_class=3, corrupt="dog/bad.jpg")  # 1 corrupt of 10
    lenient = build_dataset("imagefolder", tmp_path, "train", eval_transform(32), skip_corrupt=True,
                            max_corrupt_fraction=0.1)
    strict = build_dataset("imagefolder", tmp_path, "train", eval_transform(32), skip_corrupt=True)
    sub = build_dataset("imagefolder", tmp_path, "train", eval_transform(32), skip_corrupt=True, length=9,
                        max_corrupt_fraction=0.2)  # a subset keeps its base's ceiling
    for ds in (lenient, strict, sub):
        _collect(ds)
    check_skipped([lenient, sub])
    with pytest.raises(ValueError, match=r"1 of 10 images \(10.00%\).*more than the allowed 1.00%"):
        check_skipped([lenient, strict])


def test_sample_images_from_a_split_smaller_than_n_times_spacing(tmp_path):
    """Notebook 01 on an image folder whose val split had < 128 images died in an IndexError after
    training (8 images, every 16th): the n images are now spread over what the split has."""
    from colormae.data.datasets import sample_images
    _make_tree(tmp_path, "val", per_class=4)  # 12 images
    imgs = sample_images("imagefolder", tmp_path, "test", 32, 8)
    assert imgs.shape == (8, 3, 32, 32)
    ds = build_dataset("imagefolder", tmp_path, "test", eval_transform(32), labeled=False)
    picks = np.linspace(0, 11, 8).round().astype(int)  # 0, 2, 3, 5, 6, 8, 9, 11
    assert torch.equal(imgs, torch.stack([ds[int(i)][0] for i in picks]))
    with pytest.raises(ValueError, match="n=13 images asked for, but the test split of imagefolder has 12"):
        sample_images("imagefolder", tmp_path, "test", 32, 13)
