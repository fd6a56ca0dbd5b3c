"""Pretrained weights in, out and across formats: ``load_pretrained``, ``save_pretrained``, ``colormae convert``.

Reads (format detected from the keys, configuration inferred from tensor shapes; see docs/pretrained.md):

* ``mae``: facebookresearch/mae ``{'model': ...}`` files: encoder-only, ``*_full`` (decoder, norm-pix target)
  and ``*visualize*`` (decoder, raw-pixel target); fine-tuned ones (``fc_norm``, ``head``),
* ``mmpretrain``: official ColorMAE / mmpretrain checkpoints (``state_dict`` with ``backbone.*`` / ``neck.*``;
  fine-tuned: ``backbone.ln2`` = fc_norm, ``head.fc``),
* ``timm``: VisionTransformer state dicts, ``.pth`` or ``.safetensors`` (e.g. ``vit_base_patch16_224.mae``),
* ``hf``: Hugging Face ``ViTMAEForPreTraining`` / ``ViTMAEModel`` folders (``config.json`` + weights),
* ``colormae``: our run directories, pretraining checkpoints, encoder exports and compact fp16 weights.

Writes timm (safetensors), Hugging Face (a ``save_pretrained`` folder), MAE and our own format. The pure
mapping lives in ``colormae.models.convert``; this module reads files and detects formats.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from ..files import atomic_write, project_path, repo_relative, save_torch
from ..models.convert import (
    CLASSIFIER_KEYS,
    ConversionError,
    build_model,
    canonical_state,
    canonical_to_hf,
    canonical_to_timm,
    hf_to_canonical,
    infer_config,
    mmpretrain_to_canonical,
    timm_to_canonical,
)
from ..models.mae import MAEConfig, MaskedAutoencoder, timm_kwargs
from .rundir import ENCODER, LAST

log = logging.getLogger(__name__)

COMPACT_FORMAT = "colormae-compact-mae-v1"  # weights.save_compact's files (committed grid weights)
EXPORT_FORMATS = ("timm", "hf", "mae", "colormae")
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


class PretrainedFileError(ValueError):
    """A file ``load_pretrained`` cannot read or place: names the file, the guessed format and the keys."""


# -- reading ------------------------------------------------------------------------------------------

def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # random bytes, a truncated zip, pickle garbage
        raise PretrainedFileError(f"{path}: not a readable torch checkpoint or safetensors file "
                                  f"({type(e).__name__}: {e})") from e


def _safetensors_load(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:
        raise PretrainedFileError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e


def _hf_folder(path: Path) -> tuple[dict, dict]:
    """(state dict, config.json) of a Hugging Face ``save_pretrained`` folder."""
    config = json.loads((path / "config.json").read_text())
    if config.get("model_type") != "vit_mae":
        raise PretrainedFileError(f"{path}: config.json has model_type={config.get('model_type')!r}; "
                                  "allowed values: 'vit_mae' (ViTMAEForPreTraining / ViTMAEModel)")
    for name in HF_WEIGHTS:
        if (path / name).is_file():
            state = _safetensors_load(path / name)[0] if name.endswith(".safetensors") else _torch_load(path / name)
            break
    else:
        raise FileNotFoundError(f"{path}: a Hugging Face folder without weights (looked for {', '.join(HF_WEIGHTS)}; "
                                "sharded checkpoints are not supported)")
    try:
        import transformers
    except ImportError:  # the names in the file (both transformers generations are mapped)
        return state, config
    # the installed transformers' own names, whatever renaming its loader applies to older files
    decoder = any(k.startswith("decoder.") for k in state)
    cls = transformers.ViTMAEForPreTraining if decoder else transformers.ViTMAEModel
    return cls.from_pretrained(str(path)).state_dict(), config


def _resolve(path: Path) -> Path:
    """A run directory -> its checkpoint (decoder included) or encoder export; other paths unchanged."""
    if not path.is_dir() or ((path / "config.json").is_file() and any((path / n).is_file() for n in HF_WEIGHTS)):
        return path
    for name in (LAST, ENCODER):
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(f"no weights in directory {path}: neither {LAST} nor {ENCODER} (a run directory) "
                            "nor config.json + model.safetensors (a Hugging Face folder)")


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(torch.is_tensor(v) for v in obj.values())


def _args_norm_pix(obj: dict) -> bool | None:
    """facebookresearch/mae training checkpoints keep their argparse Namespace under ``args``."""
    args = obj.get("args")
    value = args.get("norm_pix_loss") if isinstance(args, dict) else getattr(args, "norm_pix_loss", None)
    return bool(value) if value is not None else None


def _place(path: Path, obj: Any, meta: dict) -> tuple[str, dict, dict, dict]:
    """(format, canonical, classifier, config hints) of a loaded object; hints: ``cfg`` (a recorded
    MAEConfig), ``norm_pix_loss``, ``norm_eps``, ``num_heads``, ``decoder_num_heads``, ``has_decoder``."""
    if not isinstance(obj, dict):
        raise PretrainedFileError(f"{path}: holds a {type(obj).__name__}, not a dict of weights (guessed format: none)")
    hints: dict = {}
    if obj.get("format") == COMPACT_FORMAT and "model" in obj and "mae_config" in obj:
        return "colormae", dict(obj["model"]), {}, {"cfg": MAEConfig(**obj["mae_config"])}
    if all(k in obj for k in ("state_dict", "timm_name", "timm_kwargs")):  # our encoder.pth export
        canon, classifier, bad = timm_to_canonical(obj["state_dict"])
        _check("colormae", path, bad)
        cfg = MAEConfig(**obj["mae_config"]) if "mae_config" in obj else None
        return "colormae", canon, classifier, {"cfg": cfg} if cfg else {}
    if "model" in obj and "mae_config" in obj:  # our pretraining checkpoint / save_pretrained(format="colormae")
        canon, classifier, bad = timm_to_canonical(obj["model"])
        _check("colormae", path, bad)
        if obj.get("has_decoder", True) is False:
            canon = {k: v for k, v in canon.items() if not k.startswith(("decoder", "mask_token"))}
        return "colormae", canon, {**classifier, **obj.get("classifier", {})}, {"cfg": MAEConfig(**obj["mae_config"])}
    if _is_tensor_dict(obj.get("model")):  # facebookresearch/mae
        canon, classifier, bad = timm_to_canonical(obj["model"])
        _check("mae", path, bad)
        hints["norm_pix_loss"] = _args_norm_pix(obj)
        if isinstance(obj.get("args"), dict):  # written by save_pretrained(format="mae")
            hints.update(obj["args"].get("colormae", {}))
        if hints["norm_pix_loss"] is None:
            # MAE's releases: *_full files were trained with norm-pix targets, *visualize* ones without
            hints["norm_pix_loss"] = "visualize" not in path.name
        return "mae", canon, classifier, hints
    if _is_tensor_dict(obj.get("state_dict")):  # mmengine / mmpretrain checkpoint, or a wrapped state dict
        return _place(path, obj["state_dict"], meta)
    if not _is_tensor_dict(obj):
        raise PretrainedFileError(f"{path}: no weights found (guessed format: none of {', '.join(EXPORT_FORMATS)}, "
                                  f"mmpretrain); top-level keys: {sorted(map(str, obj))[:10]}")
    keys = [k[len("module."):] if k.startswith("module.") else k for k in obj]
    if any(k.startswith(("backbone.", "neck.")) for k in keys):
        canon, classifier, bad = mmpretrain_to_canonical(obj)
        _check("mmpretrain", path, bad)
        return "mmpretrain", canon, classifier, {"norm_pix_loss": True}  # mmpretrain's MAE recipe (MAEPixelHead)
    if any("embeddings.patch_embeddings" in k for k in keys):
        canon, classifier, bad = hf_to_canonical(obj)
        _check("hf", path, bad)
        return "hf", canon, classifier, {"norm_eps": 1e-12}  # ViTMAEConfig's default layer_norm_eps
    canon, classifier, bad = timm_to_canonical(obj)
    _check("timm", path, bad)
    if "colormae" in meta:  # our timm export records what the shapes do not tell
        hints.update(json.loads(meta["colormae"]))
    return "timm", canon, classifier, hints


def _check(fmt: str, path: Path, unmatched: list[str]) -> None:
    if unmatched:
        raise PretrainedFileError(f"{path}: cannot place {len(unmatched)} tensors (guessed format {fmt!r}); "
                                  f"first unmatched keys: {unmatched[:8]}")


def read_pretrained(path: str | os.PathLike | dict) -> tuple[str, dict, dict, dict, str]:
    """(format, canonical weights, classifier, config hints, source name) of a file, folder or loaded dict."""
    if isinstance(path, dict):
        return (*_place(Path("<dict>"), path, {}), "<dict>")
    p = _resolve(project_path(path))
    if not p.exists():
        raise FileNotFoundError(f"pretrained weights not found: {p}")
    if p.is_dir():
        state, config = _hf_folder(p)
        canon, classifier, bad = hf_to_canonical(state)
        _check("hf", p, bad)
        if config.get("hidden_act", "gelu") != "gelu" or not config.get("qkv_bias", True):
            raise PretrainedFileError(f"{p}: hidden_act={config.get('hidden_act')!r}, "
                                      f"qkv_bias={config.get('qkv_bias')}; allowed values: hidden_act='gelu', "
                                      "qkv_bias=True")
        hints = {"num_heads": config.get("num_attention_heads"),
                 "decoder_num_heads": config.get("decoder_num_attention_heads"),
                 "norm_eps": config.get("layer_norm_eps", 1e-12), "norm_pix_loss": config.get("norm_pix_loss", False)}
        return "hf", canon, classifier, hints, str(p)
    if p.suffix == ".safetensors":
        state, meta = _safetensors_load(p)
        return (*_place(p, state, meta), str(p))
    return (*_place(p, _torch_load(p), {}), str(p))


def load_pretrained(path: str | os.PathLike | dict, *, num_heads: int | None = None,
                    decoder_num_heads: int | None = None, img_size: int | None = None,
                    norm_pix_loss: bool | None = None, require_decoder: bool = False) -> MaskedAutoencoder:
    """A ``MaskedAutoencoder`` (eval mode) from any supported file, folder or already-loaded dict.

    The format is detected from the keys and the configuration inferred from tensor shapes; heads are not
    in the shapes: they come from the file when it records them, else ``num_heads`` (default width / 64,
    16 for ViT-H) and ``decoder_num_heads`` (default decoder width / 32). Without decoder weights the model's
    ``has_decoder`` is False and reconstructing raises. ``norm_pix_loss`` overrides the file's target
    (MAE ``*_full``: True, ``*visualize*``: False). ``img_size`` resamples the position embeddings to another
    grid (they are otherwise copied verbatim). ``require_decoder``: an encoder-only file is an error.
    """
    fmt, canon, classifier, hints, source = read_pretrained(path)
    try:
        cfg = hints.get("cfg")
        if cfg is None:
            cfg = infer_config(canon, num_heads=num_heads or hints.get("num_heads"),
                               decoder_num_heads=decoder_num_heads or hints.get("decoder_num_heads"),
                               norm_eps=hints.get("norm_eps") or 1e-6, norm_pix_loss=bool(hints.get("norm_pix_loss")),
                               fmt=fmt)
        else:
            over = {k: v for k, v in (("num_heads", num_heads), ("decoder_num_heads", decoder_num_heads)) if v}
            cfg = replace(cfg, **over)
        if norm_pix_loss is not None:
            cfg = replace(cfg, norm_pix_loss=norm_pix_loss)
        model = build_model(canon, cfg, classifier, img_size=img_size, fmt=fmt)
    except ConversionError as e:
        raise PretrainedFileError(f"{source}: {e}") from e
    model.source, model.source_format = source, fmt
    if require_decoder and not model.has_decoder:
        raise PretrainedFileError(f"{source} has no decoder (format {fmt!r}, encoder weights only): it cannot "
                                  "reconstruct images; use a file with a decoder")
    log.info("loaded %s (format %s): %d x %d encoder%s, %dpx, patch %d", source, fmt, cfg.depth, cfg.embed_dim,
             f", {model.cfg.decoder_depth} x {model.cfg.decoder_embed_dim} decoder" if model.has_decoder else
             ", no decoder", model.cfg.img_size, cfg.patch_size)
    return model


# -- writing ------------------------------------------------------------------------------------------

def hf_config(cfg: MAEConfig, mask_ratio: float = 0.75):
    """The ``transformers.ViTMAEConfig`` of our configuration."""
    from transformers import ViTMAEConfig
    return ViTMAEConfig(hidden_size=cfg.embed_dim, num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
                        intermediate_size=int(cfg.embed_dim * cfg.mlp_ratio), image_size=cfg.img_size,
                        patch_size=cfg.patch_size, num_channels=cfg.in_chans, qkv_bias=True, hidden_act="gelu",
                        decoder_hidden_size=cfg.decoder_embed_dim, decoder_num_hidden_layers=cfg.decoder_depth,
                        decoder_num_attention_heads=cfg.decoder_num_heads,
                        decoder_intermediate_size=int(cfg.decoder_embed_dim * cfg.mlp_ratio),
                        layer_norm_eps=cfg.norm_eps, norm_pix_loss=cfg.norm_pix_loss, mask_ratio=mask_ratio,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def to_hf(model: MaskedAutoencoder, mask_ratio: float = 0.75):
    """A ``transformers`` ViTMAEForPreTraining (ViTMAEModel without a trained decoder) holding our weights,
    mapped onto the installed transformers' own ``state_dict()`` names."""
    from transformers import ViTMAEForPreTraining, ViTMAEModel
    hf = (ViTMAEForPreTraining if model.has_decoder else ViTMAEModel)(hf_config(model.cfg, mask_ratio))
    target = hf.state_dict()
    state, missing, unused = canonical_to_hf(canonical_state(model), list(target))
    if missing or unused:
        raise ConversionError("hf", missing + unused, f"transformers {type(hf).__name__} does not match")
    hf.load_state_dict(state, strict=True)
    if model.classifier:
        log.warning("ViTMAE has no classifier: %s left out of the Hugging Face export", sorted(model.classifier))
    return hf.eval()


