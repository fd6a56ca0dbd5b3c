"""Figure and table data (issue #9): Fig. 4's x values are epochs, std is ddof=1, band end points
equal a hand computation; tables' mean ± std per mask likewise."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from colormae import figures, results


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
