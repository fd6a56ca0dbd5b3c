"""colormae.analysis.explore_reconstruction (notebook 10's reconstruction explorer): checkpoints and images
in -> view -> figure, and the widget's callbacks (a control's value in -> the view and the image out),
without a browser (tests/test_browser.py drives the real thing in JupyterLab). The committed 16x16 grid
models (32 px, a few ms per forward pass) and the bundled photographs: seconds."""
from __future__ import annotations

import datetime
import io
import json
import os
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from matplotlib.figure import Figure
from timm.data import IMAGENET_DEFAULT_MEAN

from colormae import save_pretrained
from colormae.analysis import explore_reconstruction as er
from colormae.analysis.attention import cls_attention, resize_batch
from colormae.data.datasets import default_data_root
from colormae.files import ROOT
from colormae.masks.maskers import make_masker
from colormae.models.mae import export_encoder, mae_model, reconstruct

RANDOM, GREEN = er.DEFAULT_CHECKPOINTS
pytestmark = pytest.mark.skipif(not (ROOT / RANDOM).is_file(), reason="needs the committed grid weights")


@pytest.fixture(scope="module")
def pair():
    return [er.open_checkpoint(RANDOM), er.open_checkpoint(GREEN)]


@pytest.fixture(scope="module")
def photo():
    return er.source_image("photos", 0)


def png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(PIL.Image.open(io.BytesIO(data)).convert("RGB"))


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PIL.Image.fromarray(array).save(buf, format="png")
    return buf.getvalue()


# ----------------------------------------------------------------------------- checkpoints

def test_committed_checkpoints_are_the_weights_folders():
    found = er.committed_checkpoints()
    assert found["green (cifar10_grid16)"] == GREEN and found["random (cifar10_grid16)"] == RANDOM
    assert all(not Path(p).is_absolute() and (ROOT / p).is_file() for p in found.values())


def test_open_checkpoint_is_cached_and_reopens_a_rewritten_file(pair, tmp_path):
    again = er.open_checkpoint(RANDOM)
    assert again.model is pair[0].model and again.label == "random (cifar10_grid16)"
    path = tmp_path / "micro.pth"
    save_pretrained(mae_model("mae_vit_micro_patch4_32"), path)
    first = er.open_checkpoint(path)
    assert er.open_checkpoint(path).model is first.model
    save_pretrained(mae_model("mae_vit_micro_patch4_32"), path)
    os.utime(path, ns=(1, first.key[1] + 10**9))  # another mtime, whatever the file system's resolution
    assert er.open_checkpoint(path).model is not first.model
    assert "micro.pth: 2 x 64 encoder, 1 x 32 decoder, 32 px, patch 4" in first.describe()


@pytest.mark.parametrize("path, says", [("", "no checkpoint path given"), ("missing.pth", "no such file"),
                                        ("README.md", "not a readable torch checkpoint"),
                                        ("results/cifar10_grid16", "no weights in directory")])
def test_bad_checkpoint_is_one_clear_line(path, says):
    with pytest.raises(er.CheckpointError) as err:
        er.open_checkpoint(path)
    text = str(err.value)
    assert says in text and "\n" not in text and str(ROOT) not in text  # repository paths made relative
    assert text.count("README.md") <= 1  # the path is not said twice


# ----------------------------------------------------------------------------- images

def test_sources_and_their_ranges(photo):
    assert er.source_count("photos") >= 2 and photo.name == "photo 0: astronaut"
    assert photo.pixels.dtype == torch.uint8 and photo.pixels.shape == (3, 512, 512)
    with pytest.raises(er.ImageError, match="out of range"):
        er.source_image("photos", er.source_count("photos"))
    with pytest.raises(er.ImageError, match="no file uploaded"):
        er.source_image("upload")
    with pytest.raises(ValueError, match="allowed values: photos, cifar10, pennfudan, upload"):
        er.source_image("imagenet")
    with pytest.raises(er.ImageError, match="CIFAR-10 test unavailable"):
        er.source_image("cifar10", 0, data_root="/nonexistent/cifar")
    with pytest.raises(er.ImageError, match="Penn-Fudan test unavailable"):
        er.source_image("pennfudan", 0, pennfudan_root="/nonexistent/pennfudan")


