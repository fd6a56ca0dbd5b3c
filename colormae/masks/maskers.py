"""Every data-independent patch mask behind one interface (random, block, grid and the colors).

A masker turns a batch size into ``(mask, ids_keep, ids_restore)`` with MAE's conventions:
``mask`` [B, L] float, 1 = masked; ``ids_keep`` [B, n_keep] the visible patches; ``ids_restore``
[B, L] such that ``gather(cat(visible, mask_tokens), ids_restore)`` puts tokens back in place.
Every kind scores the L patches and keeps the ``n_keep = int(L * (1 - mask_ratio))`` highest
scores, so every sample has exactly n_keep visible patches.

Randomness is drawn with ``generator`` on its own device (CPU by default) and the result moved to
``device``: a CPU generator with a given seed gives bit-identical masks on CPU and CUDA.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch

from ..files import project_path
from .bank import NoiseBank, load_noise_bank, make_noise_bank
from .noise import COLORS, aperiodic_color_noise, aperiodic_margin, color_params

KINDS = ("random", "block", "grid") + COLORS
SOURCES = ("online", "bank")


def masks_from_scores(scores: torch.Tensor, n_keep: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the ``n_keep`` highest-scoring patches per row; MAE's (mask, ids_keep, ids_restore)."""
    ids_shuffle = torch.argsort(scores, dim=1, descending=True, stable=True)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :n_keep]
    mask = torch.ones_like(scores, dtype=torch.float32)
    mask[:, :n_keep] = 0
    return torch.gather(mask, 1, ids_restore), ids_keep, ids_restore


def _draw_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


# BEiT's block-wise masking draws up to this many candidate rectangles per block
BLOCK_ATTEMPTS = 10
# rounds (one block per sample each) between checks whether every sample is done: on CUDA a check
# is a host sync, and the rounds after a sample is done leave it unchanged
BLOCK_ROUNDS_PER_CHECK = 4


def block_masks(batch: int, grid: int, num_masked: int, min_patches: int, min_aspect: float = 0.3,
                generator: torch.Generator | None = None, attempts: int = BLOCK_ATTEMPTS) -> torch.Tensor:
    """BEiT's block-wise masking [B, grid, grid] (True = masked) for a whole batch at once, on the
    generator's device.

    Per sample, as BEiT: rectangles are added one at a time; each block takes the first of
    ``attempts`` candidates (area uniform in [min_patches, budget], or the budget when smaller;
    log-uniform aspect in [min_aspect, 1 / min_aspect]; sides 0 < h, w < grid; a uniform position)
    that masks at least one new patch without overshooting the budget; the sample stops when none
    does or the budget is spent. BEiT may stop short; the caller fills the remainder at random, so
    the count is exact. All samples draw their round together (a batch per tensor op, no python loop
    over samples); a sample that is done draws but changes nothing."""
    draw = _draw_device(generator)
    mask = torch.zeros(batch, grid, grid, device=draw)  # 1.0 = masked
    count = torch.zeros(batch, device=draw)
    active = torch.ones(batch, dtype=torch.bool, device=draw)
    lo, hi = math.log(min_aspect), math.log(1 / min_aspect)
    ar = torch.arange(grid, device=draw, dtype=torch.float32)
    per_check = 1 if draw.type == "cpu" else BLOCK_ROUNDS_PER_CHECK  # a check costs nothing on the CPU
    while True:
        for _ in range(per_check):
            budget = (num_masked - count)[:, None]  # [B, 1]
            u_area, u_aspect, u_top, u_left = torch.rand(4, batch, attempts, generator=generator, device=draw)
            area = torch.where(budget > min_patches, min_patches + u_area * (budget - min_patches), budget)
            aspect = torch.exp(lo + (hi - lo) * u_aspect)
            h, w = torch.round(torch.sqrt(area * aspect)), torch.round(torch.sqrt(area / aspect))
            fits = (h > 0) & (h < grid) & (w > 0) & (w < grid)
            # a uniform integer in [0, grid - side]
            top = torch.minimum(torch.floor(u_top * (grid - h + 1)), grid - h)
            left = torch.minimum(torch.floor(u_left * (grid - w + 1)), grid - w)
            # each candidate's rows and columns as 0/1 vectors: the masked patches inside it are
            # rows^T mask cols (exact small integers in float32)
            row_in = ((ar >= top[..., None]) & (ar < (top + h)[..., None])).float()  # [B, attempts, grid]
            col_in = ((ar >= left[..., None]) & (ar < (left + w)[..., None])).float()
            new = h * w - (torch.bmm(row_in, mask) * col_in).sum(-1)
            ok = fits & (new > 0) & (new <= budget) & active[:, None]
            accepted = ok.any(1)
            first = ok.float().argmax(1, keepdim=True)  # the first candidate that is accepted
            rows = row_in.gather(1, first[..., None].expand(-1, -1, grid))  # [B, 1, grid]
            cols = col_in.gather(1, first[..., None].expand(-1, -1, grid))
            taken = accepted.float()
            mask = torch.maximum(mask, rows.transpose(1, 2) * cols * taken[:, None, None])
            count = count + new.gather(1, first)[:, 0] * taken
            active = active & accepted & (count < num_masked)
        if not bool(active.any()):
            return mask.bool()


