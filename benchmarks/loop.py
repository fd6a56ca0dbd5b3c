"""The real pretraining loop against the bare model step, side by side in one process (issue 24).

* bare: masks drawn by the same masker, forward + backward + AdamW (the engine's implementation:
  fused on CUDA, foreach on CPU) on one resident batch: no input pipeline, loss guard, logging or
  schedule.
* real: ``colormae.engines.pretrain.run`` itself, in-memory data (``--pipeline memory``: CIFAR-10
  train where present, else the embedded photographs), ``--max-steps warm-up + steps`` in a scratch
  run directory. Timed between the loop's own reads at two ``--log-every`` steps (each read is a
  host sync, so the window holds whole steps); the untimed warm-up covers allocator, kernels and
  compilation.

* real+jpeg(P): the same loop reading ImageNet-like JPEGs (``--jpeg-pipelines``: files, gpu-decode,
  dali; a synthetic folder of ``--jpeg-images`` 320-640 px photos made once, benchmarks/pipeline.py),
  ``--num-workers`` DataLoader workers: what an ImageNet run gets from each input pipeline.

Rounds alternate bare and real (and, with ``--compile``, both compiled), so machine drift hits
every path alike; medians are reported. MFU = model FLOPs per step (forward + backward, counted once
by torch.utils.flop_counter, eager) x steps/s / peak. Peak: ``--peak-tflops``, else a small table of
dense bf16 peaks by device name (H100/H200 989, A100 312 TFLOP/s); on a CPU "n/a". On the CPU the
counter has no formula for the fused attention kernel (it counts 0, docs/benchmarks.md), so CPU
FLOPs are a lower bound.

    python benchmarks/loop.py                                    # CPU: mini preset, batch 128, fp32
    python benchmarks/loop.py --device cuda --preset mae_vit_base_patch16 --batch 256 --amp bf16 --compile \\
        --memory-batches 256,512
    python benchmarks/loop.py --device cuda --preset mae_vit_base_patch16 --batch 256 --amp bf16 \\
        --jpeg-pipelines files,gpu-decode --steps 10 --warmup 5 --log-every 5
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from pipeline import ROOT, synthetic_jpeg_folder  # benchmarks/pipeline.py
from timm.optim import create_optimizer_v2
from torch.utils.flop_counter import FlopCounterMode

from colormae import make_masker
from colormae.data.datasets import default_data_root
from colormae.engines import pretrain
from colormae.models.mae import PRESETS, MaskedAutoencoder, get_config
from colormae.run import scaffold
from colormae.run.config import COMPILE_MODES
from colormae.runtime import autocast

JPEG_PIPELINES = ("files", "gpu-decode", "dali")

# dense bf16 peak FLOP/s by device name (NVIDIA datasheets, without sparsity)
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_tflops(device: torch.device, given: float | None) -> tuple[float | None, str]:
    """(peak TFLOP/s or None, where it comes from)."""
    if given is not None:
        return given, "--peak-tflops"
    if device.type != "cuda":
        return None, f"no table value for {device.type}; give --peak-tflops"
    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    return peak, (f"{name}, dense bf16 (table)" if peak else f"{name} is not in the table; give --peak-tflops")


class Bare:
    """The model step alone: the masker, forward + loss, backward, AdamW."""

    def __init__(self, args, device: torch.device, compile_mode: str | None, batch: int | None = None):
        torch.manual_seed(0)
        self.cfg = get_config(args.preset)
        self.model = MaskedAutoencoder(self.cfg).to(device)
        self.forward = scaffold.compile_model(self.model, compile_mode is not None, compile_mode or "default")
        self.opt = create_optimizer_v2(self.model, opt="adamw", lr=1e-4, weight_decay=0.05, betas=(0.9, 0.95),
                                       **scaffold.adamw_options(device))
        self.masker = make_masker(args.mask, self.cfg.grid, 0.75, device=device)
        self.batch, self.amp, self.device = batch or args.batch, args.amp, device
        self.gen = torch.Generator().manual_seed(1)
        size = self.cfg.img_size
        self.imgs = torch.randn(self.batch, 3, size, size, device=device)

    def step(self) -> None:
        masks = self.masker(self.batch, generator=self.gen, device=self.device)
        with autocast(self.amp, self.device):
            loss, _, _ = self.forward(self.imgs, masks)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def time(self, steps: int) -> float:
        """Seconds per step over ``steps`` steps."""
        sync(self.device)
        t = time.perf_counter()
        for _ in range(steps):
            self.step()
        sync(self.device)
        return (time.perf_counter() - t) / steps

    def flops(self) -> float:
        """FLOPs of one forward + backward (eager), by torch.utils.flop_counter."""
        masks = self.masker(self.batch, generator=torch.Generator().manual_seed(0), device=self.device)
        with FlopCounterMode(display=False) as counter, autocast(self.amp, self.device):
            loss, _, _ = self.model(self.imgs, masks)
            loss.backward()
        self.opt.zero_grad(set_to_none=True)
        return float(counter.get_total_flops())


def real_config(args, device: torch.device, out: Path, compile_mode: str | None,
                jpeg_pipeline: str | None = None) -> pretrain.PretrainConfig:
    steps = args.warmup + args.steps
    data = {"dataset": "cifar10", "data_root": str(args.cifar)} if args.cifar else {
        # one epoch longer than the run: no epoch end (checkpoint) inside the timed window
        "dataset": "embedded", "dataset_length": args.batch * (steps + 1)}
    data["pipeline"] = "memory"
    if jpeg_pipeline is not None:  # parse_args checked that the run ends inside the folder's first epoch
        data = {"dataset": "imagefolder", "data_root": str(args.jpeg_root), "pipeline": jpeg_pipeline,
                "num_workers": args.num_workers}
    return pretrain.PretrainConfig(
        preset=args.preset, **data, batch_size=args.batch, epochs=1, max_steps=steps,
        warmup_epochs=0.5,
        amp=args.amp, device=str(device), mask=args.mask, log_every=args.log_every, checkpoint_minutes=0,
        compile=compile_mode is not None, compile_mode=compile_mode or "default", output_dir=str(out),
        overwrite=True, seed=0)


class ReadTimes:
    """Wall time after each of the loop's reads at a log step: Run.read_losses(at_step=s) ends with
    the host holding step s's loss, i.e. the device done with the steps before."""

    def __init__(self):
        self.at: dict[int, float] = {}
        self._real = scaffold.Run.read_losses

    def __enter__(self):
        real, at = self._real, self.at

        def read_losses(run, at_step=None):
            real(run, at_step=at_step)
            if at_step is not None:
                at[at_step] = time.perf_counter()
        scaffold.Run.read_losses = read_losses
        return self

    def __exit__(self, *exc):
        scaffold.Run.read_losses = self._real


