"""The grid command: runs, table.csv, resumability; result summaries."""
import csv
import math

import pandas as pd
import pytest

from colormae.analysis import paper_tables, results
from colormae.experiments import grids as experiments
from colormae.files import ROOT, repo_relative


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("grid")
    args = ["cifar10-minirepro", "--out", str(out), "--masks", "random", "green", "--seeds", "0", "1",
            "--epochs", "1", "--preset", "mae_vit_micro_patch4_32", "--dataset", "embedded",
            "--dataset-length", "64", "--batch-size", "32", "--linprobe-epochs", "3", "--eval-length", "128",
            "--device", "cpu"]
    experiments.main(args)
    return out, args


def test_grid_writes_one_row_per_run(tiny_grid):
    out, _ = tiny_grid
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert [(r["mask"], r["seed"]) for r in rows] == [("random", "0"), ("random", "1"), ("green", "0"), ("green", "1")]
    for r in rows:
        assert set(experiments.TABLE_COLUMNS) <= set(r)
        for key in ("knn_top1", "linprobe_top1"):
            assert 0.0 <= float(r[key]) <= 1.0
        assert float(r["pretrain_epochs"]) == 1.0 and math.isfinite(float(r["final_loss"]))
    for mask in ("random", "green"):
        for seed in (0, 1):
            run = out / "runs" / f"{mask}_seed{seed}"
            assert (run / "summary.json").exists() and (run / "eval.json").exists()


def test_grid_is_resumable(tiny_grid):
    out, args = tiny_grid
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/eval.json")}
    experiments.main(args)  # everything finished: nothing is retrained or re-evaluated
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    (out / "runs" / "green_seed1" / "eval.json").unlink()  # evaluation lost: re-evaluated, not retrained
    summary = (out / "runs" / "green_seed1" / "summary.json").stat().st_mtime_ns
    experiments.main(args)
    assert (out / "runs" / "green_seed1" / "eval.json").exists()
    assert (out / "runs" / "green_seed1" / "summary.json").stat().st_mtime_ns == summary


def test_rebuild_weights_pretrains_again_only_what_lost_its_weights(tiny_grid, caplog):
    """A fresh clone has eval.json but no weights: --rebuild-weights pretrains those runs again (the
    same experiment: same final loss) and keeps their evaluations; plain runs leave them alone."""
    import json
    import logging
    out, args = tiny_grid
    run = out / "runs" / "random_seed0"
    recorded = json.loads((run / "eval.json").read_text())
    for name in ("encoder.pth", "checkpoint-last.pth"):
        (run / name).unlink()
    experiments.main(args)
    assert not (run / "encoder.pth").exists()  # without the flag: evaluations reused, nothing retrained
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/summary.json") if p.parent != run}
    records = {name: (run / name).read_bytes() for name in ("summary.json", "metrics.jsonl", "config.json")}
    grid_json = (out / "grid.json").read_bytes()
    with pytest.raises(SystemExit):  # a rebuild never adds a run
        experiments.main([*args, "--masks", "random", "--seeds", "0", "2", "--rebuild-weights"])
    assert "random_seed2 has no record" in caplog.text
    with caplog.at_level(logging.INFO, logger="colormae.experiments.grids"):
        # a subset of the grid's masks and seeds: the record of the grid's design must not change with it
        experiments.main([*args, "--masks", "random", "--seeds", "0", "--rebuild-weights"])
    assert (out / "grid.json").read_bytes() == grid_json
    assert (run / "encoder.pth").is_file() and json.loads((run / "eval.json").read_text()) == recorded
    # the rebuild ran beside the record (run/rebuild/): the records Fig. 4 reads are byte for byte the same
    assert {name: (run / name).read_bytes() for name in records} == records
    assert (run / "rebuild" / "summary.json").is_file()
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # runs with weights untouched
    assert "rebuilt" in caplog.text and "not reproduced exactly" not in caplog.text


