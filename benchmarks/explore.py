"""Update time of the explorers: the mask explorer (notebook 09) and the reconstruction explorer
(notebook 10), values in -> figure rendered to PNG bytes.

    python benchmarks/explore.py                       # grids 14 and 16, green, 30 updates each
    python benchmarks/explore.py --grids 8 14 16 32 --kind red --repeats 50 --threads 1
    python benchmarks/explore.py --explorer reconstructions   # notebook 10, the committed random vs green

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

The reconstruction explorer is timed through its widget callbacks (a control's value set, as a
browser sets it, -> ``ReconstructionExplorer.update`` -> PNG in the image widget), for:

- ``seed``: a new mask: one forward pass per checkpoint, the error maps, the drawing;
- ``mask ratio``: two ratios alternating (the same work as a seed);
- ``image (new)``: an image not seen yet: read, resized, and the [CLS] attention computed once;
- ``image (cached)``: two images alternating (their attention cached);
- ``checkpoint (cached)``: checkpoint B alternating between two models already opened;
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
from colormae.analysis import explore_reconstruction as er
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


def bench_reconstructions(checkpoints: list[str], other: str, source: str, repeats: int) -> dict:
    """Median / p90 ms of each kind of change, through the widget's callbacks."""
    e = er.ReconstructionExplorer(*checkpoints, image_source=source, image_index=0, kind="green")
    c = e.controls
    c["checkpoint_b"].value = other  # open both models B alternates between (cached afterwards)
    c["checkpoint_b"].value = checkpoints[1]
    n_images = c["image_index"].max + 1

    def setter(name, value):
        return lambda i: c.__getitem__(name).__setattr__("value", value(i))
    out = {"seed": timed(setter("seed", lambda i: 1 + i % 99), repeats),
           "mask ratio": timed(setter("mask_ratio", lambda i: (0.7, 0.75)[i % 2]), repeats),
           "image (new)": timed(setter("image_index", lambda i: 1 + i % max(1, n_images - 1)),
                                min(repeats, max(1, n_images - 1))),
           "image (cached)": timed(setter("image_index", lambda i: (0, 1)[i % 2]), repeats),
           "checkpoint (cached)": timed(setter("checkpoint_b", lambda i: (other, checkpoints[1])[i % 2]), repeats)}
    figure, view = er.ReconstructionFigure(2), e.view
    out["render only"] = timed(lambda i: figure.png(view), repeats)
    return out


def main_reconstructions(args) -> None:
    checkpoints = args.checkpoints or list(er.DEFAULT_CHECKPOINTS)
    print(f"reconstruction explorer update time, ms (median / p90 of {args.repeats}); {' vs '.join(checkpoints)} "
          f"(B alternates with {args.other}); images: {args.image_source}; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}, torch threads {torch.get_num_threads()} (the explorer computes on 1)")
    print(f"{'update':<22} {'median':>7} {'p90':>7}")
    for name, (median, p90) in bench_reconstructions(checkpoints, args.other, args.image_source,
                                                     args.repeats).items():
        print(f"{name:<22} {median:7.1f} {p90:7.1f}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--explorer", choices=("masks", "reconstructions"), default="masks",
                   help="masks: notebook 09 (the flags below up to --threads); reconstructions: notebook 10")
    p.add_argument("--grids", type=int, nargs="+", default=[14, 16])
    p.add_argument("--kind", default="green", choices=explore.KINDS)
    p.add_argument("--source", default="online", choices=explore.SOURCES)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--n-masks", type=int, default=explore.N_MASKS, help="masks per view (statistics, spectrum)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--checkpoints", nargs=2, default=None, metavar=("A", "B"),
                   help=f"reconstructions: the two checkpoints (default {' '.join(er.DEFAULT_CHECKPOINTS)})")
    p.add_argument("--other", default="results/cifar10_grid16/weights/blue.pth",
                   help="reconstructions: the model checkpoint B alternates with")
    p.add_argument("--image-source", default="photos", choices=[s for s in er.IMAGE_SOURCES if s != "upload"],
                   help="reconstructions: where the images come from")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.explorer == "reconstructions":
        main_reconstructions(args)
        return
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
