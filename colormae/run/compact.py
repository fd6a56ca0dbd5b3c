"""Names of a grid's compact release weights: one file per (mask, seed).

    <grid>/weights/<mask>.pth            seed 0 (the committed files; fine-tuning configs name them),
                                         read only when the file's own record says seed 0
    <grid>/weights/<mask>_seed<N>.pth    seed N >= 1 (also read for seed 0, should one exist)

A file is never given a model of another mask or seed than its name and its record say
(``check_target``), so an export of seed 1 cannot replace the committed seed-0 weights.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from ..files import load_checkpoint, project_path, repo_relative

log = logging.getLogger(__name__)
_SEEDED = re.compile(r"^(?P<mask>.+)_seed(?P<seed>\d+)\.pth$")


def seeded_file(grid_dir: str | os.PathLike, mask: str, seed: int) -> Path:
    return project_path(grid_dir) / "weights" / f"{mask}_seed{seed}.pth"


def legacy_file(grid_dir: str | os.PathLike, mask: str) -> Path:
    return project_path(grid_dir) / "weights" / f"{mask}.pth"


def recorded(path: Path) -> tuple[str | None, int | None]:
    """(mask, seed) a compact file records; (None, None) when it records none or cannot be read."""
    try:
        obj = load_checkpoint(path, required=())
    except (FileNotFoundError, ValueError):
        return None, None
    return obj.get("mask"), obj.get("seed")


def find_compact(grid_dir: str | os.PathLike, mask: str, seed: int) -> Path | None:
    """The compact file of (``mask``, ``seed``) in a grid, or None: for seed 0 ``<mask>.pth`` when
    its record says seed 0 (one that records another seed is ignored, with a warning), else
    ``<mask>_seed<seed>.pth``."""
    if seed == 0:
        old = legacy_file(grid_dir, mask)
        if old.is_file():
            rec_mask, rec_seed = recorded(old)
            if rec_seed == 0 and rec_mask in (None, mask):
                return old
            log.warning("%s records mask=%r seed=%r, not %r seed 0: not used as the seed-0 weights",
                        repo_relative(old), rec_mask, rec_seed, mask)
    new = seeded_file(grid_dir, mask, seed)
    return new if new.is_file() else None


def compact_target(grid_dir: str | os.PathLike, mask: str, seed: int) -> Path:
    """Where an export of (``mask``, ``seed``) goes: ``<mask>.pth`` for seed 0 (``check_target``
    refuses it if it records another seed), ``<mask>_seed<seed>.pth`` for the others."""
    return legacy_file(grid_dir, mask) if seed == 0 else seeded_file(grid_dir, mask, seed)


def check_target(path: str | os.PathLike, mask: str | None, seed: int | None) -> None:
    """ValueError when ``path`` would get a model of another (mask, seed) than its name says
    (``<m>_seed<n>.pth``; the legacy ``<m>.pth`` means seed 0) or than the record already in it says."""
    path = Path(path)
    m = _SEEDED.match(path.name)
    named = (m["mask"], int(m["seed"])) if m else (path.stem, 0) if path.parent.name == "weights" else (None, None)
    on_disk = recorded(path) if path.is_file() else (None, None)
    for what, (n_mask, n_seed) in (("its name", named), ("the record in it", on_disk)):
        if (n_seed is not None and seed is not None and n_seed != seed) or (
                n_mask is not None and mask is not None and n_mask != mask):
            raise ValueError(f"refusing to write mask={mask!r} seed={seed} into {repo_relative(path)}: {what} says "
                             f"mask={n_mask!r} seed={n_seed}. Seed N goes to <mask>_seed<N>.pth "
                             "(colormae weights GRID --seed N does so)")
