"""Object detection and instance segmentation with a pretrained encoder: ViTDet's Mask R-CNN
(``colormae.vitdet``) fine-tuned end to end, box and mask AP by COCOeval (``colormae.coco``).
CLI: ``python -m colormae.detect --encoder RUN_DIR`` (or under ``torchrun``).

Defaults are the paper's recipe (ViTDet ``mask_rcnn_vitdet_b_100ep``, large-scale jitter), for GPUs::

    --data coco --data-root /coco --img-size 1024 --epochs 100 --batch-size 8   # x 8 GPUs = 64 images

(``--img-size 768``: the paper's Table 1 and the left half of Table 2b). The CPU scale is
Penn-Fudan (``--data pennfudan``, 1 class; see ``CPU_DEFAULTS`` and ``run_pennfudan_experiment``).
Optimisation as ViTDet: AdamW, lr 1e-4 at 64 images, weight decay 0.1 (none on norms, biases and
position tables), layer-wise lr decay 0.7, linear warmup, lr x 0.1 at 88.9 % and 96.3 % of the steps.
Evaluation runs once, at the end, on rank 0 (the other ranks wait).
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from timm.scheduler import MultiStepLRScheduler
from torchvision import tv_tensors
from torchvision.transforms import v2

from .coco import CocoInstances, coco_evaluate, evenly_spaced, instances_to_coco, predictions_to_results
from .config import EngineConfig, check_choice, check_positive, config_from_args, knob
from .dense_data import instance_targets, load_pennfudan
from .engine import cli_main, start_run
from .finetune import _seed_step
from .model import untrained_encoder
from .rundir import ENCODER, load_encoder, read_json, save_torch, write_csv
from .runtime import GlobalBatchSampler, SeededSamples, Timer, autocast, grad_scaler, project_path, wrap_ddp
from .vitdet import backbone_from_export, build_maskrcnn

log = logging.getLogger(__name__)
DATA = ("pennfudan", "coco")
DECAY_AT = (0.889, 0.963)  # ViTDet's 100-epoch schedule: lr x 0.1 at epochs 88.9 and 96.3
MEAN_PIXEL = (124, 116, 104)  # crops are padded with the mean colour: 0 after normalisation
CSV_COLUMNS = ["mask", "pretrain_seed", "seed", "ap_box", "ap50_box", "ap_mask", "ap50_mask", "wall_s"]


@dataclass
class DetectConfig(EngineConfig):
    encoder: str | None = knob(None, "pretraining run dir, encoder.pth, or checkpoint-*.pth", group="model",
                               path=True)
    data: str = knob("coco", "detection data: coco (<data-root>/{split}/, annotations/instances_{split}.json) or "
                     "pennfudan (1 class; fixed split); --dataset belongs to the classification engines",
                     choices=DATA, group="data")
    train_split: str = knob("train2017", "coco: training split", group="data")
    test_split: str = knob("val2017", "coco: evaluation split", group="data")
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
    return CocoInstances(project_path(cfg.data_root), cfg.train_split if train else cfg.test_split, length, train)


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
        optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay, cfg.layer_decay), lr=lr)
        scheduler = MultiStepLRScheduler(optimizer, [round(f * total_steps) for f in DECAY_AT], 0.1,
                                         warmup_t=min(cfg.warmup_steps, total_steps - 1), warmup_lr_init=lr * 1e-3,
                                         warmup_prefix=False, t_in_epochs=False)
        scaler = grad_scaler(cfg.amp, device)
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
                _seed_step(cfg.seed, step, info.rank)  # drop path, proposal sampling
                with autocast(cfg.amp, device):
                    losses = ddp_model(images, targets)
                loss = sum(losses.values())
                r.check_loss(loss, epoch, step)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step, batch_in_epoch = step + 1, batch_in_epoch + 1
                scheduler.step_update(num_updates=step)
                head_lr = max(g["lr"] for g in optimizer.param_groups)  # pyramid and heads: no layer decay
                r.log_step(step, epoch + batch_in_epoch / steps_per_epoch, loss, head_lr, len(images) * info.world_size,
                           **{k: v.item() for k, v in losses.items()})
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
            ap = evaluate(model, test_set, device, cfg.amp, cfg.batch_size)
            r.metrics.write({"step": step, "epoch": epoch, **ap})
            log.info("box AP %.4f (AP50 %.4f), mask AP %.4f (AP50 %.4f)", ap["ap_box"], ap["ap50_box"],
                     ap["ap_mask"], ap["ap50_mask"])
        if info.world_size > 1:
            torch.distributed.barrier()
        summary = r.summary_base(
            total_steps, step, finished, **ap, eval_wall_s=eval_timer.elapsed, data=cfg.data,
            encoder={k: export.get(k) for k in ("timm_name", "timm_kwargs", "mae_config")}, global_batch=global_batch,
            lr=lr, num_classes=len(train_set.cat_ids), num_train=len(train_set), num_test=len(test_set),
            skipped_annotations={"train": train_set.skipped, "test": test_set.skipped},
            num_params=sum(p.numel() for p in model.parameters()))
        return r.finish(summary)


# -- the CPU-scale experiment ---------------------------------------------------------------------

# Penn-Fudan on 2 CPU cores: the grid's 32-px patch-2 encoders read 256-px images through a patch
# embedding resampled to 16 px (a 16 x 16 grid, the pretraining grid, so the position embedding is
# unchanged; pyramid strides 4..64 as ViTDet's), narrow heads, 2 images per step. Measured with
# OMP_NUM_THREADS=1 beside other jobs: 1.3-1.8 s per step, ~0.8 s per test image, so 3 epochs (180 steps)
# and evaluation take ~5.3 min per run and the 12 runs (random, green, none x 2 x 2 seeds) ~65 min.
# lr 4e-4 (4x ViTDet's per-image rate): on random_seed0, box AP 0.057 / mask AP 0.012 after 180 steps,
# against 0.038 / 0.004 with lr 1e-4.
CPU_DEFAULTS = dict(data="pennfudan", img_size=256, patch_size=16, fpn_channels=64, roi_batch=64, test_proposals=300,
                    batch_size=2, epochs=3, blr=5.12e-2, warmup_steps=20, checkpoint_minutes=10.0)


def control_encoder(preset: str, seed: int, out: Path) -> Path:
    """The untrained control's encoder (the MAE init a pretraining run with ``seed`` starts from), saved."""
    path = out / "encoders" / f"none_seed{seed}_{preset}.pth"
    if not path.exists():
        save_torch(untrained_encoder(preset, seed, norm_pix_loss=True), path)
    return path


