"""Experiment grids: one command each, resumable (finished runs are skipped, unfinished ones resume).

    python -m colormae.experiments cifar10-minirepro          # Table 1 (classification) at CPU scale

Every (mask, seed) run pretrains with identical settings except the mask (the seed fixes model init,
data order and augmentation, so runs of one seed differ by their masks only), then is evaluated with
kNN and the cached-feature linear probe on frozen features. ``table.csv`` is rewritten after every run.

A finished run is reused only when its saved config equals the grid's (the run directory refuses a
resume with other settings, naming them); a grid re-run with other settings therefore stops with
that message instead of relabelling old runs. Paths in grid.json and the runs' files are stored
relative to the repository.
"""
from __future__ import annotations

import argparse
import csv
import logging
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from . import pretrain
from .config import differences
from .engine import cli_main
from .evaluate import evaluate_frozen
from .model import MaskedAutoencoder, export_encoder, get_config
from .pretrain import PretrainConfig, validate
from .rundir import (RunDir, atomic_write, check_same_experiment, config_record, read_json, repo_relative,
                     write_json)
from .runtime import Timer, project_path

log = logging.getLogger(__name__)

TABLE_COLUMNS = ["mask", "seed", "pretrain_epochs", "final_loss", "knn_top1", "knn_top5", "linprobe_top1",
                 "linprobe_top5", "preset", "mask_source", "pretrain_wall_s", "images_per_s", "eval_wall_s"]


@dataclass
class GridSpec:
    """A mask x seed grid of pretraining runs with frozen-feature evaluation."""
    masks: tuple[str, ...] = ("random", "blue", "green", "purple", "red")
    seeds: tuple[int, ...] = (0, 1)
    out: str = "results/cifar10_minirepro"  # relative paths: from the repository root
    # pretraining (see PretrainConfig); everything but mask and seed is shared by all runs
    pretrain: dict = field(default_factory=lambda: dict(
        preset="mae_vit_mini_patch4_32", dataset="cifar10", epochs=3, batch_size=128, blr=2e-3,
        warmup_epochs=1.0, mask_ratio=0.75, mask_source="online", amp="bf16", num_workers=1, norm_pix_loss=False,
        pipeline="files"))
    # evaluation (see colormae.finetune.evaluate_frozen)
    evaluate: dict = field(default_factory=lambda: dict(linprobe_epochs=100, knn_k=20, amp="bf16", batch_size=512))


GRIDS = {"cifar10-minirepro": GridSpec()}


# The control row: the same encoder, untrained (the init pretraining starts from, same seed),
# evaluated identically. It shows how much of each accuracy pretraining earned.
CONTROL = "none"


def _reuse_eval(eval_path: Path, spec: GridSpec) -> dict:
    rec = read_json(eval_path)
    changed = differences(rec.get("evaluate_config", spec.evaluate), spec.evaluate, list(spec.evaluate))
    if changed:
        raise ValueError(f"{eval_path} was evaluated with other settings ("
                         + "; ".join(f"{n}: {a!r} -> {b!r}" for n, a, b in changed)
                         + "): choose another --out for a grid with these settings")
    log.info("done, reusing %s", repo_relative(eval_path))
    return rec


def _evaluate(spec: GridSpec, encoder, cfg: PretrainConfig, seed: int, device: str) -> tuple[dict, float]:
    timer = Timer()
    ev = evaluate_frozen(encoder, cfg.dataset, cfg.data_root, device=device if device != "auto" else "cpu",
                         seed=seed, **spec.evaluate)
    return ev, timer.elapsed


def run_control(spec: GridSpec, seed: int, device: str = "auto") -> dict:
    """The untrained encoder of ``seed``, evaluated like every pretrained one."""
    run_dir = project_path(spec.out) / "runs" / f"{CONTROL}_seed{seed}"
    cfg = PretrainConfig(**{**spec.pretrain, "seed": seed, "output_dir": repo_relative(run_dir)})
    if (run_dir / "config.json").exists():
        check_same_experiment(read_json(run_dir / "config.json"), cfg, run_dir)
    if (run_dir / "eval.json").exists():
        return _reuse_eval(run_dir / "eval.json", spec)
    mcfg = get_config(cfg.preset, **({} if cfg.norm_pix_loss is None else {"norm_pix_loss": cfg.norm_pix_loss}))
    torch.manual_seed(seed)  # exactly pretrain.run's model init
    export = export_encoder(MaskedAutoencoder(mcfg))
    write_json(config_record(cfg), run_dir / "config.json")
    ev, eval_s = _evaluate(spec, export, cfg, seed, device)
    row = {"mask": CONTROL, "seed": seed, "pretrain_epochs": 0, "final_loss": None, "knn_top1": ev["knn_top1"],
           "knn_top5": ev["knn_top5"], "linprobe_top1": ev["linprobe_top1"], "linprobe_top5": ev["linprobe_top5"],
           "preset": cfg.preset, "mask_source": None, "pretrain_wall_s": 0.0, "images_per_s": None,
           "eval_wall_s": eval_s}
    write_json({**row, "linprobe_protocol": "linprobe-cached", "evaluate_config": spec.evaluate, "evaluation": ev},
               run_dir / "eval.json")
    return row


