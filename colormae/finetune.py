"""End-to-end fine-tuning (MAE's main_finetune.py) and the evaluation CLI for all three protocols.

CLI: ``python -m colormae.finetune --encoder RUN_DIR --protocol {finetune,linprobe,knn}`` (or under
``torchrun --nproc_per_node N -m colormae.finetune``). Defaults evaluate on the embedded labeled
photographs, so everything runs offline on a CPU in minutes.

* ``finetune``: the whole stock timm ViT with average pooling + fc_norm, layer-wise lr decay,
  RandAugment, Mixup/CutMix, label smoothing, drop path, as in MAE.
* ``linprobe`` / ``knn``: frozen features, see ``colormae.evaluate``. Under torchrun the frozen
  protocols run on rank 0 alone.

The paper's fine-tuning setting is ``--protocol finetune --dataset imagefolder --data-root /imagenet
--epochs 100 --batch-size 128 --blr 5e-4 --layer-decay 0.65 --drop-path 0.1 --warmup-epochs 5``
on 8 GPUs (ViT-B, effective batch 1024).
"""
from __future__ import annotations

import argparse
import logging
import math
import random
import sys
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import Mixup, create_transform
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

from . import data as data_lib
from .evaluate import (POOLS, _topk_correct, check_compatible, evaluate_frozen, extract_features, frozen_datasets,
                       knn_classify, linear_probe, load_encoder)
from .model import timm_vit_from_export
from .runtime import (AMP_MODES, TRAINING_STATE_KEYS, DistInfo, GlobalBatchSampler, MetricLog, SeededSamples, Timer,
                      add_engine_args, atomic_torch_save, autocast, cli_main, environment_info, grad_scaler,
                      load_checkpoint, mean_across_ranks, peak_memory_bytes, progress, restore_training_state,
                      resume_path, setup_device, training_state, wrap_ddp, write_json)

log = logging.getLogger(__name__)
PROTOCOLS = ("finetune", "linprobe", "knn")
__all__ = ["FinetuneConfig", "finetune", "run", "main", "evaluate_frozen", "extract_features", "knn_classify",
           "linear_probe", "load_encoder"]  # the frozen tools are re-exported for one import point

# -- end-to-end fine-tuning -----------------------------------------------------------------------

@dataclass
class FinetuneConfig:
    encoder: str | None = None  # pretraining run dir, encoder.pth, or pretraining checkpoint
    protocol: str = "finetune"
    dataset: str = "embedded"
    data_root: str | None = None
    train_length: int | None = None  # embedded: number of crops; others: evenly spaced subset
    test_length: int | None = None
    num_classes: int | None = None  # optional check: must equal the dataset's
    img_size: int | None = None  # optional check: must equal the encoder's
    # None below = the protocol's default (PROTOCOL_DEFAULTS)
    epochs: int | None = None
    batch_size: int | None = None  # per process
    blr: float | None = None  # lr = blr * global batch / 256
    warmup_epochs: float | None = None
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    layer_decay: float = 0.65
    drop_path: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    smoothing: float = 0.1
    aa: str = "rand-m9-mstd0.5-inc1"  # timm RandAugment spec; "" disables it
    reprob: float = 0.25  # random erasing
    crop_scale_min: float | None = None  # RandomResizedCrop lower scale; None: 0.08 (>= 224 px) or 0.35
    pool: str = "cls"  # frozen protocols: cls or avg
    knn_k: int = 20
    knn_temperature: float = 0.07
    linprobe_optimizer: str = "sgd"
    amp: str = "bf16"
    output_dir: str = "results/finetune/default"
    seed: int = 0
    resume: str | None = None  # path, or "auto" = <output_dir>/checkpoint-last.pth if present
    device: str = "auto"
    max_steps: int | None = None
    num_workers: int = 0
    skip_corrupt: bool = False
    log_every: int = 10


# MAE's recipes (main_finetune.py, main_linprobe.py), epochs cut to CPU scale. linprobe: MAE uses
# LARS at batch 16384 with blr 0.1; see linear_probe for why SGD here.
PROTOCOL_DEFAULTS = {
    "finetune": dict(epochs=3, batch_size=64, blr=5e-4, warmup_epochs=1.0),
    "linprobe": dict(epochs=100, batch_size=256, blr=0.1, warmup_epochs=10.0),
    "knn": dict(epochs=0, batch_size=256, blr=0.0, warmup_epochs=0.0),
}


