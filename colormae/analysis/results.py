"""Reading experiment outputs back: grid tables, per-mask summaries, paired confidence intervals and
what they resolve (in words), loss curves and the band sweep's plot data. The paper's own numbers
live in ``colormae.analysis.paper_tables``; what the notebooks display of all this, in
``colormae.analysis.report``.

Statistics: runs of one seed share model init, data order and augmentation, so two masks are
compared by their PAIRED per-seed differences, with a t interval over the seeds both have."""
from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from scipy.optimize import brentq

from ..masks.maskers import make_masker
from ..masks.noise import DEFAULT_PARAMS
from ..masks.schedule import band_centre, parse_mask_params
from ..masks.stats import mask_statistics
from ..models.mae import CONTROL
from ..run.rundir import read_metrics
from .paper_tables import MASK_ORDER

METRIC_LABELS = {"knn_top1": "kNN top-1", "linprobe_top1": "linear probe top-1", "finetune_top1": "fine-tuned top-1"}


def load_grid_table(out: str | Path, missing_ok: bool = False) -> pd.DataFrame:
    """``out/table.csv``; with ``missing_ok`` a grid without a finished run gives an empty table."""
    path = Path(out) / "table.csv"
    if not path.exists():
        if missing_ok:
            return pd.DataFrame(columns=["mask", "seed", "pretrain_epochs", "final_loss", "knn_top1", "linprobe_top1"])
        raise FileNotFoundError(f"{path} not found: run `colormae experiments <grid>` first")
    return pd.read_csv(path)


def mask_order(masks) -> list[str]:
    """The paper's column order first, then any other label (block, the control) in order of appearance."""
    masks = list(dict.fromkeys(masks))
    return [m for m in MASK_ORDER if m in masks] + [m for m in masks if m not in MASK_ORDER]


def summarize_by_mask(table: pd.DataFrame, metrics=("knn_top1", "linprobe_top1", "final_loss")) -> pd.DataFrame:
    """Mean, std and run count per mask, in the paper's column order; accuracies stay fractions.

    ``std`` is the sample standard deviation over seeds (ddof=1, as for every std here); a mask with
    one run has std NaN (undefined), which ``format_mean_std`` shows as "(n=1)" without a ± part.
    """
    g = table.groupby("mask")[list(metrics)]
    out = pd.concat({"mean": g.mean(), "std": g.std(ddof=1), "n": g.count()}, axis=1)
    out.columns = [f"{m}_{stat}" for stat, m in out.columns]
    return out.loc[mask_order(out.index)]


def fixed(x: float, digits: int = 2) -> str:
    """``x`` with ``digits`` decimals, halves rounded up as a reader would (36.855 -> 36.86): a mean of
    test accuracies is a short decimal whose binary float may sit just below the half (36.854999...),
    which ``f"{x:.2f}"`` rounds down. Values are first read at 10 significant digits."""
    q = Decimal(f"{x:.10g}").quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
    return f"{q:.{digits}f}"


def format_mean_std(summary: pd.DataFrame, metric: str, scale: float = 100.0, digits: int = 2) -> pd.Series:
    """'mean ± std (n=k)' strings (std with ddof=1), accuracies shown in % by default; one run: 'mean (n=1)';
    no value (the untrained control has no pretraining loss): '—'. Halves round up (:func:`fixed`)."""
    mean, std, n = summary[f"{metric}_mean"] * scale, summary[f"{metric}_std"] * scale, summary[f"{metric}_n"]
    return pd.Series([f"{fixed(m, digits)} ± {fixed(s, digits)} (n={k})" if k > 1 else f"{fixed(m, digits)} (n=1)"
                      if k == 1 else "—" for m, s, k in zip(mean, std.fillna(0), n)], index=summary.index)


