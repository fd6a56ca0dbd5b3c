"""Mask generation speed and memory for every masking kind, measured side by side in one process.

    python benchmarks/masking.py                 # cuda if available, else cpu
    python benchmarks/masking.py --device cpu --repeats 50

For each kind (and each source for the colors) prints masks per second, the memory the masker
keeps on the device (the noise bank; 0 for online filtering), on CUDA the peak extra memory
allocated while building it and generating masks, and the time per call relative to random (MAE)
masking. Timing is interleaved in rounds (every masker once per round) so that clock or thermal
drift hits all kinds alike; the median round is reported.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from colormae import COLORS, KINDS, make_masker


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(kind: str, source: str, args, device: torch.device):
    """Build one masker and return it with its CUDA peak-memory delta in bytes (None on CPU)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    masker = make_masker(kind, args.grid, args.mask_ratio, source=source, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    for _ in range(args.warmup):  # warm-up: kernels, caches, and the bank's move to the device
        masker(args.batch, generator=gen, device=device)
    sync(device)
    peak = torch.cuda.max_memory_allocated(device) - before if device.type == "cuda" else None
    return masker, gen, peak


def time_calls(masker, gen, args, device: torch.device) -> float:
    """Seconds per call, averaged over ``args.repeats`` back-to-back calls."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        masker(args.batch, generator=gen, device=device)
    sync(device)
    return (time.perf_counter() - t0) / args.repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--grid", type=int, default=14)
    parser.add_argument("--mask-ratio", type=float, default=0.75)
    parser.add_argument("--repeats", type=int, default=20, help="calls per masker per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); 1 is steadier on a shared machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if "random" not in args.kinds:
        args.kinds = ["random", *args.kinds]  # the reference for the ratio column

    # Build everything first so that all timings below come from the same warm process.
    runs = {}
    for kind in args.kinds:
        for source in (("online", "bank") if kind in COLORS else ("online",)):
            runs[kind, source] = build(kind, source, args, device)

    times: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
    for _ in range(args.rounds):
        for key, (masker, gen, _) in runs.items():
            times[key].append(time_calls(masker, gen, args, device))

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, threads={torch.get_num_threads()}"
    print(f"device={name}  torch={torch.__version__}  B={args.batch}  grid={args.grid}  "
          f"mask_ratio={args.mask_ratio}  {args.rounds} rounds x {args.repeats} calls (median round)")
    header = f"{'kind':<8} {'source':<7} {'ms/call':>9} {'masks/s':>11} {'x random':>9} {'bank MiB':>9}"
    if device.type == "cuda":
        header += f" {'peak MiB':>9}"
    print(header)
    print("-" * len(header))
    random_t = statistics.median(times["random", "online"])
    for (kind, source), (masker, _, peak) in runs.items():
        t = statistics.median(times[kind, source])
        bank = masker.bank.patterns.numel() * masker.bank.patterns.element_size() if masker.bank is not None else 0
        line = (f"{kind:<8} {source:<7} {t * 1e3:>9.3f} {args.batch / t:>11,.0f} {t / random_t:>9.2f} "
                f"{bank / 2 ** 20:>9.2f}")
        if peak is not None:
            line += f" {peak / 2 ** 20:>9.2f}"
        print(line)


if __name__ == "__main__":
    main()
