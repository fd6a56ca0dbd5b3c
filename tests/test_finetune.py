"""Evaluation protocols: kNN / linear probe on known feature sets, encoder loading, clear errors."""
import math

import pytest
import torch

from colormae.finetune import (evaluate_frozen, extract_features, knn_classify, linear_probe, load_encoder)
from colormae.model import export_encoder, mae_model
from colormae.pretrain import PretrainConfig, train

MICRO = "mae_vit_micro_patch4_32"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished micro pretraining run (encoder.pth + checkpoint-last.pth), in a few seconds."""
    out = tmp_path_factory.mktemp("pretrain")
    train(PretrainConfig(preset=MICRO, dataset="embedded", dataset_length=64, epochs=1, batch_size=32,
                         amp="none", output_dir=str(out), seed=0))
    return out


def clusters(n_per_class: int, num_classes: int, dim: int = 16, spread: float = 0.1, seed: int = 0):
    """Well-separated Gaussian clusters around random unit centres: any sane classifier gets 100 %."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(num_classes, dim, generator=g), dim=1) * 3
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    feats = centres[labels] + spread * torch.randn(len(labels), dim, generator=g)
    return feats, labels


# -- kNN and linear probe on features with known answers -----------------------------------------

def test_knn_separable_clusters_are_perfect_and_scale_invariant():
    xtr, ytr = clusters(30, 6, seed=0)
    xte, yte = clusters(10, 6, seed=0)  # same centres (same seed), fresh noise would also do
    r = knn_classify(xtr, ytr, xte + 0.05 * torch.randn_like(xte), yte, k=20, num_classes=6)
    assert r["top1"] == 1.0 and r["top5"] == 1.0
    # cosine similarity: scaling the features changes nothing
    assert knn_classify(xtr * 7, ytr, xte * 0.1, yte, k=20, num_classes=6)["top1"] == 1.0


def test_knn_exact_weighted_vote():
    # Test point at 5 deg. Class 0: one train point at 0 deg (cos 5 deg = 0.996); class 1: points at
    # 40 and -40 deg (cos 35 = 0.819, cos 45 = 0.707). With k=3, T=1 the two class-1 votes win
    # (e^.819 + e^.707 = 4.30 > e^.996 = 2.71); at T=0.07 the nearest point dominates; k=1 -> class 0.
    deg = torch.tensor([0.0, 40.0, -40.0]) * math.pi / 180
    xtr = torch.stack([deg.cos(), deg.sin()], 1)
    ytr = torch.tensor([0, 1, 1])
    t = torch.tensor([[math.cos(math.radians(5)), math.sin(math.radians(5))]])
    assert knn_classify(xtr, ytr, t, torch.tensor([1]), k=3, temperature=1.0, num_classes=2)["top1"] == 1.0
    assert knn_classify(xtr, ytr, t, torch.tensor([0]), k=3, temperature=0.07, num_classes=2)["top1"] == 1.0
    assert knn_classify(xtr, ytr, t, torch.tensor([0]), k=1, temperature=1.0, num_classes=2)["top1"] == 1.0
    # k larger than the train set is capped; chunking gives the same answer as one big batch
    r = knn_classify(xtr, ytr, t.repeat(5, 1), torch.ones(5, dtype=torch.long), k=50, temperature=1.0,
                     num_classes=2, chunk=2)
    assert r["k"] == 3 and r["top1"] == 1.0


def test_knn_and_linear_probe_are_at_chance_with_permuted_labels():
    xtr, ytr = clusters(40, 10, seed=1)
    xte, yte = clusters(20, 10, seed=1)
    shuffled = ytr[torch.randperm(len(ytr), generator=torch.Generator().manual_seed(0))]
    assert knn_classify(xtr, shuffled, xte, yte, k=20, num_classes=10)["top1"] < 0.3
    assert linear_probe(xtr, shuffled, xte, yte, num_classes=10, epochs=20, batch_size=64)["top1"] < 0.3


def test_linear_probe_separable_clusters_and_determinism():
    xtr, ytr = clusters(40, 10, seed=2)
    xte, yte = clusters(20, 10, seed=2)
    r = linear_probe(xtr, ytr, xte, yte, num_classes=10, epochs=30, batch_size=64, seed=0)
    assert r["top1"] == 1.0 and r["top5"] == 1.0 and r["train_top1"] == 1.0
    assert r["steps"] == 30 * (400 // 64)
    assert linear_probe(xtr, ytr, xte, yte, num_classes=10, epochs=30, batch_size=64, seed=0) == r
    lars = linear_probe(xtr, ytr, xte, yte, num_classes=10, epochs=30, batch_size=64, optimizer="lars", blr=50)
    assert lars["optimizer"] == "lars" and 0 <= lars["top1"] <= 1
    with pytest.raises(ValueError, match="optimizer="):
        linear_probe(xtr, ytr, xte, yte, num_classes=10, optimizer="adam")


# -- encoders and features -------------------------------------------------------------------------

def test_load_encoder_from_run_dir_export_and_checkpoint(run_dir):
    a = load_encoder(run_dir)
    b = load_encoder(run_dir / "encoder.pth")
    c = load_encoder(run_dir / "checkpoint-last.pth")  # rebuilt MAE, exported
    assert a["timm_kwargs"]["img_size"] == 32
    for other in (b, c):
        assert other["state_dict"].keys() == a["state_dict"].keys()
        assert all(torch.equal(a["state_dict"][k], other["state_dict"][k]) for k in a["state_dict"])


def test_load_encoder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_encoder(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="encoder.pth"):
        load_encoder(tmp_path)  # an empty directory
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        load_encoder(tmp_path / "junk.pth")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="neither an encoder export"):
        load_encoder(tmp_path / "other.pth")


def test_extract_features_shapes_pools_and_labels(run_dir):
    from colormae import data
    export = load_encoder(run_dir)
    ds = data.build_dataset("embedded", None, "test", data.eval_transform(32), labeled=True, length=10, img_size=32)
    f_cls, y = extract_features(export, ds, batch_size=4, pool="cls")
    f_avg, y2 = extract_features(export, ds, batch_size=4, pool="avg")
    assert f_cls.shape == f_avg.shape == (10, 64) and f_cls.dtype == torch.float32
    assert y.dtype == torch.long and torch.equal(y, y2) and torch.equal(y, torch.tensor([ds[i][1] for i in range(10)]))
    assert not torch.allclose(f_cls, f_avg)
    # batch size does not change the features (eval mode, no randomness)
    assert torch.allclose(extract_features(export, ds, batch_size=10)[0], f_cls, atol=1e-5)
    with pytest.raises(ValueError, match="pool="):
        extract_features(export, ds, pool="max")


def test_evaluate_frozen_end_to_end(run_dir):
    r = evaluate_frozen(run_dir, "embedded", train_length=96, test_length=32, linprobe_epochs=5)
    for key in ("knn_top1", "knn_top5", "linprobe_top1", "linprobe_top5"):
        assert 0.0 <= r[key] <= 1.0, key
    assert (r["num_train"], r["num_test"], r["feature_dim"]) == (96, 32, 64)
    assert r["wall_time_s"] > 0


def test_evaluate_frozen_mismatch_fails_before_data(tmp_path):
    export = export_encoder(mae_model("mae_vit_tiny_patch4_64"))
    with pytest.raises(ValueError, match="encoder/preset mismatch"):
        evaluate_frozen(export, "cifar10", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="unknown dataset"):
        evaluate_frozen(export, "mnist")