def resolve_defaults(cfg: FinetuneConfig) -> FinetuneConfig:
    """Fill the None fields with the protocol's defaults (unknown protocol: ValueError)."""
    if cfg.protocol not in PROTOCOLS:
        raise ValueError(f"protocol={cfg.protocol!r} is not supported; allowed values: {', '.join(PROTOCOLS)}")
    filled = {k: v for k, v in PROTOCOL_DEFAULTS[cfg.protocol].items() if getattr(cfg, k) is None}
    return FinetuneConfig(**{**asdict(cfg), **filled})


def validate(cfg: FinetuneConfig) -> None:
    """Everything checkable before the encoder, data or model are touched."""
    if cfg.encoder is None:
        raise ValueError("encoder is required: a pretraining run directory, encoder.pth or checkpoint")
    if cfg.dataset not in data_lib.DATASETS:
        raise ValueError(f"unknown dataset name={cfg.dataset!r}; expected one of {data_lib.DATASETS}")
    if cfg.amp not in AMP_MODES:
        raise ValueError(f"amp={cfg.amp!r}; allowed values: {', '.join(AMP_MODES)}")
    if cfg.pool not in POOLS:
        raise ValueError(f"pool={cfg.pool!r}; allowed values: {', '.join(POOLS)}")
    if cfg.batch_size < 1 or (cfg.protocol != "knn" and cfg.epochs < 1):
        raise ValueError(f"batch_size={cfg.batch_size} and epochs={cfg.epochs} must be >= 1")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise ValueError(f"max_steps={cfg.max_steps} must be >= 1")
    if cfg.protocol == "finetune":
        if (cfg.mixup > 0 or cfg.cutmix > 0) and cfg.batch_size % 2:
            raise ValueError(f"batch_size={cfg.batch_size} must be even with mixup/cutmix (timm mixes flipped pairs)")
        if not 0 < cfg.layer_decay <= 1 or not 0 <= cfg.drop_path < 1 or not 0 <= cfg.smoothing < 1:
            raise ValueError(f"need 0 < layer_decay <= 1, 0 <= drop_path < 1, 0 <= smoothing < 1; got "
                             f"{cfg.layer_decay}, {cfg.drop_path}, {cfg.smoothing}")


def train_transform(img_size: int, cfg: FinetuneConfig) -> Callable:
    """MAE's fine-tuning augmentation through timm: random resized crop, flip, RandAugment, erasing.

    Small images: a 0.08-area crop of a 32-px image is 9 px wide (2 x 2 patches of 4 px, blown up),
    so below 224 px the crop keeps at least 35 % of the area. RandAugment's translations are relative
    to the image size, so "rand-m9-mstd0.5-inc1" works unchanged at 32 and 64 px.
    """
    scale_min = cfg.crop_scale_min if cfg.crop_scale_min is not None else (0.08 if img_size >= 224 else 0.35)
    transform = create_transform(img_size, is_training=True, scale=(scale_min, 1.0), auto_augment=cfg.aa or None,
                                 interpolation="bicubic", re_prob=cfg.reprob, re_mode="pixel", re_count=1)
    for t in transform.transforms:
        for op in getattr(t, "ops", ()):  # RandAugment / AutoAugment ops
            if op.name.startswith("Posterize"):
                op.level_fn = partial(_at_least_one_bit, op.level_fn)
    return transform


def _at_least_one_bit(level_fn, magnitude: float, hparams: dict) -> tuple:
    """timm's PosterizeIncreasing keeps 4 - int(m / 10 * 4) bits: 0 at magnitude 10, which m9 + mstd0.5
    reaches ~2 % of the time. Old Pillow turned the image black; Pillow 13 raises. Keep 1 bit."""
    return (max(1, level_fn(magnitude, hparams)[0]),)


def build_finetune_model(export: dict, num_classes: int, drop_path: float = 0.1) -> tuple[nn.Module, object]:
    """Stock timm ViT with average pooling + fresh fc_norm and head (MAE's fine-tuning model)."""
    model, result = timm_vit_from_export(export, num_classes, global_pool="avg", drop_path_rate=drop_path)
    nn.init.trunc_normal_(model.head.weight, std=2e-5)  # MAE: a near-zero head, so early steps barely move the encoder
    nn.init.zeros_(model.head.bias)
    return model, result


def _seed_step(seed: int, step: int, rank: int) -> None:
    """Seed drop path and mixup from (seed, step, rank) alone: exact resume however many workers,
    evaluation loaders or RNG consumers ran before this step."""
    s = (seed * 1_000_003 + step * 7_919 + rank * 104_729 + 17) % (2 ** 31 - 1)
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


