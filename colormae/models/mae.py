"""Masked AutoEncoder (He et al. 2022) built from timm's PatchEmbed and Block.

The model takes its mask from outside (any ``colormae.masks.maskers`` masker, or an explicit binary
mask), so masking strategy and network stay independent, exactly as in ColorMAE.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial

import timm
import torch
import torch.nn as nn
from timm.layers import PatchEmbed, build_sincos2d_pos_embed
from timm.models.vision_transformer import Block

from ..masks.maskers import masks_from_scores


@dataclass(frozen=True)
class MAEConfig:
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    norm_pix_loss: bool = False
    norm_eps: float = 1e-6  # LayerNorm epsilon (MAE and timm: 1e-6; Hugging Face ViTMAE files: layer_norm_eps)

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size


# Paper presets (decoder 8 x 512) and CPU presets. The CPU presets keep MAE's shape (ViT encoder,
# narrow shallow decoder) at a size 2 cores train in minutes; grid 16 where affordable, so that
# color masks have room to show structure (a 75 % mask of a 16x16 grid keeps 64 patches).
PRESETS: dict[str, MAEConfig] = {
    # the paper's and MAE's recipe: per-patch normalized pixel targets (norm_pix_loss=True)
    "mae_vit_base_patch16": MAEConfig(norm_pix_loss=True),
    "mae_vit_large_patch16": MAEConfig(embed_dim=1024, depth=24, num_heads=16, norm_pix_loss=True),
    "mae_vit_huge_patch14": MAEConfig(patch_size=14, embed_dim=1280, depth=32, num_heads=16, norm_pix_loss=True),
    # CPU presets below keep raw-pixel targets: their reconstructions are viewable as they are
    # 32 px (CIFAR-10), patch 4 -> 8x8 grid: ViT-Tiny width.
    "mae_vit_tiny_patch4_32": MAEConfig(img_size=32, patch_size=4, embed_dim=192, depth=6, num_heads=3,
                                        decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4),
    # 32 px, patch 2 -> 16x16 grid: finer masks, ~4x the compute of patch 4.
    "mae_vit_tiny_patch2_32": MAEConfig(img_size=32, patch_size=2, embed_dim=192, depth=6, num_heads=3,
                                        decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4),
    # 64 px, patch 4 -> 16x16 grid: the embedded-default preset (crops of real photographs).
    "mae_vit_tiny_patch4_64": MAEConfig(img_size=64, patch_size=4, embed_dim=192, depth=6, num_heads=3,
                                        decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4),
    # 32 px, patch 4, a narrower and shallower encoder (~1 M parameters, ~2.5x faster than tiny):
    # the CIFAR-10 mini-reproduction, where 2 CPU cores must pretrain 10 runs for several epochs.
    "mae_vit_mini_patch4_32": MAEConfig(img_size=32, patch_size=4, embed_dim=128, depth=4, num_heads=4,
                                        decoder_embed_dim=96, decoder_depth=1, decoder_num_heads=3),
    # 32 px, patch 2 -> 16x16 grid at the cost 2 CPU cores can afford for a 14-run grid: 4 x 96
    # encoder, 1 x 64 decoder (~0.55 M parameters; measured 165 img/s training, fp32, 2 cores,
    # against 91 for the 4 x 128 mini width at patch 2). The CIFAR-10 16x16 grid (cifar10-grid16).
    "mae_vit_nano_patch2_32": MAEConfig(img_size=32, patch_size=2, embed_dim=96, depth=4, num_heads=3,
                                        decoder_embed_dim=64, decoder_depth=1, decoder_num_heads=2),
    # Smoke tests and CI: seconds per run, learns nothing worth looking at.
    "mae_vit_micro_patch4_32": MAEConfig(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2,
                                         decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2),
}


def get_config(preset: str, **overrides) -> MAEConfig:
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r} is not supported; allowed values: {', '.join(PRESETS)}")
    return MAEConfig(**{**asdict(PRESETS[preset]), **overrides})


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, L, p*p*C] (MAE's patch order and pixel layout)."""
    b, c, h, w = imgs.shape
    x = imgs.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x: torch.Tensor, p: int, c: int = 3) -> torch.Tensor:
    """[B, L, p*p*C] -> [B, C, H, W]."""
    b, L, _ = x.shape
    g = int(L ** 0.5)
    x = x.reshape(b, g, g, p, p, c)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(b, c, g * p, g * p)


