"""Weighted kNN (colormae.engines.frozen.knn_classify) is a COSINE kNN: features of unequal norms."""
import numpy as np
import pytest
import torch

from colormae.engines.frozen import knn_classify


def test_cosine_not_dot_product_picks_the_neighbour():
    """A long train vector at 60° from the query beats a unit one at ~6° on dot product, not on
    cosine: the 1-NN must be the unit one (class 1)."""
    train = torch.tensor([[10.0, 0.0], [0.6, 0.8]])
    labels = torch.tensor([0, 1])
    test = torch.tensor([[0.5, 0.866], [0.3, 0.954]])
    assert ((test @ train.T).argmax(1) == 0).all()  # dot product: the long vector
    assert ((torch.nn.functional.cosine_similarity(test[:, None], train[None], dim=2)).argmax(1) == 1).all()
    out = knn_classify(train, labels, test, torch.tensor([1, 1]), k=1, num_classes=6)
    assert out["top1"] == 1.0
    # k = 2: both train samples vote with exp(cos / T); class 1's cosine is the larger
    out = knn_classify(train, labels, test, torch.tensor([1, 1]), k=2, temperature=0.07, num_classes=6)
    assert out["top1"] == 1.0


def test_matches_a_reference_cosine_knn_with_random_norms():
    """Random features whose rows are scaled by factors spread over 3 decades: the same top-1 as a
    numpy weighted cosine kNN, and unchanged when every row gets another scale."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(6, 16))
    train_y = rng.integers(0, 6, 300)
    test_y = rng.integers(0, 6, 100)
    train = centers[train_y] + 1.2 * rng.normal(size=(300, 16))
    test = centers[test_y] + 1.2 * rng.normal(size=(100, 16))
    scale = lambda n: 10 ** rng.uniform(-1.5, 1.5, (n, 1))  # noqa: E731
    train_s, test_s = train * scale(300), test * scale(100)

    def reference(tr, te, k=10, t=0.07):
        tr = tr / np.linalg.norm(tr, axis=1, keepdims=True)
        te = te / np.linalg.norm(te, axis=1, keepdims=True)
        sim = te @ tr.T
        nn = np.argsort(-sim, axis=1)[:, :k]
        votes = np.zeros((len(te), 6))
        for i in range(len(te)):
            for j in nn[i]:
                votes[i, train_y[j]] += np.exp(sim[i, j] / t)
        return float((votes.argmax(1) == test_y).mean())

    f = lambda a: torch.from_numpy(a).float()  # noqa: E731
    out = knn_classify(f(train_s), torch.from_numpy(train_y), f(test_s), torch.from_numpy(test_y), k=10, num_classes=6)
    assert out["top1"] == pytest.approx(reference(train_s, test_s), abs=1e-9)
    same = knn_classify(f(train), torch.from_numpy(train_y), f(test), torch.from_numpy(test_y), k=10, num_classes=6)
    assert same["top1"] == out["top1"] and same["top5"] == out["top5"]
    # the data are such that ignoring the norms would change the answer
    dot = test_s @ train_s.T
    assert (dot.argmax(1) != (test_s / np.linalg.norm(test_s, axis=1, keepdims=True) @ (
        train_s / np.linalg.norm(train_s, axis=1, keepdims=True)).T).argmax(1)).mean() > 0.5
