"""The mask explorer of notebook 09: pick a mask kind, its filter parameters, the mask ratio, the
grid, a seed and the noise source, and see the noise, its periodogram and radial spectrum, the mask,
its visible clusters and its statistics (:func:`colormae.masks.stats.mask_statistics`) update live,
with the green band's centre frequency placed on the band-sweep result (kNN top-1 per band).

Three layers, so that tests and the benchmark call the logic without a browser:

- :func:`mask_view` (values in -> a :class:`MaskView` of plain arrays and numbers), pure and cached:
  the noise of a (kind, source, grid, seed, parameters) is filtered once, so moving only the mask
  ratio re-ranks the cached scores instead of filtering again;
- :class:`MaskFigure` / :func:`draw_mask_view` (a view -> a matplotlib ``Figure``, no pyplot): the
  figure and its artists are built once and updated in place (``set_data``), with a fixed layout;
- :func:`mask_explorer` (-> an ipywidgets widget) only wires the controls to the two above and shows
  the figure as PNG bytes in an ``ipywidgets.Image``.

``python benchmarks/explore.py`` times an update (values in -> PNG bytes). Notebooks send log
records to stdout with short messages with ``colormae.runtime.notebook_logging``.
"""
from __future__ import annotations

import functools
import html
import io
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import ipywidgets as widgets
import numpy as np
import pandas as pd
import PIL.Image
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from ..files import project_path
from ..masks.maskers import KINDS, SOURCES, make_masker, masks_from_scores
from ..masks.noise import COLORS, DEFAULT_PARAMS, color_params, color_transfer, radial_spectrum
from ..masks.schedule import band_centre
from ..masks.stats import mask_statistics, visible_clusters
from . import results
from .figures import KIND_COLORS, KIND_LABELS, MASK_CMAP, mean_periodogram

log = logging.getLogger(__name__)

# The filter parameters a kind takes (the keys of DEFAULT_PARAMS), in slider order.
PARAM_NAMES = ("sigma", "iterations", "sigma1", "sigma2")
KIND_PARAMS = {kind: tuple(p for p in PARAM_NAMES if p in DEFAULT_PARAMS.get(kind, {})) for kind in KINDS}
GRID_RANGE = (8, 32)
N_MASKS = 64          # masks per view: the statistics and the mean periodogram average them
BANK_SEED = 0         # the bank pretraining uses by default (make_masker's bank_seed)
POWER_RANGE = (1e-3, 10.0)  # radial spectrum y range and periodogram color range (as Fig. 2)
SWEEP_DIR, GRID_DIR = "results/cifar10_band_sweep", "results/cifar10_grid16"


# ----------------------------------------------------------------------------- values -> view

@dataclass(frozen=True)
class MaskView:
    """Everything the explorer shows for one set of values (arrays are read-only numpy)."""
    kind: str
    source: str
    grid: int
    mask_ratio: float
    seed: int
    params: dict                 # the filter parameters used (color kinds; {} otherwise)
    noise: np.ndarray            # [grid, grid] scores of the shown sample (the highest are kept)
    mask: np.ndarray             # [grid, grid] the shown mask, 1 = masked
    clusters: np.ndarray         # [grid, grid] its visible clusters, 1..k (0 = masked)
    periodogram: np.ndarray      # [grid, grid] log10 mean periodogram of the n_masks score windows, DC centred
    freqs: np.ndarray            # radial spectrum frequencies (cycles/patch)
    noise_power: np.ndarray      # radial spectrum of the score windows (standardized)
    mask_power: np.ndarray       # radial spectrum of the visible indicators (standardized)
    theory_freqs: np.ndarray | None  # the filter's expected spectrum |T(f)|^2 / mean |T|^2 (colors but white)
    theory_power: np.ndarray | None
    stats: dict                  # mask_statistics of the n_masks masks, plus visible_fraction and n_keep
    band_centre: float | None    # centre of the green band / purple stop band (cycles/patch); None otherwise
    n_masks: int
    notes: tuple[str, ...] = field(default=())  # values that were adjusted (e.g. grid masks need ratio 0.75)

    @property
    def num_clusters(self) -> int:
        """Visible clusters of the shown mask."""
        return int(self.clusters.max())


