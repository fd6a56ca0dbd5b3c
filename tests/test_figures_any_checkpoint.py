"""Figures of any checkpoint (colormae.analysis.checkpoint_figures: ``colormae reconstruct / attention / eigencam``)
and notebook 07's ``checkpoint`` / ``checkpoints`` parameters. Every file is written by the real library (timm,
transformers) or in the official layouts from tests/fixtures; the expected numbers are computed by the source
models themselves (Hugging Face's own loss, timm's own modules) or by hand, never by the code under test."""
from __future__ import annotations

import json

import pytest
import timm
import torch
from conftest import MICRO
from test_pretrained import fixture_states, hf_tiny_config, randomised

from colormae import cli, load_pretrained, make_masker, vitmae_noise
from colormae.analysis import attention, cam, checkpoint_figures, figures
from colormae.data.datasets import sample_images
from colormae.files import save_torch
from colormae.masks.maskers import KINDS
from colormae.models.mae import mae_model, patchify, unpatchify

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny ops, one thread, fp32 throughout


def embedded(n: int, size: int = 32) -> torch.Tensor:
    """The commands' default images (the bundled photographs' test crops)."""
    return sample_images("embedded", None, "test", size, n)


def seeded_masks(kind: str, n: int, grid: int = 8, ratio: float = 0.75, seed: int = 0):
    """The commands' masks: one generator seeded with --seed per kind."""
    return make_masker(kind, grid, ratio)(n, generator=torch.Generator().manual_seed(seed))


def record(out) -> dict:
    return json.loads(out.with_suffix(".json").read_text())


def small_vit(**kw) -> torch.nn.Module:
    return timm.create_model("vit_base_patch16_224", pretrained=False, img_size=32, patch_size=4, embed_dim=64,
                             depth=2, num_heads=2, **kw).eval()


# -- colormae reconstruct ----------------------------------------------------------------------------------

def test_reconstruct_hf_folder_loss_is_hugging_faces_own(tmp_path):
    """A ViTMAEForPreTraining folder (norm-pix): the recorded masked-patch loss under each kind is the loss HF
    itself computes for the same images and masks (noise = vitmae_noise)."""
    torch.manual_seed(0)
    hf = randomised(transformers.ViTMAEForPreTraining(hf_tiny_config(norm_pix_loss=True)))
    hf.save_pretrained(str(tmp_path / "vit-mae-tiny"))
    assert cli.main(["reconstruct", "--checkpoint", str(tmp_path / "vit-mae-tiny"), "--n-images", "3",
                     "--mask", "green", "random", "--seed", "5", "--out", str(tmp_path / "fig3.png")]) is None
    # (None: the console script exits with the entry point's return value, and 0 is success)
    out = tmp_path / "fig3.png"
    assert out.is_file() and out.stat().st_size > 1000
    rec = record(out)
    assert rec["format"] == "hf" and rec["norm_pix_loss"] is True and rec["masks"] == ["green", "random"]
    imgs = embedded(3)
    for kind in ("green", "random"):
        with torch.no_grad():
            theirs = hf(pixel_values=imgs, noise=vitmae_noise(seeded_masks(kind, 3, seed=5))).loss
        assert rec["masked_patch_mse"][kind]["loss"] == pytest.approx(float(theirs), rel=1e-5)