def time_real(args, device: torch.device, out: Path, compile_mode: str | None,
              jpeg_pipeline: str | None = None) -> tuple[float, int | None]:
    """(seconds per step of the real loop between the reads at --warmup and --warmup + --steps, peak
    memory of the run on CUDA)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with ReadTimes() as times:
        summary = pretrain.run(real_config(args, device, out, compile_mode, jpeg_pipeline))
    first, last = args.warmup, args.warmup + args.steps
    if summary["steps"] != last or first not in times.at or last not in times.at:
        raise RuntimeError(f"the real loop ran {summary['steps']} steps, reads at {sorted(times.at)}: expected "
                           f"reads at steps {first} and {last}")
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return (times.at[last] - times.at[first]) / args.steps, peak


def memory_at(args, device: torch.device, batch: int) -> int:
    """Peak CUDA memory of bare eager steps at ``batch`` (2 steps, after the others freed theirs)."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    bare = Bare(args, device, None, batch)
    bare.time(2)
    peak = torch.cuda.max_memory_allocated(device)
    del bare
    torch.cuda.empty_cache()
    return peak


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", default="mae_vit_mini_patch4_32", choices=tuple(PRESETS))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--amp", choices=("bf16", "none"), default=None, help="default: bf16 on CUDA, none (fp32) on CPU")
    p.add_argument("--mask", default="green", help="mask kind of both paths")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=20, help="timed steps per path and round (a multiple of --log-every)")
    p.add_argument("--warmup", type=int, default=10,
                   help="untimed steps before each timing (a multiple of --log-every; covers compilation)")
    p.add_argument("--log-every", type=int, default=10, help="the real loop's --log-every")
    p.add_argument("--compile", action="store_true", help="also time both paths under torch.compile")
    p.add_argument("--compile-mode", default="default", choices=COMPILE_MODES)
    p.add_argument("--memory-batches", default="", help="CUDA: peak memory of bare steps at these batches, "
                   "e.g. 256,512")
    p.add_argument("--data", default="auto", choices=("auto", "cifar10", "embedded"),
                   help="the real loop's data; auto: CIFAR-10 where present, else the embedded photographs")
    p.add_argument("--data-root", default=None, help="folder with CIFAR-10 (default: data.default_data_root())")
    p.add_argument("--jpeg-pipelines", default="", help=f"also time the real loop on JPEGs through these "
                   f"input pipelines, comma-separated from {', '.join(JPEG_PIPELINES)}")
    p.add_argument("--jpeg-images", type=int, default=4096, help="images of the synthetic JPEG folder")
    p.add_argument("--jpeg-root", default=str(ROOT / "results" / "scratch" / "gpu_decode_jpegs"),
                   help="where the synthetic JPEG folder is made (once)")
    p.add_argument("--num-workers", type=int, default=8, help="DataLoader workers of the JPEG paths")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the usable cores)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for MFU")
    args = p.parse_args(argv)
    for name in ("batch", "rounds", "steps", "warmup", "log_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)} must be >= 1")
    if args.steps % args.log_every or args.warmup % args.log_every:
        p.error(f"--steps {args.steps} and --warmup {args.warmup} must be multiples of --log-every "
                f"{args.log_every}: the real loop is timed between its reads at log steps")
    if args.compile_mode != "default" and not args.compile:
        p.error(f"--compile-mode {args.compile_mode} without --compile is unused")
    try:
        args.memory_batches = [int(b) for b in args.memory_batches.split(",") if b.strip()]
    except ValueError:
        p.error(f"--memory-batches {args.memory_batches!r}: comma-separated integers, e.g. 256,512")
    args.jpeg_pipelines = [x.strip() for x in args.jpeg_pipelines.split(",") if x.strip()]
    if bad := [x for x in args.jpeg_pipelines if x not in JPEG_PIPELINES]:
        p.error(f"--jpeg-pipelines: unknown {', '.join(bad)}; allowed values: {', '.join(JPEG_PIPELINES)}")
    if args.jpeg_pipelines and args.warmup + args.steps >= args.jpeg_images // args.batch:
        p.error(f"--warmup {args.warmup} + --steps {args.steps} must stay inside one epoch of the JPEG folder "
                f"({args.jpeg_images // args.batch} steps of {args.batch} from --jpeg-images {args.jpeg_images}): "
                "an epoch end writes a checkpoint inside the timed window")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"loop benchmark: --device {args.device} but CUDA is not available")
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    args.amp = args.amp or ("bf16" if device.type == "cuda" else "none")
    cifar = Path(args.data_root) if args.data_root else default_data_root() / "cifar10"
    found = any((cifar / f).exists() for f in ("train.tar", "train", "cifar-10-batches-py"))
    if args.data == "cifar10" and not found:
        raise SystemExit(f"loop benchmark: --data cifar10 but CIFAR-10 is not at {cifar} (give --data-root)")
    args.cifar = cifar if found and args.data != "embedded" else None
    modes = [None] + ([args.compile_mode] if args.compile else [])
    paths = [(kind, mode) for mode in modes for kind in ("bare", "real")]
    label = {(k, m): k if m is None else f"{k}+compile({m})" for k, m in paths}
    for pipeline in args.jpeg_pipelines:  # eager, beside the eager bare step
        paths.append((f"real+jpeg({pipeline})", None))
        label[paths[-1]] = paths[-1][0]
    if args.jpeg_pipelines:
        args.jpeg_root = synthetic_jpeg_folder(Path(args.jpeg_root), args.jpeg_images)
    print(f"loop benchmark: {args.preset}, batch {args.batch}, amp {args.amp}, {device}, "
          f"{torch.get_num_threads()} threads, {args.mask} masks, real loop on "
          f"{'CIFAR-10 ' + str(args.cifar) if args.cifar else 'the embedded photographs'} (memory pipeline), "
          f"log_every {args.log_every}; {args.rounds} rounds x {args.steps} timed steps after {args.warmup} warm-up",
          flush=True)

    bares = {mode: Bare(args, device, mode) for mode in modes}
    flops = bares[None].flops()
    for bare in bares.values():
        bare.time(args.warmup)  # allocator, kernels, compilation
    times: dict[tuple, list[float]] = {p: [] for p in paths}
    peaks: dict[tuple, int | None] = {}
    with tempfile.TemporaryDirectory(prefix="loop_bench_") as scratch:
        for r in range(args.rounds):
            for kind, mode in paths:
                if kind == "bare":
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    times[kind, mode].append(bares[mode].time(args.steps))
                    peaks[kind, mode] = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
                else:
                    jpeg = kind[len("real+jpeg("):-1] if kind.startswith("real+jpeg") else None
                    out = Path(scratch) / f"run_{r}_{mode}_{jpeg}"
                    t, peaks[kind, mode] = time_real(args, device, out, mode, jpeg)
                    times[kind, mode].append(t)
                print(f"  round {r + 1} {label[kind, mode]:<28}{args.batch / times[kind, mode][-1]:10.1f} img/s",
                      flush=True)

    peak, peak_from = peak_tflops(device, args.peak_tflops)
    print(f"\nmodel FLOPs per step: {flops / 1e9:.2f} GFLOP (forward + backward, torch.utils.flop_counter"
          f"{'; CPU attention counted as 0' if device.type == 'cpu' else ''})")
    print(f"peak: {f'{peak:.0f} TFLOP/s' if peak else 'n/a'} ({peak_from})")
    print(f"{'path':<30}{'img/s':>10}{'min':>10}{'max':>10}{'real/bare':>11}{'TFLOP/s':>9}{'MFU':>8}{'peak MiB':>10}")
    rates = {p: statistics.median(args.batch / t for t in ts) for p, ts in times.items()}
    for kind, mode in paths:
        rate = rates[kind, mode]
        achieved = flops * rate / args.batch / 1e12
        mfu = f"{achieved / peak:8.1%}" if peak else f"{'n/a':>8}"
        ratio = f"{rate / rates['bare', mode]:11.3f}" if kind != "bare" else f"{'':>11}"
        mem = peaks.get((kind, mode))
        per = [args.batch / t for t in times[kind, mode]]
        print(f"{label[kind, mode]:<30}{rate:10.1f}{min(per):10.1f}{max(per):10.1f}{ratio}{achieved:9.2f}{mfu}"
              f"{f'{mem / 2**20:10.0f}' if mem else f'{chr(45):>10}'}")
    for batch in args.memory_batches:
        if device.type != "cuda":
            print(f"peak memory at batch {batch}: n/a (CUDA only)")
            continue
        print(f"peak memory at batch {batch} ({args.preset}, {args.amp}, bare eager step): "
              f"{memory_at(args, device, batch) / 2**30:.2f} GiB", flush=True)
    for mode in modes:
        real = rates["real", mode]
        mfu = f"{flops * real / args.batch / 1e12 / peak:.1%}" if peak else "n/a"
        # each round times bare then real back to back: their ratio pairs out the machine's drift
        by_round = [b / r for b, r in zip(times["bare", mode], times["real", mode])]
        print(f"loop summary ({'eager' if mode is None else 'compile ' + mode}): real {real:.1f} img/s, "
              f"bare {rates['bare', mode]:.1f} img/s, real/bare {real / rates['bare', mode]:.3f}, MFU real {mfu}; "
              f"real/bare by round: median {statistics.median(by_round):.3f}, range {min(by_round):.3f}-"
              f"{max(by_round):.3f} over {len(by_round)} rounds")
    for pipeline in args.jpeg_pipelines:
        rate = rates[f"real+jpeg({pipeline})", None]
        print(f"jpeg loop summary ({pipeline}, {args.num_workers} workers): real {rate:.1f} img/s, "
              f"real/bare {rate / rates['bare', None]:.3f}")


if __name__ == "__main__":
    sys.exit(main())
