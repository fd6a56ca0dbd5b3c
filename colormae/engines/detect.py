"""Object detection and instance segmentation with a pretrained encoder: ViTDet's Mask R-CNN
(``colormae.models.vitdet``) fine-tuned end to end, box and mask AP by COCOeval (``colormae.data.coco``).
CLI: ``colormae detect --encoder RUN_DIR`` (or under ``torchrun``).

Defaults are the paper's recipe (ViTDet ``mask_rcnn_vitdet_b_100ep``, large-scale jitter), for GPUs::

    --data coco --data-root /coco --img-size 1024 --epochs 100 --batch-size 8   # x 8 GPUs = 64 images

(``--img-size 768``: the paper's Table 1 and the left half of Table 2b). The CPU scale is
Penn-Fudan (``--data pennfudan``, 1 class; see ``CPU_DEFAULTS`` and ``run_pennfudan_experiment``).
Optimisation as ViTDet: AdamW, lr 1e-4 at 64 images, weight decay 0.1 (none on norms, biases and
position tables), layer-wise lr decay 0.7, linear warmup, lr x 0.1 at 88.9 % and 96.3 % of the steps.
Evaluation runs once, at the end, on rank 0 (the other ranks wait).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn as nn
from timm.scheduler import MultiStepLRScheduler
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..data.coco import CocoInstances, coco_evaluate, evenly_spaced, instances_to_coco, predictions_to_results
from ..data.dense import instance_targets, load_pennfudan
from ..data.samplers import GlobalBatchSampler, SeededSamples
from ..files import load_checkpoint, project_path
from ..models.backbone import encoder_width_tokens
from ..models.vitdet import backbone_from_export, build_maskrcnn
from ..run.artifacts import load_encoder
from ..run.config import RunConfig, check_choice, check_positive, knob
from ..run.rundir import LAST, RunDir
from ..run.scaffold import adamw_impl, adamw_options, start_run
from ..runtime import Timer, autocast, grad_scaler, seed_step, wrap_ddp

log = logging.getLogger(__name__)
DATA = ("pennfudan", "coco")
DECAY_AT = (0.889, 0.963)  # ViTDet's 100-epoch schedule: lr x 0.1 at epochs 88.9 and 96.3
MEAN_PIXEL = (124, 116, 104)  # crops are padded with the mean colour: 0 after normalisation


@dataclass
class DetectConfig(RunConfig):
    # the classification data fields --dataset and --pipeline are not this engine's; configs saved
    # before they were split off still resume (their values are simply not compared)
    RETIRED_FIELDS: ClassVar[tuple[str, ...]] = ("dataset", "pipeline")
    encoder: str | None = knob(None, "pretraining run dir, encoder.pth, or checkpoint-*.pth", group="model",
                               input="pretrain")
    data: str = knob("coco", "detection data: coco (<data-root>/{split}/, annotations/instances_{split}.json) or "
                     "pennfudan (1 class; fixed split); --dataset belongs to the classification engines",
                     choices=DATA, group="data")
    train_split: str = knob("train2017", "coco: training split", group="data")
    test_split: str = knob("val2017", "coco: evaluation split", group="data")
    skip_corrupt: bool = knob(False, "coco: skip (and name) image files that cannot be opened instead of "
                              "stopping", group="data", experiment=False)
    max_corrupt_fraction: float = knob(0.01, "with --skip-corrupt: stop when more than this fraction of the "
                                       "images is unreadable", group="data", experiment=False)
    train_length: int | None = knob(None, "an evenly spaced subset of the training images", group="data")
    test_length: int | None = knob(None, "an evenly spaced subset of the test images", group="data")
    img_size: int = knob(1024, "input square (ViTDet 1024; the paper's Table 1: 768)", group="data")
    jitter_min: float = knob(0.1, "large-scale jitter: smallest scale", group="data")
    jitter_max: float = knob(2.0, "large-scale jitter: largest scale", group="data")
    patch_size: int | None = knob(None, "backbone patch size; the encoder's patch embedding is resampled to it "
                                  "(default: the encoder's)", group="model")
    window_size: int = knob(14, "window attention size in all blocks but the 4 global ones (0: all global)",
                            group="model")
    drop_path: float = knob(0.1, "stochastic depth rate", group="model")
    fpn_channels: int = knob(256, "pyramid and head width", group="model")
    roi_batch: int = knob(512, "sampled proposals per image for the box head", group="model")
    test_proposals: int = knob(1000, "RPN proposals per image at test time", group="evaluation")
    epochs: int = knob(100, "training epochs", group="optimization")
    batch_size: int = knob(8, "images per process", group="optimization")
    blr: float = knob(4e-4, "lr = blr x global batch / 256 (ViTDet: 1e-4 at 64 images)", group="optimization")
    weight_decay: float = knob(0.1, "AdamW weight decay", group="optimization")
    layer_decay: float = knob(0.7, "layer-wise lr decay", group="optimization")
    warmup_steps: int = knob(250, "linear warmup steps", group="optimization")
    output_dir: str = knob("results/detect/default", "the run directory (relative paths: from the repository "
                           "root)", experiment=False, path=True)


def validate(cfg: DetectConfig) -> None:
    """Everything checkable before encoder, data or model are touched."""
    if cfg.encoder is None:
        raise ValueError("encoder is required: a pretraining run directory, encoder.pth or checkpoint")
    check_choice("data", cfg.data, DATA)
    if cfg.skip_corrupt and cfg.data == "pennfudan":
        raise ValueError("skip_corrupt applies to data='coco': Penn-Fudan is a fixed set read whole (an unreadable "
                         "file there is a broken copy: copy it again)")
    check_positive(cfg, "train_length", "test_length", "img_size", "patch_size", "fpn_channels", "roi_batch",
                   "test_proposals", "epochs", "batch_size", "blr")
    check_positive(cfg, "window_size", "weight_decay", "warmup_steps",
                   allow_zero=("window_size", "weight_decay", "warmup_steps"))
    if not 0 < cfg.jitter_min <= cfg.jitter_max:
        raise ValueError(f"need 0 < jitter_min <= jitter_max, got {cfg.jitter_min}, {cfg.jitter_max}")
    if not 0 < cfg.layer_decay <= 1 or not 0 <= cfg.drop_path < 1:
        raise ValueError(f"need 0 < layer_decay <= 1 and 0 <= drop_path < 1, got {cfg.layer_decay}, {cfg.drop_path}")
    if cfg.patch_size is not None and (cfg.img_size % cfg.patch_size or cfg.patch_size % 4):
        raise ValueError(f"patch_size={cfg.patch_size} must divide img_size={cfg.img_size} and be a multiple of 4 "
                         "(the pyramid's finest level has stride patch_size / 4)")


# -- data ---------------------------------------------------------------------------------------------

class PennFudanInstances(torch.utils.data.Dataset):
    """Penn-Fudan's fixed split as detection samples (image, target), label 1 = person."""

    def __init__(self, root, split: str, length: int | None = None):
        samples = evenly_spaced(load_pennfudan(root, split), length)
        self.items = [(s.image, *instance_targets(s.instances)) for s in samples]
        self.cat_ids, self.skipped = [1], {}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        image, masks, boxes = self.items[i]
        return image, {"boxes": boxes, "labels": torch.ones(len(boxes), dtype=torch.int64),
                       "masks": masks.to(torch.uint8), "image_id": i + 1}

    def coco_gt(self):
        return instances_to_coco([(i + 1, *img.shape[1:], masks) for i, (img, masks, _) in enumerate(self.items)])


