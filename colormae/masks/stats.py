"""Numbers that describe a batch of patch masks: how the visible patches clump together.

The paper describes its masks qualitatively (Fig. 1-2): red keeps a few big blobs, blue spreads the
visible patches evenly, green is "a clustered version of blue". These statistics put numbers on
that, on the 4-connected components of the VISIBLE patches (mask == 0) of each sample:

- ``cluster_size``: mean size of a visible cluster (per sample: visible / clusters, then averaged),
- ``num_clusters``: mean number of visible clusters per sample,
- ``largest_cluster``: mean size of each sample's largest visible cluster,
- ``neighbour_fraction``: fraction of visible patches with at least one visible 4-neighbour,
- ``clustering_vs_random``: ``cluster_size`` divided by the same number for random (MAE) masks
  with the same grid and number of visible patches, so 1 = as clumpy as random, > 1 = clumpier,
- ``edge_correlation``: :func:`edge_correlation` of the visible indicator (1 visible, 0 masked):
  how much a patch on one edge of the image predicts the patch facing it on the opposite edge. On
  an image they are ``grid - 1`` patches apart, so it is ~0 for every kind (random: -1 / (L - 1),
  the exact-count constraint; red: slightly negative, since its few big blobs rarely reach both
  edges); a mask made on a torus, where opposite edges are neighbours, shows a clearly positive
  value (red from a periodic 14x14 pattern: 0.72).

The grid is not a torus here (unlike the noise): patches on opposite edges of an image are not
neighbours.
"""
from __future__ import annotations

import functools
import logging
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from .maskers import KINDS, SOURCES, make_masker, masks_from_scores
from .noise import COLORS

log = logging.getLogger(__name__)

# 4-connectivity inside each sample and no connection between samples, so one ndimage.label call
# over the whole [B, grid, grid] stack labels every sample separately.
_STRUCTURE_4 = np.zeros((3, 3, 3), dtype=bool)
_STRUCTURE_4[1] = ndimage.generate_binary_structure(2, 1)

RANDOM_REFERENCE_BATCH = 4096
RANDOM_REFERENCE_SEED = 0


def _visible(mask: torch.Tensor | np.ndarray, grid: int) -> np.ndarray:
    """Boolean [B, grid, grid] array, True where the patch is visible (mask == 0)."""
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if m.size % (grid * grid) != 0:
        raise ValueError(f"mask of shape {m.shape} does not hold whole {grid}x{grid} grids")
    return m.reshape(-1, grid, grid) == 0


