"""Evaluating a pretrained encoder: end-to-end fine-tuning, MAE's linear probe, and the fast
frozen-feature protocols. CLI: ``colormae finetune --encoder RUN_DIR --protocol P`` (or
under ``torchrun --nproc_per_node N -m colormae finetune``). Defaults evaluate on the embedded
labeled photographs, so everything runs offline on a CPU in minutes.

* ``finetune`` (MAE's main_finetune.py): the whole stock timm ViT with average pooling + fc_norm,
  layer-wise lr decay, RandAugment, Mixup/CutMix, label smoothing, drop path.
* ``linprobe`` (MAE's main_linprobe.py, the GPU protocol): frozen encoder, [CLS] token, head =
  BatchNorm without affine + linear, LARS, no weight decay, RandomResizedCrop + flip on the fly.
* ``linprobe-cached`` (the fast CPU variant): the same head trained on features extracted once,
  without augmentation (``colormae.engines.frozen``); SGD by default. Tables name which probe they used.
* ``knn``: weighted k-NN on frozen features (``colormae.engines.frozen``).
Under torchrun the two cached-feature protocols run on rank 0 alone.

The paper's fine-tuning (ViT-B, effective batch 1024 on 8 GPUs)::

    --protocol finetune --dataset imagefolder --data-root /imagenet --epochs 100 --batch-size 128 \\
    --blr 5e-4 --layer-decay 0.65 --drop-path 0.1 --warmup-epochs 5

MAE's linear probe (effective batch 16384 on 8 GPUs)::

    --protocol linprobe --dataset imagefolder --data-root /imagenet --epochs 90 --batch-size 2048 \\
    --blr 0.1 --warmup-epochs 10
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Mixup, create_transform
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from ..data import datasets as data_lib
from ..data.loaders import train_loader
from ..data.memory import TrainAugment
from ..models.backbone import encoder_width_tokens, export_width_tokens
from ..models.mae import timm_vit_from_export
from ..run.artifacts import load_encoder
from ..run.config import EngineConfig, check_choice, check_positive, compile_knob, compile_mode_knob, knob
from ..run.scaffold import adamw_impl, adamw_options, compile_model, cosine_schedule, start_run
from ..runtime import DistInfo, Timer, autocast, grad_scaler, seed_step, wrap_ddp
from .frozen import (
    POOLS,
    LinearProbe,
    _topk_correct,
    check_compatible,
    check_num_classes,
    evaluate_frozen,
    lars_optimizer,
)

log = logging.getLogger(__name__)
PROTOCOLS = ("finetune", "linprobe", "linprobe-cached", "knn")
FROZEN_PROTOCOLS = ("linprobe-cached", "knn")

# MAE's recipes (main_finetune.py, main_linprobe.py), epochs cut to CPU scale where noted.
PROTOCOL_DEFAULTS = {
    "finetune": dict(epochs=3, batch_size=64, blr=5e-4, warmup_epochs=1.0, weight_decay=0.05),  # MAE: 100 epochs
    "linprobe": dict(epochs=90, batch_size=256, blr=0.1, warmup_epochs=10.0, weight_decay=0.0),
    "linprobe-cached": dict(epochs=100, batch_size=256, blr=0.1, warmup_epochs=10.0, weight_decay=0.0),
    "knn": dict(epochs=0, batch_size=256, blr=0.0, warmup_epochs=0.0, weight_decay=0.0),
}


@dataclass
class FinetuneConfig(EngineConfig):
    encoder: str | None = knob(None, "pretraining run dir, encoder.pth, or checkpoint-*.pth", group="model",
                               input="pretrain")
    protocol: str = knob("finetune", "finetune, linprobe (MAE's, GPUs), linprobe-cached (fast, CPU) or knn",
                         choices=PROTOCOLS, group="evaluation")
    num_classes: int | None = knob(None, "optional check against the dataset", group="model")
    img_size: int | None = knob(None, "optional check against the encoder", group="model")
    drop_path: float = knob(0.1, "finetune: stochastic depth rate", group="model")
    pool: str = knob("cls", "cached protocols: [CLS] token or average of patch tokens", choices=POOLS,
                     group="evaluation")
    knn_k: int = knob(20, "kNN neighbours", group="evaluation")
    knn_temperature: float = knob(0.07, "kNN vote temperature", group="evaluation")
    linprobe_optimizer: str = knob("sgd", "linprobe-cached optimizer (LARS barely moves the weights at small "
                                   "batches)", choices=("sgd", "lars"), group="evaluation")
    train_length: int | None = knob(None, "embedded: number of crops; others: an evenly spaced subset", group="data")
    test_length: int | None = knob(None, "as train_length, for the test split", group="data")
    aa: str = knob("rand-m9-mstd0.5-inc1", "finetune: timm RandAugment spec ('' disables)", group="data")
    reprob: float = knob(0.25, "finetune: random erasing probability", group="data")
    crop_scale_min: float | None = knob(None, "RandomResizedCrop lower scale; default 0.08 (>= 224 px) or 0.35",
                                        group="data")
    mixup: float = knob(0.8, "finetune: mixup alpha (0 disables)", group="data")
    cutmix: float = knob(1.0, "finetune: cutmix alpha (0 disables)", group="data")
    smoothing: float = knob(0.1, "finetune: label smoothing", group="data")
    # None below = the protocol's default (PROTOCOL_DEFAULTS)
    epochs: int | None = knob(None, "default: finetune 3, linprobe 90, linprobe-cached 100", group="optimization")
    batch_size: int | None = knob(None, "per process; default finetune 64, else 256", group="optimization")
    blr: float | None = knob(None, "lr = blr x global batch / 256; default finetune 5e-4, probes 0.1",
                             group="optimization")
    warmup_epochs: float | None = knob(None, "default finetune 1, probes 10", group="optimization")
    weight_decay: float | None = knob(None, "default finetune 0.05, probes 0", group="optimization")
    min_lr: float = knob(1e-6, "cosine schedule floor", group="optimization")
    layer_decay: float = knob(0.65, "finetune: layer-wise lr decay", group="optimization")
    compile: bool = compile_knob()
    compile_mode: str = compile_mode_knob()
    output_dir: str = knob("results/finetune/default", "the run directory (relative paths: from the repository "
                           "root)", experiment=False, path=True)


def resolve_defaults(cfg: FinetuneConfig) -> FinetuneConfig:
    """Fill the None fields with the protocol's defaults (unknown protocol: ValueError)."""
    check_choice("protocol", cfg.protocol, PROTOCOLS)
    filled = {k: v for k, v in PROTOCOL_DEFAULTS[cfg.protocol].items() if getattr(cfg, k) is None}
    return replace(cfg, **filled)


