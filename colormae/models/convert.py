"""Weight layouts of other MAE code bases <-> our MaskedAutoencoder: pure state-dict mapping and shape inference.

The *canonical* layout is ``MaskedAutoencoder.state_dict()``: timm VisionTransformer names for the encoder
(``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1,
mlp.fc2}``, ``norm``), facebookresearch/mae names for the decoder. facebookresearch/mae and timm files use these
names already; mmpretrain (the official ColorMAE code) and Hugging Face ViTMAE are renamed here. A fine-tuned
classifier's ``fc_norm`` / ``head`` travel beside, under timm names (``CLASSIFIER_KEYS``).

Every ``*_to_canonical`` returns ``(canonical, classifier, unmatched)``; nothing here reads or writes files
(``colormae.run.pretrained`` does, and detects the format).
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import replace

import torch
from timm.layers import resample_abs_pos_embed

from .mae import MAEConfig, MaskedAutoencoder

log = logging.getLogger(__name__)

FORMATS = ("colormae", "mae", "timm", "mmpretrain", "hf")
LAYER_PARTS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
ENCODER_TOP = ("cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight",
               "norm.bias")
DECODER_TOP = ("mask_token", "decoder_pos_embed", "decoder_embed.weight", "decoder_embed.bias",
               "decoder_norm.weight", "decoder_norm.bias", "decoder_pred.weight", "decoder_pred.bias")
CLASSIFIER_KEYS = ("fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias")
_BLOCK = re.compile(r"(blocks|decoder_blocks)\.(\d+)\.(norm1|attn\.qkv|attn\.proj|norm2|mlp\.fc1|mlp\.fc2)"
                    r"\.(weight|bias)")
# MAE's encoders: 64-wide heads, except ViT-H (1280 wide, 16 heads of 80)
KNOWN_HEADS = {1280: 16}


class ConversionError(ValueError):
    """Weights that cannot be placed in a MaskedAutoencoder; names the format and the first unmatched keys."""

    def __init__(self, fmt: str, unmatched: list[str], detail: str = ""):
        self.fmt, self.unmatched = fmt, list(unmatched)
        super().__init__(f"cannot place the weights as format {fmt!r}{': ' + detail if detail else ''}; "
                         f"first unmatched keys: {self.unmatched[:8]}")


def is_canonical(key: str) -> bool:
    return key in ENCODER_TOP or key in DECODER_TOP or _BLOCK.fullmatch(key) is not None


def is_decoder(key: str) -> bool:
    return key in DECODER_TOP or key.startswith("decoder_blocks.")


def encoder_keys(state: dict) -> dict:
    return {k: v for k, v in state.items() if is_canonical(k) and not is_decoder(k)}


def decoder_keys(state: dict) -> dict:
    return {k: v for k, v in state.items() if is_decoder(k)}


def _strip(state: dict, prefix: str) -> dict:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


# -- timm and facebookresearch/mae (our names already) ---------------------------------------------

def timm_to_canonical(state: dict) -> tuple[dict, dict, list[str]]:
    """timm VisionTransformer or facebookresearch/mae weights (``module.`` prefixes removed)."""
    state = _strip(state, "module.")
    canon = {k: v for k, v in state.items() if is_canonical(k)}
    classifier = {k: v for k, v in state.items() if k in CLASSIFIER_KEYS}
    unmatched = [k for k in state if k not in canon and k not in classifier]
    return canon, classifier, unmatched


def canonical_to_timm(canon: dict, classifier: dict) -> dict:
    """timm VisionTransformer weights: the encoder and classifier. With an ``fc_norm`` (a fine-tuned
    classifier, timm's ``global_pool='avg'``) there is no final ``norm``, as in timm and MAE fine-tuning."""
    state = dict(encoder_keys(canon))
    if "fc_norm.weight" in classifier:
        state = {k: v for k, v in state.items() if not k.startswith("norm.")}
    state.update(classifier)
    return state


# -- mmpretrain (official ColorMAE: MAE / MAEViT / MAEPretrainDecoder / VisionTransformer) -----------

# mmpretrain TransformerEncoderLayer: ln1, attn (MultiheadAttention: qkv, proj), ln2, ffn (mmcv FFN:
# layers.0 = Sequential(Linear, GELU, Dropout), layers.1 = Linear)
MMPRETRAIN_LAYER = {"ln1": "norm1", "attn.qkv": "attn.qkv", "attn.proj": "attn.proj", "ln2": "norm2",
                    "ffn.layers.0.0": "mlp.fc1", "ffn.layers.1": "mlp.fc2"}
MMPRETRAIN_TOP = {"backbone.cls_token": "cls_token", "backbone.pos_embed": "pos_embed",
                  "backbone.patch_embed.projection.weight": "patch_embed.proj.weight",
                  "backbone.patch_embed.projection.bias": "patch_embed.proj.bias",
                  "backbone.ln1.weight": "norm.weight", "backbone.ln1.bias": "norm.bias",  # final_norm
                  "backbone.ln2.weight": "fc_norm.weight", "backbone.ln2.bias": "fc_norm.bias",  # avg_featmap
                  "neck.mask_token": "mask_token", "neck.decoder_pos_embed": "decoder_pos_embed",
                  "neck.decoder_embed.weight": "decoder_embed.weight", "neck.decoder_embed.bias": "decoder_embed.bias",
                  "neck.ln1.weight": "decoder_norm.weight", "neck.ln1.bias": "decoder_norm.bias",  # decoder_norm
                  "neck.decoder_pred.weight": "decoder_pred.weight", "neck.decoder_pred.bias": "decoder_pred.bias",
                  "head.fc.weight": "head.weight", "head.fc.bias": "head.bias"}  # LinearClsHead
_MM_BLOCK = re.compile(r"(backbone\.layers|neck\.decoder_blocks)\.(\d+)\.(.+)\.(weight|bias)")


def mmpretrain_name(key: str) -> str | None:
    """The canonical (or classifier) name of an mmpretrain key, or None."""
    if key in MMPRETRAIN_TOP:
        return MMPRETRAIN_TOP[key]
    m = _MM_BLOCK.fullmatch(key)
    if m and m.group(3) in MMPRETRAIN_LAYER:
        blocks = "blocks" if m.group(1) == "backbone.layers" else "decoder_blocks"
        return f"{blocks}.{m.group(2)}.{MMPRETRAIN_LAYER[m.group(3)]}.{m.group(4)}"
    return None


def mmpretrain_to_canonical(state: dict) -> tuple[dict, dict, list[str]]:
    canon, classifier, unmatched = {}, {}, []
    for k, v in _strip(state, "module.").items():
        name = mmpretrain_name(k)
        if name is None:
            unmatched.append(k)
        else:
            (classifier if name in CLASSIFIER_KEYS else canon)[name] = v
    return canon, classifier, unmatched


# -- Hugging Face ViTMAE -----------------------------------------------------------------------------

# per-layer parts of both transformers generations (4.x: attention.attention.query ...; 5.x: attention.q_proj ...)
HF_LAYER = {"layernorm_before": "norm1", "layernorm_after": "norm2",
            "attention.o_proj": "attn.proj", "attention.output.dense": "attn.proj",
            "mlp.fc1": "mlp.fc1", "intermediate.dense": "mlp.fc1", "mlp.fc2": "mlp.fc2", "output.dense": "mlp.fc2"}
HF_QKV = {"attention.q_proj": 0, "attention.k_proj": 1, "attention.v_proj": 2,
          "attention.attention.query": 0, "attention.attention.key": 1, "attention.attention.value": 2}
HF_TOP = {"embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
          "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
          "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
          "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias",
          **{f"decoder.{k}": k for k in DECODER_TOP}}
# layer lists: 5.x in memory (layers, decoder.decoder_layers), 4.x and 5.x files (encoder.layer,
# decoder.decoder_layers / decoder.decoder_encoder.layer)
_HF_BLOCK = re.compile(r"(layers|encoder\.layer|decoder\.decoder_layers|decoder\.decoder_encoder\.layer)\.(\d+)\."
                       r"(.+)\.(weight|bias)")


def hf_name(key: str) -> tuple[str, int | None] | None:
    """(canonical name, q/k/v index into the fused qkv or None) of a ViTMAEForPreTraining / ViTMAEModel key."""
    key = key[4:] if key.startswith("vit.") else key
    if key in HF_TOP:
        return HF_TOP[key], None
    m = _HF_BLOCK.fullmatch(key)
    if not m:
        return None
    blocks = "decoder_blocks" if m.group(1).startswith("decoder") else "blocks"
    part, wb = m.group(3), m.group(4)
    if part in HF_QKV:
        return f"{blocks}.{m.group(2)}.attn.qkv.{wb}", HF_QKV[part]
    if part in HF_LAYER:
        return f"{blocks}.{m.group(2)}.{HF_LAYER[part]}.{wb}", None
    return None


def hf_to_canonical(state: dict) -> tuple[dict, dict, list[str]]:
    canon, parts, unmatched = {}, {}, []
    for k, v in state.items():
        named = hf_name(k)
        if named is None:
            unmatched.append(k)
        elif named[1] is None:
            canon[named[0]] = v
        else:
            parts.setdefault(named[0], {})[named[1]] = v
    for name, qkv in parts.items():
        if sorted(qkv) != [0, 1, 2]:
            unmatched.append(f"{name} (has only {sorted(qkv)} of q, k, v)")
            continue
        canon[name] = torch.cat([qkv[0], qkv[1], qkv[2]], 0)  # timm's fused order: q, k, v
    return canon, {}, unmatched


def canonical_to_hf(canon: dict, target_keys: list[str]) -> tuple[dict, list[str], list[str]]:
    """Fill each of ``target_keys`` (an installed transformers model's ``state_dict()`` names) from
    ``canon``: (state, target keys that could not be filled, canonical keys left unused)."""
    out, missing, used = {}, [], set()
    for k in target_keys:
        named = hf_name(k)
        if named is None or named[0] not in canon:
            missing.append(k)
            continue
        name, index = named
        used.add(name)
        v = canon[name]
        out[k] = v.clone() if index is None else v.chunk(3, 0)[index].clone()
    return out, missing, [k for k in canon if k not in used]


# -- config inference and building --------------------------------------------------------------------

def default_heads(width: int) -> int:
    """Encoder heads when a file does not say: width / 64 (ViT-Ti/S/B/L), 16 for ViT-H (1280)."""
    return KNOWN_HEADS.get(width, max(1, width // 64))


def default_decoder_heads(width: int) -> int:
    """Decoder heads when a file does not say: MAE's 32-wide heads (512 -> 16)."""
    return max(1, width // 32)


def _count(canon: dict, prefix: str) -> int:
    idx = {int(m.group(2)) for k in canon if (m := _BLOCK.fullmatch(k)) and m.group(1) == prefix}
    if idx and idx != set(range(max(idx) + 1)):
        raise ConversionError("canonical", [f"{prefix}.{i}" for i in sorted(set(range(max(idx) + 1)) - idx)],
                              f"{prefix} are not numbered 0..{max(idx)}")
    return len(idx)


def infer_config(canon: dict, *, num_heads: int | None = None, decoder_num_heads: int | None = None,
                 norm_eps: float = 1e-6, norm_pix_loss: bool = False, fmt: str = "canonical") -> MAEConfig:
    """MAEConfig from tensor shapes: width, depth, patch, channels, grid, MLP ratio, decoder width and depth.
    Heads are not in the shapes: ``num_heads`` (default ``default_heads``), ``decoder_num_heads`` (default
    ``default_decoder_heads``). Without decoder weights the decoder takes MAE's 512 x 8 shape."""
    need = ("patch_embed.proj.weight", "pos_embed", "blocks.0.mlp.fc1.weight")
    if any(k not in canon for k in need):
        raise ConversionError(fmt, [k for k in need if k not in canon], "no ViT encoder: missing")
    d, c, p, p2 = canon["patch_embed.proj.weight"].shape
    L = canon["pos_embed"].shape[1] - 1
    grid = math.isqrt(L)
    if p != p2 or grid * grid != L:
        raise ConversionError(fmt, [], f"patches {p}x{p2} and {L} positions (+1 class token): only square "
                                       "patches on a square grid are supported")
    hidden = canon["blocks.0.mlp.fc1.weight"].shape[0]
    kw = dict(img_size=grid * p, patch_size=p, in_chans=c, embed_dim=d, depth=_count(canon, "blocks"),
              num_heads=num_heads or default_heads(d), mlp_ratio=hidden / d, norm_pix_loss=norm_pix_loss,
              norm_eps=norm_eps)
    if "decoder_embed.weight" in canon:
        dd = canon["decoder_embed.weight"].shape[0]
        if "decoder_blocks.0.mlp.fc1.weight" in canon:
            ratio = canon["decoder_blocks.0.mlp.fc1.weight"].shape[0] / dd
            if ratio != kw["mlp_ratio"]:
                raise ConversionError(fmt, ["decoder_blocks.0.mlp.fc1.weight"],
                                      f"decoder MLP ratio {ratio} differs from the encoder's {kw['mlp_ratio']}")
        kw.update(decoder_embed_dim=dd, decoder_depth=_count(canon, "decoder_blocks"),
                  decoder_num_heads=decoder_num_heads or default_decoder_heads(dd))
    elif decoder_num_heads:
        kw["decoder_num_heads"] = decoder_num_heads
    decoder = ("decoder_num_heads", kw.get("decoder_embed_dim", 512), kw.get("decoder_num_heads", 16))
    for name, width, heads in (("num_heads", d, kw["num_heads"]), decoder):
        if width % heads:
            raise ValueError(f"{name}={heads} does not divide the width {width}")
    return MAEConfig(**kw)


def resample_pos_embed(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """[1, 1 + g^2, D] -> [1, 1 + grid^2, D]: the class slot kept, the grid bicubically resampled (timm's)."""
    old = math.isqrt(pos.shape[1] - 1)
    if old == grid:
        return pos
    log.info("position embedding resampled from a %dx%d to a %dx%d grid", old, old, grid, grid)
    return resample_abs_pos_embed(pos.float(), [grid, grid], [old, old], num_prefix_tokens=1).to(pos.dtype)


def build_model(canon: dict, cfg: MAEConfig, classifier: dict | None = None, *, img_size: int | None = None,
                fmt: str = "canonical") -> MaskedAutoencoder:
    """A MaskedAutoencoder holding ``canon`` (encoder; decoder when present, else ``has_decoder=False``).
    Position embeddings are copied verbatim, resampled only when ``img_size`` changes the grid."""
    classifier = dict(classifier or {})
    unknown = [k for k in canon if not is_canonical(k)]
    if unknown:
        raise ConversionError(fmt, unknown, "not MaskedAutoencoder weights")
    if img_size is not None and img_size != cfg.img_size:
        if img_size % cfg.patch_size:
            raise ValueError(f"img_size={img_size} is not a multiple of the patch size {cfg.patch_size}")
        cfg = replace(cfg, img_size=img_size)
    model = MaskedAutoencoder(cfg)
    own = model.state_dict()
    state = {k: v for k, v in canon.items()}
    for k in ("pos_embed", "decoder_pos_embed"):
        if k in state:
            state[k] = resample_pos_embed(state[k], cfg.grid)
    optional = ("norm.weight", "norm.bias") if "fc_norm.weight" in classifier else ()
    missing = [k for k in own if not is_decoder(k) and k not in state and k not in optional]
    dec = decoder_keys(state)
    has_decoder = bool(dec)
    if has_decoder:
        missing += [k for k in own if is_decoder(k) and k not in state]
    wrong = [f"{k} {tuple(v.shape)} != {tuple(own[k].shape)}" for k, v in state.items() if v.shape != own[k].shape]
    if missing or wrong:
        raise ConversionError(fmt, missing + wrong, "missing or misshapen tensors for " + str(cfg))
    model.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in state.items()}})
    model.has_decoder, model.classifier = has_decoder, classifier
    return model.eval()


def canonical_state(model: MaskedAutoencoder) -> dict:
    """The model's weights in canonical names (decoder left out when it holds no trained weights)."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if not model.has_decoder:
        state = encoder_keys(state)
    if "fc_norm.weight" in model.classifier:
        state = {k: v for k, v in state.items() if not k.startswith("norm.")}
    return state