def save_pretrained(model: MaskedAutoencoder, path: str | os.PathLike, format: str = "colormae", *,
                    mask_ratio: float = 0.75) -> Path:
    """Write ``model`` as ``format``: ``timm`` (a safetensors state dict; ``.pth`` suffix: torch), ``hf`` (a
    ``save_pretrained`` folder that ``ViTMAEForPreTraining.from_pretrained`` opens; ``mask_ratio`` goes into its
    config), ``mae`` (facebookresearch/mae's ``{'model': ...}``) or ``colormae`` (our checkpoint layout)."""
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format={format!r} is not supported; allowed values: {', '.join(EXPORT_FORMATS)}")
    path = project_path(path)
    canon, cfg = canonical_state(model), model.cfg
    if format == "timm":
        state = {k: v.contiguous() for k, v in canonical_to_timm(canon, model.classifier).items()}
        if path.suffix == ".pth":
            return save_torch(state, path)
        from safetensors.torch import save_file
        kw = {k: v for k, v in timm_kwargs(cfg).items() if k != "norm_layer"}
        meta = {"format": "pt", "timm_kwargs": json.dumps(kw),
                "colormae": json.dumps({"num_heads": cfg.num_heads, "norm_eps": cfg.norm_eps,
                                        "norm_pix_loss": cfg.norm_pix_loss})}
        return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=meta))
    if format == "mae":
        # MAE's own files keep an argparse Namespace under "args"; ours adds what the shapes do not tell
        args = {"norm_pix_loss": cfg.norm_pix_loss, "colormae": {"num_heads": cfg.num_heads, "norm_eps": cfg.norm_eps,
                                                                 "decoder_num_heads": cfg.decoder_num_heads}}
        return save_torch({"model": {**canon, **model.classifier}, "args": args}, path)
    if format == "colormae":
        return save_torch({"model": model.state_dict(), "mae_config": asdict(cfg), "has_decoder": model.has_decoder,
                           "classifier": dict(model.classifier)}, path)
    hf = to_hf(model, mask_ratio)
    hf.save_pretrained(str(path))
    return path


