"""Noise banks: N precomputed S x S color-noise patterns (what the reference code downloads; we make them).

A bank is kept on the training device and every sample crops its own grid x grid window from it
(see ``colormae.masks.maskers``). Banks are saved as .npz with their metadata, so a run can record
exactly which patterns produced its masks. The official ColorMAE banks (``green_noise_data_3072.npz``:
one unnamed array [N, H, W], highest values kept, windows cropped without wrapping) load too.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..files import atomic_write, project_path, repo_relative
from .noise import COLORS, color_noise, color_params
from .void_and_cluster import void_and_cluster

BANK_FORMAT_VERSION = 1
BLUE_METHODS = ("filter", "void_and_cluster")


@dataclass
class NoiseBank:
    patterns: torch.Tensor  # [N, S, S] float32, standardized per pattern
    color: str
    params: dict = field(default_factory=dict)
    seed: int = 0
    version: int = BANK_FORMAT_VERSION
    periodic: bool = True  # windows wrap around (ours); official ColorMAE banks are cropped inside
    file: str | None = None  # where a loaded bank came from (recorded in run summaries)

    @property
    def size(self) -> int:
        """The side a window may have at most (square banks: the pattern side)."""
        return int(min(self.patterns.shape[-2:]))

    def to(self, device) -> "NoiseBank":
        return NoiseBank(self.patterns.to(device), self.color, dict(self.params), self.seed, self.version,
                         self.periodic, self.file)


def make_noise_bank(color: str, num_patterns: int = 256, size: int = 64, *, seed: int = 0,
                    method: str = "filter", **params) -> NoiseBank:
    """``num_patterns`` periodic ``size`` x ``size`` patterns of ``color`` noise, reproducible from ``seed``.

    ``method="void_and_cluster"`` (blue only) ranks points with Ulichney's algorithm instead of
    filtering; it is much slower and gives a standardized rank array.
    """
    if color not in COLORS:
        raise ValueError(f"color={color!r} is not supported; allowed values: {', '.join(COLORS)}")
    if method not in BLUE_METHODS:
        raise ValueError(f"method={method!r}; allowed values: {', '.join(BLUE_METHODS)}")
    if num_patterns < 1 or size < 2:
        raise ValueError(f"num_patterns={num_patterns} must be >= 1 and size={size} >= 2")
    if method == "void_and_cluster":
        if color != "blue":
            raise ValueError(f"method='void_and_cluster' makes blue noise only, got color={color!r}")
        vac_sigma = params.pop("sigma", 1.5)
        if params:
            raise ValueError(f"unknown parameter(s) {sorted(params)} for void_and_cluster; allowed: ['sigma']")
        ranks = [void_and_cluster(size, sigma=vac_sigma, seed=seed + i)
                 for i in tqdm(range(num_patterns), desc="void-and-cluster", leave=False)]
        x = torch.from_numpy(np.stack(ranks))
        x = (x - x.mean(dim=(-2, -1), keepdim=True)) / x.std(dim=(-2, -1), keepdim=True)
        return NoiseBank(x, color, {"method": method, "sigma": vac_sigma}, seed)
    full = color_params(color, **params)
    gen = torch.Generator().manual_seed(seed)
    patterns = color_noise(color, (num_patterns, size, size), generator=gen, **params)
    return NoiseBank(patterns, color, {"method": method, **full}, seed)


def save_noise_bank(bank: NoiseBank, path: str | os.PathLike) -> Path:
    """Write ``bank`` to ``path`` (.npz) atomically: a crash never leaves a half-written bank."""
    meta = {"color": bank.color, "params": bank.params, "seed": bank.seed, "version": bank.version}

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez(f, patterns=bank.patterns.cpu().numpy(), meta=np.array(json.dumps(meta)))
    return atomic_write(path, write)


def _color_in_name(path: Path) -> str | None:
    """The color an official bank's file name announces (``noise_colors/green/green_noise_data_3072.npz``)."""
    found = {c for c in COLORS if c in path.name.lower()}
    return found.pop() if len(found) == 1 else None


def load_noise_bank(path: str | os.PathLike, device=None, *, color: str | None = None) -> NoiseBank:
    """A bank from ``path`` (.npz): ours (arrays ``patterns`` and ``meta``) or an official ColorMAE bank (one
    array [N, H, W]; its color from the file name, else ``color``). Relative paths: from the repository root."""
    path = project_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"noise bank not found: {path}")
    try:
        data = np.load(path)
    except Exception as e:
        raise ValueError(f"{path} is not a readable .npz noise bank ({type(e).__name__}: {e})") from e
    with data:
        names = list(data.files)
        if "patterns" in names and "meta" in names:
            meta = json.loads(str(data["meta"]))
            patterns = torch.from_numpy(data["patterns"].astype(np.float32))
        elif len(names) == 1 and data[names[0]].ndim == 3:
            return _official_bank(path, data[names[0]], device, color)
        else:
            shapes = {n: tuple(data[n].shape) for n in names[:6]}
            raise ValueError(f"{path} is not a ColorMAE noise bank: neither ours (arrays 'patterns' and 'meta') "
                             f"nor an official one (one array [N, H, W]); it holds arrays {shapes}")
    if patterns.dim() != 3 or patterns.shape[1] != patterns.shape[2]:
        raise ValueError(f"{path}: patterns must be [N, S, S], got {tuple(patterns.shape)}")
    if meta.get("version", 0) > BANK_FORMAT_VERSION:
        raise ValueError(f"{path}: bank format version {meta['version']} is newer than {BANK_FORMAT_VERSION}")
    return NoiseBank(patterns.to(device) if device else patterns, meta["color"], meta["params"],
                     meta["seed"], meta["version"], file=repo_relative(path))


def _official_bank(path: Path, array: np.ndarray, device, color: str | None) -> NoiseBank:
    named = _color_in_name(path)
    if named and color and named != color:
        raise ValueError(f"{path}: the file name says {named!r} noise but color={color!r} was asked for")
    color = named or color
    if color not in COLORS:
        raise ValueError(f"{path}: an official ColorMAE bank whose color the file name does not say; pass "
                         f"color= (allowed values: {', '.join(COLORS)})")
    if not np.issubdtype(array.dtype, np.number) or min(array.shape) < 1:
        raise ValueError(f"{path}: the bank array must be numeric [N, H, W], got {array.dtype} {array.shape}")
    patterns = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return NoiseBank(patterns.to(device) if device else patterns, color, {"method": "official"}, 0,
                     BANK_FORMAT_VERSION, periodic=False, file=repo_relative(path))