def build_data(cfg: DetectConfig, split: str):
    train = split == "train"
    length = cfg.train_length if train else cfg.test_length
    if cfg.data == "pennfudan":
        return PennFudanInstances(None if cfg.data_root is None else project_path(cfg.data_root), split, length)
    if cfg.data_root is None:
        raise ValueError("data=coco needs --data-root (the folder with train2017/, val2017/, annotations/)")
    return CocoInstances(project_path(cfg.data_root), cfg.train_split if train else cfg.test_split, length, train,
                         skip_corrupt=cfg.skip_corrupt, max_corrupt_fraction=cfg.max_corrupt_fraction)


class Jittered(torch.utils.data.Dataset):
    """Large-scale jitter (ViTDet): flip, rescale by U(jitter_min, jitter_max) x the factor that fits
    the image into ``img_size``, crop or pad (mean colour) to an ``img_size`` square; boxes and masks
    follow (torchvision.transforms.v2), instances cropped away are dropped."""

    def __init__(self, data, cfg: DetectConfig):
        self.data = data
        s = cfg.img_size
        self.transform = v2.Compose([
            v2.RandomHorizontalFlip(), v2.ScaleJitter((s, s), (cfg.jitter_min, cfg.jitter_max), antialias=True),
            v2.RandomCrop(s, pad_if_needed=True, fill={tv_tensors.Image: MEAN_PIXEL, "others": 0}),
            v2.SanitizeBoundingBoxes()])

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        image, t = self.data[i]
        boxes = tv_tensors.BoundingBoxes(t["boxes"], format="XYXY", canvas_size=tuple(image.shape[1:]))
        t = {**t, "boxes": boxes, "masks": tv_tensors.Mask(t["masks"])}
        image, t = self.transform(tv_tensors.Image(image), t)
        return image.as_subclass(torch.Tensor), {**t, "boxes": t["boxes"].as_subclass(torch.Tensor),
                                                 "masks": t["masks"].as_subclass(torch.Tensor)}


