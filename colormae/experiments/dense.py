"""The dense transfer experiments: the CIFAR-10 grid's encoders (and the untrained control) fine-tuned
on Penn-Fudan, for semantic segmentation (UperNet) and for detection (ViTDet Mask R-CNN).

    colormae experiments pennfudan-segment      # -> results/dense_pennfudan/segmentation.csv
    colormae experiments pennfudan-detect       # -> results/dense_pennfudan/detection.csv

One run directory per (mask, pretraining seed, fine-tuning seed); finished runs are read back,
interrupted ones resumed. The design: the grid's 5 pretraining seeds (the replicated unit), one
fine-tuning seed each; a table also keeps every finished run of its encoders with other fine-tuning
seeds (``finished_seeds``), averaged within their pretraining seed by the analysis
(``colormae.analysis.report.dense_table``).
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from ..engines import detect, segment
from ..engines.launch import pretrained_encoder
from ..files import project_path, read_json, repo_relative, save_torch, write_csv
from ..models.mae import CONTROL, export_encoder, untrained_encoder
from ..run.artifacts import grid_model
from ..run.rundir import ENCODER, RunDir, check_same_experiment, recorded_precision

log = logging.getLogger(__name__)


# -- segmentation ------------------------------------------------------------------------------------
SEGMENTATION_COLUMNS = ["mask", "pretrain_seed", "seed", "miou", "iou_person", "iou_background", "wall_s"]
PRETRAIN_SEEDS = (0, 1, 2, 3, 4)  # the cifar10-grid16 seeds
FINETUNE_SEEDS = (0,)


def is_finished(run_dir: Path) -> bool:
    return (run_dir / "summary.json").is_file() and bool(read_json(run_dir / "summary.json").get("finished"))


def finished_seeds(runs: Path, prefix: str, seeds) -> list[int]:
    """``seeds`` and the fine-tuning seeds of the finished runs under ``runs`` named ``<prefix><seed>``:
    run again with fewer fine-tuning seeds (one per pretraining seed), an experiment reads its earlier
    runs back (each run directory checks its config) instead of dropping them from the table."""
    done = {int(d.name[len(prefix):]) for d in runs.glob(f"{prefix}*")
            if d.name[len(prefix):].isdigit() and is_finished(d)}
    return sorted(set(seeds) | done)


def recorded_summary(cfg, run_dir: Path) -> dict | None:
    """The summary of the finished run in ``run_dir`` when it is ``cfg``'s experiment (checked as a
    resume would be: another setting is a ValueError naming it), read from its record: a finished run
    whose weights are not committed (git-ignored) is read back, never recomputed and rewritten. None
    when there is no finished run of ``cfg``'s epoch count there (the engine then runs or resumes it)."""
    rd = RunDir(run_dir)
    summary = rd.read_summary() if rd.file("summary.json").is_file() else None
    if not summary or not summary.get("finished"):
        return None
    if summary.get("config", {}).get("epochs") != getattr(cfg, "epochs", None):
        return None  # epochs grew: the run goes on
    check_same_experiment(rd.read_config(), cfg, rd.path, recorded_amp=recorded_precision(rd))
    log.info("done, reusing %s", repo_relative(rd.file("summary.json")))
    return summary


def grid_encoder(grid: Path, mask: str, pretrain_seed: int, needed: bool) -> Path:
    """The run directory of ``mask`` / ``pretrain_seed`` in a CIFAR-10 grid. Its weights (git-ignored)
    must be there when ``needed`` (a fine-tuning run still to train); finished fine-tuning runs are
    read back from their records without them (a fresh clone)."""
    run_dir = grid / "runs" / f"{mask}_seed{pretrain_seed}"
    if needed and not (run_dir / ENCODER).is_file():
        raise FileNotFoundError(
            f"no pretrained encoder {run_dir / ENCODER}: run the grid first, or rebuild the weights of its "
            f"evaluated runs (git-ignored): colormae experiments cifar10-grid16 --masks {mask} "
            f"--seeds {pretrain_seed} --rebuild-weights")
    return run_dir


def segmentation_encoder(grid_dir: str | Path, mask: str, pretrain_seed: int, out: str | Path,
                         needed: bool = True) -> Path:
    """The encoder of ``mask`` / ``pretrain_seed`` in a CIFAR-10 grid: its run directory
    (``grid_encoder``), or for the control the untrained export of the grid's preset, written once to
    ``out/encoders/``."""
    grid = project_path(grid_dir)
    if mask == CONTROL:
        path = project_path(out) / "encoders" / f"{CONTROL}_seed{pretrain_seed}.pth"
        if not path.exists():
            own = grid / "runs" / f"{CONTROL}_seed{pretrain_seed}" / "config.json"
            pre = read_json(own) if own.exists() else read_json(grid / "grid.json")["pretrain"]
            save_torch(untrained_encoder(pre["preset"], pretrain_seed, norm_pix_loss=True), path)
        return path
    return grid_encoder(grid, mask, pretrain_seed, needed)