def test_decode_upload_scales_16_bit_and_names_bad_bytes():
    grey = np.full((6, 4), 32768, dtype=np.uint16)  # mid-grey in 16 bits: 128 in 8 (clipping would give 255)
    up = er.decode_upload(png_bytes(grey), "grey16.png")
    assert up.name == "upload: grey16.png" and up.pixels.shape == (3, 6, 4)
    assert int(up.pixels.min()) == int(up.pixels.max()) == round(32768 * 255 / 65535)
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert np.array_equal(er.decode_upload(png_bytes(rgb), "rgb.png").pixels.permute(1, 2, 0).numpy(), rgb)
    with pytest.raises(er.ImageError, match="notes.txt"):
        er.decode_upload(b"not an image", "notes.txt")
    # two uploads of one name but other pixels are other images (the caches compare pixels)
    assert er.decode_upload(png_bytes(rgb), "a.png") != er.decode_upload(png_bytes(rgb + 1), "a.png")


@pytest.mark.skipif(not (default_data_root() / "cifar10").is_dir(), reason="needs CIFAR-10")
def test_cifar10_test_image():
    img = er.source_image("cifar10", 0)
    assert img.pixels.shape == (3, 32, 32) and img.name.startswith("CIFAR-10 test 0 (")


# ----------------------------------------------------------------------------- values -> view

def test_view_panels_against_a_direct_reconstruction(pair, photo):
    view = er.reconstruction_view(pair, photo, "green", 0.75, seed=3)
    assert [p.label for p in view.panels] == ["random (cifar10_grid16)", "green (cifar10_grid16)"]
    a, b = view.panels
    assert np.array_equal(a.mask, b.mask)  # one grid: the same mask for both checkpoints
    assert a.mask.shape == (16, 16) and int(a.mask.sum()) == 256 - 64
    imgs, _ = resize_batch([photo.pixels], None, 32)  # the whole image, resized to the model's 32 px
    masks = make_masker("green", 16, 0.75)(1, generator=torch.Generator().manual_seed(3))
    for p, ckpt in zip(view.panels, pair):
        with torch.no_grad():
            r = reconstruct(ckpt.model, imgs, masks)
        m = r["mask"][0, 0].numpy().astype(bool)  # [32, 32] masked pixels
        assert np.array_equal(m, np.kron(p.mask, np.ones((2, 2))).astype(bool))
        assert p.loss == pytest.approx(float(r["loss"]), rel=1e-6)
        # hand-computed: mean over masked pixels (and channels) of the squared error
        diff = ((r["reconstruction"] - imgs) ** 2)[0].numpy()
        assert p.pixel_mse == pytest.approx(float(diff[:, m].mean()), rel=1e-5)
        assert np.all(p.error[~m] == 0) and p.error[m].mean() == pytest.approx(p.pixel_mse, rel=1e-5)
        # visible: the original where visible, the normalization's mean (zero input) where masked
        assert np.allclose(p.visible[~m], p.original[~m]) and np.allclose(p.visible[m], IMAGENET_DEFAULT_MEAN)
        assert np.allclose(p.reconstruction[~m], p.original[~m], atol=1e-6)  # visible patches pasted back
        assert not np.allclose(p.reconstruction[m], p.original[m])
        with torch.no_grad():
            assert np.allclose(p.attention, cls_attention(ckpt.model, imgs)[0].numpy(), atol=1e-6)
        assert p.attention.sum() == pytest.approx(1.0, abs=1e-5) and p.person_attention is None
    assert view.error_max == pytest.approx(max(float(a.error.max()), float(b.error.max())))
    assert "norm-pix" in view.notes[0]
    with pytest.raises(ValueError):
        a.error[0, 0] = 1.0  # read-only arrays


