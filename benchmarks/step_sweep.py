"""What the dense-task GPU step benchmarks share (gpu_segment.py, gpu_detect.py): the common flags,
their checks, and the sweep over batch sizes (an OOM batch is reported, the next one still runs)."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

import torch


def add_common_args(p: argparse.ArgumentParser, batches: str) -> None:
    p.add_argument("--device", default="cuda")
    p.add_argument("--preset", default="mae_vit_base_patch16", help="MAE preset of the encoder")
    p.add_argument("--batches", default=batches, help="comma-separated images per step")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--amp", default="bf16", choices=("bf16", "fp16", "none"))


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    try:
        args.batch_list = [int(b) for b in args.batches.split(",")]
    except ValueError:
        p.error(f"--batches {args.batches!r}: expected integers separated by commas, e.g. 2,8")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available (use --device cpu for a smoke run)")
    return args


def sweep(bench: Callable[[argparse.Namespace, int, torch.device], dict], args: argparse.Namespace,
          device: torch.device) -> list[dict]:
    """``bench(args, batch, device)`` for every batch size; one line each; exits if none fitted."""
    rows = []
    for batch in args.batch_list:
        try:
            r = bench(args, batch, device)
        except torch.OutOfMemoryError:
            print(f"batch {batch}: OOM")
            torch.cuda.empty_cache()
            continue
        rows.append(r)
        print(f"batch {batch}: {r['step_s']:.3f} s/step, {r['img_per_s']:.1f} img/s, peak {r['peak_gib']:.1f} GiB, "
              f"loss {r['loss']:.3f}, {r['params_m']:.1f} M parameters")
    if not rows:
        sys.exit("no batch size fitted")
    return rows
