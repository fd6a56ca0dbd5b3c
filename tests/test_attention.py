"""[CLS] attention (colormae.analysis.attention): the recomputed softmax is the block's own, and the
foreground fraction is exact on hand-made maps."""
import pytest
import torch
from conftest import MICRO

from colormae.analysis.attention import attention_probs, block_attention, cls_attention, foreground_fraction, upsample
from colormae.models.mae import mae_model


def _block_io(model, imgs, block=-1):
    """What timm's Attention of ``block`` saw (its qkv output) and returned."""
    attn = model.blocks[block].attn
    seen = {}
    h1 = attn.qkv.register_forward_hook(lambda _m, _i, out: seen.__setitem__("qkv", out))
    h2 = attn.register_forward_hook(lambda _m, _i, out: seen.__setitem__("out", out))
    with torch.no_grad():
        model.forward_encoder(imgs, None)
    h1.remove()
    h2.remove()
    return attn, seen["qkv"], seen["out"]


@pytest.mark.parametrize("block", [0, -1])
def test_recomputed_attention_reproduces_the_block_output(block):
    torch.manual_seed(0)
    model = mae_model(MICRO).eval()
    imgs = torch.randn(3, 3, 32, 32)
    attn, qkv, out = _block_io(model, imgs, block)
    probs = attention_probs(attn, qkv)
    b, n, _ = qkv.shape
    v = qkv.reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)[2]
    mixed = (probs @ v).transpose(1, 2).reshape(b, n, -1)
    torch.testing.assert_close(attn.proj(attn.norm(mixed)), out, atol=1e-5, rtol=1e-4)
    # and the public entry point returns the same probabilities
    torch.testing.assert_close(block_attention(model, imgs, block), probs)


def test_cls_attention_is_a_distribution_over_the_grid():
    torch.manual_seed(0)
    model = mae_model(MICRO).eval()
    maps = cls_attention(model, torch.randn(2, 3, 32, 32))
    assert maps.shape == (2, 8, 8)
    assert (maps >= 0).all()
    torch.testing.assert_close(maps.sum((-2, -1)), torch.ones(2))


def test_cls_attention_on_a_timm_vit():
    import timm
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=32, patch_size=4, embed_dim=32,
                            depth=2, num_heads=2, num_classes=3).eval()
    assert cls_attention(vit, torch.randn(1, 3, 32, 32)).shape == (1, 8, 8)


def test_foreground_fraction_exact_on_hand_made_maps():
    maps = torch.zeros(2, 2, 2)
    maps[0] = torch.tensor([[0.5, 0.25], [0.125, 0.125]])
    maps[1] = torch.tensor([[1.0, 1.0], [1.0, 1.0]])  # unnormalized weights are fine
    masks = torch.zeros(2, 4, 4, dtype=torch.long)
    masks[0, :2, :2] = 3      # instance id 3 covers the top-left patch entirely
    masks[1, :2, :1] = 1      # half of the top-left patch
    masks[1, 2:, 2:] = 2      # all of the bottom-right patch
    got = foreground_fraction(maps, masks)
    torch.testing.assert_close(got, torch.tensor([0.5, (0.5 + 1.0) / 4]))


def test_foreground_fraction_refuses_mismatched_sizes():
    with pytest.raises(ValueError, match="multiple"):
        foreground_fraction(torch.ones(1, 3, 3), torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match="same B"):
        foreground_fraction(torch.ones(2, 2, 2), torch.ones(1, 4, 4))


def test_upsample_keeps_patches_as_blocks():
    maps = torch.arange(4.0).reshape(1, 2, 2)
    up = upsample(maps, 4)
    assert up.shape == (1, 4, 4) and up[0, 0, 1] == 0 and up[0, 3, 3] == 3


# -- EigenCAM (colormae.analysis.cam) ----------------------------------------------------------------------

def test_eigencam_maps_cover_the_image_and_follow_the_activations(tmp_path):
    from colormae.analysis.cam import eigencam, encoder_as_vit, load_classifier
    from colormae.files import save_torch
    torch.manual_seed(0)
    vit = encoder_as_vit(mae_model(MICRO))
    imgs = torch.randn(2, 3, 32, 32)
    cams = eigencam(vit, imgs)
    assert cams.shape == (2, 32, 32) and cams.min() >= 0 and cams.max() <= 1 + 1e-6
    # the reshape keeps patch order: a map made of one bright patch's tokens puts the CAM there
    layer = vit.blocks[-1].norm1
    hook = layer.register_forward_hook(lambda _m, _i, out: out * 0 + torch.where(
        torch.arange(out.shape[1])[None, :, None] == 1 + 2 * 8 + 5, 1.0, 0.0) * torch.randn(out.shape[-1]))
    cam_one = eigencam(vit, imgs[:1])[0]
    hook.remove()
    ys, xs = divmod(int(cam_one.argmax()), 32)
    assert (ys // 4, xs // 4) == (2, 5)
    # fine-tuned checkpoints load; linear probes are refused
    state = {"model": vit.state_dict(), "timm_name": "vit_base_patch16_224", "num_classes": 1,
             "timm_kwargs": {"img_size": 32, "patch_size": 4, "embed_dim": 64, "depth": 2, "num_heads": 2,
                             "mlp_ratio": 4.0, "in_chans": 3}}
    save_torch(state, tmp_path / "checkpoint-last.pth")
    assert load_classifier(tmp_path).patch_embed.grid_size == (8, 8)
    # the committed fp16 copy stands in for the checkpoint (a fresh clone has only that)
    from colormae.analysis.cam import classifier_file
    from colormae.experiments.release import save_compact_classifier
    compact = save_compact_classifier(tmp_path)
    (tmp_path / "checkpoint-last.pth").unlink()
    assert classifier_file(tmp_path) == compact
    restored = load_classifier(tmp_path)
    assert all(v.dtype == torch.float32 for v in restored.state_dict().values() if v.is_floating_point())
    with torch.no_grad():
        torch.testing.assert_close(restored(imgs), vit.eval()(imgs), atol=2e-2, rtol=0)
    assert classifier_file(tmp_path / "nothing") is None
    state["model"] = {**state["model"], "head.0.running_mean": torch.zeros(64)}
    save_torch(state, tmp_path / "probe.pth")
    with pytest.raises(ValueError, match="linear probe"):
        load_classifier(tmp_path / "probe.pth")