# -- warm start ------------------------------------------------------------------------------------------

def init_from_pretrained(model: MaskedAutoencoder, path: str | os.PathLike) -> dict:
    """Copy the weights of ``path`` (any format ``load_pretrained`` reads) into ``model``: the encoder
    (position embeddings resampled to the model's grid), and the decoder when the file has one of the same
    shape (else the decoder keeps its fresh init). Returns what was done, for the run summary."""
    with torch.random.fork_rng(devices=[]):  # building the source model must not move the run's RNG
        src = load_pretrained(path, img_size=model.cfg.img_size)
    own, theirs = model.state_dict(), canonical_state(src)
    enc = [k for k in own if not k.startswith(("decoder", "mask_token"))]
    missing = [k for k in enc if k not in theirs and not k.startswith("norm.")]
    wrong = [f"{k} {tuple(theirs[k].shape)} != {tuple(own[k].shape)}" for k in enc
             if k in theirs and theirs[k].shape != own[k].shape]
    if missing or wrong:
        raise ValueError(f"init_from={str(path)!r}: its encoder ({src.cfg.depth} x {src.cfg.embed_dim}, patch "
                         f"{src.cfg.patch_size}) does not fit the model ({model.cfg.depth} x {model.cfg.embed_dim}, "
                         f"patch {model.cfg.patch_size}): {(missing + wrong)[:6]}")
    dec = [k for k in own if k not in enc]
    decoder = src.has_decoder and all(k in theirs and theirs[k].shape == own[k].shape for k in dec)
    copy = [k for k in (enc + dec if decoder else enc) if k in theirs]
    if src.has_decoder and not decoder:
        log.warning("init_from %s: its decoder does not fit the model's; the decoder starts fresh", path)
    if src.cfg.num_heads != model.cfg.num_heads:
        log.warning("init_from %s: %d heads (inferred) vs the model's %d: same tensors, other attention",
                    path, src.cfg.num_heads, model.cfg.num_heads)
    with torch.no_grad():
        for k in copy:
            own[k].copy_(theirs[k])
    log.info("initialised from %s (format %s): %d tensors, decoder %s", src.source, src.source_format, len(copy),
             "copied" if decoder else "fresh")
    return {"file": repo_relative(src.source), "format": src.source_format, "tensors": len(copy), "decoder": decoder}


