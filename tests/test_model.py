"""MAE model: token counts, loss behaviour, explicit masks, timm export."""
import pytest
import timm
import torch

from colormae import make_masker
from colormae.models.mae import (
    PRESETS,
    export_encoder,
    get_config,
    ids_from_mask,
    mae_model,
    patchify,
    timm_vit_from_export,
    unpatchify,
)

TINY = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16,
            decoder_depth=1, decoder_num_heads=2)


def tiny_model(**kw):
    torch.manual_seed(0)
    return mae_model("mae_vit_tiny_patch4_32", **{**TINY, **kw})


def test_patchify_roundtrip():
    x = torch.randn(2, 3, 16, 16)
    p = patchify(x, 4)
    assert p.shape == (2, 16, 48)
    assert torch.equal(unpatchify(p, 4), x)
    # patch 0 holds the top-left 4x4 pixels (MAE layout: p, q, c)
    assert torch.equal(p[0, 0].reshape(4, 4, 3), x[0, :, :4, :4].permute(1, 2, 0))


@pytest.mark.parametrize("kind", ["random", "green", "block"])
def test_encoder_sees_n_keep_plus_cls_tokens(kind):
    model = tiny_model()
    masker = make_masker(kind, model.cfg.grid, 0.75)
    mask, ids_keep, ids_restore = masker(3, generator=torch.Generator().manual_seed(0))
    latent = model.forward_encoder(torch.randn(3, 3, 16, 16), ids_keep)
    assert latent.shape == (3, masker.n_keep + 1, 32)
    loss, pred, m = model(torch.randn(3, 3, 16, 16), (mask, ids_keep, ids_restore))
    assert pred.shape == (3, 16, 48) and torch.equal(m, mask) and loss.ndim == 0


def test_loss_counts_masked_patches_only():
    model = tiny_model()
    imgs = torch.randn(2, 3, 16, 16)
    mask, ids_keep, ids_restore = make_masker("random", 4, 0.75)(2, generator=torch.Generator().manual_seed(1))
    _, pred, _ = model(imgs, (mask, ids_keep, ids_restore))
    target = patchify(imgs, 4)
    # a prediction that is perfect on masked patches gives zero loss whatever it says elsewhere
    perfect = torch.where(mask.bool()[..., None], target, pred + 100)
    assert model.loss(imgs, perfect, mask).item() == pytest.approx(0.0, abs=1e-10)
    manual = (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()
    torch.testing.assert_close(model.loss(imgs, pred, mask), manual)


def test_norm_pix_loss_normalizes_target():
    model = tiny_model(norm_pix_loss=True)
    imgs = torch.randn(2, 3, 16, 16) * 5 + 3
    mask = torch.ones(2, 16)
    t = patchify(imgs, 4)
    t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6) ** 0.5
    assert model.loss(imgs, t, mask).item() == pytest.approx(0.0, abs=1e-8)


def test_explicit_binary_mask_equals_masker_tuple():
    model = tiny_model()
    imgs = torch.randn(2, 3, 16, 16)
    triple = make_masker("green", 4, 0.75)(2, generator=torch.Generator().manual_seed(2))
    loss_a, pred_a, _ = model(imgs, triple)
    loss_b, pred_b, _ = model(imgs, triple[0])
    torch.testing.assert_close(loss_a, loss_b)
    with pytest.raises(ValueError, match="same number of patches"):
        ids_from_mask(torch.tensor([[1.0, 0, 0, 1], [1, 1, 1, 0]]))