@torch.no_grad()
def evaluate(model: nn.Module, dataset, *, batch_size: int, device: torch.device, amp: str = "none",
             info: DistInfo | None = None, num_workers: int = 0) -> dict:
    """Top-1/top-5 and cross-entropy on ``dataset``; each rank takes a strided share, sums are all-reduced."""
    info = info or DistInfo()
    model.eval()
    share = torch.utils.data.Subset(dataset, range(info.rank, len(dataset), info.world_size))
    loader = torch.utils.data.DataLoader(share, batch_size=batch_size, num_workers=num_workers,
                                         pin_memory=device.type == "cuda")
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top-1 hits, top-5 hits, count
    for imgs, target in loader:
        imgs, target = imgs.to(device, non_blocking=True), target.to(device, non_blocking=True)
        with autocast(amp, device):
            logits = model(imgs)
        c1, c5 = _topk_correct(logits.float(), target)
        totals += torch.tensor([F.cross_entropy(logits.float(), target, reduction="sum").item(), c1, c5,
                                len(target)], dtype=torch.float64, device=device)
    if info.world_size > 1:
        torch.distributed.all_reduce(totals)
    loss, c1, c5, n = totals.tolist()
    return {"top1": c1 / n, "top5": c5 / n, "loss": loss / n}


def finetune(cfg: FinetuneConfig) -> dict:
    """End-to-end fine-tuning; returns (and writes) the run summary."""
    cfg = resolve_defaults(cfg)
    validate(cfg)
    info, device = setup_device(cfg.device)
    out = Path(cfg.output_dir)

    # encoder and data first: a missing file, a size or class mismatch fails here, before the model is built
    export = load_encoder(cfg.encoder)
    img_size = check_compatible(export, cfg.dataset, cfg.img_size)
    train_set, test_set, n_cls = frozen_datasets(
        export, cfg.dataset, cfg.data_root, train_length=cfg.train_length, test_length=cfg.test_length,
        img_size=img_size, num_classes=cfg.num_classes, skip_corrupt=cfg.skip_corrupt,
        train_transform=train_transform(img_size, cfg))
    global_batch = cfg.batch_size * info.world_size
    sampler = GlobalBatchSampler(len(train_set), global_batch, info, cfg.seed)
    loader = torch.utils.data.DataLoader(SeededSamples(train_set), batch_sampler=sampler,
                                         num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
    steps_per_epoch = len(train_set) // global_batch
    total_steps = steps_per_epoch * cfg.epochs

    torch.manual_seed(cfg.seed)  # head init
    model, load_result = build_finetune_model(export, n_cls, cfg.drop_path)
    model.to(device)
    lr = cfg.blr * global_batch / 256
    # layer-wise lr decay: timm groups ViT parameters by depth and sets each group's lr_scale, which
    # its schedulers multiply in; no weight decay on norms, biases, pos_embed and cls_token
    optimizer = create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=cfg.weight_decay,
                                    layer_decay=cfg.layer_decay)
    scheduler = CosineLRScheduler(optimizer, t_initial=total_steps, lr_min=cfg.min_lr, warmup_lr_init=0.0,
                                  warmup_t=int(cfg.warmup_epochs * steps_per_epoch), t_in_epochs=False)
    scaler = grad_scaler(cfg.amp, device)
    mixup = (Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.smoothing,
                   num_classes=n_cls) if cfg.mixup > 0 or cfg.cutmix > 0 else None)
    # mixup makes soft targets (smoothing included); otherwise smoothing or plain cross-entropy
    criterion = (SoftTargetCrossEntropy() if mixup is not None else
                 LabelSmoothingCrossEntropy(cfg.smoothing) if cfg.smoothing > 0 else nn.CrossEntropyLoss())

    step, epoch, batch_in_epoch, evals = 0, 0, 0, []
    resume = resume_path(cfg.resume, out)
    if resume is not None:
        ckpt = load_checkpoint(resume, required=TRAINING_STATE_KEYS + ("evals", "num_classes"))
        if ckpt["num_classes"] != n_cls:
            raise ValueError(f"checkpoint {resume} has a {ckpt['num_classes']}-class head; {cfg.dataset} has {n_cls}")
        step, epoch, batch_in_epoch = restore_training_state(ckpt, resume, model, optimizer, scaler)
        evals = ckpt["evals"]
        scheduler.step_update(num_updates=step)
    ddp_model = wrap_ddp(model, info, device)

    metrics = MetricLog(out, info.is_main, resume_step=step if resume is not None else None)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(asdict(cfg), out / "config.json")

    def save(name: str) -> None:
        if info.is_main:
            atomic_torch_save(training_state(model, optimizer, scaler, step, epoch, batch_in_epoch, evals=evals,
                                             num_classes=n_cls, config=asdict(cfg), timm_name=export["timm_name"],
                                             timm_kwargs=export["timm_kwargs"]), out / name)

    def run_eval() -> dict:
        return evaluate(model, test_set, batch_size=cfg.batch_size, device=device, amp=cfg.amp, info=info,
                        num_workers=cfg.num_workers)

    timer, images_seen, last_loss, stop = Timer(), 0, float("nan"), False
    bar = progress(total=total_steps, initial=step, disable=not info.is_main, desc="finetune")
    while epoch < cfg.epochs and not stop:
        sampler.set_epoch(epoch, batch_in_epoch)
        model.train()
        for imgs, targets in loader:
            imgs, targets = imgs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            _seed_step(cfg.seed, step, info.rank)
            if mixup is not None:
                imgs, targets = mixup(imgs, targets)
            with autocast(cfg.amp, device):
                loss = criterion(ddp_model(imgs), targets)
            if not math.isfinite(loss.item()):
                bar.close()
                raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}, step {step}: stopping. The last "
                                         f"good checkpoint is {out / 'checkpoint-last.pth'}; try a lower --blr "
                                         "or --amp none")
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step, batch_in_epoch = step + 1, batch_in_epoch + 1
            images_seen += imgs.shape[0] * info.world_size
            scheduler.step_update(num_updates=step)
            last_loss = mean_across_ranks(loss.detach(), info)
            bar.update(1)
            if info.is_main and (step % cfg.log_every == 0 or step == 1):
                rate = images_seen / timer.elapsed
                metrics.write({"step": step, "epoch": epoch + batch_in_epoch / steps_per_epoch, "loss": last_loss,
                               "lr": max(g["lr"] for g in optimizer.param_groups), "img_per_s": rate})
                bar.set_postfix(loss=f"{last_loss:.4f}", img_s=f"{rate:.0f}", refresh=False)
            if cfg.max_steps is not None and cfg.max_steps <= step < total_steps:  # at the end: finish normally
                stop = True
                break
        if not stop:
            epoch, batch_in_epoch = epoch + 1, 0
            ev = run_eval()
            evals.append({"epoch": epoch, "step": step, **ev})
            metrics.write({"step": step, "epoch": epoch, "test_top1": ev["top1"], "test_top5": ev["top5"],
                           "test_loss": ev["loss"]})
            log.info("epoch %d: test top-1 %.4f, top-5 %.4f", epoch, ev["top1"], ev["top5"])
            save("checkpoint-last.pth")
    bar.close()
    if stop:
        save("checkpoint-last.pth")
    train_time = timer.elapsed
    # an interrupted run still reports where it stands (not logged: the resumed run logs its own epochs)
    final = evals[-1] if evals and not stop else {"epoch": epoch + batch_in_epoch / steps_per_epoch, "step": step,
                                                    **run_eval()}

    summary = {"protocol": "finetune", "top1": final["top1"], "top5": final["top5"],
               "best_top1": max([e["top1"] for e in evals] + [final["top1"]]), "final_eval": final, "evals": evals,
               "config": asdict(cfg), "encoder": {k: export.get(k) for k in ("timm_name", "timm_kwargs", "mae_config")},
               "environment": environment_info(device), "world_size": info.world_size, "global_batch": global_batch,
               "lr": lr, "num_classes": n_cls, "num_train": len(train_set), "num_test": len(test_set),
               "steps": step, "total_steps": total_steps, "finished": epoch >= cfg.epochs, "final_loss": last_loss,
               "missing_keys": list(load_result.missing_keys), "wall_time_s": timer.elapsed,
               "images_per_s": images_seen / max(train_time, 1e-9), "peak_memory_bytes": peak_memory_bytes(device),
               "num_params": sum(p.numel() for p in model.parameters()),
               "skipped_images": data_lib.skipped_images(train_set) + data_lib.skipped_images(test_set)}
    if info.is_main:
        write_json(summary, out / "summary.json")
    metrics.close()
    return summary


