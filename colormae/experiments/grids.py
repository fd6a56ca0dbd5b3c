"""Experiment grids: one command each, resumable (finished runs are skipped, unfinished ones resume).

    colormae experiments cifar10-grid16             # Table 1 (classification), 16x16 patch grid
    colormae experiments cifar10-band-sweep         # green masks at six band centres
    colormae experiments cifar10-minirepro          # the earlier 8x8-grid table
    colormae experiments pennfudan-segment          # grid16 encoders -> UperNet on Penn-Fudan
    colormae experiments pennfudan-detect           # grid16 encoders -> Mask R-CNN on Penn-Fudan

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
import logging
import math
import shutil
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import torch

from ..engines import finetune, pretrain
from ..engines.frozen import evaluate_frozen
from ..engines.pretrain import PretrainConfig, validate
from ..files import atomic_write, locked_dir, project_path, read_json, repo_relative, save_torch, write_csv, write_json
from ..masks.maskers import make_masker
from ..masks.noise import color_params
from ..masks.schedule import band_centre, parse_mask_params
from ..masks.stats import mask_statistics
from ..models.mae import CONTROL, get_config, untrained_encoder
from ..run.config import check_common, differences
from ..run.rundir import (
    CONFIG,
    ENCODER,
    LAST,
    PRECISIONS,
    SUMMARY,
    RunDir,
    check_same_experiment,
    config_record,
    recorded_precision,
)
from ..run.scaffold import cli_main
from ..runtime import Timer, resolve_amp
from . import dense

log = logging.getLogger(__name__)

TABLE_COLUMNS = ["mask", "seed", "pretrain_epochs", "final_loss", "knn_top1", "knn_top5", "linprobe_top1",
                 "linprobe_top5", "finetune_top1", "preset", "grid", "mask_source", "mask_params", "pretrain_wall_s",
                 "images_per_s",
                 "eval_wall_s"]


@dataclass
class GridSpec:
    """A mask x seed grid of pretraining runs with frozen-feature evaluation.

    ``masks`` are run labels: a mask kind, ``none`` (the untrained control), or a key of
    ``variants`` whose value overrides pretraining settings (e.g. a green mask with other sigmas).
    Every label runs at ``seeds``; ``more_seeds`` adds seeds to some labels (after all of ``seeds``).
    """
    masks: tuple[str, ...] = ("random", "blue", "green", "purple", "red")
    seeds: tuple[int, ...] = (0, 1)
    more_seeds: dict = field(default_factory=dict)
    variants: dict = field(default_factory=dict)
    # end-to-end fine-tuning of every encoder (FinetuneConfig fields; None: frozen evaluation only)
    finetune: dict | None = None
    # a preregistered (confirmatory) grid: the file that fixes it; the command line changes nothing of it
    preregistration: str | None = None
    out: str = "results/cifar10_minirepro"  # relative paths: from the repository root
    # pretraining (see PretrainConfig); everything but mask and seed is shared by all runs
    pretrain: dict = field(default_factory=lambda: dict(
        preset="mae_vit_mini_patch4_32", dataset="cifar10", epochs=3, batch_size=128, blr=2e-3,
        warmup_epochs=1.0, mask_ratio=0.75, mask_source="online", amp="bf16", num_workers=1, norm_pix_loss=False,
        pipeline="files"))
    # evaluation (see colormae.engines.finetune.evaluate_frozen)
    evaluate: dict = field(default_factory=lambda: dict(linprobe_epochs=100, knn_k=20, amp="bf16", batch_size=512))


    def runs(self) -> list[tuple[str, int]]:
        """(label, seed) in running order: seed-major, so a grid cut short stays balanced."""
        order = [(m, s) for s in self.seeds for m in self.masks]
        extra = sorted({s for seeds in self.more_seeds.values() for s in seeds} - set(self.seeds))
        return order + [(m, s) for s in extra for m in self.masks if s in self.more_seeds.get(m, ())]

    def pretrain_config(self, label: str, seed: int, **fields) -> PretrainConfig:
        overrides = {} if label == CONTROL else {"mask": label, **self.variants.get(label, {})}
        return PretrainConfig(**{**self.pretrain, **overrides, "seed": seed, **fields})


# The 16x16-grid CIFAR-10 table (Table 1 at CPU scale). Patch 2 on the native 32 px (not 64 px
# upsampled with patch 4: the same 256 tokens, but an upsampled image holds no more information and
# its patch embedding costs 4x). The nano preset and one epoch per run are sized for a 2-core CPU;
# none / random / green get 5 seeds, the others 2 (the pilot and the sizing: docs/results.md).
# Paper recipe: norm-pix loss, 75 % masking, AdamW (0.9, 0.95), wd 0.05, cosine; masks online
# (aperiodic windows of freshly filtered noise: a bank's statistics, no memory).
GRID16_PRETRAIN = dict(
    preset="mae_vit_nano_patch2_32", dataset="cifar10", epochs=1, batch_size=64, blr=3e-3, warmup_epochs=0.1,
    mask_ratio=0.75, mask_source="online", amp="auto", norm_pix_loss=True, pipeline="memory")
# kNN bank and probe training set: an evenly spaced 10k of the 50k training images (all 10 classes,
# 1000 each); every run is tested on all 10k test images. Full-train features would cost as much
# as another pretraining epoch per run.
GRID16_EVALUATE = dict(linprobe_epochs=100, knn_k=20, amp="auto", batch_size=512, train_length=10000)

# The same grid at GPU scale (`--scale gpu`): none / random / green (the paper's question) at 5 seeds,
# 6x longer pretraining at batch 256, the full 50k training images for kNN and the probe, and
# end-to-end fine-tuning of every encoder (the paper's Table 1 metric, the finetune engine's MAE
# recipe), sized for one GPU running the three masks as three processes (the measured pilot behind
# the sizing: docs/results.md). Blue / purple / red / block: add `--masks blue purple red block`
# (seeds 0, 1).
GRID16_GPU = dict(
    out="results/cifar10_grid16_gpu", masks=("none", "random", "green"),
    more_seeds={"none": (2, 3, 4), "random": (2, 3, 4), "green": (2, 3, 4)},
    pretrain={**GRID16_PRETRAIN, "epochs": 6, "batch_size": 256, "warmup_epochs": 1.0},
    evaluate={**GRID16_EVALUATE, "train_length": None, "batch_size": 1024},
    finetune={"epochs": 3, "batch_size": 256, "amp": "auto", "num_workers": 8})

# Green band sweep: sigma2 = 2 sigma1 (the paper's green shape) from near-blue to near-red. The band's
# centre, the peak of G(sigma1) - G(sigma2), is sqrt(ln(sigma2^2/sigma1^2) / (2 pi^2 (sigma2^2 -
# sigma1^2))) cycles/patch = 0.153 / sigma1 here: 0.44 (period 2.3 patches) ... 0.077 (13 patches).
# The default green (sigma1 = 0.7) is the grid's green runs, not repeated.
BAND_SIGMA1 = (0.35, 0.5, 1.0, 1.4, 2.0)


def band_label(sigma1: float, sigma2: float) -> str:
    return f"green_s{sigma1:g}-{sigma2:g}"


# The confirmatory replication of green > random on kNN (results/cifar10_grid16_confirm/PREREGISTRATION.md,
# committed before any of its runs): the grid16 recipe at fresh seeds 5-12, fp32 pinned for pretraining
# and evaluation (the exploratory grid's "auto" resolved to fp32 on the AVX2 machine it ran on; on a CPU
# with native bf16 "auto" would silently change the precision).
GRID16_CONFIRM = GridSpec(
    masks=("random", "green"), seeds=tuple(range(5, 13)), out="results/cifar10_grid16_confirm",
    pretrain={**GRID16_PRETRAIN, "amp": "none"}, evaluate={**GRID16_EVALUATE, "amp": "none"},
    preregistration="results/cifar10_grid16_confirm/PREREGISTRATION.md")

GRIDS = {
    "cifar10-minirepro": GridSpec(),
    "cifar10-grid16": GridSpec(
        masks=("none", "random", "green", "blue", "purple", "red", "block"), seeds=(0, 1),
        more_seeds={"none": (2, 3, 4), "random": (2, 3, 4), "green": (2, 3, 4)}, out="results/cifar10_grid16",
        pretrain=GRID16_PRETRAIN, evaluate=GRID16_EVALUATE),
    "cifar10-band-sweep": GridSpec(
        masks=tuple(band_label(s, 2 * s) for s in BAND_SIGMA1), seeds=(0,), out="results/cifar10_band_sweep",
        variants={band_label(s, 2 * s): {"mask": "green", "mask_params": f"sigma1={s:g},sigma2={2 * s:g}"}
                  for s in BAND_SIGMA1},
        pretrain=GRID16_PRETRAIN, evaluate=GRID16_EVALUATE),
    "cifar10-grid16-confirm": GRID16_CONFIRM,
}


def _reuse_eval(eval_path: Path, spec: GridSpec, rec: dict | None = None) -> dict:
    rec = read_json(eval_path) if rec is None else rec
    changed = differences(rec.get("evaluate_config", spec.evaluate), spec.evaluate, list(spec.evaluate))
    if (rec.get("finetune_config") or None) != (spec.finetune or None):
        changed.append(("finetune", rec.get("finetune_config"), spec.finetune))
    if changed:
        raise ValueError(f"{eval_path} was evaluated with other settings ("
                         + "; ".join(f"{n}: {a!r} -> {b!r}" for n, a, b in changed)
                         + "): choose another --out for a grid with these settings")
    log.info("done, reusing %s", repo_relative(eval_path))
    return rec


def _device(device: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def _evaluate(spec: GridSpec, encoder, cfg: PretrainConfig, seed: int, device: str,
              amp: str) -> tuple[dict, float]:
    timer = Timer()
    ev = evaluate_frozen(encoder, cfg.dataset, cfg.data_root, device=_device(device), seed=seed,
                         **{**spec.evaluate, "amp": amp})
    return ev, timer.elapsed


def _finetune(spec: GridSpec, encoder: Path, cfg: PretrainConfig, seed: int, device: str, amp: str) -> dict:
    """End-to-end fine-tuning of the run's encoder (GPU scale: the paper's Table 1 metric)."""
    ft = finetune.FinetuneConfig(**{**spec.finetune, "amp": amp, "encoder": repo_relative(encoder),
                                    "protocol": "finetune",
                                    "dataset": cfg.dataset, "data_root": cfg.data_root, "seed": seed,
                                    "device": device, "resume": "auto",
                                    "output_dir": repo_relative(encoder.parent / "finetune")})
    return finetune.run(ft)


def _check_evaluated_run(rec: dict, eval_path: Path, run_dir: Path, cfg: PretrainConfig, mask: str) -> None:
    """An evaluation is reused only for the pretraining it records (eval.json's ``pretrain_config``;
    older records: the run's config.json and ``pretrain_epochs``), whatever grid.json says or
    whether it still exists; epochs must match too (a longer grid is another experiment). A saved
    "auto" matches the precision the run recorded (the control trained nothing: the grid's)."""
    saved = rec.get("pretrain_config") or RunDir(run_dir).read_config()
    if saved is None:
        raise ValueError(f"{eval_path} does not record the pretraining it evaluated (no pretrain_config in it, no "
                         f"{run_dir / CONFIG}): it cannot be matched to this grid's settings. Choose another --out, "
                         "or restore config.json")
    recorded = cfg.amp if mask == CONTROL else recorded_precision(RunDir(run_dir))
    check_same_experiment(saved, cfg, eval_path, growable=(), recorded_amp=recorded)
    done = rec.get("pretrain_epochs")
    if mask != CONTROL and done is not None and not math.isclose(float(done), float(cfg.epochs)):
        raise ValueError(f"{eval_path} evaluated {done:g} pretraining epochs; this grid asks for {cfg.epochs}. "
                         "Choose another --out for a grid with these settings")


REBUILD = "rebuild"  # --rebuild-weights pretrains here, beside the record, never over it
REBUILT_FILES = (ENCODER, LAST)


def _rebuild_weights(cfg: PretrainConfig, run_dir: Path, rec: dict) -> None:
    """Pretrain an evaluated run again in ``<run>/rebuild/`` (its summary.json and metrics.jsonl,
    which Fig. 4 reads, are never touched); when the final loss reproduces the record, the weights
    (encoder.pth, checkpoint-last.pth) are copied into the run directory for its consumers."""
    rebuild = run_dir / REBUILD
    # the precision the run recorded, whatever "auto" would choose on this machine: a rebuild reproduces it
    amp = recorded_precision(RunDir(run_dir)) or cfg.amp
    summary = pretrain.run(replace(cfg, output_dir=repo_relative(rebuild), amp=amp))
    loss, recorded = summary.get("final_loss"), rec.get("final_loss")
    same = loss is not None and recorded is not None and math.isclose(loss, recorded, rel_tol=1e-5)
    if not summary.get("finished") or not same:
        log.warning("rebuilt %s in %s: final loss %s, recorded %s: not reproduced (another machine or library "
                    "version), so its weights stay there and the record is unchanged; pass --encoder %s to use "
                    "them anyway", repo_relative(run_dir), repo_relative(rebuild), loss, recorded,
                    repo_relative(rebuild))
        return
    for name in REBUILT_FILES:
        if (rebuild / name).is_file() and not (run_dir / name).exists():
            atomic_write(run_dir / name, lambda tmp, src=rebuild / name: shutil.copyfile(src, tmp))
    log.info("rebuilt %s: final loss %.6f reproduces the record; weights copied into the run", repo_relative(run_dir),
             loss)


def run_one(spec: GridSpec, mask: str, seed: int, device: str = "auto", rebuild_weights: bool = False,
            precision: dict | None = None) -> dict:
    """Pretrain (resuming if interrupted; a finished run with the same config is reused) and evaluate
    one run; the evaluation is reused when eval.json was made with the same settings. The control
    (``none``) evaluates the untrained encoder of ``seed``: the init its pretraining would start from.
    ``rebuild_weights``: an evaluated run whose weights are gone (git-ignored: a fresh clone) is
    pretrained again, the same experiment, beside its record (``_rebuild_weights``). ``precision``:
    the grid's (``grid_precision``), computed here when not given."""
    precision = precision or grid_precision(spec, device)
    run_dir = project_path(spec.out) / "runs" / f"{mask}_seed{seed}"
    cfg = spec.pretrain_config(mask, seed, output_dir=repo_relative(run_dir), resume="auto", device=device,
                               amp=precision["pretrain"])
    eval_path = run_dir / "eval.json"
    if eval_path.exists():  # evaluated: the pretraining config must still match (weights may be gone)
        rec = read_json(eval_path)
        _check_evaluated_run(rec, eval_path, run_dir, cfg, mask)
        rec = _reuse_eval(eval_path, spec, rec)
        if rebuild_weights and mask != CONTROL and not (run_dir / ENCODER).is_file():
            _rebuild_weights(cfg, run_dir, rec)
        return rec
    if mask == CONTROL:
        if (run_dir / CONFIG).exists():
            check_same_experiment(read_json(run_dir / CONFIG), cfg, run_dir, recorded_amp=cfg.amp)
        overrides = {} if cfg.norm_pix_loss is None else {"norm_pix_loss": cfg.norm_pix_loss}
        encoder = save_torch(untrained_encoder(cfg.preset, seed, **overrides), run_dir / ENCODER)
        write_json(config_record(cfg), run_dir / CONFIG)
        summary = {"epochs_done": 0, "final_loss": None, "wall_time_s": 0.0, "images_per_s": None}
    else:
        summary = pretrain.run(cfg)
        encoder = run_dir / ENCODER
    ev, eval_s = _evaluate(spec, encoder, cfg, seed, device, precision["evaluate"])
    ft = _finetune(spec, encoder, cfg, seed, device, precision["finetune"]) if spec.finetune else {}
    row = {"mask": mask, "seed": seed, "pretrain_epochs": summary["epochs_done"], "final_loss": summary["final_loss"],
           "knn_top1": ev["knn_top1"], "knn_top5": ev["knn_top5"], "linprobe_top1": ev["linprobe_top1"],
           "linprobe_top5": ev["linprobe_top5"], "finetune_top1": ft.get("top1"), "preset": cfg.preset,
           "grid": get_config(cfg.preset).grid, "mask_source": None if mask == CONTROL else cfg.mask_source,
           "mask_params": None if mask == CONTROL else cfg.mask_params, "pretrain_wall_s": summary["wall_time_s"],
           "images_per_s": summary["images_per_s"], "eval_wall_s": eval_s}
    write_json({**row, "linprobe_protocol": "linprobe-cached", "evaluate_config": spec.evaluate,
                "finetune_config": spec.finetune, "pretrain_config": config_record(cfg), "evaluation": ev},
               eval_path)
    return row


def write_table(spec: GridSpec) -> Path:
    """table.csv from every finished run's eval.json (one row per run)."""
    rows = []
    for path in sorted((project_path(spec.out) / "runs").glob("*/eval.json")):
        rec = read_json(path)
        row = {k: rec.get(k) for k in TABLE_COLUMNS}
        row["grid"] = row["grid"] or get_config(rec["preset"]).grid  # tables written before the column existed
        rows.append(row)
    recorded = project_path(spec.out) / "grid.json"  # every mask the grid has run, in the order it grew
    masks = read_json(recorded)["masks"] if recorded.exists() else spec.masks
    order = {m: i for i, m in enumerate(masks)}
    rows.sort(key=lambda r: (order.get(r["mask"], 99), r["seed"]))
    return write_csv(rows, TABLE_COLUMNS, project_path(spec.out) / "table.csv")


BAND_COLUMNS = ["sigma1", "sigma2", "band_centre", "seed", "knn_top1", "linprobe_top1", "mean_cluster_size",
                "run"]


def band_cluster_size(sigma1: float, sigma2: float, grid: int, mask_ratio: float, batch: int = 256) -> float:
    """Mean visible-cluster size (patches) of green masks with these sigmas (fixed seed)."""
    masker = make_masker("green", grid, mask_ratio, sigma1=sigma1, sigma2=sigma2)
    mask, _, _ = masker(batch, generator=torch.Generator().manual_seed(0))
    return mask_statistics(mask, grid)["cluster_size"]


def write_band_table(spec: GridSpec, default_green: GridSpec | None = None) -> Path:
    """The band sweep's table.csv: one row per evaluated run, its band (sigma1, sigma2, centre in
    cycles/patch) and mask statistics, plus the default-green runs of ``default_green`` (the grid
    whose pretraining settings the sweep shares; checked equal)."""
    sources = [(spec, [m for m in spec.masks if m != CONTROL])]
    if default_green is not None:
        if default_green.pretrain == spec.pretrain and default_green.evaluate == spec.evaluate:
            sources.append((default_green, ["green"]))
        else:
            log.warning("the default-green runs of %s are left out of the band table: other settings",
                        default_green.out)
    rows, grid = [], get_config(spec.pretrain["preset"]).grid
    for source, labels in sources:
        for label in labels:
            params = color_params("green", **parse_mask_params(source.variants.get(label, {}).get("mask_params", "")))
            s1, s2 = params["sigma1"], params["sigma2"]
            for path in sorted((project_path(source.out) / "runs").glob(f"{label}_seed*/eval.json")):
                rec = read_json(path)
                rows.append({"sigma1": s1, "sigma2": s2, "band_centre": round(band_centre(s1, s2), 4),
                             "seed": rec["seed"], "knn_top1": rec["knn_top1"], "linprobe_top1": rec["linprobe_top1"],
                             "mean_cluster_size":
                                round(band_cluster_size(s1, s2, grid, spec.pretrain["mask_ratio"]), 3),
                             "run": repo_relative(path.parent)})
    rows.sort(key=lambda r: (-r["band_centre"], r["seed"]))
    return write_csv(rows, BAND_COLUMNS, project_path(spec.out) / "table.csv")


def _recorded_precisions(out: Path) -> dict[str, set[str]]:
    """The precisions the runs in grid folder ``out`` recorded, per part: pretraining (summary.json),
    evaluation (eval.json; records older than that field: the pretraining's, which the rule of the time
    resolved from the device alone, as it did the evaluation beside it) and fine-tuning."""
    found: dict[str, set[str]] = {"pretrain": set(), "evaluate": set(), "finetune": set()}
    for run in sorted((out / "runs").glob("*")):
        summary = read_json(run / SUMMARY) if (run / SUMMARY).is_file() else {}
        pretrained = summary.get("amp") if summary.get("amp") in PRECISIONS else None
        evaluation = read_json(run / "eval.json").get("evaluation", {}) if (run / "eval.json").is_file() else None
        finetuned = recorded_precision(RunDir(run / "finetune"))
        for part, amp in (("pretrain", pretrained), ("finetune", finetuned),
                          ("evaluate", None if evaluation is None else evaluation.get("amp", pretrained))):
            if amp in PRECISIONS:
                found[part].add(amp)
    return found


def grid_precision(spec: GridSpec, device: str = "auto") -> dict[str, str | None]:
    """The precision each part of the grid computes in ("pretrain", "evaluate", "finetune"), resolved
    once per grid folder so that "auto" never changes it: an explicit ``amp`` as given; "auto" as
    grid.json records it (``precision``), else as the folder's runs recorded it, else
    ``runtime.resolve_amp`` for the preset on this device (pretraining: the kept tokens; evaluation and
    fine-tuning: all patches). ValueError when the runs recorded several precisions for one part."""
    out = project_path(spec.out)
    grid_file = out / "grid.json"
    saved = (read_json(grid_file).get("precision") or {}) if grid_file.is_file() else {}
    runs = _recorded_precisions(out)
    mcfg = get_config(spec.pretrain["preset"])
    tokens = mcfg.grid ** 2
    kept = int(tokens * (1 - spec.pretrain.get("mask_ratio", PretrainConfig.mask_ratio)))
    width_tokens = {"pretrain": mcfg.embed_dim * kept, "evaluate": mcfg.embed_dim * tokens,
                    "finetune": mcfg.embed_dim * tokens}
    settings = {"pretrain": spec.pretrain, "evaluate": spec.evaluate, "finetune": spec.finetune}
    precision: dict[str, str | None] = {}
    for part, given in settings.items():
        amp = None if given is None else given.get("amp", "auto")
        if amp == "auto" and saved.get(part) in PRECISIONS:
            amp = saved[part]
        elif amp == "auto" and len(runs[part]) > 1:
            raise ValueError(f"{out} holds runs whose {part} precision differs ({', '.join(sorted(runs[part]))}): "
                             "'auto' cannot choose one; choose another --out")
        elif amp == "auto" and runs[part]:
            amp = next(iter(runs[part]))
        elif amp == "auto":
            amp = resolve_amp(amp, torch.device(_device(device)), width_tokens[part])
        precision[part] = amp
    return precision


def _auto_precision(spec: GridSpec, precision: dict | None) -> dict | None:
    """The part of ``precision`` grid.json records: the parts whose ``amp`` is "auto" (None: none is)."""
    settings = {"pretrain": spec.pretrain, "evaluate": spec.evaluate, "finetune": spec.finetune}
    auto = {part: precision[part] for part, given in settings.items()
            if precision and given is not None and given.get("amp", "auto") == "auto"}
    return auto or None


def record_grid(spec: GridSpec, write: bool = True, precision: dict | None = None) -> None:
    """grid.json: the grid's settings (repository-relative paths) and, where they say "auto", the
    precision it resolved to (``grid_precision``; once recorded, kept). Unchanged settings leave the file
    untouched; other pretraining or evaluation settings in the same folder are an error. Processes
    that start one grid's masks at once (one GPU, several processes) merge their entries in turn.
    ``write=False``: only the check (``run_grid`` writes once its first run has started without error)."""
    with locked_dir(project_path(spec.out)):
        _record_grid(spec, project_path(spec.out) / "grid.json", write, precision)


def _record_grid(spec: GridSpec, path: Path, write: bool = True, precision: dict | None = None) -> None:
    new = {**asdict(spec), "out": repo_relative(project_path(spec.out))}
    auto = _auto_precision(spec, precision)
    if auto is not None:
        new["precision"] = auto
    if path.exists():
        old = read_json(path)
        if old.get("precision"):  # resolved once: a recorded precision is never replaced
            new["precision"] = {**(auto or {}), **old["precision"]}
        changed = [(f"{part}.{n}", old[part].get(n, "(unset)"), new[part].get(n, "(unset)"))
                   for part in ("pretrain", "evaluate") for n in sorted(set(old[part]) | set(new[part]))
                   if old[part].get(n, "(unset)") != new[part].get(n, "(unset)")]
        if (old.get("finetune") or None) != (new["finetune"] or None):
            changed.append(("finetune", old.get("finetune"), new["finetune"]))
        old_variants = old.get("variants", {})
        changed += [(f"variants.{n}", old_variants[n], v) for n, v in new["variants"].items()
                    if n in old_variants and old_variants[n] != v]
        if changed:
            raise ValueError(f"{path} holds a grid with other settings ("
                             + "; ".join(f"{n}: {a!r} -> {b!r}" for n, a, b in changed)
                             + "): choose another --out")
        more = {m: sorted({*old.get("more_seeds", {}).get(m, ()), *new["more_seeds"].get(m, ())})
                for m in {*old.get("more_seeds", {}), *new["more_seeds"]}}
        merged = {"masks": list(dict.fromkeys([*old["masks"], *new["masks"]])),
                  "seeds": list(dict.fromkeys([*old["seeds"], *new["seeds"]])),
                  "more_seeds": more, "variants": {**old_variants, **new["variants"]}}
        if all(merged[k] == (list(old.get(k, {})) if k in ("masks", "seeds") else old.get(k, {})) for k in merged) \
                and old.get("precision") == new.get("precision"):
            return
        new.update(merged)
    if write:
        write_json(new, path)


def run_grid(spec: GridSpec, device: str = "auto", rebuild_weights: bool = False) -> Path:
    """Seed-major order (every mask at seed 0, then seed 1): a grid cut short stays balanced.
    grid.json is checked first and written after the first run went through (its data loaded, its
    model built and trained or reused): a grid stopped by a bad setting leaves no grid.json that
    would refuse the corrected command."""
    record_grid(spec, write=False)
    if rebuild_weights:  # a rebuild reproduces recorded runs: it neither adds runs nor rewrites grid.json
        unrecorded = [f"{m}_seed{s}" for m, s in spec.runs()
                      if not (project_path(spec.out) / "runs" / f"{m}_seed{s}" / "eval.json").is_file()]
        if unrecorded:
            raise ValueError(f"--rebuild-weights rebuilds the recorded runs of "
                             f"{repo_relative(project_path(spec.out))}; {', '.join(unrecorded)} has no record "
                             "there (eval.json): run without --rebuild-weights to add it, or choose the recorded "
                             "--masks / --seeds")
    precision = grid_precision(spec, device)  # once for the whole grid, then recorded in grid.json
    log.info("precision: %s", ", ".join(f"{part} {amp}" for part, amp in precision.items() if amp is not None))
    # the band sweep's table is its own (bands, not masks) and includes the grid's default-green runs
    table = (partial(write_band_table, default_green=GRIDS["cifar10-grid16"]) if spec.variants
             else write_table)
    recorded = False
    for mask, seed in spec.runs():
        run_one(spec, mask, seed, device, rebuild_weights, precision)
        if not recorded and not rebuild_weights:
            record_grid(spec, precision=precision)
            recorded = True
        table(spec)
    return table(spec)


# Dense transfer experiments: the cifar10-grid16 encoders (random, green; pretraining seeds 0-4) and
# the untrained control fine-tuned on Penn-Fudan (colormae.experiments.dense).
DENSE = {"pennfudan-segment": dense.run_segmentation_experiment, "pennfudan-detect": dense.run_detection_experiment}


def run_dense(name: str, args: argparse.Namespace) -> Path:
    kwargs = {k: v for k, v in (("masks", args.masks), ("seeds", args.seeds), ("pretrain_seeds", args.pretrain_seeds),
                                ("out", args.out)) if v}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    if args.device != "auto":
        kwargs["device"] = args.device
    path = DENSE[name](**kwargs)
    print(Path(path).read_text())
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="colormae experiments", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grid", choices=sorted(GRIDS) + sorted(DENSE))
    p.add_argument("--pretrain-seeds", nargs="+", type=int, default=None,
                   help=f"{', '.join(DENSE)}: the grid's pretraining seeds whose encoders are fine-tuned")
    p.add_argument("--out", default=None, help="output folder (default: results/<grid name>)")
    p.add_argument("--masks", nargs="+", default=None, help=f"mask kinds, and '{CONTROL}' for the untrained control")
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="these seeds for every mask (default: the grid's)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--preset", default=None)
    p.add_argument("--dataset", default=None)
    p.add_argument("--data-root", default=None)
    p.add_argument("--dataset-length", type=int, default=None, help="subset of the training split (smoke runs)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--linprobe-epochs", type=int, default=None)
    p.add_argument("--finetune-epochs", type=int, default=None, help="grids that fine-tune (--scale gpu)")
    p.add_argument("--eval-length", type=int, default=None, help="subset of train and test for evaluation (smoke runs)")
    p.add_argument("--rebuild-weights", action="store_true",
                   help="pretrain again the evaluated runs whose weights are gone (a fresh clone), e.g. for "
                        f"{', '.join(DENSE)}; their evaluations are kept")
    p.add_argument("--device", default="auto")
    p.add_argument("--scale", choices=("cpu", "gpu"), default="cpu",
                   help="cifar10-grid16 only: 'gpu' = the longer, 5-seed, fine-tuned version "
                        "(results/cifar10_grid16_gpu)")
    return p


# the flags each kind of experiment reads; any other flag given is an error naming it (never ignored)
DENSE_FLAGS = ("pretrain_seeds", "out", "masks", "seeds", "device")
GRID_FLAGS = ("out", "masks", "seeds", "epochs", "preset", "dataset", "data_root", "dataset_length", "batch_size",
              "linprobe_epochs", "eval_length", "rebuild_weights", "device")


def unused_flags(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    """The flags given (not at their default) that experiment ``args.grid`` does not read."""
    if args.grid in DENSE:
        uses = set(DENSE_FLAGS)
    else:
        spec = replace(GRIDS[args.grid], **(GRID16_GPU if args.scale == "gpu" else {}))
        uses = set(GRID_FLAGS) | ({"scale"} if args.grid == "cifar10-grid16" else set()) | (
            {"finetune_epochs"} if spec.finetune else set())
    return sorted("--" + k.replace("_", "-") for k, v in vars(args).items()
                  if k != "grid" and k not in uses and v != parser.get_default(k))


def main(argv: list[str] | None = None) -> Path:
    p = build_parser()
    args = p.parse_args(argv)
    unused = unused_flags(args, p)
    if unused:
        p.error(f"{args.grid} does not use {', '.join(unused)}: remove "
                f"{'it' if len(unused) == 1 else 'them'} (each experiment reads only its own flags; "
                "colormae experiments --help says which)")
    if args.grid in DENSE:
        return cli_main(lambda name: run_dense(name, args), args.grid)
    spec = replace(GRIDS[args.grid], **(GRID16_GPU if args.scale == "gpu" else {}))
    if spec.preregistration:
        given = sorted(k for k, v in vars(args).items()  # device and data location are no experiment setting
                       if k not in ("grid", "device", "data_root") and v != p.get_default(k))
        if given:
            p.error(f"{args.grid} is preregistered ({spec.preregistration}): its masks, seeds and settings are "
                    f"fixed; remove {', '.join('--' + k.replace('_', '-') for k in given)}")
        if not project_path(spec.preregistration).is_file():
            p.error(f"{args.grid}: {spec.preregistration} is missing; a preregistered grid runs only after its "
                    "preregistration is committed")
    if args.out:
        spec.out = args.out
    if args.masks:
        spec.masks = tuple(args.masks)
    if args.seeds is not None:  # exactly these seeds for every mask
        spec.seeds, spec.more_seeds = tuple(args.seeds), {}
    overrides = {"epochs": args.epochs, "preset": args.preset, "dataset": args.dataset, "data_root": args.data_root,
                 "dataset_length": args.dataset_length, "batch_size": args.batch_size}
    spec.pretrain = {**spec.pretrain, **{k: v for k, v in overrides.items() if v is not None}}
    if args.linprobe_epochs is not None:
        spec.evaluate = {**spec.evaluate, "linprobe_epochs": args.linprobe_epochs}
    if args.eval_length is not None:
        spec.evaluate = {**spec.evaluate, "train_length": args.eval_length, "test_length": args.eval_length}
        if spec.finetune:
            spec.finetune = {**spec.finetune, "train_length": args.eval_length, "test_length": args.eval_length}
    if spec.finetune and args.finetune_epochs is not None:
        spec.finetune = {**spec.finetune, "epochs": args.finetune_epochs}
    if spec.finetune and args.batch_size is not None:
        spec.finetune = {**spec.finetune, "batch_size": args.batch_size}
    def run(spec: GridSpec) -> Path:
        # fail fast on a bad grid: every run's config is validated before the first one starts
        for mask in spec.masks:
            validate(spec.pretrain_config(mask, 0))
            check_common(spec.pretrain_config(mask, 0))
        if spec.finetune:
            finetune.validate(finetune.resolve_defaults(finetune.FinetuneConfig(
                **{**spec.finetune, "encoder": "(each run)", "protocol": "finetune"})))
        path = run_grid(spec, args.device, args.rebuild_weights)
        print(path.read_text())
        return path
    return cli_main(run, spec)
