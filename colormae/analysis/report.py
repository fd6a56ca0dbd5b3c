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
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd
from matplotlib.figure import Figure

from ..files import repo_relative
from ..masks.stats import random_reference
from ..models.mae import CONTROL
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

TABLE4_COLUMNS = ["params_m", "gflops_fwd_per_img", "gmacs_fwd_per_img", "memory_accounted_mib", "mask_state_mib",
                  "memory_vs_random", "cuda_peak_mib"]
_KEY = ["preset", "mask", "source"]


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


def table4_figure(table4: pd.DataFrame) -> Figure:
    """Table 4 as bars for the first device of :func:`table4_ours`, one column per preset: training
    memory vs random (%) on top, step time / random below with the timing noise floor shaded
    (hatched bars: colors from a bank)."""
    device = table4["device"].iloc[0]
    ours = table4[table4["device"] == device].reset_index()
    presets = list(dict.fromkeys(ours["preset"]))
    fig = Figure(figsize=(4.2 * len(presets), 3.4 * 2), layout="constrained")
    axes = fig.subplots(2, len(presets), squeeze=False)
    for j, preset in enumerate(presets):
        r = ours[ours["preset"] == preset]
        labels = [f"{m}\n{s}" if m != "random" else m for m, s in zip(r["mask"], r["source"])]
        colors = [KIND_COLORS[m] for m in r["mask"]]
        hatch = ["//" if s == "bank" else "" for s in r["source"]]
        axes[0, j].bar(labels, 100 * r["memory_vs_random"], color=colors, hatch=hatch)
        axes[0, j].set_ylabel("training memory vs random (%)")
        axes[0, j].set_title(f"{preset}: params {r['params_m'].iloc[0]:.2f} M, "
                             f"{r['gflops_fwd_per_img'].iloc[0]:.3g} GFLOP/img", fontsize=9)
        if "time_vs_random" in r and r["time_vs_random"].notna().all():
            axes[1, j].bar(labels, r["time_vs_random"], color=colors, hatch=hatch)
            axes[1, j].axhline(1.0, color="0.4", lw=0.8)
            floor = r["noise_floor"].iloc[0] if "noise_floor" in r else float("nan")
            if floor == floor:  # not NaN
                axes[1, j].axhspan(min(1.0, floor), max(1.0, floor), color="0.5", alpha=0.25, lw=0,
                                   label=f"noise floor (random again: {floor:.3f})")
                axes[1, j].legend(fontsize=7, loc="lower right")
            axes[1, j].set_ylabel(f"step time / random ({device})")
        else:
            axes[1, j].text(0.5, 0.5, "timing not measured yet:\npython benchmarks/cost.py --part timing",
                            ha="center", va="center", transform=axes[1, j].transAxes)
            axes[1, j].set_axis_off()
        for ax in axes[:, j]:
            ax.tick_params(axis="x", labelsize=7)
    bank = paper_tables.PAPER_BANK_MEMORY_INCREASE
    fig.suptitle(f"Table 4 at our scale (hatched: bank; paper ViT-B: memory +{bank:.1%} with the bank, "
                 "same params and FLOPs)", fontsize=9)
    return fig


# ----------------------------------------------------------------------------- Tables 1-3 (notebook 08)

def dense_summary(path: str | Path, metrics: Sequence[str]) -> pd.DataFrame | None:
    """'mean ± std (n=k)' per mask of a Penn-Fudan csv, one column ``f"{metric} %"`` per metric
    (stored as fractions, shown in %; std ddof=1, 0 for one run; n counts pretraining seeds x
    fine-tuning seeds), masks sorted by name; None when the experiment has not run."""
    path = Path(path)
    if not path.exists():
        log.warning("%s not found: not run yet", repo_relative(path))
        return None
    df = pd.read_csv(path)
    metrics = [m for m in metrics if m in df]
    g = df.groupby("mask")[metrics]
    mean, std, n = g.mean() * 100, g.std(ddof=1).fillna(0) * 100, g.count()  # fractions -> %
    return pd.DataFrame({f"{m} %": [f"{a:.2f} ± {s:.2f} (n={k})" for a, s, k in zip(mean[m], std[m], n[m])]
                         for m in metrics}, index=mean.index)


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