def _frozen(a) -> np.ndarray:
    a = np.array(a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a, copy=True)
    a.setflags(write=False)
    return a


@functools.lru_cache(maxsize=16)
def _masker(kind: str, source: str, grid: int, params: tuple, ratio: float):
    """Maskers are cached: a bank is generated once per (kind, parameters), not every update."""
    extra = {"bank_seed": BANK_SEED} if source == "bank" else {}
    return make_masker(kind, grid, ratio, source=source, **extra, **dict(params))


@functools.lru_cache(maxsize=64)
def _noise(kind: str, source: str, grid: int, seed: int, n_masks: int, params: tuple, ratio: float):
    """Scores [n, L] of ``n_masks`` samples and what depends on them alone (periodogram, spectra).

    Only block masks' scores depend on the ratio; every other kind passes ratio=0.75 here, so a
    ratio change finds its scores in this cache and only re-ranks them."""
    masker = _masker(kind, source, grid, params, ratio)
    scores = masker.scores(n_masks, generator=torch.Generator().manual_seed(seed)).float()
    windows = scores.reshape(n_masks, grid, grid)
    freqs, power = radial_spectrum(_standardize(windows))
    theory = _theory(kind, grid, dict(params)) if kind in COLORS and kind != "white" else (None, None)
    return (scores, _frozen(windows[0].numpy()), _frozen(mean_periodogram(windows)), _frozen(freqs.numpy()),
            _frozen(power.numpy()), *theory)


def _standardize(x: torch.Tensor) -> torch.Tensor:
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    return x / x.std(dim=(-2, -1), keepdim=True).clamp_min(1e-12)


