"""What the notebooks show of the committed results: tables, sentences ("in words") and figures,
ready to display. Sections: display, the CIFAR-10 grid (notebook 03: runs, paired statistics,
Table 1 beside the paper's, Fig. 4), the band sweep (notebook 06), Table 4 cost and Tables 1-3
assembled beside the paper's (notebook 08).

Statistics come from :mod:`colormae.analysis.results`, the paper's numbers from
:mod:`colormae.analysis.paper_tables`; nothing here trains or evaluates. Every figure is a
``matplotlib.figure.Figure`` (no pyplot); the notebook saves it with ``figures.save_figure``."""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd
from matplotlib.figure import Figure

from ..files import repo_relative
from ..masks.stats import random_reference
from ..models.mae import CONTROL, PRESETS
from . import paper_tables, results
from .figures import KIND_COLORS, draw_mask, plot_loss_curves

log = logging.getLogger(__name__)

METRICS = ("knn_top1", "linprobe_top1")  # the frozen-encoder metrics every grid has
CONTROL_LABEL = f"{CONTROL} (untrained)"


# ----------------------------------------------------------------------------- display

def for_display(frame: pd.DataFrame, na: str = "—") -> pd.DataFrame:
    """``frame`` as a notebook shows it: columns without any value dropped, the missing cells of the
    other columns shown as ``na``, and the untrained control's row labelled ``none (untrained)``."""
    frame = frame.dropna(axis=1, how="all")
    out = frame.astype(object).where(frame.notna(), na)
    for col in frame.columns[frame.notna().all()]:  # complete columns keep their dtype (and format)
        out[col] = frame[col]
    return out.rename(index={CONTROL: CONTROL_LABEL})


# ----------------------------------------------------------------------------- the grid (notebook 03)

RUN_COLUMNS = ["mask", "seed", "pretrain_epochs", "final_loss", "knn_top1", "linprobe_top1"]


def runs_summary(table: pd.DataFrame) -> str:
    """'23 runs finished; seeds per mask: none 5, random 5, ...' (masks in order of appearance)."""
    counts = table.groupby("mask", sort=False)["seed"].count()
    return f"{len(table)} runs finished; seeds per mask: " + (", ".join(f"{m} {n}" for m, n in counts.items())
                                                             or "none yet")


