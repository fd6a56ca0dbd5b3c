"""EigenCAM of fine-tuned ViT classifiers (the paper's Fig. 6), through the ``grad-cam`` package.

EigenCAM (Muhammad & Yeasin 2020) projects a layer's activations on their first principal
component: class-agnostic, no gradients. For a ViT the layer is the last block's ``norm1`` (the
library's documented choice) and the tokens [B, 1 + g*g, D] are reshaped to a [B, D, g, g] map
with the library's own ``vit_reshape_transform`` (the [CLS] token dropped).

Classifiers come from our fine-tuning runs or from any fine-tuned file ``load_pretrained`` reads (MAE
fine-tuned ``fc_norm`` / ``head``, official ColorMAE / mmpretrain ``backbone.ln2`` / ``head.fc``, timm).
"""
from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn as nn

from ..files import load_checkpoint, project_path
from ..models.convert import canonical_state, canonical_to_timm
from ..models.mae import TIMM_BASE_NAME, MaskedAutoencoder, export_encoder, timm_kwargs, timm_vit_from_export
from ..run.artifacts import CLASSIFIER
from ..run.pretrained import HF_WEIGHTS, load_pretrained
from ..run.rundir import LAST
from .figures import to_display

log = logging.getLogger(__name__)


def classifier_file(run_dir: str | os.PathLike) -> Path | None:
    """A fine-tuning run's classifier: its checkpoint-last.pth, else its committed fp16 copy
    (``weights.save_compact_classifier``: what a fresh clone has); None when neither exists."""
    run_dir = project_path(run_dir)
    return next((p for p in (run_dir / LAST, run_dir / CLASSIFIER) if p.is_file()), None)


OUR_CLASSIFIER_KEYS = ("model", "timm_name", "timm_kwargs", "num_classes")  # colormae.engines.finetune's checkpoints


def _ours(path: Path) -> bool:
    """Whether ``path`` is one of our fine-tuning checkpoints (else another format ``load_pretrained`` reads)."""
    if path.suffix == ".safetensors" or not path.is_file():
        return False
    try:
        load_checkpoint(path, required=OUR_CLASSIFIER_KEYS)
    except ValueError:  # another layout (or unreadable: load_pretrained then names the problem)
        return False
    return True


class NoClassifierHead(ValueError):
    """A file without a classifier head, where EigenCAM wants a fine-tuned classifier."""


def classifier_from_mae(model: MaskedAutoencoder) -> nn.Module:
    """A stock timm ViT classifier (eval mode) of a loaded fine-tuned file: its encoder and ``model.classifier``
    (``head``, and ``fc_norm`` = timm's ``global_pool='avg'``, as MAE fine-tunes). A file without a head is an
    error."""
    head = model.classifier.get("head.weight")
    if head is None:
        raise NoClassifierHead(f"{model.source} (format {model.source_format!r}) has no classifier head (head.weight / "
                         "head.fc): EigenCAM (Fig. 6) is for fine-tuned classifiers; a pretrained encoder only "
                         "stands in for one (colormae eigencam --stand-in)")
    pool = "avg" if "fc_norm.weight" in model.classifier else "token"
    vit = timm.create_model(TIMM_BASE_NAME, pretrained=False, num_classes=head.shape[0], global_pool=pool,
                            **timm_kwargs(model.cfg))
    vit.load_state_dict(canonical_to_timm(canonical_state(model), model.classifier))
    return vit.eval()


def load_classifier(path: str | os.PathLike, *, num_heads: int | None = None) -> nn.Module:
    """The timm ViT classifier (eval mode, fp32, on the CPU) of a fine-tuning run (``colormae.engines.finetune``,
    protocol ``finetune``: its run directory, see ``classifier_file``, or a checkpoint file), or of any fine-tuned
    file or folder ``load_pretrained`` reads (``classifier_from_mae``; ``num_heads`` where the file does not
    record them)."""
    path = project_path(path)
    if path.is_dir() and not any((path / n).is_file() for n in HF_WEIGHTS):
        path = classifier_file(path) or path  # no classifier there: load_pretrained says what the folder lacks
    if not _ours(path):
        return classifier_from_mae(load_pretrained(path, num_heads=num_heads))
    ckpt = load_checkpoint(path, required=OUR_CLASSIFIER_KEYS)
    recorded = ckpt["timm_kwargs"].get("num_heads")
    if num_heads is not None and num_heads != recorded:  # an ignored flag would be a silent wrong answer
        raise ValueError(f"num_heads={num_heads}: {path} records its heads ({recorded}); the override is for files "
                         "that do not record them")
    state = ckpt["model"]
    if "head.0.running_mean" in state:  # evaluate.LinearProbe: BatchNorm then Linear
        raise ValueError(f"{path} is a linear probe; EigenCAM needs a fine-tuned classifier (protocol 'finetune')")
    pool = "avg" if "fc_norm.weight" in state else "token"  # MAE fine-tuning pools patch tokens
    model = timm.create_model(ckpt["timm_name"], pretrained=False, num_classes=ckpt["num_classes"],
                              global_pool=pool, **ckpt["timm_kwargs"])
    model.load_state_dict(state)  # copies into the fp32 parameters: an fp16 file needs no cast
    return model.eval()


