"""colormae.analysis.report: the tables, sentences and figures notebooks 03, 06 and 08 show. Each
function is fed tiny hand-made frames (statistics pinned against a hand computation) or the
committed results under results/ (what it builds must equal what the notebooks wrote there)."""
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from colormae.analysis import paper_tables, report, results
from colormae.masks.stats import random_reference

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
T975_1 = 12.706204736174698  # Student t, 97.5 % quantile, 1 degree of freedom


@pytest.fixture
def grid():
    """kNN per seed, by hand: green - random = +1, +3 points (seeds 0, 1); blue has one seed;
    linear probe = kNN + 10 points; the untrained control has no loss."""
    rows = [("none", 0, 0.30), ("none", 1, 0.32), ("random", 0, 0.40), ("random", 1, 0.42),
            ("green", 0, 0.41), ("green", 1, 0.45), ("blue", 0, 0.39)]
    table = pd.DataFrame(rows, columns=["mask", "seed", "knn_top1"])
    table["linprobe_top1"] = table["knn_top1"] + 0.1
    table["pretrain_epochs"] = np.where(table["mask"] == "none", 0.0, 1.0)
    table["final_loss"] = np.where(table["mask"] == "none", np.nan, 0.512345)
    return table


# ----------------------------------------------------------------------------- display

def test_for_display_drops_empty_columns_and_dashes_missing_cells():
    frame = pd.DataFrame({"a": [1.5, 2.0], "b": [np.nan, 3.0], "empty": [np.nan, np.nan]}, index=["green", "none"])
    shown = report.for_display(frame)
    assert list(shown.columns) == ["a", "b"] and list(shown.index) == ["green", "none (untrained)"]
    assert list(shown["b"]) == ["—", 3.0] and shown["a"].dtype == float  # complete columns keep their dtype
    assert report.for_display(frame, na="-").loc["green", "b"] == "-"


# ----------------------------------------------------------------------------- grid (notebook 03)

def test_runs_summary_and_table(grid):
    assert report.runs_summary(grid) == "7 runs finished; seeds per mask: none 2, random 2, green 2, blue 1"
    assert report.runs_summary(grid.iloc[:0]) == "0 runs finished; seeds per mask: none yet"
    runs = report.runs_table(grid)
    assert runs.index.names == ["mask", "seed"] and runs.loc[("green", 1), "final_loss"] == 0.5123
    assert list(runs.columns) == ["pretrain_epochs", "final_loss", "knn_top1", "linprobe_top1"]


def test_comparison_tables_one_per_metric(grid):
    tables = report.comparison_tables(grid, ("knn_top1", "linprobe_top1"))
    assert [t.columns[0] for t in tables] == ["kNN top-1 %", "linear probe top-1 %"]
    # green - random: +1, +3 points -> mean +2.00, sd sqrt(2), half width t(0.975, 1) sqrt(2) / sqrt(2)
    green = tables[0].loc["green", "− random (points) [95 % CI]"]
    # the family vs random is green alone (blue has 1 seed): Holm p = paired t p = 0.3
    # (t = 2 / (sqrt(2) / sqrt(2)), 1 dof)
    assert green == f"+2.00 [{2 - T975_1:+.2f}, {2 + T975_1:+.2f}] (n=2, Holm p 0.3)"


