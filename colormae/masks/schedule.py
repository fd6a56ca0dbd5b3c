"""Mask specifications on the command line: kind schedules (``green,blue@200``), filter parameters
(``sigma1=0.5,sigma2=1.0``) and the green band's centre frequency."""
from __future__ import annotations

import math

from .maskers import KINDS, Masker


def parse_mask_schedule(spec: str) -> list[tuple[int, str]]:
    """"green" -> [(0, "green")]; "green,blue@200" -> [(0, "green"), (200, "blue")]."""
    schedule = []
    for i, part in enumerate(s.strip() for s in spec.split(",")):
        kind, _, start = part.partition("@")
        if kind not in KINDS:
            raise ValueError(f"mask={spec!r}: kind {kind!r} is not supported; allowed values: {', '.join(KINDS)}")
        try:
            start_epoch = int(start) if start else 0
        except ValueError:
            raise ValueError(f"mask={spec!r}: {start!r} after '@' is not an epoch number; a schedule looks like "
                             "'green,blue@200'") from None
        if (i == 0) != (start_epoch == 0) or (schedule and start_epoch <= schedule[-1][0]):
            raise ValueError(f"mask={spec!r}: the first kind starts at epoch 0 and later ones at increasing epochs, "
                             "e.g. 'green,blue@200'")
        schedule.append((start_epoch, kind))
    return schedule


def masker_for_epoch(maskers: list[tuple[int, Masker]], epoch: int) -> Masker:
    return [m for start, m in maskers if start <= epoch][-1]


def parse_mask_params(spec: str) -> dict[str, float]:
    """"sigma1=0.5,sigma2=1.0" -> {"sigma1": 0.5, "sigma2": 1.0}; "" -> {}."""
    params = {}
    for part in filter(None, (s.strip() for s in spec.split(","))):
        name, eq, value = part.partition("=")
        try:
            params[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"mask_params={spec!r}: {part!r} is not name=number; "
                             "e.g. 'sigma1=0.5,sigma2=1.0'") from None
        if not eq:
            raise ValueError(f"mask_params={spec!r}: {part!r} is not name=number; e.g. 'sigma1=0.5,sigma2=1.0'")
    return params


def band_centre(sigma1: float, sigma2: float) -> float:
    """Peak frequency (cycles/patch) of the green transfer function G(sigma1) - G(sigma2)."""
    return math.sqrt(math.log(sigma2 ** 2 / sigma1 ** 2) / (2 * math.pi ** 2 * (sigma2 ** 2 - sigma1 ** 2)))
