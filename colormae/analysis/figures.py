"""Figure helpers for the paper's figures; every ``plot_*`` function returns a matplotlib Figure.

Figures are built with ``matplotlib.figure.Figure`` rather than pyplot, so library calls never
open windows or pile up in pyplot's global figure list; notebooks display the returned Figure.

Sections: saving, mask figures (Fig. 1-2), training (loss curves, reconstructions; notebook 01),
the grid's reconstructions (Fig. 3, notebook 07), dense tasks (notebooks 04 and 05).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from ..data.datasets import build_dataset, sample_images
from ..engines import detect
from ..engines.segment import load_segmenter, predict_labels
from ..masks.maskers import KINDS, make_masker, masker_from_description
from ..masks.noise import COLORS, color_noise, radial_spectrum
from ..models.mae import MaskedAutoencoder, reconstruct
from ..run.artifacts import grid_model, load_mae
from ..run.pretrained import load_pretrained
from ..run.rundir import RunDir

log = logging.getLogger(__name__)

# Display names and plot colors of each mask kind (one place, so every figure agrees).
KIND_LABELS = {"random": "Random", "block": "Block-wise", "grid": "Grid", "white": "White",
               "red": "Red", "blue": "Blue", "green": "Green", "purple": "Purple"}
KIND_COLORS = {"random": "0.35", "block": "0.35", "grid": "0.35", "white": "0.55",
               "red": "#d62728", "blue": "#1f77b4", "green": "#2ca02c", "purple": "#9467bd"}
# Visible patches light, masked patches dark (the paper's convention in Fig. 1-2).
MASK_CMAP = ListedColormap(["#3b3b3b", "#f2f2f2"])


# ----------------------------------------------------------------------------- saving

def save_jpeg(fig: Figure, path: str | Path, dpi: int = 100, quality: int = 85) -> Path:
    """``fig`` as one JPEG (photographs: a tenth of a PNG's size, for the file and the notebook)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, pil_kwargs={"quality": quality})
    log.info("saved %s", path)
    return path


def save_figure(fig: Figure, name: str, out_dir: str | Path, dpi: int = 150) -> list[Path]:
    """Write ``fig`` as ``out_dir/name.png`` (``dpi``) and ``out_dir/name.pdf``; returns both paths.

    Date/software metadata are dropped so re-running a notebook does not change committed files.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(paths[1], bbox_inches="tight", metadata={"CreationDate": None, "Creator": None, "Producer": None})
    log.info("saved %s", ", ".join(str(p) for p in paths))
    return paths


# ----------------------------------------------------------------------------- masks (Fig. 1-2)

def draw_mask(ax: Axes, mask: torch.Tensor | np.ndarray, grid: int, title: str | None = None,
              title_color: str = "black") -> None:
    """One [L] mask (1 = masked) on ``ax`` as a grid x grid image with thin patch borders."""
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    ax.imshow(1 - m.reshape(grid, grid), cmap=MASK_CMAP, vmin=0, vmax=1, interpolation="nearest")
    # Patch borders make single visible patches readable even in small panels.
    ticks = np.arange(-0.5, grid, 1.0)
    ax.set_xticks(ticks, minor=True)
    ax.set_yticks(ticks, minor=True)
    ax.grid(which="minor", color="0.6", linewidth=0.3)
    ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, color=title_color, fontsize=10)


def example_masks(kind: str, n: int, grid: int = 14, mask_ratio: float = 0.75, seed: int = 0,
                  source: str = "online") -> torch.Tensor:
    """``n`` masks [n, L] of ``kind`` drawn from a generator seeded with ``seed``."""
    masker = make_masker(kind, grid, mask_ratio, source=source)
    mask, _, _ = masker(n, generator=torch.Generator().manual_seed(seed))
    return mask


def plot_mask_zoo(grid: int = 14, mask_ratio: float = 0.75, seed: int = 0, source: str = "online",
                  rows: Sequence[Sequence[str]] = (("random", "block", "grid"),
                                                   ("red", "blue", "green", "purple")),
                  panel_size: float = 1.9) -> Figure:
    """Paper Fig. 1: one example mask per kind, baselines on top and the colors below.

    Every kind draws with the same ``seed``; ``source`` ("online" or "bank") applies to the colors.
    """
    ncols = max(len(r) for r in rows)
    fig = Figure(figsize=(panel_size * ncols, panel_size * len(rows) + 0.3), layout="constrained")
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    for r, kinds in enumerate(rows):
        for c in range(ncols):
            ax = axes[r, c]
            if c >= len(kinds):
                ax.set_axis_off()
                continue
            kind = kinds[c]
            src = source if kind in COLORS else "online"
            mask = example_masks(kind, 1, grid, mask_ratio, seed, src)[0]
            draw_mask(ax, mask, grid, KIND_LABELS[kind], KIND_COLORS[kind])
    fig.suptitle(f"Masks on a {grid}x{grid} grid, {mask_ratio:.0%} masked (visible = light)", fontsize=10)
    return fig


def mean_periodogram(x: torch.Tensor) -> np.ndarray:
    """log10 of the periodogram |FFT|^2 / (H W) of ``x`` [..., H, W], averaged, DC centred (NaN)."""
    x = torch.as_tensor(x).float()
    h, w = x.shape[-2:]
    x = x.reshape(-1, h, w)
    power = (torch.fft.fft2(x - x.mean(dim=(-2, -1), keepdim=True)).abs() ** 2).mean(0) / (h * w)
    power[0, 0] = float("nan")  # the mean was removed: DC carries no information, leave it blank
    return torch.log10(torch.fft.fftshift(power).clamp_min(1e-30)).numpy()


def plot_color_noise(colors: Sequence[str] = COLORS, size: int = 64, grid: int = 14,
                     mask_ratio: float = 0.75, seed: int = 0, n_masks: int = 3,
                     n_spectrum: int = 64, source: str = "online", power_range: tuple[float, float] = (1e-3, 10.0),
                     panel_size: float = 1.8) -> Figure:
    """Paper Fig. 2: one column per color; rows are a ``size`` x ``size`` noise pattern, its
    periodogram (log power, DC in the centre), the radially averaged spectrum and ``n_masks``
    example ``grid`` x ``grid`` masks.

    The periodogram and spectrum average ``n_spectrum`` patterns (one pattern's periodogram is
    itself noise); the white spectrum is repeated as a dashed line for reference. All columns
    share one color scale and one y range, clipped at ``power_range`` (red falls far below it).
    """
    # Same seed for every color, so the columns share the white noise and differ by their filter only.
    noises = {c: color_noise(c, (n_spectrum, size, size), generator=torch.Generator().manual_seed(seed))
              for c in (*colors, "white")}
    ref_freqs, ref_power = radial_spectrum(noises["white"])
    n_rows = 3 + n_masks
    fig = Figure(figsize=(panel_size * len(colors) + 0.6, panel_size * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, len(colors), squeeze=False)
    spectra = {c: radial_spectrum(noises[c]) for c in colors}
    ymin, ymax = power_range
    for j, color in enumerate(colors):
        noise = noises[color]
        col = axes[:, j]
        col[0].imshow(noise[0].numpy(), cmap="gray", interpolation="nearest")
        col[0].set_title(KIND_LABELS[color], color=KIND_COLORS[color], fontsize=11)
        col[1].imshow(mean_periodogram(noise), cmap="magma", interpolation="nearest",
                      vmin=np.log10(ymin), vmax=np.log10(ymax), extent=(-0.5, 0.5, -0.5, 0.5))
        for ax in col[:2]:
            ax.set_xticks([])
            ax.set_yticks([])
        freqs, power = spectra[color]
        col[2].plot(ref_freqs.numpy(), ref_power.numpy(), ls="--", color="0.6", lw=1)
        col[2].plot(freqs.numpy(), power.numpy(), color=KIND_COLORS[color], lw=1.5)
        col[2].set_yscale("log")
        col[2].set_ylim(ymin, ymax)
        col[2].set_xlim(0, 0.5)
        col[2].set_xlabel("cycles / sample", fontsize=8)
        col[2].tick_params(labelsize=7)
        if j > 0:
            col[2].tick_params(labelleft=False)
        masks = example_masks(color, n_masks, grid, mask_ratio, seed, source)
        for i in range(n_masks):
            draw_mask(col[3 + i], masks[i], grid)
    axes[0, 0].set_ylabel(f"noise {size}x{size}", fontsize=9)
    axes[1, 0].set_ylabel("periodogram (log)", fontsize=9)
    axes[2, 0].set_ylabel("radial power", fontsize=9)
    for i in range(n_masks):
        axes[3 + i, 0].set_ylabel(f"mask {grid}x{grid}", fontsize=9)
    return fig


# ----------------------------------------------------------------------------- training (loss, reconstructions)

def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average (window 1 = raw); the first points average what exists so far."""
    v = np.asarray(values, dtype=float)
    if window <= 1 or len(v) == 0:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    n = np.minimum(np.arange(1, len(v) + 1), window)
    return (c[1:] - c[np.arange(1, len(v) + 1) - n]) / n


def plot_loss_curves(runs: dict[str, list[dict]], *, x: str = "epoch", window: int = 1,
                     title: str = "Pretraining loss", kinds: dict[str, str] | None = None,
                     bands: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
                     ylabel: str = "reconstruction loss (MSE, masked patches)") -> Figure:
    """Loss against ``x`` ("epoch" or "step") for several runs (label -> metrics.jsonl records).

    ``kinds`` maps a label to its mask kind so it gets the kind's color (the paper's Fig. 4).
    ``bands`` maps a label to (epochs, mean, std) drawn as a shaded mean +- std instead of ``runs``
    (``results.loss_bands``: x in epochs, so ``x`` must stay "epoch"); a band from a single run
    (``band.n == 1``) is drawn as its line only, labelled "(1 run, no band)".
    ``ylabel`` names the loss: the default is pretraining's; fine-tuning passes e.g. "training loss".
    """
    if bands and x != "epoch":
        raise ValueError(f"x={x!r}: loss bands are on epochs (results.loss_bands); use x='epoch'")
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.subplots()
    for label, records in runs.items():
        records = [r for r in records if "loss" in r]  # engines also log evaluation-only records
        xs = [r[x] for r in records]
        color = KIND_COLORS.get((kinds or {}).get(label, label))
        ax.plot(xs, smooth([r["loss"] for r in records], window), label=label, color=color, lw=1.5)
    for label, band in (bands or {}).items():
        xs, mean, std = band[:3]
        color = KIND_COLORS.get((kinds or {}).get(label, label))
        if getattr(band, "n", None) == 1:
            ax.plot(xs, mean, label=f"{label} (1 run, no band)", color=color, lw=1.5)
            continue
        ax.plot(xs, mean, label=label, color=color, lw=1.5)
        ax.fill_between(xs, mean - std, mean + std, color=color, alpha=0.2, lw=0)
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def to_display(imgs: torch.Tensor, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None) -> np.ndarray:
    """Normalized [B, C, H, W] -> displayable [B, H, W, C] in [0, 1] (ImageNet statistics by default)."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    mean = torch.tensor(mean or IMAGENET_DEFAULT_MEAN).view(1, -1, 1, 1)
    std = torch.tensor(std or IMAGENET_DEFAULT_STD).view(1, -1, 1, 1)
    return (imgs.detach().float().cpu() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def plot_image_rows(rows: dict[str, torch.Tensor], *, title: str | None = None, size: float = 1.4) -> Figure:
    """One row per entry (row label -> normalized images [B, C, H, W]), one column per image."""
    n_rows, n_cols = len(rows), next(iter(rows.values())).shape[0]
    fig = Figure(figsize=(size * n_cols + 1.2, size * n_rows + (0.4 if title else 0)))
    axes = np.atleast_2d(fig.subplots(n_rows, n_cols, squeeze=False))
    for r, (label, imgs) in enumerate(rows.items()):
        for c, img in enumerate(to_display(imgs)):
            ax = axes[r, c]
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_reconstructions(models: dict, imgs: torch.Tensor, mask, *, mask_label: str = "visible") -> tuple[Figure, dict]:
    """Original, visible patches, then one row per model (label -> MaskedAutoencoder) with its
    reconstruction of the same masked images (visible patches pasted back, MAE's display).

    Returns the figure and each model's masked-patch MSE on these images."""
    recs = {label: reconstruct(model, imgs, mask) for label, model in models.items()}
    first = next(iter(recs.values()))
    rows = {"original": imgs, mask_label: first["masked"], **{label: r["pasted"] for label, r in recs.items()}}
    return plot_image_rows(rows), {label: float(r["loss"]) for label, r in recs.items()}


def plot_recorded_masks(descriptions: Sequence[dict], n: int = 6, seed: int = 0, panel_size: float = 1.1) -> Figure:
    """One row per masker a run recorded (``summary["masks"]``: ``Masker.describe()`` entries, one
    per kind of its schedule), ``n`` example masks each, drawn from a generator seeded with ``seed``."""
    fig = Figure(figsize=(panel_size * n + 0.8, panel_size * len(descriptions) + 0.3), layout="constrained")
    axes = fig.subplots(len(descriptions), n, squeeze=False)
    for row, d in zip(axes, descriptions):
        mask, _, _ = masker_from_description(d)(n, generator=torch.Generator().manual_seed(seed))
        for ax, m in zip(row, mask):
            draw_mask(ax, m, d["grid"])
        row[0].set_ylabel(f"{KIND_LABELS.get(d['kind'], d['kind'])}\n{d['source']}", fontsize=9,
                          color=KIND_COLORS.get(d["kind"], "black"))
    d = descriptions[0]
    fig.suptitle(f"Masks the run recorded: {d['grid']}x{d['grid']} grid, {d['mask_ratio']:.0%} masked "
                 "(visible = light)", fontsize=10)
    return fig


def plot_run_reconstructions(run_dir: str | Path, imgs: torch.Tensor, *, mask_index: int = -1
                             ) -> tuple[Figure, dict, str]:
    """Notebook 01's figure: ``imgs`` under the masker the pretraining run in ``run_dir`` recorded
    (``summary["masks"][mask_index]``, default the last kind of its schedule; masks drawn from a
    generator seeded with the run's seed), reconstructed by the network at step 0 (the run's seed,
    untrained) and by the trained one. Returns the figure, each model's masked-patch MSE on
    ``imgs`` and the mask kind."""
    summary = RunDir(run_dir).read_summary()
    if not summary or not summary.get("masks"):
        raise FileNotFoundError(f"{run_dir} holds no pretraining summary with recorded masks")
    model, seed = load_mae(run_dir), summary["config"]["seed"]
    torch.manual_seed(seed)  # the initialization the run started from
    untrained = MaskedAutoencoder(model.cfg).eval()
    masker = masker_from_description(summary["masks"][mask_index])
    masks = masker(len(imgs), generator=torch.Generator().manual_seed(seed))
    fig, mse = plot_reconstructions({"step 0": untrained, "trained": model}, imgs, masks,
                                    mask_label=f"visible ({masker.kind})")
    return fig, mse, masker.kind


# ----------------------------------------------------------------------------- the grid's reconstructions (Fig. 3)

HELDOUT_NAMES = {"cifar10": "CIFAR-10 test", "embedded": "embedded photographs (test crops)"}


def heldout_dataset(data_root: str | None = None) -> str:
    """"cifar10" when CIFAR-10 is readable (in place, from ``data_root`` or ../shared/data), else
    "embedded" (the bundled photographs), with a warning."""
    try:
        build_dataset("cifar10", data_root, "test", length=1)
        return "cifar10"
    except FileNotFoundError as err:
        log.warning("CIFAR-10 not found (%s); held-out images: the embedded photographs", err)
        return "embedded"


def checkpoint_map(checkpoint: str | Path | None, checkpoints: dict[str, str] | None, labels: Sequence[str]
                   ) -> dict[str, str]:
    """Notebook 07's ``checkpoint`` / ``checkpoints`` parameters as one label -> path map, labels checked.

    Every label (of ``labels``, the figures' rows, and of ``checkpoints``) must be a mask kind: each row
    reconstructs under its own label's mask. ``checkpoint`` (one file for every label) and ``checkpoints``
    (mask label -> file, the other labels keep the grid's models) exclude each other; neither: {}."""
    checkpoints = dict(checkpoints or {})
    bad = [m for m in [*labels, *checkpoints] if m not in KINDS]
    if bad:
        raise ValueError(f"unknown mask label(s) {sorted(set(bad))} (masks, attention_masks or checkpoints keys); "
                         f"allowed values: {', '.join(KINDS)}")
    if checkpoint is not None and checkpoints:
        raise ValueError("checkpoint (one file for every label) and checkpoints (mask label -> file) exclude each "
                         "other; set one of them")
    return {m: str(checkpoint) for m in dict.fromkeys(labels)} if checkpoint is not None else checkpoints


def grid_models(grid_dir: str | Path, masks: Sequence[str], seed: int = 0, *,
                checkpoints: dict[str, str] | None = None) -> tuple[dict[str, MaskedAutoencoder], dict[str, str]]:
    """The grid's pretrained MAE of each of ``masks`` (``run.artifacts.grid_model``) and where each
    was read from; a label of ``checkpoints`` (label -> any file ``load_pretrained`` reads, see
    ``checkpoint_map``) is that file's model instead (one model per distinct file). Missing grid
    models are left out with a warning (a grid still running); none at all is a FileNotFoundError,
    and models of different image sizes a ValueError (every row shows the same images)."""
    models, sources, missing, loaded = {}, {}, [], {}
    for m in dict.fromkeys(masks):
        if m in (checkpoints or {}):
            path = checkpoints[m]
            if path not in loaded:
                loaded[path] = load_pretrained(path)
            models[m], sources[m] = loaded[path], str(path)
            continue
        try:
            models[m], sources[m] = grid_model(grid_dir, m, seed)
        except FileNotFoundError:
            missing.append(m)
    if missing:
        log.warning("no model yet for %s (colormae experiments cifar10-grid16): left out below", missing)
    if not models:
        raise FileNotFoundError(f"no pretrained model in {grid_dir}: run colormae experiments cifar10-grid16")
    sizes = {m: model.cfg.img_size for m, model in models.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"the models have different image sizes {sizes}: the figures show every model the same "
                         "images; choose checkpoints of one image size")
    return models, sources


def describe_models(models: dict[str, MaskedAutoencoder], sources: dict[str, str]) -> str:
    """A few lines: the models' shared shape, then each one's source."""
    cfg = next(iter(models.values())).cfg
    head = (f"models ({cfg.img_size} px, patch {cfg.patch_size}, {cfg.grid}x{cfg.grid} grid, width {cfg.embed_dim}, "
            f"depth {cfg.depth}, norm_pix_loss={cfg.norm_pix_loss}):")
    return "\n".join([head, *(f"  {m:<7} {src}" for m, src in sources.items())])


def own_masks(models: dict[str, MaskedAutoencoder], n: int, seed: int, mask_ratio: float = 0.75) -> dict:
    """Each model's own mask kind (label = kind), ``n`` masks from a generator seeded with ``seed``."""
    return {m: make_masker(m, model.cfg.grid, mask_ratio)(n, generator=torch.Generator().manual_seed(seed))
            for m, model in models.items()}


def reconstruction_rows(models: dict[str, MaskedAutoencoder], imgs: torch.Tensor, seed: int,
                        mask_ratio: float = 0.75) -> dict[str, torch.Tensor]:
    """Rows of Fig. 3: the original, then per model (label = its mask kind) the visible patches and
    the reconstruction under its own mask kind (visible patches pasted back)."""
    rows = {"original": imgs}
    for m, mk in own_masks(models, len(imgs), seed, mask_ratio).items():
        r = reconstruct(models[m], imgs, mk)
        rows[f"{m}: visible"], rows[f"{m}: reconstruction"] = r["masked"], r["pasted"]
    return rows


def plot_grid_reconstructions(models: dict[str, MaskedAutoencoder], heldout: str, data_root: str | None,
                              n: int, seed: int) -> dict[str, Figure]:
    """Fig. 3 by file name: ``fig3_reconstructions`` on the held-out set (``heldout_dataset``) and,
    when that is CIFAR-10, ``fig3_reconstructions_photos`` on the embedded photographs."""
    img_size = next(iter(models.values())).cfg.img_size
    targets = {m.cfg.norm_pix_loss for m in models.values()}
    target = ("norm-pix, de-normalized" if targets == {True} else "raw-pixel target" if targets == {False}
              else "norm-pix models de-normalized")
    title = "{}: each mask's model under its own mask, 75 % masked (" + target + ")"
    sets = {"fig3_reconstructions": (heldout, data_root)}
    if heldout != "embedded":
        sets["fig3_reconstructions_photos"] = ("embedded", None)
    figs = {}
    for name, (ds, root) in sets.items():
        rows = reconstruction_rows(models, sample_images(ds, root, "test", img_size, n), seed)
        figs[name] = plot_image_rows(rows, title=title.format(HELDOUT_NAMES[ds]))
    return figs


def masked_patch_mse(models: dict[str, MaskedAutoencoder], imgs: torch.Tensor, seed: int,
                     mask_ratio: float = 0.75) -> dict[str, dict[str, float]]:
    """Per model (label = its mask kind), under its own kind: ``loss`` (the training objective) and
    ``pixel_mse`` (de-normalized reconstruction vs image on masked pixels)."""
    out = {}
    for m, mk in own_masks(models, len(imgs), seed, mask_ratio).items():
        r = reconstruct(models[m], imgs, mk)
        pix = (((r["reconstruction"] - imgs) ** 2) * r["mask"]).sum() / r["mask"].sum()
        out[m] = {"loss": float(r["loss"]), "pixel_mse": float(pix)}
    return out


# ----------------------------------------------------------------------------- dense tasks (notebooks 04, 05)

def overlay_labels(image: torch.Tensor, labels: torch.Tensor, step: int = 1, cls: int = 1,
                   color: Sequence[float] = (1.0, 0.1, 0.1), alpha: float = 0.55) -> np.ndarray:
    """uint8 [3, H, W] image as float [H/step, W/step, 3] with the pixels of class ``cls`` tinted."""
    over = image.permute(1, 2, 0).numpy()[::step, ::step] / 255.0
    hit = labels.numpy()[::step, ::step] == cls
    over[hit] = (1 - alpha) * over[hit] + alpha * np.asarray(color)
    return over


def plot_segmentation_runs(run_dirs: dict[str, str | Path], test, n_show: int, display_px: int = 160) -> Figure:
    """Notebook 04: ``n_show`` evenly spaced test images (``(name, image, label)`` samples), one row
    each; the ground truth, then each segmentation run's (label -> run directory) predicted person
    pixels (red), predicted with the run's own test scale, crop and stride. Shown at about
    ``display_px`` px (small files)."""
    loaded = {label: load_segmenter(d) for label, d in run_dirs.items()}
    show = np.linspace(0, len(test) - 1, min(n_show, len(test))).round().astype(int)
    fig = Figure(figsize=(2.6 * (len(loaded) + 1), 2.3 * len(show)))
    axes = fig.subplots(len(show), len(loaded) + 1, squeeze=False)
    for r, (row, i) in enumerate(zip(axes, show)):
        name, image, label = test[int(i)]
        panels = {"ground truth": label, **{key: predict_labels(model, image, test_scale=cfg.test_scale,
                                                                crop=cfg.crop_size, stride=cfg.slide_stride)
                                            for key, (model, cfg) in loaded.items()}}
        step = max(1, min(image.shape[1:]) // display_px)
        for ax, (title, labels) in zip(row, panels.items()):
            ax.imshow(overlay_labels(image, labels, step))
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
        row[0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    return fig


def plot_detection_runs(run_dirs: dict[str, str | Path], n_show: int, score_threshold: float = 0.05,
                        top_k: int = 3) -> Figure:
    """Notebook 05: the first ``n_show`` test images of the runs' data, one row each: the ground
    truth (every instance), then each detection run's (label -> run directory) ``top_k`` best
    detections scoring >= ``score_threshold`` (masks filled, boxes yellow; scores in the title)."""
    loaded = {label: detect.load_detector(d) for label, d in run_dirs.items()}
    test_set = detect.build_data(next(iter(loaded.values()))[1], "test")
    shown = list(range(min(n_show, len(test_set))))
    preds = {label: dict(detect.predict(model, test_set, torch.device("cpu"), indices=shown))
             for label, (model, _) in loaded.items()}
    fig = Figure(figsize=(2.6 * (1 + len(preds)), 2.4 * len(shown)))
    axes = fig.subplots(len(shown), 1 + len(preds), squeeze=False)
    for row, i in zip(axes, shown):
        image, target = test_set[i]
        gt = {"boxes": target["boxes"], "masks": target["masks"], "scores": torch.ones(len(target["boxes"]))}
        panels = {"ground truth": gt, **{label: p[target["image_id"]] for label, p in preds.items()}}
        for ax, (title, pred) in zip(row, panels.items()):
            k = None if title == "ground truth" else top_k
            ax.imshow(draw_detections(image, pred, score_threshold, k).permute(1, 2, 0).numpy())
            scores = pred["scores"][pred["scores"] >= score_threshold][:k]
            ax.set_title(title if k is None else f"{title}: " + ", ".join(f"{s:.2f}" for s in scores.tolist()),
                         fontsize=9)
            ax.axis("off")
    return fig


def draw_detections(image: torch.Tensor, pred: dict, score_threshold: float = 0.5, top_k: int | None = None
                    ) -> torch.Tensor:
    """uint8 [3, H, W] with the masks (filled) and boxes of the detections scoring >= ``score_threshold``,
    at most the ``top_k`` best (torchvision returns them sorted by score)."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks
    keep = torch.nonzero(pred["scores"] >= score_threshold).flatten()[:top_k]
    masks = pred["masks"][keep]
    masks = (masks[:, 0] if masks.ndim == 4 else masks) >= 0.5
    out = draw_segmentation_masks(image, masks.bool(), alpha=0.45) if len(masks) else image
    return draw_bounding_boxes(out, pred["boxes"][keep], width=2, colors="yellow")