def test_grid_in_words_by_hand(grid):
    lines = report.grid_in_words(grid, ("knn_top1",), references=("random", "none"))
    blank = lines.index("")
    # random: blue 1 seed (no interval), green +2.0 [2 - 12.7, 2 + 12.7]; then a blank and the control
    assert lines[:blank] == [
        "kNN top-1: blue − random = −1.0 points from 1 seed: no interval (needs 2 or more seeds of both), not resolved",
        "kNN top-1: green − random = +2.0 points, 95 % CI "
        + f"[{2 - T975_1:+.1f}, {2 + T975_1:+.1f}]".replace("-", "−") + "; paired t p = 0.3, Holm-adjusted over "
        "1 comparison p = 0.3, exact sign-flip p = 0.5: not resolved with 2 seeds (exploratory)"]
    assert lines[blank + 1].startswith("kNN top-1: random − none = +10.0 points")
    assert lines[-2:] == ["", "one seed so far (no interval, no std): blue"]
    assert report.one_seed_masks(grid) == ["blue"]
    alone = grid[grid["mask"] != "random"]
    assert report.grid_in_words(alone, ("knn_top1",), references=("random",)) == [
        "knn_top1: no mask shares a seed with random yet", "", "one seed so far (no interval, no std): blue"]


def test_table1_beside_paper(grid):
    t = report.table1_beside_paper(grid)
    assert list(t.index) == ["random", "blue", "green", "none (untrained)"]
    assert t.loc["green", "ours: kNN top-1 %"] == "43.00 ± 2.83 (n=2)"  # 41, 45: sd 4 / sqrt(2) = 2.83
    paper800 = "paper: FT top-1 % @ 800 ep"
    assert t.loc["green", paper800] == 83.57 and t.loc["none (untrained)", paper800] == "—"


def test_mask_rankings(grid):
    assert report.mask_rankings(grid, ("knn_top1",)) == [
        "      knn_top1: green > random > blue > none", " paper @800 ep: green > random > blue > purple > red"]


def test_fig4_loss_curves_draw_the_bands():
    band = results.Band(np.array([0.0, 0.5, 1.0]), np.array([2.0, 1.0, 0.5]), np.array([0.1, 0.1, 0.1]), 3)
    assert report.fig4_loss_curves({}) is None
    fig = report.fig4_loss_curves({"green": band}, scale="gpu")
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [2.0, 1.0, 0.5])
    assert ax.get_yscale() == "log" and ax.get_ylabel() == report.FIG4["gpu"]["ylabel"]
    assert report.fig4_loss_curves({"green": band}).axes[0].get_yscale() == "linear"
    with pytest.raises(ValueError, match="scale"):
        report.fig4_loss_curves({"green": band}, scale="tpu")


def test_band_end_points():
    bands = {"green": results.Band(np.array([0.00131, 1.0]), np.array([2.0, 0.38519]), np.array([0.3, 0.00594]), 5),
             "red": results.Band(np.array([0.00125, 1.0]), np.array([2.0, 0.55]), np.zeros(2), 1)}
    t = report.band_end_points(bands)
    assert list(t.index) == ["green", "red"] and list(t["n"]) == [5, 1]
    assert t.loc["green"].tolist() == [5, 0.0013, 1.0, 0.3852, 0.0059]  # rounded to 4 decimals, last epoch
    assert report.band_end_points({}).empty


def test_committed_grid_numbers_stay():
    """The numbers the README quotes from notebook 03."""
    table = results.load_grid_table(RESULTS / "cifar10_grid16")
    knn = report.comparison_tables(table, ("knn_top1",))[0]
    assert knn.loc["green", "− random (points) [95 % CI]"] == "+0.61 [+0.08, +1.14] (n=5, Holm p 0.13)"
    # the exploratory grid's green - random: paired t p 0.033, Holm over the 5 masks vs random 0.13, exact
    # sign-flip 0.0625 (all 5 seeds favour green, 2 of 32 patterns): not resolved after adjustment
    assert ("kNN top-1: green − random = +0.6 points, 95 % CI [+0.1, +1.1]; paired t p = 0.033, Holm-adjusted over "
            "5 comparisons p = 0.13, exact sign-flip p = 0.062: not resolved with 5 seeds (exploratory)"
            in report.grid_in_words(table))
    ends = report.band_end_points(results.loss_bands(RESULTS / "cifar10_grid16", table))
    assert ends.loc["green", "mean loss"] == 0.3852 and ends.loc["red", "std"] == 0.0012


