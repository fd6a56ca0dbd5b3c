"""Pretrained weights across formats (colormae.load_pretrained / save_pretrained / vitmae_noise, colormae convert,
official noise banks, --init-from). Every format is built offline from the real library (timm, transformers) or
from key lists derived from the official source (tests/fixtures/mmpretrain_vit_base_keys.json); nothing downloads."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file

from colormae import cli, load_pretrained, make_masker, save_pretrained, vitmae_noise
from colormae.engines import pretrain as pretrain_engine
from colormae.engines.pretrain import PretrainConfig
from colormae.masks.bank import load_noise_bank
from colormae.masks.maskers import masker_from_description
from colormae.models.convert import canonical_state
from colormae.models.mae import MaskedAutoencoder, get_config, mae_model, reconstruct
from colormae.run.artifacts import load_encoder, load_mae
from colormae.run.pretrained import PretrainedFileError

transformers = pytest.importorskip("transformers")

FIXTURE = Path(__file__).parent / "fixtures" / "mmpretrain_vit_base_keys.json"
MICRO = "mae_vit_micro_patch4_32"


def randomised(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """Every tensor random (LayerNorms and position embeddings too), so that a misplaced one shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for v in model.state_dict().values():
            v.copy_(torch.randn(v.shape, generator=g) * scale)
    return model.eval()


def equal_states(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def hf_tiny_config(**kw):
    return transformers.ViTMAEConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                                     image_size=32, patch_size=4, decoder_hidden_size=16, decoder_num_hidden_layers=1,
                                     decoder_num_attention_heads=2, decoder_intermediate_size=64, **kw)


def green_masks(batch: int = 2, grid: int = 8, seed: int = 0):
    return make_masker("green", grid, 0.75)(batch, generator=torch.Generator().manual_seed(seed))


# -- timm -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_tiny_matches_forward_features_and_round_trips(tmp_path, suffix):
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    path = tmp_path / f"vit_tiny{suffix}"
    if suffix == ".pth":
        torch.save(vit.state_dict(), path)
    else:
        from safetensors.torch import save_file
        save_file(vit.state_dict(), str(path))
    model = load_pretrained(path)
    assert model.source_format == "timm" and not model.has_decoder
    assert model.cfg.num_heads == 3 and model.cfg.embed_dim == 192 and model.cfg.depth == 12
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_encoder(x, None), vit.forward_features(x), atol=1e-5, rtol=0)
    out = save_pretrained(model, tmp_path / "back.safetensors", "timm")
    assert equal_states(load_file(str(out)), vit.state_dict())  # bit-identical, head included
    again = load_pretrained(out)
    assert equal_states(canonical_state(again), canonical_state(model)) and again.cfg == model.cfg
    assert equal_states(again.classifier, model.classifier)


def test_timm_vit_base_forward(tmp_path):
    torch.manual_seed(1)
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0).eval()  # the .mae layout
    from safetensors.torch import save_file
    save_file(vit.state_dict(), str(tmp_path / "vit_base_patch16_224.mae.safetensors"))
    model = load_pretrained(tmp_path / "vit_base_patch16_224.mae.safetensors")
    assert (model.cfg.embed_dim, model.cfg.depth, model.cfg.num_heads, model.cfg.patch_size) == (768, 12, 12, 16)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_encoder(x, None), vit.forward_features(x), atol=1e-5, rtol=0)


def test_timm_fine_tuned_classifier_keeps_fc_norm_and_head(tmp_path):
    """global_pool='avg' (MAE fine-tuning): fc_norm and head, no final norm; logits equal after the round trip."""
    vit = randomised(timm.create_model("vit_tiny_patch16_224", pretrained=False, global_pool="avg", num_classes=5,
                                       img_size=32, patch_size=4, depth=2))
    torch.save(vit.state_dict(), tmp_path / "ft.pth")
    model = load_pretrained(tmp_path / "ft.pth")
    assert sorted(model.classifier) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    out = save_pretrained(model, tmp_path / "ft_back.safetensors", "timm")
    state = load_file(str(out))
    assert equal_states(state, vit.state_dict())
    rebuilt = timm.create_model("vit_tiny_patch16_224", pretrained=False, global_pool="avg", num_classes=5,
                                img_size=32, patch_size=4, depth=2).eval()
    rebuilt.load_state_dict(state)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), vit(x), atol=0, rtol=0)


