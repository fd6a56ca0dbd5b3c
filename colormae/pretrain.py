"""MAE pretraining with any data-independent mask. CLI: ``python -m colormae.pretrain`` or
``torchrun --nproc_per_node N -m colormae.pretrain``.

Defaults pretrain the 64-px CPU preset on the embedded photographs with green masks. The paper's
setting is ``--preset mae_vit_base_patch16 --dataset imagefolder --data-root /imagenet
--epochs 800 --batch-size 256 --accum-iter 2 --blr 1.5e-4 --warmup-epochs 40 --mask green
--device cuda --num-workers 10``
on 8 GPUs (effective batch 4096).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

from . import data as data_lib
from .masking import KINDS, Masker, make_masker
from .model import MaskedAutoencoder, export_encoder, get_config
from .runtime import (AMP_MODES, TRAINING_STATE_KEYS, GlobalBatchSampler, MetricLog, SeededSamples, Timer,
                      add_engine_args, atomic_torch_save, autocast, cli_main, environment_info, grad_scaler,
                      load_checkpoint, mean_across_ranks, peak_memory_bytes, progress, restore_training_state,
                      resume_path, setup_device, training_state, wrap_ddp, write_json)

log = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    preset: str = "mae_vit_tiny_patch4_64"
    mask: str = "green"  # a kind, or a schedule "green,blue@200" (switch kind at epoch 200)
    mask_ratio: float = 0.75
    mask_source: str = "online"  # color kinds: "online" or "bank"
    dataset: str = "embedded"
    data_root: str | None = None
    dataset_length: int | None = None  # embedded dataset only: number of crops per epoch
    epochs: int = 8
    batch_size: int = 64  # per process
    accum_iter: int = 1
    # 4e-3 suits the small CPU presets at batch 64 (lr 1e-3); the paper's ViT-B uses 1.5e-4 at 4096
    blr: float = 4e-3
    min_lr: float = 0.0
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    norm_pix_loss: bool = False
    amp: str = "bf16"
    output_dir: str = "results/pretrain/default"
    seed: int = 0
    resume: str | None = None  # path, or "auto" = <output_dir>/checkpoint-last.pth if present
    device: str = "auto"
    max_steps: int | None = None
    save_every: int = 1  # epochs
    num_workers: int = 0
    skip_corrupt: bool = False
    log_every: int = 10


def parse_mask_schedule(spec: str) -> list[tuple[int, str]]:
    """"green" -> [(0, "green")]; "green,blue@200" -> [(0, "green"), (200, "blue")]."""
    schedule = []
    for i, part in enumerate(s.strip() for s in spec.split(",")):
        kind, _, start = part.partition("@")
        start_epoch = int(start) if start else 0
        if kind not in KINDS:
            raise ValueError(f"mask={spec!r}: kind {kind!r} is not supported; allowed values: {', '.join(KINDS)}")
        if (i == 0) != (start_epoch == 0) or (schedule and start_epoch <= schedule[-1][0]):
            raise ValueError(f"mask={spec!r}: the first kind starts at epoch 0 and later ones at increasing epochs, "
                             "e.g. 'green,blue@200'")
        schedule.append((start_epoch, kind))
    return schedule


def masker_for_epoch(maskers: list[tuple[int, Masker]], epoch: int) -> Masker:
    return [m for start, m in maskers if start <= epoch][-1]


def build_maskers(cfg: PretrainConfig, grid: int, device) -> list[tuple[int, Masker]]:
    maskers = []
    for start, kind in parse_mask_schedule(cfg.mask):
        source = cfg.mask_source if kind in ("white", "red", "blue", "green", "purple") else "online"
        maskers.append((start, make_masker(kind, grid, cfg.mask_ratio, source=source, device=device)))
    return maskers


def validate(cfg: PretrainConfig) -> None:
    """Everything checkable before data or model are touched."""
    if cfg.amp not in AMP_MODES:
        raise ValueError(f"amp={cfg.amp!r}; allowed values: {', '.join(AMP_MODES)}")
    for name in ("epochs", "batch_size", "accum_iter"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name}={getattr(cfg, name)} must be >= 1")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise ValueError(f"max_steps={cfg.max_steps} must be >= 1")
    get_config(cfg.preset)
    parse_mask_schedule(cfg.mask)


def train(cfg: PretrainConfig) -> dict:
    """Pretrain; returns (and writes) the run summary."""
    validate(cfg)
    info, device = setup_device(cfg.device)
    out = Path(cfg.output_dir)
    mcfg = get_config(cfg.preset, norm_pix_loss=cfg.norm_pix_loss)
    maskers = build_maskers(cfg, mcfg.grid, device)

    # data first: a missing path fails here, before the model is built
    dataset = data_lib.build_dataset(cfg.dataset, cfg.data_root, "train", data_lib.pretrain_transform(mcfg.img_size),
                                     labeled=False, skip_corrupt=cfg.skip_corrupt, length=cfg.dataset_length,
                                     img_size=mcfg.img_size)
    global_batch = cfg.batch_size * info.world_size
    sampler = GlobalBatchSampler(len(dataset), global_batch, info, cfg.seed)
    loader = torch.utils.data.DataLoader(SeededSamples(dataset), batch_sampler=sampler, num_workers=cfg.num_workers,
                                         pin_memory=device.type == "cuda")
    batches_per_epoch = len(dataset) // global_batch
    steps_per_epoch = batches_per_epoch // cfg.accum_iter
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size={cfg.batch_size} x accum_iter={cfg.accum_iter} x {info.world_size} processes "
                         f"exceeds the dataset ({len(dataset)} samples): no optimizer step per epoch")
    total_steps = steps_per_epoch * cfg.epochs

    torch.manual_seed(cfg.seed)  # model init
    model = MaskedAutoencoder(mcfg).to(device)
    eff_batch = global_batch * cfg.accum_iter
    lr = cfg.blr * eff_batch / 256
    optimizer = create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    scheduler = CosineLRScheduler(optimizer, t_initial=total_steps, lr_min=cfg.min_lr, warmup_lr_init=0.0,
                                  warmup_t=int(cfg.warmup_epochs * steps_per_epoch), t_in_epochs=False)
    scaler = grad_scaler(cfg.amp, device)
    # the same mask seed on every rank: each rank draws the global batch's masks and takes its slice
    mask_gen = torch.Generator().manual_seed(cfg.seed + 1)

    step, epoch, batch_in_epoch = 0, 0, 0
    resume = resume_path(cfg.resume, out)
    if resume is not None:
        ckpt = load_checkpoint(resume, required=TRAINING_STATE_KEYS + ("config",))
        if ckpt["config"]["preset"] != cfg.preset:
            raise ValueError(f"checkpoint {resume} is preset {ckpt['config']['preset']!r}, not {cfg.preset!r}")
        step, epoch, batch_in_epoch = restore_training_state(ckpt, resume, model, optimizer, scaler, mask_gen)
    ddp_model = wrap_ddp(model, info, device)

    metrics = MetricLog(out, info.is_main, resume_step=step if resume is not None else None)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(asdict(cfg), out / "config.json")

    def save(name: str) -> None:
        if info.is_main:
            atomic_torch_save(training_state(model, optimizer, scaler, step, epoch, batch_in_epoch, mask_gen,
                                             config=asdict(cfg), mae_config=asdict(mcfg)), out / name)

    timer, images_seen, last_loss, stop = Timer(), 0, float("nan"), False
    bar = progress(total=total_steps, initial=step, disable=not info.is_main, desc="pretrain")
    local = cfg.batch_size
    while epoch < cfg.epochs and not stop:
        masker = masker_for_epoch(maskers, epoch)
        sampler.set_epoch(epoch, batch_in_epoch)
        model.train()
        for imgs in loader:
            imgs = (imgs[0] if isinstance(imgs, (list, tuple)) else imgs).to(device, non_blocking=True)
            mask, ids_keep, ids_restore = masker(global_batch, generator=mask_gen, device=device)
            sl = slice(info.rank * local, (info.rank + 1) * local)
            boundary = (batch_in_epoch + 1) % cfg.accum_iter == 0
            # DDP decides in forward whether backward all-reduces: skip it on accumulation micro-steps
            no_sync = ddp_model.no_sync() if (ddp_model is not model and not boundary) else contextlib.nullcontext()
            with no_sync, autocast(cfg.amp, device):
                loss, _, _ = ddp_model(imgs, (mask[sl], ids_keep[sl], ids_restore[sl]))
            if not math.isfinite(loss.item()):
                bar.close()
                raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}, step {step}: stopping. The last "
                                         f"good checkpoint is {out / 'checkpoint-last.pth'}; try a lower --blr "
                                         "or --amp none")
            scaler.scale(loss / cfg.accum_iter).backward()
            batch_in_epoch += 1
            images_seen += imgs.shape[0] * info.world_size
            if not boundary:
                continue
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            scheduler.step_update(num_updates=step)
            last_loss = mean_across_ranks(loss.detach(), info)
            bar.update(1)
            if info.is_main and (step % cfg.log_every == 0 or step == 1):
                rate = images_seen / timer.elapsed
                metrics.write({"step": step, "epoch": epoch + batch_in_epoch / batches_per_epoch, "loss": last_loss,
                               "lr": optimizer.param_groups[0]["lr"], "img_per_s": rate, "mask": masker.kind})
                bar.set_postfix(loss=f"{last_loss:.4f}", img_s=f"{rate:.0f}", refresh=False)
            if cfg.max_steps is not None and step >= cfg.max_steps:
                stop = True
                break
            if batch_in_epoch >= steps_per_epoch * cfg.accum_iter:
                break  # the tail that cannot fill an optimizer step is dropped
        if not stop:
            epoch, batch_in_epoch = epoch + 1, 0
            if epoch % cfg.save_every == 0 or epoch == cfg.epochs:
                save("checkpoint-last.pth")
                if epoch % cfg.save_every == 0 and cfg.save_every > 1:
                    save(f"checkpoint-{epoch:04d}.pth")
    bar.close()
    if stop:
        save("checkpoint-last.pth")
    if info.is_main and epoch >= cfg.epochs:
        atomic_torch_save(export_encoder(model), out / "encoder.pth")

    summary = {"config": asdict(cfg), "mae_config": asdict(mcfg), "environment": environment_info(device),
               "world_size": info.world_size, "effective_batch": eff_batch, "lr": lr,
               "steps": step, "total_steps": total_steps, "epochs_done": epoch + batch_in_epoch / batches_per_epoch,
               "finished": epoch >= cfg.epochs, "final_loss": last_loss,
               "wall_time_s": timer.elapsed, "images_per_s": images_seen / max(timer.elapsed, 1e-9),
               "peak_memory_bytes": peak_memory_bytes(device), "masks": [m.describe() for _, m in maskers],
               "num_params": sum(p.numel() for p in model.parameters()),
               "skipped_images": data_lib.skipped_images(dataset)}
    if info.is_main:
        write_json(summary, out / "summary.json")
    metrics.close()
    return summary


def build_parser() -> argparse.ArgumentParser:
    d = PretrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=d.preset, help="model preset (colormae.model.PRESETS)")
    p.add_argument("--mask", default=d.mask, help=f"kind ({', '.join(KINDS)}) or schedule like 'green,blue@200'")
    p.add_argument("--mask-ratio", type=float, default=d.mask_ratio)
    p.add_argument("--mask-source", default=d.mask_source, choices=("online", "bank"))
    p.add_argument("--dataset", default=d.dataset, help="embedded, cifar10 or imagefolder")
    p.add_argument("--data-root", default=d.data_root)
    p.add_argument("--dataset-length", type=int, default=d.dataset_length)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="per process")
    p.add_argument("--accum-iter", type=int, default=d.accum_iter)
    p.add_argument("--blr", type=float, default=d.blr, help="lr = blr * effective batch / 256")
    p.add_argument("--min-lr", type=float, default=d.min_lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    p.add_argument("--norm-pix-loss", action="store_true")
    p.add_argument("--save-every", type=int, default=d.save_every, help="epochs between numbered checkpoints")
    add_engine_args(p, d)
    return p


def config_from_args(argv: list[str] | None = None) -> PretrainConfig:
    args = build_parser().parse_args(argv)
    return PretrainConfig(**{k: v for k, v in vars(args).items()})


def main(argv: list[str] | None = None) -> dict:
    return cli_main(train, config_from_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