# ----------------------------------------------------------------------------- band sweep (notebook 06)

@pytest.fixture
def sweep_rows():
    """Three bands at seed 0; the default green (0.7, 1.4) also at seeds 1 and 2."""
    return pd.DataFrame({"sigma1": [0.35, 0.7, 0.7, 0.7, 2.0], "sigma2": [0.7, 1.4, 1.4, 1.4, 4.0],
                         "band_centre": [0.437, 0.2186, 0.2186, 0.2186, 0.0765], "seed": [0, 0, 1, 2, 0],
                         "knn_top1": [0.36, 0.37, 0.35, 0.36, 0.34], "linprobe_top1": [0.44, 0.45, 0.44, 0.46, 0.42]})


def test_band_sweep_status_and_table(sweep_rows):
    summary = results.band_sweep_summary(sweep_rows)
    assert report.band_sweep_status(summary, True, "sweep/table.csv") == \
        "sweep/table.csv: 3 bands; runs (seeds) per band: σ1 = 0.35: 1, σ1 = 0.7: 3, σ1 = 2: 1"
    assert report.band_sweep_status(summary.iloc[:0], False, "x").startswith("THE SWEEP'S RESULTS ARE ABSENT: x")
    assert report.band_sweep_status(summary.iloc[:0], False, "x").endswith("have finished)")
    t = report.band_sweep_table(summary)
    assert list(t.index) == [0.35, 0.7, 2.0]
    assert t.loc[0.7, "period"] == round(1 / 0.2186, 1) and t.loc[0.35, "band_centre"] == 0.437
    assert t.loc[0.35, "knn_top1 %"] == "36.00"  # one seed: no ± part
    assert t.loc[0.7, "knn_top1 %"] == "36.00 ± 1.00"  # 37, 35, 36: sd 1 (ddof=1)


def test_sweep_bands_and_random_cluster_size(sweep_rows):
    summary = results.band_sweep_summary(sweep_rows)
    assert report.sweep_bands(summary, (0.35, 1.0)) == [(0.35, 0.7), (0.7, 1.4), (1.0, 2.0), (2.0, 4.0)]
    assert report.random_cluster_size(16, 0.75) == random_reference(16, 64)["cluster_size"]
    assert report.random_cluster_size(16, 0.75) == pytest.approx(1.842, abs=5e-4)  # notebook 06 prints 1.842


def test_band_sweep_plot_data_by_hand(sweep_rows, grid):
    data = report.band_sweep_plot_data(sweep_rows, grid)
    assert data.common == [0] and data.seed_label == "seed 0" and data.has_results
    assert list(data.at_common["knn_top1_mean"]) == [0.36, 0.37, 0.34]  # every band at seed 0, fine to coarse
    assert data.default["n"] == 3 and data.default["knn_top1_mean"] == pytest.approx(0.36)
    assert data.default["knn_top1_std"] == pytest.approx(0.01)
    assert data.random == {"knn_top1": pytest.approx(0.40), "linprobe_top1": pytest.approx(0.50)}  # seed 0 only
    one_seed = report.band_sweep_plot_data(sweep_rows[sweep_rows["seed"] == 0], grid.iloc[:0])
    assert one_seed.default is None and one_seed.random == {}