def test_summaries_and_loss_bands(tiny_grid):
    out, _ = tiny_grid
    table = results.load_grid_table(out)
    summary = results.summarize_by_mask(table)
    assert list(summary.index) == ["random", "green"]
    assert summary.loc["green", "knn_top1_n"] == 2
    assert summary.loc["green", "knn_top1_mean"] == pytest.approx(table[table["mask"] == "green"]["knn_top1"].mean())
    text = results.format_mean_std(summary, "knn_top1")
    assert "±" in text["green"] and "(n=2)" in text["green"]
    bands = results.loss_bands(out, table, points=5)
    xs, mean, std = bands["green"]
    assert len(xs) == len(mean) == len(std) == 5 and (std >= 0).all()


def test_untrained_control_row(tiny_grid):
    out, args = tiny_grid
    i = args.index("--masks")
    experiments.main(args[:i + 1] + ["none"] + args[i + 3:])
    rows = {(r["mask"], r["seed"]): r for r in csv.DictReader((out / "table.csv").open())}
    control = rows[("none", "0")]
    assert control["final_loss"] == "" and float(control["pretrain_epochs"]) == 0
    assert 0 < float(control["knn_top1"]) < 1
    # the control is the init pretraining starts from: same preset and seed
    import torch

    from colormae.models.mae import MaskedAutoencoder, export_encoder, get_config
    torch.manual_seed(0)
    init = export_encoder(MaskedAutoencoder(get_config("mae_vit_micro_patch4_32")))
    from colormae.engines.frozen import evaluate_frozen
    ev = evaluate_frozen(init, "embedded", train_length=128, test_length=128, linprobe_epochs=3, seed=0,
                         knn_k=20, amp="bf16", batch_size=512)
    assert ev["knn_top1"] == pytest.approx(float(control["knn_top1"]))


def test_bad_grid_arguments_fail_before_training(tmp_path, caplog):
    with pytest.raises(SystemExit) as exit_info:  # like the other CLIs: one clear line, status 2
        experiments.main(["cifar10-minirepro", "--out", str(tmp_path), "--masks", "pink"])
    assert exit_info.value.code == 2 and "kind 'pink'" in caplog.text
    assert not (tmp_path / "runs").exists()


def test_a_finished_grid_is_left_untouched_and_other_settings_are_refused(tiny_grid, caplog):
    out, args = tiny_grid
    files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*")
             if p.is_file() and p.suffix in (".json", ".jsonl", ".csv") and p.name != "table.csv"}
    experiments.main(args)
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files} == files
    caplog.clear()
    with pytest.raises(SystemExit):  # the same folder with 2 epochs: refused, nothing relabelled
        i = args.index("--epochs")
        experiments.main(args[:i + 1] + ["2"] + args[i + 2:])
    assert "pretrain.epochs: 1 -> 2" in caplog.text and "choose another --out" in caplog.text
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files} == files


def test_paper_table_is_labelled_and_complete():
    t = paper_tables.paper_table1()
    assert t.index.name.startswith("paper") and list(t.columns) == paper_tables.MASK_ORDER
    assert t.loc[800, "green"] == 83.57 and t.loc[100, "red"] == 78.83
    assert isinstance(paper_tables.paper_table1("segmentation_miou"), pd.DataFrame)
    with pytest.raises(ValueError, match="task="):
        paper_tables.paper_table1("depth")


def test_stored_paths_are_relative_to_the_repository(tmp_path):
    assert repo_relative(ROOT / "results" / "x" / "summary.json") == "results/x/summary.json"
    assert repo_relative(tmp_path) == str(tmp_path)  # outside the repository: kept as it is
    committed = [p for p in (ROOT / "results").rglob("*.json") if str(ROOT) in p.read_text()]
    assert not committed, f"absolute paths in committed results: {committed[:3]}"


CIFAR = ROOT.parent / "shared" / "data" / "cifar10"


