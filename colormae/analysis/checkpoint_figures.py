"""The paper's figures of any checkpoint: ``colormae reconstruct`` (Fig. 3), ``colormae attention`` (Fig. 5 and
the Penn-Fudan foreground-attention fraction) and ``colormae eigencam`` (Fig. 6).

Each reads any file or folder ``colormae.load_pretrained`` opens (facebookresearch/mae, official ColorMAE /
mmpretrain, timm, Hugging Face, our runs and compact weights), shows it the bundled photographs (test crops, the
images notebook 07 uses without CIFAR-10) or ``--images DIR`` (any folder of images, resized and centre-cropped to
the model's image size), and writes one figure and a JSON record beside it (``--out``; default under
``results/scratch/checkpoint_figures/``, git-ignored). An existing figure is replaced only with ``--overwrite``.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
from matplotlib.figure import Figure

from ..data.datasets import IMG_EXTENSIONS, CorruptImageError, decode_image_file, eval_transform, sample_images
from ..files import atomic_write, project_path, repo_relative, write_json
from ..masks.maskers import KINDS, make_masker
from ..models.mae import MaskedAutoencoder
from ..run.pretrained import PretrainedFileError, load_pretrained
from . import attention, cam, figures

log = logging.getLogger(__name__)

OUT_DIR = "results/scratch/checkpoint_figures"  # git-ignored: figures of whatever file a user points at
FIGURE_SUFFIXES = (".png", ".pdf", ".jpg", ".jpeg", ".svg")
# file names that say nothing about the model: the output is named after their folder too
GENERIC_NAMES = ("model", "pytorch_model", "checkpoint-last", "encoder", "classifier-fp16")
# what a command reports as one line instead of a traceback
USER_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError, PretrainedFileError,
               CorruptImageError)


# -- inputs and outputs ------------------------------------------------------------------------------------

def folder_images(folder: str | os.PathLike, img_size: int, n: int) -> tuple[torch.Tensor, list[str]]:
    """The first ``n`` images of ``folder`` (sorted by path, sub-folders included), evaluation-transformed to
    ``img_size`` (resize, centre crop, ImageNet normalization: the engines' eval transform), and their paths
    relative to ``folder``."""
    folder = project_path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"--images {folder}: not a folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
    if not files:
        raise FileNotFoundError(f"--images {folder}: no image files ({', '.join(IMG_EXTENSIONS)})")
    transform = eval_transform(img_size)
    chosen = files[:n]
    return (torch.stack([transform(decode_image_file(str(p))) for p in chosen]),
            [str(p.relative_to(folder)) for p in chosen])


def figure_images(images: str | os.PathLike | None, img_size: int, n: int) -> tuple[torch.Tensor, list[str], str]:
    """(images [n, 3, S, S], their names, the group's name): ``images`` (a folder, ``folder_images``), else ``n``
    test crops of the bundled photographs (``sample_images("embedded", ...)``, as notebook 07)."""
    if images is None:
        return (sample_images("embedded", None, "test", img_size, n), [f"embedded test crop {i}" for i in range(n)],
                "bundled photos")
    imgs, names = folder_images(images, img_size, n)
    return imgs, names, project_path(images).name


def check_images(images: str | os.PathLike | None) -> None:
    """``--images`` is a folder (checked before the model loads)."""
    if images is not None and not project_path(images).is_dir():
        raise NotADirectoryError(f"--images {project_path(images)}: not a folder")


def checkpoint_name(checkpoint: str | os.PathLike) -> str:
    """A short name of a checkpoint for titles and file names: the file's stem (a folder: its name), with the
    parent folder's name in front of generic stems (``model.safetensors``, ``checkpoint-last.pth``)."""
    p = Path(checkpoint)
    name = p.stem if p.suffix in (".pth", ".pt", ".bin", ".safetensors", ".ckpt") else p.name
    return f"{p.parent.name}_{name}" if name in GENERIC_NAMES and p.parent.name else name


def output_paths(out: str | os.PathLike | None, checkpoint: str | os.PathLike, figure: str, overwrite: bool
                 ) -> tuple[Path, Path]:
    """(figure, JSON record) paths: ``out`` (its suffix one of ``FIGURE_SUFFIXES``) and the same name with
    ``.json``; default ``OUT_DIR/<checkpoint name>_<figure>.png``. Either existing without ``overwrite`` is an
    error (checked before any work)."""
    default = project_path(OUT_DIR) / f"{checkpoint_name(checkpoint)}_{figure}.png"
    path = project_path(out) if out is not None else default
    if path.suffix.lower() not in FIGURE_SUFFIXES:
        raise ValueError(f"--out {path}: the figure's suffix must be one of {', '.join(FIGURE_SUFFIXES)}")
    record = path.with_suffix(".json")
    existing = [p for p in (path, record) if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists; pass --overwrite to replace it, or another --out")
    return path, record


def save_figure_file(fig: Figure, path: Path, dpi: int = 150) -> Path:
    """``fig`` written atomically in the format of ``path``'s suffix."""
    fmt = path.suffix.lstrip(".").lower().replace("jpg", "jpeg")
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight"))


def write_outputs(fig: Figure, out: Path, record: Path, fields: dict, what: str) -> Path:
    """The figure, its JSON record (``fields`` and the figure's path) beside it, and one line saying where."""
    save_figure_file(fig, out)
    write_json({**fields, "figure": repo_relative(out)}, record)
    print(f"{what} -> {out}, {record}")
    return out


def describe(model: MaskedAutoencoder) -> dict:
    """What the record says about the loaded model."""
    cfg = model.cfg
    return {"checkpoint": repo_relative(model.source), "format": model.source_format, "img_size": cfg.img_size,
            "patch_size": cfg.patch_size, "grid": cfg.grid, "embed_dim": cfg.embed_dim, "depth": cfg.depth,
            "num_heads": cfg.num_heads, "norm_pix_loss": cfg.norm_pix_loss, "has_decoder": model.has_decoder}


# -- Fig. 3: reconstructions ------------------------------------------------------------------------------

def checkpoint_reconstructions(model: MaskedAutoencoder, imgs: torch.Tensor, kinds: Sequence[str],
                               mask_ratio: float = 0.75, seed: int = 0, *, title: str | None = None
                               ) -> tuple[Figure, dict[str, dict[str, float]]]:
    """Fig. 3 of one model: the original, then per mask kind the visible patches and the reconstruction
    (visible patches pasted back; a norm-pix model's predictions de-normalized with each target patch's own
    mean and variance, as MAE displays them: ``models.mae.reconstruct``). Every kind draws its masks from a
    generator seeded with ``seed``. Returns the figure and, per kind, the masked-patch ``loss`` (the training
    objective) and ``pixel_mse`` (de-normalized reconstruction vs image, masked pixels)."""
    if not model.has_decoder:
        raise ValueError(f"{model.source} has no decoder (format {model.source_format!r}, encoder weights only): "
                         "it cannot reconstruct images; use a file with a decoder")
    same = {k: model for k in dict.fromkeys(kinds)}  # each row: this model under the row's mask kind
    rows = figures.reconstruction_rows(same, imgs, seed, mask_ratio)
    return figures.plot_image_rows(rows, title=title), figures.masked_patch_mse(same, imgs, seed, mask_ratio)


# -- Fig. 5: [CLS] attention ------------------------------------------------------------------------------

def checkpoint_attention(model: nn.Module, groups: dict[str, torch.Tensor], label: str, *, title: str | None = None
                         ) -> tuple[Figure, dict[str, list]]:
    """Fig. 5 of one encoder: every group's images (group name -> [B, 3, S, S]) with its last block's [CLS]
    attention (``attention.cls_attention``: mean over heads, a distribution over the patches). Returns the
    figure and the maps per group (lists [B][g][g], rounded to 6 digits)."""
    fig = attention.plot_group_attention({label: model}, groups, title=title)
    maps = {g: np.round(attention.batched_cls_attention(model, x).numpy(), 6).tolist() for g, x in groups.items()}
    return fig, maps


def pennfudan_pictures(samples: Sequence, img_size: int, n: int) -> torch.Tensor:
    """``n`` evenly spaced Penn-Fudan photos, resized whole to ``img_size`` (Fig. 5's third group)."""
    picks = np.linspace(0, len(samples) - 1, min(n, len(samples))).round().astype(int)
    return attention.resize_batch([samples[i].image for i in picks], None, img_size)[0]


# -- command lines ----------------------------------------------------------------------------------------

def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _ratio(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in the open interval (0, 1), got {value}")
    return value


def _parser(prog: str, description: str, n_images: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="file or folder load_pretrained reads: MAE, official "
                        "ColorMAE (mmpretrain), timm .pth/.safetensors, Hugging Face folder, our run / weights")
    parser.add_argument("--images", default=None, help="a folder of images (resized and centre-cropped to the "
                        "model's size); default: test crops of the bundled photographs")
    parser.add_argument("--n-images", type=_positive, default=n_images, help="images shown")
    parser.add_argument("--out", default=None, help=f"figure file (.png, .pdf, .jpg, .svg); the JSON record goes "
                        f"beside it; default {OUT_DIR}/<checkpoint>_<figure>.png")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing figure and record")
    parser.add_argument("--num-heads", type=_positive, default=None,
                        help="encoder heads where the file does not record them (default: width / 64)")
    return parser


def build_reconstruct_parser() -> argparse.ArgumentParser:
    parser = _parser("colormae reconstruct", "Fig. 3 of any checkpoint with a decoder: original, visible patches "
                     "and reconstruction rows, one pair per mask kind.", 8)
    parser.add_argument("--mask", nargs="+", choices=KINDS, default=["random", "green"], metavar="KIND",
                        help=f"mask kinds, one pair of rows each ({', '.join(KINDS)})")
    parser.add_argument("--mask-ratio", type=_ratio, default=0.75, help="fraction of patches masked")
    parser.add_argument("--seed", type=int, default=0, help="seed of the masks (the same for every kind)")
    parser.add_argument("--decoder-num-heads", type=_positive, default=None,
                        help="decoder heads where the file does not record them (default: width / 32)")
    parser.add_argument("--norm-pix-loss", action=argparse.BooleanOptionalAction, default=None,
                        help="override the file's reconstruction target (MAE *_full: on, *visualize*: off), "
                             "which decides the de-normalization")
    return parser


def build_attention_parser() -> argparse.ArgumentParser:
    parser = _parser("colormae attention", "Fig. 5 of any checkpoint: the last block's [CLS] attention (mean "
                     "over heads) on the images and on Penn-Fudan photos, and the fraction of it on the "
                     "pedestrians of Penn-Fudan's test split.", 4)
    parser.add_argument("--data-root", default=None,
                        help="Penn-Fudan folder (default ../shared/data/pennfudan); absent: the fraction is skipped")
    parser.add_argument("--n-pennfudan", type=_positive, default=50,
                        help="Penn-Fudan test images for the fraction (50: the whole test split)")
    return parser


def build_eigencam_parser() -> argparse.ArgumentParser:
    parser = _parser("colormae eigencam", "Fig. 6 of any fine-tuned classifier: EigenCAM of the last block "
                     "(our fine-tuning runs, MAE fine-tuned files, official ColorMAE head.fc, timm).", 8)
    parser.add_argument("--stand-in", action="store_true",
                        help="a file without a classifier head: EigenCAM of its encoder, labelled a stand-in")
    return parser


def _one_line_errors(prog: str, run, argv: Sequence[str] | None) -> None:
    """Run a command; returns nothing (a console script exits with the entry point's return value)."""
    try:
        run(argv)
    except USER_ERRORS as err:  # bad paths and files: one line, not a traceback
        raise SystemExit(f"{prog}: error: {err}") from None


def _reconstruct(argv: Sequence[str] | None) -> Path:
    args = build_reconstruct_parser().parse_args(argv)
    for kind in args.mask:  # bad kind / ratio pairs (grid: 0.75 only) before any loading
        make_masker(kind, 16, args.mask_ratio)
    out, record = output_paths(args.out, args.checkpoint, "reconstructions", args.overwrite)
    check_images(args.images)
    model = load_pretrained(args.checkpoint, num_heads=args.num_heads, decoder_num_heads=args.decoder_num_heads,
                            norm_pix_loss=args.norm_pix_loss, require_decoder=True)
    imgs, names, group = figure_images(args.images, model.cfg.img_size, args.n_images)
    target = "norm-pix target, de-normalized" if model.cfg.norm_pix_loss else "raw-pixel target"
    fig, mse = checkpoint_reconstructions(model, imgs, args.mask, args.mask_ratio, args.seed, title=(
        f"{checkpoint_name(args.checkpoint)} ({model.source_format}): {group}, {args.mask_ratio:.0%} masked "
        f"({target})"))
    return write_outputs(fig, out, record, {**describe(model), "images": names, "masks": args.mask,
                                            "mask_ratio": args.mask_ratio, "seed": args.seed,
                                            "masked_patch_mse": mse}, f"{model.source} ({model.source_format})")


def _attention(argv: Sequence[str] | None) -> Path:
    args = build_attention_parser().parse_args(argv)
    out, record = output_paths(args.out, args.checkpoint, "attention", args.overwrite)
    check_images(args.images)
    model = load_pretrained(args.checkpoint, num_heads=args.num_heads)
    size = model.cfg.img_size
    imgs, names, group = figure_images(args.images, size, args.n_images)
    penn, reason = attention.pennfudan_test_or_reason(args.data_root)
    groups = {group: imgs, **({"Penn-Fudan": pennfudan_pictures(penn, size, args.n_images)} if penn else {})}
    label = checkpoint_name(args.checkpoint)
    title = f"{label} ({model.source_format}): [CLS] attention, last block, mean over heads"
    fig, maps = checkpoint_attention(model, groups, label, title=title)
    if penn:
        foreground = attention.model_foreground_attention(model, penn[:args.n_pennfudan], size)
    else:
        log.warning("%s: the foreground fraction is skipped", reason)
        foreground = {"skipped": reason}
    return write_outputs(fig, out, record, {**describe(model), "images": names, "block": "last", "cls_attention": maps,
                                            "pennfudan_foreground_attention": foreground},
                         f"{model.source} ({model.source_format})")


def _eigencam(argv: Sequence[str] | None) -> Path:
    args = build_eigencam_parser().parse_args(argv)
    out, record = output_paths(args.out, args.checkpoint, "eigencam", args.overwrite)
    check_images(args.images)
    try:
        classifier, kind = cam.load_classifier(args.checkpoint, num_heads=args.num_heads), "fine-tuned classifier"
    except cam.NoClassifierHead:
        if not args.stand_in:
            raise
        classifier = cam.encoder_as_vit(load_pretrained(args.checkpoint, num_heads=args.num_heads))
        kind = "stand-in: pretrained encoder, not fine-tuned"
    imgs, names, group = figure_images(args.images, classifier.patch_embed.img_size[0], args.n_images)
    label = checkpoint_name(args.checkpoint)
    fig = cam.plot_classifier_cams({f"{label}\n({kind.split(':')[0]})": classifier}, imgs,
                                   title=f"EigenCAM, last block: {label} ({kind}), {group}")
    return write_outputs(fig, out, record, {"checkpoint": repo_relative(project_path(args.checkpoint)),
                                            "classifier": kind, "num_classes": classifier.num_classes,
                                            "global_pool": classifier.global_pool,
                                            "img_size": classifier.patch_embed.img_size[0], "images": names},
                         f"{args.checkpoint} ({kind})")


def reconstruct_main(argv: Sequence[str] | None = None) -> None:
    _one_line_errors("colormae reconstruct", _reconstruct, argv)


def attention_main(argv: Sequence[str] | None = None) -> None:
    _one_line_errors("colormae attention", _attention, argv)


def eigencam_main(argv: Sequence[str] | None = None) -> None:
    _one_line_errors("colormae eigencam", _eigencam, argv)