def run_segmentation_experiment(grid_dir: str = "results/cifar10_grid16", masks=("random", "green"),
                             pretrain_seeds=PRETRAIN_SEEDS, seeds=FINETUNE_SEEDS, out: str = "results/dense_pennfudan",
                             **overrides) -> Path:
    """Each encoder of the grid (``masks`` x ``pretrain_seeds``, plus the untrained control) fine-tuned
    with the ``cpu`` recipe for every seed in ``seeds`` (and ``finished_seeds``); one run directory each
    under ``out/runs/`` (finished ones are read back, interrupted ones resumed); writes and returns
    ``out/segmentation.csv``."""
    masks, runs = [CONTROL] + [m for m in masks if m != CONTROL], project_path(out) / "runs"
    plan = {(m, ps): finished_seeds(runs, f"{m}_pseed{ps}_seed", seeds) for m in masks for ps in pretrain_seeds}
    # every encoder first: a missing one stops the experiment before anything trains
    encoders = {(m, ps): segmentation_encoder(grid_dir, m, ps, out, needed=not all(
        is_finished(runs / f"{m}_pseed{ps}_seed{s}") for s in plan[m, ps])) for m, ps in plan}
    rows = []
    for (mask, ps), encoder in encoders.items():
        for seed in plan[mask, ps]:
            run_dir = runs / f"{mask}_pseed{ps}_seed{seed}"
            cfg = segment.resolve_defaults(segment.SegmentConfig(**{
                "recipe": "cpu", **overrides, "encoder": repo_relative(encoder), "seed": seed,
                "output_dir": repo_relative(run_dir), "resume": "auto"}))
            s = recorded_summary(cfg, run_dir) or segment.run(cfg)
            if not s["finished"]:
                raise RuntimeError(f"{run_dir} stopped at step {s['steps']}: run the experiment again to resume")
            rows.append({"mask": mask, "pretrain_seed": ps, "seed": seed, "miou": s["miou"],
                         "iou_person": s["iou"]["person"], "iou_background": s["iou"]["background"],
                         "wall_s": round(s["wall_time_s"], 1)})
    path = write_csv(rows, SEGMENTATION_COLUMNS, project_path(out) / "segmentation.csv")
    log.info("wrote %s (%d runs)", path, len(rows))
    return path


def grid_seed0_encoder(grid_dir: str | Path, mask: str, out: str | Path) -> Path | None:
    """The grid's seed-0 encoder of ``mask`` (committed compact weights, else its run directory; see
    ``colormae.run.artifacts.grid_model``) exported once to ``out/encoders/<mask>.pth``; None if absent."""
    path = project_path(out) / "encoders" / f"{mask}.pth"
    if not path.exists():
        try:
            model, source = grid_model(grid_dir, mask)
        except FileNotFoundError as e:
            log.warning("%s", e)
            return None
        save_torch({**export_encoder(model), "source": source}, path)
    return path


def notebook_encoders(encoder: str | None, grid_dir: str | Path, masks, out: str | Path, fallback: str,
                      default: str = "results/pretrain/embedded_green", update_records: bool = False
                      ) -> dict[str, str]:
    """Notebook 04's encoders by label: ``encoder`` alone when given; else the grid's seed-0
    encoders of ``masks`` that exist (``grid_seed0_encoder``); else notebook 01's run ``fallback``
    (pretrained first when it is ``default`` and holds no weights; ``launch.pretrained_encoder``)."""
    if encoder is not None:
        return {"encoder": str(project_path(encoder))}
    found = {m: str(p) for m in masks if (p := grid_seed0_encoder(grid_dir, m, out)) is not None}
    return found or {"notebook 01": pretrained_encoder(fallback, default=default, update_records=update_records)}


def segmentation_runs(summaries: dict[str, dict]) -> pd.DataFrame:
    """One row per segmentation run (label -> summary): mIoU and per-class IoU in points, iterations,
    image counts, wall time."""
    rows = {label: {"mIoU %": 100 * s["miou"], **{f"IoU {k} %": 100 * v for k, v in s["iou"].items()},
                    "iterations": s["steps"], "train images": s["num_train"], "test images": s["num_test"],
                    "wall s": s["wall_time_s"]} for label, s in summaries.items()}
    return pd.DataFrame(rows).T.round(2).astype({"iterations": int, "train images": int, "test images": int})


