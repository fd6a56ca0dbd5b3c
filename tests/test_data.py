"""Datasets and transforms: embedded photos, CIFAR tars, ImageFolders, corrupt images, errors."""
import io
import pickle
import socket
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from colormae import data
from colormae.data import (CorruptImageError, build_dataset, default_data_root, eval_transform,
                           num_classes, pretrain_transform, skipped_images)

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


def _make_tar(root: Path, split: str, per_class: int = 4, corrupt: str | None = None) -> Path:
    """A tar in the layout of /work/shared/data/cifar10: <split>/<class>/<NNNN>.jpg."""
    members = {f"{split}/{cls}/{i:04d}.jpg": _jpeg_bytes(10 * c + i)
               for c, cls in enumerate(CLASSES) for i in range(per_class)}
    if corrupt:
        members[f"{split}/{corrupt}"] = b"garbage bytes" * 20
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
    assert default_data_root() == Path(data.__file__).resolve().parents[2] / "shared" / "data"


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
