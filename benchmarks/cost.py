"""Table 4 at our scale: the cost of each mask kind and source (random; every color online and bank).

Two parts, run separately because only one of them needs a quiet machine:

* ``static`` (deterministic, safe while an experiment runs): parameters (M); forward FLOPs per
  image at 75 % masking (``torch.utils.flop_counter``: 2 FLOPs per multiply-add; also given as
  GMACs, the unit fvcore-style counters call "FLOPs"); training memory accounted tensor by tensor
  (weights + gradients + AdamW moments + activations saved for backward + the mask source's
  persistent state, i.e. the noise bank), plus ``torch.cuda.max_memory_allocated`` of a training
  step on a GPU.
* ``timing`` (needs an otherwise idle machine): training-step time of each configuration relative
  to random, timed round-robin by ``benchmarks/pretrain.py``'s ``bench`` (median of ``--rounds``).

    python benchmarks/cost.py                      # static part, grid preset + ViT-B/16 -> results/cost/
    python benchmarks/cost.py --part timing        # timing only (quiet machine), merges into the same files
    python benchmarks/cost.py --part all --device cuda --batch 64 --vit-b-batch 64

Outputs: ``results/cost/{static,timing}_<device type>.{csv,json}`` (json: rows + device + versions).
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import sys
from pathlib import Path

import torch
from timm.optim import create_optimizer_v2
from torch.utils.flop_counter import FlopCounterMode

from colormae import make_masker
from colormae.files import atomic_write, project_path, write_json
from colormae.models.mae import PRESETS, mae_model
from colormae.runtime import environment_info

ROOT = Path(__file__).resolve().parents[1]
COLORS = ("blue", "green", "purple", "red")
CONFIGS = [("random", "online")] + [(c, s) for c in COLORS for s in ("online", "bank")]
PARTS = ("static", "timing", "all")
MIB = 2 ** 20


def _masker(kind: str, source: str, grid: int, device: torch.device):
    return make_masker(kind, grid, 0.75, source=source, device=device)


def forward_flops(model, masker, batch: int, device: torch.device) -> float:
    """FLOPs of one forward pass per image (flop_counter: 2 per multiply-add; FFT mask filtering
    is not a counted op, and runs outside the network)."""
    imgs = torch.randn(batch, 3, model.cfg.img_size, model.cfg.img_size, device=device)
    masks = masker(batch, generator=torch.Generator().manual_seed(0), device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(imgs, masks)
    return counter.get_total_flops() / batch


def memory_accounting(model, masker, batch: int, device: torch.device) -> dict:
    """Bytes of one training step's tensors, by kind (deterministic on any device).

    Activations = the distinct storages autograd saves for backward during the forward pass
    (parameters excluded: counted as weights). Online masks hold no state between calls; a bank
    holds its patterns for the whole run."""
    params = [p for p in model.parameters()]
    weights = sum(p.numel() * p.element_size() for p in params)
    trainable = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage.data_ptr() not in param_ptrs:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    imgs = torch.randn(batch, 3, model.cfg.img_size, model.cfg.img_size, device=device)
    masks = masker(batch, generator=torch.Generator().manual_seed(0), device=device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _, _ = model(imgs, masks)
    loss.backward()
    model.zero_grad(set_to_none=True)
    bank = masker.bank.patterns.numel() * masker.bank.patterns.element_size() if masker.bank is not None else 0
    parts = {"weights": weights, "gradients": trainable, "adamw_moments": 2 * trainable,
             "activations": sum(saved.values()), "input": imgs.numel() * imgs.element_size(), "mask_state": bank}
    return {**parts, "total": sum(parts.values())}


def cuda_peak(model, masker, batch: int, device: torch.device) -> int | None:
    """torch.cuda.max_memory_allocated over one AdamW training step (bf16 autocast), or None off-GPU."""
    if device.type != "cuda":
        return None
    opt = create_optimizer_v2(model, opt="adamw", lr=1e-4, weight_decay=0.05)
    imgs = torch.randn(batch, 3, model.cfg.img_size, model.cfg.img_size, device=device)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):  # the second step has AdamW state allocated
        torch.cuda.reset_peak_memory_stats(device)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _, _ = model(imgs, masker(batch, generator=gen, device=device))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device))


def static_rows(preset: str, batch: int, device: torch.device) -> list[dict]:
    rows = []
    for kind, source in CONFIGS:
        torch.manual_seed(0)
        model = mae_model(preset).to(device)
        masker = _masker(kind, source, model.cfg.grid, device)
        flops = forward_flops(model, masker, min(batch, 8), device)
        mem = memory_accounting(model, masker, batch, device)
        peak = cuda_peak(model, masker, batch, device)
        rows.append({"preset": preset, "mask": kind, "source": source, "batch": batch,
                     "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                     "gflops_fwd_per_img": flops / 1e9, "gmacs_fwd_per_img": flops / 2e9,
                     "memory_accounted_mib": mem["total"] / MIB, "mask_state_mib": mem["mask_state"] / MIB,
                     "activations_mib": mem["activations"] / MIB,
                     "cuda_peak_mib": None if peak is None else peak / MIB})
        del model, masker
    base = rows[0]["memory_accounted_mib"]
    for r in rows:
        r["memory_vs_random"] = r["memory_accounted_mib"] / base - 1.0
    return rows


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_pretrain", ROOT / "benchmarks" / "pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timing_rows(preset: str, batch: int, device: torch.device, rounds: int, steps: int) -> list[dict]:
    """Median training-step time per configuration, round-robin (fp32 on CPU, bf16 autocast on GPU)."""
    res = _bench_module().bench(preset, batch, device, rounds, steps, amp=device.type == "cuda")
    base = res["med"][("random", "online")]
    return [{"preset": preset, "mask": kind, "source": source, "batch": batch, "rounds": rounds,
             "steps_per_timing": steps, "step_ms": t * 1e3, "images_per_s": batch / t, "time_vs_random": t / base}
            for (kind, source), t in res["med"].items()]  # the trailing ("random", "again") row: the noise floor


def write(rows: list[dict], name: str, out: Path, device: torch.device, args: argparse.Namespace) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    write_json({"rows": rows, "environment": environment_info(device), "args": vars(args)}, out / f"{name}.json")

    def write_csv(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return atomic_write(out / f"{name}.csv", write_csv)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", default="static", choices=PARTS, help="static (safe while experiments run), timing "
                   "(idle machine only) or all")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", nargs="+", default=["mae_vit_nano_patch2_32"], choices=tuple(PRESETS),
                   help="model presets (default: the CIFAR-10 16x16 grid's)")
    p.add_argument("--batch", type=int, default=64, help="training batch of the presets (the grid's: 64)")
    p.add_argument("--vit-b-batch", type=int, default=4, help="ViT-B/16 batch (0: skip ViT-B)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="training steps per timing")
    p.add_argument("--out", default="results/cost")
    args = p.parse_args(argv)
    for name in ("batch", "rounds", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.vit_b_batch < 0:
        p.error(f"--vit-b-batch must be >= 0 (0 skips ViT-B), got {args.vit_b_batch}")
    return args


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(argv)
    device = torch.device(args.device)
    out = project_path(args.out)
    jobs = [(preset, args.batch) for preset in args.preset]
    if args.vit_b_batch:
        jobs.append(("mae_vit_base_patch16", args.vit_b_batch))
    written = []
    if args.part in ("static", "all"):
        rows = [r for preset, batch in jobs for r in static_rows(preset, batch, device)]
        written.append(write(rows, f"static_{device.type}", out, device, args))
        for r in rows:
            print(f"{r['preset']:<24}{r['mask']:<8}{r['source']:<8}{r['params_m']:8.3f} M "
                  f"{r['gflops_fwd_per_img']:9.4f} GFLOP/img {r['memory_accounted_mib']:9.1f} MiB "
                  f"({r['memory_vs_random']:+.2%} vs random)")
    if args.part in ("timing", "all"):
        rows = [r for preset, batch in jobs for r in timing_rows(preset, batch, device, args.rounds, args.steps)]
        written.append(write(rows, f"timing_{device.type}", out, device, args))
        for r in rows:
            print(f"{r['preset']:<24}{r['mask']:<8}{r['source']:<8}{r['step_ms']:9.1f} ms  x{r['time_vs_random']:.3f}")
    for path in written:
        print("wrote", path, "and", path.with_suffix(".json"))
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