def mean_std_columns(table: pd.DataFrame, metrics=("knn_top1", "linprobe_top1"),
                     prefix: str = "ours: ") -> pd.DataFrame:
    """One 'mean ± std (n=k)' column per metric (in %) and one row per mask, columns named
    ``f"{prefix}{label} %"``: our side of a table printed beside the paper's."""
    summary = summarize_by_mask(table, metrics=tuple(metrics))
    return pd.DataFrame({f"{prefix}{METRIC_LABELS.get(m, m)} %": format_mean_std(summary, m) for m in metrics})


# ----------------------------------------------------------------------------- paired intervals

def _per_seed(table: pd.DataFrame, mask: str, metric: str) -> pd.Series:
    rows = table[(table["mask"] == mask) & table[metric].notna()]
    if rows["seed"].duplicated().any():
        raise ValueError(f"mask={mask!r} has several rows for seed(s) "
                         f"{sorted(set(rows.loc[rows['seed'].duplicated(), 'seed']))}: one row per (mask, seed) "
                         "expected")
    return rows.set_index("seed")[metric].astype(float)


ALTERNATIVES = ("two-sided", "greater", "less")


def _check_alternative(alternative: str) -> None:
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative={alternative!r}; allowed values: {', '.join(ALTERNATIVES)}")


def sign_flip_p(d, alternative: str = "two-sided") -> float:
    """Exact sign-flip (permutation) p of the mean of paired differences ``d``: the share of all 2^n
    sign patterns whose mean is at least as extreme as the observed one (H0: d symmetric about 0).
    n <= 20 (2^20 patterns); NaN for an empty ``d``."""
    _check_alternative(alternative)
    d = np.asarray(d, dtype=float)
    n = len(d)
    if n == 0:
        return float("nan")
    if n > 20:
        raise ValueError(f"sign_flip_p enumerates 2^n patterns: n={n} > 20")
    signs = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1) * 2 - 1
    means = (signs * np.abs(d)).mean(axis=1)
    obs, tol = d.mean(), 1e-12 * max(1.0, float(np.abs(d).max()))
    if alternative == "greater":
        return float(np.mean(means >= obs - tol))
    if alternative == "less":
        return float(np.mean(means <= obs + tol))
    return float(np.mean(np.abs(means) >= abs(obs) - tol))


def paired_t_p(d, alternative: str = "two-sided") -> float:
    """p of the paired t test (one-sample t of the differences ``d`` against 0); NaN for n < 2."""
    _check_alternative(alternative)
    d = np.asarray(d, dtype=float)
    if len(d) < 2:
        return float("nan")
    return float(stats.ttest_1samp(d, 0.0, alternative=alternative).pvalue)


