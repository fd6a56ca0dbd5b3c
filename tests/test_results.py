"""Figure and table data (issue #9): Fig. 4's x values are epochs, std is ddof=1, band end points
equal a hand computation; tables' mean ± std per mask likewise."""
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from colormae.analysis import figures, results


def write_run(out, mask, seed, losses, steps_per_epoch=4, log_every=10):
    """A run directory ``out/runs/<mask>_seed<seed>/metrics.jsonl`` with one record per logged step;
    steps and epochs differ by a factor ``log_every * steps_per_epoch`` so mixing them up shows."""
    run = out / "runs" / f"{mask}_seed{seed}"
    run.mkdir(parents=True)
    recs = [{"step": log_every * (i + 1), "epoch": (i + 1) / steps_per_epoch, "loss": loss, "mask": mask}
            for i, loss in enumerate(losses)]
    recs.insert(2, {"step": recs[1]["step"], "epoch": recs[1]["epoch"], "eval_loss": 9.9})  # no "loss": ignored
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return recs


A = [2.0, 1.6, 1.3, 1.1, 1.0, 0.9, 0.85, 0.8]  # green seed 0, epochs 0.25 ... 2.0
B = [2.2, 1.5, 1.2, 1.2, 0.9, 0.7, 0.75, 0.6]  # green seed 1


@pytest.fixture
def two_runs(tmp_path):
    write_run(tmp_path, "green", 0, A)
    write_run(tmp_path, "green", 1, B)
    table = pd.DataFrame({"mask": ["green", "green"], "seed": [0, 1]})
    return tmp_path, table


def sample_std(a, b):
    """Hand computation of the ddof=1 standard deviation of two numbers: |a - b| / sqrt(2)."""
    return abs(a - b) / math.sqrt(2)


def test_band_end_points_by_hand_window_1(two_runs):
    out, table = two_runs
    band = results.loss_bands(out, table, points=5, window=1)["green"]
    xs, mean, std = band  # unpacks as a 3-tuple (notebook 03 / plot_loss_curves)
    assert band.n == 2
    # x values are the records' epochs (0.25 ... 2.0), not their steps (10 ... 80)
    assert xs[0] == pytest.approx(0.25) and xs[-1] == pytest.approx(2.0)
    np.testing.assert_allclose(xs, [0.25, 0.6875, 1.125, 1.5625, 2.0])
    assert mean[0] == pytest.approx((2.0 + 2.2) / 2) and mean[-1] == pytest.approx((0.8 + 0.6) / 2)
    assert std[0] == pytest.approx(sample_std(2.0, 2.2)) and std[-1] == pytest.approx(sample_std(0.8, 0.6))
    assert std[-1] == pytest.approx(0.1414213562, rel=1e-9)  # ddof=0 would give 0.1


def test_band_end_points_by_hand_default_smoothing(two_runs):
    out, table = two_runs
    xs, mean, std = results.loss_bands(out, table)["green"]  # window 10 > 8 records: running mean
    a_end, b_end = sum(A) / len(A), sum(B) / len(B)  # trailing mean over what exists at the end
    assert xs[-1] == pytest.approx(2.0) and len(xs) == 100
    assert mean[-1] == pytest.approx((a_end + b_end) / 2)
    assert std[-1] == pytest.approx(sample_std(a_end, b_end))
    a3 = results.loss_bands(out, table, window=3)["green"]
    a_end3, b_end3 = np.mean(A[-3:]), np.mean(B[-3:])
    assert a3[1][-1] == pytest.approx((a_end3 + b_end3) / 2)
    assert a3[2][-1] == pytest.approx(sample_std(a_end3, b_end3))


def test_band_common_range_is_the_shortest_run(tmp_path):
    write_run(tmp_path, "blue", 0, A)
    write_run(tmp_path, "blue", 1, B[:6])  # stops at epoch 1.5
    bands = results.loss_bands(tmp_path, pd.DataFrame({"mask": ["blue", "blue"], "seed": [0, 1]}), window=1)
    xs, mean, std = bands["blue"]
    assert xs[-1] == pytest.approx(1.5)
    assert mean[-1] == pytest.approx((A[5] + B[5]) / 2) and std[-1] == pytest.approx(sample_std(A[5], B[5]))


