"""Evaluate a pretrained encoder: kNN and linear probe on frozen features, or end-to-end fine-tuning.

CLI: ``python -m colormae.finetune --encoder RUN_DIR --protocol {finetune,linprobe,knn}`` (or under
``torchrun --nproc_per_node N -m colormae.finetune``). Defaults evaluate on the embedded labeled
photographs, so everything runs offline on a CPU in minutes.

Protocols (MAE, He et al. 2022, main_linprobe.py / main_finetune.py):

* ``knn``: weighted k-NN on L2-normalized frozen features (DINO / InstDisc: k=20, T=0.07).
* ``linprobe``: BatchNorm1d(affine=False) + Linear on frozen features, SGD (or LARS), no weight
  decay, cosine schedule with warmup. Features are extracted once and cached in memory, so 100
  epochs cost seconds; the price is no augmentation (MAE's probe trains with random crop + flip).
  Under torchrun the frozen protocols run on rank 0 alone.
* ``finetune``: the whole stock timm ViT with average pooling + fc_norm, layer-wise lr decay,
  RandAugment, Mixup/CutMix, label smoothing, drop path, as in MAE.

Frozen features (``extract_features``): the encoder's final norm is applied to every token, then
``pool="cls"`` takes the [CLS] token (MAE's linear probe) and ``pool="avg"`` averages the patch
tokens. The default is ``"cls"`` to match MAE's protocol; ``"avg"`` is one argument away.

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
from timm.optim import Lars, create_optimizer_v2
from timm.scheduler import CosineLRScheduler

from . import data as data_lib
from .model import MAEConfig, MaskedAutoencoder, export_encoder, timm_vit_from_export
from .pretrain import AMP_MODES, _autocast, _loss_scaler
from .runtime import (DistInfo, GlobalBatchSampler, MetricLog, SeededSamples, Timer, atomic_torch_save, cli_main,
                      environment_info, load_checkpoint, mean_across_ranks, peak_memory_bytes, progress,
                      rng_state, set_rng_state, setup_device, wrap_ddp, write_json)

log = logging.getLogger(__name__)
PROTOCOLS = ("finetune", "linprobe", "knn")
POOLS = ("cls", "avg")
# Datasets whose images have one native size: an encoder of another size would silently train on
# resampled images, which is never what a preset-matched experiment wants.
NATIVE_IMG_SIZE = {"cifar10": 32}


# -- loading encoders ---------------------------------------------------------------------------

def _is_export(obj) -> bool:
    return isinstance(obj, dict) and all(k in obj for k in ("state_dict", "timm_name", "timm_kwargs"))


def load_encoder(path: str | Path) -> dict:
    """The export dict of an encoder (see ``model.export_encoder``) from any of:

    * a pretraining run directory (its ``encoder.pth``, else its ``checkpoint-last.pth``),
    * an ``encoder.pth`` export,
    * a pretraining checkpoint (``checkpoint-*.pth``): the MAE is rebuilt and exported.
    """
    path = Path(path)
    if path.is_dir():
        candidates = [path / "encoder.pth", path / "checkpoint-last.pth"]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise FileNotFoundError(f"no encoder in run directory {path}: neither {candidates[0]} nor {candidates[1]}")
        if found != candidates[0]:
            log.info("%s has no encoder.pth (unfinished run?): using %s", path, found)
        path = found
    if not path.is_file():
        raise FileNotFoundError(f"encoder not found: {path}")
    obj = load_checkpoint(path, required=())  # ValueError on corrupt / non-dict files
    if _is_export(obj):
        return obj
    if "model" in obj and "mae_config" in obj:
        model = MaskedAutoencoder(MAEConfig(**obj["mae_config"]))
        model.load_state_dict(obj["model"])
        return export_encoder(model)
    raise ValueError(f"{path} is neither an encoder export (keys state_dict, timm_name, timm_kwargs) nor a "
                     f"pretraining checkpoint (keys model, mae_config); it has keys {sorted(obj)[:10]}")


def encoder_img_size(export: dict) -> int:
    return int(export["timm_kwargs"]["img_size"])


def check_compatible(export: dict, dataset_name: str, img_size: int | None = None) -> int:
    """The image size to evaluate at; ValueError "encoder/preset mismatch" when it cannot be the encoder's."""
    enc = encoder_img_size(export)
    if img_size is not None and img_size != enc:
        raise ValueError(f"encoder/preset mismatch: the encoder takes {enc} px images, img_size={img_size} asked")
    native = NATIVE_IMG_SIZE.get(dataset_name)
    if native is not None and native != enc:
        raise ValueError(f"encoder/preset mismatch: {dataset_name} images are {native} px but the encoder takes "
                         f"{enc} px ({export['timm_kwargs']}); pretrain a {native}-px preset")
    return enc


