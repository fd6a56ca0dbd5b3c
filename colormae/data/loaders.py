"""The training loader of every engine: one seeded sampler, four pipelines."""
from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist

from ..runtime import DistInfo
from . import datasets as data_lib
from .dali import DaliLoader
from .memory import BatchedLoader, GpuDecodeLoader, choose_pipeline, decode_to_memory
from .samplers import GlobalBatchSampler, SeededSamples


def train_loader(cfg, info: DistInfo, device: torch.device, batch_size: int, *, img_size: int, labeled: bool,
                 files_transform: Callable, batch_augment: Callable | None = None, length: int | None = None) -> tuple:
    """(sampler, loader, data, pipeline) for training on ``cfg.dataset``'s train split.

    The sampler is a seeded global-batch order that N processes share and that resumes mid-epoch
    (``sampler.set_epoch(epoch, start_batch)``); it yields (index, seed) pairs, and every pipeline
    draws a sample's augmentation from its seed alone:
    * "memory": decoded once into a uint8 tensor (cached), ``batch_augment`` on the device;
    * "files": PIL decode + ``files_transform`` in DataLoader workers;
    * "gpu-decode": JPEG bytes from workers, decoded and ``batch_augment``-ed on the device;
    * "dali": JPEG bytes and ``batch_augment``'s seeded boxes from workers, decoded, cropped and resized
      by NVIDIA DALI on the device (``colormae.data.dali``; pretraining only).
    ``batch_augment=None`` means the augmentation exists per file only (RandAugment): "auto" then
    takes "files" and an explicit "memory" is an error.
    """
    pipeline = choose_pipeline(cfg.dataset, cfg.pipeline, root=cfg.data_root)
    if pipeline != "files" and batch_augment is None:
        if cfg.pipeline != "auto":
            raise ValueError(f"pipeline={cfg.pipeline!r}: this protocol's augmentation runs per image only "
                             "(RandAugment, random erasing); use --pipeline files (or auto)")
        pipeline = "files"
    if pipeline == "memory":
        if info.world_size > 1 and not info.is_main:
            dist.barrier()  # rank 0 decodes and caches first, the others then read the cache
        data = decode_to_memory(cfg.dataset, cfg.data_root, "train", img_size=img_size, length=length,
                                skip_corrupt=cfg.skip_corrupt, max_corrupt_fraction=cfg.max_corrupt_fraction)
        if info.world_size > 1 and info.is_main:
            dist.barrier()
        sampler = GlobalBatchSampler(len(data), batch_size * info.world_size, info, cfg.seed)
        return sampler, BatchedLoader(data, sampler, batch_augment, device), data, pipeline
    data = data_lib.build_dataset(cfg.dataset, cfg.data_root, "train", files_transform if pipeline == "files" else None,
                                  labeled=labeled, skip_corrupt=cfg.skip_corrupt, length=length, img_size=img_size,
                                  max_corrupt_fraction=cfg.max_corrupt_fraction)
    sampler = GlobalBatchSampler(len(data), batch_size * info.world_size, info, cfg.seed)
    if pipeline == "gpu-decode":
        return sampler, GpuDecodeLoader(data, sampler, batch_augment, device, cfg.num_workers), data, pipeline
    if pipeline == "dali":
        return sampler, DaliLoader(data, sampler, batch_augment, device, cfg.num_workers), data, pipeline
    loader = torch.utils.data.DataLoader(SeededSamples(data), batch_sampler=sampler, num_workers=cfg.num_workers,
                                         pin_memory=device.type == "cuda")
    return sampler, loader, data, pipeline
