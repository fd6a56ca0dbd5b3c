"""Semantic segmentation: UperNet on a pretrained ViT encoder (the paper's ADE20K protocol).
CLI: ``colormae segment --encoder RUN_DIR`` (or under ``torchrun --nproc_per_node N``).

Two recipes fill the knobs left at None (``RECIPES``; an explicit flag always wins):

* ``paper`` (GPUs): the official ColorMAE config ``colormae-base_upernet_8xb2-amp-160k_ade20k-512x512``
  (mmseg): ADE20K (150 classes, label 0 ignored), features of blocks [3, 5, 7, 11], neck rescales
  [4, 2, 1, 0.5], UperNet (768 channels for ViT-B = the encoder width; 1024 for ViT-L) + auxiliary
  FCN (256 channels, loss weight 0.4), drop path 0.1, AdamW lr 1e-4, betas (0.9, 0.999), weight
  decay 0.05, layer decay 0.65, linear warmup 1500 iterations then poly decay to 0 at 160k, batch
  16 (8 GPUs x 2: ``--batch-size 2`` under torchrun), crop 512, test images resized to a 512 short
  side, sliding-window inference (crop 512, stride 341), mIoU. Use ``--amp bf16`` for mixed precision.
* ``cpu`` (this machine, Penn-Fudan): 2 classes (background / person, fixed split: the first 120
  images by name train, the last 50 test), 128-px crops, the encoder's grid kept (a 32-px CIFAR
  encoder with patch 2 gets patch 8: see ``colormae.models.backbone``), head width = encoder width.

The paper's 8-GPU run::

    torchrun --nproc_per_node 8 -m colormae segment --encoder RUN_DIR --data-root /data \\
        --batch-size 2 --amp bf16 --output-dir results/segment/ade20k
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.optim import create_optimizer_v2

from ..data.dense import (
    IGNORE_INDEX,
    SEG_DATA,
    SEG_NUM_CLASSES,
    SegmentationData,
    TrainCrops,
    build_segmentation,
    rescale_factor,
    resize_normalize,
)
from ..data.samplers import GlobalBatchSampler, SeededSamples
from ..files import load_checkpoint, project_path, read_json
from ..models.backbone import encoder_width_tokens, transfer_export
from ..models.upernet import UperNetViT, confusion_matrix, iou_from_confusion, predict_slide, predict_whole
from ..run.artifacts import load_encoder
from ..run.config import RunConfig, check_choice, check_positive, knob
from ..run.rundir import LAST
from ..run.scaffold import adamw_impl, adamw_options, start_run
from ..runtime import DistInfo, autocast, grad_scaler, seed_step, wrap_ddp

log = logging.getLogger(__name__)

RECIPES = {
    "paper": dict(data="ade20k", crop_size=512, keep_grid=False,
                  iterations=160_000, batch_size=16, warmup_iters=1500, eval_every=16_000),
    # sized from measurements: nano encoder, one idle core: ~0.75 s CPU per iteration (batch 8), ~5 s to
    # evaluate 50 test images: ~1-2.7 min per run on 2 cores (docs/results.md)
    "cpu": dict(data="pennfudan", crop_size=128, keep_grid=True, head_channels=32,
                iterations=200, batch_size=8, warmup_iters=20, eval_every=0),
}
AUX_WEIGHT = 0.4
MAX_UNLABELED_BATCHES = 5  # this many batches in a row without a labelled pixel: the masks are wrong
BETAS = (0.9, 0.999)
WARMUP_START = 1e-6  # mmseg's LinearLR start_factor


@dataclass
class SegmentConfig(RunConfig):
    # the classification data fields --dataset and --pipeline are not this engine's; configs saved
    # before they were split off still resume (their values are simply not compared)
    RETIRED_FIELDS: ClassVar[tuple[str, ...]] = ("dataset", "pipeline")
    encoder: str | None = knob(None, "pretraining run dir, encoder.pth, or checkpoint-*.pth", group="model",
                               input="pretrain")
    recipe: str = knob("paper", "fills the knobs left unset: 'paper' (ADE20K, GPUs) or 'cpu' (Penn-Fudan)",
                       choices=tuple(RECIPES), group="optimization")
    data: str | None = knob(None, "pennfudan (2 classes, fixed split), ade20k (ADEChallengeData2016 layout) or "
                            "folder (<data-root>/{images,masks}/{train,val}/); --dataset belongs to the "
                            "classification engines", choices=SEG_DATA, group="data")
    num_classes: int | None = knob(None, "folder: required; others: a check", group="data")
    skip_corrupt: bool = knob(False, "ade20k / folder: skip (and name) image or mask files that cannot be opened "
                              "instead of stopping", group="data", experiment=False)
    max_corrupt_fraction: float = knob(0.01, "with --skip-corrupt: stop when more than this fraction of the "
                                       "images is unreadable", group="data", experiment=False)
    train_length: int | None = knob(None, "an evenly spaced subset of the training images", group="data")
    test_length: int | None = knob(None, "an evenly spaced subset of the test images", group="data")
    crop_size: int | None = knob(None, "training crop and sliding window (paper 512)", group="data")
    test_scale: int | None = knob(None, "short side images are resized to (long side <= 4x; default: the crop "
                                  "size); training rescales it by 0.5-2x", group="data")
    cat_max_ratio: float = knob(0.75, "re-draw a training crop (up to 10 times) while one class covers more than "
                                "this fraction", group="data")
    keep_grid: bool | None = knob(None, "resample the patch embedding so that the crop has the encoder's token "
                                  "grid (else: keep the patch size, interpolate positions)", group="model")
    drop_path: float = knob(0.1, "stochastic depth rate", group="model")
    head_channels: int | None = knob(None, "UperNet width (default: the encoder width, 768 for ViT-B)",
                                     group="model")
    aux_channels: int | None = knob(None, "auxiliary FCN width (default: min(256, width / 3))", group="model")
    iterations: int | None = knob(None, "optimizer steps (paper 160k)", group="optimization")
    batch_size: int | None = knob(None, "images per process (paper 16 = 8 GPUs x 2)", group="optimization")
    lr: float = knob(1e-4, "AdamW peak learning rate", group="optimization")
    weight_decay: float = knob(0.05, "AdamW weight decay", group="optimization")
    layer_decay: float = knob(0.65, "layer-wise lr decay", group="optimization")
    warmup_iters: int | None = knob(None, "linear warmup, then poly decay (power 1) to 0", group="optimization")
    slide_stride: int | None = knob(None, "sliding-window stride at test time (default 2/3 of the crop; 0: "
                                    "whole-image inference)",
                                    group="evaluation")
    eval_every: int | None = knob(None, "iterations between test evaluations (0: only at the end)",
                                  group="evaluation")
    output_dir: str = knob("results/segment/default", "the run directory (relative paths: from the repository "
                           "root)", experiment=False, path=True)


def resolve_defaults(cfg: SegmentConfig) -> SegmentConfig:
    """Fill the None knobs from ``cfg.recipe``; test scale = crop and window stride = 2/3 crop
    (mmseg's 512 and 341) unless given."""
    check_choice("recipe", cfg.recipe, tuple(RECIPES))
    cfg = replace(cfg, **{k: v for k, v in RECIPES[cfg.recipe].items() if getattr(cfg, k) is None})
    return replace(cfg, test_scale=cfg.test_scale or cfg.crop_size,
                   slide_stride=cfg.slide_stride if cfg.slide_stride is not None else cfg.crop_size * 2 // 3)


def validate(cfg: SegmentConfig) -> None:
    """Everything checkable before the encoder or data are touched."""
    if cfg.encoder is None:
        raise ValueError("encoder is required: a pretraining run directory, encoder.pth or checkpoint")
    check_choice("data", cfg.data, SEG_DATA)
    check_positive(cfg, "crop_size", "test_scale", "iterations", "batch_size", "lr", "train_length", "test_length",
                   "head_channels", "aux_channels", "num_classes")
    check_positive(cfg, "weight_decay", "warmup_iters", "slide_stride", "eval_every",
                   allow_zero=("weight_decay", "warmup_iters", "slide_stride", "eval_every"))
    if cfg.data == "folder" and cfg.num_classes is None:
        raise ValueError("data='folder' needs num_classes (the classes in the masks; 255 = ignore)")
    if cfg.data in SEG_NUM_CLASSES and cfg.num_classes not in (None, SEG_NUM_CLASSES[cfg.data]):
        raise ValueError(f"num_classes={cfg.num_classes}, but {cfg.data} has {SEG_NUM_CLASSES[cfg.data]}")
    if cfg.slide_stride > cfg.crop_size:
        raise ValueError(f"slide_stride={cfg.slide_stride} > crop_size={cfg.crop_size} would skip pixels")
    if not 0 < cfg.layer_decay <= 1 or not 0 <= cfg.drop_path < 1 or not 0 < cfg.cat_max_ratio <= 1:
        raise ValueError(f"need 0 < layer_decay <= 1, 0 <= drop_path < 1, 0 < cat_max_ratio <= 1; got "
                         f"{cfg.layer_decay}, {cfg.drop_path}, {cfg.cat_max_ratio}")


def transfer_for(export: dict, cfg: SegmentConfig) -> dict:
    """The encoder adapted to ``cfg.crop_size`` (keep_grid: patch = crop / pretraining grid)."""
    kw = export["timm_kwargs"]
    patch = None
    if cfg.keep_grid:
        grid = kw["img_size"] // kw["patch_size"]
        if cfg.crop_size % grid:
            raise ValueError(f"keep_grid: crop_size={cfg.crop_size} is not a multiple of the encoder's "
                             f"{grid}x{grid} grid; choose a crop divisible by {grid}")
        patch = cfg.crop_size // grid
    return transfer_export(export, cfg.crop_size, patch)


def check_scales(export: dict, cfg: SegmentConfig) -> None:
    """The test images (short side ``test_scale``) must give the pyramid's coarsest level (stride
    2 x patch) at least one pixel: ValueError saying which flag to change."""
    patch = export["timm_kwargs"]["patch_size"]
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    if cfg.test_scale < 2 * patch:
        raise ValueError(f"test_scale={cfg.test_scale} is too small for the encoder at crop_size={cfg.crop_size} "
                         f"({patch}-px patches; the coarsest feature map has stride {2 * patch}): use --test-scale "
                         f">= {2 * patch}, or a smaller --crop-size")


def build_model(export: dict, num_classes: int, cfg: SegmentConfig) -> UperNetViT:
    width = export["timm_kwargs"]["embed_dim"]
    channels = cfg.head_channels or width
    aux = cfg.aux_channels or min(256, max(16, width // 3))
    return UperNetViT(export, num_classes, channels, aux, cfg.drop_path)


def lr_factor(step: int, cfg: SegmentConfig) -> float:
    """mmseg's schedule: linear warmup from 1e-6 over warmup_iters, then poly (power 1) to 0."""
    if step < cfg.warmup_iters:
        return WARMUP_START + (1 - WARMUP_START) * step / cfg.warmup_iters
    return max(0.0, 1 - (step - cfg.warmup_iters) / max(1, cfg.iterations - cfg.warmup_iters))


@torch.no_grad()
def predict_labels(model: UperNetViT, image: torch.Tensor, *, test_scale: int, crop: int, stride: int,
                   device: torch.device | str = "cpu", amp: str = "none") -> torch.Tensor:
    """Class map [H, W] (on the CPU) of a uint8 [3, H, W] image: resized to the test scale, sliding
    windows (stride 0: the whole image at once), logits resized back to the image's size."""
    device = torch.device(device)
    img = resize_normalize(image, rescale_factor(*image.shape[1:], test_scale))[None].to(device)
    with autocast(amp, device):
        logits = predict_slide(model, img, crop, stride) if stride else predict_whole(model, img)
    return F.interpolate(logits.float(), size=image.shape[1:], mode="bilinear", align_corners=False).argmax(1)[0].cpu()


@torch.no_grad()
def evaluate(model: UperNetViT, data: SegmentationData, *, test_scale: int, crop: int, stride: int,
             device: torch.device, amp: str = "none", info: DistInfo | None = None) -> dict:
    """mIoU on ``data``: each image resized to the test scale, predicted by sliding windows (stride 0:
    whole image), logits resized back to the label's size; each rank takes a strided share."""
    info = info or DistInfo()
    model.eval()
    cm = torch.zeros(data.num_classes, data.num_classes, dtype=torch.int64)
    for i in range(info.rank, len(data), info.world_size):
        _, image, label = data[i]
        pred = predict_labels(model, image, test_scale=test_scale, crop=crop, stride=stride, device=device, amp=amp)
        cm += confusion_matrix(pred, label, data.num_classes)
    if info.world_size > 1:
        cm = cm.to(device)
        torch.distributed.all_reduce(cm)
    return {**iou_from_confusion(cm.cpu()), "confusion": cm.cpu().tolist()}


def run(cfg: SegmentConfig) -> dict:
    """Fine-tune UperNet on ``cfg.encoder``; returns (and writes) the summary with mIoU and per-class IoU."""
    cfg = resolve_defaults(cfg)
    validate(cfg)
    with start_run(cfg, "segment") as r:
        if r.finished is not None:
            return r.finished
        info, device = r.info, r.device
        # encoder, transfer and data first: a bad path, crop or mask fails here, before any training
        export = transfer_for(load_encoder(cfg.encoder), cfg)
        check_scales(export, cfg)
        corrupt = dict(skip_corrupt=cfg.skip_corrupt, max_corrupt_fraction=cfg.max_corrupt_fraction)
        train_set = build_segmentation(cfg.data, cfg.data_root, "train", cfg.num_classes, cfg.train_length, **corrupt)
        test_set = build_segmentation(cfg.data, cfg.data_root, "test", cfg.num_classes, cfg.test_length, **corrupt)
        n_cls = train_set.num_classes
        crops = TrainCrops(train_set, crop=cfg.crop_size, scale=cfg.test_scale, cat_max_ratio=cfg.cat_max_ratio)
        sampler = GlobalBatchSampler(len(train_set), cfg.batch_size * info.world_size, info, cfg.seed)
        loader = torch.utils.data.DataLoader(SeededSamples(crops), batch_sampler=sampler, num_workers=cfg.num_workers,
                                             pin_memory=device.type == "cuda")
        steps_per_epoch = len(train_set) // (cfg.batch_size * info.world_size)

        torch.manual_seed(cfg.seed)  # neck and heads
        model = build_model(export, n_cls, cfg)
        if info.world_size > 1 and device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # mmseg's SyncBN: 2 images per GPU
        model.to(device)
        # timm's factory: layer-wise lr decay from the model's group_matcher (embeddings, blocks, then neck
        # and heads at full lr) as each group's lr_scale; no weight decay on norms, biases, positions, [CLS]
        optimizer = create_optimizer_v2(model, opt="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay,
                                        layer_decay=cfg.layer_decay, betas=BETAS, **adamw_options(device))
        amp = r.precision(encoder_width_tokens(model))  # resolved once (and recorded)
        scaler = grad_scaler(amp, device)
        step, epoch, batch_in_epoch, ckpt = r.restore(("evals",), model, optimizer, scaler)
        evals = ckpt["evals"] if ckpt is not None else []
        ddp_model = wrap_ddp(model, info, device)
        r.start_logging(cfg, step, cfg.iterations, "segment")
        criterion = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)

        def state() -> dict:
            return r.training_state(model, optimizer, scaler, step, epoch, batch_in_epoch, evals=evals,
                                    num_classes=n_cls, transfer=export["transfer"])

        def run_eval() -> dict:
            ev = evaluate(model, test_set, test_scale=cfg.test_scale, crop=cfg.crop_size, stride=cfg.slide_stride,
                          device=device, amp=amp, info=info)
            log.info("step %d: mIoU %.4f, per class %s", step, ev["miou"], [round(x, 4) for x in ev["iou"]])
            if info.is_main:
                r.metrics.write({"step": step, "test_miou": ev["miou"], "test_acc": ev["acc"]})
            return ev

        stop, unlabeled_batches = False, 0
        while step < cfg.iterations and not stop:
            sampler.set_epoch(epoch, batch_in_epoch)
            model.train()
            for imgs, labels in loader:
                labelled = bool((labels != IGNORE_INDEX).any())  # on the loader's CPU tensor: no device sync
                imgs, labels = imgs.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                for g in optimizer.param_groups:
                    g["lr"] = cfg.lr * g.get("lr_scale", 1.0) * lr_factor(step, cfg)
                seed_step(cfg.seed, step, info.rank)
                with autocast(amp, device):
                    out, aux = ddp_model(imgs)
                    if labelled:
                        loss = criterion(out.float(), labels) + AUX_WEIGHT * criterion(aux.float(), labels)
                        unlabeled_batches = 0
                    else:  # no labelled pixel: mmseg's loss is 0 there (cross-entropy's mean would be NaN)
                        loss = 0.0 * (out.float().sum() + aux.float().sum())
                        unlabeled_batches += 1
                if unlabeled_batches >= MAX_UNLABELED_BATCHES:
                    raise ValueError(f"{unlabeled_batches} batches in a row hold no labelled pixel (every label is "
                                     f"the ignore value {IGNORE_INDEX}): the {cfg.data} masks carry no class. Check "
                                     "the mask encoding (class indices 0..num_classes-1, 255 = ignore) or --data-root")
                r.optimizer_step(loss, epoch, step, optimizer, scaler)
                step, batch_in_epoch = step + 1, batch_in_epoch + 1
                r.log_step(step, epoch + batch_in_epoch / steps_per_epoch, loss,
                           max(g["lr"] for g in optimizer.param_groups), imgs.shape[0] * info.world_size)
                if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.iterations:
                    r.read_losses()  # a bad loss stops here, before an evaluation of its weights is recorded
                    evals.append({"step": step, **run_eval()})
                    model.train()
                if step >= cfg.iterations or r.should_stop(step):
                    stop = step < cfg.iterations
                    break
                if r.checkpoint_due():
                    r.save(state)
            else:
                epoch, batch_in_epoch = epoch + 1, 0
                r.end_epoch(epoch, step, state)
        r.save(state)  # reads the queued losses first
        finished = step >= cfg.iterations
        final = run_eval()
        if finished:
            evals.append({"step": step, **final})
        summary = r.summary_base(
            cfg.iterations, step, finished, miou=final["miou"], iou=dict(zip(train_set.class_names, final["iou"])),
            acc=final["acc"], final_eval=final, evals=evals, recipe=cfg.recipe, transfer=export["transfer"],
            adamw=adamw_impl(device),
            encoder={k: export.get(k) for k in ("timm_name", "timm_kwargs", "mae_config")},
            num_classes=n_cls, num_train=len(train_set), num_test=len(test_set),
            num_params=sum(p.numel() for p in model.parameters()))
        return r.finish(summary)








def load_segmenter(run_dir: str | Path) -> tuple[UperNetViT, SegmentConfig]:
    """The fine-tuned model of a segmentation run (its checkpoint-last.pth; the encoder it started
    from must still exist) in eval mode, and the run's config."""
    run_dir = project_path(run_dir)
    saved = read_json(run_dir / "config.json")
    names = {f.name for f in dataclasses.fields(SegmentConfig)}
    cfg = resolve_defaults(SegmentConfig(**{k: v for k, v in saved.items() if k in names}))
    ckpt = load_checkpoint(run_dir / LAST, required=("model", "num_classes"))
    model = build_model(transfer_for(load_encoder(cfg.encoder), cfg), ckpt["num_classes"], cfg)
    model.load_state_dict(ckpt["model"])
    return model.eval(), cfg






CONFIG = SegmentConfig  # the engine's config: colormae.engines.launch builds its command line from it