@pytest.mark.skipif(not (CIFAR / "train.tar").exists(), reason=f"CIFAR-10 not found at {CIFAR}")
def test_cifar10_micro_end_to_end_accuracy_is_pinned(tmp_path):
    """Pretrain (micro preset, 512 CIFAR-10 images, 2 epochs) + kNN / linear probe on 512 + 512 images:
    a regression anywhere in data, masking, pretraining or evaluation moves these numbers."""
    experiments.main(["cifar10-minirepro", "--out", str(tmp_path), "--masks", "green", "--seeds", "0",
                      "--epochs", "2", "--preset", "mae_vit_micro_patch4_32", "--dataset-length", "512",
                      "--batch-size", "64", "--linprobe-epochs", "10", "--eval-length", "512", "--device", "cpu"])
    row = next(csv.DictReader((tmp_path / "table.csv").open()))
    got = {k: float(row[k]) for k in ("final_loss", "knn_top1", "linprobe_top1")}
    # pinned from a run of this test; accuracies are counts of 512 images (1 image = 0.002)
    assert got["final_loss"] == pytest.approx(PINNED_CIFAR["final_loss"], rel=0.002), got
    assert got["knn_top1"] == pytest.approx(PINNED_CIFAR["knn_top1"], abs=0.006), got
    assert got["linprobe_top1"] == pytest.approx(PINNED_CIFAR["linprobe_top1"], abs=0.006), got


PINNED_CIFAR = {"final_loss": 1.57556, "knn_top1": 137 / 512, "linprobe_top1": 122 / 512}