def holm(p) -> np.ndarray:
    """Holm's step-down adjusted p for a family of tests (NaNs are not in the family and stay NaN):
    the k-th smallest p times (m - k + 1), made non-decreasing, capped at 1."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m, running = len(ok), 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def t_interval(d, confidence: float = 0.95) -> tuple[float, float]:
    """mean(d) ± t_{(1+confidence)/2, n-1} std(d, ddof=1) / sqrt(n); (NaN, NaN) for n < 2."""
    d = np.asarray(d, dtype=float)
    n = len(d)
    if n < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf((1 + confidence) / 2, n - 1) * d.std(ddof=1) / np.sqrt(n)
    return float(d.mean() - half), float(d.mean() + half)


def paired_differences(table: pd.DataFrame, metric: str = "knn_top1", reference: str = "random",
                       confidence: float = 0.95) -> pd.DataFrame:
    """Per mask: the paired difference ``mask - reference`` of ``metric`` over the seeds both have.

    Runs of one seed share init, data order and augmentation, so the per-seed differences d_s are
    what varies with the mask alone. With n = number of common seeds: ``diff`` = mean(d),
    ``std`` = std(d, ddof=1) and the ``confidence`` interval diff ± t_{(1+confidence)/2, n-1} std / sqrt(n)
    (Student t, n - 1 degrees of freedom). One common seed: ``diff`` only, interval NaN.
    ``p_t``: two-sided paired t p; ``p_signflip``: exact two-sided sign-flip p (:func:`sign_flip_p`);
    ``p_holm``: ``p_t`` Holm-adjusted over the family of masks compared with this reference (every
    pretrained mask of the table; the untrained control, when it is not the reference, is a family of
    its own). ``resolved``: ``p_holm`` < 1 - ``confidence`` (the interval itself is unadjusted). Rows
    follow :func:`mask_order`; the reference itself and masks without a common seed are left out.
    Values are in the table's units (fractions).
    """
    if metric not in table:
        raise ValueError(f"metric={metric!r} is not a column of the table; columns: {', '.join(table.columns)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence} must be in the open interval (0, 1)")
    columns = ["mask", "reference", "metric", "n", "seeds", "diff", "std", "ci_low", "ci_high", "p_t", "p_signflip",
               "p_holm", "family", "resolved", "confidence"]
    if reference not in set(table["mask"]):
        return pd.DataFrame(columns=columns).set_index("mask")
    ref = _per_seed(table, reference, metric)
    rows = []
    for mask in mask_order(table["mask"]):
        if mask == reference:
            continue
        x = _per_seed(table, mask, metric)
        seeds = sorted(set(x.index) & set(ref.index))
        if not seeds:
            continue
        d = (x.loc[seeds] - ref.loc[seeds]).to_numpy()  # aligned by seed, never by row position
        n = len(d)
        std = d.std(ddof=1) if n > 1 else float("nan")
        lo, hi = t_interval(d, confidence)
        rows.append({"mask": mask, "reference": reference, "metric": metric, "n": n, "seeds": seeds,
                     "diff": d.mean(), "std": std, "ci_low": lo, "ci_high": hi, "p_t": paired_t_p(d),
                     "p_signflip": sign_flip_p(d), "confidence": confidence})
    out = pd.DataFrame(rows, columns=columns).set_index("mask")
    control = out.index == CONTROL
    for members in (~control, control):
        out.loc[members, "p_holm"] = holm(out.loc[members, "p_t"].to_numpy(dtype=float))
        out.loc[members, "family"] = int(out.loc[members, "p_t"].notna().sum())
    out["resolved"] = (out["p_holm"] < 1 - confidence).astype(bool)
    return out


def format_paired(diffs: pd.DataFrame, scale: float = 100.0, digits: int = 2) -> pd.Series:
    """'+0.40 [-0.30, +1.10] (n=3, Holm p 0.21)' per mask (points by default; the interval is
    unadjusted, the p Holm-adjusted over the family); one seed: '+0.40 (n=1, no CI)'."""
    def one(r) -> str:
        if r["n"] < 2:
            return f"{r['diff'] * scale:+.{digits}f} (n=1, no CI)"
        return (f"{r['diff'] * scale:+.{digits}f} [{r['ci_low'] * scale:+.{digits}f}, "
                f"{r['ci_high'] * scale:+.{digits}f}] (n={r['n']}, Holm p {r['p_holm']:.2g})")
    return pd.Series([one(r) for _, r in diffs.iterrows()], index=diffs.index, dtype=object)


def comparison_table(table: pd.DataFrame, metric: str = "knn_top1", reference: str = "random",
                     control: str = CONTROL, confidence: float = 0.95) -> pd.DataFrame:
    """One row per mask: mean ± std (n) of ``metric`` in %, and the paired difference in points
    with its interval to ``reference`` and to the untrained ``control`` ('—' where there is none)."""
    label = METRIC_LABELS.get(metric, metric)
    summary = summarize_by_mask(table, metrics=(metric,))
    out = pd.DataFrame({f"{label} %": format_mean_std(summary, metric)})
    pct = round(confidence * 100)
    for ref in (reference, control):
        diffs = paired_differences(table, metric, ref, confidence)
        out[f"− {ref} (points) [{pct} % CI]"] = format_paired(diffs).reindex(out.index).fillna("—")
    out.index.name = "mask"
    return out


def _points(x: float, digits: int) -> str:
    return f"{x * 100:+.{digits}f}".replace("-", "−")


def differences_in_words(diffs: pd.DataFrame, digits: int = 1, design: str = "exploratory") -> list[str]:
    """One sentence per row of :func:`paired_differences`: the difference in points, its (unadjusted)
    interval, the paired t p Holm-adjusted over the family, the exact sign-flip p, and whether it is
    resolved after adjustment, labelled with ``design`` ("exploratory" or "confirmatory"). The
    untrained control is left out unless it is the reference (said once, from the masks' side)."""
    if design not in ("exploratory", "confirmatory"):
        raise ValueError(f"design={design!r}; allowed values: exploratory, confirmatory")
    lines = []
    for mask, r in diffs.iterrows():
        if mask == CONTROL:
            continue
        label = METRIC_LABELS.get(r["metric"], r["metric"])
        head = f"{label}: {mask} − {r['reference']} = {_points(r['diff'], digits)} points"
        if r["n"] < 2:
            lines.append(f"{head} from 1 seed: no interval (needs 2 or more seeds of both), not resolved")
            continue
        ci = f"{round(r['confidence'] * 100)} % CI [{_points(r['ci_low'], digits)}, {_points(r['ci_high'], digits)}]"
        tests = (f"paired t p = {r['p_t']:.2g}, Holm-adjusted over {int(r['family'])} "
                 f"{'comparison' if r['family'] == 1 else 'comparisons'} p = {r['p_holm']:.2g}, "
                 f"exact sign-flip p = {r['p_signflip']:.2g}")
        verdict = (f"resolved with {r['n']} seeds ({mask} {'above' if r['diff'] > 0 else 'below'} {r['reference']})"
                   if r["resolved"] else f"not resolved with {r['n']} seeds")
        lines.append(f"{head}, {ci}; {tests}: {verdict} ({design})")
    return lines


# ----------------------------------------------------------------------------- confirmatory tests

def confirmatory_test(table: pd.DataFrame, metric: str = "knn_top1", mask: str = "green", reference: str = "random",
                      planned_seeds=None, alpha: float = 0.05, confidence: float = 0.95) -> dict:
    """The preregistered test (results/cifar10_grid16_confirm/PREREGISTRATION.md): paired differences
    ``mask - reference`` of ``metric`` by seed, one-sided paired t and one-sided exact sign-flip p
    (H1: mean > 0), both < ``alpha`` to confirm, with the two-sided ``confidence`` t interval. Until
    every one of ``planned_seeds`` has both runs the verdict is "incomplete" (no early look decides)."""
    x, ref = _per_seed(table, mask, metric), _per_seed(table, reference, metric)
    done = sorted(set(x.index) & set(ref.index))
    planned = sorted(planned_seeds) if planned_seeds is not None else done
    d = (x.loc[done] - ref.loc[done]).to_numpy()
    lo, hi = t_interval(d, confidence)
    out = {"metric": metric, "mask": mask, "reference": reference, "planned_seeds": planned, "seeds": done,
           "n": len(done), "diff": float(d.mean()) if len(d) else float("nan"), "ci_low": lo, "ci_high": hi,
           "p_t_one_sided": paired_t_p(d, "greater"), "p_signflip_one_sided": sign_flip_p(d, "greater"),
           "alpha": alpha}
    if set(planned) - set(done):
        out["verdict"] = "incomplete"
    else:
        confirmed = out["p_t_one_sided"] < alpha and out["p_signflip_one_sided"] < alpha
        out["verdict"] = "confirmed" if confirmed else "not confirmed"
    return out


def confirmatory_in_words(result: dict, digits: int = 2, endpoint: str = "primary") -> str:
    """One sentence for :func:`confirmatory_test`, labelled confirmatory and with its ``endpoint``
    ("primary": the claim rests on it; "secondary": reported, no claim)."""
    if endpoint not in ("primary", "secondary"):
        raise ValueError(f"endpoint={endpoint!r}; allowed values: primary, secondary")
    label = METRIC_LABELS.get(result["metric"], result["metric"])
    head = f"{label}, {result['mask']} − {result['reference']} (confirmatory, preregistered, {endpoint} endpoint)"
    if result["verdict"] == "incomplete":
        return (f"{head}: {result['n']} of {len(result['planned_seeds'])} planned pairs have run; no verdict "
                "until all have (no interim look decides)")
    return (f"{head}: {_points(result['diff'], digits)} points over {result['n']} pairs, 95 % CI "
            f"[{_points(result['ci_low'], digits)}, {_points(result['ci_high'], digits)}]; one-sided paired t "
            f"p = {result['p_t_one_sided']:.2g}, one-sided exact sign-flip p = {result['p_signflip_one_sided']:.2g} "
            f"(both must be < {result['alpha']:g}): {result['verdict']}")


# ----------------------------------------------------------------------------- dense tasks and power

def by_pretraining_seed(table: pd.DataFrame, metrics, pretrain_seed: str = "pretrain_seed") -> pd.DataFrame:
    """Dense-task rows (mask, pretraining seed, fine-tuning seed) averaged over the fine-tuning seeds
    of each pretraining seed: one row per (mask, ``seed`` = pretraining seed), ready for
    :func:`paired_differences`. The pretraining seed is the replicated unit of a mask's effect;
    fine-tuning seeds of one encoder are not independent replicates of it."""
    missing = [c for c in ("mask", pretrain_seed, *metrics) if c not in table]
    if missing:
        raise ValueError(f"columns {missing} are not in the table; columns: {', '.join(table.columns)}")
    g = table.groupby(["mask", pretrain_seed], sort=False)
    out = g[list(metrics)].mean().reset_index().rename(columns={pretrain_seed: "seed"})
    out["finetune_runs"] = g.size().to_numpy()
    return out


def paired_t_power(effect: float, sd: float, n: int, alpha: float = 0.05, alternative: str = "two-sided") -> float:
    """Power of the paired t test with ``n`` pairs to detect a true mean difference ``effect`` when
    the paired differences have standard deviation ``sd`` (noncentral t)."""
    _check_alternative(alternative)
    if n < 2 or sd <= 0:
        raise ValueError(f"paired_t_power needs n >= 2 and sd > 0, got n={n}, sd={sd}")
    df, nc = n - 1, effect / (sd / np.sqrt(n))
    if alternative == "two-sided":
        tc = stats.t.ppf(1 - alpha / 2, df)
        far_tail = np.nan_to_num(stats.nct.cdf(-tc, df, abs(nc)), nan=0.0)  # underflows to NaN far out
        return float(stats.nct.sf(tc, df, abs(nc)) + far_tail)
    tc = stats.t.ppf(1 - alpha, df)
    return float(stats.nct.sf(tc, df, nc) if alternative == "greater" else stats.nct.cdf(-tc, df, -abs(nc)))


def detectable_effect(sd: float, n: int, power: float = 0.8, alpha: float = 0.05,
                      alternative: str = "two-sided") -> float:
    """The smallest true mean difference the paired t test with ``n`` pairs detects with ``power``."""
    return float(brentq(lambda e: paired_t_power(e, sd, n, alpha, alternative) - power, 1e-9 * sd, 20 * sd))


def pairs_needed(effect: float, sd: float, power: float = 0.8, alpha: float = 0.05,
                 alternative: str = "two-sided", most: int = 10_000) -> int:
    """The fewest seed pairs for which the paired t test detects ``effect`` with ``power``."""
    for n in range(2, most + 1):
        if paired_t_power(effect, sd, n, alpha, alternative) >= power:
            return n
    raise ValueError(f"more than most={most} pairs needed for effect={effect} at sd={sd}")


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


# ----------------------------------------------------------------------------- band sweep (notebook 06)

BAND_COLUMNS = ["sigma1", "sigma2", "band_centre", "seed", "knn_top1", "linprobe_top1", "mean_cluster_size"]


def default_green_band() -> tuple[float, float]:
    """(sigma1, sigma2) of the default green mask (``colormae.masks.noise.DEFAULT_PARAMS``)."""
    return float(DEFAULT_PARAMS["green"]["sigma1"]), float(DEFAULT_PARAMS["green"]["sigma2"])


def _band_rows(table: pd.DataFrame, source: str) -> pd.DataFrame:
    """BAND_COLUMNS (+ ``source``) from a sweep table, or from grid-style rows (mask_params strings)."""
    t = table.copy()
    if "sigma1" not in t or "sigma2" not in t:  # grid-style rows: sigmas in mask_params, empty = defaults
        s1, s2 = default_green_band()
        params = [parse_mask_params(p if isinstance(p, str) else "") for p in t.get("mask_params", [""] * len(t))]
        t["sigma1"] = [p.get("sigma1", s1) for p in params]
        t["sigma2"] = [p.get("sigma2", s2) for p in params]
    if "band_centre" not in t:
        t["band_centre"] = [band_centre(a, b) for a, b in zip(t["sigma1"], t["sigma2"])]
    if "mean_cluster_size" not in t:
        t["mean_cluster_size"] = np.nan
    return t[BAND_COLUMNS].assign(source=source)


def load_band_sweep(sweep_dir: str | Path, grid_dir: str | Path | None = None) -> tuple[pd.DataFrame, bool]:
    """The sweep's rows plus the grid's green runs (the default band, several seeds), one row per
    (band, seed) with BAND_COLUMNS and ``source`` ("sweep" or "grid"); a sweep row wins over a grid
    row of the same band and seed. Returns ``(rows, sweep_found)``: without ``sweep_dir/table.csv``
    the rows are the grid's green runs only (or none) and ``sweep_found`` is False."""
    parts = []
    sweep_path = Path(sweep_dir) / "table.csv"
    if sweep_path.exists():
        parts.append(_band_rows(pd.read_csv(sweep_path), "sweep"))
    if grid_dir is not None:
        grid = load_grid_table(grid_dir, missing_ok=True)
        green = grid[grid["mask"] == "green"]
        if len(green):
            parts.append(_band_rows(green, "grid"))
    if not parts:
        return pd.DataFrame(columns=[*BAND_COLUMNS, "source"]), sweep_path.exists()
    rows = pd.concat(parts, ignore_index=True)
    rows = rows.drop_duplicates(["sigma1", "sigma2", "seed"], keep="first")  # the sweep's own row first
    rows = rows.sort_values(["band_centre", "seed"], ascending=[False, True]).reset_index(drop=True)
    return rows, sweep_path.exists()


def band_sweep_summary(rows: pd.DataFrame, metrics=("knn_top1", "linprobe_top1"), seeds=None) -> pd.DataFrame:
    """Plot data: one row per band (fine to coarse, i.e. falling band centre) with sigma1, sigma2,
    band_centre, n (seeds) and mean / std (ddof=1; NaN for one seed) of each metric; ``seeds``:
    only these seeds' runs (e.g. :func:`band_common_seeds`, for a comparison of bands at equal seeds)."""
    if seeds is not None:
        rows = rows[rows["seed"].isin(list(seeds))]
    g = rows.groupby(["sigma1", "sigma2"])
    out = g["band_centre"].first().to_frame()
    out["n"] = g[metrics[0]].count()
    for m in metrics:
        out[f"{m}_mean"], out[f"{m}_std"] = g[m].mean(), g[m].std(ddof=1)
    return out.reset_index().sort_values("band_centre", ascending=False).reset_index(drop=True)


def band_common_seeds(rows: pd.DataFrame) -> list[int]:
    """The seeds every band of ``rows`` (:func:`load_band_sweep`) was run with (the sweep's: 0)."""
    per_band = [set(g["seed"]) for _, g in rows.groupby(["sigma1", "sigma2"])]
    return sorted(set.intersection(*per_band)) if per_band else []


def band_mask_statistics(bands: list[tuple[float, float]], grid: int = 16, mask_ratio: float = 0.75, batch: int = 256,
                         seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Mask statistics of each green band ``(sigma1, sigma2)`` in ``bands``: ``batch`` online masks
    on a ``grid`` x ``grid`` grid (as pretraining draws them), :func:`colormae.masks.stats.mask_statistics`.
    Returns the table (sigma1, sigma2, band_centre, cluster_size = mean visible-cluster size,
    clustering_vs_random, num_clusters; fine to coarse) and one example [L] mask per band."""
    import torch

    rows, examples = [], {}
    for s1, s2 in bands:
        masker = make_masker("green", grid, mask_ratio, source="online", sigma1=s1, sigma2=s2)
        mask, _, _ = masker(batch, generator=torch.Generator().manual_seed(seed))
        st = mask_statistics(mask, grid)
        rows.append({"sigma1": s1, "sigma2": s2, "band_centre": band_centre(s1, s2), "cluster_size": st["cluster_size"],
                     "clustering_vs_random": st["clustering_vs_random"], "num_clusters": st["num_clusters"]})
        examples[(s1, s2)] = mask[0]
    table = pd.DataFrame(rows).sort_values("band_centre", ascending=False).reset_index(drop=True)
    return table, examples


def pooled_paired_std(table: pd.DataFrame, metric: str, reference: str = "random") -> tuple[float, int]:
    """Std of the difference between two masks' runs of one seed, pooled over the grid's pretrained
    masks' per-seed differences to ``reference`` (:func:`paired_differences`):
    sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1)) and its degrees of freedom sum (n_i - 1); (NaN, 0) if
    no mask has 2+ seeds in common with ``reference``. Seed effects shared by all masks (init, data
    order) cancel in these differences, unlike in the seed-to-seed spread of single runs."""
    d = paired_differences(table, metric, reference)
    d = d[(d.index != CONTROL) & (d["n"] > 1)]
    dof = int((d["n"] - 1).sum())
    if dof == 0:
        return float("nan"), 0
    return float(np.sqrt(((d["n"] - 1) * d["std"].astype(float) ** 2).sum() / dof)), dof


def band_sweep_in_words(rows: pd.DataFrame, grid_table: pd.DataFrame, metric: str = "knn_top1",
                        confidence: float = 0.95, digits: int = 1) -> list[str]:
    """Which band scores best on ``metric`` at the seeds every band has, and each band's difference
    to the default green band's EXPECTED value at the band's seeds, with an interval.

    ``rows``: one row per (band, seed) (:func:`load_band_sweep`). Runs of one seed share init, data
    order and augmentation, and the seed effect is large next to the bands' differences, so a band is
    compared through ``random`` at its own seeds: diff = mean_B(band - random) - mean_G(green - random),
    B the band's seeds, G the default green's seeds in ``grid_table``. Comparing with green's run at
    the band's seed alone would lean on one green run (green's seed 0 is its best against random).
    Under "run = seed effect + mask effect + independent noise of std sigma", the variance of diff is
    sigma^2 sum(c^2) over the runs' coefficients c (random's run of a seed in both B and G enters
    twice); sigma = s / sqrt(2), s the paired-difference std pooled over the grid's masks vs random
    (:func:`pooled_paired_std`, its dof for the t quantile; assumes the bands share that noise)."""
    label = METRIC_LABELS.get(metric, metric)
    if metric not in rows:
        raise ValueError(f"metric={metric!r} is not a column of the rows; columns: {', '.join(rows.columns)}")
    rows = rows[rows[metric].notna()]
    if rows.empty:
        return [f"{label}: no band has results yet"]
    bands = {key: g.set_index("seed")[metric].astype(float) for key, g in rows.groupby(["sigma1", "sigma2"])}
    centre = dict(zip(zip(rows["sigma1"], rows["sigma2"]), rows["band_centre"]))
    if len(bands) == 1:
        (s1, s2), only = next(iter(bands.items()))
        return [f"{label}: only one band has results (σ1 = {s1:g}, centre {centre[(s1, s2)]:.3f} cycles/patch: "
                f"{only.mean() * 100:.{digits}f} %, n={len(only)}): nothing to compare yet"]
    common = band_common_seeds(rows)
    lines = []
    if common:
        at = {key: v.loc[common].mean() for key, v in bands.items()}
        (b1, b2), best = max(at.items(), key=lambda kv: kv[1])
        lines.append(f"{label} at seed{'s' if len(common) > 1 else ''} {', '.join(map(str, common))} (every band has "
                     f"it): highest at band centre {centre[(b1, b2)]:.3f} cycles/patch (σ1 = {b1:g}, σ2 = {b2:g}): "
                     f"{best * 100:.{digits}f} % (the highest of {len(bands)} bands)")
    else:
        lines.append(f"{label}: no seed is common to every band: no ranking of the bands")
    s1, s2 = default_green_band()
    if (s1, s2) not in bands:
        return lines + [f"{label}: the default green band (σ1 = {s1:g}) has no result: no differences to it"]
    ref = _per_seed(grid_table, "random", metric) if "random" in set(grid_table["mask"]) else pd.Series(dtype=float)
    green = _per_seed(grid_table, "green", metric) if "green" in set(grid_table["mask"]) else pd.Series(dtype=float)
    G = sorted(set(green.index) & set(ref.index))
    if not G:
        return lines + [f"{label}: the grid has no default-green run paired with random: no differences to it"]
    green_effect = float((green.loc[G] - ref.loc[G]).mean())
    sd, dof = pooled_paired_std(grid_table, metric)
    pct = round(confidence * 100)
    for (b1, b2), v in sorted(bands.items(), key=lambda kv: -centre[kv[0]]):
        if (b1, b2) == (s1, s2):
            continue
        B = sorted(set(v.index) & set(ref.index))
        head = f"{label}: σ1 = {b1:g} (centre {centre[(b1, b2)]:.3f}) − default green (σ1 = {s1:g}) expected"
        if not B:
            lines.append(f"{head}: no seed with a random run, not compared")
            continue
        diff = float((v.loc[B] - ref.loc[B]).mean()) - green_effect
        head += (f" = {_points(diff, digits)} points (band at seed{'s' if len(B) > 1 else ''} "
                 f"{', '.join(map(str, B))} vs green's mean effect over {len(G)} seeds, both through random)")
        if dof == 0:
            lines.append(f"{head}: no interval (no grid mask has 2 seeds in common with random yet), not resolved")
            continue
        coef = {("band", s): 1 / len(B) for s in B} | {("green", s): -1 / len(G) for s in G}
        for s in set(B) | set(G):
            coef[("random", s)] = -(s in B) / len(B) + (s in G) / len(G)
        half = stats.t.ppf((1 + confidence) / 2, dof) * sd / np.sqrt(2) * np.sqrt(sum(c * c for c in coef.values()))
        resolved = abs(diff) > half
        lines.append(f"{head}, {pct} % CI [{_points(diff - half, digits)}, {_points(diff + half, digits)}] "
                     f"(noise pooled over the grid's paired differences, {dof} dof): "
                     + (f"resolved ({'above' if diff > 0 else 'below'} the default; exploratory)" if resolved
                        else "not resolved (exploratory)"))
    return lines