# -- Hugging Face -----------------------------------------------------------------------------------

@pytest.fixture()
def hf_folder(tmp_path):
    torch.manual_seed(0)
    # weights large enough that attention is far from uniform (a q/k swap then changes the output)
    hf = randomised(transformers.ViTMAEForPreTraining(hf_tiny_config(norm_pix_loss=True)), scale=0.5)
    hf.save_pretrained(str(tmp_path / "hf"))
    return hf, tmp_path / "hf"


def test_hf_same_loss_and_kept_patches_with_vitmae_noise(hf_folder):
    hf, folder = hf_folder
    model = load_pretrained(folder)
    assert model.source_format == "hf" and model.has_decoder
    assert model.cfg.norm_eps == 1e-12 and model.cfg.norm_pix_loss is True and model.cfg.num_heads == 2
    masks = green_masks()
    imgs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = hf(pixel_values=imgs, noise=vitmae_noise(masks))
        loss, pred, mask = model(imgs, masks)
    assert torch.equal(out.mask, mask)  # exactly our visible patches
    assert torch.equal(out.ids_restore, masks[2])
    torch.testing.assert_close(out.loss, loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logits, pred, atol=1e-4, rtol=1e-5)
    # a binary mask gives the same noise ordering of the kept set
    with torch.no_grad():
        out2 = hf(pixel_values=imgs, noise=vitmae_noise(masks[0]))
    assert torch.equal(out2.mask, mask)
    torch.testing.assert_close(out2.loss, loss, atol=1e-5, rtol=1e-5)


def test_hf_round_trip_is_bit_identical(hf_folder, tmp_path):
    _, folder = hf_folder
    ours = load_pretrained(folder)
    out = save_pretrained(ours, tmp_path / "ours_hf", "hf")
    reopened = transformers.ViTMAEForPreTraining.from_pretrained(str(out))
    assert reopened.config.layer_norm_eps == 1e-12 and reopened.config.norm_pix_loss is True
    again = load_pretrained(out)
    assert equal_states(again.state_dict(), ours.state_dict()) and again.cfg == ours.cfg


def test_ours_to_hf_trains_with_color_masks(tmp_path):
    model = randomised(mae_model(MICRO))
    out = save_pretrained(model, tmp_path / "micro_hf", "hf")
    hf = transformers.ViTMAEForPreTraining.from_pretrained(str(out)).eval()
    masks, imgs = green_masks(), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=imgs, noise=vitmae_noise(masks)).loss, model(imgs, masks)[0],
                                   atol=1e-5, rtol=1e-5)


def test_hf_encoder_only_folder_has_no_decoder(tmp_path):
    torch.manual_seed(0)
    enc = randomised(transformers.ViTMAEModel(hf_tiny_config()), scale=0.5)
    enc.save_pretrained(str(tmp_path / "enc"))
    model = load_pretrained(tmp_path / "enc")
    assert not model.has_decoder
    x = torch.randn(1, 3, 32, 32)
    noise = torch.arange(64.0)[None]  # HF keeps the 16 lowest: patches 0..15, in order
    with torch.no_grad():
        hf_out = enc(pixel_values=x, noise=noise).last_hidden_state
        torch.testing.assert_close(model.forward_encoder(x, torch.arange(16)[None]), hf_out, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="has no decoder"):
        reconstruct(model, x, green_masks(1))
    with pytest.raises(PretrainedFileError, match="has no decoder"):
        load_pretrained(tmp_path / "enc", require_decoder=True)
    out = save_pretrained(model, tmp_path / "enc_back", "hf")
    assert equal_states(transformers.ViTMAEModel.from_pretrained(str(out)).state_dict(), enc.state_dict())


def test_vitmae_noise_keeps_the_visible_patches():
    mask, ids_keep, ids_restore = green_masks(4)
    noise = vitmae_noise((mask, ids_keep, ids_restore))
    n_keep = ids_keep.shape[1]
    hf_keep = torch.argsort(noise, dim=1)[:, :n_keep]  # what HF's random_masking keeps
    assert torch.equal(hf_keep, ids_keep)
    from_binary = torch.argsort(vitmae_noise(mask), dim=1)[:, :n_keep]
    assert torch.equal(from_binary.sort(1).values, ids_keep.sort(1).values)
    with pytest.raises(ValueError, match="same number of patches"):
        vitmae_noise(torch.tensor([[0.0, 1.0], [0.0, 0.0]]))


