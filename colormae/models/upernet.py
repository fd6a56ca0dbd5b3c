"""UperNet on a ViT (the paper's segmentation model), sliding-window inference and mIoU.

The heads follow mmseg's ``UPerHead`` and ``FCNHead`` (the official ColorMAE config
``colormae-base_upernet_8xb2-amp-160k_ade20k-512x512``): PPM with pool scales (1, 2, 3, 6) on the
coarsest map, FPN laterals + top-down sum + 3x3 convs, all four levels upsampled and fused by a
3x3 conv, dropout 0.1, 1x1 classifier; the auxiliary FCN head reads the stride-16 map (one 3x3 conv,
256 channels for ViT-B, dropout 0.1). segmentation-models-pytorch's ``UPerNetDecoder`` is built
around its own CNN encoders and gives the PPM branches ``in_channels / 4`` channels, so the heads
are written here (conv + BN + ReLU from torchvision) instead.

mIoU comes from a confusion matrix accumulated over the test set (mmseg's ``IoUMetric``: per-class
intersection / union over all pixels, classes absent from both prediction and ground truth left
out of the mean); pixels labelled ``ignore_index`` do not count.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import Conv2dNormActivation

from .backbone import FeaturePyramid, ViTFeatures

IGNORE_INDEX = 255
POOL_SCALES = (1, 2, 3, 6)


def _conv(cin: int, cout: int, k: int) -> nn.Module:
    return Conv2dNormActivation(cin, cout, k, norm_layer=nn.BatchNorm2d, activation_layer=nn.ReLU)


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class UperHead(nn.Module):
    """PPM + FPN decode head over 4 maps of ``dim`` channels (finest first)."""

    def __init__(self, dim: int, channels: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.ppm = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s), _conv(dim, channels, 1)) for s in POOL_SCALES)
        self.bottleneck = _conv(dim + len(POOL_SCALES) * channels, channels, 3)
        self.laterals = nn.ModuleList(_conv(dim, channels, 1) for _ in range(3))
        self.fpn_convs = nn.ModuleList(_conv(channels, channels, 3) for _ in range(3))
        self.fuse = _conv(4 * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        top = feats[3]
        pooled = [_resize(branch(top), top.shape[2:]) for branch in self.ppm]
        lat = [conv(f) for conv, f in zip(self.laterals, feats[:3])] + [self.bottleneck(torch.cat([top, *pooled], 1))]
        for i in range(3, 0, -1):  # top-down: each level adds the coarser one, upsampled
            lat[i - 1] = lat[i - 1] + _resize(lat[i], lat[i - 1].shape[2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, lat[:3])] + [lat[3]]
        fused = self.fuse(torch.cat([outs[0]] + [_resize(o, outs[0].shape[2:]) for o in outs[1:]], 1))
        return self.classifier(self.dropout(fused))


class FCNHead(nn.Module):
    """The auxiliary head: one 3x3 conv + dropout + 1x1 classifier on one map."""

    def __init__(self, dim: int, channels: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.conv = _conv(dim, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.conv(x)))


class UperNetViT(nn.Module):
    """ViT features -> neck -> UperNet (+ auxiliary FCN on the stride-16 level while training)."""

    AUX_LEVEL = 2  # mmseg's in_index=2: the identity (1x) level

    def __init__(self, export: dict, num_classes: int, channels: int, aux_channels: int, drop_path: float = 0.1):
        super().__init__()
        self.backbone = ViTFeatures(export, drop_path)
        d = self.backbone.embed_dim
        self.neck = FeaturePyramid(d)
        self.decode_head = UperHead(d, channels, num_classes)
        self.aux_head = FCNHead(d, aux_channels, num_classes)
        self.patch_size = self.backbone.patch_size
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits at the input's size; the auxiliary logits only in training mode."""
        feats = self.neck(self.backbone(x))
        out = _resize(self.decode_head(feats), x.shape[2:])
        aux = _resize(self.aux_head(feats[self.AUX_LEVEL]), x.shape[2:]) if self.training else None
        return out, aux

    # timm's optimizer factory reads these for layer-wise lr decay and weight decay: embeddings at
    # depth 0, block i at i + 1; what no pattern matches (neck, heads) gets the last layer, full lr
    # (mmseg's LayerDecayOptimizerConstructor for BEiT/MAE)
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^backbone\.vit\.(?:cls_token|pos_embed|patch_embed)",
                    blocks=[(r"^backbone\.vit\.blocks\.(\d+)", None)])

    def no_weight_decay(self) -> set[str]:
        return {"backbone.vit.pos_embed", "backbone.vit.cls_token"}


@torch.no_grad()
def predict_whole(model: UperNetViT, img: torch.Tensor) -> torch.Tensor:
    """Logits [B, K, H, W] for images of any size: padded (zeros, after normalization) at the
    bottom/right to a multiple of the patch size, the padding cut off again."""
    p = model.patch_size
    h, w = img.shape[2:]
    padded = F.pad(img, (0, -w % p, 0, -h % p))
    return model(padded)[0][:, :, :h, :w]


@torch.no_grad()
def predict_slide(model: UperNetViT, img: torch.Tensor, crop: int, stride: int) -> torch.Tensor:
    """mmseg's slide inference: crop x crop windows every ``stride`` px (the last one flush with the
    border), logits averaged where windows overlap. A crop covering the image = ``predict_whole``."""
    b, _, h, w = img.shape
    rows = max(h - crop + stride - 1, 0) // stride + 1
    cols = max(w - crop + stride - 1, 0) // stride + 1
    logits = torch.zeros(b, model.num_classes, h, w, device=img.device)
    count = torch.zeros(1, 1, h, w, device=img.device)
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + crop, h), min(c * stride + crop, w)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            logits[:, :, y1:y2, x1:x2] += predict_whole(model, img[:, :, y1:y2, x1:x2]).float()
            count[:, :, y1:y2, x1:x2] += 1
    return logits / count


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """[K, K] int64 counts, rows = ground truth, columns = prediction; ignored pixels left out.
    A target value outside [0, K) that is not ``ignore_index`` is an error."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
    keep = target != ignore_index
    t, p = target[keep].long(), pred[keep].long()
    if t.numel() and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"target holds label {int(t.max() if t.max() >= num_classes else t.min())}, outside "
                         f"0..{num_classes - 1} and not the ignore label {ignore_index}")
    return torch.bincount(t * num_classes + p, minlength=num_classes ** 2).reshape(num_classes, num_classes).cpu()


def iou_from_confusion(cm: torch.Tensor) -> dict:
    """Per-class IoU (NaN for a class absent from prediction and ground truth), their mean over the
    present classes (mIoU), and pixel accuracy."""
    cm = cm.double()
    inter = cm.diag()
    union = cm.sum(0) + cm.sum(1) - inter
    iou = inter / union  # 0/0 = NaN: absent class
    return {"iou": iou.tolist(), "miou": float(iou.nanmean()), "acc": float(inter.sum() / cm.sum().clamp(min=1))}