def run_pennfudan_experiment(grid_dir: str = "results/cifar10_grid16", masks: tuple[str, ...] = ("random", "green"),
                             pretrain_seeds: tuple[int, ...] = (0, 1), seeds: tuple[int, ...] = (0, 1),
                             out: str = "results/dense_pennfudan", **overrides) -> Path:
    """Detection fine-tuning of the grid's encoders (``<grid_dir>/runs/<mask>_seed<s>/``) and of the
    untrained control ("none") on Penn-Fudan, ``seeds`` each; resumable (finished runs are read
    back). Writes and returns ``<out>/detection.csv``; encoders not pretrained yet are an error."""
    grid, out_dir = project_path(grid_dir), project_path(out)
    rows, preset = [], None
    for label in (*masks, "none"):
        for ps in pretrain_seeds:
            if label == "none":
                preset = preset or read_json(next((grid / "runs").glob("*_seed*/config.json")))["preset"]
                encoder = control_encoder(preset, ps, out_dir)
            else:
                encoder = grid / "runs" / f"{label}_seed{ps}"
                if not (encoder / ENCODER).is_file():
                    raise FileNotFoundError(f"{encoder / ENCODER} not found: pretrain the grid first "
                                            f"(python -m colormae.experiments cifar10-grid16)")
                preset = preset or read_json(encoder / "config.json")["preset"]
            for seed in seeds:
                cfg = DetectConfig(**{**CPU_DEFAULTS, **overrides, "encoder": str(encoder), "seed": seed,
                                      "resume": "auto", "output_dir": str(out_dir / "runs" / f"{label}_p{ps}_s{seed}")})
                summary = run(cfg)
                rows.append({"mask": label, "pretrain_seed": ps, "seed": seed,
                             **{k: summary.get(k) for k in CSV_COLUMNS[3:7]},
                             "wall_s": summary["wall_time_s"]})  # training and evaluation
    path = out_dir / "detection.csv"
    write_csv(rows, CSV_COLUMNS, path)
    log.info("detection table: %s", path)
    return path