def run_one(spec: GridSpec, mask: str, seed: int, device: str = "auto") -> dict:
    """Pretrain (resuming if interrupted; a finished run with the same config is reused) and evaluate
    one run; the evaluation is reused when eval.json was made with the same settings."""
    run_dir = project_path(spec.out) / "runs" / f"{mask}_seed{seed}"
    cfg = PretrainConfig(**{**spec.pretrain, "mask": mask, "seed": seed, "output_dir": repo_relative(run_dir),
                            "resume": "auto", "device": device})
    if mask == CONTROL:
        return run_control(spec, seed, device)
    eval_path = run_dir / "eval.json"
    if eval_path.exists():  # evaluated: the pretraining config must still match (weights may be gone)
        check_same_experiment(RunDir(run_dir).read_config() or {}, cfg, run_dir)
        return _reuse_eval(eval_path, spec)
    summary = pretrain.run(cfg)
    ev, eval_s = _evaluate(spec, run_dir, cfg, seed, device)
    row = {"mask": mask, "seed": seed, "pretrain_epochs": summary["epochs_done"],
           "final_loss": summary["final_loss"], "knn_top1": ev["knn_top1"],
           "knn_top5": ev["knn_top5"], "linprobe_top1": ev["linprobe_top1"], "linprobe_top5": ev["linprobe_top5"],
           "preset": cfg.preset, "mask_source": cfg.mask_source, "pretrain_wall_s": summary["wall_time_s"],
           "images_per_s": summary["images_per_s"], "eval_wall_s": eval_s}
    write_json({**row, "linprobe_protocol": "linprobe-cached", "evaluate_config": spec.evaluate, "evaluation": ev},
               eval_path)
    return row


def write_table(spec: GridSpec) -> Path:
    """table.csv from every finished run's eval.json (one row per run)."""
    rows = []
    for path in sorted((project_path(spec.out) / "runs").glob("*/eval.json")):
        rec = read_json(path)
        rows.append({k: rec[k] for k in TABLE_COLUMNS})
    recorded = project_path(spec.out) / "grid.json"  # every mask the grid has run, in the order it grew
    masks = read_json(recorded)["masks"] if recorded.exists() else spec.masks
    order = {m: i for i, m in enumerate(masks)}
    rows.sort(key=lambda r: (order.get(r["mask"], 99), r["seed"]))
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=TABLE_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    return atomic_write(project_path(spec.out) / "table.csv", write)


def record_grid(spec: GridSpec) -> None:
    """grid.json: the grid's settings (repository-relative paths). Unchanged settings leave the file
    untouched; other pretraining or evaluation settings in the same folder are an error."""
    path = project_path(spec.out) / "grid.json"
    new = {**asdict(spec), "out": repo_relative(project_path(spec.out))}
    if path.exists():
        old = read_json(path)
        changed = [(f"{part}.{n}", old[part].get(n, "(unset)"), new[part].get(n, "(unset)"))
                   for part in ("pretrain", "evaluate") for n in sorted(set(old[part]) | set(new[part]))
                   if old[part].get(n, "(unset)") != new[part].get(n, "(unset)")]
        if changed:
            raise ValueError(f"{path} holds a grid with other settings ("
                             + "; ".join(f"{n}: {a!r} -> {b!r}" for n, a, b in changed)
                             + "): choose another --out")
        if set(old["masks"]) >= set(new["masks"]) and set(old["seeds"]) >= set(new["seeds"]):
            return
        new["masks"] = list(dict.fromkeys([*old["masks"], *new["masks"]]))
        new["seeds"] = list(dict.fromkeys([*old["seeds"], *new["seeds"]]))
    write_json(new, path)


def run_grid(spec: GridSpec, device: str = "auto") -> Path:
    """Seed-major order (every mask at seed 0, then seed 1): a grid cut short stays balanced."""
    record_grid(spec)
    for seed in spec.seeds:
        for mask in spec.masks:
            run_one(spec, mask, seed, device)
            write_table(spec)
    return write_table(spec)


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grid", choices=sorted(GRIDS))
    p.add_argument("--out", default=None, help="output folder (default: results/<grid name>)")
    p.add_argument("--masks", nargs="+", default=None, help=f"mask kinds, and '{CONTROL}' for the untrained control")
    p.add_argument("--seeds", nargs="+", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--preset", default=None)
    p.add_argument("--dataset", default=None)
    p.add_argument("--data-root", default=None)
    p.add_argument("--dataset-length", type=int, default=None, help="subset of the training split (smoke runs)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--linprobe-epochs", type=int, default=None)
    p.add_argument("--eval-length", type=int, default=None, help="subset of train and test for evaluation (smoke runs)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    spec = replace(GRIDS[args.grid])
    if args.out:
        spec.out = args.out
    if args.masks:
        spec.masks = tuple(args.masks)
    if args.seeds is not None:
        spec.seeds = tuple(args.seeds)
    overrides = {"epochs": args.epochs, "preset": args.preset, "dataset": args.dataset, "data_root": args.data_root,
                 "dataset_length": args.dataset_length, "batch_size": args.batch_size}
    spec.pretrain = {**spec.pretrain, **{k: v for k, v in overrides.items() if v is not None}}
    if args.linprobe_epochs is not None:
        spec.evaluate = {**spec.evaluate, "linprobe_epochs": args.linprobe_epochs}
    if args.eval_length is not None:
        spec.evaluate = {**spec.evaluate, "train_length": args.eval_length, "test_length": args.eval_length}
    def run(spec: GridSpec) -> Path:
        # fail fast on a bad grid: every run's config is validated before the first one starts
        for mask in spec.masks:
            validate(PretrainConfig(**{**spec.pretrain, **({} if mask == CONTROL else {"mask": mask})}))
        path = run_grid(spec, args.device)
        print(path.read_text())
        return path
    return cli_main(run, spec)


if __name__ == "__main__":
    main(sys.argv[1:])