@dataclass
class Masker:
    """Callable mask generator; build it with :func:`make_masker`."""
    kind: str
    grid: int
    mask_ratio: float
    source: str = "online"
    params: dict = field(default_factory=dict)
    bank: NoiseBank | None = None

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @property
    def n_keep(self) -> int:
        return int(self.num_patches * (1 - self.mask_ratio))

    @property
    def canvas(self) -> int | None:
        """Side of the periodic noise canvas an online color mask is cropped from (grid + margin)."""
        if self.kind not in COLORS or self.source != "online":
            return None
        p = {k: v for k, v in self.params.items() if k != "distribution"}
        return self.grid + aperiodic_margin(self.kind, **p)

    def describe(self) -> dict:
        """JSON-able description for run summaries."""
        d = {"kind": self.kind, "grid": self.grid, "mask_ratio": self.mask_ratio, "source": self.source,
             "n_keep": self.n_keep, "params": self.params}
        if self.canvas is not None:
            d["canvas"] = self.canvas
        if self.bank is not None:
            d["bank"] = {"num_patterns": int(self.bank.patterns.shape[0]), "size": self.bank.size,
                         "seed": self.bank.seed, "params": self.bank.params}
            if self.bank.file is not None:
                d["bank"]["file"] = self.bank.file
        return d

    def scores(self, batch_size: int, *, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """Per-patch keep scores [B, L] (higher = visible) on ``device``."""
        b, g, L = batch_size, self.grid, self.num_patches
        draw = _draw_device(generator)
        if self.kind == "random":
            # Negated MAE noise: descending order of -noise is MAE's ascending order of noise, so the
            # same generator state gives exactly MAE's random_masking.
            s = -torch.rand(b, L, generator=generator, device=draw)
        elif self.kind == "grid":
            phase = torch.randint(0, 2, (b, 2), generator=generator, device=draw)
            yy = torch.arange(g, device=draw)
            on = (((yy[None, :, None] % 2) == phase[:, 0, None, None])
                  & ((yy[None, None, :] % 2) == phase[:, 1, None, None]))
            s = on.flatten(1).float() + 0.5 * torch.rand(b, L, generator=generator, device=draw)
        elif self.kind == "block":
            masked = block_masks(b, g, L - self.n_keep, self.params["min_block_patches"], self.params["min_aspect"],
                                 generator)
            s = (~masked).flatten(1).float()
            s = s + 0.5 * torch.rand(b, L, generator=generator, device=draw)  # random fill if BEiT fell short
        elif self.source == "online":
            # A window of a bigger periodic canvas (see ``canvas``), so the mask does not wrap around.
            s = aperiodic_color_noise(self.kind, (b, g, g), generator=generator, device=device,
                                      **self.params).flatten(1)
        else:
            s = self._bank_windows(b, generator, device).flatten(1)
        return s.to(device) if device is not None else s

    def _bank_windows(self, b: int, generator, device) -> torch.Tensor:
        """One random pattern, torus offset and h/v flip per sample, cropped on the bank's device."""
        patterns = self.bank.patterns
        if device is not None and patterns.device != torch.device(device):
            self.bank = self.bank.to(device)  # keep it resident: moved once, not every step
            patterns = self.bank.patterns
        n, size = patterns.shape[0], patterns.shape[-1]
        draw = _draw_device(generator)
        idx = torch.randint(0, n, (b,), generator=generator, device=draw)
        if self.bank.periodic:  # a torus offset: every window lies inside the periodic pattern
            offset = torch.randint(0, size, (b, 2), generator=generator, device=draw)
        else:  # official banks are not periodic: crop inside, as torchvision's RandomCrop does
            h, w = patterns.shape[-2:]
            offset = torch.stack([torch.randint(0, h - self.grid + 1, (b,), generator=generator, device=draw),
                                  torch.randint(0, w - self.grid + 1, (b,), generator=generator, device=draw)], 1)
        flip = torch.randint(0, 2, (b, 2), generator=generator, device=draw).bool()
        ar = torch.arange(self.grid, device=draw)
        rows = torch.where(flip[:, :1], ar.flip(0), ar) + offset[:, :1]
        cols = torch.where(flip[:, 1:], ar.flip(0), ar) + offset[:, 1:]
        dev = patterns.device
        rows, cols = rows % patterns.shape[-2], cols % patterns.shape[-1]  # no-op for non-periodic crops
        idx, rows, cols = idx.to(dev), rows.to(dev), cols.to(dev)
        return patterns[idx[:, None, None], rows[:, :, None], cols[:, None, :]]

    def __call__(self, batch_size: int, *, generator: torch.Generator | None = None,
                 device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return masks_from_scores(self.scores(batch_size, generator=generator, device=device), self.n_keep)


def make_masker(kind: str, grid: int, mask_ratio: float = 0.75, *, source: str = "online",
                bank: NoiseBank | str | os.PathLike | None = None, bank_patterns: int = 256,
                bank_size: int = 64, bank_seed: int = 0, device=None, **params) -> Masker:
    """Build a masker for ``kind`` on a ``grid`` x ``grid`` patch grid.

    kind: random (MAE), block (BEiT), grid (keep one of every 2x2; ratio 0.75 only) or a color
    (white, red, blue, green, purple: keep the highest values of a color-noise window).
    Color kinds take ``source="online"`` (filter fresh white noise every call on a canvas larger
    than the grid and crop a grid x grid window, so masks do not wrap around: no memory, unlimited
    diversity, the statistics of bank windows) or ``source="bank"`` (the paper's way: crop windows from a
    precomputed bank; pass ``bank`` as a NoiseBank or .npz path, or let one be generated from
    ``bank_patterns`` x ``bank_size``^2 and ``bank_seed``). ``params`` are the color's sigma
    parameters (see ``colormae.masks.noise.DEFAULT_PARAMS``), or ``min_block_patches`` / ``min_aspect``
    for block.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not supported; allowed values: {', '.join(KINDS)}")
    if not isinstance(grid, int) or grid < 2:
        raise ValueError(f"grid={grid!r} must be an integer >= 2")
    if not 0 < mask_ratio < 1:
        raise ValueError(f"mask_ratio={mask_ratio} must be in the open interval (0, 1)")
    if int(grid * grid * (1 - mask_ratio)) < 1:
        raise ValueError(f"mask_ratio={mask_ratio} leaves no visible patch on a {grid}x{grid} grid; "
                         f"use mask_ratio <= {1 - 1 / grid ** 2:.4f}")
    if source not in SOURCES:
        raise ValueError(f"source={source!r}; allowed values: {', '.join(SOURCES)}")
    if source == "bank" and kind not in COLORS:
        raise ValueError(f"source='bank' applies to the color kinds ({', '.join(COLORS)}), not kind={kind!r}")
    if kind == "grid" and abs(mask_ratio - 0.75) > 1e-9:
        raise ValueError(f"kind='grid' keeps one patch of every 2x2 and needs mask_ratio=0.75, got {mask_ratio}")

    if kind in ("random", "grid"):
        if params:
            raise ValueError(f"kind={kind!r} takes no parameters, got {sorted(params)}")
        return Masker(kind, grid, mask_ratio, source)
    if kind == "block":
        allowed = {"min_block_patches", "min_aspect"}
        if set(params) - allowed:
            raise ValueError(f"unknown parameter(s) {sorted(set(params) - allowed)} for kind='block'; "
                             f"allowed: {sorted(allowed)}")
        # BEiT uses 16 patches minimum on 14x14 (= L / 12); scale that to other grids.
        p = {"min_block_patches": max(1, grid * grid // 12), "min_aspect": 0.3, **params}
        return Masker(kind, grid, mask_ratio, source, p)

    if source == "online":
        return Masker(kind, grid, mask_ratio, source, color_params(kind, **params))
    if bank is not None and params:
        raise ValueError(f"pass either bank= or noise parameters {sorted(params)}, not both: "
                         "a saved bank already fixes its parameters")
    if bank is None:
        bank = make_noise_bank(kind, bank_patterns, bank_size, seed=bank_seed, **params)
    elif not isinstance(bank, NoiseBank):
        bank = load_noise_bank(bank, color=kind)  # ours or an official ColorMAE .npz
    if bank.color != kind:
        raise ValueError(f"bank holds {bank.color!r} noise but kind={kind!r}")
    if bank.size < grid:
        raise ValueError(f"bank patterns are {bank.size}x{bank.size}, smaller than grid={grid}; "
                         f"use bank_size >= {grid}")
    if device is not None:
        bank = bank.to(device)
    return Masker(kind, grid, mask_ratio, source, dict(bank.params), bank)


def masker_from_description(description: dict, *, device=None) -> Masker:
    """The masker a run recorded with :meth:`Masker.describe` (a pretraining summary's ``masks``):
    kind, grid, ratio, source and filter parameters; a bank is regenerated from its recorded size,
    pattern count, seed and parameters. ``masker_from_description(m.describe())`` draws the same
    masks as ``m`` from the same generator."""
    d = description
    kind, params = d["kind"], dict(d.get("params") or {})
    if d.get("source") == "bank":
        b = d["bank"]
        # a bank read from a file: read it again (ours, when the file is gone, is regenerated from its seed)
        if b.get("file") and (project_path(b["file"]).is_file() or b.get("params", {}).get("method") == "official"):
            return make_masker(kind, d["grid"], d["mask_ratio"], source="bank", bank=b["file"], device=device)
        return make_masker(kind, d["grid"], d["mask_ratio"], source="bank", bank_patterns=b["num_patterns"],
                           bank_size=b["size"], bank_seed=b["seed"], device=device, **b.get("params", params))
    return make_masker(kind, d["grid"], d["mask_ratio"], source=d.get("source", "online"), device=device, **params)


def vitmae_noise(mask) -> torch.Tensor:
    """The ``noise`` [B, L] for Hugging Face ``ViTMAEForPreTraining(pixel_values, noise=...)`` that makes it keep
    exactly our visible patches, in our order.

    ``mask``: a masker's ``(mask, ids_keep, ids_restore)`` or a binary [B, L] mask (1 = masked). HF sorts the
    noise ascending and keeps the lowest ``int(L * (1 - config.mask_ratio))``: the noise is each patch's rank in
    our keep order (``ids_restore / L``), so HF's ids_keep and ids_restore equal ours. The model's
    ``config.mask_ratio`` must keep as many patches as the mask does (checked by HF's shapes, not here).
    """
    if torch.is_tensor(mask):
        if mask.dim() != 2:
            raise ValueError(f"mask must be [B, L] (1 = masked), got shape {tuple(mask.shape)}")
        counts = (mask == 0).sum(1)
        if not (counts == counts[0]).all():
            raise ValueError(f"every sample must keep the same number of patches, got {counts.tolist()}")
        _, _, ids_restore = masks_from_scores(1.0 - mask.float(), int(counts[0]))
    else:
        _, _, ids_restore = mask
    return ids_restore.float() / ids_restore.shape[1]