def test_seed_ratio_and_grid_kind(pair, photo):
    v0, v0b = er.reconstruction_view(pair, photo, "random", 0.75, 0), er.reconstruction_view(pair, photo, "random",
                                                                                             0.75, 0)
    v1 = er.reconstruction_view(pair, photo, "random", 0.75, 1)
    assert np.array_equal(v0.panels[0].mask, v0b.panels[0].mask) and v0.panels[0].loss == v0b.panels[0].loss
    assert not np.array_equal(v0.panels[0].mask, v1.panels[0].mask)
    assert np.array_equal(v0.panels[0].attention, v1.panels[0].attention)  # every patch visible: mask-free
    half = er.reconstruction_view(pair, photo, "blue", 0.5, 0)
    assert int(half.panels[0].mask.sum()) == 128
    grid = er.reconstruction_view(pair, photo, "grid", 0.5, 0)
    assert grid.mask_ratio == 0.75 and "0.75" in grid.notes[0] and int(grid.panels[0].mask.sum()) == 192
    with pytest.raises(ValueError, match="kind="):
        er.reconstruction_view(pair, photo, "pink")
    with pytest.raises(ValueError, match="leaves no visible patch"):
        er.reconstruction_view(pair, photo, "random", 0.999)
    with pytest.raises(ValueError, match="checkpoints is empty"):
        er.reconstruction_view([], photo)


def test_person_share_on_a_hand_made_mask(pair):
    """Left half a person: the uniform map puts 50 % there, the attention what its left 8 columns hold."""
    pixels = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    person = torch.zeros(64, 64, dtype=torch.int64)
    person[:, :32] = 1
    view = er.reconstruction_view(pair, er._image("person", pixels, person), "random", 0.75, 0)
    fig = er.draw_reconstruction_view(view)
    assert [t.get_text() for ax in fig.axes[4::5] for t in ax.texts] == [er.person_label(p) for p in view.panels]
    assert er.person_label(view.panels[0]).startswith("on person ") and "(area 50%)" in er.person_label(view.panels[0])
    for p in view.panels:
        assert p.person_area == pytest.approx(0.5)
        assert p.person_attention == pytest.approx(float(p.attention[:, :8].sum() / p.attention.sum()), rel=1e-5)


def test_other_grid_and_encoder_only_checkpoints(pair, photo, tmp_path):
    micro = mae_model("mae_vit_micro_patch4_32")  # 8x8 grid, raw pixels
    save_pretrained(micro, tmp_path / "micro.pth")
    torch.save(export_encoder(micro), tmp_path / "encoder.pth")
    other, encoder = er.open_checkpoint(tmp_path / "micro.pth"), er.open_checkpoint(tmp_path / "encoder.pth")
    assert not encoder.model.has_decoder and "no decoder (attention only)" in encoder.describe()
    view = er.reconstruction_view([pair[1], other, encoder], photo, "random", 0.75, 0)
    green, small, enc = view.panels
    assert green.mask.shape == (16, 16) and small.mask.shape == (8, 8) and small.original.shape == (32, 32, 3)
    assert int(small.mask.sum()) == 48
    assert enc.reconstruction is None and enc.error is None and enc.loss is None
    m = np.kron(enc.mask, np.ones((4, 4))).astype(bool)
    assert np.allclose(enc.visible[m], IMAGENET_DEFAULT_MEAN) and np.allclose(enc.visible[~m], enc.original[~m])
    assert any("grids differ (8x8, 16x16)" in n for n in view.notes)
    assert any("without a decoder" in n for n in view.notes)
    fig = er.draw_reconstruction_view(view)  # rows of other sizes and a row without a decoder
    assert fig.texts[2].get_text() == f"{encoder.label}\nno decoder: attention only"


# ----------------------------------------------------------------------------- view -> figure

