"""Compact release weights: a pretrained MAE in fp16 with its config (~1 MB for the nano preset).

Run directories hold fp32 training checkpoints (with optimizer state, several MB, git-ignored).
The figures of the paper need only the MAE itself, so the grid's seed-0 models are committed as
``results/cifar10_grid16/weights/<mask>.pth`` (fp16 halves the size; reconstructions and attention
maps do not change visibly) and Fig. 3 / Fig. 5 regenerate from a fresh clone. Other seeds are
written as ``<mask>_seed<N>.pth`` (``colormae.run.compact``: a file never receives another seed
than its name and its record say).

    colormae weights results/cifar10_grid16            # every finished <mask>_seed0 run
    colormae weights results/cifar10_grid16 --seed 1   # -> weights/<mask>_seed1.pth
"""
from __future__ import annotations

import argparse
import logging
import os
from dataclasses import asdict
from pathlib import Path

import torch

from ..files import load_checkpoint, project_path, repo_relative, save_torch
from ..run.artifacts import CLASSIFIER, CLASSIFIER_FORMAT, FORMAT, load_mae
from ..run.compact import check_target, compact_target
from ..run.rundir import LAST, RunDir, recorded_engine
from ..run.scaffold import cli_main

log = logging.getLogger(__name__)



def _fp16(state: dict) -> dict:
    return {k: v.detach().to(torch.float16) if v.is_floating_point() else v.detach() for k, v in state.items()}


def _same_record(a: dict, b: dict) -> bool:
    """Equal metadata and bit-equal tensors (torch.save's bytes differ from one process to the next)."""
    if a.keys() != b.keys() or a["model"].keys() != b["model"].keys():
        return False
    return (all(a[k] == b[k] for k in a if k != "model")
            and all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(a["model"].values(), b["model"].values())))


def _save_unless_same(record: dict, path: Path) -> Path:
    """Write ``record`` to ``path`` unless the file already holds the same content: re-exporting
    unchanged runs leaves the committed files (and git) untouched."""
    if path.is_file():
        try:
            if _same_record(record, torch.load(path, map_location="cpu", weights_only=False)):
                log.info("%s is up to date", repo_relative(path))
                return path
        except Exception as e:  # noqa: BLE001 - unreadable or foreign file: overwrite it
            log.warning("%s is unreadable (%s): rewriting it", repo_relative(path), e)
    return save_torch(record, path)


def save_compact(run_dir: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Write the MAE of pretraining run ``run_dir`` (its checkpoint-last.pth) to ``path`` in fp16,
    with its config, the run's mask/seed/final loss and where it came from (a file with the same
    content is left as it is)."""
    run_dir = project_path(run_dir)
    model = load_mae(run_dir)
    summary = RunDir(run_dir).read_summary() or {}
    cfg = summary.get("config", {})
    if not summary.get("finished", False):
        log.warning("%s is unfinished (%s epochs done): saving it as it is", run_dir, summary.get("epochs_done"))
    check_target(project_path(path), cfg.get("mask"), cfg.get("seed"))
    record = {"format": FORMAT, "model": _fp16(model.state_dict()), "mae_config": asdict(model.cfg),
              "source": repo_relative(run_dir), "mask": cfg.get("mask"), "seed": cfg.get("seed"),
              "final_loss": summary.get("final_loss"), "epochs_done": summary.get("epochs_done")}
    return _save_unless_same(record, project_path(path))




def save_compact_classifier(run_dir: str | os.PathLike) -> Path:
    """``<run_dir>/classifier-fp16.pth``: the fp16 model of fine-tuning run ``run_dir`` (its
    checkpoint-last.pth, without optimizer state) and what ``cam.load_classifier`` needs."""
    run_dir = project_path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"--classifier {run_dir}: no such run directory")
    kind = recorded_engine(run_dir)
    if kind not in (None, "finetune", "linprobe"):
        raise ValueError(f"--classifier {run_dir} is a {kind} run, not a fine-tuning run (protocol finetune or "
                         "linprobe): it has no classifier")
    if not (run_dir / LAST).is_file():
        raise FileNotFoundError(f"--classifier {run_dir}: no {LAST} (weights are git-ignored: run the fine-tuning "
                                "again with --resume auto)")
    ckpt = load_checkpoint(run_dir / LAST, required=("model", "timm_name", "timm_kwargs", "num_classes"))
    record = {"format": CLASSIFIER_FORMAT, "model": _fp16(ckpt["model"]), "source": repo_relative(run_dir),
              **{k: ckpt[k] for k in ("timm_name", "timm_kwargs", "num_classes")}}
    return _save_unless_same(record, run_dir / CLASSIFIER)






def export_grid(grid_dir: str | os.PathLike, seed: int = 0) -> list[Path]:
    """Compact copies of every finished ``<mask>_seed<seed>`` run of a grid (the control has no MAE)."""
    written = []
    runs = project_path(grid_dir) / "runs"
    if not runs.is_dir():
        raise FileNotFoundError(f"{project_path(grid_dir)} is not a grid folder (no runs/ in it); e.g. "
                                "colormae weights results/cifar10_grid16")
    found = sorted(runs.glob(f"*_seed{seed}"))
    if not found:
        raise FileNotFoundError(f"{runs} has no run of seed {seed} (no *_seed{seed} folder)")
    for run in found:
        summary = RunDir(run).read_summary() or {}
        if not (run / LAST).is_file() or not summary.get("finished"):
            log.info("skipping %s (no finished pretraining checkpoint)", repo_relative(run))
            continue
        mask = run.name[: -len(f"_seed{seed}")]
        written.append(save_compact(run, compact_target(grid_dir, mask, seed)))
        log.info("wrote %s (%.2f MB)", repo_relative(written[-1]), written[-1].stat().st_size / 2**20)
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="colormae weights", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grid_dir", nargs="?", help="a grid's output folder, e.g. results/cifar10_grid16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classifier", nargs="+", default=[], metavar="RUN_DIR",
                   help=f"fine-tuning runs: write each one's {CLASSIFIER}")
    return p


def main(argv: list[str] | None = None) -> list[Path]:
    p = build_parser()
    args = p.parse_args(argv)
    if not args.grid_dir and not args.classifier:
        p.error("give a grid folder, --classifier RUN_DIR ..., or both")
    def run(args: argparse.Namespace) -> list[Path]:
        paths = export_grid(args.grid_dir, args.seed) if args.grid_dir else []
        paths += [save_compact_classifier(run) for run in args.classifier]
        for path in paths:
            print(repo_relative(path))
        return paths
    return cli_main(run, args)