def ids_from_mask(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mask, ids_keep, ids_restore) from an explicit binary mask [B, L] (1 = masked)."""
    counts = (mask == 0).sum(1)
    if not (counts == counts[0]).all():
        raise ValueError(f"every sample must keep the same number of patches, got {counts.tolist()}")
    return masks_from_scores(1.0 - mask.float(), int(counts[0]))


def _sincos(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding [1, 1 + grid^2, dim] with a zero [CLS] slot.

    MAE's frequencies and values, in timm's channel order: the four dim/4 blocks are MAE's
    (sin_x, cos_x, sin_y, cos_y) permuted to (sin_y, sin_x, cos_y, cos_x) (pinned by a test). A network
    trained from scratch is indifferent to the order; loading MAE's own checkpoints is unaffected
    because pos_embed is stored in (and loaded from) the checkpoint."""
    pe = build_sincos2d_pos_embed([grid, grid], dim)
    return torch.cat([torch.zeros(1, dim), pe], 0).unsqueeze(0)


class MaskedAutoencoder(nn.Module):
    def __init__(self, cfg: MAEConfig):
        super().__init__()
        self.cfg = cfg
        # set by colormae.run.pretrained.load_pretrained: whether the decoder holds trained weights (False
        # for encoder-only files), a fine-tuned classifier's fc_norm / head under timm names, the file
        self.has_decoder: bool = True
        self.classifier: dict[str, torch.Tensor] = {}
        self.source: str | None = None
        self.source_format: str | None = None
        norm = partial(nn.LayerNorm, eps=cfg.norm_eps)
        d, dd, L = cfg.embed_dim, cfg.decoder_embed_dim, cfg.grid ** 2
        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(_sincos(cfg.grid, d), requires_grad=False)
        self.blocks = nn.ModuleList(Block(d, cfg.num_heads, cfg.mlp_ratio, qkv_bias=True, norm_layer=norm)
                                    for _ in range(cfg.depth))
        self.norm = norm(d)
        self.decoder_embed = nn.Linear(d, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.decoder_pos_embed = nn.Parameter(_sincos(cfg.grid, dd), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(Block(dd, cfg.decoder_num_heads, cfg.mlp_ratio, qkv_bias=True,
                                                  norm_layer=norm) for _ in range(cfg.decoder_depth))
        self.decoder_norm = norm(dd)
        self.decoder_pred = nn.Linear(dd, cfg.patch_size ** 2 * cfg.in_chans)
        assert self.pos_embed.shape[1] == L + 1
        self._init_weights()

    def _init_weights(self) -> None:
        # MAE's init: patch projection as a linear layer, xavier for linears, small normal tokens.
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "mask_token", "pos_embed", "decoder_pos_embed"}

    def forward_encoder(self, imgs: torch.Tensor, ids_keep: torch.Tensor | None) -> torch.Tensor:
        """Encode the visible patches only: [B, n_keep + 1, D] ([CLS] first). ids_keep=None: all."""
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]
        if ids_keep is not None:
            x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], 1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Predict every patch's pixels [B, L, p*p*C] from the visible latents and mask tokens."""
        if not self.has_decoder:
            raise ValueError(f"{self.source or 'this model'} has no decoder (an encoder-only file): it cannot "
                             "reconstruct; load a file with a decoder (MAE's *_full / visualize, a ColorMAE "
                             "pretraining checkpoint, a ViTMAEForPreTraining folder)")
        x = self.decoder_embed(latent)
        b, L = ids_restore.shape
        tokens = torch.cat([x[:, 1:], self.mask_token.expand(b, L + 1 - x.shape[1], -1)], 1)
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], tokens], 1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over masked patches (per-patch normalized target if norm_pix_loss)."""
        target = patchify(imgs, self.cfg.patch_size)
        if self.cfg.norm_pix_loss:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        per_patch = ((pred.float() - target.float()) ** 2).mean(-1)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, mask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``mask``: a masker's (mask, ids_keep, ids_restore) or a binary [B, L] tensor (1 = masked).

        Returns (loss, pred [B, L, p*p*C], mask [B, L]).
        """
        mask, ids_keep, ids_restore = ids_from_mask(mask) if torch.is_tensor(mask) else mask
        latent = self.forward_encoder(imgs, ids_keep)
        pred = self.forward_decoder(latent, ids_restore)
        return self.loss(imgs, pred, mask), pred, mask


def mae_model(preset: str, **overrides) -> MaskedAutoencoder:
    return MaskedAutoencoder(get_config(preset, **overrides))


