"""Loading what runs produced: a pretraining run's MAE or encoder, compact release weights, grid models."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from ..files import load_checkpoint, project_path, repo_relative
from ..models.mae import MaskedAutoencoder, export_encoder
from .compact import compact_target, find_compact
from .pretrained import COMPACT_FORMAT, HF_WEIGHTS, PretrainedFileError, load_pretrained
from .rundir import ENCODER, LAST, RunDir

log = logging.getLogger(__name__)


def load_mae(path: str | os.PathLike):
    """A pretrained MAE from a run directory (its checkpoint-last.pth) or a checkpoint file, in eval mode."""
    path = project_path(path)
    if path.is_dir() and not any((path / n).is_file() for n in HF_WEIGHTS):  # a run directory
        path = path / LAST
    return load_pretrained(path, require_decoder=True)  # one loader for every format


def _is_export(obj) -> bool:
    return isinstance(obj, dict) and all(k in obj for k in ("state_dict", "timm_name", "timm_kwargs"))


def load_encoder(path: str | os.PathLike, *, allow_unfinished: bool = False) -> dict:
    """The export dict of an encoder (see ``model.export_encoder``) from any of:

    * a pretraining run directory: its ``encoder.pth`` (written when the run finished); an
      unfinished run's ``checkpoint-last.pth`` only with ``allow_unfinished=True``,
    * an ``encoder.pth`` export,
    * a pretraining checkpoint (``checkpoint-*.pth``): the MAE is rebuilt and exported,
    * a compact fp16 MAE (``weights.save_compact``, committed for the grid's seed-0 runs): exported in fp32,
    * any other file or folder ``load_pretrained`` reads (MAE, official ColorMAE, timm, Hugging Face).
    """
    path = project_path(path)
    if path.suffix == ".safetensors" or (path.is_dir() and any((path / n).is_file() for n in HF_WEIGHTS)):
        return export_encoder(load_pretrained(path))
    if path.is_dir():
        if (path / ENCODER).is_file():
            path = path / ENCODER
        elif (path / LAST).is_file():
            summary = RunDir(path).read_summary() or {}
            if not allow_unfinished:
                raise ValueError(
                    f"run {path} has no {ENCODER}: it is unfinished ({summary.get('epochs_done', '?')} of "
                    f"{summary.get('config', {}).get('epochs', '?')} epochs). Finish it with --resume auto, or "
                    f"pass its checkpoint explicitly ({path / LAST}) to evaluate it as it is.")
            log.warning("%s is unfinished: evaluating its %s", path, LAST)
            path = path / LAST
        else:
            raise FileNotFoundError(f"no encoder in run directory {path}: neither {ENCODER} nor {LAST}")
    if not path.is_file():
        raise FileNotFoundError(f"encoder not found: {path}")
    obj = load_checkpoint(path, required=())  # ValueError on corrupt / non-dict files
    if _is_export(obj):
        return obj
    try:
        return export_encoder(load_pretrained(obj))
    except PretrainedFileError as e:
        raise ValueError(f"{path} is neither an encoder export (keys state_dict, timm_name, timm_kwargs) nor a "
                         f"pretraining checkpoint (keys model, mae_config) nor another format load_pretrained "
                         f"reads; it has keys {sorted(map(str, obj))[:10]} ({e})") from e


FORMAT = COMPACT_FORMAT


CLASSIFIER_FORMAT = "colormae-compact-classifier-v1"


# A fine-tuning run's classifier in fp16, inside the run directory and committed (Fig. 6 regenerates
# from a fresh clone); cam.load_classifier reads it where checkpoint-last.pth is absent.
CLASSIFIER = "classifier-fp16.pth"


def load_compact(path: str | os.PathLike) -> MaskedAutoencoder:
    """The fp32 MAE (eval mode) of a file written by ``save_compact``."""
    obj = load_checkpoint(project_path(path), required=("format", "model", "mae_config"))
    if obj["format"] != FORMAT:
        raise ValueError(f"{path}: format {obj['format']!r}, expected {FORMAT!r}")
    model = load_pretrained(obj)  # fp16 tensors -> the fp32 model
    model.source = str(path)
    return model


def compact_path(grid_dir: str | os.PathLike, mask: str, seed: int = 0) -> Path:
    """The compact weights of (``mask``, ``seed``) in a grid: the file there is, else where one goes."""
    return find_compact(grid_dir, mask, seed) or compact_target(grid_dir, mask, seed)


def grid_model(grid_dir: str | os.PathLike, mask: str, seed: int = 0) -> tuple[MaskedAutoencoder, str]:
    """The pretrained MAE of ``mask`` in a grid, and where it was read from.

    The compact file of that mask and seed (``colormae.run.compact``: the committed seed-0 files are
    what a fresh clone has), else the run directory ``<grid_dir>/runs/<mask>_seed<seed>`` when its
    checkpoint is present.
    """
    compact = find_compact(grid_dir, mask, seed)
    if compact is not None:
        return load_compact(compact), repo_relative(compact)
    run = project_path(grid_dir) / "runs" / f"{mask}_seed{seed}"
    if (run / LAST).is_file():
        return load_mae(run), repo_relative(run)
    raise FileNotFoundError(f"no model for mask={mask!r} seed={seed}: neither "
                            f"{repo_relative(compact_target(grid_dir, mask, seed))} nor {repo_relative(run / LAST)}; "
                            f"run the grid (colormae experiments cifar10-grid16) or "
                            f"colormae weights {repo_relative(project_path(grid_dir))} --seed {seed}")
