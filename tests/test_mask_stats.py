"""mask_stats on hand-made masks with known answers, and the paper's ordering of the colors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from colormae import make_masker
from colormae.mask_stats import mask_statistics, mask_statistics_table, random_reference, visible_clusters


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


def test_random_reference_is_cached_and_clustering_of_random_is_one():
    ref = random_reference(14, 49)
    assert random_reference(14, 49) is ref
    gen = torch.Generator().manual_seed(123)
    mask, _, _ = make_masker("random", 14, 0.75)(512, generator=gen)
    assert mask_statistics(mask, 14)["clustering_vs_random"] == pytest.approx(1.0, abs=0.05)


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
    assert {"cluster_size", "num_clusters", "neighbour_fraction", "clustering_vs_random"} <= set(table.columns)