def test_figure_is_plain_and_follows_the_view(pair, photo):
    view = er.reconstruction_view(pair, photo, "green", 0.75, 0)
    fig = er.draw_reconstruction_view(view)
    assert isinstance(fig, Figure) and len(fig.axes) == 2 * len(er.PANELS)
    assert fig._suptitle.get_text() == er.describe(view) == "photo 0: astronaut · Green mask, 75% masked, seed 0"
    a = view.panels[0]
    assert fig.texts[0].get_text() == f"A · random (cifar10_grid16)\nloss {a.loss:.3f} · masked MSE {a.pixel_mse:.3f}"
    assert [ax.get_title() for ax in fig.axes[:5]] == ["original", "visible", "reconstruction",
                                                       "squared error (masked)", "[CLS] attention"]
    n = len(er.PANELS)  # both error maps on one scale, the larger maximum (side by side comparable)
    assert [fig.axes[r * n + 3].images[0].get_clim() for r in (0, 1)] == [(0, view.error_max)] * 2
    assert np.array_equal(fig.axes[1].images[0].get_array(), view.panels[0].visible)
    reused = er.ReconstructionFigure(2)
    first = reused.png(view)
    other = reused.png(er.reconstruction_view(pair, photo, "green", 0.75, 1))
    assert first[:4] == b"\x89PNG" and not np.array_equal(png_pixels(first), png_pixels(other))
    assert np.array_equal(png_pixels(reused.png(view)), png_pixels(er.ReconstructionFigure(2).png(view)))
    # the blitted update draws what a full draw of the same view draws, panel by panel (images snap to
    # the pixel grid a little differently: about 1.4 % of a panel's pixels, its edges)
    full = io.BytesIO()
    er.draw_reconstruction_view(view).savefig(full, format="png", dpi=80)
    differ = np.abs(png_pixels(first).astype(int) - png_pixels(full.getvalue())).max(-1) > 32
    h, w = differ.shape
    for ax in reused.axes.ravel():
        box = ax.get_position()
        panel = differ[int((1 - box.y1) * h):int((1 - box.y0) * h), int(box.x0 * w):int(box.x1 * w)]
        assert panel.mean() < 0.05, ax.get_title()
    with pytest.raises(ValueError, match="3 rows"):
        er.ReconstructionFigure(3).draw(view)


# ----------------------------------------------------------------------------- the widget's callbacks

@pytest.fixture
def explorer():
    return er.ReconstructionExplorer(RANDOM, GREEN, "photos", 0, "random", 0.75, 0)


def test_explorer_starts_with_the_given_values(explorer):
    v = explorer.view
    assert (v.image, v.kind, v.mask_ratio, v.seed) == ("photo 0: astronaut", "random", 0.75, 0)
    assert explorer.image.value[:4] == b"\x89PNG" and "ms" in explorer.status.value
    assert explorer.controls["pick_a"].value == RANDOM and explorer.controls["pick_b"].value == GREEN
    assert "random (cifar10_grid16): 4 x 96 encoder" in explorer.checkpoint_status[0].value
    assert explorer.controls["image_index"].max == er.source_count("photos") - 1
    assert repr(explorer).startswith("ReconstructionExplorer(random (cifar10_grid16) vs green (cifar10_grid16)")


def test_explorer_mask_controls_update_view_and_image(explorer):
    png = explorer.image.value
    explorer.controls["seed"].value = 5
    assert explorer.view.seed == 5 and explorer.image.value != png
    explorer.controls["mask_ratio"].value = 0.5
    assert int(explorer.view.panels[0].mask.sum()) == 128
    explorer.controls["kind"].value = "green"
    assert explorer.view.kind == "green"
    explorer.controls["image_index"].value = 4
    assert explorer.view.image.startswith("photo 4:")


def test_explorer_checkpoint_pick_and_path(explorer):
    blue = "results/cifar10_grid16/weights/blue.pth"
    explorer.controls["pick_b"].value = blue
    assert explorer.controls["checkpoint_b"].value == blue and explorer.view.panels[1].label == "blue (cifar10_grid16)"
    explorer.controls["checkpoint_b"].value = GREEN  # typed: the dropdown follows
    assert explorer.controls["pick_b"].value == GREEN and explorer.view.panels[1].path == GREEN