def visible_clusters(mask: torch.Tensor | np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """4-connected components of the visible patches of each sample.

    ``mask`` is [B, L], [B, grid, grid] or a single [L] mask, 1 = masked (MAE's convention).
    Returns ``(labels, num_clusters)``: labels [B, grid, grid] int, 0 on masked patches and
    1..k on the k visible clusters of each sample (numbered per sample), and num_clusters [B].
    """
    return _label_visible(_visible(mask, grid))


def _label_visible(visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, _ = ndimage.label(visible, structure=_STRUCTURE_4)
    # Labels grow in raster order over the stack, so each sample's labels follow the previous
    # sample's; the running max gives the offset to subtract (an all-masked sample adds none).
    last = np.maximum.accumulate(labels.reshape(len(labels), -1).max(axis=1))
    first = np.concatenate([[0], last[:-1]])
    labels = np.where(visible, labels - first[:, None, None], 0)
    return labels, last - first


def edge_correlation(values: torch.Tensor | np.ndarray, grid: int) -> float:
    """Pearson correlation between the values on opposite edges of each ``grid`` x ``grid`` sample.

    ``values`` is [B, L], [B, grid, grid] or a single [L] array (a mask, a visible indicator or
    per-patch scores). The pairs are (v[b, i, 0], v[b, i, grid-1]) and (v[b, 0, j], v[b, grid-1, j])
    for every sample b and every i, j: 2 * grid pairs per sample, pooled over the batch. Each pair
    is counted in both orders, so the statistic is symmetric and uses one pooled mean m and
    variance: r = mean((u - m) (v - m)) / mean((u - m)^2) over all ordered pairs (u, v). For a binary
    indicator with edge fraction m this is (P(both 1) - m^2) / (m - m^2). NaN when the edge values
    are all equal.
    """
    v = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if v.size % (grid * grid) != 0:
        raise ValueError(f"array of shape {v.shape} does not hold whole {grid}x{grid} grids")
    v = v.reshape(-1, grid, grid).astype(np.float64)
    first = np.concatenate([v[:, :, 0], v[:, 0, :]], axis=1).ravel()
    last = np.concatenate([v[:, :, -1], v[:, -1, :]], axis=1).ravel()
    m = (first.mean() + last.mean()) / 2
    a, b = first - m, last - m
    var = (np.mean(a * a) + np.mean(b * b)) / 2
    return float(np.mean(a * b) / var) if var > 0 else float("nan")


def _cluster_numbers(mask: torch.Tensor | np.ndarray, grid: int) -> dict[str, float]:
    """Everything but the random reference (which is itself computed with this function)."""
    visible = _visible(mask, grid)
    labels, counts = _label_visible(visible)
    n_visible = visible.reshape(len(visible), -1).sum(axis=1)
    has = counts > 0  # samples without a visible patch have no cluster size
    largest = [np.bincount(lab.ravel())[1:].max() for lab, h in zip(labels, has) if h]

    # A visible patch "has a neighbour" if any of its 4 neighbours inside the grid is visible.
    nb = np.zeros_like(visible)
    nb[:, 1:, :] |= visible[:, :-1, :]
    nb[:, :-1, :] |= visible[:, 1:, :]
    nb[:, :, 1:] |= visible[:, :, :-1]
    nb[:, :, :-1] |= visible[:, :, 1:]
    total_visible = int(n_visible.sum())

    return {
        "visible": float(n_visible.mean()),
        "num_clusters": float(counts.mean()),
        "cluster_size": float((n_visible[has] / counts[has]).mean()) if has.any() else float("nan"),
        "largest_cluster": float(np.mean(largest)) if largest else float("nan"),
        "neighbour_fraction": float((visible & nb).sum() / total_visible) if total_visible else float("nan"),
        "edge_correlation": edge_correlation(visible, grid),
    }


@functools.lru_cache(maxsize=64)
def random_reference(grid: int, n_keep: int, batch: int = RANDOM_REFERENCE_BATCH,
                     seed: int = RANDOM_REFERENCE_SEED) -> dict[str, float]:
    """Statistics of random (MAE) masks keeping ``n_keep`` of ``grid`` x ``grid`` patches.

    Drawn with a fixed seed and cached, so every ratio against it is deterministic and cheap.
    """
    log.debug("random reference: grid=%d n_keep=%d batch=%d seed=%d", grid, n_keep, batch, seed)
    gen = torch.Generator().manual_seed(seed)
    # Same scores as the "random" masker (negated MAE noise), but with an exact n_keep, which a
    # mask_ratio cannot always express.
    mask, _, _ = masks_from_scores(-torch.rand(batch, grid * grid, generator=gen), n_keep)
    return _cluster_numbers(mask, grid)


def mask_statistics(mask: torch.Tensor | np.ndarray, grid: int) -> dict[str, float]:
    """Clustering statistics of a batch of masks (see the module docstring for each key).

    The random reference keeps the batch's mean number of visible patches (rounded).
    """
    stats = _cluster_numbers(mask, grid)
    n_keep = int(round(stats["visible"]))
    if n_keep < 1:
        stats["clustering_vs_random"] = float("nan")
        return stats
    stats["clustering_vs_random"] = stats["cluster_size"] / random_reference(grid, n_keep)["cluster_size"]
    return stats


def mask_statistics_table(kinds: Sequence[str] = KINDS, grid: int = 14, mask_ratio: float = 0.75,
                          batch: int = 256, seed: int = 0,
                          sources: Sequence[str] = SOURCES) -> pd.DataFrame:
    """One row per (kind, source) with :func:`mask_statistics` of ``batch`` masks drawn from ``seed``.

    ``sources`` only applies to the color kinds; the others are always "online". Banks are the
    default ones of :func:`colormae.make_masker` with ``bank_seed=seed``.
    """
    rows = []
    for kind in kinds:
        for source in (sources if kind in COLORS else ("online",)):
            extra = {"bank_seed": seed} if source == "bank" else {}
            masker = make_masker(kind, grid, mask_ratio, source=source, **extra)
            mask, _, _ = masker(batch, generator=torch.Generator().manual_seed(seed))
            rows.append({"kind": kind, "source": source, **mask_statistics(mask, grid)})
    return pd.DataFrame(rows).set_index(["kind", "source"])
