"""UperNet training steps (the paper's ADE20K recipe) on one device: images/s and peak memory.

A ViT-B/16 encoder (untrained MAE init; the weights do not change the cost) in the model of
``colormae.engines.segment`` (features of blocks [3, 5, 7, 11], Feature2Pyramid neck, UperNet 768 channels +
auxiliary FCN 256), synthetic 512 x 512 crops with 150-class labels, AdamW with layer decay 0.65
from timm's factory, bf16 autocast, drop path 0.1. Each batch size is timed after warm-up steps;
one that does not fit is reported as OOM and the next still runs. Then one sliding-window
inference (crop 512, stride 341) of a 512 x 683 image, ADE20K's typical test size.

    python benchmarks/gpu_segment.py                                  # CUDA: ViT-B, 512 px, batches 2 and 16
    python benchmarks/gpu_segment.py --device cpu --preset mae_vit_micro_patch4_32 --crop 64 \\
        --head-channels 16 --batches 2 --steps 2 --amp none           # seconds, a smoke run
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from step_sweep import add_common_args, check_args, sweep

from colormae.engines.segment import AUX_WEIGHT, BETAS, SegmentConfig, build_model, create_optimizer_v2, transfer_for
from colormae.models.mae import untrained_encoder
from colormae.models.upernet import IGNORE_INDEX, predict_slide
from colormae.runtime import autocast


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_model(args, device: torch.device):
    cfg = SegmentConfig(encoder="-", crop_size=args.crop, keep_grid=False, head_channels=args.head_channels)
    torch.manual_seed(0)
    return build_model(transfer_for(untrained_encoder(args.preset, 0), cfg), 150, cfg).to(device), cfg


def bench(args, batch: int, device: torch.device) -> dict:
    model, cfg = make_model(args, device)
    model.train()
    opt = create_optimizer_v2(model, opt="adamw", lr=1e-4, weight_decay=0.05, layer_decay=0.65, betas=BETAS)
    gen = torch.Generator().manual_seed(0)
    imgs = torch.randn(batch, 3, args.crop, args.crop, generator=gen).to(device)
    labels = torch.randint(0, 150, (batch, args.crop, args.crop), generator=gen).to(device)
    labels[:, :, : args.crop // 8] = IGNORE_INDEX
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(args.warmup + args.steps):
        sync(device)
        t = time.perf_counter()
        with autocast(args.amp, device):
            out, aux = model(imgs)
            loss = (F.cross_entropy(out.float(), labels, ignore_index=IGNORE_INDEX)
                    + AUX_WEIGHT * F.cross_entropy(aux.float(), labels, ignore_index=IGNORE_INDEX))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    step = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return {"batch": batch, "step_s": step, "img_per_s": batch / step, "peak_gib": peak / 2 ** 30,
            "loss": loss.item(), "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


@torch.no_grad()
def bench_slide(args, device: torch.device) -> float:
    model, _ = make_model(args, device)
    model.eval()
    h, w = args.crop, args.crop * 4 // 3  # 512 x 683: an ADE20K image with its short side at 512
    img = torch.randn(1, 3, h, w, device=device)
    for i in range(2):  # the first call warms up
        sync(device)
        t = time.perf_counter()
        with autocast(args.amp, device):
            predict_slide(model, img, args.crop, args.crop * 2 // 3)
        sync(device)
    return time.perf_counter() - t


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, batches="2,16")
    p.add_argument("--crop", type=int, default=512)
    p.add_argument("--head-channels", type=int, default=None, help="UperNet width (default: the encoder's, 768)")
    return check_args(p, p.parse_args(argv))


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"UperNet, {args.preset}, {args.crop} px crops, amp {args.amp}, on {name}")
    rows = sweep(bench, args, device)
    slide = bench_slide(args, device)
    best = max(rows, key=lambda r: r["img_per_s"])
    print(f"sliding-window inference of a {args.crop}x{args.crop * 4 // 3} image: {slide:.3f} s "
          f"(2000 ADE20K validation images: {2000 * slide / 60:.1f} min)")
    print(f"segmentation summary: {best['img_per_s']:.1f} img/s at batch {best['batch']} "
          f"(peak {best['peak_gib']:.1f} GiB); the paper's 160k iterations x 16 images = "
          f"{160_000 * 16 / best['img_per_s'] / 3600:.0f} device-hours at this rate")
    return rows


if __name__ == "__main__":
    main()
