"""Evaluation protocols: kNN / linear probe on known feature sets, encoder loading, fine-tuning
(timm loading, augmentation at small sizes, exact resume, DDP), clear errors."""
import json
import math

import pytest
import torch
from conftest import run_one_and_two_processes
from PIL import Image

from colormae.cli import main as colormae_main
from colormae.data.datasets import DATASETS, split_caveat
from colormae.engines import finetune as ft
from colormae.engines.finetune import FinetuneConfig, build_finetune_model
from colormae.engines.frozen import evaluate_frozen, extract_features, knn_classify, linear_probe
from colormae.files import load_checkpoint
from colormae.models.mae import export_encoder, mae_model
from colormae.run.artifacts import load_encoder
from colormae.run.rundir import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny ops run faster on one thread


@pytest.fixture(scope="module")
def run_dir(micro_run):
    """A finished micro pretraining run (encoder.pth + checkpoint-last.pth; conftest.micro_run)."""
    return micro_run()


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
    assert lars["optimizer"] == "lars" and lars["top1"] == 1.0 and lars["final_loss"] < 1e-3
    # why SGD is the cached probe's default: at MAE's blr and a small batch, LARS's trust ratio
    # (0.001 |w| / |g|) barely moves the weights, where SGD already separates the clusters
    slow = linear_probe(xtr, ytr, xte, yte, num_classes=10, epochs=30, batch_size=64, optimizer="lars", blr=0.1)
    assert slow["final_loss"] > 2.0 and slow["top1"] < 0.5
    with pytest.raises(ValueError, match="optimizer="):
        linear_probe(xtr, ytr, xte, yte, num_classes=10, optimizer="adam")
    with pytest.raises(ValueError, match="at least 2 training samples .*got 1"):
        linear_probe(xtr[:1], ytr[:1], xte, yte, num_classes=10)


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
    from colormae.data import datasets as data
    export = load_encoder(run_dir)
    ds = data.build_dataset("embedded", None, "test", data.eval_transform(32), labeled=True, length=10, img_size=32)
    f_cls, y = extract_features(export, ds, batch_size=4, pool="cls")
    f_avg, y2 = extract_features(export, ds, batch_size=4, pool="avg")
    assert f_cls.shape == f_avg.shape == (10, 64) and f_cls.dtype == torch.float32
    assert y.dtype == torch.long and torch.equal(y, y2) and torch.equal(y, torch.tensor([ds[i][1] for i in range(10)]))
    assert not torch.allclose(f_cls, f_avg)
    # the right tokens: [CLS] is token 0 of the normed sequence, avg the mean of the patch tokens
    from colormae.models.mae import timm_vit_from_export
    vit, _ = timm_vit_from_export(export, num_classes=0, global_pool="token")
    imgs = torch.stack([ds[i][0] for i in range(10)])
    with torch.no_grad():
        tokens = vit.norm(vit.blocks(vit._pos_embed(vit.patch_embed(imgs))))
    torch.testing.assert_close(f_cls, tokens[:, 0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(f_avg, tokens[:, 1:].mean(1), atol=1e-5, rtol=1e-4)
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
    # the embedded test crops are crops of the train photos: the score says what it measures (issue 23.5)
    assert "near-duplicate retrieval" in r["caveat"]


def test_only_the_embedded_split_carries_a_caveat():
    assert {name: split_caveat(name) is not None for name in DATASETS} == {
        "embedded": True, "cifar10": False, "imagefolder": False}


def test_evaluate_frozen_mismatch_fails_before_data(tmp_path):
    export = export_encoder(mae_model("mae_vit_tiny_patch4_64"))
    with pytest.raises(ValueError, match="encoder/preset mismatch"):
        evaluate_frozen(export, "cifar10", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="unknown dataset"):
        evaluate_frozen(export, "mnist")


# -- fine-tuning ---------------------------------------------------------------------------------

def ft_cfg(encoder, out, **kw) -> FinetuneConfig:
    base = dict(encoder=str(encoder), protocol="finetune", dataset="embedded", train_length=64, test_length=16,
                epochs=2, batch_size=16, warmup_epochs=0.5, blr=1e-3, amp="none", output_dir=str(out), log_every=1,
                seed=0, device="cpu")
    return FinetuneConfig(**{**base, **kw})


def test_finetune_model_is_stock_timm_loaded_with_the_encoder(run_dir):
    export = load_encoder(run_dir)
    model, result = build_finetune_model(export, num_classes=7, drop_path=0.1)
    assert type(model).__module__.startswith("timm.")
    assert sorted(result.missing_keys) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert not result.unexpected_keys
    state = model.state_dict()
    for k in ("blocks.1.attn.qkv.weight", "patch_embed.proj.weight", "cls_token", "pos_embed"):
        assert torch.equal(state[k], export["state_dict"][k]), k
    assert model.head.out_features == 7 and model.global_pool == "avg"
    assert model.head.weight.abs().max() < 1e-3  # MAE's near-zero head init


@pytest.mark.parametrize("size", [32, 64])
def test_randaugment_pipeline_at_small_sizes(size):
    from timm.data.auto_augment import RandAugment
    tf = ft.train_transform(size, FinetuneConfig())
    img = Image.new("RGB", (size, size), (120, 30, 200))
    for seed in range(20):
        torch.manual_seed(seed)
        assert tf(img).shape == (3, size, size)
    # magnitude 10 asks timm's increasing posterize for 0 bits, which Pillow 13 rejects
    ra = next(t for t in tf.transforms if isinstance(t, RandAugment))
    op = next(o for o in ra.ops if o.name == "PosterizeIncreasing")
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0
    assert op(img).size == (size, size)


def test_cli_protocols_write_summaries(run_dir, tmp_path):
    common = ["--encoder", str(run_dir), "--train-length", "64", "--test-length", "16", "--device", "cpu"]
    s = colormae_main(["finetune", *common, "--protocol", "finetune", "--max-steps", "2", "--batch-size", "16",
                       "--amp", "bf16", "--output-dir", str(tmp_path / "ft")])
    assert s["steps"] == 2 and not s["finished"] and 0 <= s["top1"] <= 1
    for name in ("summary.json", "config.json", "metrics.jsonl", "checkpoint-last.pth"):
        assert (tmp_path / "ft" / name).exists(), name
    for protocol, extra in (("knn", []), ("linprobe-cached", ["--epochs", "5", "--batch-size", "32"])):
        colormae_main(["finetune", *common, "--protocol", protocol, "--output-dir", str(tmp_path / protocol), *extra])
        summary = json.loads((tmp_path / protocol / "summary.json").read_text())
        assert summary["protocol"] == protocol and 0 <= summary["top1"] <= 1 and summary["num_train"] == 64
        assert summary["environment"]["torch"] == torch.__version__
    summary = json.loads((tmp_path / "ft" / "summary.json").read_text())
    for key in ("top1", "top5", "config", "environment", "wall_time_s", "images_per_s", "missing_keys"):
        assert key in summary, key


def test_finetune_interrupted_then_resumed_matches_uninterrupted(run_dir, tmp_path):
    full = ft.run(ft_cfg(run_dir, tmp_path / "full"))
    assert full["finished"] and full["steps"] == 8 and len(full["evals"]) == 2
    part = ft.run(ft_cfg(run_dir, tmp_path / "cut", max_steps=3))  # mid-epoch 0
    assert part["steps"] == 3 and not part["finished"]
    resumed = ft.run(ft_cfg(run_dir, tmp_path / "cut", resume="auto"))

    def records(out):
        return [{k: v for k, v in r.items() if k != "img_per_s"} for r in read_metrics(out)]
    assert records(tmp_path / "cut") == records(tmp_path / "full")
    assert resumed["evals"] == full["evals"] and resumed["top1"] == full["top1"]
    a = load_checkpoint(tmp_path / "full" / "checkpoint-last.pth")["model"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoint-last.pth")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list(tmp_path.rglob("*.tmp"))


def test_finetune_errors_come_before_the_model(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(ft, "build_finetune_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("built")))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        ft.run(ft_cfg(tmp_path / "missing.pth", tmp_path))
    with pytest.raises(ValueError, match="num_classes=3 but the dataset has 16"):
        ft.run(ft_cfg(run_dir, tmp_path, num_classes=3))
    with pytest.raises(ValueError, match="encoder/preset mismatch"):
        ft.run(ft_cfg(run_dir, tmp_path, img_size=64))
    enc64 = tmp_path / "enc64.pth"
    torch.save(export_encoder(mae_model("mae_vit_tiny_patch4_64")), enc64)
    with pytest.raises(ValueError, match="encoder/preset mismatch"):
        ft.run(ft_cfg(enc64, tmp_path, dataset="cifar10", data_root=str(tmp_path / "nowhere")))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ft.run(ft_cfg(run_dir, tmp_path, dataset="imagefolder", data_root=str(tmp_path / "nowhere")))
    with pytest.raises(ValueError, match="dataset='mnist' is not supported"):
        ft.run(ft_cfg(run_dir, tmp_path, dataset="mnist"))
    with pytest.raises(ValueError, match="protocol="):
        ft.run(ft_cfg(run_dir, tmp_path, protocol="svm"))
    with pytest.raises(ValueError, match="must be even"):
        ft.run(ft_cfg(run_dir, tmp_path, batch_size=15))
    with pytest.raises(SystemExit):
        colormae_main(["finetune", "--encoder", str(tmp_path / "missing.pth"), "--output-dir", str(tmp_path)])


def test_mae_linear_probe_protocol_trains_the_head_only(run_dir, tmp_path):
    s = ft.run(ft_cfg(run_dir, tmp_path, protocol="linprobe", max_steps=3, epochs=None, blr=None, batch_size=16,
                      warmup_epochs=None))
    assert s["protocol"] == "linprobe" and s["steps"] == 3 and s["config"]["epochs"] == 90
    assert s["config"]["weight_decay"] == 0.0 and s["config"]["blr"] == 0.1
    state = load_checkpoint(tmp_path / "checkpoint-last.pth")
    export = load_encoder(run_dir)
    for k, v in export["state_dict"].items():  # the encoder is frozen
        assert torch.equal(state["model"][k], v), k
    head = {k: v for k, v in state["model"].items() if k.startswith("head.")}
    assert set(head) >= {"head.0.running_mean", "head.1.weight", "head.1.bias"}  # BatchNorm (no affine) + linear
    assert "head.0.weight" not in head
    assert state["model"]["head.1.weight"].abs().max() > 0
    assert type(state["optimizer"]) is dict and len(state["optimizer"]["param_groups"]) == 2  # LARS: w, b


def test_resume_with_another_head_is_refused(run_dir, tmp_path):
    ft.run(ft_cfg(run_dir, tmp_path, max_steps=1))
    ckpt = load_checkpoint(tmp_path / "checkpoint-last.pth")
    ckpt["num_classes"] = 10
    torch.save(ckpt, tmp_path / "checkpoint-last.pth")
    with pytest.raises(ValueError, match="10-class head"):
        ft.run(ft_cfg(run_dir, tmp_path, resume="auto"))


@pytest.mark.slow
def test_two_process_gloo_matches_one_process(run_dir, tmp_path):
    # no mixup / drop path: those draw per rank, so only the per-sample augmentation is shared
    cli = ["-m", "colormae", "finetune", "--encoder", str(run_dir), "--train-length", "64", "--test-length", "16",
           "--epochs", "1", "--amp", "none", "--log-every", "1", "--mixup", "0", "--cutmix", "0", "--drop-path", "0"]
    one, two = run_one_and_two_processes(cli, tmp_path, global_batch=16)
    r1, r2 = read_metrics(one), read_metrics(two)
    assert len(r1) == len(r2) == 6  # 4 steps + 1 evaluation + the epoch's mean loss
    for a, b in zip(r1, r2):
        for k in ("loss", "test_top1", "test_loss", "epoch_loss"):
            if k in a:
                assert abs(a[k] - b[k]) <= 1e-4 * abs(a[k]) + 1e-6, (r1, r2)
    assert json.loads((two / "summary.json").read_text())["world_size"] == 2
