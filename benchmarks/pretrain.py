"""Training-step cost of each mask: random vs every color (online and bank), same model and batch.

Full optimizer steps (mask generation + forward + backward + AdamW) are timed round-robin over the
mask configurations, several rounds, median per configuration, so machine drift hits all alike.
The figure of merit is color/random step time (ColorMAE's claim: ~1.00). For the CPU preset it
also compares bf16 autocast against fp32. It ends with one summary line per table, each named after
the table it describes: mean and range of that table's color/random ratios and its noise floor.

    python benchmarks/pretrain.py                       # CPU: CPU preset + ViT-B/16 at batch 4
    python benchmarks/pretrain.py --device cuda --vit-b-batch 128 --rounds 5
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from timm.optim import create_optimizer_v2

from colormae import make_masker
from colormae.models.mae import mae_model

# The second random row is a control: its ratio to the first shows the timing noise of this machine.
CONFIGS = ([("random", "online")] + [(c, s) for c in ("blue", "green", "purple", "red") for s in ("online", "bank")]
           + [("random", "again")])


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(preset: str, batch: int, device: torch.device, rounds: int, steps: int, amp: bool) -> dict:
    torch.manual_seed(0)
    model = mae_model(preset).to(device)
    opt = create_optimizer_v2(model, opt="adamw", lr=1e-4, weight_decay=0.05, betas=(0.9, 0.95))
    grid = model.cfg.grid
    maskers = {cfg: make_masker(cfg[0], grid, 0.75, source="bank" if cfg[1] == "bank" else "online", device=device)
               for cfg in CONFIGS}
    imgs = torch.randn(batch, 3, model.cfg.img_size, model.cfg.img_size, device=device)
    gen = torch.Generator().manual_seed(0)
    times = {cfg: [] for cfg in CONFIGS}
    peak = {}

    def step(masker):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss, _, _ = model(imgs, masker(batch, generator=gen, device=device))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for masker in maskers.values():  # warm-up (allocator, kernels)
        step(masker)
    for _ in range(rounds):
        for cfg, masker in maskers.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            t = time.perf_counter()
            for _ in range(steps):
                step(masker)
            sync(device)
            times[cfg].append((time.perf_counter() - t) / steps)
            if device.type == "cuda":
                peak[cfg] = torch.cuda.max_memory_allocated(device)
    med = {cfg: statistics.median(v) for cfg, v in times.items()}
    return {"med": med, "peak": peak, "grid": grid}


def step_flops(preset: str, batch: int, device: torch.device) -> float:
    """FLOPs of one forward + backward at 75 % random masking, counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode
    model = mae_model(preset).to(device)
    imgs = torch.randn(batch, 3, model.cfg.img_size, model.cfg.img_size, device=device)
    masks = make_masker("random", model.cfg.grid)(batch, generator=torch.Generator().manual_seed(0), device=device)
    with FlopCounterMode(display=False) as counter:
        loss, _, _ = model(imgs, masks)
        loss.backward()
    return float(counter.get_total_flops())


def known_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    table = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
    return next((v for k, v in table.items() if k in name), None)


def report(title: str, res: dict, batch: int) -> None:
    base = res["med"][("random", "online")]
    print(f"\n{title}  (grid {res['grid']}x{res['grid']}, batch {batch})")
    print(f"{'mask':<8}{'source':<8}{'step ms':>10}{'img/s':>10}{'vs random':>11}{'peak MiB':>10}")
    for (kind, source), t in res["med"].items():
        peak = res["peak"].get((kind, source))
        peak_s = f"{peak / 2**20:10.0f}" if peak else f"{'-':>10}"
        print(f"{kind:<8}{source:<8}{t * 1e3:10.1f}{batch / t:10.1f}{t / base:11.3f}{peak_s}")


def summary_line(title: str, res: dict) -> str:
    """One closing line for the table ``title``: its color/random step-time ratios (mean, range over
    the 8 color rows) and its noise floor (the control row, random again / random)."""
    base = res["med"][("random", "online")]
    ratios = [t / base for (kind, _), t in res["med"].items() if kind != "random"]
    return (f"{title}: color/random step-time ratio mean {statistics.mean(ratios):.3f}, range "
            f"{min(ratios):.3f}-{max(ratios):.3f} (target <= 1.01); noise floor (random again / random) "
            f"{res['med'][('random', 'again')] / base:.3f}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--cpu-preset", default="mae_vit_tiny_patch4_32")
    p.add_argument("--cpu-batch", type=int, default=64)
    p.add_argument("--vit-b-batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2, help="steps per timing")
    p.add_argument("--skip-vit-b", action="store_true", help="do not time ViT-B/16")
    p.add_argument("--skip-cpu-preset", action="store_true", help="do not time --cpu-preset (bf16 and fp32)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="dense bf16 peak of the device for model FLOP utilization (default: known GPUs)")
    args = p.parse_args(argv)
    if args.skip_vit_b and args.skip_cpu_preset:
        p.error("--skip-vit-b and --skip-cpu-preset together leave nothing to run; drop one of them")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")

    tables = []  # (title, result) of every mask table printed, for the closing summary
    if not args.skip_cpu_preset:
        res = bench(args.cpu_preset, args.cpu_batch, device, args.rounds, args.steps, amp=True)
        report(title := f"{args.cpu_preset}, bf16 autocast", res, args.cpu_batch)
        tables.append((title, res))
        fp32 = bench(args.cpu_preset, args.cpu_batch, device, args.rounds, args.steps, amp=False)
        report(title := f"{args.cpu_preset}, fp32", fp32, args.cpu_batch)
        tables.append((title, fp32))
        r_bf16, r_fp32 = res["med"][("random", "online")], fp32["med"][("random", "online")]
        print(f"\nbf16 autocast vs fp32 ({args.cpu_preset}, random): {args.cpu_batch / r_bf16:.1f} vs "
              f"{args.cpu_batch / r_fp32:.1f} img/s -> speed-up x{r_fp32 / r_bf16:.2f}")
    if not args.skip_vit_b:
        res = bench("mae_vit_base_patch16", args.vit_b_batch, device, args.rounds, args.steps, amp=True)
        report(title := "mae_vit_base_patch16 (ViT-B/16, 224 px), bf16 autocast", res, args.vit_b_batch)
        tables.append((title, res))
        flops = step_flops("mae_vit_base_patch16", args.vit_b_batch, device)
        t = res["med"][("random", "online")]
        print(f"ViT-B/16 training step: {flops / 1e12:.2f} TFLOP (torch.utils.flop_counter), "
              f"{flops / t / 1e12:.1f} TFLOP/s achieved")
        peak = args.peak_tflops or known_peak_tflops(device)
        if peak:
            print(f"model FLOP utilization: {flops / t / 1e12 / peak:.1%} of {peak:.0f} TFLOP/s bf16 dense")
    print("\nsummary, one line per table above:")
    for title, res in tables:
        print("  " + summary_line(title, res))


if __name__ == "__main__":
    main()