# -- facebookresearch/mae -------------------------------------------------------------------------------

def test_mae_format_encoder_only_full_and_norm_pix(tmp_path):
    model = randomised(mae_model(MICRO))
    state = model.state_dict()
    encoder = {k: v for k, v in state.items() if not k.startswith(("decoder", "mask_token"))}
    torch.save({"model": encoder}, tmp_path / "mae_pretrain_vit_micro.pth")
    torch.save({"model": state}, tmp_path / "mae_pretrain_vit_micro_full.pth")
    torch.save({"model": state}, tmp_path / "mae_visualize_vit_micro.pth")
    enc = load_pretrained(tmp_path / "mae_pretrain_vit_micro.pth", num_heads=2)
    assert enc.source_format == "mae" and not enc.has_decoder
    assert all(torch.equal(enc.state_dict()[k], v) for k, v in encoder.items())
    with pytest.raises(PretrainedFileError, match="has no decoder"):
        load_pretrained(tmp_path / "mae_pretrain_vit_micro.pth", require_decoder=True)
    full = load_pretrained(tmp_path / "mae_pretrain_vit_micro_full.pth", num_heads=2, decoder_num_heads=2)
    vis = load_pretrained(tmp_path / "mae_visualize_vit_micro.pth", num_heads=2, decoder_num_heads=2)
    assert full.has_decoder and full.cfg.norm_pix_loss is True  # *_full: trained with norm-pix targets
    assert vis.cfg.norm_pix_loss is False                       # visualize: raw pixels
    assert load_pretrained(tmp_path / "mae_visualize_vit_micro.pth", norm_pix_loss=True).cfg.norm_pix_loss is True
    assert equal_states(full.state_dict(), state) and full.cfg == model.cfg.__class__(**{
        **model.cfg.__dict__, "norm_pix_loss": True})
    imgs, masks = torch.randn(2, 3, 32, 32), green_masks()
    with torch.no_grad():
        torch.testing.assert_close(vis(imgs, masks)[0], model(imgs, masks)[0], atol=0, rtol=0)
    # our MAE-format export records the target under args (as MAE's training checkpoints do)
    out = save_pretrained(vis, tmp_path / "ours_mae.pth", "mae")
    assert torch.load(out, weights_only=False)["args"]["norm_pix_loss"] is False
    back = load_pretrained(out, num_heads=2, decoder_num_heads=2)
    assert back.cfg.norm_pix_loss is False and equal_states(back.state_dict(), state)


def test_heads_default_and_override(tmp_path):
    model = randomised(mae_model(MICRO))
    torch.save({"model": model.state_dict()}, tmp_path / "m_full.pth")
    assert load_pretrained(tmp_path / "m_full.pth").cfg.num_heads == 1  # width 64 / 64
    assert load_pretrained(tmp_path / "m_full.pth", num_heads=4).cfg.num_heads == 4
    with pytest.raises(ValueError, match="num_heads=3 does not divide the width 64"):
        load_pretrained(tmp_path / "m_full.pth", num_heads=3)


# -- official ColorMAE / mmpretrain -----------------------------------------------------------------------

def fixture_states(part: str, seed: int = 0) -> tuple[dict, dict]:
    """(mmpretrain state dict, the same tensors under facebookresearch/mae names) from the fixture."""
    entries = json.loads(FIXTURE.read_text())[part]
    g = torch.Generator().manual_seed(seed)
    mm, mae = {}, {}
    for key, shape, mae_key in entries:
        mm[key] = mae[mae_key] = torch.randn(shape, generator=g) * 0.02
    return mm, mae


@pytest.fixture(scope="module")
def vit_b_pretrain():
    return fixture_states("pretrain")


