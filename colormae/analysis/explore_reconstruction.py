"""The reconstruction explorer of notebook 10: two checkpoints side by side under the same mask.

Pick two checkpoints (the committed compact models ``results/*/weights/*.pth``, or any file or folder
:func:`colormae.load_pretrained` opens), an image (the bundled photographs, CIFAR-10 test, Penn-Fudan
test or an uploaded file), a mask kind, ratio and seed, and see for each checkpoint the original, the
visible patches, the reconstruction (visible patches pasted back, MAE's display), the squared error
on the masked pixels and the last block's [CLS] attention (:mod:`colormae.analysis.attention`; with
every patch visible, as Fig. 5). On Penn-Fudan photos the attention's share on person pixels is shown
beside the person's share of the image.

The same three layers as the mask explorer (:mod:`colormae.analysis.explore`), so that tests and the
benchmark need no browser:

- :func:`open_checkpoint`, :func:`source_image`, :func:`reconstruction_view`: values in -> a
  :class:`ReconstructionView` of plain arrays and numbers; models and images are cached, so a mask
  change costs one forward pass per checkpoint;
- :class:`ReconstructionFigure` / :func:`draw_reconstruction_view`: a view -> a matplotlib ``Figure``
  (no pyplot), built once and updated in place;
- :func:`reconstruction_explorer` (-> an ipywidgets widget): wires the controls to the two above. A
  checkpoint that does not open shows one line in its status line, not a traceback, and the last
  model that opened stays.

Images are resized whole to each model's input size (aspect not kept; :func:`attention.resize_batch`,
as Fig. 5), so a person is never cropped away and the Penn-Fudan masks stay aligned.
"""
from __future__ import annotations

import functools
import hashlib
import html
import io
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import ipywidgets as widgets
import numpy as np
import PIL.Image
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..data.datasets import CorruptImageError, build_dataset, decode_image, embedded_photos
from ..data.dense import load_pennfudan
from ..files import ROOT, project_path, repo_relative
from ..masks.maskers import KINDS, make_masker
from ..models.mae import MaskedAutoencoder, reconstruct
from ..run.pretrained import load_pretrained
from .attention import cls_attention, foreground_fraction, resize_batch, upsample
from .explore import BlittedFigure, hold_updates, one_thread
from .figures import KIND_LABELS, to_display

log = logging.getLogger(__name__)

CHECKPOINT_GLOB = "results/*/weights/*.pth"  # the committed compact models (colormae weights)
DEFAULT_CHECKPOINTS = ("results/cifar10_grid16/weights/random.pth", "results/cifar10_grid16/weights/green.pth")
IMAGE_SOURCES = ("photos", "cifar10", "pennfudan", "upload")
SOURCE_LABELS = {"photos": "bundled photos", "cifar10": "CIFAR-10 test", "pennfudan": "Penn-Fudan test",
                 "upload": "uploaded file"}
PANELS = ("original", "visible", "reconstruction", "error", "attention")
OTHER = ""  # the checkpoint dropdown's "other file" entry: the path box holds what is loaded


class CheckpointError(ValueError):
    """A checkpoint path that does not open; the message is one line."""


class ImageError(ValueError):
    """An image that cannot be had (a missing data set, an index out of range, an unreadable upload)."""