def frozen(cfg: FinetuneConfig) -> dict:
    """The kNN or linear-probe protocol on cached features; writes summary.json like ``finetune``.

    Under torchrun only rank 0 works (feature extraction of a frozen encoder is one forward pass);
    the other ranks wait for it.
    """
    cfg = resolve_defaults(cfg)
    validate(cfg)
    info, device = setup_device(cfg.device)
    out = Path(cfg.output_dir)
    summary: dict = {}
    if info.is_main:
        timer = Timer()
        export = load_encoder(cfg.encoder)
        result = evaluate_frozen(
            export, cfg.dataset, cfg.data_root, train_length=cfg.train_length, test_length=cfg.test_length,
            device=device, knn_k=cfg.knn_k, knn_temperature=cfg.knn_temperature,
            linprobe_epochs=cfg.epochs if cfg.protocol == "linprobe" else 0, linprobe_blr=cfg.blr,
            linprobe_optimizer=cfg.linprobe_optimizer, linprobe_batch_size=cfg.batch_size,
            linprobe_warmup_epochs=cfg.warmup_epochs, pool=cfg.pool, num_workers=cfg.num_workers,  # extraction: 256
            amp=cfg.amp, num_classes=cfg.num_classes, img_size=cfg.img_size, skip_corrupt=cfg.skip_corrupt,
            seed=cfg.seed)
        key = "knn" if cfg.protocol == "knn" else "linprobe"
        summary = {"protocol": cfg.protocol, "top1": result[f"{key}_top1"], "top5": result[f"{key}_top5"],
                   **result, "config": asdict(cfg),
                   "encoder": {k: export.get(k) for k in ("timm_name", "timm_kwargs", "mae_config")},
                   "environment": environment_info(device), "wall_time_s": timer.elapsed,
                   "images_per_s": (result["num_train"] + result["num_test"]) / max(result["extract_time_s"], 1e-9),
                   "peak_memory_bytes": peak_memory_bytes(device)}
        out.mkdir(parents=True, exist_ok=True)
        write_json(asdict(cfg), out / "config.json")
        write_json(summary, out / "summary.json")
        log.info("%s: top-1 %.4f, top-5 %.4f -> %s", cfg.protocol, summary["top1"], summary["top5"],
                 out / "summary.json")
    if info.world_size > 1:
        torch.distributed.barrier()
    return summary