def vit_grid(model: nn.Module) -> int:
    """Side of the ViT's patch grid (timm's PatchEmbed)."""
    g = model.patch_embed.grid_size
    if g[0] != g[1]:
        raise ValueError(f"non-square patch grid {tuple(g)}")
    return int(g[0])


def eigencam(model: nn.Module, imgs: torch.Tensor, layer: nn.Module | None = None) -> np.ndarray:
    """EigenCAM maps [B, H, W] in [0, 1] (each map min-max scaled by the library) for ``imgs``.

    ``layer`` defaults to ``model.blocks[-1].norm1``; ``model`` is a timm ViT with one [CLS] token.
    """
    from pytorch_grad_cam import EigenCAM
    from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform

    if getattr(model, "num_prefix_tokens", 1) != 1:
        raise ValueError(f"model has {model.num_prefix_tokens} prefix tokens; the ViT reshape drops exactly one")
    g = vit_grid(model)
    layer = layer if layer is not None else model.blocks[-1].norm1
    with EigenCAM(model=model.eval(), target_layers=[layer],
                  reshape_transform=partial(vit_reshape_transform, height=g, width=g)) as cam:
        return cam(input_tensor=imgs, targets=None)


def plot_cams(imgs: torch.Tensor, cams: dict[str, np.ndarray], *, title: str | None = None, size: float = 1.3,
              alpha: float = 0.5):
    """The paper's Fig. 6 layout: a row of images, then one row per classifier (label -> [B, H, W]
    EigenCAM in [0, 1]) overlaid with the jet colormap (grad-cam's convention)."""
    from matplotlib.figure import Figure

    shown = to_display(imgs)
    n = len(shown)
    fig = Figure(figsize=(size * n + 1.2, size * (1 + len(cams)) + (0.4 if title else 0)))
    axes = np.atleast_2d(fig.subplots(1 + len(cams), n, squeeze=False))
    for r, (label, cam) in enumerate([("image", None), *cams.items()]):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(shown[c], interpolation="nearest")
            if cam is not None:
                ax.imshow(cam[c], cmap="jet", alpha=alpha, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def encoder_as_vit(mae: nn.Module) -> nn.Module:
    """A pretrained MAE's encoder as a stock timm ViT (random 1-class head: EigenCAM ignores it) —
    the stand-in when no fine-tuned classifier exists."""
    vit, _ = timm_vit_from_export(export_encoder(mae), num_classes=1, global_pool="token")
    return vit.eval()


def fig6_classifiers(models: dict[str, nn.Module], finetune_dirs: dict[str, str], sources: dict[str, str], *,
                     checkpoints: dict[str, str] | None = None) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """Fig. 6's classifiers by row label: per mask of ``models`` (mask -> pretrained MAE) its
    fine-tuning run in ``finetune_dirs`` when that holds a classifier, else the pretrained encoder as
    a stand-in (with a warning). A mask of ``checkpoints`` (label -> file, ``figures.checkpoint_map``)
    uses its own file instead: the file's classifier when it is a fine-tuned one, else the stand-in
    (``finetune_dirs`` are the grid's, not the file's). Also returns, per mask, where each came from
    (``sources``: the MAEs' own)."""
    classifiers, used = {}, {}
    for m, mae in models.items():
        if m in (checkpoints or {}) and "head.weight" in getattr(mae, "classifier", {}):
            classifiers[f"{m}\n(fine-tuned)"], used[m] = classifier_from_mae(mae), str(checkpoints[m])
            continue
        run = project_path(finetune_dirs[m]) if finetune_dirs.get(m) and m not in (checkpoints or {}) else None
        if run is not None and classifier_file(run) is not None:
            classifiers[f"{m}\n(fine-tuned)"], used[m] = load_classifier(run), str(finetune_dirs[m])
        else:
            log.warning("%s: %s; using the pretrained encoder as a stand-in", m,
                        f"{checkpoints[m]} has no classifier head" if m in (checkpoints or {})
                        else f"no fine-tuned run at {finetune_dirs.get(m)}")
            classifiers[f"{m}\n(stand-in: not\nfine-tuned)"] = encoder_as_vit(mae)
            used[m] = f"stand-in: pretrained encoder {sources[m]}"
    return classifiers, used


def plot_classifier_cams(classifiers: dict[str, nn.Module], imgs: torch.Tensor, *, title: str | None = None):
    """Fig. 6: ``eigencam`` of each classifier (row label -> timm ViT) on ``imgs``, via ``plot_cams``."""
    return plot_cams(imgs, {label: eigencam(model, imgs) for label, model in classifiers.items()}, title=title)
