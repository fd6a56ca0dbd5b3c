"""Figure helpers for the paper's figures; every ``plot_*`` function returns a matplotlib Figure.

Figures are built with ``matplotlib.figure.Figure`` rather than pyplot, so library calls never
open windows or pile up in pyplot's global figure list; notebooks display the returned Figure.

Sections: saving, mask figures (Fig. 1-2). Later figures (loss curves, reconstructions) go below.
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

from .masking import make_masker
from .noise import COLORS, color_noise, radial_spectrum

log = logging.getLogger(__name__)

# Display names and plot colors of each mask kind (one place, so every figure agrees).
KIND_LABELS = {"random": "Random", "block": "Block-wise", "grid": "Grid", "white": "White",
               "red": "Red", "blue": "Blue", "green": "Green", "purple": "Purple"}
KIND_COLORS = {"random": "0.35", "block": "0.35", "grid": "0.35", "white": "0.55",
               "red": "#d62728", "blue": "#1f77b4", "green": "#2ca02c", "purple": "#9467bd"}
# Visible patches light, masked patches dark (the paper's convention in Fig. 1-2).
MASK_CMAP = ListedColormap(["#3b3b3b", "#f2f2f2"])


# ----------------------------------------------------------------------------- saving

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


def to_display(imgs: torch.Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> np.ndarray:
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
    from .model import reconstruct
    recs = {label: reconstruct(model, imgs, mask) for label, model in models.items()}
    first = next(iter(recs.values()))
    rows = {"original": imgs, mask_label: first["masked"], **{label: r["pasted"] for label, r in recs.items()}}
    return plot_image_rows(rows), {label: float(r["loss"]) for label, r in recs.items()}