def test_band_sweep_figure_draws_the_plot_data(sweep_rows, grid):
    bands = [(0.35, 0.7), (0.7, 1.4), (2.0, 4.0)]
    mask_table = pd.DataFrame({"sigma1": [0.35, 0.7, 2.0], "sigma2": [0.7, 1.4, 4.0],
                               "band_centre": [0.437, 0.2186, 0.0765], "cluster_size": [1.6, 3.4, 19.2],
                               "clustering_vs_random": [0.86, 1.8, 10.4]})
    examples = {b: np.zeros(16) for b in bands}
    fig = report.band_sweep_figure(report.band_sweep_plot_data(sweep_rows, grid), mask_table, examples, 1.84, grid=4,
                                   stat_masks=8, sweep_found=True)
    ax_knn, ax_lp, ax_cl = fig.axes[:3]
    assert len(fig.axes) == 3 + len(bands)  # one example mask per band
    np.testing.assert_allclose(ax_knn.lines[0].get_ydata(), [36.0, 37.0, 34.0])
    assert ax_knn.lines[-1].get_ydata()[0] == pytest.approx(40.0)  # random at seed 0, dashed
    np.testing.assert_allclose(ax_cl.lines[0].get_ydata(), [1.6, 3.4, 19.2])
    assert ax_cl.lines[1].get_ydata()[0] == 1.84 and ax_knn.get_xlim() == (0.55, 0.065)


def test_band_sweep_words_and_mask_sentence(sweep_rows, grid):
    mask_table = pd.DataFrame({"sigma1": [0.35, 2.0], "cluster_size": [1.576, 19.184],
                               "clustering_vs_random": [0.8553, 10.414]})
    assert report.mask_growth_sentence(mask_table) == ("masks: the mean visible-cluster size grows from 1.58 patches "
                                                      "(σ1 = 0.35, 0.86x random's) to 19.2 (σ1 = 2, 10.4x random's)")
    lines = report.band_sweep_words(sweep_rows, grid, mask_table)
    knn = results.band_sweep_in_words(sweep_rows, grid, "knn_top1")
    assert lines[:len(knn) + 1] == [*knn, ""] and lines[-2:] == ["", report.mask_growth_sentence(mask_table)]


# ----------------------------------------------------------------------------- Table 4 (notebook 08)

def write_cost(out, device, static_rows, timing_rows=None):
    env = {"device_name": "test-cpu", "torch": "2.x"}
    (out / f"static_{device}.json").write_text(json.dumps({"rows": static_rows, "environment": env}))
    if timing_rows is not None:
        (out / f"timing_{device}.json").write_text(json.dumps({"rows": timing_rows, "environment": env}))


def static_row(mask, source, memory_vs_random, peak=None):
    return {"preset": "p", "mask": mask, "source": source, "params_m": 0.5, "gflops_fwd_per_img": 0.08,
            "gmacs_fwd_per_img": 0.04, "memory_accounted_mib": 194.0,
            "mask_state_mib": 0.0 if source == "online" else 4.0,
            "memory_vs_random": memory_vs_random, "cuda_peak_mib": peak, "batch": 64}