def test_processes_starting_one_grid_at_once_all_land_in_grid_json(tmp_path, monkeypatch):
    """Three masks started together (one GPU, three processes): each read-merge-write of grid.json
    waits for the previous one, so no mask is lost. A slow read widens the race window."""
    import threading
    import time
    from dataclasses import replace

    real_read = experiments.read_json

    def slow_read(path):
        rec = real_read(path)
        time.sleep(0.2)
        return rec

    monkeypatch.setattr(experiments, "read_json", slow_read)
    base = experiments.GRIDS["cifar10-grid16"]
    experiments.record_grid(replace(base, out=str(tmp_path), masks=("none",), more_seeds={}))
    threads = [threading.Thread(target=experiments.record_grid,
                                args=(replace(base, out=str(tmp_path), masks=(m,), more_seeds={}),))
               for m in ("random", "green", "blue")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(real_read(tmp_path / "grid.json")["masks"]) == ["blue", "green", "none", "random"]


def test_grid16_spec_is_one_recipe_with_the_seeds_the_issue_asks_for():
    spec = experiments.GRIDS["cifar10-grid16"]
    runs = spec.runs()
    seeds = {m: sorted(s for label, s in runs if label == m) for m in spec.masks}
    assert seeds["random"] == seeds["green"] == seeds["none"] == [0, 1, 2, 3, 4]
    assert all(seeds[m] == [0, 1] for m in ("blue", "purple", "red", "block"))
    assert len(runs) == len(set(runs)) == 23
    # every pretraining config differs from random's by the mask alone
    base = vars(spec.pretrain_config("random", 0))
    for label in spec.masks:
        cfg = vars(spec.pretrain_config(label, 0))
        assert {k for k in base if base[k] != cfg[k]} <= {"mask"}
        experiments.validate(spec.pretrain_config(label, 0))
    from colormae.models.mae import get_config
    assert get_config(spec.pretrain["preset"]).grid == 16 and spec.pretrain["norm_pix_loss"] is True


def test_band_centre_is_the_peak_of_the_green_transfer_function():
    import numpy as np
    f = np.linspace(1e-4, 0.5, 200001)
    for s1 in experiments.BAND_SIGMA1 + (0.7,):
        s2 = 2 * s1
        band = np.exp(-2 * np.pi ** 2 * s1 ** 2 * f ** 2) - np.exp(-2 * np.pi ** 2 * s2 ** 2 * f ** 2)
        assert experiments.band_centre(s1, s2) == pytest.approx(f[band.argmax()], abs=1e-4)
    centres = [experiments.band_centre(s, 2 * s) for s in sorted(experiments.BAND_SIGMA1)]
    assert centres == sorted(centres, reverse=True) and centres[0] > 0.4 and centres[-1] < 0.08


def test_mask_params_reach_the_masker_and_bad_ones_fail_early():
    from colormae.engines.pretrain import PretrainConfig, build_maskers, validate
    from colormae.masks.schedule import parse_mask_params
    from colormae.masks.stats import mask_statistics
    assert parse_mask_params("sigma1=0.5, sigma2=1") == {"sigma1": 0.5, "sigma2": 1.0} and parse_mask_params("") == {}
    sizes = {}
    for params in ("sigma1=0.35,sigma2=0.7", "sigma1=2,sigma2=4"):
        cfg = PretrainConfig(mask="green", mask_params=params)
        validate(cfg)
        (_, masker), = build_maskers(cfg, 16, "cpu")
        mask, _, _ = masker(64, generator=__import__("torch").Generator().manual_seed(0))
        sizes[params] = mask_statistics(mask, 16)["cluster_size"]
    assert sizes["sigma1=2,sigma2=4"] > 3 * sizes["sigma1=0.35,sigma2=0.7"]  # coarse band: big clusters
    for bad, match in (("sigma1=2,sigma2=1", "sigma1 < sigma2"), ("sigma=1", "unknown parameter"),
                       ("sigma1", "name=number"), ("sigma1=x", "name=number")):
        with pytest.raises(ValueError, match=match):
            validate(PretrainConfig(mask="green", mask_params=bad))
    with pytest.raises(ValueError, match="mask_params"):
        validate(PretrainConfig(mask="random", mask_params="sigma1=0.5,sigma2=1"))


def test_band_sweep_table(tmp_path):
    out = tmp_path / "sweep"
    experiments.main(["cifar10-band-sweep", "--out", str(out), "--masks", "green_s0.5-1", "green_s2-4",
                      "--epochs", "1", "--preset", "mae_vit_micro_patch4_32", "--dataset", "embedded",
                      "--dataset-length", "32", "--batch-size", "32", "--linprobe-epochs", "2", "--eval-length", "64",
                      "--device", "cpu"])
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert list(rows[0]) == experiments.BAND_COLUMNS
    assert [(float(r["sigma1"]), float(r["sigma2"])) for r in rows] == [(0.5, 1.0), (2.0, 4.0)]  # fine to coarse
    assert float(rows[0]["band_centre"]) == pytest.approx(experiments.band_centre(0.5, 1.0), abs=1e-4)
    assert float(rows[0]["mean_cluster_size"]) < float(rows[1]["mean_cluster_size"])
    cfg = __import__("json").loads((out / "runs" / "green_s2-4_seed0" / "config.json").read_text())
    assert cfg["mask"] == "green" and cfg["mask_params"] == "sigma1=2,sigma2=4"


def test_gpu_scale_grid_fine_tunes_every_encoder_including_the_control(tmp_path):
    """--scale gpu on CPU with tiny settings: each run (and the untrained control) is fine-tuned."""
    out = tmp_path / "gpu"
    experiments.main(["cifar10-grid16", "--scale", "gpu", "--out", str(out), "--masks", "none", "green", "--seeds", "0",
                      "--epochs", "1", "--preset", "mae_vit_micro_patch4_32", "--dataset", "embedded",
                      "--dataset-length", "32", "--batch-size", "16", "--linprobe-epochs", "2", "--eval-length", "32",
                      "--finetune-epochs", "1", "--device", "cpu"])
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert [r["mask"] for r in rows] == ["none", "green"]  # --seeds: exactly these, no extra seeds
    for r in rows:
        assert 0.0 <= float(r["finetune_top1"]) <= 1.0
    for label in ("none", "green"):
        assert (out / "runs" / f"{label}_seed0" / "finetune" / "summary.json").exists()
    with pytest.raises(SystemExit):
        experiments.main(["cifar10-minirepro", "--scale", "gpu"])
