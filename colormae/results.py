"""Reading experiment outputs back: grid tables, per-mask summaries, loss curves, and the paper's
own numbers (transcribed, always labelled as the paper's, never mixed with ours)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .runtime import read_metrics

MASK_ORDER = ["random", "blue", "green", "purple", "red"]

# Paper, Table 1 (ViT-B/16, ImageNet-1K; fine-tuned top-1 %, ADE20K mIoU, COCO AP box) per
# pretraining epochs. Transcribed from ../shared/paper; these are the paper's numbers, not ours.
PAPER_TABLE1 = {
    "classification_top1": {
        100: {"random": 81.69, "blue": 81.82, "green": 81.82, "purple": 80.82, "red": 78.83},
        300: {"random": 82.82, "blue": 82.56, "green": 82.98, "purple": 82.39, "red": 81.35},
        800: {"random": 83.17, "blue": 83.02, "green": 83.57, "purple": 82.92, "red": 82.41},
        1600: {"random": 83.43, "blue": 83.26, "green": 83.77, "purple": 83.20, "red": 82.73},
    },
    "segmentation_miou": {
        100: {"random": 42.20, "blue": 40.33, "green": 42.24, "purple": 38.22, "red": 35.31},
        300: {"random": 44.51, "blue": 43.42, "green": 45.80, "purple": 43.85, "red": 42.08},
        800: {"random": 46.46, "blue": 44.81, "green": 49.18, "purple": 45.96, "red": 44.78},
        1600: {"random": 47.46, "blue": 46.35, "green": 49.26, "purple": 47.23, "red": 46.08},
    },
    "detection_ap_box": {
        100: {"random": 45.90, "blue": 46.00, "green": 45.90, "purple": 44.10, "red": 40.80},
        300: {"random": 48.50, "blue": 48.10, "green": 48.70, "purple": 47.20, "red": 45.10},
        800: {"random": 49.15, "blue": 49.10, "green": 49.50, "purple": 48.50, "red": 46.90},
        1600: {"random": 49.60, "blue": 49.50, "green": 50.10, "purple": 49.10, "red": 47.20},
    },
}


def paper_table1(task: str = "classification_top1") -> pd.DataFrame:
    """The paper's Table 1 for one task: rows = pretraining epochs, columns = masks (paper's numbers)."""
    if task not in PAPER_TABLE1:
        raise ValueError(f"task={task!r}; allowed values: {', '.join(PAPER_TABLE1)}")
    df = pd.DataFrame(PAPER_TABLE1[task]).T[MASK_ORDER]
    df.index.name = "paper: pretrain epochs"
    return df


def load_grid_table(out: str | Path) -> pd.DataFrame:
    path = Path(out) / "table.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `python -m colormae.experiments cifar10-minirepro` first")
    return pd.read_csv(path)


def summarize_by_mask(table: pd.DataFrame, metrics=("knn_top1", "linprobe_top1", "final_loss")) -> pd.DataFrame:
    """Mean, std and run count per mask, in the paper's column order; accuracies stay fractions."""
    g = table.groupby("mask")[list(metrics)]
    out = pd.concat({"mean": g.mean(), "std": g.std(ddof=1), "n": g.count()}, axis=1)
    out.columns = [f"{m}_{stat}" for stat, m in out.columns]
    order = [m for m in MASK_ORDER if m in out.index] + [m for m in out.index if m not in MASK_ORDER]
    return out.loc[order]


def format_mean_std(summary: pd.DataFrame, metric: str, scale: float = 100.0, digits: int = 2) -> pd.Series:
    """'mean ± std (n)' strings, accuracies shown in % by default."""
    mean, std, n = summary[f"{metric}_mean"] * scale, summary[f"{metric}_std"] * scale, summary[f"{metric}_n"]
    return pd.Series([f"{m:.{digits}f} ± {s:.{digits}f} (n={k})" if k > 1 else f"{m:.{digits}f} (n=1)"
                      for m, s, k in zip(mean, std.fillna(0), n)], index=summary.index)


def loss_bands(out: str | Path, table: pd.DataFrame, points: int = 100, window: int = 10) -> dict[str, tuple]:
    """Per mask: (epoch grid, mean loss, std loss) over its seeds, each curve smoothed by a trailing
    mean of ``window`` logged steps and interpolated on a common epoch grid."""
    bands = {}
    for mask in [m for m in MASK_ORDER if m in set(table["mask"])]:
        curves = []
        for seed in table.loc[table["mask"] == mask, "seed"]:
            recs = read_metrics(Path(out) / "runs" / f"{mask}_seed{seed}")
            loss = pd.Series([r["loss"] for r in recs]).rolling(window, min_periods=1).mean().to_numpy()
            curves.append((np.array([r["epoch"] for r in recs]), loss))
        end = min(c[0][-1] for c in curves)
        xs = np.linspace(min(c[0][0] for c in curves), end, points)
        ys = np.stack([np.interp(xs, x, y) for x, y in curves])
        bands[mask] = (xs, ys.mean(0), ys.std(0))
    return bands