def test_table4_joins_timing_and_its_noise_floor(tmp_path):
    write_cost(tmp_path, "cpu", [static_row("random", "online", 0.0), static_row("green", "bank", 0.0206)],
               [{"preset": "p", "mask": "random", "source": "online", "step_ms": 100.0, "time_vs_random": 1.0},
                {"preset": "p", "mask": "green", "source": "bank", "step_ms": 98.0, "time_vs_random": 0.98},
                {"preset": "p", "mask": "random", "source": "again", "step_ms": 112.345, "time_vs_random": 1.12345}])
    write_cost(tmp_path, "cuda", [static_row("random", "online", 0.0, peak=209.0137)])
    t4, notes = report.table4_ours(tmp_path)
    assert notes == ["cpu: timing noise floor (random again / random): {'p': 1.123}", "ours, cpu: test-cpu, torch 2.x",
                     "cuda: no timing yet (python benchmarks/cost.py --part timing --device cuda)",
                     "ours, cuda: test-cpu, torch 2.x"]
    cpu = t4[t4["device"] == "cpu"]
    assert len(cpu) == 2 and "again" not in set(cpu.index.get_level_values("source"))  # the repeat is the floor only
    assert list(cpu["noise_floor"]) == [1.12345, 1.12345] and cpu.loc[("p", "green", "bank"), "step_ms"] == 98.0
    shown = report.table4_display(t4)
    assert shown.index.names == ["device", "preset", "mask", "source"]
    assert shown.loc[("cpu", "p", "green", "bank"), "memory_vs_random"] == "0.0206"
    assert shown.loc[("cpu", "p", "random", "online"), "cuda_peak_mib"] == "—"
    assert shown.loc[("cuda", "p", "random", "online"), "cuda_peak_mib"] == "209"  # 4 significant digits
    assert shown.loc[("cuda", "p", "random", "online"), "step_ms"] == "—"
    cpu_shown, cuda_shown = report.table4_by_device(t4)  # notebook 08: one table per device, its own columns
    assert set(cpu_shown.index.get_level_values("device")) == {"cpu"} and "cuda_peak_mib" not in cpu_shown
    assert "step_ms" not in cuda_shown and cuda_shown.loc[("cuda", "p", "random", "online"), "cuda_peak_mib"] == "209"
    fig = report.table4_figure(t4, device="cpu")  # memory bars in %, time bars from 1, the floor shaded
    top, bottom = fig.axes[0], fig.axes[1]
    assert [b.get_height() for b in top.patches] == pytest.approx([0.0, 2.06])
    # a zero-height bar still says its value; the bank's bar says MiB and %
    assert [t.get_text() for t in top.texts] == ["+0", "+4 MiB\n+2.06 %"]
    bars = [b for b in bottom.patches if b.get_width() < 1]
    assert [b.get_y() + b.get_height() for b in bars] == pytest.approx([1.0, 0.98])
    assert [t.get_text() for t in bottom.texts] == ["1.000", "0.980"]
    assert bottom.get_legend() is None and "noise floor 1.123" in bottom.get_title()  # no legend over the bars
    assert "batch 64" in top.get_title()
    assert "cuda" in report.table4_figure(t4).axes[0].get_title()  # CUDA records by default, when there are any
    assert report.table4_ours(tmp_path / "none")[0].empty


def test_committed_table4_is_what_notebook_08_wrote():
    t4, notes = report.table4_ours(RESULTS / "cost")
    assert t4.to_csv() == (RESULTS / "tables" / "table4_ours.csv").read_text()
    assert notes[0] == "cpu: timing noise floor (random again / random): {'mae_vit_nano_patch2_32': 1.153, " \
                       "'mae_vit_base_patch16': 1.011}"


GPU_CHECK = """device cuda, torch 2.x, threads 4

mae_vit_base_patch16 (ViT-B/16, 224 px), bf16 autocast  (grid 14x14, batch 128)
mask    source     step ms     img/s  vs random  peak MiB
random  online        50.0    2560.0      1.000      7908
green   online        51.0    2509.8      1.020      7908
green   bank          52.5    2438.1      1.050      7912
random  again         50.1    2554.9      1.002      7908
"""


def test_device_run_timing_reads_the_gpu_check_table(tmp_path):
    (tmp_path / "gpu_check").mkdir()
    (tmp_path / "gpu_check" / "3_pretrain_vitb_cuda.txt").write_text(GPU_CHECK)
    run, meta = report.device_run_timing(tmp_path)
    assert meta["preset"] == "mae_vit_base_patch16" and meta["batch"] == 128 and meta["precision"] == "bf16"
    assert list(run["source"]) == ["online", "online", "bank", "again"]
    assert run.loc[2, "time_vs_random"] == 1.05 and run.loc[2, "peak_mib"] == 7912
    (tmp_path / "gpu_check" / "3_pretrain_vitb_cuda.txt").write_text("nothing here\n")
    with pytest.raises(ValueError, match="header"):
        report.device_run_timing(tmp_path)


def test_attention_flops_by_hand():
    # ViT-B/16 at 75 %: encoder 12 blocks x 768 on 49 + 1 tokens, decoder 8 x 512 on 196 + 1; 4 s^2 D each
    assert report.attention_gflops_per_img("mae_vit_base_patch16") == pytest.approx(
        4 * (12 * 50 ** 2 * 768 + 8 * 197 ** 2 * 512) / 1e9)