def test_mmpretrain_checkpoint_equals_mae_format(vit_b_pretrain):
    mm, mae = vit_b_pretrain
    a = load_pretrained({"meta": {"mmpretrain_version": "1.2.0"}, "state_dict": mm})  # mmengine's layout
    b = load_pretrained({"model": mae})
    assert a.source_format == "mmpretrain" and b.source_format == "mae" and a.has_decoder
    assert a.cfg == get_config("mae_vit_base_patch16")  # ViT-B/16, 8 x 512 decoder, 16 heads, norm-pix
    assert equal_states(a.state_dict(), b.state_dict())
    imgs = torch.randn(1, 3, 224, 224)
    masks = make_masker("random", 14, 0.75)(1, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(a(imgs, masks)[0], b(imgs, masks)[0], atol=0, rtol=0)


def test_mmpretrain_fine_tuned_classifier(tmp_path):
    mm, mae = fixture_states("classifier", seed=1)
    torch.save({"state_dict": mm}, tmp_path / "colormae_vit-base_ft.pth")
    a = load_pretrained(tmp_path / "colormae_vit-base_ft.pth")
    b = load_pretrained({"model": mae})  # MAE's fine-tuned layout (models_vit, global_pool)
    assert sorted(a.classifier) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert equal_states(a.classifier, b.classifier) and equal_states(canonical_state(a), canonical_state(b))
    assert "norm.weight" not in canonical_state(a)  # fine-tuned without the final norm: fc_norm instead
    out = save_pretrained(a, tmp_path / "ft.safetensors", "timm")
    state = load_file(str(out))
    assert equal_states(state, mae)  # exactly MAE's / timm's fine-tuned names: fc_norm, head, no norm


def test_mmpretrain_fixture_names_are_mmpretrains():
    """The fixture's names follow mmpretrain's modules (guards the fixture itself)."""
    doc = json.loads(FIXTURE.read_text())
    keys = [k for k, _, _ in doc["pretrain"]]
    assert "backbone.layers.11.ffn.layers.0.0.weight" in keys and "neck.decoder_blocks.7.attn.qkv.weight" in keys
    assert keys.count("neck.ln1.weight") == 1 and "backbone.ln1.weight" in keys
    assert {k for k, _, _ in doc["classifier"]} >= {"backbone.ln2.weight", "head.fc.weight"}
    assert len(keys) == 4 + 12 * 12 + 2 + 4 + 8 * 12 + 4


# -- our own files ---------------------------------------------------------------------------------------

def test_our_runs_compact_and_exports(micro_run, tmp_path):
    run = micro_run("green")
    model = load_pretrained(run)  # a run directory: its checkpoint, decoder included
    assert model.source_format == "colormae" and model.has_decoder
    assert equal_states(model.state_dict(), load_mae(run).state_dict())
    enc = load_pretrained(run / "encoder.pth")
    assert not enc.has_decoder and enc.cfg == model.cfg
    for fmt, name in (("colormae", "ours.pth"), ("mae", "ours_mae_full.pth"), ("timm", "ours.safetensors")):
        # heads are not in the shapes: our timm export keeps them in its metadata, our MAE export in its args
        back = load_pretrained(save_pretrained(model, tmp_path / name, fmt))
        assert back.cfg.embed_dim == 64 and back.cfg.num_heads == model.cfg.num_heads, fmt
        assert fmt == "timm" or back.cfg == model.cfg, fmt  # timm: the encoder only
        for k, v in back.state_dict().items():
            if fmt == "colormae" or back.has_decoder or not k.startswith(("decoder", "mask_token")):
                assert torch.equal(v, model.state_dict()[k]), (fmt, k)
    # load_encoder reads foreign formats through the same loader
    timm_export = load_encoder(tmp_path / "ours.safetensors")
    assert equal_states(timm_export["state_dict"], load_encoder(run)["state_dict"])


def test_position_embeddings_copied_verbatim_or_resampled():
    model = randomised(mae_model(MICRO))
    same = load_pretrained({"model": model.state_dict()}, num_heads=2, decoder_num_heads=2)
    assert torch.equal(same.pos_embed, model.pos_embed)  # not regenerated
    bigger = load_pretrained({"model": model.state_dict()}, img_size=64)
    assert bigger.pos_embed.shape == (1, 1 + 16 * 16, 64) and bigger.decoder_pos_embed.shape == (1, 257, 32)
    assert torch.equal(bigger.pos_embed[:, 0], model.pos_embed[:, 0])  # the class slot kept
    with torch.no_grad():
        bigger.forward_encoder(torch.randn(1, 3, 64, 64), None)


# -- bad files ---------------------------------------------------------------------------------------------

def test_bad_files_are_one_clear_error_each(tmp_path):
    (tmp_path / "random.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(PretrainedFileError, match=r"random\.pth: not a readable torch checkpoint"):
        load_pretrained(tmp_path / "random.pth")
    torch.save({"model": mae_model(MICRO).state_dict()}, tmp_path / "whole.pth")
    data = (tmp_path / "whole.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(PretrainedFileError, match=r"truncated\.pth: not a readable torch checkpoint"):
        load_pretrained(tmp_path / "truncated.pth")
    model = mae_model(MICRO)
    opt = torch.optim.AdamW(model.parameters())
    torch.save({"optimizer": opt.state_dict(), "epoch": 3}, tmp_path / "optimizer.pth")
    with pytest.raises(PretrainedFileError, match=r"optimizer\.pth: no weights found .*\['epoch', 'optimizer'\]"):
        load_pretrained(tmp_path / "optimizer.pth")
    import torchvision
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(PretrainedFileError, match=r"resnet18\.pth: cannot place .*guessed format 'timm'.*conv1.weight"):
        load_pretrained(tmp_path / "resnet18.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(PretrainedFileError, match=r"bad\.safetensors: not a readable safetensors"):
        load_pretrained(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_pretrained(tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="format='onnx' is not supported; allowed values: timm, hf, mae, colormae"):
        save_pretrained(model, tmp_path / "x", "onnx")


# -- colormae convert ---------------------------------------------------------------------------------------

def test_convert_command(tmp_path):
    vit = randomised(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32,
                                       patch_size=4, depth=2))
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    args = cli.parse_command(["convert", str(tmp_path / "vit.pth"), str(tmp_path / "out"), "--to", "hf"])
    assert args.to == "hf" and args.num_heads is None
    out = cli.main(["convert", str(tmp_path / "vit.pth"), str(tmp_path / "out"), "--to", "hf"])
    enc = transformers.ViTMAEModel.from_pretrained(str(out))  # encoder only: ViTMAEModel
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        hf_out = enc(pixel_values=x, noise=torch.arange(64.0)[None]).last_hidden_state
        ours = load_pretrained(tmp_path / "vit.pth").forward_encoder(x, torch.arange(16)[None])
    torch.testing.assert_close(hf_out, ours, atol=1e-5, rtol=0)
    cli.main(["convert", str(out), str(tmp_path / "back.safetensors"), "--to", "timm"])
    assert equal_states(load_file(str(tmp_path / "back.safetensors")), vit.state_dict())


# -- official noise banks ------------------------------------------------------------------------------------

def test_official_noise_bank_loads_and_keeps_the_highest_values(tmp_path):
    rng = np.random.default_rng(0)
    patterns = rng.random((3, 8, 8)).astype(np.float32)
    folder = tmp_path / "noise_colors" / "green"
    folder.mkdir(parents=True)
    with (folder / "green_noise_data_3072.npz").open("wb") as f:
        np.savez(f, patterns)  # one unnamed array, as the official banks
    path = folder / "green_noise_data_3072.npz"
    bank = load_noise_bank(path)
    assert bank.color == "green" and not bank.periodic and bank.patterns.shape == (3, 8, 8)
    masker = make_masker("green", 8, 0.75, source="bank", bank=path)
    mask, ids_keep, _ = masker(16, generator=torch.Generator().manual_seed(0))
    # a bank as large as the grid: each window is one pattern, maybe flipped; the 16 highest values are kept
    for m in mask.reshape(16, 8, 8):
        options = [np.flip(p, axes) for p in patterns for axes in ((), (0,), (1,), (0, 1))]
        assert any(np.array_equal(m.numpy() == 0, o >= np.sort(o.ravel())[-16]) for o in options)
    again = masker_from_description(masker.describe())  # the file is recorded and read again
    assert torch.equal(again(4, generator=torch.Generator().manual_seed(1))[0],
                       masker(4, generator=torch.Generator().manual_seed(1))[0])
    with pytest.raises(ValueError, match="file name says 'green' noise but color='blue'"):
        make_masker("blue", 8, 0.75, source="bank", bank=path)


def test_other_bank_layouts_are_a_clear_error(tmp_path):
    with (tmp_path / "two.npz").open("wb") as f:
        np.savez(f, a=np.zeros((2, 8, 8)), b=np.zeros(3))
    with pytest.raises(ValueError, match=r"two\.npz is not a ColorMAE noise bank: neither ours .* \{'a': \(2, 8, 8\)"):
        load_noise_bank(tmp_path / "two.npz")
    with (tmp_path / "green_flat.npz").open("wb") as f:
        np.savez(f, np.zeros((8, 8)))
    with pytest.raises(ValueError, match="one array \\[N, H, W\\]"):
        load_noise_bank(tmp_path / "green_flat.npz")
    with (tmp_path / "patterns.npz").open("wb") as f:
        np.savez(f, np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="pass color="):
        load_noise_bank(tmp_path / "patterns.npz")
    assert load_noise_bank(tmp_path / "patterns.npz", color="red").color == "red"
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"junk\.npz is not a readable \.npz"):
        load_noise_bank(tmp_path / "junk.npz")


def test_pretrain_bank_file_knob(tmp_path):
    with (tmp_path / "green_bank.npz").open("wb") as f:
        np.savez(f, np.random.default_rng(0).random((4, 12, 12)).astype(np.float32))
    cfg = cli.parse_command(["pretrain", "--mask-source", "bank", "--bank-file", str(tmp_path / "green_bank.npz")])
    assert cfg.bank_file == str(tmp_path / "green_bank.npz")
    (_, masker), = pretrain_engine.build_maskers(cfg, 8, "cpu")
    assert masker.bank.file.endswith("green_bank.npz") and not masker.bank.periodic
    pretrain_engine.validate(cfg)
    with pytest.raises(ValueError, match="bank_file=.* needs mask_source='bank'"):
        pretrain_engine.validate(PretrainConfig(bank_file=str(tmp_path / "green_bank.npz")))
    with pytest.raises(FileNotFoundError, match="noise bank not found"):
        pretrain_engine.validate(PretrainConfig(mask_source="bank", bank_file=str(tmp_path / "nope.npz")))
    from colormae.run.config import experiment_fields
    assert "bank_file" in experiment_fields(PretrainConfig) and "init_from" in experiment_fields(PretrainConfig)


# -- --init-from -------------------------------------------------------------------------------------------

def micro_cfg(out: Path, **kw) -> PretrainConfig:
    return PretrainConfig(**{"preset": MICRO, "dataset": "embedded", "dataset_length": 64, "epochs": 1,
                             "batch_size": 32, "amp": "none", "device": "cpu", "seed": 1, "output_dir": str(out), **kw})


def test_init_from_starts_from_the_weights_and_resume_keeps_its_own(micro_run, tmp_path, monkeypatch):
    source = micro_run("green")
    source_state = torch.load(source / "checkpoint-last.pth", weights_only=False)["model"]
    at_start: list[dict] = []
    real_wrap = pretrain_engine.wrap_ddp

    def spy(model, info, device):  # called once the weights are in place, before the first step
        at_start.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real_wrap(model, info, device)

    monkeypatch.setattr(pretrain_engine, "wrap_ddp", spy)
    out = tmp_path / "warm"
    summary = pretrain_engine.run(micro_cfg(out, init_from=str(source)))
    assert equal_states(at_start[0], source_state)  # every tensor, decoder included, at step 0
    assert json.loads((out / "config.json").read_text())["init_from"] == str(source)
    assert summary["init_from"]["format"] == "colormae" and summary["init_from"]["decoder"] is True
    first_end = torch.load(out / "checkpoint-last.pth", weights_only=False)["model"]
    assert not equal_states(first_end, source_state)  # it trained

    calls: list = []
    monkeypatch.setattr(pretrain_engine, "init_from_pretrained", lambda *a: calls.append(a))
    pretrain_engine.run(micro_cfg(out, init_from=str(source), resume="auto", epochs=2))
    assert not calls and equal_states(at_start[1], first_end)  # resumed: its own weights, no re-init


def test_init_from_an_encoder_only_file_of_another_size(micro_run, tmp_path):
    """A 32-px encoder into a 64-px-grid model of the same width: position embeddings resampled."""
    model = MaskedAutoencoder(get_config(MICRO, img_size=64))
    fresh_decoder = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("decoder")}
    report = pretrain_engine.init_from_pretrained(model, micro_run("green") / "encoder.pth")
    assert report["decoder"] is False and model.pos_embed.shape == (1, 257, 64)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in fresh_decoder.items())
    enc = torch.load(micro_run("green") / "encoder.pth", weights_only=False)["state_dict"]
    assert torch.equal(model.blocks[0].attn.qkv.weight, enc["blocks.0.attn.qkv.weight"])
    with pytest.raises(ValueError, match="does not fit the model"):
        pretrain_engine.init_from_pretrained(mae_model("mae_vit_tiny_patch4_32"), micro_run("green") / "encoder.pth")