def test_reconstruct_mae_file_norm_pix_is_respected(tmp_path):
    """The same weights in facebookresearch/mae layout, trained with (``args.norm_pix_loss`` True) and without
    norm-pix: the shown reconstruction is de-normalized with each patch's own statistics only in the first
    case (pixel MSE computed here by hand from the source model's prediction)."""
    model = randomised(mae_model(MICRO))  # 2 heads: files in MAE layout do not record them
    for target in (True, False):
        torch.save({"model": model.state_dict(), "args": {"norm_pix_loss": target}}, tmp_path / f"mae_{target}.pth")
    imgs, masks = embedded(2), seeded_masks("green", 2)
    with torch.no_grad():
        _, pred, mask = model(imgs, masks)
    p = model.cfg.patch_size
    target = patchify(imgs, p)
    mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
    m = unpatchify(mask[..., None].expand(-1, -1, p * p * 3), p)
    expected = {}
    for norm_pix, shown in ((True, pred * (var + 1e-6) ** 0.5 + mean), (False, pred)):
        expected[norm_pix] = float((((unpatchify(shown, p) - imgs) ** 2) * m).sum() / m.sum())
    assert abs(expected[True] - expected[False]) > 0.05  # the test can tell the two apart
    got = {}
    for norm_pix in (True, False):
        cli.main(["reconstruct", "--checkpoint", str(tmp_path / f"mae_{norm_pix}.pth"), "--n-images", "2",
                  "--mask", "green", "--num-heads", "2", "--decoder-num-heads", "2",
                  "--out", str(tmp_path / f"rec_{norm_pix}.pdf")])
        rec = record(tmp_path / f"rec_{norm_pix}.pdf")
        assert rec["norm_pix_loss"] is norm_pix and rec["format"] == "mae"
        got[norm_pix] = rec["masked_patch_mse"]["green"]["pixel_mse"]
    assert got[True] == pytest.approx(expected[True], rel=1e-5)
    assert got[False] == pytest.approx(expected[False], rel=1e-5)
    # --no-norm-pix-loss overrides what the file says
    cli.main(["reconstruct", "--checkpoint", str(tmp_path / "mae_True.pth"), "--n-images", "2", "--mask", "green",
              "--num-heads", "2", "--decoder-num-heads", "2", "--no-norm-pix-loss", "--out", str(tmp_path / "o.png")])
    overridden = record(tmp_path / "o.png")["masked_patch_mse"]["green"]["pixel_mse"]
    assert overridden == pytest.approx(expected[False], rel=1e-5)


def test_reconstruct_our_run_and_folder_images(micro_run, tmp_path):
    """One of our run directories, shown any folder of images (any size: resized and centre-cropped)."""
    from PIL import Image
    (tmp_path / "photos" / "sub").mkdir(parents=True)
    Image.new("RGB", (90, 60), (200, 30, 30)).save(tmp_path / "photos" / "a.png")
    Image.new("RGB", (40, 70), (30, 200, 30)).save(tmp_path / "photos" / "sub" / "b.jpg")
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    cli.main(["reconstruct", "--checkpoint", str(micro_run("green")), "--images", str(tmp_path / "photos"),
              "--mask", "blue", "--out", str(tmp_path / "ours.png")])
    out = tmp_path / "ours.png"
    rec = record(out)
    assert rec["format"] == "colormae" and rec["images"] == ["a.png", "sub/b.jpg"] and rec["num_heads"] == 2
    imgs, names = checkpoint_figures.folder_images(tmp_path / "photos", 32, 8)
    assert imgs.shape == (2, 3, 32, 32) and names == rec["images"]
    # a uniform red photo stays uniform red after resize + crop + ImageNet normalization
    torch.testing.assert_close(imgs[0, 0], torch.full((32, 32), (200 / 255 - 0.485) / 0.229), atol=1e-5, rtol=0)