# -- looking at results ------------------------------------------------------------------------------

# The paper's COCO numbers (ViT-B/16 MAE encoders fine-tuned in ViTDet), transcribed: pretraining
# epochs -> mask -> value. Table 1 (right) is box AP at 768 px; Table 2b box AP at 768 and 1024 px;
# Table 3: MAE (their re-implementation, dagger) and ColorMAE-G, box and mask AP, AP50, AP75.
PAPER_DETECTION = {
    "table1_ap_box_768": {100: {"random": 45.90, "blue": 46.00, "green": 45.90, "purple": 44.10, "red": 40.80},
                          300: {"random": 48.50, "blue": 48.10, "green": 48.70, "purple": 47.20, "red": 45.10},
                          800: {"random": 49.15, "blue": 49.10, "green": 49.50, "purple": 48.50, "red": 46.90},
                          1600: {"random": 49.60, "blue": 49.50, "green": 50.10, "purple": 49.10, "red": 47.20}},
    "table2b_ap_box_768": {300: {"random": 48.50, "blue": 48.10, "green": 48.70},
                           1600: {"random": 49.60, "blue": 49.50, "green": 50.10}},
    "table2b_ap_box_1024": {300: {"random": 50.10, "blue": 49.80, "green": 50.40},
                            1600: {"random": 50.90, "blue": 50.80, "green": 51.50}},
    "table3": {800: {"random (MAE, dagger)": dict(ap_box=49.2, ap50_box=69.7, ap75_box=53.9, ap_mask=43.4,
                                                  ap50_mask=66.6, ap75_mask=46.9),
                     "green (ColorMAE-G)": dict(ap_box=49.5, ap50_box=70.0, ap75_box=54.2, ap_mask=43.7,
                                                ap50_mask=67.1, ap75_mask=47.1)},
               1600: {"random (MAE, paper)": dict(ap_box=50.6, ap50_box=69.4, ap75_box=55.0, ap_mask=43.8,
                                                  ap50_mask=66.6, ap75_mask=47.5),
                      "green (ColorMAE-G)": dict(ap_box=50.1, ap50_box=70.7, ap75_box=54.7, ap_mask=44.4,
                                                 ap50_mask=67.8, ap75_mask=48.0)}},
}


def load_detector(run_dir: str | Path) -> tuple[nn.Module, DetectConfig]:
    """The trained Mask R-CNN of a detection run (its config and checkpoint-last.pth), in eval mode."""
    from .rundir import LAST, RunDir, load_checkpoint
    rd = RunDir(project_path(run_dir))
    saved = rd.read_config()
    if saved is None:
        raise FileNotFoundError(f"{rd.path} holds no detection run (no config.json)")
    cfg = DetectConfig(**saved)
    ckpt = load_checkpoint(rd.file(LAST), required=("model", "num_classes"))
    model = build_model(load_encoder(cfg.encoder), ckpt["num_classes"], cfg)
    model.load_state_dict(ckpt["model"])
    return model.eval(), cfg


def draw_detections(image: torch.Tensor, pred: dict, score_threshold: float = 0.5, top_k: int | None = None
                    ) -> torch.Tensor:
    """uint8 [3, H, W] with the masks (filled) and boxes of the detections scoring >= ``score_threshold``,
    at most the ``top_k`` best (torchvision returns them sorted by score)."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks
    keep = torch.nonzero(pred["scores"] >= score_threshold).flatten()[:top_k]
    masks = pred["masks"][keep]
    masks = (masks[:, 0] if masks.ndim == 4 else masks) >= 0.5
    out = draw_segmentation_masks(image, masks.bool(), alpha=0.45) if len(masks) else image
    return draw_bounding_boxes(out, pred["boxes"][keep], width=2, colors="yellow")


def config_from_argv(argv: list[str] | None = None) -> DetectConfig:
    return config_from_args(DetectConfig, argv, __doc__, "python -m colormae.detect")


def main(argv: list[str] | None = None) -> dict:
    return cli_main(run, config_from_argv(argv))


CONFIG = DetectConfig


if __name__ == "__main__":
    main(sys.argv[1:])