def test_cost_sentences_from_hand_made_records(tmp_path):
    """Every number of the cost sentences comes from the records: a made-up set gives made-up numbers."""
    def rows(preset, batch, gflops, base_mib):
        return [{"preset": preset, "mask": m, "source": s, "batch": batch, "params_m": 1.5,
                 "gflops_fwd_per_img": gflops,
                 "gmacs_fwd_per_img": gflops / 2, "memory_accounted_mib": base_mib + (4.0 if s == "bank" else 0.0),
                 "mask_state_mib": 4.0 if s == "bank" else 0.0,
                 "memory_vs_random": 4.0 / base_mib if s == "bank" else 0.0, "cuda_peak_mib": None}
                for m, s in (("random", "online"), ("green", "online"), ("green", "bank"))]

    def timing(preset, batch, ratios):
        kinds = (("random", "online"), ("green", "online"), ("green", "bank"), ("random", "again"))
        return [{"preset": preset, "mask": m, "source": s, "batch": batch, "step_ms": 40.0 * r, "time_vs_random": r}
                for (m, s), r in zip(kinds, ratios)]
    vit_b, nano = "mae_vit_base_patch16", "mae_vit_nano_patch2_32"
    attn = report.attention_gflops_per_img(vit_b)
    write_cost(tmp_path, "cpu", rows(nano, 64, 0.08, 200.0) + rows(vit_b, 4, 10.0, 1000.0),
               timing(nano, 64, (1.0, 0.9, 1.2, 1.15)) + timing(vit_b, 4, (1.0, 0.95, 1.05, 1.01)))
    write_cost(tmp_path, "cuda", rows(nano, 64, 0.08 + report.attention_gflops_per_img(nano), 200.0)
               + rows(vit_b, 4, 10.0 + attn, 1000.0), timing(vit_b, 4, (1.0, 1.1, 1.2, 1.03)))
    (tmp_path / "run" / "gpu_check").mkdir(parents=True)
    (tmp_path / "run" / "gpu_check" / "3_pretrain_vitb_cuda.txt").write_text(GPU_CHECK)
    facts = report.cost_facts(tmp_path, tmp_path / "run")
    assert facts["params_added_m"] == 0 and facts["online_memory_added_mib"] == 0 and facts["bank_mib"] == 4.0
    assert facts["h200"]["online"] == (1.02, 1.02) and facts["h200"]["all"] == (1.02, 1.05)
    said = report.cost_sentences(facts)
    assert said["summary"] == ("They add no parameters; online color masks add no memory and a noise bank 4 MiB "
                               "(+0.40 % of ViT-B/16's training memory at batch 4), and on an H200 a ViT-B/16 "
                               "pretraining step (batch 128, bf16) takes 1.020–1.050× random's time "
                               "(noise floor 1.002).")
    assert "1.020× that with online color masks and 1.050× with a bank" in said["h200"]
    assert "0.90–1.20× random's (nano preset, batch 64; random timed twice: 1.150)" in said["cpu"]
    assert "(online 1.10, bank 1.20) spread around a noise floor of 1.030" in said["table4_cuda"]
    assert f"10.00 GFLOPs per image on the CPU and {10 + attn:.2f} on CUDA" in said["flops"]
    assert "is exactly the attention matmuls" in said["flops"]
    assert "+2.8 % is the bank's memory increase (27.44 → 28.21 GB), not step time" in said["paper"]


def test_paper_table4_labels_its_lost_column():
    t4 = paper_tables.paper_table4()
    assert list(t4.columns)[-1] == paper_tables.TABLE4_LOST_COLUMN and "lost" in paper_tables.TABLE4_LOST_COLUMN
    assert t4.loc["random", paper_tables.TABLE4_LOST_COLUMN] == 5.21


# ----------------------------------------------------------------------------- Tables 1-3 (notebook 08)