def runs_table(table: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """Every run of a grid table, indexed by (mask, seed), values rounded to ``digits``."""
    return table[RUN_COLUMNS].round(digits).set_index(["mask", "seed"])


def comparison_tables(table: pd.DataFrame, metrics: Sequence[str] = METRICS) -> list[pd.DataFrame]:
    """:func:`results.comparison_table` per metric: mean ± std (n) and the paired differences to
    random and to the untrained control with 95 % intervals."""
    return [results.comparison_table(table, metric) for metric in metrics]


def one_seed_masks(table: pd.DataFrame) -> list[str]:
    """Masks with a single run (no std, no interval), in :func:`results.mask_order`."""
    return results.mask_order([m for m, n in table.groupby("mask")["seed"].count().items() if n < 2])


def grid_in_words(table: pd.DataFrame, metrics: Sequence[str] = METRICS,
                  references: Sequence[str] = ("random", CONTROL)) -> list[str]:
    """What the paired intervals resolve, one sentence per (reference, metric, mask)
    (:func:`results.differences_in_words`), a blank line between references, then the masks that
    have one seed so far."""
    lines: list[str] = []
    for i, reference in enumerate(references):
        if i:
            lines.append("")
        for metric in metrics:
            words = results.differences_in_words(results.paired_differences(table, metric, reference))
            lines += words or [f"{metric}: no mask shares a seed with {reference} yet"]
    one_seed = one_seed_masks(table)
    if one_seed:
        lines += ["", "one seed so far (no interval, no std): " + ", ".join(one_seed)]
    return lines


def table1_beside_paper(table: pd.DataFrame, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Ours (mean ± std (n) in %, one column per metric) beside the paper's Table 1 classification
    column per pretraining epochs (labelled *paper*); '—' where a mask has no number."""
    ours = results.mean_std_columns(table, metrics)
    paper = paper_tables.paper_table1().T.add_prefix("paper: FT top-1 % @ ").add_suffix(" ep")
    return for_display(ours.join(paper))


def mask_rankings(table: pd.DataFrame, metrics: Sequence[str] = METRICS, paper_epochs: int = 800) -> list[str]:
    """One line per metric ranking the masks by their mean (highest first), then the paper's Table 1
    ranking at ``paper_epochs`` pretraining epochs."""
    summary = results.summarize_by_mask(table, metrics=tuple(metrics))
    lines = [f"{m:>14}: " + " > ".join(summary[f"{m}_mean"].sort_values(ascending=False).index) for m in metrics]
    paper = paper_tables.paper_table1().loc[paper_epochs].sort_values(ascending=False)
    return lines + [f"{f'paper @{paper_epochs} ep':>14}: " + " > ".join(paper.index)]


# Fig. 4 at each scale: title, y label and whether the loss axis is logarithmic
FIG4 = {
    "cpu": {"title": "CIFAR-10, 16x16 grid: pretraining loss per mask (mean ± std over seeds)",
            "ylabel": "reconstruction loss (norm-pix MSE, masked patches)", "log_y": False},
    # the masks separate after the first epoch, far below the initial loss: log axis
    "gpu": {"title": "CIFAR-10 16x16 grid, --scale gpu (6 epochs):\npretraining loss per mask (mean ± std over seeds)",
            "ylabel": "norm-pix MSE, masked patches (log)", "log_y": True},
}


def fig4_loss_curves(bands: dict[str, results.Band], scale: str = "cpu") -> Figure | None:
    """The paper's Fig. 4 at our ``scale`` ("cpu" or "gpu", :data:`FIG4`): mean ± std loss bands
    (:func:`results.loss_bands`) against epochs; None when no run has pretrained yet."""
    if scale not in FIG4:
        raise ValueError(f"scale={scale!r}; allowed values: {', '.join(FIG4)}")
    if not bands:
        log.warning("no pretrained run has finished yet: no loss curves")
        return None
    spec = FIG4[scale]
    fig = plot_loss_curves({}, bands=bands, title=spec["title"], ylabel=spec["ylabel"])
    if spec["log_y"]:
        fig.axes[0].set_yscale("log")
    return fig


def band_end_points(bands: dict[str, results.Band], digits: int = 4) -> pd.DataFrame:
    """Per mask: seeds ``n``, the band's first and last epoch, and its mean loss and std across seeds
    (ddof=1) at the last epoch."""
    rows = {mask: {"n": band.n, "first epoch": band[0][0], "last epoch": band[0][-1], "mean loss": band[1][-1],
                   "std": band[2][-1]} for mask, band in bands.items()}
    out = pd.DataFrame.from_dict(rows, orient="index", columns=["n", "first epoch", "last epoch", "mean loss", "std"])
    out.index.name = "mask"
    return out.astype({"n": int}).round(digits)


# ----------------------------------------------------------------------------- band sweep (notebook 06)

def band_sweep_status(summary: pd.DataFrame, sweep_found: bool, sweep_name: str) -> str:
    """What the band sweep's table holds (bands, seeds per band), or that it is absent."""
    if not sweep_found:
        text = (f"THE SWEEP'S RESULTS ARE ABSENT: {sweep_name} does not exist yet "
                "(colormae experiments cifar10-band-sweep).\n"
                "Below, only the default green band (σ1 = 0.7, the grid's green runs) can have accuracies; "
                "the other bands show their mask statistics only.")
    else:
        text = (f"{sweep_name}: {len(summary)} bands; runs (seeds) per band: "
                + ", ".join(f"σ1 = {a:g}: {n}" for a, n in zip(summary["sigma1"], summary["n"])))
    if summary.empty:
        text += "\nno band has accuracies yet (neither the sweep nor the grid's green runs have finished)"
    return text


def band_sweep_table(summary: pd.DataFrame, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """One row per band (:func:`results.band_sweep_summary`, fine to coarse): sigmas, band centre
    (cycles/patch), period (patches), seeds and each metric's 'mean ± std' in % (mean only for one seed)."""
    out = summary[["sigma1", "sigma2", "band_centre"]].assign(period=1 / summary["band_centre"], n=summary["n"])
    for m in metrics:
        out[f"{m} %"] = [f"{a * 100:.2f}" + (f" ± {s * 100:.2f}" if n > 1 else "") for a, s, n in
                         zip(summary[f"{m}_mean"], summary[f"{m}_std"], summary["n"])]
    return out.round({"band_centre": 3, "period": 1}).set_index("sigma1")


def sweep_bands(summary: pd.DataFrame, sigma1s: Sequence[float]) -> list[tuple[float, float]]:
    """The green bands to describe: (s, 2 s) for each of ``sigma1s`` (the sweep's), the default green
    band and every band with results in ``summary``; sorted by sigma1."""
    return sorted({(s, 2 * s) for s in sigma1s} | {results.default_green_band()}
                  | set(zip(summary["sigma1"], summary["sigma2"])))


def random_cluster_size(grid: int, mask_ratio: float) -> float:
    """Mean visible-cluster size of random (MAE) masks keeping as many patches as ``mask_ratio`` does."""
    return float(random_reference(grid, round(grid * grid * (1 - mask_ratio)))["cluster_size"])


@dataclass
class BandSweepPlot:
    """The numbers the band-sweep figure draws (accuracies as fractions)."""
    common: list[int]            # the seeds every band has
    at_common: pd.DataFrame      # results.band_sweep_summary at those seeds: the line
    default: pd.Series | None    # the default green band over all its seeds (None unless 2+ seeds)
    random: dict[str, float]     # random masks' mean at the common seeds (the dashed line), per metric
    has_results: bool

    @property
    def seed_label(self) -> str:
        return "seed " + ", ".join(map(str, self.common))


def band_sweep_plot_data(rows: pd.DataFrame, grid_table: pd.DataFrame,
                         metrics: Sequence[str] = METRICS) -> BandSweepPlot:
    """Plot data of the band sweep: every band at the seeds all bands share, the default green band's
    mean ± std over all its seeds, and random masks at the shared seeds (from the grid)."""
    summary = results.band_sweep_summary(rows, metrics=tuple(metrics))
    common = results.band_common_seeds(rows)
    s1, s2 = results.default_green_band()
    default = summary[(summary["sigma1"] == s1) & (summary["sigma2"] == s2)]
    runs = grid_table[(grid_table["mask"] == "random") & grid_table["seed"].isin(common)] if len(grid_table) else []
    at_common = results.band_sweep_summary(rows, metrics=tuple(metrics), seeds=common)
    return BandSweepPlot(common=common, at_common=at_common,
                         default=default.iloc[0] if len(default) and default["n"].iloc[0] > 1 else None,
                         random={m: float(runs[m].mean()) for m in metrics} if len(runs) else {},
                         has_results=not summary.empty)


def band_sweep_figure(data: BandSweepPlot, mask_table: pd.DataFrame, examples: dict, random_cluster: float, *,
                      grid: int, stat_masks: int, sweep_found: bool) -> Figure:
    """Top: kNN and linear-probe top-1 against the band centre (line: every band at the common seed;
    open square: the default green's mean ± std over its seeds; dashed: random) and the mean
    visible-cluster size per band (``mask_table`` from :func:`results.band_mask_statistics`);
    bottom: one example mask per band. Fine (near-blue) bands on the left, coarse on the right."""
    green = KIND_COLORS["green"]
    fig = Figure(figsize=(max(9.0, 1.6 * len(mask_table)), 5.6), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.9, 1])
    ax_knn, ax_lp, ax_cl = top.subplots(1, 3)
    for ax, metric in ((ax_knn, "knn_top1"), (ax_lp, "linprobe_top1")):
        ax.plot(data.at_common["band_centre"], data.at_common[f"{metric}_mean"] * 100, marker="o", color=green,
                label=f"green bands ({data.seed_label})")
        if data.default is not None:
            d = data.default
            ax.errorbar([d["band_centre"] * 0.93], [d[f"{metric}_mean"] * 100], yerr=[d[f"{metric}_std"] * 100],
                        fmt="s", color="0.2", mfc="white", capsize=3,
                        label=f"default green, mean ± std of {int(d['n'])} seeds")
        if metric in data.random:
            ax.axhline(data.random[metric] * 100, color="0.35", ls="--", lw=1, label=f"random ({data.seed_label})")
        if not data.has_results:
            ax.text(0.5, 0.5, "no results yet", transform=ax.transAxes, ha="center")
        ax.set_ylabel("top-1 % (10k test images)")
        absent = "" if sweep_found else "\n(sweep not run yet: default band only)"
        ax.set_title(results.METRIC_LABELS[metric] + absent, fontsize=10)
    ax_cl.plot(mask_table["band_centre"], mask_table["cluster_size"], marker="o", color=green, label="green bands")
    ax_cl.axhline(random_cluster, color="0.35", ls="--", lw=1, label="random masks")
    ax_cl.set_yscale("log")
    ax_cl.set_yticks([1, 2, 5, 10, 20], ["1", "2", "5", "10", "20"])
    ax_cl.set_ylabel("mean visible-cluster size (patches)")
    ax_cl.set_title(f"mask statistics ({stat_masks} masks per band)", fontsize=10)
    for ax in (ax_knn, ax_lp, ax_cl):
        ax.set_xscale("log")
        ax.set_xlim(0.55, 0.065)  # fine (high frequency, near-blue) on the left, coarse (near-red) on the right
        ax.set_xticks(mask_table["band_centre"], [f"{c:.2f}" for c in mask_table["band_centre"]], fontsize=7)
        ax.minorticks_off()
        ax.set_xlabel("band centre (cycles/patch)")
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=7)
    for ax, (_, r) in zip(bottom.subplots(1, len(mask_table)), mask_table.iterrows()):
        draw_mask(ax, examples[(r["sigma1"], r["sigma2"])], grid,
                  f"σ1={r['sigma1']:g}, σ2={r['sigma2']:g}\n{r['band_centre']:.3f} c/p")
    return fig


def mask_growth_sentence(mask_table: pd.DataFrame) -> str:
    """How the mean visible-cluster size grows from the finest band to the coarsest (and against random's)."""
    fine, coarse = mask_table.iloc[0], mask_table.iloc[-1]
    return (f"masks: the mean visible-cluster size grows from {fine['cluster_size']:.2f} patches "
            f"(σ1 = {fine['sigma1']:g}, {fine['clustering_vs_random']:.2f}x random's) to {coarse['cluster_size']:.1f} "
            f"(σ1 = {coarse['sigma1']:g}, {coarse['clustering_vs_random']:.1f}x random's)")


def band_sweep_words(rows: pd.DataFrame, grid_table: pd.DataFrame, mask_table: pd.DataFrame,
                     metrics: Sequence[str] = METRICS) -> list[str]:
    """:func:`results.band_sweep_in_words` per metric (a blank line after each), then
    :func:`mask_growth_sentence`."""
    lines: list[str] = []
    for metric in metrics:
        lines += [*results.band_sweep_in_words(rows, grid_table, metric), ""]
    return lines + [mask_growth_sentence(mask_table)]


# ----------------------------------------------------------------------------- Table 4 (notebook 08)

TABLE4_COLUMNS = ["batch", "params_m", "gflops_fwd_per_img", "gmacs_fwd_per_img", "memory_accounted_mib",
                  "mask_state_mib",
                  "memory_vs_random", "cuda_peak_mib"]
_KEY = ["preset", "mask", "source"]
VIT_B = "mae_vit_base_patch16"


def cost_records(cost_dir: str | Path, part: str) -> dict[str, tuple[pd.DataFrame, dict]]:
    """``benchmarks/cost.py``'s records of one ``part`` ("static" or "timing"), per device (from the
    file names ``{part}_{device}.json``): (rows, environment)."""
    out = {}
    for path in sorted(Path(cost_dir).glob(f"{part}_*.json")):
        rec = json.loads(path.read_text())
        out[path.stem.split("_", 1)[1]] = (pd.DataFrame(rec["rows"]), rec["environment"])
    return out


def table4_ours(cost_dir: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """Our Table 4: per device, preset, mask and source the static cost (:data:`TABLE4_COLUMNS`)
    joined with the step time (``step_ms``, ``time_vs_random``) and the timing noise floor
    (``noise_floor``: random timed again / random, per preset; step-time ratios this close to 1 are
    not told apart from it), plus a ``device`` column. Also returns one note per device: its noise
    floor (or that timing is missing) and the machine."""
    static, timing = cost_records(cost_dir, "static"), cost_records(cost_dir, "timing")
    frames, notes = [], []
    for device, (rows, env) in static.items():
        t = rows.set_index(_KEY)[TABLE4_COLUMNS]
        if device in timing:
            tim = timing[device][0]
            t = t.join(tim[tim["source"] != "again"].set_index(_KEY)[["step_ms", "time_vs_random"]])
            floor = tim[tim["source"] == "again"].set_index("preset")["time_vs_random"].rename("noise_floor")
            t = t.join(floor)
            notes.append(f"{device}: timing noise floor (random again / random): {floor.round(3).to_dict()}")
        else:
            notes.append(f"{device}: no timing yet (python benchmarks/cost.py --part timing --device {device})")
        notes.append(f"ours, {device}: {env['device_name']}, torch {env['torch']}")
        frames.append(t.assign(device=device))
    return (pd.concat(frames) if frames else pd.DataFrame()), notes


def table4_display(table4: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """:func:`table4_ours` indexed by (device, preset, mask, source), numbers to ``digits`` significant
    digits, only the columns with a value, '—' for the others' missing cells (no CUDA peak on a CPU)."""
    if table4.empty:
        return table4
    t = table4.reset_index().set_index(["device", *_KEY])
    t = t.dropna(axis=1, how="all")
    def fmt(v) -> str:
        return "—" if v is None or v != v else f"{v:.{digits}g}"
    return t.apply(lambda col: col.map(fmt))  # Series.map: DataFrame.map needs pandas 2.1


def table4_by_device(table4: pd.DataFrame, digits: int = 4) -> list[pd.DataFrame]:
    """:func:`table4_display` of each device's rows, in table order: each shows only the columns that
    device filled (a CPU has no CUDA peak, a device without timing no step times)."""
    return [table4_display(rows, digits) for _, rows in table4.groupby("device", sort=False)]


def _time_bars(ax, labels, ratios, colors, hatch, floor: float, title: str, ylabel: str) -> None:
    """Step time / random as bars from 1 (the baseline), the noise floor shaded, each bar labelled."""
    ratios = list(ratios)
    bars = ax.bar(labels, [r - 1 for r in ratios], bottom=1.0, color=colors, hatch=hatch, edgecolor="0.3", lw=0.5)
    ax.bar_label(bars, labels=[f"{r:.3f}" for r in ratios], fontsize=6, padding=1)
    ax.axhline(1.0, color="0.4", lw=0.8)
    if floor == floor:  # not NaN
        ax.axhspan(min(1.0, floor), max(1.0, floor), color="0.5", alpha=0.25, lw=0)
        title += f"; shaded: noise floor {floor:.3f}"
    span = ratios + [floor if floor == floor else 1.0, 1.0]
    lo, hi = min(span), max(span)
    pad = 0.15 * (hi - lo) + 0.005
    ax.set_ylim(lo - pad, hi + 2 * pad)  # room for the labels above the bars
    ax.set_title(title, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)


def _short(preset: str) -> str:
    return "ViT-B/16" if preset == VIT_B else "nano" if "nano" in preset else preset


def table4_figure(table4: pd.DataFrame, device: str | None = None,
                  device_run: tuple[pd.DataFrame, dict] | None = None) -> Figure:
    """Table 4 as bars for one ``device`` of :func:`table4_ours` (default: "cuda" when it has rows, else
    the first device), one column per preset: training memory added vs random (%, each bar labelled:
    online masks add 0, which a bar cannot show) on top, step time / random below with the timing
    noise floor shaded (hatched bars: colors from a bank). ``device_run`` (:func:`device_run_timing`)
    adds a column with that record's step times (the H200 device check, ViT-B/16 at batch 128)."""
    devices = list(dict.fromkeys(table4["device"]))
    device = device or ("cuda" if "cuda" in devices else devices[0])
    ours = table4[table4["device"] == device].reset_index()
    presets = list(dict.fromkeys(ours["preset"]))
    columns = len(presets) + (device_run is not None)
    fig = Figure(figsize=(3.8 * columns, 3.3 * 2), layout="constrained")
    axes = fig.subplots(2, columns, squeeze=False)

    def style(r):
        labels = [f"{m}\n{s}" if m != "random" else m for m, s in zip(r["mask"], r["source"])]
        return labels, [KIND_COLORS[m] for m in r["mask"]], ["//" if s == "bank" else "" for s in r["source"]]

    for j, preset in enumerate(presets):
        r = ours[ours["preset"] == preset]
        labels, colors, hatch = style(r)
        batch = f", batch {int(r['batch'].iloc[0])}" if "batch" in r else ""
        top = axes[0, j]
        bars = top.bar(labels, 100 * r["memory_vs_random"], color=colors, hatch=hatch, edgecolor="0.3", lw=0.5)
        added = [f"+{mib:g} MiB\n+{100 * v:.2f} %" if mib else "+0"
                 for mib, v in zip(r["mask_state_mib"], r["memory_vs_random"])]
        top.bar_label(bars, labels=added, fontsize=6, padding=1)
        top.set_ylim(0, max(100 * r["memory_vs_random"].max(), 0.01) * 1.45)
        top.set_ylabel("training memory added vs random (%)", fontsize=8)
        top.set_title(f"{_short(preset)} · {device}{batch}\nparams {r['params_m'].iloc[0]:.2f} M, "
                      f"{r['gflops_fwd_per_img'].iloc[0]:.3g} GFLOP/img (every mask)", fontsize=8)
        if "time_vs_random" in r and r["time_vs_random"].notna().all():
            floor = r["noise_floor"].iloc[0] if "noise_floor" in r else float("nan")
            step = f"random {r['step_ms'].iloc[0]:.1f} ms/step" if "step_ms" in r else ""
            _time_bars(axes[1, j], labels, r["time_vs_random"], colors, hatch, floor,
                       f"{_short(preset)} · Table 4 timing · {device}{batch}\n{step}", f"step time / random ({device})")
        else:
            axes[1, j].text(0.5, 0.5, "timing not measured yet:\npython benchmarks/cost.py --part timing",
                            ha="center", va="center", transform=axes[1, j].transAxes)
            axes[1, j].set_axis_off()
    if device_run is not None:
        run, meta = device_run
        colors_run = run[run["source"] != "again"]
        labels, colors, hatch = style(colors_run)
        floor = float(run.loc[run["source"] == "again", "time_vs_random"].iloc[0]) if (run["source"] == "again").any() \
            else float("nan")
        _time_bars(axes[1, -1], labels, colors_run["time_vs_random"], colors, hatch, floor,
                   f"{_short(meta['preset'])} · H200 device check · batch {meta['batch']}, {meta['precision']}\n"
                   f"random {colors_run['step_ms'].iloc[0]:.1f} ms/step", "step time / random (device check)")
        axes[0, -1].text(0.5, 0.5, "H200 device check (below):\n" + meta["path"].replace("/gpu_check/", "/\ngpu_check/")
                         + "\nstep times only", ha="center",
                         va="center", fontsize=7, wrap=True, transform=axes[0, -1].transAxes)
        axes[0, -1].set_axis_off()
    for ax in axes.flat:
        ax.tick_params(axis="x", labelsize=6)
        ax.tick_params(axis="y", labelsize=7)
    bank = paper_tables.PAPER_BANK_MEMORY_INCREASE
    fig.suptitle(f"Table 4 at our scale (hatched: noise bank). Paper, ViT-B/16: same params and FLOPs for every "
                 f"mask, memory +{bank * 100:.1f} % with the bank", fontsize=9)
    return fig


# ----------------------------------------------------------------------------- cost in words (notebook 08, docs)

DEVICE_RUN = "results/device_runs/2026-11-27_h200"   # the lent H200's gpu_check (ViT-B/16 at batch 128, bf16)
DEVICE_RUN_TIMING = "gpu_check/3_pretrain_vitb_cuda.txt"
_TIMING_ROW = re.compile(r"^(\w+)\s+(online|bank|again)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s*$")


def device_run_timing(run_dir: str | Path = DEVICE_RUN) -> tuple[pd.DataFrame, dict]:
    """The ViT-B/16 step-time table of a device run's gpu_check (``gpu_check/3_pretrain_vitb_cuda.txt``):
    one row per (mask, source) with ``step_ms``, ``images_per_s``, ``time_vs_random`` and ``peak_mib``
    ("again": random timed a second time, the noise floor), and the table's header facts (``preset``,
    ``batch``, ``precision``)."""
    path = Path(run_dir) / DEVICE_RUN_TIMING
    text = path.read_text()
    header = re.search(r"^(\w+) \(.*\), (\w+) autocast.*batch (\d+)\)", text, re.M)
    if header is None:
        raise ValueError(f"{repo_relative(path)}: no '<preset> (...), <dtype> autocast (..., batch N)' header")
    rows = [m.groups() for m in map(_TIMING_ROW.match, text.splitlines()) if m]
    if not rows:
        raise ValueError(f"{repo_relative(path)}: no timing rows")
    frame = pd.DataFrame(rows, columns=["mask", "source", "step_ms", "images_per_s", "time_vs_random", "peak_mib"])
    frame = frame.astype({"step_ms": float, "images_per_s": float, "time_vs_random": float, "peak_mib": int})
    return frame, {"preset": header.group(1), "precision": header.group(2), "batch": int(header.group(3)),
                   "path": repo_relative(path)}


def attention_gflops_per_img(preset: str, mask_ratio: float = 0.75) -> float:
    """Forward GFLOPs per image of the attention matmuls (q k^T and attn v, 2 * 2 s^2 D per block: s
    tokens, D width) of an MAE ``preset`` at ``mask_ratio``: the encoder sees the kept patches and
    [CLS], the decoder every patch and [CLS]. ``torch.utils.flop_counter`` counts these inside
    ``scaled_dot_product_attention`` only where it has a formula for the fused kernel that runs."""
    cfg = PRESETS[preset]
    patches = (cfg.img_size // cfg.patch_size) ** 2
    enc, dec = int(patches * (1 - mask_ratio)) + 1, patches + 1
    return 4 * (cfg.depth * enc ** 2 * cfg.embed_dim + cfg.decoder_depth * dec ** 2 * cfg.decoder_embed_dim) / 1e9


def _range(values) -> tuple[float, float]:
    values = [float(v) for v in values]
    return min(values), max(values)


def cost_facts(cost_dir: str | Path, device_run_dir: str | Path = DEVICE_RUN) -> dict:
    """The numbers the cost story rests on, from ``benchmarks/cost.py``'s records (``cost_dir``) and the
    H200 device check (``device_run_dir``): what a mask adds in parameters, FLOPs and memory (online /
    bank), the step-time ratios to random with their noise floors (H200 at batch 128; Table 4's own
    timings per device), the FLOP counts per device and the paper's Table 4 memory."""
    static = cost_records(cost_dir, "static")
    timing = cost_records(cost_dir, "timing")
    if not static:
        raise FileNotFoundError(f"{repo_relative(Path(cost_dir))}: no static_*.json (python benchmarks/cost.py)")
    facts: dict = {"params_added_m": 0.0, "gflops_added": 0.0, "online_memory_added_mib": 0.0, "params_m": {},
                   "bank_mib": set(), "bank_vs_random": {}, "static_batch": {}, "gflops": {}}
    for device, (rows, _) in static.items():
        for preset, r in rows.groupby("preset", sort=False):
            ref = r[r["mask"] == "random"].iloc[0]
            facts["params_added_m"] = max(facts["params_added_m"], float((r["params_m"] - ref["params_m"]).abs().max()))
            facts["gflops_added"] = max(facts["gflops_added"],
                                        float((r["gflops_fwd_per_img"] - ref["gflops_fwd_per_img"]).abs().max()))
            online = r[r["source"] == "online"]
            facts["online_memory_added_mib"] = max(
                facts["online_memory_added_mib"],
                float((online["memory_accounted_mib"] - ref["memory_accounted_mib"]).abs().max()))
            bank = r[r["source"] == "bank"]
            facts["bank_mib"] |= set(bank["mask_state_mib"].astype(float))
            facts["bank_vs_random"].setdefault(preset, float(bank["memory_vs_random"].iloc[0]))
            facts["static_batch"].setdefault(preset, int(ref["batch"]))
            facts["params_m"].setdefault(preset, float(ref["params_m"]))
            facts["gflops"][(device, preset)] = float(ref["gflops_fwd_per_img"])
    if len(facts["bank_mib"]) != 1:
        raise ValueError(f"the records disagree on the bank's size: {sorted(facts['bank_mib'])} MiB")
    facts["bank_mib"] = facts["bank_mib"].pop()
    facts["attention_gflops"] = {preset: attention_gflops_per_img(preset) for preset in facts["params_m"]}
    facts["timing"] = {}
    for device, (rows, env) in timing.items():
        for preset, r in rows.groupby("preset", sort=False):
            colors = r[~r["mask"].isin(["random"])]
            facts["timing"][(device, preset)] = {
                "batch": int(r["batch"].iloc[0]), "device_name": env["device_name"],
                "random_ms": float(r.loc[(r["mask"] == "random") & (r["source"] == "online"), "step_ms"].iloc[0]),
                "online": _range(colors.loc[colors["source"] == "online", "time_vs_random"]),
                "bank": _range(colors.loc[colors["source"] == "bank", "time_vs_random"]),
                "all": _range(colors["time_vs_random"]),
                "floor": float(r.loc[r["source"] == "again", "time_vs_random"].iloc[0])}
    run, meta = device_run_timing(device_run_dir)
    colors = run[run["mask"] != "random"]
    facts["h200"] = {**meta, "random_ms": float(run.loc[(run["mask"] == "random") & (run["source"] == "online"),
                                                        "step_ms"].iloc[0]),
                     "online": _range(colors.loc[colors["source"] == "online", "time_vs_random"]),
                     "bank": _range(colors.loc[colors["source"] == "bank", "time_vs_random"]),
                     "all": _range(colors["time_vs_random"]),
                     "floor": float(run.loc[run["source"] == "again", "time_vs_random"].iloc[0])}
    paper = paper_tables.paper_table4()
    facts["paper"] = {"params_m": float(paper["params_m"].iloc[0]), "gflops": float(paper["gflops"].iloc[0]),
                      "memory_gb_random": float(paper.loc["random", "memory_gb"]),
                      "memory_gb_colors": _range(paper.drop(index="random")["memory_gb"]),
                      "memory_increase": paper_tables.PAPER_BANK_MEMORY_INCREASE}
    return facts


def _pct(x: float, digits: int = 2) -> str:
    return f"{x * 100:.{digits}f} %"


def _x(lo_hi: tuple[float, float], digits: int) -> str:
    lo, hi = (f"{v:.{digits}f}" for v in lo_hi)
    return lo if lo == hi else f"{lo}–{hi}"


def cost_sentences(facts: dict) -> dict[str, str]:
    """The cost story in sentences, every number from :func:`cost_facts` (the README, docs/benchmarks.md,
    docs/gpu_and_clusters.md and notebook 08 quote these verbatim; ``tests/test_claims.py`` checks it):
    ``summary`` (the README's one sentence), ``memory``, ``h200``, ``table4_cuda``, ``cpu``, ``flops``
    and ``paper``."""
    h = facts["h200"]
    vit_b_bank = facts["bank_vs_random"][VIT_B]
    bank = f"{facts['bank_mib']:g} MiB"
    nano = next(p for p in facts["bank_vs_random"] if p != VIT_B)
    gf = facts["gflops"]
    sdpa_only = {p: abs(gf[("cuda", p)] - gf[("cpu", p)] - facts["attention_gflops"][p]) < 1e-6
                 for p in facts["attention_gflops"] if ("cuda", p) in gf and ("cpu", p) in gf}
    out = {
        "summary": (f"They add no parameters; online color masks add no memory and a noise bank {bank} "
                    f"(+{_pct(vit_b_bank)} of ViT-B/16's training memory at batch {facts['static_batch'][VIT_B]}), "
                    "and on an H200 a ViT-B/16 pretraining "
                    f"step (batch {h['batch']}, {h['precision']}) takes {_x(h['all'], 3)}× random's time "
                    f"(noise floor {h['floor']:.3f})."),
        "memory": (f"Every mask has the same parameters (+{facts['params_added_m']:g}: "
                   f"{facts['params_m'][VIT_B]:.2f} M "
                   f"for ViT-B/16, {facts['params_m'][nano]:.2f} M for the nano preset) and the same forward FLOPs "
                   f"(+{facts['gflops_added']:g}). Online color masks keep no state between steps: "
                   f"+{facts['online_memory_added_mib']:g} MiB of training memory; a noise bank keeps its patterns: "
                   f"+{bank}, i.e. +{_pct(vit_b_bank)} for ViT-B/16 at batch {facts['static_batch'][VIT_B]} and "
                   f"+{_pct(facts['bank_vs_random'][nano])} for the nano preset at batch {facts['static_batch'][nano]} "
                   "(less at larger batches: the bank's size does not grow with the batch)."),
        "h200": (f"On a lent H200 ({h['path']}; ViT-B/16, batch {h['batch']}, {h['precision']}) a training step "
                 f"takes {h['random_ms']:.1f} ms with random masks, {_x(h['online'], 3)}× that with online color "
                 f"masks and {_x(h['bank'], 3)}× with a bank; random timed a second time gives {h['floor']:.3f} "
                 "(the noise floor)."),
        "paper": (f"The paper's Table 4 (ViT-B/16, colors from a GPU-resident bank) has the same "
                  f"{facts['paper']['params_m']:.2f} M parameters and {facts['paper']['gflops']:.2f} GFLOPs for "
                  f"every mask; its +{_pct(facts['paper']['memory_increase'], 1)} is the bank's memory increase "
                  f"({facts['paper']['memory_gb_random']:.2f} → {_x(facts['paper']['memory_gb_colors'], 2)} GB), "
                  "not step time."),
    }
    if ("cuda", VIT_B) in facts["timing"]:
        t = facts["timing"][("cuda", VIT_B)]
        out["table4_cuda"] = (
            f"Table 4's own CUDA timing (results/cost/timing_cuda.{{csv,json}}, {t['device_name']}) ran ViT-B/16 at "
            "batch "
            f"{t['batch']}: {t['random_ms']:.1f} ms a step for {t['batch']} images against {h['random_ms']:.1f} ms for "
            f"{h['batch']} at batch {h['batch']}, so at batch {t['batch']} the step time is set by kernel launches, "
            f"not by arithmetic; its ratios (online {_x(t['online'], 2)}, bank {_x(t['bank'], 2)}) spread around a "
            f"noise floor of {t['floor']:.3f} and cannot tell the masks or the sources apart"
            + (f" (the nano preset at batch {facts['timing'][('cuda', nano)]['batch']}: "
               f"{facts['timing'][('cuda', nano)]['random_ms']:.1f} ms a step, ratios "
               f"{_x(facts['timing'][('cuda', nano)]['all'], 2)}, floor {facts['timing'][('cuda', nano)]['floor']:.3f})"
               if ("cuda", nano) in facts["timing"] else "")
            + f". The batch-{h['batch']} device check is the GPU step time to quote.")
    cpu = [(p, t) for (d, p), t in facts["timing"].items() if d == "cpu"]
    if cpu:
        out["cpu"] = ("On the 2-core CPU (results/cost/timing_cpu.{csv,json}, median of 5 rounds) the colors' step "
                      "time is "
                      + " and ".join(f"{_x(t['all'], 2)}× random's ({'ViT-B/16' if p == VIT_B else 'nano preset'}, "
                                     "batch "
                                     f"{t['batch']}; random timed twice: {t['floor']:.3f})" for p, t in cpu)
                      + ": spread and noise floor of the same size, so this machine cannot tell the masks' step "
                      "times apart.")
    if VIT_B in sdpa_only:
        g_cpu, g_cuda = facts["gflops"][("cpu", VIT_B)], facts["gflops"][("cuda", VIT_B)]
        out["flops"] = (
            f"torch.utils.flop_counter gives ViT-B/16 {g_cpu:.2f} GFLOPs per image on the CPU and {g_cuda:.2f} on "
            f"CUDA (forward, 75 % masking); the difference, {g_cuda - g_cpu:.3f}, is "
            + ("exactly" if sdpa_only[VIT_B] else "not only") + " the attention matmuls "
            f"({facts['attention_gflops'][VIT_B]:.3f} GFLOPs: q k^T and attn v in every encoder and decoder block). "
            "scaled_dot_product_attention runs as a fused kernel on both devices, but the counter has a FLOP "
            "formula for the CUDA kernels (flash and memory-efficient attention) and none for the CPU one "
            "(aten._scaled_dot_product_flash_attention_for_cpu), which it counts as 0"
            + (" (the nano preset likewise: " + f"{facts['gflops'][('cpu', nano)]:.3f} against "
               f"{facts['gflops'][('cuda', nano)]:.3f})" if sdpa_only.get(nano) else "")
            + f". Table 4 lists each device's count in its own rows; the CUDA count "
            f"({g_cuda:.2f}) is the complete one, and neither is comparable with the paper's "
            f"{facts['paper']['gflops']:.2f} without its counting method.")
    return out


# ----------------------------------------------------------------------------- Tables 1-3 (notebook 08)

def dense_summary(path: str | Path, metrics: Sequence[str]) -> pd.DataFrame | None:
    """'mean ± std (n=k)' per mask of a Penn-Fudan csv, one column ``f"{metric} %"`` per metric
    (stored as fractions, shown in %). The replicate is the pretraining seed: fine-tuning seeds are
    averaged within it first (:func:`results.by_pretraining_seed`), then mean and std (ddof=1, 0 for
    one) over pretraining seeds, n = pretraining seeds; masks sorted by name; None when the
    experiment has not run. A csv without ``pretrain_seed`` counts each row as its own replicate."""
    path = Path(path)
    if not path.exists():
        log.warning("%s not found: not run yet", repo_relative(path))
        return None
    df = pd.read_csv(path)
    metrics = [m for m in metrics if m in df]
    if "pretrain_seed" in df:
        df = results.by_pretraining_seed(df, metrics)
    g = df.groupby("mask")[metrics]
    mean, std, n = g.mean() * 100, g.std(ddof=1).fillna(0) * 100, g.count()  # fractions -> %
    return pd.DataFrame({f"{m} %": [f"{a:.2f} ± {s:.2f} (n={k})" for a, s, k in zip(mean[m], std[m], n[m])]
                         for m in metrics}, index=mean.index)


# the dense tables' comparisons: the masks with each other, and each pretrained encoder with none
DENSE_COMPARISONS = (("green", "random"), ("random", CONTROL), ("green", CONTROL))


def dense_table(path: str | Path, metrics: Sequence[str]) -> pd.DataFrame | None:
    """A Penn-Fudan csv as docs/results.md and notebooks 04/05 show it: one row per encoder (random,
    green, the untrained control) with mean ± std (n) over pretraining seeds (:func:`dense_summary`),
    then green − random, random − none and green − none in points, paired by pretraining seed (fine-tuning
    seeds averaged within it), with the 95 % interval and the Holm p (:func:`results.paired_differences`;
    the untrained control is a family of its own). None when the experiment has not run."""
    summary = dense_summary(path, metrics)
    if summary is None:
        return None
    present = [m for m in metrics if f"{m} %" in summary]
    order = [m for m in ("random", "green", CONTROL) if m in summary.index]
    table = summary.loc[order].rename(index={CONTROL: CONTROL_LABEL})
    by_seed = results.by_pretraining_seed(pd.read_csv(path), present)
    for mask, ref in DENSE_COMPARISONS:
        if {mask, ref} <= set(order):
            table.loc[f"{mask} − {ref}"] = [results.format_paired(results.paired_differences(by_seed, m, ref)).loc[mask]
                                            for m in present]
    table.index.name = "encoder"
    return table


DENSE_TABLES = {"Penn-Fudan seg": ("segmentation.csv", ("miou", "iou_person")),
                "Penn-Fudan det": ("detection.csv", ("ap_box", "ap_mask"))}


def table1_ours(grid_dir: str | Path, dense_dir: str | Path) -> pd.DataFrame:
    """Our Table 1 at CPU scale, one row per mask: the CIFAR-10 grid's kNN / linear probe and the
    Penn-Fudan segmentation / detection fine-tunings, each 'mean ± std (n=k)' in %; NaN where a
    mask was not run; columns of experiments that have not run are left out (with a warning)."""
    columns: dict[str, pd.Series] = {}
    if (Path(grid_dir) / "table.csv").exists():
        columns.update(results.mean_std_columns(results.load_grid_table(grid_dir), prefix="ours: CIFAR-10 "))
    else:
        log.warning("%s not found: colormae experiments cifar10-grid16", repo_relative(Path(grid_dir) / "table.csv"))
    for name, (file, metrics) in DENSE_TABLES.items():
        frame = dense_summary(Path(dense_dir) / file, metrics)
        if frame is not None:
            columns.update({f"ours: {name} {col}": frame[col] for col in frame})
    return pd.DataFrame(columns)


def table1_ours_gpu(gpu_grid_dir: str | Path) -> pd.DataFrame:
    """Our Table 1 at GPU scale: the grid at ``--scale gpu`` (kNN, linear probe, fine-tuned top-1),
    'mean ± std (n=k)' in %; empty (with a warning) when it has not run."""
    path = Path(gpu_grid_dir) / "table.csv"
    if not path.exists():
        log.warning("%s not found: colormae experiments cifar10-grid16 --scale gpu --device cuda", repo_relative(path))
        return pd.DataFrame()
    return results.mean_std_columns(results.load_grid_table(gpu_grid_dir), (*METRICS, "finetune_top1"),
                                    prefix="ours (GPU scale): CIFAR-10 ")


def write_table2_commands(output_dir: str | Path) -> list[str]:
    """Write ``table2{a,b}_commands.csv`` (:func:`paper_tables.table2_commands`: the commands that
    would produce each cell of Table 2 at the paper's scale) into ``output_dir``; returns what to say
    about them, with one example command per part."""
    output_dir = Path(output_dir)
    lines = []
    for part in ("a", "b"):
        commands = paper_tables.table2_commands(part)
        commands.to_csv(output_dir / f"table2{part}_commands.csv")
        lines += [f"ours, Table 2 ({part}): not run; commands in {output_dir.name}/table2{part}_commands.csv, e.g.",
                  "  " + commands.iloc[0, 2], ""]
    return lines[:-1]


TABLE3_NAMES = {"random": "MAE (random)", "block": "block-wise (BEiT masking)", "green": "ColorMAE-G (green)"}


def table3_ours(table1: pd.DataFrame) -> pd.DataFrame:
    """Our side of Table 3: the rows of :func:`table1_ours` for random (MAE), block-wise (BEiT's
    masking) and green (ColorMAE-G), named as the paper's methods."""
    return table1.reindex([m for m in TABLE3_NAMES if m in table1.index]).rename(index=TABLE3_NAMES)


# ----------------------------------------------------------------------------- power (notebook 03, issue #23)

# design -> (results folder, table file, metric, pairing unit): every comparison green - random, paired by
# the pretraining seed (dense tasks: fine-tuning seeds averaged within each pretraining seed)
POWER_DESIGNS = {
    "CPU grid16, kNN": ("cifar10_grid16", "table.csv", "knn_top1", "seed"),
    "CPU grid16, linear probe": ("cifar10_grid16", "table.csv", "linprobe_top1", "seed"),
    "GPU grid16, kNN": ("cifar10_grid16_gpu", "table.csv", "knn_top1", "seed"),
    "GPU grid16, linear probe": ("cifar10_grid16_gpu", "table.csv", "linprobe_top1", "seed"),
    "GPU grid16, fine-tuned": ("cifar10_grid16_gpu", "table.csv", "finetune_top1", "seed"),
    "Penn-Fudan, box AP": ("dense_pennfudan", "detection.csv", "ap_box", "pretrain_seed"),
    "Penn-Fudan, mIoU": ("dense_pennfudan", "segmentation.csv", "miou", "pretrain_seed"),
}


def power_table(results_dir: str | Path, effect: float = 0.005, power: float = 0.8, alpha: float = 0.05,
                mask: str = "green", reference: str = "random") -> pd.DataFrame:
    """Per design of :data:`POWER_DESIGNS` found under ``results_dir``: the pairs it has, the observed
    std of the paired differences ``mask - reference`` (points), the smallest true effect the
    two-sided paired t test detects with ``power`` at that spread and n, and the pairs needed for
    ``effect`` (a fraction: 0.005 = 0.5 points)."""
    rows = []
    for design, (folder, file, metric, unit) in POWER_DESIGNS.items():
        path = Path(results_dir) / folder / file
        if not path.exists():
            log.warning("%s not found: %s left out", repo_relative(path), design)
            continue
        table = pd.read_csv(path)
        if unit != "seed":
            table = results.by_pretraining_seed(table, [metric], pretrain_seed=unit)
        d = results.paired_differences(table, metric, reference)
        if mask not in d.index or d.loc[mask, "n"] < 2:
            continue
        n, sd = int(d.loc[mask, "n"]), float(d.loc[mask, "std"])
        rows.append({"design": design, "pairs": n, "paired sd (points)": round(sd * 100, 2),
                     f"detectable at {power:.0%} power (points)":
                         round(results.detectable_effect(sd, n, power, alpha) * 100, 2),
                     f"pairs for {effect * 100:g} points": results.pairs_needed(effect, sd, power, alpha)})
    return pd.DataFrame(rows).set_index("design")


def power_in_words(power: pd.DataFrame, gains: pd.DataFrame) -> list[str]:
    """What :func:`power_table` and :func:`paper_gain_by_epochs` mean together, one line per design
    and one for the paper's smallest budget."""
    detect = next(c for c in power.columns if c.startswith("detectable"))
    need = next(c for c in power.columns if c.startswith("pairs for"))
    lines = [f"{design}: with {int(r['pairs'])} pairs (paired sd {r['paired sd (points)']:.2f}) it detects a true "
             f"difference of {r[detect]:.2f} points or more; {int(r[need])} pairs would detect "
             f"{need.removeprefix('pairs for ')}"
             + (" (an sd from 2 pairs has 1 degree of freedom: itself very uncertain)" if r["pairs"] < 3 else "")
             for design, r in power.iterrows()]
    first = gains.index.min()
    lines.append(f"The paper's own green - random gain at {first} ImageNet epochs: "
                 + ", ".join(f"{task} {v:+.2f}" for task, v in gains.loc[first].items())
                 + " points (paper's numbers): far below what these designs detect, so they cannot test the "
                 "paper's headline; only longer pretraining, where the paper's gain grows, or many more seed pairs "
                 "could.")
    return lines


def confirmatory_words(table: pd.DataFrame, planned_seeds: Sequence[int]) -> list[str]:
    """The preregistered replication's primary (kNN) and secondary (linear probe) results in words."""
    return [results.confirmatory_in_words(results.confirmatory_test(table, metric, planned_seeds=planned_seeds),
                                          endpoint=endpoint)
            for metric, endpoint in (("knn_top1", "primary"), ("linprobe_top1", "secondary"))]


def paper_gain_by_epochs(mask: str = "green", reference: str = "random") -> pd.DataFrame:
    """The paper's own ``mask - reference`` gain per task and pretraining epochs (paper's numbers,
    points): how the effect this compendium tests grows with the pretraining budget."""
    gains = {task: {epochs: rows[mask] - rows[reference] for epochs, rows in by_epochs.items()}
             for task, by_epochs in paper_tables.PAPER_TABLE1.items()}
    out = pd.DataFrame(gains).round(2)
    out.index.name = "paper: pretrain epochs"
    return out
