"""A pretrained ViT encoder as a dense-prediction backbone: transfer to a new input size, multi-level
features, and the feature-to-pyramid neck of the paper's UperNet recipe (mmseg's ``Feature2Pyramid``).

**Transfer to another image size** (``transfer_export``). A ViT's patch embedding is a convolution
and its position embedding is a table with one row per patch of the pretraining grid; both are
resampled with timm's helpers:

* ``patch_size=None`` (the paper's recipe, ViT-B/16 at 512 px): keep the patch size and
  interpolate the position table to the new grid (``resample_abs_pos_embed``, bicubic), as mmseg
  and MAE's fine-tuning do.
* ``patch_size=P``: resample the patch-embedding kernel to P x P with FlexiViT's pseudo-inverse
  resize (``resample_patch_embed``), which keeps the token of an image patch that is the upsampled
  version of the old patch. With ``P = img_size / old grid`` the grid (and so the position table,
  the number of tokens and the cost) stays as pretrained: the right choice for a 32-px CIFAR encoder
  (patch 2, 16x16 grid) on 128-px crops, where keeping patch 2 would mean a 64x64 grid: 16x the
  tokens, ~4x-extrapolated positions, and objects 4x larger in patches than the encoder ever saw.

**Features** (``ViTFeatures``): the token maps after blocks [3, 5, 7, 11] of a 12-block ViT
(``feature_blocks`` scales them to other depths), without the final norm (mmseg's MAE backbone,
``final_norm=False``); the model accepts any input whose sides are multiples of the patch size
(timm's ``dynamic_img_size`` interpolates positions for other sizes, as sliding-window inference
on image borders needs).

**Neck** (``FeaturePyramid``): rescales [4, 2, 1, 0.5] = two transposed convs (with BN + GELU
between) / one transposed conv / identity / 2x2 max-pool, so a stride-16 ViT gives strides 4, 8,
16 and 32.
"""
from __future__ import annotations

import copy
import logging

import torch
import torch.nn as nn
from timm.layers import resample_abs_pos_embed, resample_patch_embed

from .mae import timm_vit_from_export

log = logging.getLogger(__name__)

PAPER_FEATURE_BLOCKS = (3, 5, 7, 11)  # of a 12-block ViT-B (mmseg out_indices)
RESCALES = (4.0, 2.0, 1.0, 0.5)


def _pair(size: int | tuple[int, int], name: str) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h < 1 or w < 1:
        raise ValueError(f"{name}={size!r} must be positive")
    return int(h), int(w)


def transfer_export(export: dict, img_size: int | tuple[int, int], patch_size: int | None = None) -> dict:
    """A copy of an encoder export (``colormae.models.mae.export_encoder``) for ``img_size`` inputs.

    ``patch_size=None`` keeps the encoder's patch size; another value resamples the patch kernel.
    The position table is resampled to the new grid (unchanged when the grid is). ``img_size``
    must be a multiple of the (new) patch size: an error naming both otherwise.
    """
    kw = export["timm_kwargs"]
    old_p, old_size = int(kw["patch_size"]), _pair(kw["img_size"], "export img_size")
    p = old_p if patch_size is None else int(patch_size)
    h, w = _pair(img_size, "img_size")
    if p < 1 or h % p or w % p:
        raise ValueError(f"img_size={img_size} is not a multiple of the patch size {p} "
                         f"({'the encoder' + chr(39) + 's' if patch_size is None else 'patch_size'}); "
                         "choose a crop that the patch size divides")
    state = dict(export["state_dict"])
    if p != old_p:
        state["patch_embed.proj.weight"] = resample_patch_embed(state["patch_embed.proj.weight"], [p, p])
    old_grid, new_grid = [s // old_p for s in old_size], [h // p, w // p]
    if old_grid != new_grid:
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], new_grid, old_grid, num_prefix_tokens=1)
    out = copy.copy(export)
    out["state_dict"] = state
    out["timm_kwargs"] = {**kw, "img_size": (h, w) if h != w else h, "patch_size": p}
    out["transfer"] = {"from_img_size": kw["img_size"], "from_patch_size": old_p, "img_size": [h, w],
                       "patch_size": p, "grid": new_grid}
    log.info("encoder transferred: %s px / patch %d (grid %s) -> %dx%d px / patch %d (grid %s)",
             kw["img_size"], old_p, old_grid, h, w, p, new_grid)
    return out


