"""ViTDet (Li et al. 2022) on torchvision's Mask R-CNN: a plain ViT backbone with window attention,
a simple feature pyramid from its last map, and Mask R-CNN heads with LayerNorm.

The backbone's blocks are timm's SAM-ViT blocks (``vision_transformer_sam``: window or global
attention with decomposed relative position bias), whose parameter names are the stock timm
ViT's, so an exported MAE encoder (``model.export_encoder``) loads into them directly: only the
relative position tables are new (zeros, as in ViTDet) and [CLS] / the final norm are dropped.
One change from timm / detectron2: where the window does not divide the map, the padded tokens
are masked out of the attention instead of attended to as zero vectors (their keys would be the
qkv bias), so edge windows see only the image; with a window that divides the map nothing changes.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d, PatchEmbed, resample_abs_pos_embed_nhwc
from timm.layers.format import Format
from timm.models.vision_transformer_sam import Block, get_decomposed_rel_pos_bias, window_partition, window_unpartition
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from .backbone import transfer_export

log = logging.getLogger(__name__)
PYRAMID_SCALES = (4.0, 2.0, 1.0, 0.5)  # ViTDet's simple feature pyramid: strides p/4 .. 2p, plus a pooled 4p
IMAGE_MEAN, IMAGE_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def global_blocks(depth: int) -> tuple[int, ...]:
    """ViTDet splits the blocks into 4 equal subsets and makes the last of each global:
    depth 12 -> (2, 5, 8, 11), 24 -> (5, 11, 17, 23); depth <= 4: every block."""
    return tuple(sorted({max(0, round((k + 1) * depth / 4) - 1) for k in range(4)}))


def attention(attn: nn.Module, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """timm SAM attention on [B, H, W, C] tokens; ``valid`` [B, H*W] (bool) masks keys out (padding)."""
    b, h, w, _ = x.shape
    n = h * w
    q, k, v = attn.qkv(x.reshape(b, n, -1)).view(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    bias = None
    if attn.use_rel_pos:
        bias = get_decomposed_rel_pos_bias(q.reshape(b * attn.num_heads, n, -1), attn.rel_pos_h, attn.rel_pos_w,
                                           (h, w), (h, w)).view(b, attn.num_heads, n, n)
    if valid is not None:
        pad = torch.zeros(valid.shape, dtype=q.dtype, device=q.device).masked_fill(~valid, float("-inf"))
        pad = pad[:, None, None, :]
        bias = pad if bias is None else bias + pad
    x = F.scaled_dot_product_attention(q, k, v, attn_mask=None if bias is None else bias.to(q.dtype))
    return attn.proj(x.transpose(1, 2).reshape(b, h, w, -1))


def block_forward(blk: Block, x: torch.Tensor) -> torch.Tensor:
    """timm SAM ``Block.forward`` with padded window positions masked out of the attention."""
    b, h, w, _ = x.shape
    shortcut, x = x, blk.norm1(x)
    ws = blk.window_size
    if ws > 0:
        x, pad_hw = window_partition(x, ws)
        valid, _ = window_partition(torch.ones(b, h, w, 1, dtype=torch.bool, device=x.device), ws)
        x = attention(blk.attn, x, valid.flatten(1) if pad_hw != (h, w) else None)
        x = window_unpartition(x, ws, (h, w), pad_hw)
    else:
        x = attention(blk.attn, x)
    x = shortcut + blk.drop_path1(blk.ls1(x))
    return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))


class ViTDetBackbone(nn.Module):
    """Plain ViT -> [B, D, H/p, W/p]: absolute position embedding (resampled to the map), window
    attention in all blocks but ``global_blocks(depth)``, relative position bias everywhere."""

    def __init__(self, *, img_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int,
                 mlp_ratio: float = 4.0, window_size: int = 14, drop_path: float = 0.1, rel_pos: bool = True):
        super().__init__()
        grid = img_size // patch_size
        self.patch_size, self.embed_dim = patch_size, embed_dim
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim, output_fmt=Format.NHWC, strict_img_size=False)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.global_blocks = global_blocks(depth)
        rates = torch.linspace(0, drop_path, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=rates[i],
                  norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=rel_pos, input_size=(grid, grid),
                  window_size=0 if i in self.global_blocks else window_size) for i in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = x + resample_abs_pos_embed_nhwc(self.pos_embed, x.shape[1:3])
        for blk in self.blocks:
            x = block_forward(blk, x)
        return x.permute(0, 3, 1, 2)


def backbone_from_export(export: dict, *, img_size: int, patch_size: int | None = None, window_size: int = 14,
                         drop_path: float = 0.1) -> ViTDetBackbone:
    """A ``ViTDetBackbone`` for ``img_size`` loaded from an encoder export. The patch embedding is
    resampled to ``patch_size`` (default: the encoder's) and the position embedding to the new grid
    (``backbone.transfer_export``); missing keys other than the new relative tables are an error."""
    kw = export["timm_kwargs"]
    patch_size = patch_size or kw["patch_size"]
    model = ViTDetBackbone(img_size=img_size, patch_size=patch_size, embed_dim=kw["embed_dim"], depth=kw["depth"],
                           num_heads=kw["num_heads"], mlp_ratio=kw.get("mlp_ratio", 4.0), window_size=window_size,
                           drop_path=drop_path)
    state = transfer_export(export, img_size, patch_size)["state_dict"]
    state = {k: v for k, v in state.items() if not k.startswith(("cls_token", "norm."))}
    grid = img_size // patch_size
    state["pos_embed"] = state["pos_embed"][:, -grid * grid:].reshape(1, grid, grid, -1)  # [CLS] slot dropped
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if ".attn.rel_pos_" not in k]
    if missing or result.unexpected_keys:
        raise ValueError(f"encoder {export.get('timm_kwargs')} does not fit the ViTDet backbone: missing {missing}, "
                         f"unexpected {result.unexpected_keys}")
    return model


def _conv_ln(cin: int, cout: int, k: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), LayerNorm2d(cout)]


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's pyramid from the backbone's last map alone: deconvolutions for x4 and x2, identity,
    max-pool for x0.5, each then 1x1 and 3x3 convs with LayerNorm to ``out_channels``; plus a
    stride-2 subsampled top level ("pool") for the RPN. Outputs "0".."3", "pool" (torchvision names)."""

    def __init__(self, backbone: nn.Module, out_channels: int = 256, scales=PYRAMID_SCALES):
        super().__init__()
        self.backbone, self.out_channels = backbone, out_channels
        d = backbone.embed_dim
        self.strides = tuple(int(backbone.patch_size / s) for s in scales)
        self.stages = nn.ModuleList()
        for s in scales:
            if s == 4.0:
                up, dim = [nn.ConvTranspose2d(d, d // 2, 2, 2), LayerNorm2d(d // 2), nn.GELU(),
                           nn.ConvTranspose2d(d // 2, d // 4, 2, 2)], d // 4
            elif s == 2.0:
                up, dim = [nn.ConvTranspose2d(d, d // 2, 2, 2)], d // 2
            elif s == 1.0:
                up, dim = [], d
            elif s == 0.5:
                up, dim = [nn.MaxPool2d(2, 2)], d
            else:
                raise ValueError(f"pyramid scale {s} is not supported; allowed values: 4, 2, 1, 0.5")
            self.stages.append(nn.Sequential(*up, *_conv_ln(dim, out_channels, 1), *_conv_ln(out_channels,
                                                                                             out_channels, 3)))

    def forward(self, x: torch.Tensor) -> OrderedDict:
        top = self.backbone(x)
        out = OrderedDict((str(i), stage(top)) for i, stage in enumerate(self.stages))
        out["pool"] = F.max_pool2d(out[str(len(self.stages) - 1)], 1, 2)  # detectron2's LastLevelMaxPool
        return out


def build_maskrcnn(backbone: ViTDetBackbone, num_classes: int, *, img_size: int, fpn_channels: int = 256,
                   roi_batch: int = 512, rpn_post_nms_train: int = 1000, rpn_post_nms_test: int = 1000,
                   detections_per_img: int = 100) -> MaskRCNN:
    """ViTDet's Mask R-CNN: RPN with 2 convs, box head 4 conv + 1 fc and mask head 4 conv, both with
    LayerNorm; anchors 8 x each level's stride (32..512 at patch 16), 3 aspect ratios. ``num_classes``
    counts the background. Images arrive as floats in [0, 1]; training batches are already
    ``img_size`` squares (large-scale jitter), test images are resized to ``img_size`` on the longer
    side; both are padded to ``img_size`` squares, so the backbone always sees one shape."""
    fpn = SimpleFeaturePyramid(backbone, fpn_channels)
    strides = fpn.strides + (fpn.strides[-1] * 2,)
    anchors = AnchorGenerator(tuple((8 * s,) for s in strides), ((0.5, 1.0, 2.0),) * len(strides))
    norm = partial(LayerNorm2d, eps=1e-6)
    model = MaskRCNN(
        fpn, num_classes=None, rpn_anchor_generator=anchors, rpn_head=RPNHead(fpn_channels, 3, conv_depth=2),
        box_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 0),
        box_head=FastRCNNConvFCHead((fpn_channels, 7, 7), [fpn_channels] * 4, [1024], norm_layer=norm),
        box_predictor=FastRCNNPredictor(1024, num_classes),
        mask_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], 14, 0),
        mask_head=MaskRCNNHeads(fpn_channels, [fpn_channels] * 4, 1, norm_layer=norm),
        mask_predictor=MaskRCNNPredictor(fpn_channels, fpn_channels, num_classes),
        rpn_post_nms_top_n_train=rpn_post_nms_train, rpn_post_nms_top_n_test=rpn_post_nms_test,
        box_batch_size_per_image=roi_batch, box_detections_per_img=detections_per_img)
    # one fixed square per batch: LSJ crops are img_size already (no resize in training), test images
    # are resized to img_size on the longer side; padding to a multiple of img_size makes them square
    model.transform = GeneralizedRCNNTransform(img_size, img_size, IMAGE_MEAN, IMAGE_STD, size_divisible=img_size,
                                               _skip_resize=True)
    return model