def test_loss_falls_on_a_fixed_batch():
    model = tiny_model()
    imgs = torch.rand(8, 3, 16, 16)
    masks = make_masker("green", 4, 0.75)(8, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss, _, _ = model(imgs, masks)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def mae_sincos(dim: int, grid: int) -> torch.Tensor:
    """MAE's get_2d_sincos_pos_embed (util/pos_embed.py), written out: [grid^2, dim], blocks
    (sin x, cos x, sin y, cos y), x the column index, omega = 1 / 10000^(2i / (dim / 2))."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                            indexing="ij")
    ox, oy = xs.reshape(-1, 1) * omega, ys.reshape(-1, 1) * omega
    return torch.cat([ox.sin(), ox.cos(), oy.sin(), oy.cos()], 1).float()


def test_fixed_sincos_position_embeddings_are_maes_values():
    model = tiny_model()
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad
    assert model.pos_embed.shape == (1, 17, 32)
    assert torch.equal(model.pos_embed[0, 0], torch.zeros(32))
    for pe, dim in ((model.pos_embed, 32), (model.decoder_pos_embed, model.cfg.decoder_embed_dim)):
        ref = mae_sincos(dim, 4)
        q = dim // 4  # ours, as documented in model._sincos: (sin y, sin x, cos y, cos x)
        ours = pe[0, 1:]
        reordered = torch.cat([ours[:, q:2 * q], ours[:, 3 * q:], ours[:, :q], ours[:, 2 * q:3 * q]], 1)
        torch.testing.assert_close(reordered, ref, atol=1e-6, rtol=0)


def test_paper_presets_use_norm_pix_loss_and_cpu_presets_raw_pixels():
    for name in ("mae_vit_base_patch16", "mae_vit_large_patch16", "mae_vit_huge_patch14"):
        assert get_config(name).norm_pix_loss is True, name  # MAE's and the official ColorMAE recipe
        assert get_config(name, norm_pix_loss=False).norm_pix_loss is False
    assert get_config("mae_vit_tiny_patch4_64").norm_pix_loss is False  # viewable reconstructions
    from colormae.engines.pretrain import PretrainConfig
    assert PretrainConfig().norm_pix_loss is None  # None: the preset decides


def test_paper_preset_shapes():
    cfg = get_config("mae_vit_base_patch16")
    assert (cfg.img_size, cfg.patch_size, cfg.embed_dim, cfg.depth, cfg.decoder_depth, cfg.decoder_embed_dim) == \
        (224, 16, 768, 12, 8, 512)
    assert cfg.grid == 14
    assert set(PRESETS) >= {"mae_vit_base_patch16", "mae_vit_large_patch16", "mae_vit_huge_patch14"}
    with pytest.raises(ValueError, match="preset='vit_x'.*allowed values"):
        get_config("vit_x")


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_export_loads_into_stock_timm(pool):
    model = tiny_model()
    export = export_encoder(model)
    vit, result = timm_vit_from_export(export, num_classes=7, global_pool=pool)
    allowed = {"head.weight", "head.bias"} | ({"fc_norm.weight", "fc_norm.bias"} if pool == "avg" else set())
    assert set(result.missing_keys) <= allowed and not result.unexpected_keys
    assert isinstance(vit, timm.models.vision_transformer.VisionTransformer)
    # same features: timm's encoder on all patches == our encoder with no masking
    vit.eval(), model.eval()
    x = torch.randn(2, 3, 16, 16)
    ours = model.forward_encoder(x, None)
    if pool == "token":
        torch.testing.assert_close(vit.forward_features(x), ours, atol=1e-5, rtol=1e-4)
    assert vit(x).shape == (2, 7)
    # and plain timm.create_model with the exported kwargs loads it (only the head missing)
    plain = timm.create_model(export["timm_name"], num_classes=0, **export["timm_kwargs"])
    res = plain.load_state_dict(export["state_dict"], strict=False)
    assert not res.missing_keys and not res.unexpected_keys


def test_reconstruct_pastes_visible_patches_back_and_figure_reports_mse():
    from colormae.analysis.figures import plot_reconstructions
    from colormae.models.mae import reconstruct
    model = tiny_model().eval()
    imgs = torch.randn(2, 3, 16, 16)
    masks = make_masker("green", 4, 0.75)(2, generator=torch.Generator().manual_seed(0))
    r = reconstruct(model, imgs, masks)
    visible = r["mask"] == 0
    assert torch.equal(r["pasted"][visible], imgs[visible])  # visible pixels are the input's
    assert torch.equal(r["masked"][~visible], torch.zeros_like(imgs)[~visible])
    fig, mse = plot_reconstructions({"a": model}, imgs, masks)
    # by hand: squared error of the reconstruction on masked patches only, per-patch mean, averaged
    m = masks[0].bool()
    err = ((patchify(r["reconstruction"], 4) - patchify(imgs, 4)) ** 2).mean(-1)
    assert mse["a"] == pytest.approx(float(err[m].mean()), rel=1e-5)
    assert mse["a"] != pytest.approx(float(err.mean()), rel=1e-3)  # visible patches are not counted
    assert len(fig.axes) == 3 * 2  # original, visible, one model; two images
