"""mask_stats on hand-made masks with known answers, and the paper's ordering of the colors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from colormae import COLORS, KINDS, make_masker
from colormae.masks.stats import (
    edge_correlation,
    mask_statistics,
    mask_statistics_table,
    random_reference,
    visible_clusters,
)

STATS = ("visible", "num_clusters", "cluster_size", "largest_cluster", "neighbour_fraction", "edge_correlation",
         "clustering_vs_random")


def mask_from_visible(visible: np.ndarray) -> np.ndarray:
    """[B, g, g] bool visible -> [B, L] float mask with MAE's 1 = masked."""
    return (~visible).reshape(len(visible), -1).astype(np.float32)


def test_checkerboard_has_singleton_clusters():
    g = 14
    visible = (np.indices((g, g)).sum(0) % 2 == 0)[None]
    stats = mask_statistics(mask_from_visible(visible), g)
    assert stats["visible"] == g * g / 2
    assert stats["num_clusters"] == g * g / 2
    assert stats["cluster_size"] == 1.0
    assert stats["largest_cluster"] == 1.0
    assert stats["neighbour_fraction"] == 0.0  # diagonal neighbours do not count


def test_single_block_is_one_cluster():
    g = 6
    visible = np.zeros((1, g, g), dtype=bool)
    visible[0, 2:4, 1:3] = True
    labels, counts = visible_clusters(torch.from_numpy(mask_from_visible(visible)), g)
    assert counts.tolist() == [1]
    assert labels.shape == (1, g, g)
    assert set(np.unique(labels[0])) == {0, 1}
    assert (labels[0] == 1).sum() == 4
    stats = mask_statistics(mask_from_visible(visible), g)
    assert stats["cluster_size"] == 4.0
    assert stats["neighbour_fraction"] == 1.0


def test_samples_are_labelled_separately_and_edges_do_not_wrap():
    g = 5
    visible = np.zeros((3, g, g), dtype=bool)
    visible[0, 0, 0] = visible[0, 0, g - 1] = True  # opposite edges: not neighbours (no torus)
    visible[0, 4, 2] = visible[0, 3, 2] = True  # one vertical pair
    # sample 1 is fully masked: no cluster, ignored by the size averages
    visible[2, :, 2] = True  # a column touching both sample borders: one cluster of 5
    labels, counts = visible_clusters(mask_from_visible(visible), g)
    assert counts.tolist() == [3, 0, 1]
    assert labels[0].max() == 3 and labels[1].max() == 0 and labels[2].max() == 1
    stats = mask_statistics(mask_from_visible(visible), g)
    assert stats["num_clusters"] == pytest.approx(4 / 3)
    assert stats["cluster_size"] == pytest.approx((4 / 3 + 5) / 2)  # per-sample means, averaged
    assert stats["largest_cluster"] == pytest.approx((2 + 5) / 2)
    assert stats["neighbour_fraction"] == pytest.approx((2 + 5) / (4 + 5))


def test_accepts_grid_shaped_and_single_masks():
    g = 4
    visible = np.zeros((g, g), dtype=bool)
    visible[0, :2] = True
    flat = mask_from_visible(visible[None])[0]
    assert visible_clusters(flat, g)[1].tolist() == [1]
    assert visible_clusters(flat.reshape(1, g, g), g)[1].tolist() == [1]
    with pytest.raises(ValueError):
        visible_clusters(np.zeros(10), g)


def flood_fill_cluster_sizes(visible: np.ndarray) -> list[float]:
    """Per-sample mean 4-connected cluster size, by a plain python flood fill (no scipy)."""
    sizes = []
    for vis in visible:
        g = vis.shape[0]
        seen, clusters = set(), 0
        for start in zip(*np.nonzero(vis)):
            if start in seen:
                continue
            clusters += 1
            stack = [start]
            seen.add(start)
            while stack:
                r, c = stack.pop()
                for rr, cc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                    if 0 <= rr < g and 0 <= cc < g and vis[rr, cc] and (rr, cc) not in seen:
                        seen.add((rr, cc))
                        stack.append((rr, cc))
        sizes.append(vis.sum() / clusters)
    return sizes


def test_random_reference_against_an_independent_count():
    """The random reference (scipy labels on torch masks) against a python flood fill on numpy
    permutations: mean cluster size of 49 visible of 14x14, within 4 standard errors."""
    ref = random_reference(14, 49)
    assert random_reference(14, 49) is ref  # cached
    rng = np.random.default_rng(0)
    visible = np.zeros((2000, 196), dtype=bool)
    for row in visible:
        row[rng.permutation(196)[:49]] = True
    sizes = flood_fill_cluster_sizes(visible.reshape(-1, 14, 14))
    se = np.std(sizes) / np.sqrt(len(sizes))
    assert abs(ref["cluster_size"] - np.mean(sizes)) < 4 * se, (ref["cluster_size"], np.mean(sizes), se)
    # A hand-made mask's ratio is its known cluster size over that reference.
    checker = (np.indices((14, 14)).sum(0) % 2 == 0) & (np.arange(14)[:, None] < 7)  # 49 singletons
    stats = mask_statistics(mask_from_visible(checker[None]), 14)
    assert stats["visible"] == 49 and stats["cluster_size"] == 1.0
    assert stats["clustering_vs_random"] == pytest.approx(1 / np.mean(sizes), abs=4 * se)