def validate(cfg: FinetuneConfig) -> None:
    """Everything checkable before the encoder, data or model are touched."""
    if cfg.encoder is None:
        raise ValueError("encoder is required: a pretraining run directory, encoder.pth or checkpoint")
    check_choice("dataset", cfg.dataset, data_lib.DATASETS)
    check_choice("pool", cfg.pool, POOLS)
    check_positive(cfg, "batch_size", "knn_k", "train_length", "test_length")
    check_positive(cfg, "weight_decay", "warmup_epochs", "min_lr", "reprob", "mixup", "cutmix",
                   allow_zero=("weight_decay", "warmup_epochs", "min_lr", "reprob", "mixup", "cutmix"))
    if cfg.protocol != "knn":
        check_positive(cfg, "epochs", "blr")
    if cfg.protocol != "finetune" and cfg.pipeline not in ("auto", "memory", "files"):
        # frozen features read the eval transform from memory or files; gpu-decode and dali augment for training
        raise ValueError(f"pipeline={cfg.pipeline!r} is not used by protocol={cfg.protocol!r} (frozen features "
                         "read memory or files); allowed values here: auto, memory, files")
    if cfg.protocol == "finetune":
        if cfg.pipeline not in ("auto", "files"):
            raise ValueError(f"pipeline={cfg.pipeline!r}: fine-tuning's augmentation (RandAugment, random erasing) "
                             "runs per image; allowed values here: auto, files")
        if (cfg.mixup > 0 or cfg.cutmix > 0) and cfg.batch_size % 2:
            raise ValueError(f"batch_size={cfg.batch_size} must be even with mixup/cutmix (timm mixes flipped pairs)")
        if not 0 < cfg.layer_decay <= 1 or not 0 <= cfg.drop_path < 1 or not 0 <= cfg.smoothing < 1:
            raise ValueError(f"need 0 < layer_decay <= 1, 0 <= drop_path < 1, 0 <= smoothing < 1; got "
                             f"{cfg.layer_decay}, {cfg.drop_path}, {cfg.smoothing}")