def test_single_seed_band_has_no_nan_and_says_so(tmp_path):
    write_run(tmp_path, "red", 3, A)
    band = results.loss_bands(tmp_path, pd.DataFrame({"mask": ["red"], "seed": [3]}), window=1)["red"]
    assert band.n == 1
    assert not np.isnan(band[2]).any() and (band[2] == 0).all()
    np.testing.assert_allclose(band[1][[0, -1]], [A[0], A[-1]])
    fig = figures.plot_loss_curves({}, bands={"red": band})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["red (1 run, no band)"]
    assert not ax.collections  # no shaded band


def test_missing_epoch_field_is_an_error(tmp_path):
    run = tmp_path / "runs" / "green_seed0"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    with pytest.raises(ValueError, match="epoch"):
        results.loss_bands(tmp_path, pd.DataFrame({"mask": ["green"], "seed": [0]}))


def test_fig4_plots_bands_against_epochs(two_runs):
    out, table = two_runs
    bands = results.loss_bands(out, table, points=7, window=1)
    fig = figures.plot_loss_curves({}, bands=bands, title="Fig. 4")
    ax = fig.axes[0]
    line = ax.get_lines()[0]
    np.testing.assert_allclose(line.get_xdata(), bands["green"][0])
    assert max(line.get_xdata()) == pytest.approx(2.0)  # epochs; steps would end at 80
    assert ax.get_xlabel() == "epoch"
    assert ax.get_ylabel() == "reconstruction loss (MSE, masked patches)"
    # the shaded band spans mean ± std (ddof=1) at the last epoch
    verts = ax.collections[0].get_paths()[0].vertices
    at_end = verts[np.isclose(verts[:, 0], 2.0)][:, 1]
    m, s = (0.8 + 0.6) / 2, sample_std(0.8, 0.6)
    assert min(at_end) == pytest.approx(m - s) and max(at_end) == pytest.approx(m + s)
    with pytest.raises(ValueError, match="epoch"):
        figures.plot_loss_curves({}, bands=bands, x="step")


def test_plot_loss_curves_ylabel():
    recs = [{"step": 1, "epoch": 0.5, "loss": 1.0}, {"step": 2, "epoch": 1.0, "loss": 0.5}]
    fig = figures.plot_loss_curves({"fine-tuning": recs}, ylabel="training loss")
    assert fig.axes[0].get_ylabel() == "training loss"
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_xdata(), [0.5, 1.0])


def test_summary_std_is_ddof1_and_one_run_is_labelled():
    table = pd.DataFrame({"mask": ["random", "random", "random", "green", "red"],
                          "seed": [0, 1, 2, 0, 0],
                          "knn_top1": [0.40, 0.42, 0.47, 0.41, 0.39],
                          "linprobe_top1": [0.48, 0.48, 0.48, 0.47, 0.46],
                          "final_loss": [0.36, 0.35, 0.34, 0.41, 0.64]})
    s = results.summarize_by_mask(table)
    assert list(s.index) == ["random", "green", "red"]
    x = [0.40, 0.42, 0.47]
    mean = sum(x) / 3
    hand = math.sqrt(sum((v - mean) ** 2 for v in x) / (3 - 1))  # ddof=1
    assert s.loc["random", "knn_top1_mean"] == pytest.approx(mean)
    assert s.loc["random", "knn_top1_std"] == pytest.approx(hand)
    assert s.loc["random", "knn_top1_n"] == 3
    assert math.isnan(s.loc["green", "knn_top1_std"])  # one run: undefined, not 0
    f = results.format_mean_std(s, "knn_top1")
    assert f["random"] == f"{mean * 100:.2f} ± {hand * 100:.2f} (n=3)" == "43.00 ± 3.61 (n=3)"
    assert f["green"] == "41.00 (n=1)"
    cols = results.mean_std_columns(table, ("knn_top1",), prefix="ours: ")
    assert list(cols.columns) == ["ours: kNN top-1 %"] and cols["ours: kNN top-1 %"].to_dict() == f.to_dict()


def test_a_metric_without_values_is_a_dash_not_nan():
    table = pd.DataFrame({"mask": ["none", "none", "random"], "seed": [0, 1, 0], "knn_top1": [0.3, 0.32, 0.4],
                          "linprobe_top1": [0.4, 0.41, 0.5], "final_loss": [float("nan"), float("nan"), 0.35]})
    summary = results.summarize_by_mask(table)
    loss = results.format_mean_std(summary, "final_loss", scale=1, digits=4)
    assert loss["none"] == "—" and loss["random"] == "0.3500 (n=1)"
    assert results.format_mean_std(summary, "knn_top1")["none"] == "31.00 ± 1.41 (n=2)"