def _to_device(images, targets, device):
    images = [img.to(device, non_blocking=True).float() / 255 for img in images]
    targets = [{k: t[k].to(device, non_blocking=True) for k in ("boxes", "labels", "masks")} for t in targets]
    return images, targets


# -- model and optimisation ------------------------------------------------------------------------

def available_memory(device: torch.device) -> int:
    """Bytes free for tensors on ``device`` (CUDA: free device memory; CPU: available RAM)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: do not refuse


def check_tokens(export: dict, cfg: DetectConfig, device: torch.device) -> None:
    """The backbone's token grid (img_size / patch) against memory, before the model is built: one
    global attention layer holds batch x heads x tokens^2 scores. Too many: ValueError naming the
    flags to change (--patch-size, --img-size, --batch-size), instead of an allocator error."""
    kw = export["timm_kwargs"]
    patch = cfg.patch_size or kw["patch_size"]
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    tokens = (cfg.img_size // patch) ** 2
    need = cfg.batch_size * kw.get("num_heads", 1) * tokens ** 2 * 4
    free = available_memory(device)
    if need <= free:
        return
    fits = [q for q in range(4, cfg.img_size + 1, 4) if cfg.img_size % q == 0
            and cfg.batch_size * kw.get("num_heads", 1) * (cfg.img_size // q) ** 4 * 4 <= free]
    hint = f"--patch-size {fits[0]}" if fits else "a smaller --img-size"
    raise ValueError(f"img_size={cfg.img_size} with {patch}-px patches is {cfg.img_size // patch}x"
                     f"{cfg.img_size // patch} = {tokens} tokens per image: one global attention layer needs "
                     f"{need / 2**30:.1f} GiB at batch {cfg.batch_size}, {free / 2**30:.1f} GiB are free on {device}. "
                     f"Pass {hint} (the patch embedding is resampled), a smaller --img-size or --batch-size")


def build_model(export: dict, num_classes: int, cfg: DetectConfig) -> nn.Module:
    backbone = backbone_from_export(export, img_size=cfg.img_size, patch_size=cfg.patch_size,
                                    window_size=cfg.window_size, drop_path=cfg.drop_path)
    return build_maskrcnn(backbone, num_classes + 1, img_size=cfg.img_size, fpn_channels=cfg.fpn_channels,
                          roi_batch=cfg.roi_batch, rpn_post_nms_test=cfg.test_proposals)


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float) -> list[dict]:
    """ViTDet's groups: block i's lr x decay^(depth - i), the patch and position embeddings
    x decay^(depth + 1), pyramid and heads x 1 (timm's schedulers apply ``lr_scale``); no weight
    decay on 1-D parameters (norms, biases) and on the position tables."""
    depth = len(model.backbone.backbone.blocks)
    groups: dict = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = depth + 1
        if name.startswith("backbone.backbone."):
            sub = name.split(".")[2:]
            layer = int(sub[1]) + 1 if sub[0] == "blocks" else 0
        no_wd = p.ndim == 1 or name.endswith("pos_embed") or ".rel_pos_" in name
        group = groups.setdefault((layer, no_wd), {"params": [], "weight_decay": 0.0 if no_wd else weight_decay,
                                                   "lr_scale": layer_decay ** (depth + 1 - layer)})
        group["params"].append(p)
    return list(groups.values())


@torch.no_grad()
def predict(model: nn.Module, data, device: torch.device, amp: str = "none", batch_size: int = 4,
            indices=None) -> list[tuple[int, dict]]:
    """(image_id, torchvision output: boxes, labels, scores, masks) per image of ``data``, on the CPU."""
    model.eval()
    indices = list(range(len(data)) if indices is None else indices)
    out = []
    for start in range(0, len(indices), batch_size):
        items = [data[i] for i in indices[start:start + batch_size]]
        with autocast(amp, device):
            preds = model([img.to(device).float() / 255 for img, _ in items])
        for (_, t), o in zip(items, preds):
            out.append((t["image_id"], {k: (v.float() if v.is_floating_point() else v).cpu() for k, v in o.items()}))
    return out


def evaluate(model: nn.Module, data, device: torch.device, amp: str = "none", batch_size: int = 4) -> dict:
    """Box and mask AP / AP50 of ``model`` on ``data`` (COCOeval against ``data.coco_gt()``)."""
    preds = predict(model, data, device, amp, batch_size)
    results = [r for image_id, pred in preds for r in predictions_to_results(image_id, pred, data.cat_ids)]
    return coco_evaluate(data.coco_gt(), results, img_ids=[image_id for image_id, _ in preds])


# -- the engine ---------------------------------------------------------------------------------------

def run(cfg: DetectConfig) -> dict:
    validate(cfg)
    with start_run(cfg, "detect") as r:
        if r.finished is not None:
            return r.finished
        info, device = r.info, r.device
        export = load_encoder(cfg.encoder)  # encoder and data first: bad input fails before the model
        check_tokens(export, cfg, device)
        train_set, test_set = build_data(cfg, "train"), build_data(cfg, "test")
        global_batch = cfg.batch_size * info.world_size
        sampler = GlobalBatchSampler(len(train_set), global_batch, info, cfg.seed)
        loader = torch.utils.data.DataLoader(SeededSamples(Jittered(train_set, cfg)), batch_sampler=sampler,
                                             num_workers=cfg.num_workers, collate_fn=lambda b: tuple(zip(*b)),
                                             pin_memory=device.type == "cuda")
        steps_per_epoch = len(train_set) // global_batch
        total_steps = steps_per_epoch * cfg.epochs

        torch.manual_seed(cfg.seed)  # pyramid and head init
        model = build_model(export, len(train_set.cat_ids), cfg).to(device)
        lr = cfg.blr * global_batch / 256
        optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay, cfg.layer_decay), lr=lr,
                                      **adamw_options(device))
        scheduler = MultiStepLRScheduler(optimizer, [round(f * total_steps) for f in DECAY_AT], 0.1,
                                         warmup_t=min(cfg.warmup_steps, total_steps - 1), warmup_lr_init=lr * 1e-3,
                                         warmup_prefix=False, t_in_epochs=False)
        amp = r.precision(encoder_width_tokens(model))  # resolved once (and recorded)
        scaler = grad_scaler(amp, device)
        step, epoch, batch_in_epoch, ckpt = r.restore((), model, optimizer, scaler)
        scheduler.step_update(num_updates=step)
        ddp_model = wrap_ddp(model, info, device)
        r.start_logging(cfg, step, total_steps, "detect")

        def state() -> dict:
            return r.training_state(model, optimizer, scaler, step, epoch, batch_in_epoch,
                                    num_classes=len(train_set.cat_ids), cat_ids=train_set.cat_ids)

        stop = False
        while epoch < cfg.epochs and not stop:
            sampler.set_epoch(epoch, batch_in_epoch)
            model.train()
            for images, targets in loader:
                images, targets = _to_device(images, targets, device)
                seed_step(cfg.seed, step, info.rank)  # drop path, proposal sampling
                with autocast(amp, device):
                    losses = ddp_model(images, targets)
                loss = sum(losses.values())
                r.optimizer_step(loss, epoch, step, optimizer, scaler)
                step, batch_in_epoch = step + 1, batch_in_epoch + 1
                scheduler.step_update(num_updates=step)
                head_lr = max(g["lr"] for g in optimizer.param_groups)  # pyramid and heads: no layer decay
                r.log_step(step, epoch + batch_in_epoch / steps_per_epoch, loss, head_lr, len(images) * info.world_size,
                           **losses)  # tensors: read at the log steps only
                if step < total_steps and r.should_stop(step):
                    stop = True
                    break
                if r.checkpoint_due():
                    r.save(state)
            if not stop:
                epoch, batch_in_epoch = epoch + 1, 0
                r.end_epoch(epoch, step, state)
        if stop:
            r.save(state)
        finished = epoch >= cfg.epochs
        ap, eval_timer = {}, Timer()
        if info.is_main and finished:
            ap = evaluate(model, test_set, device, amp, cfg.batch_size)
            r.metrics.write({"step": step, "epoch": epoch, **ap})
            log.info("box AP %.4f (AP50 %.4f), mask AP %.4f (AP50 %.4f)", ap["ap_box"], ap["ap50_box"],
                     ap["ap_mask"], ap["ap50_mask"])
        if info.world_size > 1:
            torch.distributed.barrier()
        summary = r.summary_base(
            total_steps, step, finished, **ap, eval_wall_s=eval_timer.elapsed, data=cfg.data,
            encoder={k: export.get(k) for k in ("timm_name", "timm_kwargs", "mae_config")}, global_batch=global_batch,
            lr=lr, adamw=adamw_impl(device), num_classes=len(train_set.cat_ids), num_train=len(train_set),
            num_test=len(test_set),
            skipped_annotations={"train": train_set.skipped, "test": test_set.skipped},
            num_params=sum(p.numel() for p in model.parameters()))
        return r.finish(summary)


# -- the CPU-scale experiment ---------------------------------------------------------------------







# -- looking at results ------------------------------------------------------------------------------



def load_detector(run_dir: str | Path) -> tuple[nn.Module, DetectConfig]:
    """The trained Mask R-CNN of a detection run (its config and checkpoint-last.pth), in eval mode."""
    rd = RunDir(project_path(run_dir))
    saved = rd.read_config()
    if saved is None:
        raise FileNotFoundError(f"{rd.path} holds no detection run (no config.json)")
    names = {f.name for f in dataclasses.fields(DetectConfig)}
    cfg = DetectConfig(**{k: v for k, v in saved.items() if k in names})
    ckpt = load_checkpoint(rd.file(LAST), required=("model", "num_classes"))
    model = build_model(load_encoder(cfg.encoder), ckpt["num_classes"], cfg)
    model.load_state_dict(ckpt["model"])
    return model.eval(), cfg




CONFIG = DetectConfig  # the engine's config: colormae.engines.launch builds its command line from it