def check_num_classes(train_set, test_set, expected: int | None = None) -> int:
    """Number of classes of a labeled train/test pair; ValueError if they (or ``expected``) disagree."""
    n_train, n_test = data_lib.num_classes(train_set), data_lib.num_classes(test_set)
    if n_train < 2:
        raise ValueError(f"the train split has {n_train} classes; a classification needs at least 2")
    if n_train != n_test:
        raise ValueError(f"the train split has {n_train} classes but the test split has {n_test}")
    if expected is not None and expected != n_train:
        raise ValueError(f"num_classes={expected} but the dataset has {n_train} classes")
    return n_train


# -- frozen features ----------------------------------------------------------------------------

@torch.no_grad()
def extract_features(export: dict, dataset, *, batch_size: int = 256, device: str | torch.device = "cpu",
                     pool: str = "cls", num_workers: int = 0, amp: str = "none",
                     desc: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen-encoder features of every sample of ``dataset`` in order: ([N, D] float32, [N] long).

    The encoder is a stock timm ViT (no head, final norm kept); ``pool="cls"`` is its normed [CLS]
    token (MAE's linear probe), ``pool="avg"`` the mean of its normed patch tokens.
    """
    if pool not in POOLS:
        raise ValueError(f"pool={pool!r}; allowed values: {', '.join(POOLS)}")
    if amp not in AMP_MODES:
        raise ValueError(f"amp={amp!r}; allowed values: {', '.join(AMP_MODES)}")
    device = torch.device(device)
    # global_pool="token" keeps the pretrained final norm (avg mode would swap it for a fresh fc_norm)
    model, _ = timm_vit_from_export(export, num_classes=0, global_pool="token")
    model.to(device).eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         pin_memory=device.type == "cuda")
    feats, labels = [], []
    for imgs, target in progress(loader, desc=desc, leave=False):
        with _autocast(amp, device):
            tokens = model.forward_features(imgs.to(device, non_blocking=True))  # [B, 1 + L, D], normed
        n_prefix = model.num_prefix_tokens
        f = tokens[:, 0] if pool == "cls" else tokens[:, n_prefix:].mean(1)
        feats.append(f.float().cpu())
        labels.append(torch.as_tensor(target).long())
    return torch.cat(feats), torch.cat(labels)


def _topk_correct(scores: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """Number of (top-1, top-5) hits; top-5 is top-min(5, C), so it is 1.0 with under 5 classes."""
    hits = scores.topk(min(5, scores.shape[1]), dim=1).indices.eq(labels[:, None])
    return int(hits[:, 0].sum()), int(hits.any(1).sum())


def _accuracies(scores: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(top-1, top-5) as fractions in [0, 1]."""
    c1, c5 = _topk_correct(scores, labels)
    return c1 / len(labels), c5 / len(labels)


@torch.no_grad()
def knn_classify(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, *, k: int = 20, temperature: float = 0.07, num_classes: int,
                 chunk: int | None = None, device: str | torch.device | None = None) -> dict:
    """Weighted k-NN (DINO / InstDisc): cosine similarity, the k nearest train samples vote for their
    class with weight exp(sim / T). Test features go in chunks (default: 2^26 similarities, 256 MiB,
    per chunk), so memory stays bounded on ImageNet-sized sets. ``device``: where to compute
    (default: the train features' device)."""
    if k < 1:
        raise ValueError(f"k={k} must be >= 1")
    device = torch.device(device) if device is not None else train_feats.device
    k = min(k, len(train_feats))
    chunk = chunk or max(1, min(1024, 2 ** 26 // len(train_feats)))
    train = F.normalize(train_feats.to(device).float(), dim=1)
    test = F.normalize(test_feats.to(device).float(), dim=1)
    train_labels = train_labels.to(device).long()
    scores = []
    for start in range(0, len(test), chunk):
        sim, idx = (test[start:start + chunk] @ train.T).topk(k, dim=1)
        votes = torch.zeros(len(idx), num_classes, device=device)
        scores.append(votes.scatter_add_(1, train_labels[idx], (sim / temperature).exp()).cpu())
    top1, top5 = _accuracies(torch.cat(scores), test_labels.cpu().long())
    return {"top1": top1, "top5": top5, "k": k, "temperature": temperature}


class LinearProbe(nn.Sequential):
    """MAE's probe head: BatchNorm without affine (a per-feature whitening) then a linear layer."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__(nn.BatchNorm1d(dim, affine=False, eps=1e-6), nn.Linear(dim, num_classes))
        nn.init.trunc_normal_(self[1].weight, std=0.01)  # MAE's head init
        nn.init.zeros_(self[1].bias)


def linear_probe(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, *, num_classes: int, epochs: int = 100, blr: float = 0.1,
                 lr: float | None = None, batch_size: int = 256, warmup_epochs: float = 10,
                 optimizer: str = "sgd", seed: int = 0, device: str | torch.device = "cpu") -> dict:
    """Train MAE's linear probe on cached features; evaluate top-1/top-5 on ``test_feats``.

    lr = blr * batch / 256 unless ``lr`` is given. ``optimizer="sgd"``: SGD, momentum 0.9 (the default:
    LARS's trust ratio, 0.001 * |w| / |g|, is tuned for MAE's batch of 16384 and barely moves the
    weights at small batches). ``"lars"``: timm's Lars with MAE's grouping (trust ratio on the weight
    matrix only). No weight decay either way; cosine schedule with warmup, stepped per iteration.
    Deterministic given ``seed`` (head init and shuffling); ``device`` holds features and head.
    """
    if optimizer not in ("sgd", "lars"):
        raise ValueError(f"optimizer={optimizer!r}; allowed values: sgd, lars")
    if epochs < 1:
        raise ValueError(f"epochs={epochs} must be >= 1")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # head init
    device = torch.device(device)
    train_feats, test_feats = train_feats.to(device).float(), test_feats.to(device).float()
    train_labels, test_labels = train_labels.to(device).long(), test_labels.to(device).long()
    n = len(train_feats)
    batch_size = min(batch_size, n)
    steps_per_epoch = n // batch_size  # drop the ragged tail: BatchNorm hates a batch of 1
    lr = blr * batch_size / 256 if lr is None else lr
    head = LinearProbe(train_feats.shape[1], num_classes).to(device)
    weights, biases = [head[1].weight], [head[1].bias]
    if optimizer == "lars":
        opt = Lars([{"params": weights, "always_adapt": True}, {"params": biases}], lr=lr, momentum=0.9,
                   weight_decay=0.0)
    else:
        opt = torch.optim.SGD(weights + biases, lr=lr, momentum=0.9, weight_decay=0.0)
    total = steps_per_epoch * epochs
    warmup = int(min(warmup_epochs, epochs - 1) * steps_per_epoch)  # always leave some steps at full lr
    sched = CosineLRScheduler(opt, t_initial=total, lr_min=0.0, warmup_t=warmup, warmup_lr_init=0.0,
                              t_in_epochs=False)
    step, loss = 0, torch.tensor(float("nan"))
    head.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=g).to(device)
        for b in range(steps_per_epoch):
            idx = order[b * batch_size:(b + 1) * batch_size]
            loss = F.cross_entropy(head(train_feats[idx]), train_labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            sched.step_update(num_updates=step)
    head.eval()
    with torch.no_grad():
        top1, top5 = _accuracies(head(test_feats), test_labels)
        train_top1, _ = _accuracies(head(train_feats), train_labels)
    return {"top1": top1, "top5": top5, "train_top1": train_top1, "final_loss": loss.item(), "lr": lr,
            "epochs": epochs, "steps": step, "batch_size": batch_size, "optimizer": optimizer}


def frozen_datasets(export: dict, dataset_name: str, data_root: str | None = None, *,
                    train_length: int | None = None, test_length: int | None = None, img_size: int | None = None,
                    num_classes: int | None = None, skip_corrupt: bool = False, train_transform=None):
    """Labeled (train, test, num_classes) at the encoder's image size (eval transform unless
    ``train_transform`` is given for the train split). Checks sizes and classes; reads no image."""
    img_size = check_compatible(export, dataset_name, img_size)
    tf = data_lib.eval_transform(img_size)
    kw = dict(labeled=True, skip_corrupt=skip_corrupt, img_size=img_size)
    train_set = data_lib.build_dataset(dataset_name, data_root, "train", train_transform or tf, length=train_length,
                                       **kw)
    test_set = data_lib.build_dataset(dataset_name, data_root, "test", tf, length=test_length, **kw)
    return train_set, test_set, check_num_classes(train_set, test_set, num_classes)


def evaluate_frozen(run_or_encoder: str | Path | dict, dataset_name: str = "embedded", data_root: str | None = None,
                    *, train_length: int | None = None, test_length: int | None = None,
                    device: str | torch.device = "cpu", knn_k: int = 20, knn_temperature: float = 0.07,
                    linprobe_epochs: int = 100, linprobe_blr: float = 0.1, linprobe_optimizer: str = "sgd",
                    linprobe_batch_size: int = 256, linprobe_warmup_epochs: float = 10, pool: str = "cls",
                    batch_size: int = 256, num_workers: int = 0, amp: str = "none", num_classes: int | None = None,
                    img_size: int | None = None, skip_corrupt: bool = False, seed: int = 0) -> dict:
    """kNN and linear-probe accuracy of a frozen encoder (run dir, .pth, or export dict).

    Features of the labeled train/test splits are extracted once (eval transform at the encoder's
    image size) and shared by both protocols. ``linprobe_epochs=0`` skips the linear probe.
    """
    timer = Timer()
    if dataset_name not in data_lib.DATASETS:
        raise ValueError(f"unknown dataset name={dataset_name!r}; expected one of {data_lib.DATASETS}")
    export = run_or_encoder if isinstance(run_or_encoder, dict) else load_encoder(run_or_encoder)
    train_set, test_set, n_cls = frozen_datasets(export, dataset_name, data_root, train_length=train_length,
                                                 test_length=test_length, img_size=img_size, num_classes=num_classes,
                                                 skip_corrupt=skip_corrupt)
    kw = dict(batch_size=batch_size, device=device, pool=pool, num_workers=num_workers, amp=amp)
    xtr, ytr = extract_features(export, train_set, desc="train features", **kw)
    xte, yte = extract_features(export, test_set, desc="test features", **kw)
    extract_s = timer.elapsed
    knn = knn_classify(xtr, ytr, xte, yte, k=knn_k, temperature=knn_temperature, num_classes=n_cls, device=device)
    result = {"knn_top1": knn["top1"], "knn_top5": knn["top5"], "linprobe_top1": None, "linprobe_top5": None}
    if linprobe_epochs > 0:
        lp = linear_probe(xtr, ytr, xte, yte, num_classes=n_cls, epochs=linprobe_epochs, blr=linprobe_blr,
                          batch_size=linprobe_batch_size, warmup_epochs=linprobe_warmup_epochs,
                          optimizer=linprobe_optimizer, seed=seed, device=device)
        result.update(linprobe_top1=lp["top1"], linprobe_top5=lp["top5"], linprobe=lp)
    result.update(num_train=len(xtr), num_test=len(xte), feature_dim=xtr.shape[1], num_classes=n_cls, pool=pool,
                  knn_k=knn["k"], dataset=dataset_name, extract_time_s=extract_s, wall_time_s=timer.elapsed)
    log.info("frozen %s (%s pool): kNN top-1 %.4f, linear probe top-1 %s", dataset_name, pool, result["knn_top1"],
             result["linprobe_top1"])
    return result


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
        with _autocast(amp, device):
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
    scaler = _loss_scaler(cfg.amp, device)
    mixup = (Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.smoothing,
                   num_classes=n_cls) if cfg.mixup > 0 or cfg.cutmix > 0 else None)
    # mixup makes soft targets (smoothing included); otherwise smoothing or plain cross-entropy
    criterion = (SoftTargetCrossEntropy() if mixup is not None else
                 LabelSmoothingCrossEntropy(cfg.smoothing) if cfg.smoothing > 0 else nn.CrossEntropyLoss())

    step, epoch, batch_in_epoch, evals = 0, 0, 0, []
    resume = str(out / "checkpoint-last.pth") if cfg.resume == "auto" else cfg.resume
    resumed = bool(resume) and (cfg.resume != "auto" or Path(resume).exists())
    if resumed:
        ckpt = load_checkpoint(resume, required=("model", "optimizer", "scaler", "step", "epoch", "batch_in_epoch",
                                                 "rng", "evals", "num_classes"))
        if ckpt["num_classes"] != n_cls:
            raise ValueError(f"checkpoint {resume} has a {ckpt['num_classes']}-class head; {cfg.dataset} has {n_cls}")
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            raise ValueError(f"checkpoint {resume} does not fit this encoder's model: {e}") from e
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        step, epoch, batch_in_epoch, evals = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["evals"]
        set_rng_state(ckpt["rng"])
        scheduler.step_update(num_updates=step)
        log.info("resumed from %s at epoch %d, step %d", resume, epoch, step)
    ddp_model = wrap_ddp(model, info, device)

    metrics = MetricLog(out, info.is_main, resume_step=step if resumed else None)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(asdict(cfg), out / "config.json")

    def save(name: str) -> None:
        if info.is_main:
            atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "scaler": scaler.state_dict(), "step": step, "epoch": epoch,
                               "batch_in_epoch": batch_in_epoch, "rng": rng_state(), "evals": evals,
                               "num_classes": n_cls, "config": asdict(cfg), "timm_name": export["timm_name"],
                               "timm_kwargs": export["timm_kwargs"]}, out / name)

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
            with _autocast(cfg.amp, device):
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
    p.add_argument("--amp", default=d.amp, help=f"one of {AMP_MODES}")
    p.add_argument("--output-dir", default=d.output_dir)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--resume", default=d.resume, help="checkpoint path, or 'auto'")
    p.add_argument("--device", default=d.device)
    p.add_argument("--max-steps", type=int, default=d.max_steps)
    p.add_argument("--num-workers", type=int, default=d.num_workers)
    p.add_argument("--skip-corrupt", action="store_true")
    p.add_argument("--log-every", type=int, default=d.log_every)
    return p


def config_from_args(argv: list[str] | None = None) -> FinetuneConfig:
    return FinetuneConfig(**vars(build_parser().parse_args(argv)))


def main(argv: list[str] | None = None) -> dict:
    return cli_main(run, config_from_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