# -- colormae convert ---------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="colormae convert", description=(
        "Convert MAE weights between formats. Reads facebookresearch/mae, official ColorMAE (mmpretrain), timm "
        "(.pth / .safetensors), Hugging Face ViTMAE folders and our runs; see docs/pretrained.md."))
    parser.add_argument("input", help="file or folder to read (format detected from the keys)")
    parser.add_argument("output", help="file (timm, mae, colormae) or folder (hf) to write")
    parser.add_argument("--to", required=True, choices=EXPORT_FORMATS, help="output format")
    parser.add_argument("--num-heads", type=int, default=None, help="encoder heads when the file does not record "
                        "them (default: width / 64)")
    parser.add_argument("--decoder-num-heads", type=int, default=None, help="decoder heads (default: width / 32)")
    parser.add_argument("--img-size", type=int, default=None, help="resample position embeddings to this size")
    parser.add_argument("--norm-pix-loss", action=argparse.BooleanOptionalAction, default=None,
                        help="override the file's reconstruction target (MAE *_full: on, *visualize*: off)")
    parser.add_argument("--mask-ratio", type=float, default=0.75, help="hf: the mask_ratio of the written config")
    return parser


def main(argv: Sequence[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    model = load_pretrained(args.input, num_heads=args.num_heads, decoder_num_heads=args.decoder_num_heads,
                            img_size=args.img_size, norm_pix_loss=args.norm_pix_loss)
    out = save_pretrained(model, args.output, args.to, mask_ratio=args.mask_ratio)
    print(f"{model.source} ({model.source_format}) -> {out} ({args.to})")
    return out


__all__ = ["load_pretrained", "save_pretrained", "read_pretrained", "init_from_pretrained", "to_hf", "hf_config",
           "PretrainedFileError", "COMPACT_FORMAT", "EXPORT_FORMATS", "CLASSIFIER_KEYS"]
