"""Reading experiment outputs back: grid tables, per-mask summaries, loss curves, and the paper's
own numbers (transcribed, always labelled as the paper's, never mixed with ours)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .rundir import read_metrics

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
    """Mean, std and run count per mask, in the paper's column order; accuracies stay fractions.

    ``std`` is the sample standard deviation over seeds (ddof=1, as for every std here); a mask with
    one run has std NaN (undefined), which ``format_mean_std`` shows as "(n=1)" without a ± part.
    """
    g = table.groupby("mask")[list(metrics)]
    out = pd.concat({"mean": g.mean(), "std": g.std(ddof=1), "n": g.count()}, axis=1)
    out.columns = [f"{m}_{stat}" for stat, m in out.columns]
    order = [m for m in MASK_ORDER if m in out.index] + [m for m in out.index if m not in MASK_ORDER]
    return out.loc[order]


def format_mean_std(summary: pd.DataFrame, metric: str, scale: float = 100.0, digits: int = 2) -> pd.Series:
    """'mean ± std (n=k)' strings (std with ddof=1), accuracies shown in % by default; one run: 'mean (n=1)';
    no value (the untrained control has no pretraining loss): '—'."""
    mean, std, n = summary[f"{metric}_mean"] * scale, summary[f"{metric}_std"] * scale, summary[f"{metric}_n"]
    return pd.Series([f"{m:.{digits}f} ± {s:.{digits}f} (n={k})" if k > 1 else f"{m:.{digits}f} (n=1)" if k == 1
                      else "—" for m, s, k in zip(mean, std.fillna(0), n)], index=summary.index)


class Band(tuple):
    """One mask's loss band: unpacks as ``(epochs, mean, std)`` and carries ``n``, the number of seeds.

    ``std`` is the sample standard deviation across seeds (ddof=1). With one seed it is undefined:
    ``std`` is then zeros (never NaN) and ``n == 1`` says there is no band to draw.
    """

    def __new__(cls, epochs: np.ndarray, mean: np.ndarray, std: np.ndarray, n: int):
        band = super().__new__(cls, (epochs, mean, std))
        band.n = int(n)
        return band

    def __getnewargs__(self):
        return (*self, self.n)

    @property
    def epochs(self) -> np.ndarray:
        return self[0]


def loss_bands(out: str | Path, table: pd.DataFrame, points: int = 100, window: int = 10) -> dict[str, Band]:
    """Per mask: ``Band(epochs, mean loss, std loss, n)`` over its seeds (the paper's Fig. 4).

    The x values are **epochs**: each record's ``"epoch"`` field (fractional, as logged), never its
    ``"step"``. Each run's loss is smoothed by a trailing mean of ``window`` logged records, then
    interpolated on ``points`` evenly spaced epochs from the earliest first epoch to the earliest
    last epoch of the mask's runs (the range every run covers at its end). Mean and std (ddof=1) are
    taken across seeds at each of those epochs; a mask with one seed gets std zeros and ``n == 1``
    (``figures.plot_loss_curves`` then draws its line without a band and says so in the legend).
    Records without a ``"loss"`` (evaluation-only records) are ignored, and so are rows that were
    never pretrained (the untrained control, ``pretrain_epochs == 0``).
    """
    if "pretrain_epochs" in table:
        table = table[table["pretrain_epochs"] > 0]
    bands = {}
    for mask in [m for m in MASK_ORDER if m in set(table["mask"])] + \
            [m for m in dict.fromkeys(table["mask"]) if m not in MASK_ORDER]:
        curves = []
        for seed in table.loc[table["mask"] == mask, "seed"]:
            run = Path(out) / "runs" / f"{mask}_seed{seed}"
            recs = [r for r in read_metrics(run) if "loss" in r]
            if not recs:
                raise ValueError(f"{run}/metrics.jsonl has no loss records")
            if any("epoch" not in r for r in recs):
                raise ValueError(f"{run}/metrics.jsonl: loss records without an 'epoch' field (Fig. 4 is per epoch)")
            epochs = np.array([r["epoch"] for r in recs], dtype=float)
            loss = pd.Series([r["loss"] for r in recs], dtype=float).rolling(window, min_periods=1).mean().to_numpy()
            curves.append((epochs, loss))
        end = min(c[0][-1] for c in curves)
        xs = np.linspace(min(c[0][0] for c in curves), end, points)
        ys = np.stack([np.interp(xs, x, y) for x, y in curves])
        n = len(curves)
        std = ys.std(0, ddof=1) if n > 1 else np.zeros_like(xs)
        bands[mask] = Band(xs, ys.mean(0), std, n)
    return bands
