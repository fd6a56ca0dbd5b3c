"""[CLS] self-attention of a ViT's last block, averaged over heads (the paper's Fig. 5, DINO's display).

timm's ``Attention`` computes its softmax inside ``F.scaled_dot_product_attention`` and never keeps
the probabilities, so a forward hook on the block's ``qkv`` projection takes q and k and the softmax
is recomputed with the module's own ``q_norm``, ``k_norm`` and ``scale``. Nothing of the block is
re-implemented: ``tests/test_attention.py`` checks that probabilities @ v, through the module's
``norm`` and ``proj``, reproduces the block's attention output.

Works for the MAE (``colormae.models.mae.MaskedAutoencoder``, all patches visible) and for stock timm
ViTs (the fine-tuned classifiers), both of which have ``blocks`` and one [CLS] token first.
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.datasets import sample_images
from ..data.dense import load_pennfudan
from ..files import project_path
from ..run.artifacts import grid_model
from ..run.pretrained import load_pretrained
from .figures import HELDOUT_NAMES, to_display

log = logging.getLogger(__name__)


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
    from matplotlib.figure import Figure

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


# -- notebook 07: Fig. 5 and the Penn-Fudan foreground fraction ----------------------------------

def pennfudan_test_or_reason(root: str | os.PathLike | None = None) -> tuple[list, str | None]:
    """(Penn-Fudan's test split, None), or ([], why it is unavailable)."""
    try:
        return load_pennfudan(root and str(project_path(root)), "test"), None
    except (FileNotFoundError, ImportError) as err:
        return [], f"Penn-Fudan unavailable ({err})"


def pennfudan_test(root: str | os.PathLike | None = None) -> list:
    """Penn-Fudan's test split (``data.dense.load_pennfudan``), or [] with a warning when it is not
    available (Fig. 5 then shows two datasets and the foreground fraction is skipped)."""
    samples, reason = pennfudan_test_or_reason(root)
    if reason:
        log.warning("%s: Fig. 5 shows two datasets and the foreground fraction is skipped", reason)
    return samples


def attention_groups(heldout: str, data_root: str | None, penn_test: Sequence, img_size: int, n: int
                     ) -> dict[str, torch.Tensor]:
    """Fig. 5's images by group name: ``n`` held-out test images, ``n`` evenly spaced Penn-Fudan
    test photos (resized whole; when ``penn_test`` is not empty) and, when the held-out set is not
    the embedded photographs, ``n`` of those."""
    groups = {HELDOUT_NAMES[heldout]: sample_images(heldout, data_root, "test", img_size, n)}
    if len(penn_test):
        picks = np.linspace(0, len(penn_test) - 1, n).round().astype(int)
        groups["Penn-Fudan test"] = resize_batch([penn_test[i].image for i in picks], None, img_size)[0]
    if heldout != "embedded":
        groups["embedded photos"] = sample_images("embedded", None, "test", img_size, n)
    return groups


def plot_group_attention(models: dict[str, nn.Module], groups: dict[str, torch.Tensor], *,
                         title: str | None = None):
    """Fig. 5: every group's images side by side (group names above them), one row per model
    (label -> encoder) with its [CLS] attention (``cls_attention``)."""
    imgs = torch.cat(list(groups.values()))
    maps = {label: cls_attention(model, imgs) for label, model in models.items()}
    col_titles = [g for g, x in groups.items() for _ in range(len(x))]
    return plot_attention(imgs, maps, col_titles=col_titles, title=title)


def batched_cls_attention(model: nn.Module, imgs: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """``cls_attention`` in batches (a ViT-B's [B, heads, 197, 197] probabilities for 50 images at once
    would hold ~90 MB per block)."""
    return torch.cat([cls_attention(model, chunk) for chunk in imgs.split(batch_size)])


def model_foreground_attention(model: nn.Module, samples: Sequence, img_size: int) -> dict:
    """The fraction of one encoder's [CLS] attention on person pixels of Penn-Fudan ``samples`` (images
    and instance masks resized whole to ``img_size``; masks at >= 128 px so boundary patches count their
    share), beside a uniform map's (the person area share). Returns ``images``, ``fraction`` (mean),
    ``std over images``, ``uniform`` (mean) and ``per_image`` (the fractions)."""
    imgs, fg = resize_batch([s.image for s in samples], [s.instances for s in samples], img_size,
                            mask_scale=max(1, 128 // img_size))
    maps = batched_cls_attention(model, imgs)
    frac = foreground_fraction(maps, fg)
    uniform = foreground_fraction(torch.ones_like(maps), fg)
    return {"images": len(samples), "fraction": float(frac.mean()),
            "std over images": float(frac.std()) if len(frac) > 1 else 0.0,
            "uniform": float(uniform.mean()), "per_image": [round(float(v), 6) for v in frac]}


def foreground_attention(grid_dir: str | os.PathLike, masks: Sequence[str], seeds: Sequence[int],
                         samples: Sequence, img_size: int, grid: int, *,
                         checkpoints: dict[str, str] | None = None) -> dict:
    """The fraction of each grid encoder's [CLS] attention on person pixels of Penn-Fudan
    ``samples`` (resized whole to ``img_size``), per mask and grid seed (missing seeds skipped),
    beside a uniform ``grid`` x ``grid`` map's (the person area share). A mask of ``checkpoints``
    (label -> file, ``figures.checkpoint_map``) is measured on that file's model instead, under
    the seed name "checkpoint".

    Returns ``images``, ``uniform`` (its mean), ``per_mask_per_seed`` (mask -> seed -> mean) and
    ``rows``, a table: the uniform map, then per mask its seeds, the mean over images and seeds
    and the standard deviation over images of the seed-averaged fraction."""
    imgs, fg = resize_batch([s.image for s in samples], [s.instances for s in samples], img_size)
    uniform = foreground_fraction(torch.ones(len(samples), grid, grid), fg)
    rows = {"uniform map (person area share)": {"seeds": "-", "mean": float(uniform.mean()),
                                                "std over images": float(uniform.std())}}
    fractions, checkpoints = {}, checkpoints or {}
    for m in masks:
        per_seed = {}
        if m in checkpoints:
            per_seed["checkpoint"] = foreground_fraction(batched_cls_attention(load_pretrained(checkpoints[m]), imgs),
                                                         fg)
        for s in () if m in checkpoints else seeds:
            try:
                model, _ = grid_model(grid_dir, m, s)
            except FileNotFoundError:
                continue
            per_seed[s] = foreground_fraction(cls_attention(model, imgs), fg)
        if per_seed:
            allv = torch.stack(list(per_seed.values()))
            rows[m] = {"seeds": ",".join(map(str, per_seed)), "mean": float(allv.mean()),
                       "std over images": float(allv.mean(0).std())}
            fractions[m] = {str(s): float(v.mean()) for s, v in per_seed.items()}
    return {"images": len(samples), "uniform": float(uniform.mean()), "per_mask_per_seed": fractions, "rows": rows}