def test_loss_bands_leave_out_the_untrained_control(tmp_path):
    run = tmp_path / "runs" / "random_seed0"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "epoch": i / 2, "loss": 1.0 / i}) + "\n"
                                               for i in range(1, 5)))
    table = pd.DataFrame({"mask": ["none", "random"], "seed": [0, 0], "pretrain_epochs": [0.0, 2.0]})
    bands = results.loss_bands(tmp_path, table, points=3, window=1)  # no runs/none_seed0/metrics.jsonl needed
    assert list(bands) == ["random"]


# ----------------------------------------------------------------------------- paired intervals (issue #11)

T975 = {1: 12.706204736174707, 2: 4.302652729749464}  # Student t quantiles 0.975 (tables), by dof


@pytest.fixture
def grid():
    """Per-seed knn differences to random, by hand: green +1, +2, +3 points (seed 3 has no random
    run: left out); purple -3, -4, -5; blue +1, +3 (2 seeds); red +1 (1 seed). Rows are shuffled so
    pairing by row position instead of by seed gives other numbers."""
    rows = [("random", 0, 0.40), ("random", 1, 0.44), ("random", 2, 0.42),
            ("green", 0, 0.41), ("green", 1, 0.46), ("green", 2, 0.45), ("green", 3, 0.30),
            ("purple", 0, 0.37), ("purple", 1, 0.40), ("purple", 2, 0.37),
            ("blue", 0, 0.41), ("blue", 1, 0.47), ("red", 0, 0.41),
            ("none", 0, 0.30), ("none", 1, 0.35), ("none", 2, 0.31)]
    table = pd.DataFrame(rows, columns=["mask", "seed", "knn_top1"])
    table["linprobe_top1"] = table["knn_top1"] + 0.1
    table["final_loss"] = np.where(table["mask"] == "none", np.nan, 0.3)
    return table.sample(frac=1.0, random_state=3).reset_index(drop=True)


def test_paired_interval_by_hand(grid):
    d = results.paired_differences(grid, "knn_top1", "random")
    assert list(d.index) == ["blue", "green", "purple", "red", "none"]
    g = d.loc["green"]
    # d = 0.01, 0.02, 0.03 -> mean 0.02, sd 0.01 (ddof=1), half width t(0.975, 2) * 0.01 / sqrt(3)
    half = T975[2] * 0.01 / math.sqrt(3)
    assert g["n"] == 3 and g["seeds"] == [0, 1, 2]
    assert g["diff"] == pytest.approx(0.02) and g["std"] == pytest.approx(0.01)
    assert g["ci_low"] == pytest.approx(0.02 - half) and g["ci_high"] == pytest.approx(0.02 + half)
    assert g["ci_low"] == pytest.approx(-0.004841, abs=1e-6)  # z (1.96) would give +0.0087: "resolved"
    assert not g["resolved"]
    p = d.loc["purple"]  # -0.03, -0.04, -0.05
    assert p["ci_high"] == pytest.approx(-0.04 + half) and p["ci_high"] < 0  # the unadjusted interval excludes 0
    # t = -0.04 / (0.01 / sqrt(3)) with 2 dof; Holm over the family blue, green, purple (red: 1 seed, no p):
    # purple's is the smallest p, times 3 -> not resolved after adjustment
    p_t = 2 * stats.t.cdf(-0.04 / (0.01 / math.sqrt(3)), 2)
    assert p["p_t"] == pytest.approx(p_t) and p["family"] == 3
    assert p["p_holm"] == pytest.approx(3 * p_t) and not p["resolved"]
    b = d.loc["blue"]  # +0.01, +0.03: 2 seeds, 1 dof
    assert b["n"] == 2 and b["std"] == pytest.approx(0.02 / math.sqrt(2))
    assert b["ci_high"] == pytest.approx(0.02 + T975[1] * (0.02 / math.sqrt(2)) / math.sqrt(2))
    r = d.loc["red"]
    assert r["n"] == 1 and r["diff"] == pytest.approx(0.01) and math.isnan(r["ci_low"]) and not r["resolved"]