def _one_line(err: BaseException) -> str:
    """An error as one line, with paths inside the repository made relative to it."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text.replace(f"{ROOT}{os.sep}", "")


# ----------------------------------------------------------------------------- checkpoints

def committed_checkpoints(pattern: str = CHECKPOINT_GLOB) -> dict[str, str]:
    """label -> repository-relative path of every committed compact model (``results/*/weights/*.pth``);
    label ``"<file stem> (<results folder>)"``, e.g. ``"green (cifar10_grid16)"``."""
    found = sorted(ROOT.glob(pattern))
    return {f"{p.stem} ({p.parent.parent.name})": repo_relative(p) for p in found}


@dataclass(frozen=True)
class Checkpoint:
    """An opened checkpoint: ``path`` as given, ``model`` (eval mode, fp32), ``label`` to show."""
    path: str
    model: MaskedAutoencoder = field(repr=False, compare=False)
    label: str
    key: tuple = field(repr=False)  # (resolved path, mtime, size): a rewritten file opens again

    def describe(self) -> str:
        cfg = self.model.cfg
        decoder = (f"{cfg.decoder_depth} x {cfg.decoder_embed_dim} decoder" if self.model.has_decoder
                   else "no decoder (attention only)")
        return (f"{self.label}: {cfg.depth} x {cfg.embed_dim} encoder, {decoder}, {cfg.img_size} px, patch "
                f"{cfg.patch_size}, norm_pix_loss={cfg.norm_pix_loss} ({self.model.source_format})")


@functools.lru_cache(maxsize=8)
def _load(resolved: str, mtime_ns: int, size: int) -> MaskedAutoencoder:
    return load_pretrained(resolved)


def _stamp(path: Path) -> tuple[int, int]:
    """(mtime, size) of a file, or of a folder's newest file (a Hugging Face folder)."""
    files = [path] if path.is_file() else [p for p in path.iterdir() if p.is_file()]
    stats = [p.stat() for p in files]
    return max((s.st_mtime_ns for s in stats), default=0), sum(s.st_size for s in stats)


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """The model of ``path`` (relative paths from the repository root), cached by path and file time.
    Raises :class:`CheckpointError` with a one-line message when it does not open."""
    text = str(path).strip()
    if not text:
        raise CheckpointError("no checkpoint path given: pick a committed model or type a path")
    resolved = project_path(text)
    if not resolved.exists():
        raise CheckpointError(f"{text}: no such file or folder")
    try:
        model = _load(str(resolved.resolve()), *_stamp(resolved))
    except Exception as e:  # any reader's error (pickle, zip, safetensors, shapes): one line, not a traceback
        message, rel = _one_line(e), repo_relative(resolved)
        raise CheckpointError(message if message.startswith((text, rel)) else f"{text}: {message}") from e
    rel = repo_relative(resolved)
    label = (f"{resolved.stem} ({resolved.parent.parent.name})" if resolved.parent.name == "weights"
             else Path(rel).name)
    return Checkpoint(rel, model, label, (str(resolved.resolve()), *_stamp(resolved)))


# ----------------------------------------------------------------------------- images

@dataclass(frozen=True)
class SourceImage:
    """One image: ``pixels`` uint8 [3, H, W], a ``name`` to show, and for Penn-Fudan ``person`` [H, W]
    (non-zero = a pedestrian)."""
    name: str
    pixels: torch.Tensor = field(repr=False, compare=False)
    person: torch.Tensor | None = field(default=None, repr=False, compare=False)
    digest: str = field(default="", repr=False)  # of the pixels: what the caches compare (two uploads
    # of one name differ)


def _image(name: str, pixels: torch.Tensor, person: torch.Tensor | None = None) -> SourceImage:
    digest = hashlib.sha1(pixels.numpy().tobytes() + str(tuple(pixels.shape)).encode()).hexdigest()
    return SourceImage(name, pixels, person, digest)


@functools.lru_cache(maxsize=2)
def _cifar10(root: str | None):
    return build_dataset("cifar10", root, "test")


@functools.lru_cache(maxsize=2)
def _pennfudan(root: str | None) -> tuple:
    return tuple(load_pennfudan(root, "test"))


def _from_pil(img: PIL.Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1).contiguous()


def source_count(source: str, data_root: str | None = None, pennfudan_root: str | None = None) -> int:
    """Images ``source`` offers (photos 16, CIFAR-10 test 10000, Penn-Fudan test 50, upload 1).
    Raises :class:`ImageError` when its data set is not there."""
    if source not in IMAGE_SOURCES:
        raise ValueError(f"source={source!r}; allowed values: {', '.join(IMAGE_SOURCES)}")
    try:
        if source == "photos":
            return len(embedded_photos())
        if source == "cifar10":
            return len(_cifar10(data_root and str(project_path(data_root))))
        if source == "pennfudan":
            return len(_pennfudan(pennfudan_root and str(project_path(pennfudan_root))))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise ImageError(f"{SOURCE_LABELS[source]} unavailable: {_one_line(e)}") from e
    return 1


def decode_upload(content: bytes, name: str = "upload") -> SourceImage:
    """An uploaded file's bytes -> an RGB image (16-bit grey scaled, as the data sets read them)."""
    try:
        img = decode_image(io.BytesIO(bytes(content)), name)  # the data sets' decoder: 16-bit scaled, not clipped
    except CorruptImageError as e:
        raise ImageError(_one_line(e)) from e
    return _image(f"upload: {name}", _from_pil(img))


def source_image(source: str, index: int = 0, *, upload: SourceImage | None = None, data_root: str | None = None,
                 pennfudan_root: str | None = None) -> SourceImage:
    """Image ``index`` of ``source`` (``IMAGE_SOURCES``); ``upload`` is the decoded upload
    (:func:`decode_upload`) for source "upload". Raises :class:`ImageError` (one line) when the data
    set is missing or ``index`` is out of range."""
    n = source_count(source, data_root, pennfudan_root)
    if source == "upload":
        if upload is None:
            raise ImageError("no file uploaded yet: use the upload button")
        return upload
    if not 0 <= int(index) < n:
        raise ImageError(f"index={index} out of range for {SOURCE_LABELS[source]}: 0 .. {n - 1}")
    return _dataset_image(source, int(index), data_root and str(project_path(data_root)),
                          pennfudan_root and str(project_path(pennfudan_root)))


@functools.lru_cache(maxsize=64)
def _dataset_image(source: str, i: int, data_root: str | None, pennfudan_root: str | None) -> SourceImage:
    if source == "photos":
        name, img = embedded_photos()[i]
        return _image(f"photo {i}: {name}", _from_pil(img))
    if source == "cifar10":
        ds = _cifar10(data_root)
        try:
            img, label = ds[i]
        except CorruptImageError as e:
            raise ImageError(_one_line(e)) from e
        return _image(f"CIFAR-10 test {i} ({ds.classes[label]})", _from_pil(img))
    sample = _pennfudan(pennfudan_root)[i]
    return _image(f"Penn-Fudan test {i}: {sample.name}", sample.image, sample.instances)


# ----------------------------------------------------------------------------- values -> view

@dataclass(frozen=True)
class ModelPanels:
    """What one checkpoint shows (display arrays in [0, 1], read-only)."""
    label: str
    path: str
    original: np.ndarray           # [S, S, 3] the image as this model sees it (S = its img_size)
    visible: np.ndarray            # [S, S, 3] visible patches, masked ones at the normalization's mean
    reconstruction: np.ndarray | None  # [S, S, 3] visible patches pasted back; None without a decoder
    error: np.ndarray | None       # [S, S] squared error of the reconstruction (normalized space, channel
                                   # mean) on masked pixels; 0 on visible ones
    attention: np.ndarray          # [g, g] last block's [CLS] -> patch attention, mean over heads, sums to 1
    mask: np.ndarray               # [g, g] 1 = masked
    loss: float | None             # the model's training objective on the masked patches
    pixel_mse: float | None        # mean squared error of the reconstruction on masked pixels (normalized)
    person_attention: float | None  # share of the attention on person pixels (Penn-Fudan)
    person_area: float | None       # the person's share of the image (what a uniform map gives)


@dataclass(frozen=True)
class ReconstructionView:
    image: str
    kind: str
    mask_ratio: float
    seed: int
    panels: tuple[ModelPanels, ...]
    error_max: float               # one color scale for every error map (side by side comparable)
    notes: tuple[str, ...] = ()


def _frozen(a) -> np.ndarray:
    a = np.array(a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a, copy=True)
    a.setflags(write=False)
    return a


@functools.lru_cache(maxsize=16)
def _masker(kind: str, grid: int, mask_ratio: float):
    return make_masker(kind, grid, mask_ratio)


@functools.lru_cache(maxsize=16)
def _attention(model: MaskedAutoencoder, image: SourceImage) -> tuple:
    """[CLS] attention of one (model, image) with every patch visible: the mask does not change it, so it
    is cached (by the model object, which the cache keeps alive, and the image's pixels)."""
    imgs, person = _inputs(image, model.cfg.img_size)
    maps = cls_attention(model, imgs)
    if person is None:
        return _frozen(maps[0]), None, None
    uniform = foreground_fraction(torch.ones_like(maps), person)
    return _frozen(maps[0]), float(foreground_fraction(maps, person)[0]), float(uniform[0])


def _inputs(image: SourceImage, img_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    masks = None if image.person is None else [image.person]
    return resize_batch([image.pixels], masks, img_size)


def _check_kind(kind: str, mask_ratio: float) -> tuple[float, list[str]]:
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not supported; allowed values: {', '.join(KINDS)}")
    if not 0 < mask_ratio < 1:
        raise ValueError(f"mask_ratio={mask_ratio} must be in the open interval (0, 1)")
    if kind == "grid" and abs(mask_ratio - 0.75) > 1e-9:
        return 0.75, [f"grid masks keep one patch of every 2x2: mask ratio 0.75, not {mask_ratio:g}"]
    return float(mask_ratio), []


def _panels(ckpt: Checkpoint, image: SourceImage, kind: str, mask_ratio: float, seed: int) -> ModelPanels:
    model, cfg = ckpt.model, ckpt.model.cfg
    imgs, _ = _inputs(image, cfg.img_size)
    masks = _masker(kind, cfg.grid, mask_ratio)(1, generator=torch.Generator().manual_seed(seed))
    attn, person_attention, person_area = _attention(model, image)
    original = to_display(imgs)[0]
    if model.has_decoder:
        r = reconstruct(model, imgs, masks)
        m = r["mask"]
        err = ((r["reconstruction"] - imgs) ** 2 * m).mean(1)[0]  # channel mean, masked pixels only
        visible, rec = to_display(r["masked"])[0], to_display(r["pasted"])[0]
        loss, pixel_mse = float(r["loss"]), float(err.sum() / m[:, 0].sum())
    else:
        p = cfg.patch_size
        m = masks[0].reshape(1, 1, cfg.grid, cfg.grid).repeat_interleave(p, 2).repeat_interleave(p, 3).float()
        visible, rec, err, loss, pixel_mse = to_display(imgs * (1 - m))[0], None, None, None, None
    return ModelPanels(ckpt.label, ckpt.path, _frozen(original), _frozen(visible),
                       None if rec is None else _frozen(rec), None if err is None else _frozen(err), attn,
                       _frozen(masks[0][0].reshape(cfg.grid, cfg.grid)), loss, pixel_mse, person_attention,
                       person_area)


def reconstruction_view(checkpoints: Sequence[Checkpoint], image: SourceImage, kind: str = "random",
                        mask_ratio: float = 0.75, seed: int = 0) -> ReconstructionView:
    """The explorer's data: each checkpoint's panels for ``image`` under one mask of ``kind`` drawn
    from a generator seeded with ``seed`` (the same mask for checkpoints of the same grid). Grid masks
    always mask 75 % (said in ``notes``). Raises ValueError for a kind or ratio no masker takes."""
    if not checkpoints:
        raise ValueError("checkpoints is empty: pass at least one opened checkpoint")
    mask_ratio, notes = _check_kind(kind, mask_ratio)
    for ckpt in checkpoints:
        make_masker(kind, ckpt.model.cfg.grid, mask_ratio)  # validates the ratio before any forward pass
    with one_thread(), torch.no_grad():
        panels = tuple(_panels(c, image, kind, mask_ratio, int(seed)) for c in checkpoints)
    grids = sorted({c.model.cfg.grid for c in checkpoints})
    if len(grids) > 1:
        notes.append(f"the checkpoints' grids differ ({', '.join(f'{g}x{g}' for g in grids)}): one mask each")
    if any(not c.model.has_decoder for c in checkpoints):
        notes.append("a checkpoint without a decoder shows its attention only")
    if any(c.model.cfg.norm_pix_loss and c.model.has_decoder for c in checkpoints):
        notes.append("norm-pix models: reconstructions de-normalized with each masked patch's own mean and "
                     "variance (MAE's display): judge shapes, not colours")
    errors = [float(p.error.max()) for p in panels if p.error is not None]
    return ReconstructionView(image.name, kind, mask_ratio, int(seed), panels, max(errors, default=1.0) or 1.0,
                              tuple(notes))


def describe(view: ReconstructionView) -> str:
    """One line naming the view: the image and the mask."""
    return f"{view.image} · {KIND_LABELS[view.kind]} mask, {view.mask_ratio:.0%} masked, seed {view.seed}"


def summary_rows(view: ReconstructionView) -> list[dict]:
    """One row per checkpoint: label, path, loss, pixel_mse and (Penn-Fudan) the person shares."""
    return [{"checkpoint": p.label, "path": p.path, "loss": p.loss, "pixel_mse": p.pixel_mse,
             "person_attention": p.person_attention, "person_area": p.person_area} for p in view.panels]


# ----------------------------------------------------------------------------- view -> figure

COLUMN_TITLES = {"original": "original", "visible": "visible", "reconstruction": "reconstruction",
                 "error": "squared error (masked)", "attention": "[CLS] attention"}


def row_label(p: ModelPanels, letter: str = "") -> str:
    """The text beside a checkpoint's row: its label and its numbers on this image."""
    numbers = "no decoder: attention only" if p.loss is None else f"loss {p.loss:.3f} · masked MSE {p.pixel_mse:.3f}"
    return f"{letter + ' · ' if letter else ''}{p.label}\n{numbers}"


def person_label(p: ModelPanels) -> str:
    """The attention's share on person pixels (Penn-Fudan), "" otherwise."""
    if p.person_attention is None:
        return ""
    return f"on person {p.person_attention:.0%} (area {p.person_area:.0%})"


class ReconstructionFigure(BlittedFigure):
    """One Figure (rows: checkpoints, columns: ``PANELS``) whose images are updated in place and
    blitted: the frames and column titles are rendered once, each update draws only the images, the
    row labels and the title (measured 2x faster than a full draw on the busy 2-core machine)."""

    def __init__(self, rows: int = 2, *, panel_size: float = 1.9, dpi: int = 80):
        height = panel_size * rows + 0.55
        self.figure = Figure(figsize=(panel_size * len(PANELS) + 0.6, height), dpi=dpi)
        self.canvas = FigureCanvasAgg(self.figure)
        self.figure.subplots_adjust(left=0.06, right=0.995, top=1 - 0.5 / height, bottom=0.02, wspace=0.06,
                                    hspace=0.06)
        self.axes = self.figure.subplots(rows, len(PANELS), squeeze=False)
        blank, blank_map = np.zeros((2, 2, 3)), np.zeros((2, 2))
        self.images, self.row_labels, self.person_labels = [], [], []
        for r, row in enumerate(self.axes):
            artists = {}
            for ax, name in zip(row, PANELS):
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(COLUMN_TITLES[name], fontsize=9)
                if name == "error":
                    artists[name] = ax.imshow(blank_map, cmap="magma", vmin=0, vmax=1, interpolation="nearest")
                else:
                    artists[name] = ax.imshow(blank, interpolation="nearest")
                if name == "attention":
                    artists["overlay"] = ax.imshow(blank_map, cmap="inferno", alpha=0.6, vmin=0, vmax=1,
                                                   interpolation="nearest")
                    self.person_labels.append(ax.text(0.03, 0.03, "", transform=ax.transAxes, fontsize=7,
                                                      color="white", bbox={"facecolor": "black", "alpha": 0.55,
                                                                           "pad": 1.5, "lw": 0}))
            self.images.append(artists)
            box = row[0].get_position()
            self.row_labels.append(self.figure.text(box.x0 - 0.006, (box.y0 + box.y1) / 2, "", rotation=90,
                                                    ha="right", va="center", fontsize=8, linespacing=1.3))
        self.suptitle = self.figure.suptitle("", fontsize=10)
        self.animated = ([a for artists in self.images for a in artists.values()] + self.person_labels
                         + self.row_labels + [self.suptitle])
        for artist in self.animated:
            artist.set_animated(True)
        self._background = None

    def draw(self, view: ReconstructionView) -> Figure:
        """Update every panel to ``view``; returns the (same) Figure."""
        if len(view.panels) != len(self.axes):
            raise ValueError(f"view has {len(view.panels)} checkpoints, the figure {len(self.axes)} rows")
        letters = "AB" if len(view.panels) == 2 else [""] * len(view.panels)
        for row, artists, label, person, p, letter in zip(self.axes, self.images, self.row_labels, self.person_labels,
                                                          view.panels, letters):
            s = p.original.shape[0]
            extent = (-0.5, s - 0.5, s - 0.5, -0.5)
            arrays = {"original": p.original, "visible": p.visible, "attention": p.original,
                      "reconstruction": p.reconstruction if p.reconstruction is not None else np.ones((s, s, 3)),
                      "error": p.error if p.error is not None else np.zeros((s, s))}
            for name, array in arrays.items():
                artists[name].set_data(array)
                artists[name].set_extent(extent)
            artists["error"].set_clim(0, view.error_max)
            up = upsample(torch.from_numpy(np.array(p.attention))[None], s, mode="bilinear")[0].numpy()
            artists["overlay"].set_data(up / max(float(up.max()), 1e-12))
            artists["overlay"].set_extent(extent)
            for ax in row:
                ax.set_xlim(-0.5, s - 0.5)
                ax.set_ylim(s - 0.5, -0.5)
            label.set_text(row_label(p, letter))
            person.set_text(person_label(p))
            person.set_visible(p.person_attention is not None)
        self.suptitle.set_text(describe(view))
        return self.figure


def draw_reconstruction_view(view: ReconstructionView, **kwargs) -> Figure:
    """``view`` on a new Figure (no pyplot): for ``savefig`` and a notebook's inline display (its artists
    are switched back from animated to ordinary ones, so that those draw everything)."""
    fig = ReconstructionFigure(len(view.panels), **kwargs)
    fig.draw(view)
    for artist in fig.animated:
        artist.set_animated(False)
    return fig.figure


# ----------------------------------------------------------------------------- widgets

STYLE = {"description_width": "80px"}
WIDTH = "330px"


def _checkpoint_controls(which: str, path: str, choices: dict[str, str]) -> tuple:
    options = [(label, p) for label, p in choices.items()] + [("other file (type its path below)", OTHER)]
    pick = widgets.Dropdown(options=options, value=path if path in choices.values() else OTHER,
                            description=f"model {which}", style=STYLE, layout=widgets.Layout(width=WIDTH))
    text = widgets.Text(value=path, placeholder="any file load_pretrained opens; Enter to load",
                        description="path", continuous_update=False, style=STYLE, layout=widgets.Layout(width=WIDTH))
    status = widgets.HTML(layout=widgets.Layout(width=WIDTH))
    return pick, text, status


def _slider(cls, description: str, value, lo, hi, step, continuous: bool, fmt: str | None = None):
    extra = {"readout_format": fmt} if fmt else {}
    return cls(value=value, min=lo, max=hi, step=step, description=description, continuous_update=continuous,
               style=STYLE, layout=widgets.Layout(width=WIDTH), **extra)


def _error_html(text: str) -> str:
    return f"<div style='color:#b00020; font-size:12px; line-height:1.3'>{html.escape(text)}</div>"


def _note_html(text: str) -> str:
    return f"<div style='color:#555; font-size:11px; line-height:1.3'>{html.escape(text)}</div>"


class ReconstructionExplorer(widgets.HBox):
    """The explorer widget: ``controls`` (name -> widget) on the left with a status line per checkpoint
    (``checkpoint_status``), the figure (``image``, PNG) and a ``status`` line on the right. ``view``
    is the last view shown, ``checkpoints`` the models in use and ``last_update_ms`` the time of the
    last update (values in -> PNG)."""

    def __init__(self, checkpoint_a: str = DEFAULT_CHECKPOINTS[0], checkpoint_b: str = DEFAULT_CHECKPOINTS[1],
                 image_source: str = "photos", image_index: int = 0, kind: str = "random", mask_ratio: float = 0.75,
                 seed: int = 0, *, data_root: str | None = None, pennfudan_root: str | None = None,
                 choices: dict[str, str] | None = None, continuous_update: bool = True, dpi: int = 80):
        if image_source not in IMAGE_SOURCES:
            raise ValueError(f"image_source={image_source!r}; allowed values: {', '.join(IMAGE_SOURCES)}")
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r} is not supported; allowed values: {', '.join(KINDS)}")
        self.data_root, self.pennfudan_root = data_root, pennfudan_root
        self.choices = committed_checkpoints() if choices is None else dict(choices)
        self.figure = ReconstructionFigure(2, dpi=dpi)
        self.view: ReconstructionView | None = None
        self.checkpoints: list[Checkpoint | None] = [None, None]
        self.uploaded: SourceImage | None = None
        self.last_update_ms: float | None = None
        self._holding = False
        c = continuous_update
        pick_a, path_a, status_a = _checkpoint_controls("A", checkpoint_a, self.choices)
        pick_b, path_b, status_b = _checkpoint_controls("B", checkpoint_b, self.choices)
        self.checkpoint_status = [status_a, status_b]
        self.controls = {
            "pick_a": pick_a, "checkpoint_a": path_a, "pick_b": pick_b, "checkpoint_b": path_b,
            "image_source": widgets.Dropdown(options=[(SOURCE_LABELS[s], s) for s in IMAGE_SOURCES],
                                             value=image_source, description="image", style=STYLE,
                                             layout=widgets.Layout(width=WIDTH)),
            "image_index": _slider(widgets.IntSlider, "index", int(image_index), 0, max(int(image_index), 1), 1, c),
            "upload": widgets.FileUpload(accept="image/*", multiple=False, description="upload image"),
            "kind": widgets.Dropdown(options=[(KIND_LABELS[k], k) for k in KINDS], value=kind, description="mask",
                                     style=STYLE, layout=widgets.Layout(width=WIDTH)),
            "mask_ratio": _slider(widgets.FloatSlider, "mask ratio", mask_ratio, 0.05, 0.95, 0.05, c, ".2f"),
            "seed": _slider(widgets.IntSlider, "seed", int(seed), 0, 99, 1, c),
        }
        self.image = widgets.Image(format="png", layout=widgets.Layout(width="100%", max_width=f"{int(10 * dpi)}px"))
        self.status = widgets.HTML()
        self.image_status = widgets.HTML(layout=widgets.Layout(width=WIDTH))
        k = self.controls
        left = widgets.VBox([k["pick_a"], k["checkpoint_a"], status_a, k["pick_b"], k["checkpoint_b"], status_b,
                             k["image_source"], k["image_index"], k["upload"], self.image_status, k["kind"],
                             k["mask_ratio"], k["seed"]], layout=widgets.Layout(flex="0 0 340px", min_width="340px"))
        right = widgets.VBox([self.image, self.status], layout=widgets.Layout(flex="1 1 auto", min_width="0"))
        super().__init__([left, right], layout=widgets.Layout(width="100%"))
        self._open(0)
        self._open(1)
        self._set_index_range(image_source)
        k["pick_a"].observe(lambda ch: self._on_pick(0, ch), names="value")
        k["pick_b"].observe(lambda ch: self._on_pick(1, ch), names="value")
        k["checkpoint_a"].observe(lambda ch: self._on_path(0), names="value")
        k["checkpoint_b"].observe(lambda ch: self._on_path(1), names="value")
        k["image_source"].observe(self._on_source, names="value")
        k["upload"].observe(self._on_upload, names="value")
        for name in ("image_index", "kind", "mask_ratio", "seed"):
            k[name].observe(self._on_change, names="value")
        self.update()

    def __repr__(self) -> str:  # what a notebook shows without a widget frontend (nbval, static renderers)
        shown = describe(self.view) if self.view is not None else "no view"
        labels = " vs ".join(c.label for c in self.checkpoints if c is not None) or "no checkpoint"
        return f"ReconstructionExplorer({labels}; {shown}; open in JupyterLab to use)"

    def values(self) -> dict:
        """The mask and image controls' values."""
        return {name: self.controls[name].value for name in ("image_source", "image_index", "kind", "mask_ratio",
                                                             "seed")}

    def hold(self):
        """Change several controls with one update at the end (not one per control)."""
        return hold_updates(self)

    # -- callbacks

    def _open(self, i: int) -> bool:
        """Open checkpoint ``i``'s path; an error goes to its status line and the last model stays."""
        path = self.controls[("checkpoint_a", "checkpoint_b")[i]].value
        try:
            self.checkpoints[i] = open_checkpoint(path)
        except CheckpointError as e:
            kept = self.checkpoints[i]
            self.checkpoint_status[i].value = _error_html(str(e) + (f" (showing {kept.label})" if kept else ""))
            return False
        self.checkpoint_status[i].value = _note_html(self.checkpoints[i].describe())
        return True

    def _on_pick(self, i: int, change) -> None:
        if change["new"] != OTHER:
            self.controls[("checkpoint_a", "checkpoint_b")[i]].value = change["new"]  # loads via _on_path

    def _on_path(self, i: int) -> None:
        path = self.controls[("checkpoint_a", "checkpoint_b")[i]].value
        pick = self.controls[("pick_a", "pick_b")[i]]
        if pick.value != path:
            pick.value = path if path in self.choices.values() else OTHER
        if self._open(i) and not self._holding:
            self.update()

    def _set_index_range(self, source: str) -> bool:
        try:
            n = source_count(source, self.data_root, self.pennfudan_root)
        except ImageError as e:
            self.image_status.value = _error_html(str(e))
            return False
        index = self.controls["image_index"]
        index.max = max(n - 1, 1)  # a slider needs max > min; source_image checks the range
        index.disabled = source == "upload"
        self.image_status.value = ""
        return True

    def _on_source(self, change) -> None:
        with self.hold():
            if self._set_index_range(change["new"]):
                self.controls["image_index"].value = min(self.controls["image_index"].value,
                                                         self.controls["image_index"].max)

    def _on_upload(self, change) -> None:
        files = change["new"]
        if not files:
            return
        f = files[0]
        try:
            self.uploaded = decode_upload(f["content"], f["name"])
        except ImageError as e:
            self.image_status.value = _error_html(str(e))
            return
        with self.hold():
            self.controls["image_source"].value = "upload"

    def _on_change(self, change) -> None:
        if not self._holding:
            self.update()

    def update(self) -> ReconstructionView | None:
        """Values in -> view -> PNG in the image; an error is shown as one line in the status line instead
        (the last view stays)."""
        start = time.perf_counter()
        v = self.values()
        opened = [c for c in self.checkpoints if c is not None]
        if len(opened) < 2:
            self.status.value = _error_html("open two checkpoints (see the lines under each path)")
            return None
        try:
            image = source_image(v["image_source"], v["image_index"], upload=self.uploaded,
                                 data_root=self.data_root, pennfudan_root=self.pennfudan_root)
            view = reconstruction_view(opened, image, v["kind"], v["mask_ratio"], v["seed"])
        except (ImageError, ValueError) as e:
            self.status.value = _error_html(_one_line(e))
            return None
        self.image.value = self.figure.png(view)
        self.view = view
        self.last_update_ms = 1000 * (time.perf_counter() - start)
        notes = "".join(f"<br><i>{html.escape(n)}</i>" for n in view.notes)
        self.status.value = f"<small>updated in {self.last_update_ms:.0f} ms{notes}</small>"
        return view


def reconstruction_explorer(checkpoint_a: str = DEFAULT_CHECKPOINTS[0], checkpoint_b: str = DEFAULT_CHECKPOINTS[1],
                            image_source: str = "photos", image_index: int = 0, kind: str = "random",
                            mask_ratio: float = 0.75, seed: int = 0, *, data_root: str | None = None,
                            pennfudan_root: str | None = None, continuous_update: bool = True
                            ) -> ReconstructionExplorer:
    """The explorer widget (display it in a notebook), starting from these values. Checkpoint paths are
    relative to the repository root (or absolute); ``data_root`` / ``pennfudan_root`` as in notebook 07."""
    return ReconstructionExplorer(checkpoint_a, checkpoint_b, image_source, image_index, kind, mask_ratio, seed,
                                  data_root=data_root, pennfudan_root=pennfudan_root,
                                  continuous_update=continuous_update)


__all__ = ["CheckpointError", "ImageError", "Checkpoint", "SourceImage", "ModelPanels", "ReconstructionView",
           "committed_checkpoints", "open_checkpoint", "source_count", "source_image", "decode_upload",
           "reconstruction_view", "describe", "summary_rows", "row_label", "person_label", "ReconstructionFigure",
           "draw_reconstruction_view", "ReconstructionExplorer", "reconstruction_explorer", "IMAGE_SOURCES", "PANELS"]