def run(cfg: FinetuneConfig) -> dict:
    """Dispatch on ``cfg.protocol``."""
    return finetune(cfg) if resolve_defaults(cfg).protocol == "finetune" else frozen(cfg)


# -- CLI ----------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    d = FinetuneConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", required=True, help="pretraining run dir, encoder.pth, or checkpoint-*.pth")
    p.add_argument("--protocol", default=d.protocol, help=f"one of {PROTOCOLS}")
    p.add_argument("--dataset", default=d.dataset, help="embedded, cifar10 or imagefolder")
    p.add_argument("--data-root", default=d.data_root)
    p.add_argument("--train-length", type=int, default=d.train_length)
    p.add_argument("--test-length", type=int, default=d.test_length)
    p.add_argument("--num-classes", type=int, default=d.num_classes, help="optional check against the dataset")
    p.add_argument("--img-size", type=int, default=d.img_size, help="optional check against the encoder")
    p.add_argument("--epochs", type=int, default=d.epochs, help="default: finetune 3, linprobe 100")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="per process; default finetune 64, else 256")
    p.add_argument("--blr", type=float, default=d.blr, help="lr = blr * global batch / 256; default "
                   "finetune 5e-4, linprobe 0.1")
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, help="default finetune 1, linprobe 10")
    p.add_argument("--min-lr", type=float, default=d.min_lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--layer-decay", type=float, default=d.layer_decay)
    p.add_argument("--drop-path", type=float, default=d.drop_path)
    p.add_argument("--mixup", type=float, default=d.mixup, help="mixup alpha (0 disables)")
    p.add_argument("--cutmix", type=float, default=d.cutmix, help="cutmix alpha (0 disables)")
    p.add_argument("--smoothing", type=float, default=d.smoothing)
    p.add_argument("--aa", default=d.aa, help="timm RandAugment spec, '' disables")
    p.add_argument("--reprob", type=float, default=d.reprob)
    p.add_argument("--crop-scale-min", type=float, default=d.crop_scale_min)
    p.add_argument("--pool", default=d.pool, help="frozen protocols: cls or avg")
    p.add_argument("--knn-k", type=int, default=d.knn_k)
    p.add_argument("--knn-temperature", type=float, default=d.knn_temperature)
    p.add_argument("--linprobe-optimizer", default=d.linprobe_optimizer, choices=("sgd", "lars"))
    add_engine_args(p, d)
    return p


def config_from_args(argv: list[str] | None = None) -> FinetuneConfig:
    return FinetuneConfig(**vars(build_parser().parse_args(argv)))


def main(argv: list[str] | None = None) -> dict:
    return cli_main(run, config_from_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