# -- models and augmentation of the two trained protocols -------------------------------------------

def crop_scale_min(img_size: int, cfg: FinetuneConfig) -> float:
    """A 0.08-area crop of a 32-px image is 9 px wide (2 x 2 patches of 4 px, blown up), so below
    224 px crops keep at least 35 % of the area."""
    return cfg.crop_scale_min if cfg.crop_scale_min is not None else (0.08 if img_size >= 224 else 0.35)


def train_transform(img_size: int, cfg: FinetuneConfig) -> Callable:
    """finetune: MAE's augmentation through timm (random resized crop, flip, RandAugment, erasing);
    RandAugment's translations are relative to the image size, so it works unchanged at 32 and 64 px.
    linprobe: random resized crop + flip only (MAE's main_linprobe.py)."""
    scale = (crop_scale_min(img_size, cfg), 1.0)
    if cfg.protocol == "linprobe":
        return transforms.Compose([
            transforms.RandomResizedCrop(img_size, scale=scale, interpolation=InterpolationMode.BICUBIC),
            transforms.RandomHorizontalFlip(), transforms.ToTensor(),
            transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])
    transform = create_transform(img_size, is_training=True, scale=scale, auto_augment=cfg.aa or None,
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


def build_linprobe_model(export: dict, num_classes: int) -> tuple[nn.Module, object]:
    """Stock timm ViT, [CLS] token after the pretrained final norm, head = BatchNorm (no affine) +
    linear; everything but the head frozen (MAE's linear probe)."""
    model, result = timm_vit_from_export(export, num_classes, global_pool="token")
    model.head = LinearProbe(model.embed_dim, num_classes)
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("head.")
    return model, result


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


# -- the trained protocols: finetune and linprobe ------------------------------------------------------

def train_classifier(cfg: FinetuneConfig) -> dict:
    """Fine-tuning or MAE's linear probe (one loop; the protocol picks model, optimizer, augmentation)."""
    with start_run(cfg, cfg.protocol) as r:
        if r.finished is not None:
            return r.finished
        info, device = r.info, r.device
        # encoder and data first: a missing file, a size or class mismatch fails here, before the model
        export = load_encoder(cfg.encoder)
        img_size = check_compatible(export, cfg.dataset, cfg.img_size)
        test_set = data_lib.build_dataset(cfg.dataset, cfg.data_root, "test", data_lib.eval_transform(img_size),
                                          labeled=True, skip_corrupt=cfg.skip_corrupt, length=cfg.test_length,
                                          img_size=img_size, max_corrupt_fraction=cfg.max_corrupt_fraction)
        # finetune's RandAugment and erasing run per image; the linear probe's crop + flip also batched
        batch_augment = (TrainAugment(img_size, scale=(crop_scale_min(img_size, cfg), 1.0))
                         if cfg.protocol == "linprobe" else None)
        sampler, loader, train_set, pipeline = train_loader(
            cfg, info, device, cfg.batch_size, img_size=img_size, labeled=True, length=cfg.train_length,
            files_transform=train_transform(img_size, cfg), batch_augment=batch_augment)
        n_cls = check_num_classes(train_set, test_set, cfg.num_classes)
        global_batch = cfg.batch_size * info.world_size
        steps_per_epoch = len(train_set) // global_batch
        total_steps = steps_per_epoch * cfg.epochs

        torch.manual_seed(cfg.seed)  # head init
        lr = cfg.blr * global_batch / 256
        mixup = None
        if cfg.protocol == "finetune":
            model, load_result = build_finetune_model(export, n_cls, cfg.drop_path)
            model.to(device)
            # layer-wise lr decay: timm groups ViT parameters by depth and sets each group's lr_scale, which
            # its schedulers multiply in; no weight decay on norms, biases, pos_embed and cls_token
            optimizer = create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=cfg.weight_decay,
                                            layer_decay=cfg.layer_decay, **adamw_options(device))
            if cfg.mixup > 0 or cfg.cutmix > 0:
                mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.smoothing,
                              num_classes=n_cls)
            # mixup makes soft targets (smoothing included); otherwise smoothing or plain cross-entropy
            criterion = (SoftTargetCrossEntropy() if mixup is not None else
                         LabelSmoothingCrossEntropy(cfg.smoothing) if cfg.smoothing > 0 else nn.CrossEntropyLoss())
        else:
            model, load_result = build_linprobe_model(export, n_cls)
            model.to(device)
            optimizer = lars_optimizer(model.head, lr, cfg.weight_decay)
            criterion = nn.CrossEntropyLoss()
        scheduler = cosine_schedule(optimizer, total_steps, int(cfg.warmup_epochs * steps_per_epoch), cfg.min_lr)
        amp = r.precision(encoder_width_tokens(model))  # resolved once (and recorded)
        scaler = grad_scaler(amp, device)

        step, epoch, batch_in_epoch, ckpt = r.restore(("evals", "num_classes"), model, optimizer, scaler)
        evals = []
        if ckpt is not None:
            if ckpt["num_classes"] != n_cls:
                raise ValueError(f"checkpoint {r.resume_from} has a {ckpt['num_classes']}-class head; {cfg.dataset} "
                                 f"has {n_cls}")
            evals = ckpt["evals"]
            scheduler.step_update(num_updates=step)
        ddp_model = wrap_ddp(model, info, device)
        forward = compile_model(ddp_model, cfg.compile, cfg.compile_mode)  # training forward; eval: model
        r.start_logging(cfg, step, total_steps, cfg.protocol)

        def state() -> dict:
            return r.training_state(model, optimizer, scaler, step, epoch, batch_in_epoch, evals=evals,
                                    num_classes=n_cls, timm_name=export["timm_name"],
                                    timm_kwargs=export["timm_kwargs"])

        def run_eval() -> dict:
            return evaluate(model, test_set, batch_size=cfg.batch_size, device=device, amp=amp, info=info,
                            num_workers=cfg.num_workers)

        stop = False
        while epoch < cfg.epochs and not stop:
            sampler.set_epoch(epoch, batch_in_epoch)
            model.train()
            for imgs, targets in loader:
                imgs, targets = imgs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
                seed_step(cfg.seed, step, info.rank)
                if mixup is not None:
                    imgs, targets = mixup(imgs, targets)
                with autocast(amp, device):
                    loss = criterion(forward(imgs), targets)
                r.optimizer_step(loss, epoch, step, optimizer, scaler)
                step, batch_in_epoch = step + 1, batch_in_epoch + 1
                scheduler.step_update(num_updates=step)
                r.log_step(step, epoch + batch_in_epoch / steps_per_epoch, loss,
                           max(g["lr"] for g in optimizer.param_groups), imgs.shape[0] * info.world_size)
                if step < total_steps and r.should_stop(step):  # at the very end: finish normally
                    stop = True
                    break
                if r.checkpoint_due():
                    r.save(state)
            if not stop:
                epoch, batch_in_epoch = epoch + 1, 0
                r.read_losses()  # a bad loss stops here, before an evaluation of its weights is recorded
                ev = run_eval()
                evals.append({"epoch": epoch, "step": step, **ev})
                if info.is_main:
                    r.metrics.write({"step": step, "epoch": epoch, "test_top1": ev["top1"], "test_top5": ev["top5"],
                                     "test_loss": ev["loss"]})
                log.info("epoch %d: test top-1 %.4f, top-5 %.4f", epoch, ev["top1"], ev["top5"])
                r.end_epoch(epoch, step, state, datasets=(train_set, test_set))
        if stop:
            r.save(state)
        finished = epoch >= cfg.epochs
        # an interrupted run still reports where it stands (not logged: the resumed run logs its own epochs)
        final = evals[-1] if evals and not stop else {"epoch": epoch + batch_in_epoch / steps_per_epoch,
                                                        "step": step, **run_eval()}
        summary = r.summary_base(
            total_steps, step, finished, pipeline=pipeline, protocol=cfg.protocol, top1=final["top1"],
            top5=final["top5"],
            best_top1=max([e["top1"] for e in evals] + [final["top1"]]), final_eval=final, evals=evals,
            compile=cfg.compile_mode if cfg.compile else "off",
            **({"adamw": adamw_impl(device)} if cfg.protocol == "finetune" else {}),
            encoder={k: export.get(k) for k in ("timm_name", "timm_kwargs", "mae_config")},
            global_batch=global_batch, lr=lr, num_classes=n_cls, num_train=len(train_set), num_test=len(test_set),
            missing_keys=list(load_result.missing_keys), num_params=sum(p.numel() for p in model.parameters()),
            skipped_images=data_lib.skipped_images(train_set) + data_lib.skipped_images(test_set),
            caveat=data_lib.split_caveat(cfg.dataset))
        if summary["caveat"] and r.info.is_main:
            log.info("note: %s", summary["caveat"])
        return r.finish(summary)


