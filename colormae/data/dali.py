"""``--pipeline dali``: JPEG folders decoded, cropped and resized by NVIDIA DALI (the optional extra
``pip install "colormae[dali]"``), with this project's seeded augmentation.

Every pipeline draws a sample's crop box and flip from the sample's own seed (``TrainAugment.params``):
runs are deterministic, N DDP ranks equal one process and a mid-epoch resume is exact, with no
pipeline state saved. DALI's ``random_resized_crop`` draws from a per-operator RNG instead, so here the
boxes are drawn as everywhere else, in DataLoader workers from each JPEG header's size, and fed in;
DALI does only the work: ``decoders.image_slice`` decodes the box ("mixed": nvJPEG on the GPU; "cpu":
libjpeg-turbo), ``resize`` to S x S (cubic, antialiased), ``crop_mirror_normalize`` (the flip, ImageNet
mean / std, CHW float). Boxes and flips equal those of ``files`` / ``gpu-decode`` by construction; pixels
differ by the decoders' and resamplers' rounding (tests/test_dali.py, on the CPU backend).
"""
from __future__ import annotations

import io
import logging
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset

from .memory import JpegBytes, TrainAugment

try:  # the optional extra: everything else in colormae runs without it
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import feed_ndarray
except ImportError:
    fn = pipeline_def = types = feed_ndarray = None

log = logging.getLogger(__name__)

INPUTS = ("jpegs", "anchor", "shape", "flip")


def dali_available() -> bool:
    return fn is not None


def require_dali() -> None:
    if fn is None:
        raise ImportError("pipeline='dali' needs NVIDIA DALI: pip install \"colormae[dali]\" (nvidia-dali-cuda120); "
                          "allowed pipelines without it: auto, memory, files, gpu-decode")


class JpegBoxes(Dataset):
    """``JpegBytes`` plus each sample's box: ``(index, seed)`` -> (bytes, target, anchor (left, top),
    shape (w, h), flip), the box drawn by ``augment.params`` from the size in the JPEG header (PIL
    reads only the header; orientation tags are ignored, as PIL's decode in ``files`` ignores them)."""

    def __init__(self, dataset: Dataset, augment: TrainAugment):
        self.raw, self.augment = JpegBytes(dataset), augment

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, item):
        data, target, seed = self.raw[item]
        if seed is None:
            raise ValueError("the dali pipeline draws each box from its sample's seed: use a batch sampler "
                             "yielding (index, seed) pairs, e.g. runtime.GlobalBatchSampler")
        width, height = Image.open(io.BytesIO(data.numpy().tobytes())).size
        top, left, h, w, flip = self.augment.params(height, width, int(seed))
        return data.numpy(), target, np.array([left, top], np.int32), np.array([w, h], np.int32), np.int32(flip)


def _collate_boxes(batch):
    data, targets, anchors, shapes, flips = zip(*batch)
    return list(data), torch.tensor(targets, dtype=torch.int64), list(anchors), list(shapes), list(flips)


def build_pipeline(batch_size: int, size: int, device_id: int | None, num_threads: int = 4):
    """The DALI graph: fed JPEG bytes and boxes -> float [B, 3, size, size], ImageNet-normalized.
    ``device_id`` None: the CPU backend (tests, machines without a GPU); else decode on that GPU."""
    require_dali()

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, exec_async=False,
                  exec_pipelined=False, prefetch_queue_depth=1)
    def graph():
        jpegs, anchor, shape, flip = (fn.external_source(name=n, dtype=t) for n, t in
                                      zip(INPUTS, (types.UINT8, types.INT32, types.INT32, types.INT32)))
        images = fn.decoders.image_slice(jpegs, anchor, shape, device="cpu" if device_id is None else "mixed",
                                         output_type=types.RGB, axis_names="WH", normalized_anchor=False,
                                         normalized_shape=False, adjust_orientation=False)
        images = fn.resize(images, resize_x=size, resize_y=size, interp_type=types.INTERP_CUBIC, antialias=True,
                           dtype=types.FLOAT)
        return fn.crop_mirror_normalize(images, mirror=flip, dtype=types.FLOAT, output_layout="CHW",
                                        mean=[255 * m for m in IMAGENET_DEFAULT_MEAN],
                                        std=[255 * s for s in IMAGENET_DEFAULT_STD])

    pipe = graph()
    pipe.build()
    return pipe


class DaliLoader:
    """Like ``GpuDecodeLoader``: ``num_workers`` processes read bytes and draw boxes, DALI decodes and
    augments the batch on ``device`` (CUDA, or the CPU backend); yields (images float [B, 3, S, S],
    labels) on ``device``. ``augment``: the ``TrainAugment`` whose boxes, scale and ratio are used."""

    def __init__(self, dataset: Dataset, batch_sampler, augment: TrainAugment, device: torch.device | str,
                 num_workers: int = 4, num_threads: int = 4):
        require_dali()
        if not isinstance(augment, TrainAugment):
            raise ValueError(f"pipeline='dali' runs MAE's pretraining augmentation only, not {type(augment).__name__}")
        self.device, self.size = torch.device(device), augment.size
        self.loader = torch.utils.data.DataLoader(JpegBoxes(dataset, augment), batch_sampler=batch_sampler,
                                                  num_workers=num_workers, collate_fn=_collate_boxes,
                                                  persistent_workers=num_workers > 0)
        device_id = (self.device.index or 0) if self.device.type == "cuda" else None
        # one rank's batch of a GlobalBatchSampler: DALI's maximum batch size
        per_rank = batch_sampler.global_batch // batch_sampler.info.world_size
        self.pipe = build_pipeline(per_rank, self.size, device_id, num_threads)
        where = "on CPU" if device_id is None else f"on cuda:{device_id} (nvJPEG)"
        log.info("dali pipeline: batches of %d at %d px, decoded %s, %d DALI threads, %d workers", per_rank,
                 self.size, where, num_threads, num_workers)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for data, labels, anchors, shapes, flips in self.loader:
            for name, value in zip(INPUTS, (data, anchors, shapes, flips)):
                self.pipe.feed_input(name, value)
            (out,) = self.pipe.run()
            yield self._to_torch(out), labels.to(self.device, non_blocking=True)

    def _to_torch(self, out) -> torch.Tensor:
        if self.device.type != "cuda":
            return torch.from_numpy(out.as_array())
        images = torch.empty(len(out), 3, self.size, self.size, device=self.device)
        feed_ndarray(out.as_tensor(), images, cuda_stream=torch.cuda.current_stream(self.device))
        return images
