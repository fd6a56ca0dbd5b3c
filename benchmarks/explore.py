"""Update time of the mask explorer (notebook 09): values in -> figure rendered to PNG bytes.

    python benchmarks/explore.py                       # grids 14 and 16, green, 30 updates each
    python benchmarks/explore.py --grids 8 14 16 32 --kind red --repeats 50 --threads 1

Times what one slider move costs, the way ``colormae.analysis.explore.MaskExplorer.update`` does it
(one reused figure, blitted; cached noise), for four kinds of move and prints the median (and the
90th percentile) of ``--repeats`` updates in ms:

- ``seed``: a new seed each time: the noise is drawn and filtered again (every noise parameter
  move costs the same);
- ``ratio (cached)``: the mask ratio alternates between two values already seen: the scores are
  cached, only the ranking, the statistics and the drawing run;
- ``ratio (new n_keep)``: a ratio whose number of visible patches was not seen at this grid yet:
  ``mask_statistics`` computes (and caches) its random reference (4096 random masks) once;
- ``render only``: the PNG of a view already computed (drawing + encoding).

Target: < 200 ms per update on a laptop CPU. The numbers depend on the load of the machine: the
header prints the load average.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from colormae.analysis import explore
from colormae.masks import stats


def timed(fn, repeats: int) -> tuple[float, float]:
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(i)
        times.append(1000 * (time.perf_counter() - start))
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.9 * len(times)))]


def bench(kind: str, grid: int, source: str, repeats: int, n_masks: int, figure: explore.MaskFigure) -> dict:
    base = {"kind": kind, "grid": grid, "source": source, "n_masks": n_masks}
    figure.png(explore.mask_view(**base))  # warm-up: background, caches, bank
    explore.mask_view(**base, mask_ratio=0.7)
    out = {"seed": timed(lambda i: figure.png(explore.mask_view(**base, seed=1000 + i)), repeats),
           "ratio (cached)": timed(lambda i: figure.png(explore.mask_view(**base, mask_ratio=(0.75, 0.7)[i % 2])),
                                   repeats)}
    # ratios whose n_keep is new at this grid: clear the random-reference cache before each
    ratios = [0.5 + 0.4 * i / max(1, repeats) for i in range(repeats)]

    def new_ratio(i):
        stats.random_reference.cache_clear()
        figure.png(explore.mask_view(**base, mask_ratio=ratios[i]))
    out["ratio (new n_keep)"] = timed(new_ratio, max(3, repeats // 5))
    view = explore.mask_view(**base)
    out["render only"] = timed(lambda i: figure.png(view), repeats)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grids", type=int, nargs="+", default=[14, 16])
    p.add_argument("--kind", default="green", choices=explore.KINDS)
    p.add_argument("--source", default="online", choices=explore.SOURCES)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--n-masks", type=int, default=explore.N_MASKS, help="masks per view (statistics, spectrum)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"explorer update time, ms (median / p90 of {args.repeats}); kind={args.kind} source={args.source} "
          f"n_masks={args.n_masks}; {os.cpu_count()} CPUs, load average {load:.1f}, "
          f"torch threads {torch.get_num_threads()}")
    figure = explore.MaskFigure(explore.band_sweep_points())
    print(f"{'grid':>4}  {'update':<20} {'median':>7} {'p90':>7}")
    for grid in args.grids:
        for name, (median, p90) in bench(args.kind, grid, args.source, args.repeats, args.n_masks, figure).items():
            print(f"{grid:>4}  {name:<20} {median:7.1f} {p90:7.1f}")


if __name__ == "__main__":
    main()
