"""[CLS] self-attention of a ViT's last block, averaged over heads (the paper's Fig. 5, DINO's display).

timm's ``Attention`` computes its softmax inside ``F.scaled_dot_product_attention`` and never keeps
the probabilities, so a forward hook on the block's ``qkv`` projection takes q and k and the softmax
is recomputed with the module's own ``q_norm``, ``k_norm`` and ``scale``. Nothing of the block is
re-implemented: ``tests/test_attention.py`` checks that probabilities @ v, through the module's
``norm`` and ``proj``, reproduces the block's attention output.

Works for the MAE (``colormae.model.MaskedAutoencoder``, all patches visible) and for stock timm
ViTs (the fine-tuned classifiers), both of which have ``blocks`` and one [CLS] token first.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def attention_probs(attn: nn.Module, qkv: torch.Tensor) -> torch.Tensor:
    """Softmax attention [B, heads, N, N] of a timm ``Attention`` module from its qkv output [B, N, 3 C]."""
    b, n, _ = qkv.shape
    q, k, _ = qkv.reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    return ((q * attn.scale) @ k.transpose(-2, -1)).float().softmax(-1)


def _encode(model: nn.Module, imgs: torch.Tensor) -> None:
    if hasattr(model, "forward_encoder"):  # MaskedAutoencoder: every patch visible
        model.forward_encoder(imgs, None)
    else:  # timm VisionTransformer
        model.forward_features(imgs)


@torch.no_grad()
def block_attention(model: nn.Module, imgs: torch.Tensor, block: int = -1) -> torch.Tensor:
    """Attention probabilities [B, heads, N, N] of ``model.blocks[block]`` for ``imgs``."""
    if not hasattr(model, "blocks"):
        raise ValueError(f"model={type(model).__name__} has no 'blocks'; pass a MaskedAutoencoder or a timm ViT")
    attn = model.blocks[block].attn
    captured = {}
    handle = attn.qkv.register_forward_hook(lambda _m, _inp, out: captured.__setitem__("qkv", out))
    try:
        _encode(model, imgs)
    finally:
        handle.remove()
    return attention_probs(attn, captured["qkv"])


def cls_attention(model: nn.Module, imgs: torch.Tensor, block: int = -1) -> torch.Tensor:
    """[CLS] -> patch attention of ``block`` (default: the last), averaged over heads: [B, grid, grid].

    The [CLS] -> [CLS] entry is dropped, so a map sums to 1 minus the [CLS] self-attention; maps are
    renormalized to sum to 1 over patches (attention *distribution* over the image)."""
    probs = block_attention(model, imgs, block)[:, :, 0, 1:].mean(1)  # [B, L]
    probs = probs / probs.sum(-1, keepdim=True)
    g = int(round(probs.shape[-1] ** 0.5))
    if g * g != probs.shape[-1]:
        raise ValueError(f"{probs.shape[-1]} patch tokens do not form a square grid (extra prefix tokens?)")
    return probs.reshape(-1, g, g)


def upsample(maps: torch.Tensor, size: int | tuple[int, int], mode: str = "nearest") -> torch.Tensor:
    """[B, g, g] patch maps -> [B, H, W] (nearest: each patch covers its own pixels, DINO's display)."""
    return F.interpolate(maps[:, None].float(), size=size, mode=mode)[:, 0]


def foreground_fraction(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Fraction of each attention map's mass on foreground pixels: [B].

    ``maps`` [B, g, g] (any non-negative weights), ``masks`` [B, H, W] (non-zero = foreground, H and W
    multiples of g). Each patch's weight is spread evenly over its pixels, so a patch half covered by
    the person contributes half its weight: sum(attn x patch foreground share) / sum(attn).
    """
    if maps.dim() != 3 or masks.dim() != 3 or maps.shape[0] != masks.shape[0]:
        raise ValueError(f"maps [B, g, g] and masks [B, H, W] with the same B expected, got {tuple(maps.shape)} "
                         f"and {tuple(masks.shape)}")
    g, (h, w) = maps.shape[-1], masks.shape[-2:]
    if h % g or w % g or maps.shape[-2] != g:
        raise ValueError(f"mask size {h}x{w} must be a multiple of the {maps.shape[-2]}x{g} attention grid")
    share = F.avg_pool2d((masks != 0).float()[:, None], (h // g, w // g))[:, 0]  # [B, g, g]
    maps = maps.float()
    return (maps * share).sum((-2, -1)) / maps.sum((-2, -1))


# -- data and figure (Fig. 5) ---------------------------------------------------------------------

def resize_batch(images: list[torch.Tensor], masks: list[torch.Tensor] | None, img_size: int,
                 mask_scale: int = 4) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 images [3, H, W] (any sizes) -> normalized [B, 3, S, S] (ImageNet statistics, the
    engines' eval normalization) and their masks -> [B, S*mask_scale, S*mask_scale] (nearest).

    The whole image is resized (aspect ratio not kept), so image and mask stay aligned and the
    person is never cropped away."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
    imgs = torch.stack([(F.interpolate(im[None].float() / 255, size=(img_size, img_size), mode="bilinear",
                                       antialias=True, align_corners=False)[0] - mean) / std for im in images])
    if masks is None:
        return imgs, None
    side = img_size * mask_scale
    fg = torch.stack([F.interpolate(m[None, None].float(), size=(side, side), mode="nearest")[0, 0] for m in masks])
    return imgs, fg


def plot_attention(imgs: torch.Tensor, maps: dict[str, torch.Tensor], *, title: str | None = None,
                   col_titles: list[str] | None = None, size: float = 1.3, alpha: float = 0.6):
    """DINO-style figure: a row of images, then one row per encoder (label -> [B, g, g] [CLS]
    attention) with the map upsampled (bilinear) and overlaid; each map scaled to its own max.
    ``col_titles``: one per image (e.g. the dataset), shown above the first row."""
    import numpy as np
    from matplotlib.figure import Figure

    from .figures import to_display
    shown = to_display(imgs)
    n, h = len(shown), shown.shape[1]
    fig = Figure(figsize=(size * n + 1.2, size * (1 + len(maps)) + (0.4 if title else 0)))
    axes = np.atleast_2d(fig.subplots(1 + len(maps), n, squeeze=False))
    for r, (label, m) in enumerate([("image", None), *maps.items()]):
        up = None if m is None else upsample(m, h, mode="bilinear").numpy()
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(shown[c], interpolation="nearest")
            if up is not None:
                ax.imshow(up[c] / up[c].max(), cmap="inferno", alpha=alpha, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
            if r == 0 and col_titles:
                ax.set_title(col_titles[c], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
