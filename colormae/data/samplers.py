"""Seeded global-batch sampling that N processes share and that resumes mid-epoch."""
from __future__ import annotations

import random

import numpy as np
import torch

from ..runtime import DistInfo, sample_seed


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Yields this rank's share of each *global* batch as (index, augmentation seed) pairs.

    The global order is a seeded permutation per epoch and rank r takes the r-th contiguous slice
    of every global batch, so N processes see exactly the samples (and augmentations) that one
    process sees with the same global batch. ``start_batch`` skips batches already trained on
    (exact mid-epoch resume).
    """

    def __init__(self, length: int, global_batch: int, info: DistInfo, seed: int):
        if length < global_batch:
            raise ValueError(f"the dataset has {length} samples, fewer than one global batch ({global_batch})")
        self.length, self.global_batch, self.info, self.seed = length, global_batch, info, seed
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.length // self.global_batch - self.start_batch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 9973 + self.epoch)
        order = torch.randperm(self.length, generator=g).tolist()
        local = self.global_batch // self.info.world_size
        for b in range(self.start_batch, self.length // self.global_batch):
            start = b * self.global_batch + self.info.rank * local
            yield [(order[p], sample_seed(self.seed, self.epoch, p)) for p in range(start, start + local)]


class SeededSamples(torch.utils.data.Dataset):
    """Applies each sample's seed before loading it, so augmentation ignores workers and resumes.

    torch, python and numpy are all seeded: torchvision draws with torch, timm's RandAugment picks
    its operations with numpy and python's ``random``."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        return self.dataset[index]