def encoder_width_tokens(model: nn.Module, tokens: int | None = None) -> int | None:
    """Embedding width x tokens per image of the first patch embedding in ``model`` (MAE, timm ViT,
    the dense backbones): the size ``runtime.resolve_amp``'s CPU rule reads. ``tokens``: the tokens the
    encoder processes (pretraining: the kept ones); default all patches. None without a patch embedding."""
    for module in model.modules():
        embed = getattr(module, "patch_embed", None)
        proj = getattr(embed, "proj", None)
        if isinstance(proj, nn.Conv2d) and isinstance(getattr(embed, "num_patches", None), int):
            return proj.out_channels * (embed.num_patches if tokens is None else tokens)
    return None


def export_width_tokens(export: dict, img_size: int | None = None) -> int:
    """``encoder_width_tokens`` of an encoder export (all patches at ``img_size``, default its own)."""
    kw = export["timm_kwargs"]
    size, patch = _pair(img_size or kw["img_size"], "img_size"), _pair(kw["patch_size"], "patch_size")
    return kw["embed_dim"] * (size[0] // patch[0]) * (size[1] // patch[1])


def feature_blocks(depth: int) -> list[int]:
    """[3, 5, 7, 11] for 12 blocks, scaled to ``depth`` (24 -> [7, 11, 15, 23]; 4 -> [0, 1, 2, 3]);
    small depths may repeat a block."""
    return [max(0, round((i + 1) * depth / 12) - 1) for i in PAPER_FEATURE_BLOCKS]


class ViTFeatures(nn.Module):
    """A stock timm ViT from an export; ``forward`` -> 4 maps [B, D, H / p, W / p]."""

    def __init__(self, export: dict, drop_path: float = 0.0, blocks: list[int] | None = None):
        super().__init__()
        self.vit, _ = timm_vit_from_export(export, 0, global_pool="token", dynamic_img_size=True,
                                           drop_path_rate=drop_path)
        self.vit.norm = nn.Identity()  # features are taken before the final norm (unused: no dead params)
        self.blocks = blocks if blocks is not None else feature_blocks(len(self.vit.blocks))
        self.patch_size = self.vit.patch_embed.patch_size[0]
        self.embed_dim = self.vit.embed_dim

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        take = sorted(set(self.blocks))
        maps = self.vit.forward_intermediates(x, take, output_fmt="NCHW", intermediates_only=True)
        by_block = dict(zip(take, maps))
        return [by_block[b] for b in self.blocks]

    def group_matcher(self, coarse: bool = False) -> dict:
        return self.vit.group_matcher(coarse)


class FeaturePyramid(nn.Module):
    """mmseg's Feature2Pyramid: one map per rescale factor (4, 2, 1 or 0.5)."""

    def __init__(self, dim: int, rescales=RESCALES):
        super().__init__()
        ops = []
        for k in rescales:
            if k == 4:
                ops.append(nn.Sequential(nn.ConvTranspose2d(dim, dim, 2, 2), nn.BatchNorm2d(dim), nn.GELU(),
                                         nn.ConvTranspose2d(dim, dim, 2, 2)))
            elif k == 2:
                ops.append(nn.ConvTranspose2d(dim, dim, 2, 2))
            elif k == 1:
                ops.append(nn.Identity())
            elif k == 0.5:
                ops.append(nn.MaxPool2d(2, 2))
            else:
                raise ValueError(f"rescale {k} is not supported; allowed values: 4, 2, 1, 0.5")
        self.ops = nn.ModuleList(ops)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(feats) != len(self.ops):
            raise ValueError(f"got {len(feats)} feature maps for {len(self.ops)} rescales")
        return [op(f) for op, f in zip(self.ops, feats)]