# --------------------------------------------------------------------------- edge correlation
def test_edge_correlation_known_answers():
    g = 4
    same = np.zeros((2, g, g))
    same[0, :, 0] = same[0, :, -1] = 1  # left and right edges both visible...
    same[1, 0, :] = same[1, -1, :] = 1  # ...top and bottom both visible
    # every pair (row pairs and column pairs of both samples) holds equal values: correlation 1
    assert edge_correlation(same, g) == pytest.approx(1.0)
    # every edge patch faces one in the other state: left column and top row visible except the
    # corners they share with the right column and bottom row, bottom-right corner visible
    opposite = np.zeros((1, g, g))
    opposite[0, :-1, 0] = opposite[0, 0, :-1] = opposite[0, -1, -1] = 1
    assert edge_correlation(opposite, g) == pytest.approx(-1.0)
    # (P(both) - m^2) / (m - m^2) on a hand-counted example: pairs (1,1), (1,0), (0,0), (0,0), both orders
    v = np.zeros((1, 2, 2))
    v[0, 0, 0] = v[0, 0, 1] = 1  # top row visible: rows (1,1),(0,0); columns (1,0),(1,0)
    m = 4 / 8
    assert edge_correlation(v, 2) == pytest.approx((2 / 8 - m * m) / (m - m * m))
    assert np.isnan(edge_correlation(np.ones((3, 16)), 4))
    with pytest.raises(ValueError, match="whole 4x4 grids"):
        edge_correlation(np.zeros(10), 4)


def batch_statistics(kind, source, batches=16, batch=64, seed=0):
    """Each statistic on ``batches`` independent batches: mean and standard error of the mean."""
    extra = {"bank_seed": seed} if source == "bank" else {}
    masker = make_masker(kind, 14, 0.75, source=source, **extra)
    rows = [mask_statistics(masker(batch, generator=torch.Generator().manual_seed(1000 * seed + i))[0], 14)
            for i in range(batches)]
    values = {k: np.array([r[k] for r in rows]) for k in STATS}
    return ({k: v.mean() for k, v in values.items()},
            {k: v.std(ddof=1) / np.sqrt(batches) for k, v in values.items()})


@pytest.mark.parametrize("color", COLORS)
def test_online_and_bank_masks_agree_on_every_statistic(color):
    """Online masks (windows of a bigger canvas) and bank windows: every mask_stats number agrees
    within 4 standard errors of the difference (each estimated from 16 batches of 64 masks).

    Before online masks were cropped from a bigger canvas they were tori, and edge_correlation
    differed by 0.76 (red), 0.22 (green), 0.14 (blue), 0.08 (purple): ~10-100 standard errors.
    """
    (online, se_online), (bank, se_bank) = batch_statistics(color, "online"), batch_statistics(color, "bank", seed=1)
    assert set(online) == set(STATS)
    for key in STATS:
        tol = 4 * np.hypot(se_online[key], se_bank[key]) + 1e-9
        assert abs(online[key] - bank[key]) <= tol, (color, key, online[key], bank[key], tol)
    # ≈ 0 (red's few big blobs rarely reach both edges of the fixed-count mask: ~ -0.04 either way)
    assert abs(online["edge_correlation"]) < 0.06, online["edge_correlation"]


# Mean visible-cluster size per kind (14x14, 75 %): 16384 masks (seeds 1000-1003 x 4096), with
# the standard error of that reference. A batch of 512 must land within 4 standard errors.
REFERENCE_CLUSTER_SIZE = {"random": (1.8310, 0.0018), "block": (16.102, 0.058), "grid": (1.0, 0.0),
                          "white": (1.8313, 0.0018), "red": (24.230, 0.093), "blue": (1.3972, 0.0009),
                          "green": (3.3528, 0.0042), "purple": (1.5644, 0.0014)}


@pytest.mark.parametrize("kind", KINDS)
def test_mean_cluster_size_per_kind(kind):
    mask = make_masker(kind, 14, 0.75)(512, generator=torch.Generator().manual_seed(0))[0]
    _, counts = visible_clusters(mask, 14)
    per_sample = 49 / counts
    ref, ref_se = REFERENCE_CLUSTER_SIZE[kind]
    tol = 4 * np.hypot(per_sample.std(ddof=1) / np.sqrt(len(per_sample)), ref_se) + 1e-9
    assert abs(per_sample.mean() - ref) <= tol, (kind, per_sample.mean(), ref, tol)
    assert mask_statistics(mask, 14)["cluster_size"] == pytest.approx(per_sample.mean())


def test_block_masks_leave_block_sized_holes():
    """BEiT masks rectangles of >= min_block_patches (16 on 14x14), so what stays visible comes in
    large pieces: the mean largest visible cluster is >= the minimum block (~30; random: ~7)."""
    m = make_masker("block", 14, 0.75)
    stats = mask_statistics(m(256, generator=torch.Generator().manual_seed(0))[0], 14)
    assert m.params["min_block_patches"] == 16
    assert stats["largest_cluster"] >= m.params["min_block_patches"], stats
    assert stats["clustering_vs_random"] > 4


@pytest.fixture(scope="module")
def table():
    return mask_statistics_table(("random", "red", "blue", "green"), grid=14, mask_ratio=0.75, batch=256, seed=0)


@pytest.mark.parametrize("source", ["online", "bank"])
def test_paper_ordering_of_cluster_size(table, source):
    size = {kind: table.loc[(kind, "online" if kind == "random" else source), "cluster_size"]
            for kind in ("random", "red", "blue", "green")}
    assert size["red"] > size["green"] > size["random"] > size["blue"], size


def test_table_has_one_row_per_kind_and_source(table):
    assert list(table.index) == [("random", "online"), ("red", "online"), ("red", "bank"), ("blue", "online"),
                                 ("blue", "bank"), ("green", "online"), ("green", "bank")]
    assert (table["visible"] == 49).all()
    assert list(table.columns) == list(STATS)