def test_dense_summary_by_hand(tmp_path):
    pd.DataFrame({"mask": ["green", "green", "random"], "miou": [0.5, 0.7, 0.6], "iou_person": [0.1, 0.2, 0.3]}
                 ).to_csv(tmp_path / "segmentation.csv", index=False)
    s = report.dense_summary(tmp_path / "segmentation.csv", ["miou", "ap_box"])
    assert list(s.columns) == ["miou %"]  # metrics the file lacks are left out
    # 50 %, 70 %: mean 60, sd 20 / sqrt(2) = 14.14 (ddof=1); one run: sd 0
    assert s.loc["green", "miou %"] == "60.00 ± 14.14 (n=2)" and s.loc["random", "miou %"] == "60.00 ± 0.00 (n=1)"
    assert report.dense_summary(tmp_path / "detection.csv", ["ap_box"]) is None
    # with pretraining seeds: fine-tuning seeds are averaged first, n counts pretraining seeds
    pd.DataFrame({"mask": ["green"] * 4, "pretrain_seed": [0, 0, 1, 1], "seed": [0, 1, 0, 1],
                  "miou": [0.5, 0.7, 0.7, 0.9]}).to_csv(tmp_path / "segmentation.csv", index=False)
    s = report.dense_summary(tmp_path / "segmentation.csv", ["miou"])
    assert s.loc["green", "miou %"] == "70.00 ± 14.14 (n=2)"  # seed means 60, 80 (not sd of 4 runs: 16.33)


def test_dense_table_pairs_by_pretraining_seed(tmp_path):
    """Pretraining seed 0 has two fine-tuning seeds, 1 and 2 one each: three replicates, seed 0's runs
    averaged first; the control is compared in its own Holm family."""
    rows = [("random", 0, 0, 0.60), ("random", 0, 1, 0.64), ("random", 1, 0, 0.61), ("random", 2, 0, 0.65),
            ("green", 0, 0, 0.63), ("green", 0, 1, 0.65), ("green", 1, 0, 0.60), ("green", 2, 0, 0.68),
            ("none", 0, 0, 0.50), ("none", 0, 1, 0.50), ("none", 1, 0, 0.52), ("none", 2, 0, 0.55)]
    pd.DataFrame(rows, columns=["mask", "pretrain_seed", "seed", "miou"]).to_csv(tmp_path / "s.csv", index=False)
    t = report.dense_table(tmp_path / "s.csv", ["miou", "ap_box"])
    assert list(t.columns) == ["miou %"]
    assert list(t.index) == ["random", "green", report.CONTROL_LABEL, "green − random", "random − none", "green − none"]
    # random per pretraining seed 62, 61, 65: mean 62.67, sd 2.08 (n = 3, not 4 runs)
    assert t.loc["random", "miou %"] == "62.67 ± 2.08 (n=3)"
    # green - random per pretraining seed: +2, -1, +3 points -> mean +1.33, sd 2.08, t_{0.975,2} = 4.303
    # -> half-width 4.303 * 2.08 / sqrt(3) = 5.17; t = 1.109 on 2 df, two-sided p = 1 - t / sqrt(2 + t^2)
    # = 0.383 (one comparison with random: Holm = raw)
    assert t.loc["green − random", "miou %"] == "+1.33 [-3.84, +6.50] (n=3, Holm p 0.38)"
    # pretrained - none: random +12, +9, +10 and green +14, +8, +13; Holm over the two
    by_seed = results.by_pretraining_seed(pd.read_csv(tmp_path / "s.csv"), ["miou"])
    d = results.paired_differences(by_seed, "miou", "none")
    lo, hi = sorted(d["p_t"])  # Holm over two: 2 x the smaller p, then max(that, the larger p)
    assert d["family"].tolist() == [2, 2] and sorted(d["p_holm"]) == pytest.approx([2 * lo, max(2 * lo, hi)])
    assert t.loc["random − none", "miou %"].startswith("+10.33 [")
    assert t.loc["green − none", "miou %"].startswith("+11.67 [")
    assert report.dense_table(tmp_path / "absent.csv", ["miou"]) is None