def _theory(kind: str, grid: int, params: dict, points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """|T(f)|^2 of the color's filter along one axis (f = 0 .. 0.5 cycles/patch), divided by the mean of
    |T|^2 over the grid's frequencies: the periodogram a unit-variance grid x grid window has on average."""
    p = {k: v for k, v in params.items() if k != "distribution"}
    profile = color_transfer(kind, 1, 2 * points, dtype=torch.float64, **p)[0] ** 2  # f = k / (2 points)
    full = color_transfer(kind, grid, grid, dtype=torch.float64, **p) ** 2
    gain = float(torch.fft.irfft2(full, s=(grid, grid))[0, 0])  # mean |T|^2 over the full grid
    freqs = np.arange(points + 1) / (2 * points)
    return _frozen(freqs[1:]), _frozen((profile / gain).numpy()[1:])


@contextmanager
def hold_updates(explorer):
    """Change several controls of ``explorer`` with one ``update()`` at the end (not one per control):
    the explorer's observers skip their update while ``explorer._holding`` is set."""
    explorer._holding = True
    try:
        yield
    finally:
        explorer._holding = False
    explorer.update()


@contextmanager
def one_thread():
    """torch on one thread for the explorer's tiny tensors (a 64 x 24 x 24 FFT): measured 4x faster than two
    threads on a busy 2-core machine, where the threads wait for each other; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _n_keep(grid: int, mask_ratio: float) -> int:
    return int(grid * grid * (1 - mask_ratio))  # as Masker.n_keep


def mask_view(kind: str = "green", grid: int = 16, mask_ratio: float = 0.75, seed: int = 0, source: str = "online",
              *, sigma: float | None = None, iterations: int | None = None, sigma1: float | None = None,
              sigma2: float | None = None, n_masks: int = N_MASKS) -> MaskView:
    """The explorer's data for one set of values: ``n_masks`` masks drawn with ``seed``, sample 0 shown.

    Filter parameters a kind does not take are ignored (the explorer passes every slider's value);
    None means the kind's default (``DEFAULT_PARAMS``). Grid masks always mask 75 % and the baselines
    (random, block, grid) are always online: other values are replaced and said so in ``notes``.
    Raises ValueError for values no masker accepts (e.g. sigma1 >= sigma2), with make_masker's message.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not supported; allowed values: {', '.join(KINDS)}")
    if source not in SOURCES:
        raise ValueError(f"source={source!r}; allowed values: {', '.join(SOURCES)}")
    if not isinstance(grid, (int, np.integer)) or not GRID_RANGE[0] // 4 <= grid <= 4 * GRID_RANGE[1]:
        raise ValueError(f"grid={grid!r} must be an integer in [{GRID_RANGE[0] // 4}, {4 * GRID_RANGE[1]}]")
    if n_masks < 1:
        raise ValueError(f"n_masks={n_masks} must be >= 1")
    grid, seed, notes = int(grid), int(seed), []
    if kind == "grid" and abs(mask_ratio - 0.75) > 1e-9:
        notes.append(f"grid masks keep one patch of every 2x2: mask ratio 0.75, not {mask_ratio:g}")
        mask_ratio = 0.75
    if source == "bank" and kind not in COLORS:
        notes.append(f"{kind} masks have no noise bank: online")
        source = "online"
    values = {"sigma": sigma, "iterations": iterations, "sigma1": sigma1, "sigma2": sigma2}
    given = {k: values[k] for k in KIND_PARAMS[kind] if values[k] is not None}
    if "iterations" in given:
        given["iterations"] = int(given["iterations"])
    params = {k: v for k, v in color_params(kind, **given).items() if k != "distribution"} if kind in COLORS else {}
    make_masker(kind, grid, mask_ratio, source="online", **params)  # validates the ratio (no bank built)
    with one_thread():
        return _view(kind, source, grid, float(mask_ratio), seed, params, int(n_masks), tuple(notes))


def _view(kind: str, source: str, grid: int, mask_ratio: float, seed: int, params: dict, n_masks: int,
          notes: tuple) -> MaskView:
    n_keep = _n_keep(grid, mask_ratio)
    key = tuple(sorted(params.items()))
    scores, noise, periodogram, freqs, noise_power, theory_f, theory_p = _noise(
        kind, source, grid, seed, n_masks, key, mask_ratio if kind == "block" else 0.75)
    mask, _, _ = masks_from_scores(scores, n_keep)
    visible = (1.0 - mask).reshape(-1, grid, grid)
    _, mask_power = radial_spectrum(_standardize(visible))
    stats = mask_statistics(mask, grid)
    stats.update(n_keep=n_keep, visible_fraction=n_keep / grid ** 2)
    labels, _ = visible_clusters(mask[:1], grid)
    centre = band_centre(params["sigma1"], params["sigma2"]) if kind in ("green", "purple") else None
    return MaskView(kind, source, grid, mask_ratio, seed, params, noise, _frozen(mask[0].reshape(grid, grid)),
                    _frozen(labels[0]), periodogram, freqs, noise_power, _frozen(mask_power.numpy()), theory_f,
                    theory_p, stats, centre, n_masks, notes)


# ----------------------------------------------------------------------------- the band sweep

def band_sweep_points(sweep_dir: str | Path = SWEEP_DIR, grid_dir: str | Path | None = GRID_DIR) -> pd.DataFrame:
    """kNN top-1 per green band (:func:`colormae.analysis.results.band_sweep_summary` of the sweep and the
    grid's green runs): sigma1, sigma2, band_centre, n, knn_top1_mean, knn_top1_std; empty (same columns)
    without results. Relative paths are taken from the repository root."""
    rows, _ = results.load_band_sweep(project_path(sweep_dir), None if grid_dir is None else project_path(grid_dir))
    columns = ["sigma1", "sigma2", "band_centre", "n", "knn_top1_mean", "knn_top1_std"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    return results.band_sweep_summary(rows, metrics=("knn_top1",))[columns]


def nearest_band(sweep: pd.DataFrame | None, centre: float | None) -> dict | None:
    """The swept band whose centre is nearest ``centre`` (a row of :func:`band_sweep_points` as a dict)."""
    if sweep is None or sweep.empty or centre is None:
        return None
    return sweep.iloc[int(np.argmin(np.abs(sweep["band_centre"].to_numpy(float) - centre)))].to_dict()


# ----------------------------------------------------------------------------- view -> figure

STAT_LABELS = {  # mask_statistics keys (and two of ours) in display order
    "n_keep": "visible patches per mask", "visible_fraction": "visible fraction", "num_clusters": "visible clusters",
    "cluster_size": "mean cluster size (patches)", "largest_cluster": "largest cluster (patches)",
    "clustering_vs_random": "cluster size / random's", "neighbour_fraction": "visible with a visible neighbour",
    "edge_correlation": "opposite-edge correlation",
}
# masked patches dark, each visible cluster its own light color (cycled)
CLUSTER_CMAP = ListedColormap(["#3b3b3b", "#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462",
                               "#b3de69", "#fccde5", "#d9d9d9", "#bc80bd", "#ccebc5", "#ffed6f"])


def describe(view: MaskView) -> str:
    """One line naming the view: kind, source, grid, ratio, seed and filter parameters."""
    names = {"sigma": "σ", "iterations": "iterations", "sigma1": "σ1", "sigma2": "σ2"}
    params = ", ".join(f"{names[k]}={v:g}" for k, v in view.params.items())
    where = f", {view.source}" if view.kind in COLORS else ""
    return (f"{KIND_LABELS[view.kind]}{where}, {view.grid}x{view.grid}, {view.mask_ratio:.0%} masked, seed {view.seed}"
            + (f" ({params})" if params else ""))


def stats_table(view: MaskView) -> pd.DataFrame:
    """The view's statistics over its ``n_masks`` masks, one labelled row each."""
    return pd.DataFrame({"value": [view.stats[k] for k in STAT_LABELS]},
                        index=pd.Index(list(STAT_LABELS.values()), name=f"{view.n_masks} masks"))


def stats_html(view: MaskView, sweep: pd.DataFrame | None = None) -> str:
    """:func:`stats_table` as a small HTML table, the band centre and the nearest swept band's kNN."""
    cells = "".join(f"<tr><td>{html.escape(label)}</td><td style='text-align:right'>{view.stats[k]:.3g}</td></tr>"
                    for k, label in STAT_LABELS.items())
    lines = [f"<b>{html.escape(describe(view))}</b>",
             f"<table style='font-size:12px'><tr><th style='text-align:left'>statistics of {view.n_masks} masks"
             f"</th><th></th></tr>{cells}</table>"]
    if view.band_centre is not None:
        lines.append(f"band centre {view.band_centre:.3f} cycles/patch (period {1 / view.band_centre:.1f} patches)")
        near = nearest_band(sweep, view.band_centre)
        if near is not None:
            spread = f" ± {100 * near['knn_top1_std']:.1f}" if near["n"] > 1 else ""
            lines.append(f"nearest swept band σ1={near['sigma1']:g}, σ2={near['sigma2']:g} "
                         f"({near['band_centre']:.3f}): kNN top-1 {100 * near['knn_top1_mean']:.1f}{spread} % "
                         f"({int(near['n'])} seed{'s' if near['n'] > 1 else ''})")
    lines += [f"<i>{html.escape(n)}</i>" for n in view.notes]
    return "<div style='font-size:12px; line-height:1.35'>" + "<br>".join(lines) + "</div>"


class BlittedFigure:
    """What the explorers' figures share: ``render`` blits the ``animated`` artists over the static parts
    (drawn once, kept in ``_background``; ``None`` draws them again) after ``draw(view)``; ``png`` encodes it."""

    figure: Figure
    animated: list
    _background = None

    def render(self, view=None) -> np.ndarray:
        """The figure (updated to ``view`` if given) as an RGBA array [H, W, 4], by blitting."""
        if view is not None:
            self.draw(view)
        if self._background is None:
            self.canvas.draw()
            self._background = self.canvas.copy_from_bbox(self.figure.bbox)
        else:
            self.canvas.restore_region(self._background)
        for artist in self.animated:
            if artist.get_visible():
                self.figure.draw_artist(artist)
        return np.asarray(self.canvas.buffer_rgba())

    def png(self, view=None, compress_level: int = 1) -> bytes:
        """The figure (updated to ``view`` if given) as PNG bytes (fast zlib level: 1)."""
        buf = io.BytesIO()
        PIL.Image.fromarray(self.render(view)[..., :3]).save(buf, format="png", compress_level=compress_level)
        return buf.getvalue()


class MaskFigure(BlittedFigure):
    """One Figure whose artists are updated in place for each view (:meth:`draw`, :meth:`png`).

    Panels: the shown sample's noise (scores), its mask, its visible clusters; the mean periodogram
    of the ``n_masks`` score windows, their radial spectrum (with the mask's and the filter's), and
    the band sweep's kNN top-1 against the band centre with this view's centre marked.

    :meth:`png` blits: everything that never changes (axes, ticks, labels, the sweep's points) is
    rendered once into a background, and each update restores it and draws only the changing
    ("animated") artists on top; a new grid size renders the background again.
    """

    def __init__(self, sweep: pd.DataFrame | None = None, *, figsize=(10.5, 6.4), dpi: int = 80):
        self.sweep = sweep
        self.dpi = dpi
        self.figure = Figure(figsize=figsize, dpi=dpi)
        self.canvas = FigureCanvasAgg(self.figure)
        self.figure.subplots_adjust(left=0.06, right=0.985, top=0.9, bottom=0.09, wspace=0.28, hspace=0.32)
        axes = self.figure.subplots(2, 3)
        self.axes = axes
        self._static = None  # (grid, n_masks): what the background was rendered for
        self._background = None
        blank = np.zeros((2, 2))
        (ax_noise, ax_mask, ax_clusters), (ax_pg, ax_radial, ax_sweep) = axes
        self.noise_image = ax_noise.imshow(blank, cmap="gray", interpolation="nearest")
        self.mask_image = ax_mask.imshow(blank, cmap=MASK_CMAP, vmin=0, vmax=1, interpolation="nearest")
        n_colors = CLUSTER_CMAP.N - 1
        self.cluster_image = ax_clusters.imshow(blank, cmap=CLUSTER_CMAP, vmin=0, vmax=n_colors,
                                                interpolation="nearest")
        # patch borders on top of the mask images (a grid of lines, rebuilt when the grid changes)
        self.borders = [ax.add_collection(LineCollection([], colors="0.55", linewidths=0.3))
                        for ax in (ax_mask, ax_clusters)]
        lo, hi = np.log10(POWER_RANGE[0]), np.log10(POWER_RANGE[1])
        self.periodogram_image = ax_pg.imshow(blank, cmap="magma", vmin=lo, vmax=hi, interpolation="nearest",
                                              extent=(-0.5, 0.5, -0.5, 0.5))
        ax_pg.set_xlabel("cycles / patch", fontsize=8)
        ax_pg.tick_params(labelsize=7)
        ax_pg.set_xticks([-0.5, 0, 0.5])
        ax_pg.set_yticks([-0.5, 0, 0.5])
        self.band_ring = ax_pg.add_patch(Circle((0, 0), 0.1, fill=False, color="white", lw=0.8, ls="--"))
        ax_radial.axhline(1.0, color="0.7", lw=0.8, ls=":")  # white noise's level
        (self.theory_line,) = ax_radial.plot([], [], color="0.3", lw=1, ls="--", label="filter |T|²")
        (self.noise_line,) = ax_radial.plot([], [], lw=1.8, label="noise (kind's colour)")
        (self.mask_line,) = ax_radial.plot([], [], color="black", lw=1, marker=".", ms=3, label="mask")
        self.radial_centre = ax_radial.axvline(0.0, color="#ff7f0e", lw=1.0, alpha=0.8)
        ax_radial.set_yscale("log")
        ax_radial.set_ylim(*POWER_RANGE)
        ax_radial.set_xlim(0, 0.5)
        ax_radial.set_xlabel("cycles / patch", fontsize=8)
        ax_radial.set_title("radial power spectrum", fontsize=10)
        ax_radial.tick_params(labelsize=7)
        legend = ax_radial.legend(fontsize=7, loc="lower left", frameon=False)
        legend.legend_handles[1].set_color("0.45")  # static (not redrawn per update): a neutral colour
        self._draw_sweep(ax_sweep)
        for ax in (ax_noise, ax_mask, ax_clusters):
            ax.set_xticks([])
            ax.set_yticks([])
        ax_noise.set_title("noise (sample 0, keep highest)", fontsize=10)
        for ax in (ax_mask, ax_clusters, ax_pg):
            ax.set_title(" ", fontsize=10)
        self.suptitle = self.figure.suptitle(" ", fontsize=11)
        self.animated = [self.noise_image, self.mask_image, self.cluster_image, *self.borders,
                         self.periodogram_image, self.band_ring, self.theory_line, self.noise_line, self.mask_line,
                         self.radial_centre, self.sweep_centre, self.sweep_label, self.suptitle,
                         ax_mask.title, ax_clusters.title]
        for artist in self.animated:
            artist.set_animated(True)

    def _draw_sweep(self, ax) -> None:
        ax.set_title("band sweep (CIFAR-10, 16x16)", fontsize=10)
        ax.set_xlabel("band centre (cycles / patch)", fontsize=8)
        ax.set_ylabel("kNN top-1 (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlim(0, 0.5)
        s = self.sweep
        if s is None or s.empty:
            ax.text(0.5, 0.5, "no band-sweep results", ha="center", va="center", transform=ax.transAxes,
                    fontsize=9, color="0.4")
            lo, hi = 0.0, 1.0
        else:
            y, err = 100 * s["knn_top1_mean"].to_numpy(float), 100 * s["knn_top1_std"].fillna(0).to_numpy(float)
            ax.errorbar(s["band_centre"], y, yerr=err, color=KIND_COLORS["green"], marker="o", ms=4, lw=1.2,
                        capsize=2)
            lo, hi = float(np.min(y - err)), float(np.max(y + err))
            pad = 0.25 * (hi - lo) + 0.1
            lo, hi = lo - pad, hi + pad
        ax.set_ylim(lo, hi)
        self.sweep_centre = ax.axvline(0.0, color="#ff7f0e", lw=1.5, alpha=0.8)
        self.sweep_label = ax.text(0.98, 0.96, "", ha="right", va="top", transform=ax.transAxes, fontsize=8,
                                   color="#c45f00")

    def _set_static(self, grid: int, n_masks: int) -> None:
        """Limits, patch borders and the periodogram's title: only a new grid or n_masks changes them."""
        if (grid, n_masks) == self._static:
            return
        self.periodogram_image.axes.set_title(f"periodogram (log, mean of {n_masks})", fontsize=10)
        extent = (-0.5, grid - 0.5, grid - 0.5, -0.5)
        for image in (self.noise_image, self.mask_image, self.cluster_image):
            image.set_extent(extent)
            image.axes.set_xlim(-0.5, grid - 0.5)
            image.axes.set_ylim(grid - 0.5, -0.5)
        edges = np.arange(1, grid) - 0.5
        lines = [[(e, -0.5), (e, grid - 0.5)] for e in edges] + [[(-0.5, e), (grid - 0.5, e)] for e in edges]
        for borders in self.borders:
            borders.set_segments(lines)
            borders.set_linewidth(0.3 if grid <= 20 else 0.2)
        self._static = (grid, n_masks)
        self._background = None  # render the static parts again

    def draw(self, view: MaskView) -> Figure:
        """Update every artist to ``view``; returns the (same) Figure."""
        g = view.grid
        self._set_static(g, view.n_masks)
        color = KIND_COLORS[view.kind]
        self.noise_image.set_data(view.noise)
        self.noise_image.set_clim(float(view.noise.min()), float(view.noise.max()))
        self.mask_image.set_data(1 - view.mask)
        self.mask_image.axes.set_title(f"mask: {int((view.mask == 0).sum())} of {g * g} visible", fontsize=10)
        n_colors = CLUSTER_CMAP.N - 1
        self.cluster_image.set_data(np.where(view.clusters > 0, (view.clusters - 1) % n_colors + 1, 0))
        sizes = np.bincount(view.clusters.ravel())[1:]
        self.cluster_image.axes.set_title(f"{view.num_clusters} visible clusters (largest {sizes.max()})",
                                          fontsize=10)
        self.periodogram_image.set_data(view.periodogram)
        self.noise_line.set_data(view.freqs, view.noise_power)
        self.noise_line.set_color(color)
        self.mask_line.set_data(view.freqs, view.mask_power)
        if view.theory_freqs is not None:
            self.theory_line.set_data(view.theory_freqs, view.theory_power)
        else:
            self.theory_line.set_data([], [])
        centre = view.band_centre
        for line in (self.radial_centre, self.sweep_centre):
            line.set_visible(centre is not None)
            if centre is not None:
                line.set_xdata([centre, centre])
        self.band_ring.set_visible(centre is not None)
        if centre is not None:
            self.band_ring.set_radius(centre)
            self.sweep_label.set_text(f"{KIND_LABELS[view.kind].lower()} band centre {centre:.3f}")
        else:
            self.sweep_label.set_text("no band: green / purple only")
        self.suptitle.set_text(describe(view))
        self.suptitle.set_color(color if view.kind in COLORS and view.kind != "white" else "black")
        return self.figure


def draw_mask_view(view: MaskView, sweep: pd.DataFrame | None = None, **kwargs) -> Figure:
    """``view`` on a new Figure (no pyplot); the explorer reuses one :class:`MaskFigure` instead.
    The artists are animated (blitted by :meth:`MaskFigure.render`), so they are switched back to
    ordinary ones here: ``savefig`` and a notebook's inline display draw everything."""
    fig = MaskFigure(sweep, **kwargs)
    fig.draw(view)
    for artist in fig.animated:
        artist.set_animated(False)
    return fig.figure


# ----------------------------------------------------------------------------- widgets

def _slider(cls, description: str, value, lo, hi, step, continuous: bool, fmt: str | None = None):
    extra = {"readout_format": fmt} if fmt else {}
    return cls(value=value, min=lo, max=hi, step=step, description=description, continuous_update=continuous,
               style={"description_width": "72px"}, layout=widgets.Layout(width="300px"), **extra)


class MaskExplorer(widgets.HBox):
    """The explorer widget: ``controls`` (name -> widget) on the left, the figure (``image``, PNG)
    with ``stats`` and a ``status`` line on the right. Every control change calls :meth:`update`;
    ``view`` is the last view shown and ``last_update_ms`` how long it took (values in -> PNG)."""

    def __init__(self, kind: str = "green", grid: int = 16, mask_ratio: float = 0.75, seed: int = 0,
                 source: str = "online", *, sweep: pd.DataFrame | None = None, n_masks: int = N_MASKS,
                 continuous_update: bool = True, dpi: int = 80, **params):
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r} is not supported; allowed values: {', '.join(KINDS)}")
        self.sweep, self.n_masks = sweep, n_masks
        self.figure = MaskFigure(sweep, dpi=dpi)
        self.view: MaskView | None = None
        self.last_update_ms: float | None = None
        self._holding = False
        c = continuous_update
        defaults = {**DEFAULT_PARAMS.get(kind, {}), **params}
        self.controls = {
            "kind": widgets.Dropdown(options=[(KIND_LABELS[k], k) for k in KINDS], value=kind, description="kind",
                                     style={"description_width": "72px"}, layout=widgets.Layout(width="300px")),
            "source": widgets.ToggleButtons(options=list(SOURCES), value=source, description="source",
                                            style={"description_width": "72px", "button_width": "100px"}),
            "sigma": _slider(widgets.FloatSlider, "σ", defaults.get("sigma", 1.0), 0.2, 4.0, 0.05, c),
            "iterations": _slider(widgets.IntSlider, "iterations", defaults.get("iterations", 2), 1, 4, 1, c),
            "sigma1": _slider(widgets.FloatSlider, "σ1", defaults.get("sigma1", 0.7), 0.1, 4.0, 0.05, c),
            "sigma2": _slider(widgets.FloatSlider, "σ2", defaults.get("sigma2", 1.4), 0.2, 8.0, 0.05, c),
            "mask_ratio": _slider(widgets.FloatSlider, "mask ratio", mask_ratio, 0.05, 0.95, 0.05, c, ".2f"),
            "grid": _slider(widgets.IntSlider, "grid", grid, *GRID_RANGE, 1, c),
            "seed": _slider(widgets.IntSlider, "seed", seed, 0, 99, 1, c),
        }
        # the figure shrinks to the room left beside the controls (aspect kept); the controls do not
        self.image = widgets.Image(format="png", layout=widgets.Layout(width="100%", max_width=f"{int(10.5 * dpi)}px"))
        self.stats = widgets.HTML(layout=widgets.Layout(width="300px"))
        self.status = widgets.HTML()
        help_text = widgets.HTML("<div style='font-size:11px; line-height:1.3; color:#555'>σ: Gaussian sigmas in "
                                 "patches (DEFAULT_PARAMS); bank: windows of the default 256-pattern bank</div>",
                                 layout=widgets.Layout(width="300px"))
        left = widgets.VBox([*self.controls.values(), help_text, self.stats],
                            layout=widgets.Layout(flex="0 0 310px", min_width="310px"))
        right = widgets.VBox([self.image, self.status], layout=widgets.Layout(flex="1 1 auto", min_width="0"))
        super().__init__([left, right], layout=widgets.Layout(width="100%"))
        self._show_controls(kind)
        self.controls["kind"].observe(self._on_kind, names="value")
        for name, control in self.controls.items():
            if name != "kind":
                control.observe(self._on_change, names="value")
        self.update()

    def __repr__(self) -> str:  # what a notebook shows without a widget frontend (nbval, static renderers)
        shown = describe(self.view) if self.view is not None else "no view"
        return f"MaskExplorer({shown}; {len(self.controls)} controls; open in JupyterLab to use)"

    def values(self) -> dict:
        """The controls' values, as :func:`mask_view` takes them."""
        return {name: control.value for name, control in self.controls.items()}

    def hold(self):
        """Change several controls with one update at the end (not one per control)."""
        return hold_updates(self)

    def _show_controls(self, kind: str) -> None:
        for name in PARAM_NAMES:
            self.controls[name].layout.display = None if name in KIND_PARAMS[kind] else "none"
        self.controls["source"].disabled = kind not in COLORS
        self.controls["mask_ratio"].disabled = kind == "grid"

    def _on_kind(self, change) -> None:
        kind = change["new"]
        with self.hold():  # the new kind's default parameters, one update
            for name, value in DEFAULT_PARAMS.get(kind, {}).items():
                if name in self.controls:
                    self.controls[name].value = value
            if kind == "grid":
                self.controls["mask_ratio"].value = 0.75
            if kind not in COLORS:
                self.controls["source"].value = "online"
            self._show_controls(kind)

    def _on_change(self, change) -> None:
        if not self._holding:
            self.update()

    def update(self) -> MaskView | None:
        """Values in -> view -> PNG in the image; a ValueError is shown in the status line instead."""
        start = time.perf_counter()
        try:
            view = mask_view(**self.values(), n_masks=self.n_masks)
        except ValueError as e:
            self.status.value = f"<span style='color:#b00020'>{html.escape(str(e))}</span>"
            return None
        self.image.value = self.figure.png(view)
        self.stats.value = stats_html(view, self.sweep)
        self.view = view
        self.last_update_ms = 1000 * (time.perf_counter() - start)
        self.status.value = f"<small>updated in {self.last_update_ms:.0f} ms</small>"
        return view


def mask_explorer(kind: str = "green", grid: int = 16, mask_ratio: float = 0.75, seed: int = 0, source: str = "online",
                  *, sweep_dir: str | Path | None = SWEEP_DIR, grid_dir: str | Path | None = GRID_DIR,
                  n_masks: int = N_MASKS, continuous_update: bool = True, **params) -> MaskExplorer:
    """The explorer widget (display it in a notebook), starting from these values; ``params`` are a color's
    filter parameters (DEFAULT_PARAMS names). The band sweep is read from ``sweep_dir`` and ``grid_dir``
    (None: no sweep panel)."""
    sweep = band_sweep_points(sweep_dir, grid_dir) if sweep_dir is not None else None
    return MaskExplorer(kind, grid, mask_ratio, seed, source, sweep=sweep, n_masks=n_masks,
                        continuous_update=continuous_update, **params)


__all__ = ["BlittedFigure", "MaskView", "mask_view",
           "band_sweep_points", "nearest_band", "stats_table", "stats_html", "describe",
           "MaskFigure", "draw_mask_view", "MaskExplorer", "mask_explorer"]
