"""Experiment grids: one command each, resumable (finished runs are skipped, unfinished ones resume).

    python -m colormae.experiments cifar10-minirepro          # Table 1 (classification) at CPU scale

Every (mask, seed) run pretrains with identical settings except the mask (the seed fixes model init,
data order and augmentation, so runs of one seed differ by their masks only), then is evaluated with
kNN and a linear probe on frozen features. ``table.csv`` is rewritten after every run.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .evaluate import evaluate_frozen
from .pretrain import PretrainConfig, train, validate
from .runtime import ROOT, Timer, read_metrics, write_json

log = logging.getLogger(__name__)

TABLE_COLUMNS = ["mask", "seed", "pretrain_epochs", "final_loss", "knn_top1", "knn_top5", "linprobe_top1",
                 "linprobe_top5", "preset", "mask_source", "pretrain_wall_s", "images_per_s", "eval_wall_s"]


@dataclass
class GridSpec:
    """A mask x seed grid of pretraining runs with frozen-feature evaluation."""
    masks: tuple[str, ...] = ("random", "blue", "green", "purple", "red")
    seeds: tuple[int, ...] = (0, 1)
    out: str = str(ROOT / "results" / "cifar10_minirepro")
    # pretraining (see PretrainConfig); everything but mask and seed is shared by all runs
    pretrain: dict = field(default_factory=lambda: dict(
        preset="mae_vit_mini_patch4_32", dataset="cifar10", epochs=3, batch_size=128, blr=2e-3,
        warmup_epochs=1.0, mask_ratio=0.75, mask_source="online", amp="bf16", num_workers=1, save_every=1))
    # evaluation (see colormae.finetune.evaluate_frozen)
    evaluate: dict = field(default_factory=lambda: dict(linprobe_epochs=100, knn_k=20, amp="bf16", batch_size=512))


GRIDS = {"cifar10-minirepro": GridSpec()}


def final_loss(run_dir: Path, epochs_done: float) -> float:
    """Mean logged loss over the last epoch: one batch's loss is too noisy to compare masks."""
    records = read_metrics(run_dir)
    last = [r["loss"] for r in records if r["epoch"] > epochs_done - 1]
    return sum(last) / len(last)


def run_one(spec: GridSpec, mask: str, seed: int, device: str = "auto") -> dict:
    """Pretrain (resuming if interrupted) and evaluate one run; skipped if already complete."""
    run_dir = Path(spec.out) / "runs" / f"{mask}_seed{seed}"
    eval_path = run_dir / "eval.json"
    if eval_path.exists():
        log.info("%s seed %d: done, skipping", mask, seed)
        return json.loads(eval_path.read_text())
    cfg = PretrainConfig(**{**spec.pretrain, "mask": mask, "seed": seed, "output_dir": str(run_dir),
                            "resume": "auto", "device": device})
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    if not (summary and summary.get("finished")):
        log.info("%s seed %d: pretraining %d epochs", mask, seed, cfg.epochs)
        summary = train(cfg)
    timer = Timer()
    ev = evaluate_frozen(run_dir, cfg.dataset, cfg.data_root, device=device if device != "auto" else "cpu",
                         seed=seed, **spec.evaluate)
    row = {"mask": mask, "seed": seed, "pretrain_epochs": summary["epochs_done"],
           "final_loss": final_loss(run_dir, summary["epochs_done"]), "knn_top1": ev["knn_top1"],
           "knn_top5": ev["knn_top5"], "linprobe_top1": ev["linprobe_top1"], "linprobe_top5": ev["linprobe_top5"],
           "preset": cfg.preset, "mask_source": cfg.mask_source, "pretrain_wall_s": summary["wall_time_s"],
           "images_per_s": summary["images_per_s"], "eval_wall_s": timer.elapsed}
    write_json({**row, "evaluation": ev}, eval_path)
    return row


def write_table(spec: GridSpec) -> Path:
    """table.csv from every finished run's eval.json (one row per run)."""
    rows = []
    for path in sorted((Path(spec.out) / "runs").glob("*/eval.json")):
        rec = json.loads(path.read_text())
        rows.append({k: rec[k] for k in TABLE_COLUMNS})
    order = {m: i for i, m in enumerate(spec.masks)}
    rows.sort(key=lambda r: (order.get(r["mask"], 99), r["seed"]))
    path = Path(spec.out) / "table.csv"
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=TABLE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
    return path


def run_grid(spec: GridSpec, device: str = "auto") -> Path:
    """Seed-major order (every mask at seed 0, then seed 1): a grid cut short stays balanced."""
    Path(spec.out).mkdir(parents=True, exist_ok=True)
    write_json(asdict(spec), Path(spec.out) / "grid.json")
    for seed in spec.seeds:
        for mask in spec.masks:
            run_one(spec, mask, seed, device)
            write_table(spec)
    return write_table(spec)


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grid", choices=sorted(GRIDS))
    p.add_argument("--out", default=None, help="output folder (default: results/<grid name>)")
    p.add_argument("--masks", nargs="+", default=None)
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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
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
    # fail fast on a bad grid: every run's config is validated before the first one starts
    for mask in spec.masks:
        validate(PretrainConfig(**{**spec.pretrain, "mask": mask}))
    path = run_grid(spec, args.device)
    print(path.read_text())
    return path


if __name__ == "__main__":
    main(sys.argv[1:])
