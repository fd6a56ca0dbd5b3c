"""Frozen-encoder evaluation: weighted kNN and a linear probe on cached features.

* ``knn``: weighted k-NN on L2-normalized frozen features (DINO / InstDisc: k=20, T=0.07).
* ``linprobe-cached``: BatchNorm1d(affine=False) + Linear on frozen features (MAE's probe head), SGD
  (or LARS), no weight decay, cosine schedule with warmup. Features are extracted once and cached in
  memory, so 100 epochs cost seconds; the price is no augmentation. MAE's own protocol (random
  crop + flip on the fly, LARS, large batch) is ``--protocol linprobe`` in ``colormae.engines.finetune``.

Features (``extract_features``): the encoder's final norm is applied to every token, then
``pool="cls"`` takes the [CLS] token (MAE's linear probe) and ``pool="avg"`` averages the patch
tokens. The default is ``"cls"`` to match MAE's protocol; ``"avg"`` is one argument away.
The CLI for both is ``colormae finetune --protocol {knn,linprobe-cached}``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.optim import Lars

from ..data import datasets as data_lib
from ..data.memory import BatchedLoader, EvalResize, InMemoryImages, choose_pipeline, decode_to_memory
from ..models.backbone import export_width_tokens
from ..models.mae import timm_vit_from_export
from ..run.artifacts import load_encoder
from ..run.config import AMP_MODES
from ..run.scaffold import cosine_schedule
from ..runtime import Timer, autocast, progress, resolve_amp

log = logging.getLogger(__name__)
POOLS = ("cls", "avg")
# Datasets whose images have one native size: an encoder of another size would silently train on
# resampled images, which is never what a preset-matched experiment wants.
NATIVE_IMG_SIZE = {"cifar10": 32}

# -- encoders and datasets -----------------------------------------------------------------------

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


def check_same_classes(train_set, test_set) -> None:
    """ValueError listing the class names only one split has: label k must mean the same class in
    both (image folders number their classes by sorted name, so cat/dog vs kitten/dog would pair
    "cat" with "kitten" silently). Datasets without class names are not compared."""
    names = [list(getattr(data_lib._unwrap(ds), "classes", None) or []) for ds in (train_set, test_set)]
    if not all(names) or names[0] == names[1]:
        return
    only_train, only_test = sorted(set(names[0]) - set(names[1])), sorted(set(names[1]) - set(names[0]))
    raise ValueError(f"the train and test splits have other classes: only in train {only_train or '(none)'}, only "
                     f"in test {only_test or '(none)'}" + ("" if only_train or only_test else
                                                          f" (same names, other order: {names[0]} vs {names[1]})")
                     + "; class folders must have the same names in train/ and val/")


def check_num_classes(train_set, test_set, expected: int | None = None) -> int:
    """Number of classes of a labeled train/test pair; ValueError if they (or ``expected``) disagree."""
    n_train, n_test = data_lib.num_classes(train_set), data_lib.num_classes(test_set)
    if n_train < 2:
        raise ValueError(f"the train split has {n_train} classes; a classification needs at least 2")
    check_same_classes(train_set, test_set)
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

    ``dataset``: a labeled dataset (eval-transformed), or decoded ``InMemoryImages`` (resized and
    normalized on the device by ``EvalResize``, the same eval transform in batches).
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
    if isinstance(dataset, InMemoryImages):
        batches = torch.utils.data.BatchSampler(range(len(dataset)), batch_size, drop_last=False)
        loader = BatchedLoader(dataset, batches, EvalResize(encoder_img_size(export)), device)
    else:
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                             pin_memory=device.type == "cuda")
    feats, labels = [], []
    for imgs, target in progress(loader, desc=desc, leave=False):
        with autocast(amp, device):
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


def lars_optimizer(head: nn.Module, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """timm's LARS with MAE's grouping: the trust ratio on weight matrices only, biases plain SGD."""
    weights = [p for p in head.parameters() if p.ndim > 1]
    others = [p for p in head.parameters() if p.ndim <= 1]
    return Lars([{"params": weights, "always_adapt": True}, {"params": others}], lr=lr, momentum=0.9,
                weight_decay=weight_decay)


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
    if n < 2:
        raise ValueError(f"the linear probe needs at least 2 training samples (its BatchNorm normalizes over the "
                         f"batch); got {n}")
    batch_size = min(batch_size, n)
    steps_per_epoch = n // batch_size  # drop the ragged tail: BatchNorm hates a batch of 1
    lr = blr * batch_size / 256 if lr is None else lr
    head = LinearProbe(train_feats.shape[1], num_classes).to(device)
    if optimizer == "lars":
        opt = lars_optimizer(head, lr)
    else:
        opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)
    total = steps_per_epoch * epochs
    warmup = int(min(warmup_epochs, epochs - 1) * steps_per_epoch)  # always leave some steps at full lr
    sched = cosine_schedule(opt, total, warmup, 0.0)
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
                    num_classes: int | None = None, skip_corrupt: bool = False):
    """Labeled (train, test, num_classes) at the encoder's image size, eval transform on both
    (the per-file frozen-feature path). Checks sizes and classes; reads no image."""
    img_size = check_compatible(export, dataset_name, img_size)
    tf = data_lib.eval_transform(img_size)
    kw = dict(labeled=True, skip_corrupt=skip_corrupt, img_size=img_size)
    train_set = data_lib.build_dataset(dataset_name, data_root, "train", tf, length=train_length, **kw)
    test_set = data_lib.build_dataset(dataset_name, data_root, "test", tf, length=test_length, **kw)
    return train_set, test_set, check_num_classes(train_set, test_set, num_classes)


def evaluate_frozen(run_or_encoder: str | Path | dict, dataset_name: str = "embedded", data_root: str | None = None,
                    *, train_length: int | None = None, test_length: int | None = None,
                    device: str | torch.device = "cpu", knn_k: int = 20, knn_temperature: float = 0.07,
                    linprobe_epochs: int = 100, linprobe_blr: float = 0.1, linprobe_optimizer: str = "sgd",
                    linprobe_batch_size: int = 256, linprobe_warmup_epochs: float = 10, pool: str = "cls",
                    batch_size: int = 256, num_workers: int = 0, amp: str = "none", num_classes: int | None = None,
                    img_size: int | None = None, skip_corrupt: bool = False, seed: int = 0,
                    pipeline: str = "auto", max_corrupt_fraction: float = 0.01) -> dict:
    """kNN and linear-probe accuracy of a frozen encoder (run dir, .pth, or export dict).

    Features of the labeled train/test splits are extracted once (eval transform at the encoder's
    image size) and shared by both protocols. ``linprobe_epochs=0`` skips the linear probe.
    ``pipeline``: "memory" decodes the splits once (cached) and transforms whole batches; "files"
    reads every image in DataLoader workers; "auto" picks memory for cifar10 / embedded.
    """
    timer = Timer()
    if dataset_name not in data_lib.DATASETS:
        raise ValueError(f"unknown dataset name={dataset_name!r}; expected one of {data_lib.DATASETS}")
    export = run_or_encoder if isinstance(run_or_encoder, dict) else load_encoder(run_or_encoder)
    if amp not in AMP_MODES:
        raise ValueError(f"amp={amp!r}; allowed values: {', '.join(AMP_MODES)}")
    amp = resolve_amp(amp, torch.device(device), export_width_tokens(export, img_size))  # "auto": by encoder size
    if choose_pipeline(dataset_name, pipeline, root=data_root) == "memory":
        size = check_compatible(export, dataset_name, img_size)
        train_set, test_set = (decode_to_memory(dataset_name, data_root, split, img_size=size, length=n,
                                                skip_corrupt=skip_corrupt)
                               for split, n in (("train", train_length), ("test", test_length)))
        n_cls = check_num_classes(train_set, test_set, num_classes)
    else:
        train_set, test_set, n_cls = frozen_datasets(
            export, dataset_name, data_root, train_length=train_length, test_length=test_length, img_size=img_size,
            num_classes=num_classes, skip_corrupt=skip_corrupt)
    kw = dict(batch_size=batch_size, device=device, pool=pool, num_workers=num_workers, amp=amp)
    xtr, ytr = extract_features(export, train_set, desc="train features", **kw)
    xte, yte = extract_features(export, test_set, desc="test features", **kw)
    if skip_corrupt:  # the ceiling the trained protocols apply after each epoch (Run.end_epoch)
        for ds in (train_set, test_set):
            data_lib.check_corrupt_fraction(ds, max_corrupt_fraction)
    extract_s = timer.elapsed
    knn = knn_classify(xtr, ytr, xte, yte, k=knn_k, temperature=knn_temperature, num_classes=n_cls, device=device)
    result = {"knn_top1": knn["top1"], "knn_top5": knn["top5"], "linprobe_top1": None, "linprobe_top5": None}
    if linprobe_epochs > 0:
        lp = linear_probe(xtr, ytr, xte, yte, num_classes=n_cls, epochs=linprobe_epochs, blr=linprobe_blr,
                          batch_size=linprobe_batch_size, warmup_epochs=linprobe_warmup_epochs,
                          optimizer=linprobe_optimizer, seed=seed, device=device)
        result.update(linprobe_top1=lp["top1"], linprobe_top5=lp["top5"], linprobe=lp)
    result.update(num_train=len(xtr), num_test=len(xte), feature_dim=xtr.shape[1], num_classes=n_cls, pool=pool,
                  amp=amp, knn_k=knn["k"], dataset=dataset_name, caveat=data_lib.split_caveat(dataset_name),
                  extract_time_s=extract_s, wall_time_s=timer.elapsed)
    probe = f", linear probe top-1 {result['linprobe_top1']:.4f}" if result["linprobe_top1"] is not None else ""
    log.info("frozen %s (%s pool): kNN top-1 %.4f%s", dataset_name, pool, result["knn_top1"], probe)
    if result["caveat"]:
        log.info("note: %s", result["caveat"])
    return result
