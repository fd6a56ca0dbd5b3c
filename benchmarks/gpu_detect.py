"""ViTDet Mask R-CNN training steps (the paper's detection recipe) on one device: images/s and peak memory.

A ViT-B/16 encoder (untrained MAE init; the weights do not change the cost) in the detector of
``colormae.engines.detect`` at 1024 px, LSJ-sized synthetic batches (``img_size`` squares, a few boxes and
masks per image), AdamW with ViTDet's parameter groups, bf16 autocast. Each batch size is timed
after warm-up steps; a batch that does not fit is reported as OOM and the next one still runs.

    python benchmarks/gpu_detect.py                                   # CUDA: ViT-B, 1024 px, batches 2 and 8
    python benchmarks/gpu_detect.py --device cpu --preset mae_vit_micro_patch4_32 --img-size 64 \\
        --patch-size 8 --fpn-channels 16 --roi-batch 16 --batches 2 --steps 2 --amp none   # seconds, a smoke run
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from step_sweep import add_common_args, check_args, sweep

from colormae.engines.detect import DetectConfig, build_model, param_groups
from colormae.models.mae import untrained_encoder
from colormae.runtime import autocast


def synthetic_batch(batch: int, size: int, device: torch.device, gen: torch.Generator, objects: int = 7):
    """Random images, each with ``objects`` boxes (COCO has ~7 per image) and box-filling masks."""
    images, targets = [], []
    for _ in range(batch):
        xy = torch.rand(objects, 2, generator=gen) * size * 0.7
        wh = (0.05 + torch.rand(objects, 2, generator=gen) * 0.25) * size
        boxes = torch.cat([xy, (xy + wh).clamp(max=size)], 1)
        masks = torch.zeros(objects, size, size, dtype=torch.uint8)
        for m, (x1, y1, x2, y2) in zip(masks, boxes.long().tolist()):
            m[y1:y2, x1:x2] = 1
        images.append(torch.rand(3, size, size, generator=gen).to(device))
        targets.append({"boxes": boxes.to(device), "labels": torch.randint(1, 81, (objects,), generator=gen).to(device),
                        "masks": masks.to(device)})
    return images, targets


def bench(args, batch: int, device: torch.device) -> dict:
    cfg = DetectConfig(encoder="-", img_size=args.img_size, patch_size=args.patch_size, amp=args.amp,
                       fpn_channels=args.fpn_channels, roi_batch=args.roi_batch)
    torch.manual_seed(0)
    model = build_model(untrained_encoder(args.preset, 0), 80, cfg).to(device).train()
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay, cfg.layer_decay), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    images, targets = synthetic_batch(batch, args.img_size, device, gen)
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        with autocast(args.amp, device):
            loss = sum(model(images, targets).values())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    step = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return {"batch": batch, "step_s": step, "img_per_s": batch / step, "peak_gib": peak / 2 ** 30,
            "loss": loss.item(), "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, batches="2,8")
    p.add_argument("--img-size", type=int, default=1024)
    p.add_argument("--patch-size", type=int, default=None, help="default: the encoder's")
    p.add_argument("--fpn-channels", type=int, default=256, help="pyramid and head width (ViTDet: 256)")
    p.add_argument("--roi-batch", type=int, default=512, help="sampled proposals per image (ViTDet: 512)")
    return check_args(p, p.parse_args(argv))


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"ViTDet Mask R-CNN, {args.preset}, {args.img_size} px, amp {args.amp}, on {name}")
    rows = sweep(bench, args, device)
    best = max(rows, key=lambda r: r["img_per_s"])
    print(f"detection summary: {best['img_per_s']:.1f} img/s at batch {best['batch']} "
          f"(peak {best['peak_gib']:.1f} GiB); 100 COCO epochs (118k images) = "
          f"{100 * 118_287 / best['img_per_s'] / 3600:.0f} device-hours at this rate")
    return rows


if __name__ == "__main__":
    main()