# -- the cached-feature protocols: knn and linprobe-cached -------------------------------------------

def frozen(cfg: FinetuneConfig) -> dict:
    """kNN or the cached-feature linear probe; writes summary.json like the trained protocols.

    Under torchrun only rank 0 works (feature extraction of a frozen encoder is one forward pass);
    the other ranks wait for it.
    """
    with start_run(cfg, cfg.protocol) as r:
        if r.finished is not None:
            return r.finished
        summary: dict = {}
        if r.info.is_main:
            timer = Timer()
            export = load_encoder(cfg.encoder)
            amp = r.precision(export_width_tokens(export, cfg.img_size))  # resolved once (and recorded)
            result = evaluate_frozen(
                export, cfg.dataset, cfg.data_root, train_length=cfg.train_length, test_length=cfg.test_length,
                device=r.device, knn_k=cfg.knn_k, knn_temperature=cfg.knn_temperature,
                linprobe_epochs=cfg.epochs if cfg.protocol == "linprobe-cached" else 0, linprobe_blr=cfg.blr,
                linprobe_optimizer=cfg.linprobe_optimizer, linprobe_batch_size=cfg.batch_size,
                linprobe_warmup_epochs=cfg.warmup_epochs, pool=cfg.pool, num_workers=cfg.num_workers,
                amp=amp, num_classes=cfg.num_classes, img_size=cfg.img_size, skip_corrupt=cfg.skip_corrupt,
                seed=cfg.seed, pipeline=cfg.pipeline, max_corrupt_fraction=cfg.max_corrupt_fraction)
            key = "knn" if cfg.protocol == "knn" else "linprobe"
            r.dir.write_config(cfg)
            r.images_seen = result["num_train"] + result["num_test"]
            summary = r.summary_base(0, 0, True, artifacts=(), protocol=cfg.protocol, top1=result[f"{key}_top1"],
                                     top5=result[f"{key}_top5"], **result,
                                     encoder={k: export.get(k) for k in ("timm_name", "timm_kwargs", "mae_config")})
            summary["wall_time_s"] = timer.elapsed
            log.info("%s: top-1 %.4f, top-5 %.4f", cfg.protocol, summary["top1"], summary["top5"])
        if r.info.world_size > 1:
            torch.distributed.barrier()
        return r.finish(summary) if r.info.is_main else summary


def run(cfg: FinetuneConfig) -> dict:
    """The engine's entry point: dispatch on ``cfg.protocol``."""
    cfg = resolve_defaults(cfg)
    validate(cfg)
    return frozen(cfg) if cfg.protocol in FROZEN_PROTOCOLS else train_classifier(cfg)


CONFIG = FinetuneConfig  # the engine's config: colormae.engines.launch builds its command line from it
