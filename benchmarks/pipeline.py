"""Input pipeline: end-to-end pretraining rate vs the model-only step rate (issue #10).

One process, interleaved rounds (model-only, per-file, in-memory, model-only, ...), median per path,
so machine drift hits every path alike. Each timed segment runs ``--warmup`` untimed steps first:
the per-file DataLoader worker fills its prefetch queue while the other paths run, and those ready
batches must not count. A step is what pretraining does: green mask + bf16 forward + backward + AdamW.

* model-only: one resident batch, no input pipeline.
* per-file: ``DataLoader(SeededSamples(build_dataset(..., pretrain_transform)))`` with
  ``GlobalBatchSampler``, ``--num-workers`` (default 1) workers, as ``colormae.engines.pretrain`` runs it.
* in-memory: ``inmemory.decode_to_memory`` (cached) + ``BatchedLoader`` + ``TrainAugment``.

Threads: ``torch.set_num_threads`` = the cores this process may use (``--threads`` overrides). The
model should have every core; DataLoader workers run with one thread each and compete with it, which
is the cost being measured. Run with ``OMP_WAIT_POLICY=PASSIVE`` on a shared machine (docs/design.md).

    python benchmarks/pipeline.py                          # CIFAR-10, mae_vit_mini_patch4_32, CPU, < 3 min
    python benchmarks/pipeline.py --amp none               # fp32: CPUs without native bf16 (AVX2 only)
    python benchmarks/pipeline.py --presets mae_vit_mini_patch4_32,mae_vit_tiny_patch4_32
    python benchmarks/pipeline.py --device cuda --gpu-decode   # JPEG folder: every JPEG path, no model

``--gpu-decode`` times the JPEG paths alone (one epoch each, twice, interleaved): the bytes read by the
workers (the floor every path shares), bytes + ``decode_jpeg`` on the device (decode alone), the
``gpu-decode`` pipeline (decode + TrainAugment), PIL in workers (``files``) and, where NVIDIA DALI is
installed, the ``dali`` pipeline (``--device cpu``: DALI's CPU backend).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timm.optim import create_optimizer_v2
from torchvision.io import ImageReadMode, decode_jpeg

from colormae import make_masker
from colormae.data import dali
from colormae.data import memory as inmemory
from colormae.data.datasets import build_dataset, default_data_root, pretrain_transform
from colormae.data.samplers import GlobalBatchSampler, SeededSamples
from colormae.models.backbone import encoder_width_tokens
from colormae.models.mae import mae_model
from colormae.runtime import DistInfo, autocast, cpu_has_native_bf16, resolve_amp

ROOT = Path(__file__).resolve().parents[1]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forever(loader, sampler):
    """Batches across epochs (the sampler is re-seeded per epoch, as the engine does)."""
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        for batch in loader:
            yield batch[0] if isinstance(batch, (list, tuple)) else batch
        epoch += 1


def bench_preset(preset: str, args, device: torch.device) -> None:
    torch.manual_seed(0)
    model = mae_model(preset).to(device)
    opt = create_optimizer_v2(model, opt="adamw", lr=1e-4, weight_decay=0.05, betas=(0.9, 0.95))
    size, B = model.cfg.img_size, args.batch
    masker = make_masker("green", model.cfg.grid, 0.75)
    gen = torch.Generator().manual_seed(0)
    amp = resolve_amp(args.amp, device, encoder_width_tokens(model, masker.n_keep))  # "auto": by model size

    def step(imgs: torch.Tensor) -> None:
        mask, ids_keep, ids_restore = masker(B, generator=gen)
        with autocast(amp, device):
            loss, _, _ = model(imgs, (mask.to(device), ids_keep.to(device), ids_restore.to(device)))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    files_ds = build_dataset("cifar10", args.data_root, "train", pretrain_transform(size), labeled=False)
    files_sampler = GlobalBatchSampler(len(files_ds), B, DistInfo(), seed=0)
    files_loader = torch.utils.data.DataLoader(SeededSamples(files_ds), batch_sampler=files_sampler,
                                               num_workers=args.num_workers, persistent_workers=args.num_workers > 0)
    t = time.perf_counter()
    mem = inmemory.decode_to_memory("cifar10", args.data_root, "train", cache_dir=args.cache_dir)
    print(f"decoded CIFAR-10 train in memory: {tuple(mem.images.shape)} in {time.perf_counter() - t:.1f} s "
          f"(cached after the first run)")
    mem_sampler = GlobalBatchSampler(len(mem), B, DistInfo(), seed=0)
    aug = inmemory.TrainAugment(size)
    mem_loader = inmemory.BatchedLoader(mem, mem_sampler, aug, device)

    resident = next(iter(mem_loader))[0]
    sources = {"model-only": iter(lambda: resident, None), "per-file": forever(files_loader, files_sampler),
               "in-memory": forever(mem_loader, mem_sampler)}
    times: dict[str, list[float]] = {k: [] for k in sources}
    for name, src in sources.items():  # warm-up: allocator, kernels, worker start
        for _ in range(2):
            step(next(src).to(device))
    print(f"timing up to {args.rounds} rounds x {len(sources)} paths x ({args.warmup} untimed + {args.steps} timed) "
          f"steps, within --budget-s {args.budget_s:.0f}", flush=True)
    start, rounds = time.perf_counter(), 0
    for _ in range(args.rounds):
        elapsed = time.perf_counter() - start
        if rounds and elapsed * (rounds + 1) / rounds > args.budget_s:  # the next round would not fit
            break
        rounds += 1
        for name, src in sources.items():
            for _ in range(args.warmup):
                step(next(src).to(device))
            sync(device)
            t = time.perf_counter()
            for _ in range(args.steps):
                step(next(src).to(device, non_blocking=True))
            sync(device)
            times[name].append((time.perf_counter() - t) / args.steps)
            if args.verbose:
                print(f"  {name:<12}{B / times[name][-1]:8.1f} img/s", flush=True)

    # the in-memory path's own cost, alone: gather + augmentation of one batch
    idx = list(range(B))
    seeds = list(range(B))
    t = time.perf_counter()
    for _ in range(10):
        aug(mem.images[idx].to(device), seeds)
    sync(device)
    aug_ms = (time.perf_counter() - t) / 10 * 1e3

    base = B / statistics.median(times["model-only"])
    print("\nmeasures: pretraining steps per second (green mask + forward + backward + AdamW) fed by each input "
          "path; model-only = one resident batch (no input pipeline); 'vs model-only' = what the pipeline costs")
    print(f"\n{preset}  (CIFAR-10 train, batch {B}, amp {amp}, green masks, AdamW, {device}, "
          f"{torch.get_num_threads()} threads, per-file workers {args.num_workers}, "
          f"{rounds} rounds x {args.steps} steps)")
    print(f"{'path':<12}{'img/s':>10}{'min':>9}{'max':>9}{'vs model-only':>16}")
    for name, ts in times.items():
        rates = [B / x for x in ts]
        print(f"{name:<12}{statistics.median(rates):10.1f}{min(rates):9.1f}{max(rates):9.1f}"
              f"{statistics.median(rates) / base:16.3f}")
    print(f"in-memory augmentation alone: {aug_ms:.1f} ms per batch of {B} ({B / aug_ms * 1e3:.0f} img/s)")


# ------------------------------------------------------------------------------ gpu decode
def synthetic_jpeg_folder(root: Path, n: int, seed: int = 0) -> Path:
    """``root/train/<class>/*.jpg``: ImageNet-like sizes and smooth content, made once."""
    done = root / f".complete-{n}"
    if done.exists():
        return root
    rng = np.random.default_rng(seed)
    for k in range(n):
        w, h = int(rng.integers(320, 640)), int(rng.integers(240, 480))
        low = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        arr = (np.asarray(low, dtype=np.int16) + rng.integers(-20, 21, (h, w, 3))).clip(0, 255).astype(np.uint8)
        folder = root / "train" / f"class{k % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(folder / f"{k:05d}.jpg", quality=90)
    done.touch()
    return root


def bench_gpu_decode(args, device: torch.device) -> None:
    root = synthetic_jpeg_folder(ROOT / "results" / "scratch" / "gpu_decode_jpegs", args.jpeg_images)
    size, B, workers = 224, args.gpu_batch, args.num_workers
    ds_files = build_dataset("imagefolder", root, "train", pretrain_transform(size), labeled=False)
    ds_bytes = build_dataset("imagefolder", root, "train", None)
    sampler = GlobalBatchSampler(len(ds_files), B, DistInfo(), seed=0)
    cpu_loader = torch.utils.data.DataLoader(SeededSamples(ds_files), batch_sampler=sampler, num_workers=workers,
                                             pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    augment = inmemory.TrainAugment(size)
    bytes_loader = torch.utils.data.DataLoader(inmemory.JpegBytes(ds_bytes), batch_sampler=sampler, num_workers=workers,
                                               collate_fn=inmemory._collate_bytes, persistent_workers=workers > 0)
    paths = {"bytes-only": bytes_loader,
             "decode-only": lambda: ((decode_jpeg(d, mode=ImageReadMode.RGB, device=device), y)
                                     for d, y, _ in bytes_loader),
             "cpu-workers": cpu_loader,
             "gpu-decode": inmemory.GpuDecodeLoader(ds_bytes, sampler, augment, device, num_workers=workers)}
    if dali.dali_available():
        paths["dali"] = dali.DaliLoader(ds_bytes, sampler, augment, device, num_workers=workers,
                                        num_threads=args.dali_threads)
    print(f"synthetic JPEG folder {root}: {len(ds_files)} images ~320-640 px; batch {B}, {workers} workers, {device}"
          + ("" if "dali" in paths else '; dali: not installed (pip install "colormae[dali]"), not timed'))
    print("measures: the input pipeline alone, one epoch per pass, no model: read + JPEG decode + MAE's "
          "RandomResizedCrop(0.2-1, bicubic) + flip + normalize, on the device; bytes-only = what the workers "
          "read (every path's floor); decode-only = bytes + decode_jpeg on the device, no augmentation; "
          "cpu-workers = PIL in DataLoader workers (files); gpu-decode = bytes from workers, decode_jpeg + "
          "TrainAugment on the device; dali = bytes and seeded boxes from workers, DALI decode + crop + resize")
    results: dict[str, list[float]] = {}
    for _ in range(2):
        for name, loader in paths.items():
            n = 0
            sync(device)
            t = time.perf_counter()
            for batch in (loader() if callable(loader) else loader):  # one epoch
                x = batch[0] if isinstance(batch, (list, tuple)) else batch
                n += len(x)
            sync(device)
            results.setdefault(name, []).append(n / (time.perf_counter() - t))
            print(f"  {name:<12}{results[name][-1]:10.1f} img/s", flush=True)
    best = {k: max(v) for k, v in results.items()}
    print("pipeline summary (best of 2, img/s): " + ", ".join(f"{k} {v:.0f}" for k, v in best.items())
          + f"; gpu-decode / cpu-workers {best['gpu-decode'] / best['cpu-workers']:.2f}"
          + (f"; dali / cpu-workers {best['dali'] / best['cpu-workers']:.2f}" if "dali" in best else ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--presets", default="mae_vit_mini_patch4_32", help="comma-separated CPU presets")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--amp", choices=("auto", "bf16", "none"), default="auto",
                   help="auto: colormae.runtime.resolve_amp (bf16 on CUDA; on a CPU by model size), per preset")
    p.add_argument("--rounds", type=int, default=5, help="at most; fewer when --budget-s would be exceeded")
    p.add_argument("--budget-s", type=float, default=150.0, help="time budget for the timed rounds (>= 1 round)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per segment")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before each segment")
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default 1; 8 for --gpu-decode)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the usable cores)")
    p.add_argument("--data-root", default=None, help="folder with CIFAR-10 (default: data.default_data_root()/cifar10)")
    p.add_argument("--cache-dir", default=None,
                   help="decoded-image cache (default: $COLORMAE_CACHE or ~/.cache/colormae)")
    p.add_argument("--verbose", action="store_true", help="print every timed segment")
    p.add_argument("--gpu-decode", action="store_true", help="compare CPU-worker vs GPU JPEG decoding instead")
    p.add_argument("--gpu-batch", type=int, default=256)
    p.add_argument("--jpeg-images", type=int, default=4096)
    p.add_argument("--dali-threads", type=int, default=4, help="--gpu-decode: DALI's CPU threads")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"pipeline benchmark skipped: --device {args.device} but CUDA is not available")
        return
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    if device.type == "cpu" and args.amp == "bf16" and not cpu_has_native_bf16():
        # measured on an AVX2-only EPYC: the mini preset's step ran at ~25 img/s in bf16, ~250 in fp32
        print("note: this CPU has no native bf16; autocast emulates it (~10x slower steps), which hides the "
              "input pipeline: compare with --amp auto (fp32 here)")
    if args.gpu_decode:
        args.num_workers = 8 if args.num_workers is None else args.num_workers
        bench_gpu_decode(args, device)
        return
    args.num_workers = 1 if args.num_workers is None else args.num_workers
    cifar = Path(args.data_root) if args.data_root else default_data_root() / "cifar10"
    if not any((cifar / f).exists() for f in ("train.tar", "train", "cifar-10-batches-py")):
        print(f"pipeline benchmark skipped: CIFAR-10 not found at {cifar}")
        return
    args.data_root = cifar
    for preset in args.presets.split(","):
        bench_preset(preset.strip(), args, device)


if __name__ == "__main__":
    sys.exit(main())
