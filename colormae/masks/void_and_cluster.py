"""Void-and-cluster blue noise (Ulichney 1993), the alternative blue generator the paper discusses.

Produces a dither array: every cell of an S x S torus gets a distinct rank; thresholding the ranks
at any level gives an evenly spread point set with no clumps and no big voids. Slow (O(S^4) / S^2
vectorized steps), so it is meant for noise banks, not for per-step generation.
"""
from __future__ import annotations

import numpy as np
import torch

from .noise import gaussian_transfer


def _energy_kernel(size: int, sigma: float) -> np.ndarray:
    """Periodic Gaussian centred at (0, 0): the "density" a single point adds to every cell."""
    transfer = gaussian_transfer(size, size, sigma, dtype=torch.float64)
    return torch.fft.irfft2(transfer, s=(size, size)).numpy()


def void_and_cluster(size: int, *, sigma: float = 1.5, initial_density: float = 0.1,
                     seed: int = 0) -> np.ndarray:
    """Ranked blue-noise array of shape (size, size) with values in [0, 1) (rank / size^2)."""
    if size < 4:
        raise ValueError(f"size={size} must be >= 4")
    if not 0 < initial_density < 0.5:
        raise ValueError(f"initial_density={initial_density} must be in (0, 0.5)")
    rng = np.random.default_rng(seed)
    kernel = _energy_kernel(size, sigma)
    n = size * size

    def energy_of(points: np.ndarray) -> np.ndarray:
        return np.real(np.fft.ifft2(np.fft.fft2(points) * np.fft.fft2(kernel)))

    def add(e: np.ndarray, idx: int, sign: float) -> None:
        y, x = divmod(idx, size)
        e += sign * np.roll(kernel, (y, x), axis=(0, 1))

    # Initial binary pattern, then swap tightest cluster -> largest void until stable.
    ones = max(1, int(initial_density * n))
    proto = np.zeros(n, dtype=bool)
    proto[rng.choice(n, ones, replace=False)] = True
    e = energy_of(proto.reshape(size, size).astype(float))
    for _ in range(4 * n):
        flat = e.ravel()
        cluster = np.flatnonzero(proto)[np.argmax(flat[proto])]
        proto[cluster] = False
        add(e, cluster, -1.0)
        void = np.flatnonzero(~proto)[np.argmin(flat[~proto])]
        if void == cluster:
            proto[cluster] = True
            add(e, cluster, 1.0)
            break
        proto[void] = True
        add(e, void, 1.0)

    ranks = np.zeros(n, dtype=np.int64)
    # Phase 1: remove points from the prototype, tightest cluster first (ranks ones-1 .. 0).
    points = proto.copy()
    e1 = e.copy()
    for r in range(ones - 1, -1, -1):
        flat = e1.ravel()
        cluster = np.flatnonzero(points)[np.argmax(flat[points])]
        points[cluster] = False
        add(e1, cluster, -1.0)
        ranks[cluster] = r
    # Phases 2-3: fill the largest void until every cell has a rank. Ulichney switches to the
    # complement's clusters after half; with a symmetric Gaussian energy, filling voids of the
    # minority phase is the same ordering, so one loop serves both.
    points = proto.copy()
    for r in range(ones, n):
        flat = e.ravel()
        void = np.flatnonzero(~points)[np.argmin(flat[~points])]
        points[void] = True
        add(e, void, 1.0)
        ranks[void] = r
    return (ranks.reshape(size, size) / n).astype(np.float32)