# -- detection ---------------------------------------------------------------------------------------
DETECTION_COLUMNS = ["mask", "pretrain_seed", "seed", "ap_box", "ap50_box", "ap_mask", "ap50_mask", "wall_s"]


# Penn-Fudan on 2 CPU cores: the grid's 32-px patch-2 encoders read 256-px images through a patch
# embedding resampled to 16 px (a 16 x 16 grid, the pretraining grid, so the position embedding is
# unchanged; pyramid strides 4..64 as ViTDet's), narrow heads, 2 images per step. Measured with
# OMP_NUM_THREADS=1 beside other jobs: 1.3-1.8 s per step, ~0.8 s per test image, so 3 epochs (180 steps)
# and evaluation take ~5.3 min per run there (~2.7 min alone on the 2 cores).
# lr 4e-4 (4x ViTDet's per-image rate): on random_seed0, box AP 0.057 / mask AP 0.012 after 180 steps,
# against 0.038 / 0.004 with lr 1e-4.
DETECTION_CPU_DEFAULTS = dict(data="pennfudan", img_size=256, patch_size=16, fpn_channels=64, roi_batch=64,
                              test_proposals=300,
                    batch_size=2, epochs=3, blr=5.12e-2, warmup_steps=20, checkpoint_minutes=10.0)


def detection_control_encoder(preset: str, seed: int, out: Path) -> Path:
    """The untrained control's encoder (the MAE init a pretraining run with ``seed`` starts from), saved."""
    path = out / "encoders" / f"none_seed{seed}_{preset}.pth"
    if not path.exists():
        save_torch(untrained_encoder(preset, seed, norm_pix_loss=True), path)
    return path


def run_detection_experiment(grid_dir: str = "results/cifar10_grid16", masks: tuple[str, ...] = ("random", "green"),
                             pretrain_seeds: tuple[int, ...] = PRETRAIN_SEEDS, seeds: tuple[int, ...] = FINETUNE_SEEDS,
                             out: str = "results/dense_pennfudan", **overrides) -> Path:
    """Detection fine-tuning of the grid's encoders (``<grid_dir>/runs/<mask>_seed<s>/``) and of the
    untrained control ("none") on Penn-Fudan, ``seeds`` each (and ``finished_seeds``); resumable
    (finished runs are read back). Writes and returns ``<out>/detection.csv``; encoders not pretrained
    yet are an error."""
    grid, out_dir = project_path(grid_dir), project_path(out)
    rows, preset = [], None
    runs = out_dir / "runs"
    for label in (*masks, CONTROL):
        for ps in pretrain_seeds:
            todo = finished_seeds(runs, f"{label}_p{ps}_s", seeds)
            if label == CONTROL:
                preset = preset or read_json(next((grid / "runs").glob("*_seed*/config.json")))["preset"]
                encoder = detection_control_encoder(preset, ps, out_dir)
            else:
                encoder = grid_encoder(grid, label, ps, needed=not all(is_finished(runs / f"{label}_p{ps}_s{s}")
                                                                      for s in todo))
                preset = preset or read_json(encoder / "config.json")["preset"]
            for seed in todo:
                cfg = detect.DetectConfig(**{**DETECTION_CPU_DEFAULTS, **overrides, "encoder": str(encoder),
                                             "seed": seed, "resume": "auto",
                                             "output_dir": str(runs / f"{label}_p{ps}_s{seed}")})
                summary = recorded_summary(cfg, runs / f"{label}_p{ps}_s{seed}") or detect.run(cfg)
                rows.append({"mask": label, "pretrain_seed": ps, "seed": seed,
                             **{k: summary.get(k) for k in DETECTION_COLUMNS[3:7]},
                             "wall_s": summary["wall_time_s"]})  # training and evaluation
    path = out_dir / "detection.csv"
    write_csv(rows, DETECTION_COLUMNS, path)
    log.info("detection table: %s", path)
    return path


DETECTION_METRICS = DETECTION_COLUMNS[3:7]


def detection_runs(summaries: dict[str, dict]) -> pd.DataFrame:
    """One row per detection run (label -> summary): box and mask AP, steps, image counts, wall time."""
    keys = (*DETECTION_METRICS, "steps", "num_train", "num_test", "wall_time_s")
    return pd.DataFrame({label: {k: s.get(k) for k in keys} for label, s in summaries.items()}).T.round(4)