def test_paired_is_not_unpaired(grid):
    """Random varies by 4 points across seeds, purple - random only by 2: unpaired (Welch) on the same
    numbers does not resolve purple, the pairing does; an implementation without the pairing fails."""
    p = results.paired_differences(grid, "knn_top1", "random").loc["purple"]
    x = grid[grid["mask"] == "purple"]["knn_top1"]
    y = grid[grid["mask"] == "random"]["knn_top1"]
    welch = stats_welch_half(x.to_numpy(), y.to_numpy())
    assert welch > 0.04  # unpaired: not resolved
    assert p["ci_high"] - p["diff"] == pytest.approx(T975[2] * 0.01 / math.sqrt(3)) and p["ci_high"] < 0


def stats_welch_half(x, y):
    from scipy import stats
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    dof = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1))
    return stats.t.ppf(0.975, dof) * math.sqrt(vx + vy)


def test_difference_to_the_control_is_paired_too(grid):
    d = results.paired_differences(grid, "linprobe_top1", "none")
    # random - none per seed: 0.10, 0.09, 0.11 -> mean 0.10, sd 0.01
    assert d.loc["random", "diff"] == pytest.approx(0.10) and d.loc["random", "std"] == pytest.approx(0.01)
    assert d.loc["random", "resolved"] and "none" not in d.index


def test_differences_in_words(grid):
    words = results.differences_in_words(results.paired_differences(grid, "knn_top1", "random"))
    assert words[1] == ("kNN top-1: green − random = +2.0 points, 95 % CI [−0.5, +4.5]; paired t p = 0.074, "
                        "Holm-adjusted over 3 comparisons p = 0.15, exact sign-flip p = 0.25: not resolved with "
                        "3 seeds (exploratory)")
    assert words[2] == ("kNN top-1: purple − random = −4.0 points, 95 % CI [−6.5, −1.5]; paired t p = 0.02, "
                        "Holm-adjusted over 3 comparisons p = 0.061, exact sign-flip p = 0.25: not resolved with "
                        "3 seeds (exploratory)")
    confirm = results.differences_in_words(results.paired_differences(grid, "knn_top1", "none"), design="confirmatory")
    assert confirm[0].endswith("resolved with 3 seeds (random above none) (confirmatory)")
    assert words[3].startswith("kNN top-1: red − random = +1.0 points from 1 seed: no interval")


def test_comparison_table_strings(grid):
    t = results.comparison_table(grid, "knn_top1")
    assert t.loc["green", "kNN top-1 %"] == "40.50 ± 7.33 (n=4)"
    assert t.loc["green", "− random (points) [95 % CI]"] == "+2.00 [-0.48, +4.48] (n=3, Holm p 0.15)"
    assert t.loc["random", "− random (points) [95 % CI]"] == "—"
    assert t.loc["red", "− random (points) [95 % CI]"] == "+1.00 (n=1, no CI)"
    assert t.loc["green", "− none (points) [95 % CI]"].startswith("+12.00 [")


def test_duplicate_seed_rows_are_an_error(grid):
    with pytest.raises(ValueError, match="several rows"):
        results.paired_differences(pd.concat([grid, grid.iloc[[0]]]), "knn_top1")
    with pytest.raises(ValueError, match="metric="):
        results.paired_differences(grid, "top1")


def test_empty_table_renders():
    empty = results.load_grid_table("/nonexistent/grid", missing_ok=True)
    assert results.paired_differences(empty, "knn_top1").empty
    assert results.comparison_table(empty).empty


# ----------------------------------------------------------------------------- band sweep


def write_sweep(out, rows):
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=results.BAND_COLUMNS).to_csv(out / "table.csv", index=False)


