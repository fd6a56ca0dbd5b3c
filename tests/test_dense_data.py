"""Dense-task data: Penn-Fudan (fixed split, instance targets), ADE20K and folder layouts, bad input."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from colormae.data import dense as dd

REAL_PENNFUDAN = dd.default_data_root() / "pennfudan"


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def make_pennfudan(root: Path, n: int = 60, *, as_tar: bool = True, drop_mask: str | None = None,
                   bad_size: str | None = None, size=(20, 28)) -> Path:
    """A tiny synthetic Penn-Fudan: image i has i % 3 pedestrians (rectangles with ids 1..k)."""
    rng = np.random.default_rng(0)
    files = {}
    for i in range(n):
        name = f"{'Fudan' if i % 2 else 'Penn'}Ped{i:05d}"
        h, w = size
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), np.uint8)
        for k in range(1, i % 3 + 1):
            mask[2 * k: 2 * k + 5, 3 * k: 3 * k + 4] = k
        if name == bad_size:
            mask = mask[:-1]
        files[f"PennFudanPed/PNGImages/{name}.png"] = _png(img)
        if name != drop_mask:
            files[f"PennFudanPed/PedMasks/{name}_mask.png"] = _png(mask, "L")
    root.mkdir(parents=True, exist_ok=True)
    if as_tar:
        with tarfile.open(root / dd.PENNFUDAN_TAR, "w") as tar:
            for path, data in files.items():
                info = tarfile.TarInfo(path)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    else:
        for path, data in files.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(data)
    return root


@pytest.mark.parametrize("as_tar", [True, False])
def test_pennfudan_fixed_split_sorted(tmp_path, as_tar):
    root = make_pennfudan(tmp_path / "pf", as_tar=as_tar)
    train, test = dd.load_pennfudan(root, "train"), dd.load_pennfudan(root, "test")
    assert len(test) == dd.PENNFUDAN_TEST_SIZE and len(train) == 60 - dd.PENNFUDAN_TEST_SIZE
    names = [s.name for s in train + test]
    assert names == sorted(names) and len(set(names)) == 60  # test = the LAST 50 by name
    s = train[0]
    assert s.image.dtype == torch.uint8 and s.image.shape == (3, 20, 28)
    assert s.instances.dtype == torch.int64 and s.instances.shape == (20, 28)
    # fresh tensors every call: editing one does not change the cache
    s.instances.fill_(7)
    assert dd.load_pennfudan(root, "train")[0].instances.max() < 7


def test_instance_targets_boxes_are_max_exclusive():
    inst = torch.zeros(6, 8, dtype=torch.int64)
    inst[1:3, 2:5] = 1          # rows 1-2, cols 2-4
    inst[4, 7] = 3              # one pixel; ids need not be contiguous
    masks, boxes = dd.instance_targets(inst)
    assert masks.dtype == torch.bool and masks.shape == (2, 6, 8)
    assert masks[0].sum() == 6 and masks[1].sum() == 1
    assert boxes.dtype == torch.float32
    assert boxes.tolist() == [[2, 1, 5, 3], [7, 4, 8, 5]]
    m, b = dd.instance_targets(torch.zeros(4, 4, dtype=torch.int64))
    assert m.shape == (0, 4, 4) and b.shape == (0, 4)


def test_pennfudan_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="root="):
        dd.pennfudan_root(tmp_path / "nowhere")
    root = make_pennfudan(tmp_path / "nomask", drop_mask="PennPed00004")
    with pytest.raises(FileNotFoundError, match="PennPed00004"):
        dd.load_pennfudan(root)
    root = make_pennfudan(tmp_path / "size", bad_size="FudanPed00003")
    with pytest.raises(ValueError, match="FudanPed00003_mask.png.*differs"):
        dd.load_pennfudan(root)
    with pytest.raises(ValueError, match="split="):
        dd.load_pennfudan(make_pennfudan(tmp_path / "ok", n=51), "val")


@pytest.mark.skipif(not (REAL_PENNFUDAN / dd.PENNFUDAN_TAR).is_file(), reason="no ../shared/data/pennfudan")
def test_real_pennfudan_split():
    train, test = dd.load_pennfudan(split="train"), dd.load_pennfudan(split="test")
    assert (len(train), len(test)) == (120, 50)
    assert train[0].name == "FudanPed00001" and test[0].name == "PennPed00047"
    assert sum(len(dd.instance_targets(s.instances)[1]) for s in train + test) == 423