# -- export to stock timm -------------------------------------------------------------------

def timm_kwargs(cfg: MAEConfig) -> dict:
    """Arguments of ``timm.create_model("vit_base_patch16_224", **kwargs)`` for this encoder."""
    kwargs = {"img_size": cfg.img_size, "patch_size": cfg.patch_size, "in_chans": cfg.in_chans,
              "embed_dim": cfg.embed_dim, "depth": cfg.depth, "num_heads": cfg.num_heads,
              "mlp_ratio": cfg.mlp_ratio}
    if cfg.norm_eps != 1e-6:  # timm's ViT default; Hugging Face files may differ
        kwargs["norm_layer"] = partial(nn.LayerNorm, eps=cfg.norm_eps)
    return kwargs


TIMM_BASE_NAME = "vit_base_patch16_224"  # architecture family; every size is set through kwargs


def export_encoder(model: MaskedAutoencoder) -> dict:
    """Encoder weights under timm VisionTransformer names, with what is needed to rebuild it."""
    keep = ("patch_embed.", "cls_token", "pos_embed", "blocks.", "norm.")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k.startswith(keep)}
    return {"state_dict": state, "timm_name": TIMM_BASE_NAME, "timm_kwargs": timm_kwargs(model.cfg),
            "mae_config": asdict(model.cfg)}


# the label of the untrained control in every experiment: the encoder a pretraining run starts from
CONTROL = "none"


def untrained_encoder(preset: str, seed: int, **overrides) -> dict:
    """The export of the MAE a pretraining run with ``seed`` starts from (the untrained control)."""
    torch.manual_seed(seed)  # exactly pretrain.run's model init
    return export_encoder(MaskedAutoencoder(get_config(preset, **overrides)))


def timm_vit_from_export(export: dict, num_classes: int, *, global_pool: str = "token",
                         **kwargs) -> tuple[nn.Module, object]:
    """A stock timm ViT loaded with an exported encoder; returns (model, load_state_dict result).

    With ``global_pool="avg"`` (MAE fine-tuning) timm replaces the final ``norm`` with ``fc_norm``,
    so ``norm.*`` is unused and ``fc_norm.*`` starts fresh, as in MAE.
    """
    model = timm.create_model(export["timm_name"], pretrained=False, num_classes=num_classes,
                              global_pool=global_pool, **export["timm_kwargs"], **kwargs)
    state = dict(export["state_dict"])
    if global_pool == "avg":
        state = {k: v for k, v in state.items() if not k.startswith("norm.")}
    result = model.load_state_dict(state, strict=False)
    bad_missing = [k for k in result.missing_keys if not k.startswith(("head.", "fc_norm."))]
    if bad_missing or result.unexpected_keys:
        raise ValueError(f"encoder does not match timm {export['timm_name']} {export['timm_kwargs']}: "
                         f"missing {bad_missing}, unexpected {result.unexpected_keys}")
    return model, result


# -- loading and looking -------------------------------------------------------------------

def mae_from_checkpoint(ckpt: dict) -> MaskedAutoencoder:
    """The MAE of a pretraining checkpoint dict (keys ``mae_config`` and ``model``)."""
    model = MaskedAutoencoder(MAEConfig(**ckpt["mae_config"]))
    model.load_state_dict(ckpt["model"])
    return model


@torch.no_grad()
def reconstruct(model: MaskedAutoencoder, imgs: torch.Tensor, mask) -> dict[str, torch.Tensor]:
    """Images for a reconstruction figure, all [B, C, H, W] in the input's (normalized) space.

    ``masked``: visible patches only (masked ones zeroed); ``reconstruction``: the decoder's output
    for every patch; ``pasted``: visible patches from the input, masked ones from the decoder (MAE's
    usual display). With norm_pix_loss the prediction is de-normalized with each patch's own stats.
    """
    p = model.cfg.patch_size
    loss, pred, mask = model(imgs, mask)
    if model.cfg.norm_pix_loss:
        target = patchify(imgs, p)
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        pred = pred * (var + 1e-6) ** 0.5 + mean
    rec = unpatchify(pred.float(), p, model.cfg.in_chans)
    m = unpatchify(mask[..., None].expand(-1, -1, p * p * model.cfg.in_chans).float(), p, model.cfg.in_chans)
    return {"original": imgs, "masked": imgs * (1 - m), "reconstruction": rec,
            "pasted": imgs * (1 - m) + rec * m, "mask": m, "loss": loss}