def test_band_sweep_joins_the_grids_green_runs(tmp_path, grid):
    gdir = tmp_path / "grid"
    gdir.mkdir()
    grid.assign(mask_params=np.nan).to_csv(gdir / "table.csv", index=False)
    rows, found = results.load_band_sweep(tmp_path / "sweep", gdir)
    assert not found and set(rows["source"]) == {"grid"} and len(rows) == 4  # green seeds 0-3
    assert rows["sigma1"].eq(0.7).all() and rows["band_centre"].iloc[0] == pytest.approx(0.2185, abs=1e-4)
    write_sweep(tmp_path / "sweep", [(0.35, 0.7, 0.437, 0, 0.40, 0.50, 1.6), (2.0, 4.0, 0.0765, 0, 0.36, 0.45, 19.0),
                                     (0.7, 1.4, 0.2185, 0, 0.99, 0.99, 3.4)])  # the sweep's own default row wins
    rows, found = results.load_band_sweep(tmp_path / "sweep", gdir)
    assert found and len(rows) == 6
    s = results.band_sweep_summary(rows)
    assert list(s["sigma1"]) == [0.35, 0.7, 2.0]  # fine to coarse
    d = s.set_index("sigma1").loc[0.7]
    assert d["n"] == 4 and d["knn_top1_mean"] == pytest.approx((0.99 + 0.46 + 0.45 + 0.30) / 4)
    assert math.isnan(s.set_index("sigma1").loc[0.35, "knn_top1_std"])


def test_band_sweep_words_paired_interval_by_hand(grid):
    # per (band, seed): the sweep's band at seed 0 only; the default green at seeds 0-2
    rows = pd.DataFrame({"sigma1": [0.35, 0.7, 0.7, 0.7], "sigma2": [0.7, 1.4, 1.4, 1.4],
                         "band_centre": [0.437, 0.21857, 0.21857, 0.21857], "seed": [0, 0, 1, 2],
                         "knn_top1": [0.45, 0.43, 0.50, 0.50]})
    s, dof = results.pooled_paired_std(grid, "knn_top1")
    # paired differences to random, in points: green +1 +2 +3 (seed 3 has no random run), purple -3 -4 -5,
    # blue +1 +3; red has 1 seed and none is the control (both left out): 2 + 2 + 1 dof
    hand = (2 * 1.0 + 2 * 1.0 + 1 * 2.0) / 5 / 100 ** 2
    assert dof == 5 and s == pytest.approx(math.sqrt(hand))
    words = results.band_sweep_in_words(rows, grid, "knn_top1")
    # ranked at the seed every band has (0), not by the default's 3-seed mean (0.477)
    assert words[0].startswith("kNN top-1 at seed 0 (every band has it): highest at band centre 0.437 cycles/patch "
                               "(σ1 = 0.35, σ2 = 0.7): 45.0 %")
    # against green's expected value through random: band - random at seed 0 = 0.45 - 0.40 = +5 points,
    # green's mean effect over seeds 0-2 = +2 -> +3 points (not 0.45 - 0.43, green's own seed-0 run);
    # coefficients: band +1, green -1/3 x 3, random(0) -2/3, random(1), random(2) +1/3: sum c^2 = 2,
    # so the half width is t(0.975, 5) * s / sqrt(2) * sqrt(2)
    half = 2.570581835636314 * s
    assert "expected = +3.0 points (band at seed 0 vs green's mean effect over 3 seeds" in words[1]
    assert f"[{(0.03 - half) * 100:+.1f}, {(0.03 + half) * 100:+.1f}]".replace("-", "−") in words[1]
    assert words[1].endswith("resolved (above the default; exploratory)") and "5 dof" in words[1]
    only = results.band_sweep_in_words(rows[rows["sigma1"] == 0.7], grid, "knn_top1")
    assert only == ["kNN top-1: only one band has results (σ1 = 0.7, centre 0.219 cycles/patch: 47.7 %, n=3): "
                    "nothing to compare yet"]
    assert results.band_common_seeds(rows) == [0]
    at0 = results.band_sweep_summary(rows, metrics=("knn_top1",), seeds=[0])
    assert list(at0["n"]) == [1, 1] and list(at0["knn_top1_mean"]) == [0.45, 0.43]


def test_band_mask_statistics_cluster_size_grows_with_sigma():
    table, examples = results.band_mask_statistics([(0.35, 0.7), (1.0, 2.0)], grid=16, batch=64)
    assert list(table["sigma1"]) == [0.35, 1.0]
    assert table["cluster_size"].iloc[1] > 2 * table["cluster_size"].iloc[0]
    assert examples[(1.0, 2.0)].shape == (256,) and int(examples[(1.0, 2.0)].sum()) == 192  # 75 % masked


