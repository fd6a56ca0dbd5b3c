"""Mask generation speed and memory for every masking kind, measured side by side in one process.

    python benchmarks/masking.py                 # cuda if available, else cpu
    python benchmarks/masking.py --device cpu --repeats 50

For each kind (and each source for the colors) prints masks per second, the memory the masker
keeps on the device (the noise bank; 0 for online filtering), on CUDA the peak extra memory
allocated while building it and generating masks, and the time per call relative to random (MAE)
masking. Timing is interleaved in rounds (every masker once per round) so that clock or thermal
drift hits all kinds alike; the median round is reported.

``--block-reference``: the block (BEiT) masker against the numpy implementation it replaced
(``reference_block_scores`` below, kept here only as the reference), side by side in the same rounds:
wall and CPU time (``time.process_time``: this process only, so a loaded machine's waiting does not
count) per batch, and their ratio.

    python benchmarks/masking.py --device cpu --kinds block --block-reference --threads 1
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch

from colormae import COLORS, KINDS, make_masker


# -- the numpy block masker that colormae.masks.maskers.block_masks replaced (reference only) ---------
def _reference_block_mask(grid: int, num_masked: int, min_patches: int, rng: np.random.Generator,
                          min_aspect: float = 0.3, attempts: int = 10) -> np.ndarray:
    """BEiT's block-wise masking for one sample, a python loop per block (the former implementation)."""
    mask = np.zeros((grid, grid), dtype=bool)
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    count = 0
    while count < num_masked:
        budget = num_masked - count
        delta = 0
        for _ in range(attempts):
            area = rng.uniform(min_patches, budget) if budget > min_patches else budget
            aspect = math.exp(rng.uniform(*log_aspect))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if 0 < h < grid and 0 < w < grid:
                top, left = rng.integers(0, grid - h + 1), rng.integers(0, grid - w + 1)
                new = h * w - int(mask[top:top + h, left:left + w].sum())
                if 0 < new <= budget:
                    mask[top:top + h, left:left + w] = True
                    delta = new
                    break
        if delta == 0:
            break
        count += delta
    return mask


def reference_block_masks(batch: int, grid: int, num_masked: int, min_patches: int, min_aspect: float = 0.3,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, grid, grid] bool from the former numpy path (seeded from ``generator``), before the random fill."""
    seed = torch.randint(0, 2 ** 62, (1,), generator=generator).item()
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([_reference_block_mask(grid, num_masked, min_patches, rng, min_aspect)
                                      for _ in range(batch)]))


def reference_block_scores(masker, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The former ``Masker.scores`` for kind "block": numpy masks, then the random fill, on the CPU."""
    L = masker.num_patches
    masked = reference_block_masks(batch, masker.grid, L - masker.n_keep, masker.params["min_block_patches"],
                                   masker.params["min_aspect"], generator)
    return (~masked).flatten(1).float() + 0.5 * torch.rand(batch, L, generator=generator)


def block_reference(args) -> None:
    """The block masker (torch, batched) vs the numpy reference, interleaved rounds, on the CPU."""
    masker = make_masker("block", args.grid, args.mask_ratio)
    gen = torch.Generator().manual_seed(0)
    paths = {"numpy reference": lambda: reference_block_scores(masker, args.batch, gen),
             "torch (colormae)": lambda: masker.scores(args.batch, generator=gen)}
    for fn in paths.values():
        fn()  # warm-up
    wall: dict[str, list[float]] = {k: [] for k in paths}
    cpu: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(args.rounds):
        for name, fn in paths.items():
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.repeats):
                fn()
            wall[name].append((time.perf_counter() - w0) / args.repeats)
            cpu[name].append((time.process_time() - c0) / args.repeats)
    print(f"\nblock masks, B={args.batch}, grid={args.grid}, cpu threads={torch.get_num_threads()}, "
          f"{args.rounds} rounds x {args.repeats} calls (median round)")
    print(f"{'path':<17} {'wall ms':>9} {'cpu ms':>9}")
    for name in paths:
        print(f"{name:<17} {statistics.median(wall[name]) * 1e3:>9.2f} {statistics.median(cpu[name]) * 1e3:>9.2f}")
    ref, new = "numpy reference", "torch (colormae)"
    print(f"speed-up torch vs numpy: wall {statistics.median(wall[ref]) / statistics.median(wall[new]):.2f}x, "
          f"cpu {statistics.median(cpu[ref]) / statistics.median(cpu[new]):.2f}x")


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
    parser.add_argument("--block-reference", action="store_true",
                        help="also time the block masker against the numpy implementation it replaced (CPU)")
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
    if args.block_reference:
        block_reference(args)


if __name__ == "__main__":
    main()