def test_explorer_shows_a_bad_checkpoint_as_one_line(explorer):
    view, png = explorer.view, explorer.image.value
    explorer.controls["checkpoint_a"].value = "results/nowhere/model.pth"
    line = explorer.checkpoint_status[0].value
    assert "results/nowhere/model.pth: no such file or folder (showing random (cifar10_grid16))" in line
    assert "Traceback" not in line and "<br" not in line
    assert explorer.controls["pick_a"].value == er.OTHER
    assert explorer.view is view and explorer.image.value == png  # nothing redrawn, the last model stays
    explorer.controls["seed"].value = 2  # the explorer still works with the model it had
    assert explorer.view.panels[0].label == "random (cifar10_grid16)"
    explorer.controls["checkpoint_a"].value = "README.md"
    assert "not a readable torch checkpoint" in explorer.checkpoint_status[0].value
    explorer.controls["pick_a"].value = GREEN
    assert explorer.view.panels[0].label == "green (cifar10_grid16)" and "4 x 96" in explorer.checkpoint_status[0].value


def uploaded(name: str, content: bytes, kind: str = "image/png") -> tuple[dict]:
    """FileUpload.value as ipywidgets 8 deserializes a browser's upload."""
    return ({"name": name, "type": kind, "size": len(content), "content": memoryview(content),
             "last_modified": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)},)


def test_explorer_upload_and_missing_data(explorer):
    content = png_bytes(np.full((40, 20, 3), 200, dtype=np.uint8))
    explorer.controls["upload"].value = uploaded("mine.png", content)
    assert explorer.controls["image_source"].value == "upload" and explorer.view.image == "upload: mine.png"
    assert explorer.controls["image_index"].disabled
    explorer.controls["upload"].value = uploaded("bad.jpg", b"garbage", "image/jpeg")
    assert "bad.jpg" in explorer.image_status.value and explorer.view.image == "upload: mine.png"
    missing = er.ReconstructionExplorer(RANDOM, GREEN, data_root="/nonexistent/cifar")
    view = missing.view
    missing.controls["image_source"].value = "cifar10"
    assert "CIFAR-10 test unavailable" in missing.image_status.value
    assert "CIFAR-10 test unavailable" in missing.status.value and missing.view is view


def test_explorer_hold_makes_one_update(explorer, monkeypatch):
    calls = []
    original = explorer.update
    monkeypatch.setattr(explorer, "update", lambda: calls.append(1) or original())
    with explorer.hold():
        explorer.controls["seed"].value = 7
        explorer.controls["mask_ratio"].value = 0.6
    assert len(calls) == 1 and explorer.view.seed == 7 and explorer.view.mask_ratio == 0.6


def test_explorer_rejects_unknown_values():
    with pytest.raises(ValueError, match="image_source='imagenet'"):
        er.ReconstructionExplorer(image_source="imagenet")
    with pytest.raises(ValueError, match="kind='pink'"):
        er.ReconstructionExplorer(kind="pink")


def test_notebook_10_is_thin():
    """Parameters cell, calls into colormae, display: no def, no loop, <= 15 code lines per cell."""
    cells = json.loads((ROOT / "notebooks" / "10_explore_reconstructions.ipynb").read_text())["cells"]
    assert "parameters" in cells[1]["metadata"].get("tags", [])
    for cell in (c for c in cells if c["cell_type"] == "code"):
        source = "".join(cell["source"])
        lines = [ln for ln in source.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        assert len(lines) <= 15 and not any(ln.lstrip().startswith(("def ", "for ", "while ", "class "))
                                            for ln in lines), source
        outputs = json.dumps(cell.get("outputs", []))
        assert str(ROOT) not in outputs and "/work/" not in outputs and "Traceback" not in outputs