def test_reconstruct_refuses_encoder_only_files_and_bad_arguments(tmp_path, capsys):
    from safetensors.torch import save_file
    save_file(small_vit(num_classes=0).state_dict(), str(tmp_path / "vit_tiny.safetensors"))
    base = ["reconstruct", "--checkpoint", str(tmp_path / "vit_tiny.safetensors"), "--out", str(tmp_path / "r.png")]
    with pytest.raises(SystemExit, match="has no decoder .*encoder weights only"):
        cli.main(base)
    assert not (tmp_path / "r.png").exists()
    with pytest.raises(SystemExit, match="pretrained weights not found: .*nothing.pth"):
        cli.main(["reconstruct", "--checkpoint", str(tmp_path / "nothing.pth")])
    with pytest.raises(SystemExit, match="--images .*nowhere: not a folder"):
        cli.main([*base, "--images", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match="suffix must be one of .png"):
        cli.main([*base[:3], "--out", str(tmp_path / "r.txt")])
    with pytest.raises(SystemExit, match="kind='grid' .* needs mask_ratio=0.75"):
        cli.main([*base, "--mask", "grid", "--mask-ratio", "0.5"])
    (tmp_path / "r.png").write_bytes(b"earlier figure")
    with pytest.raises(SystemExit, match="r.png exists; pass --overwrite"):
        cli.main(base)
    assert (tmp_path / "r.png").read_bytes() == b"earlier figure"
    for bad in (["--mask", "orange"], ["--mask-ratio", "1.5"], ["--n-images", "0"], ["--bogus", "1"]):
        with pytest.raises(SystemExit) as exc:
            cli.main([*base, *bad])
        assert exc.value.code == 2  # argparse: names the flag and the allowed values
    err = capsys.readouterr().err
    assert "invalid choice: 'orange'" in err and "unrecognized arguments: --bogus" in err


# -- colormae attention ------------------------------------------------------------------------------------

def test_attention_of_a_timm_file_is_timms_own_attention(tmp_path):
    """A timm ViT (safetensors): the recorded maps are [n, g, g], sum to 1, and equal the attention
    recomputed on the timm module itself; without Penn-Fudan the fraction is skipped with the reason."""
    from safetensors.torch import save_file
    torch.manual_seed(0)
    vit = randomised(small_vit(num_classes=0), scale=0.3)
    save_file(vit.state_dict(), str(tmp_path / "vit_small.safetensors"))
    cli.main(["attention", "--checkpoint", str(tmp_path / "vit_small.safetensors"), "--num-heads", "2",
              "--n-images", "3", "--data-root", str(tmp_path / "no_pennfudan"), "--out", str(tmp_path / "a.png")])
    out = tmp_path / "a.png"
    rec = record(out)
    maps = torch.tensor(rec["cls_attention"]["bundled photos"])
    assert list(rec["cls_attention"]) == ["bundled photos"] and maps.shape == (3, 8, 8)
    torch.testing.assert_close(maps.sum((-2, -1)), torch.ones(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(maps, attention.cls_attention(vit, embedded(3)), atol=2e-6, rtol=0)
    # the tolerance tells the heads apart: the same file read with one head attends elsewhere
    one_head = attention.cls_attention(load_pretrained(tmp_path / "vit_small.safetensors", num_heads=1), embedded(3))
    assert (one_head - maps).abs().max() > 1e-4
    skipped = rec["pennfudan_foreground_attention"]["skipped"]
    assert skipped.startswith("Penn-Fudan unavailable") and "no_pennfudan" in skipped


def test_foreground_fraction_of_a_model_against_a_hand_computed_one():
    """Synthetic Penn-Fudan samples whose person covers the left 24 of 56 columns: resized whole to 32 px
    (masks to 128 px, nearest), that is 55 of 128 columns: three full patch columns and 7/16 of the fourth."""
    torch.manual_seed(0)
    model = randomised(mae_model(MICRO), scale=0.3)
    samples = []
    for _ in range(3):
        inst = torch.zeros(40, 56, dtype=torch.long)
        inst[:, :24] = 1
        samples.append(type("S", (), {"image": torch.randint(0, 255, (3, 40, 56), dtype=torch.uint8),
                                      "instances": inst})())
    got = attention.model_foreground_attention(model, samples, 32)
    maps = attention.cls_attention(model, attention.resize_batch([s.image for s in samples], None, 32)[0])
    by_hand = maps[..., :3].sum((-2, -1)) + 7 / 16 * maps[..., 3].sum(-1)
    assert got["images"] == 3 and got["uniform"] == pytest.approx(55 / 128, abs=1e-6)
    assert got["per_image"] == pytest.approx(by_hand.tolist(), abs=1e-6)
    assert got["fraction"] == pytest.approx(float(by_hand.mean()), abs=1e-6)
    assert got["std over images"] == pytest.approx(float(by_hand.std()), abs=1e-6)


# -- colormae eigencam -------------------------------------------------------------------------------------

def test_eigencam_of_an_official_colormae_classifier(tmp_path):
    """An official ColorMAE fine-tuned ViT-B (mmpretrain: backbone.ln2 = fc_norm, head.fc): the classifier
    rebuilt for EigenCAM gives the logits of a timm ViT holding the same tensors under MAE's names."""
    mm, mae = fixture_states("classifier", seed=1)
    torch.save({"state_dict": mm}, tmp_path / "colormae_vit-base_ft.pth")
    classifier = cam.load_classifier(tmp_path / "colormae_vit-base_ft.pth")
    reference = timm.create_model("vit_base_patch16_224", pretrained=False, global_pool="avg", num_classes=1000)
    reference.load_state_dict(mae)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(classifier(x), reference.eval()(x), atol=1e-5, rtol=0)
    assert classifier.global_pool == "avg"
    assert cam.eigencam(classifier, x).shape == (1, 224, 224)


def test_eigencam_command_on_timm_and_encoder_only_files(tmp_path):
    vit = randomised(small_vit(num_classes=5, global_pool="avg"))
    torch.save(vit.state_dict(), tmp_path / "vit_ft.pth")
    cli.main(["eigencam", "--checkpoint", str(tmp_path / "vit_ft.pth"), "--num-heads", "2", "--n-images", "2",
              "--out", str(tmp_path / "cam.png")])
    out = tmp_path / "cam.png"
    rec = record(out)
    assert (rec["classifier"], rec["num_classes"], rec["global_pool"]) == ("fine-tuned classifier", 5, "avg")
    x = embedded(2)
    with torch.no_grad():
        torch.testing.assert_close(cam.load_classifier(tmp_path / "vit_ft.pth", num_heads=2)(x), vit(x),
                                   atol=1e-5, rtol=0)
    torch.save({"model": mae_model(MICRO).state_dict()}, tmp_path / "mae_pretrain.pth")  # no head
    base = ["eigencam", "--checkpoint", str(tmp_path / "mae_pretrain.pth"), "--n-images", "2"]
    with pytest.raises(SystemExit, match="has no classifier head .*--stand-in"):
        cli.main([*base, "--out", str(tmp_path / "none.png")])
    cli.main([*base, "--stand-in", "--out", str(tmp_path / "stand_in.png")])
    out = tmp_path / "stand_in.png"
    assert record(out)["classifier"] == "stand-in: pretrained encoder, not fine-tuned"


# -- notebook 07: checkpoint / checkpoints -----------------------------------------------------------------

def test_checkpoint_map_validates_the_labels():
    with pytest.raises(ValueError, match=r"unknown mask label\(s\) \['orange'\].*allowed values: random, block"):
        figures.checkpoint_map(None, {}, ["orange"])
    with pytest.raises(ValueError, match=r"\['violet'\]"):
        figures.checkpoint_map(None, {"violet": "x.pth"}, ["green"])
    with pytest.raises(ValueError, match="exclude each other"):
        figures.checkpoint_map("a.pth", {"green": "b.pth"}, ["green"])
    assert figures.checkpoint_map("a.pth", None, ["green", "random", "green"]) == {"green": "a.pth", "random": "a.pth"}
    assert figures.checkpoint_map(None, {"green": "b.pth"}, ["green", "random"]) == {"green": "b.pth"}
    assert figures.checkpoint_map(None, None, list(KINDS)) == {}


def test_notebook_models_from_checkpoints(tmp_path, caplog):
    """Labels with a checkpoint use that file (one model per file); the others keep the grid's (here: none,
    left out with a warning); models of different image sizes are refused; Fig. 6 uses the file's own
    classifier or its encoder as a stand-in, never the grid's fine-tuning runs; the Penn-Fudan fraction is
    measured on the file's model."""
    model = randomised(mae_model(MICRO))
    torch.save({"model": model.state_dict()}, tmp_path / "mae_full.pth")
    ckpts = figures.checkpoint_map(str(tmp_path / "mae_full.pth"), None, ["green", "random"])
    models, sources = figures.grid_models(tmp_path / "grid", ["green", "random", "blue"], checkpoints=ckpts)
    assert list(models) == ["green", "random"] and models["green"] is models["random"]
    assert sources["green"] == str(tmp_path / "mae_full.pth") and "['blue']" in caplog.text
    torch.save({"model": mae_model(MICRO, img_size=64).state_dict()}, tmp_path / "mae_64.pth")
    sizes = {"green": str(tmp_path / "mae_full.pth"), "random": str(tmp_path / "mae_64.pth")}
    with pytest.raises(ValueError, match=r"different image sizes \{'green': 32, 'random': 64\}"):
        figures.grid_models(tmp_path / "grid", ["green", "random"], checkpoints=sizes)
    vit = randomised(small_vit(num_classes=3, global_pool="avg"))
    torch.save(vit.state_dict(), tmp_path / "ft.pth")
    ckpts = {"green": str(tmp_path / "ft.pth"), "random": str(tmp_path / "mae_full.pth")}
    models, sources = figures.grid_models(tmp_path / "grid", ["green", "random"], checkpoints=ckpts)
    grid_classifier = {"model": vit.state_dict(), "timm_name": "vit_base_patch16_224", "num_classes": 3,
                       "timm_kwargs": {"img_size": 32, "patch_size": 4, "embed_dim": 64, "depth": 2, "num_heads": 2}}
    save_torch(grid_classifier, tmp_path / "grid_finetune" / "checkpoint-last.pth")  # the grid's, not the file's
    classifiers, used = cam.fig6_classifiers(models, {"random": str(tmp_path / "grid_finetune")}, sources,
                                             checkpoints=ckpts)
    assert list(classifiers) == ["green\n(fine-tuned)", "random\n(stand-in: not\nfine-tuned)"]
    assert used == {"green": str(tmp_path / "ft.pth"), "random": f"stand-in: pretrained encoder {sources['random']}"}
    assert cam.load_classifier(tmp_path / "grid_finetune", num_heads=2).num_classes == 3  # the recorded heads
    with pytest.raises(ValueError, match="num_heads=4: .* records its heads"):
        cam.load_classifier(tmp_path / "grid_finetune", num_heads=4)  # not silently ignored
    assert "has no classifier head" in caplog.text
    samples = [type("S", (), {"image": torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8),
                              "instances": (torch.arange(32) < 16).long().expand(32, 32)})() for _ in range(2)]
    fg = attention.foreground_attention(tmp_path / "grid", ["random"], [0, 1], samples, 32, 8, checkpoints=ckpts)
    own = attention.model_foreground_attention(models["random"], samples, 32)
    assert fg["rows"]["random"]["seeds"] == "checkpoint"
    assert fg["per_mask_per_seed"]["random"]["checkpoint"] == pytest.approx(own["fraction"], abs=1e-6)


def test_new_commands_are_registered_and_parse():
    for name in ("reconstruct", "attention", "eigencam"):
        assert name in cli.COMMANDS
        args = cli.parse_command([name, "--checkpoint", "X.pth"])
        assert args.checkpoint == "X.pth" and args.out is None and args.images is None
    assert cli.parse_command(["reconstruct", "--checkpoint", "X", "--mask", "green", "red"]).mask == ["green", "red"]
    with pytest.raises(SystemExit):
        cli.parse_command(["attention", "--checkpoint", "X", "--mask", "green"])  # attention has no masks