def test_band_sweep_reads_grid_style_rows(tmp_path):
    """A sweep table written like the grid's (label + mask_params) gives the same sigmas and centres."""
    (tmp_path / "sweep").mkdir()
    pd.DataFrame({"mask": ["green_s0.35-0.7", "green_s2-4"], "seed": [0, 0], "knn_top1": [0.4, 0.3],
                  "linprobe_top1": [0.5, 0.4], "mask_params": ["sigma1=0.35,sigma2=0.7", "sigma1=2,sigma2=4"]}
                 ).to_csv(tmp_path / "sweep" / "table.csv", index=False)
    rows, found = results.load_band_sweep(tmp_path / "sweep")
    assert found and list(rows["sigma1"]) == [0.35, 2.0] and list(rows["sigma2"]) == [0.7, 4.0]
    # band centre of G(s1) - G(2 s1), by hand: sqrt(ln 4 / (6 pi^2)) / s1 = 0.153004 / s1 cycles/patch
    np.testing.assert_allclose(rows["band_centre"], [0.153004 / 0.35, 0.153004 / 2.0], rtol=1e-5)


# -- referee-proof statistics: exact sign-flip, Holm, pairing by pretraining seed, power ---------------

def test_sign_flip_p_by_hand():
    # sums of ±1 ±2 ±3: 6, 4, 2, 0, 0, -2, -4, -6
    assert results.sign_flip_p([1, 2, 3]) == pytest.approx(2 / 8)
    assert results.sign_flip_p([1, 2, 3], "greater") == pytest.approx(1 / 8)
    assert results.sign_flip_p([1, -2, 3], "greater") == pytest.approx(3 / 8)   # sum 2: 6, 4, 2
    assert results.sign_flip_p([1, -2, 3], "less") == pytest.approx(6 / 8)
    assert results.sign_flip_p([0.45, 1.35, 0.47, 0.55, 0.24]) == pytest.approx(2 / 32)  # all positive, n = 5
    with pytest.raises(ValueError, match="alternative="):
        results.sign_flip_p([1.0], "bigger")