def test_table1_ours_from_hand_made_results(tmp_path, grid):
    (tmp_path / "grid").mkdir()
    grid.to_csv(tmp_path / "grid" / "table.csv", index=False)
    det = pd.DataFrame({"mask": ["green"], "ap_box": [0.05], "ap_mask": [0.01]})
    det.to_csv(tmp_path / "detection.csv", index=False)
    t = report.table1_ours(tmp_path / "grid", tmp_path)  # no segmentation.csv: those columns left out
    assert list(t.columns) == ["ours: CIFAR-10 kNN top-1 %", "ours: CIFAR-10 linear probe top-1 %",
                               "ours: Penn-Fudan det ap_box %", "ours: Penn-Fudan det ap_mask %"]
    assert t.loc["green", "ours: Penn-Fudan det ap_box %"] == "5.00 ± 0.00 (n=1)"
    assert t["ours: Penn-Fudan det ap_box %"].isna().sum() == 3
    assert list(report.table3_ours(t).index) == ["MAE (random)", "ColorMAE-G (green)"]  # no block-wise run here
    assert report.table1_ours_gpu(tmp_path / "gpu").empty


def test_committed_tables_1_and_3_are_what_notebook_08_wrote():
    t1 = report.table1_ours(RESULTS / "cifar10_grid16", RESULTS / "dense_pennfudan")
    assert t1.to_csv() == (RESULTS / "tables" / "table1_ours.csv").read_text()
    assert report.table3_ours(t1).to_csv() == (RESULTS / "tables" / "table3_ours.csv").read_text()
    gpu = report.table1_ours_gpu(RESULTS / "cifar10_grid16_gpu")
    assert gpu.to_csv() == (RESULTS / "tables" / "table1_ours_gpu.csv").read_text()


def test_table2_commands_are_written(tmp_path):
    out = tmp_path / "tables"
    out.mkdir()
    lines = report.write_table2_commands(out)
    for part in ("a", "b"):
        assert (out / f"table2{part}_commands.csv").read_text() == \
            (RESULTS / "tables" / f"table2{part}_commands.csv").read_text()
    assert lines[0] == "ours, Table 2 (a): not run; commands in tables/table2a_commands.csv, e.g."
    assert lines[1].startswith("  torchrun ") and lines[2] == "" and len(lines) == 5


def test_paper_table1_tasks_holds_every_task():
    t = paper_tables.paper_table1_tasks()
    assert t.shape == (12, 5) and list(t.columns) == paper_tables.MASK_ORDER
    assert t.loc[("detection_ap_box", 800), "green"] == 49.50 and t.loc[("segmentation_miou", 100), "red"] == 35.31
    assert math.isclose(t.loc[("classification_top1", 1600), "random"], 83.43)


def test_power_table_from_the_committed_grids():
    """Smallest detectable effects of each design (two-sided paired t, 80 % power) from the observed
    paired spreads: what these scales can and cannot test."""
    t = report.power_table(RESULTS)
    cpu = t.loc["CPU grid16, kNN"]
    assert cpu["pairs"] == 5 and cpu["paired sd (points)"] == 0.43
    assert cpu["detectable at 80% power (points)"] == 0.72 and cpu["pairs for 0.5 points"] == 8
    seg = t.loc["Penn-Fudan, mIoU"]
    runs = pd.read_csv(RESULTS / "dense_pennfudan" / "segmentation.csv").query("mask == 'green'")
    assert len(runs) == 7 and seg["pairs"] == 5  # pretraining seeds, not (pretraining, fine-tuning) pairs
    gains = report.paper_gain_by_epochs()
    assert gains.loc[100, "classification_top1"] == 0.13 and gains.loc[100, "detection_ap_box"] == 0.0