def test_holm_steps_down_and_keeps_nan_out_of_the_family():
    # sorted 0.01, 0.03, 0.04 -> x3, x2, x1 = 0.03, 0.06, 0.04 -> non-decreasing 0.03, 0.06, 0.06
    np.testing.assert_allclose(results.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(results.holm([0.5, 0.9]), [1.0, 1.0])  # capped at 1
    out = results.holm([np.nan, 0.02, 0.04])
    assert np.isnan(out[0]) and out[1:].tolist() == pytest.approx([0.04, 0.04])


def _grid(rows):
    return pd.DataFrame(rows, columns=["mask", "seed", "knn_top1"])


def test_paired_differences_adjust_over_the_masks_but_not_the_control():
    rng = np.random.default_rng(0)
    rows = []
    for s in range(4):
        base = rng.normal(0.3, 0.02)
        rows += [("random", s, base), ("green", s, base + 0.01 + 0.001 * s), ("blue", s, base - 0.002 * s),
                 ("none", s, base - 0.05 - 0.001 * s)]
    d = results.paired_differences(_grid(rows), "knn_top1", "random")
    masks = d.loc[["green", "blue"]]
    np.testing.assert_allclose(masks["p_holm"], results.holm(masks["p_t"].to_numpy()))
    assert masks["family"].tolist() == [2, 2] and d.loc["none", "family"] == 1
    assert d.loc["none", "p_holm"] == d.loc["none", "p_t"]
    assert d["resolved"].tolist() == (d["p_holm"] < 0.05).tolist()
    # sign-flip: 4 seeds all in favour of green -> 2/16 two-sided
    assert d.loc["green", "p_signflip"] == pytest.approx(2 / 16)


def test_dense_rows_pair_by_pretraining_seed():
    """Two pretraining seeds x two fine-tuning seeds: two replicates, not four."""
    rows = [(m, ps, fs, v) for m, vals in {"none": (0.50, 0.52, 0.60, 0.62), "green": (0.60, 0.64, 0.61, 0.63)}.items()
            for (ps, fs), v in zip([(0, 0), (0, 1), (1, 0), (1, 1)], vals)]
    table = pd.DataFrame(rows, columns=["mask", "pretrain_seed", "seed", "miou"])
    by_seed = results.by_pretraining_seed(table, ["miou"])
    assert by_seed["finetune_runs"].tolist() == [2, 2, 2, 2]
    d = results.paired_differences(by_seed, "miou", "none")
    assert d.loc["green", "n"] == 2 and d.loc["green", "seeds"] == [0, 1]
    # per pretraining seed: green 0.62 vs none 0.51 (+0.11), green 0.62 vs none 0.61 (+0.01)
    assert d.loc["green", "diff"] == pytest.approx(0.06) and d.loc["green", "std"] == pytest.approx(np.sqrt(0.005))


def test_paired_t_power_matches_a_simulation():
    rng = np.random.default_rng(1)
    sims = rng.normal(0.5, 0.43, size=(20000, 8))
    t = sims.mean(1) / (sims.std(1, ddof=1) / np.sqrt(8))
    crit = stats.t.ppf(0.975, 7), stats.t.ppf(0.95, 7)
    assert results.paired_t_power(0.5, 0.43, 8) == pytest.approx(np.mean(np.abs(t) > crit[0]), abs=0.01)
    assert results.paired_t_power(0.5, 0.43, 8, alternative="greater") == pytest.approx(np.mean(t > crit[1]), abs=0.01)
    # the preregistration's numbers
    assert round(results.paired_t_power(0.5, 0.43, 8, alternative="greater"), 2) == 0.90
    assert round(results.paired_t_power(0.5, 0.8, 8), 2) == 0.33
    e = results.detectable_effect(0.43, 5)
    assert results.paired_t_power(e, 0.43, 5) == pytest.approx(0.8, abs=1e-6)
    n = results.pairs_needed(0.5, 0.43)
    assert results.paired_t_power(0.5, 0.43, n) >= 0.8 > results.paired_t_power(0.5, 0.43, n - 1)


def test_confirmatory_test_waits_for_every_planned_pair_and_needs_both_tests():
    rows = [(m, s, 0.30 + 0.01 * s + (0.006 if m == "green" else 0.0) + 0.001 * (s % 3) * (m == "green"))
            for s in range(5, 13) for m in ("random", "green")]
    full = _grid(rows)
    partial = full[full["seed"] < 9]
    r = results.confirmatory_test(partial, planned_seeds=range(5, 13))
    assert r["verdict"] == "incomplete" and r["n"] == 4
    assert "4 of 8 planned pairs" in results.confirmatory_in_words(r)
    r = results.confirmatory_test(full, planned_seeds=range(5, 13))
    assert r["verdict"] == "confirmed" and r["p_signflip_one_sided"] == pytest.approx(1 / 256)
    # four pairs can never reach one-sided sign-flip p < 0.05 (1/16): not confirmed, whatever t says
    r4 = results.confirmatory_test(partial, planned_seeds=range(5, 9))
    assert r4["p_t_one_sided"] < 0.05 and r4["verdict"] == "not confirmed"


def test_band_compared_with_greens_expected_value_through_random():
    """band at seed 0 vs green's mean effect over seeds 0-1, both relative to random; hand values."""
    grid = _grid([("random", 0, 0.40), ("green", 0, 0.43), ("random", 1, 0.30), ("green", 1, 0.31),
                  ("blue", 0, 0.41), ("blue", 1, 0.30)])
    rows = pd.DataFrame({"sigma1": [0.7, 0.7, 1.0], "sigma2": [1.4, 1.4, 2.0], "band_centre": [0.22, 0.22, 0.15],
                         "seed": [0, 1, 0], "knn_top1": [0.43, 0.31, 0.41], "linprobe_top1": np.nan})
    line = [ln for ln in results.band_sweep_in_words(rows, grid) if "σ1 = 1 " in ln][0]
    # green - random: +3, +1 -> mean +2 points; band - random at seed 0: +1 -> -1 point
    assert "expected = −1.0 points" in line
    # pooled paired std: green (+3, +1) sd sqrt(2), blue (+1, 0) sd sqrt(0.5) (points) -> sqrt(1.25), 2 dof;
    # coefficients band +1, green -1/2 -1/2, random(0) -1 + 1/2, random(1) +1/2: sum c^2 = 2
    half = stats.t.ppf(0.975, 2) * np.sqrt(1.25) / np.sqrt(2) * np.sqrt(2)
    assert f"[{-1 - half:+.1f}, {-1 + half:+.1f}]".replace("-", "−") in line
