"""MAE pretraining with any data-independent mask. CLI: ``colormae pretrain`` or
``torchrun --nproc_per_node N -m colormae pretrain``.

Defaults pretrain the 64-px CPU preset on the embedded photographs with green masks. The paper's
setting (MAE's recipe: norm-pix loss comes with the paper presets; masks cropped from a noise bank)
on 8 GPUs, effective batch 4096::

    torchrun --nproc_per_node 8 -m colormae pretrain --preset mae_vit_base_patch16 --dataset imagefolder \\
        --data-root /imagenet --epochs 800 --batch-size 256 --accum-iter 2 --blr 1.5e-4 --warmup-epochs 40 \\
        --mask green --mask-source bank --device cuda --num-workers 10 --output-dir results/pretrain/vitb_green
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass

import torch
from timm.optim import create_optimizer_v2

from ..data import datasets as data_lib
from ..data.loaders import train_loader
from ..data.memory import TrainAugment
from ..files import project_path, save_torch
from ..masks.maskers import COLORS, KINDS, SOURCES, Masker, make_masker
from ..masks.noise import color_params
from ..masks.schedule import masker_for_epoch, parse_mask_params, parse_mask_schedule
from ..models.backbone import encoder_width_tokens
from ..models.mae import PRESETS, MaskedAutoencoder, export_encoder, get_config
from ..run.config import EngineConfig, check_choice, check_positive, compile_knob, compile_mode_knob, knob
from ..run.pretrained import init_from_pretrained
from ..run.rundir import ENCODER, LAST
from ..run.scaffold import adamw_impl, adamw_options, compile_model, cosine_schedule, start_run
from ..runtime import autocast, grad_scaler, wrap_ddp

log = logging.getLogger(__name__)


@dataclass
class PretrainConfig(EngineConfig):
    preset: str = knob("mae_vit_tiny_patch4_64", "model preset (colormae.models.mae.PRESETS)", choices=tuple(PRESETS),
                       group="model")
    init_from: str | None = knob(None, "warm start: initialise the model from these weights (any format "
                                 "colormae.load_pretrained reads: MAE, official ColorMAE, timm, Hugging Face, our "
                                 "runs); "
                                 "position embeddings resampled to the preset's grid. A resumed run keeps its own "
                                 "weights", group="model", path=True)
    norm_pix_loss: bool | None = knob(None, "per-patch normalized pixel target (MAE's recipe). Default: the "
                                      "preset's (paper presets on; CPU presets off, for viewable reconstructions)",
                                      group="model")
    mask: str = knob("green", f"a kind ({', '.join(KINDS)}) or a schedule such as 'green,blue@200' (switch kind "
                     "at epoch 200)", group="masking")
    mask_ratio: float = knob(0.75, "fraction of patches masked", group="masking")
    mask_source: str = knob("online", "color kinds: 'online' (noise filtered every call) or 'bank' (windows "
                            "cropped from precomputed patterns, the paper's way)", choices=SOURCES, group="masking")
    bank_file: str | None = knob(None, "with --mask-source bank: read the bank from this .npz (ours, or an official "
                                 "ColorMAE bank such as green_noise_data_3072.npz: one array [N, H, W], highest "
                                 "values kept) instead of generating one", group="masking", path=True)
    mask_params: str = knob("", "color filter parameters overriding colormae.masks.noise.DEFAULT_PARAMS, e.g. "
                            "'sigma1=0.5,sigma2=1.0' for green (the band sweep); empty: the defaults",
                            group="masking")
    dataset_length: int | None = knob(None, "embedded dataset: crops per epoch (default 2048); others: an evenly "
                                      "spaced subset", group="data")
    epochs: int = knob(8, "pretraining epochs (may grow when resuming)", group="optimization")
    batch_size: int = knob(64, "per process", group="optimization")
    accum_iter: int = knob(1, "gradient accumulation steps per optimizer step", group="optimization")
    # 4e-3 suits the small CPU presets at batch 64 (lr 1e-3); the paper's ViT-B uses 1.5e-4 at 4096
    blr: float = knob(4e-3, "base lr: lr = blr x effective batch / 256", group="optimization")
    min_lr: float = knob(0.0, "cosine schedule floor", group="optimization")
    weight_decay: float = knob(0.05, "AdamW weight decay", group="optimization")
    warmup_epochs: float = knob(1.0, "linear warmup epochs", group="optimization")
    compile: bool = compile_knob()
    compile_mode: str = compile_mode_knob()
    output_dir: str = knob("results/pretrain/default", "the run directory (relative paths: from the repository "
                           "root)", experiment=False, path=True)








def build_maskers(cfg: PretrainConfig, grid: int, device) -> list[tuple[int, Masker]]:
    maskers = []
    params = parse_mask_params(cfg.mask_params)
    for start, kind in parse_mask_schedule(cfg.mask):
        source = cfg.mask_source if kind in COLORS else "online"
        if source == "bank" and cfg.bank_file:
            maskers.append((start, make_masker(kind, grid, cfg.mask_ratio, source=source, device=device,
                                               bank=project_path(cfg.bank_file))))
            continue
        maskers.append((start, make_masker(kind, grid, cfg.mask_ratio, source=source, device=device,
                                           **(params if kind in COLORS else {}))))
    return maskers


def validate(cfg: PretrainConfig) -> None:
    """Everything checkable before data or model are touched (the shared fields: engine.Run)."""
    check_choice("preset", cfg.preset, tuple(PRESETS))
    check_choice("mask_source", cfg.mask_source, SOURCES)
    check_positive(cfg, "epochs", "batch_size", "accum_iter", "dataset_length", "blr")
    check_positive(cfg, "weight_decay", "warmup_epochs", "min_lr", allow_zero=("weight_decay", "warmup_epochs",
                                                                               "min_lr"))
    if not 0 < cfg.mask_ratio < 1:
        raise ValueError(f"mask_ratio={cfg.mask_ratio} must be in (0, 1)")
    schedule = parse_mask_schedule(cfg.mask)
    params = parse_mask_params(cfg.mask_params)
    if cfg.bank_file is not None:
        colors = {kind for _, kind in schedule if kind in COLORS}
        if cfg.mask_source != "bank" or len(colors) != 1:
            raise ValueError(f"bank_file={cfg.bank_file!r} needs mask_source='bank' (got {cfg.mask_source!r}) and "
                             f"one color in mask (got {cfg.mask!r}): a bank holds one color")
        if params:
            raise ValueError(f"bank_file and mask_params={cfg.mask_params!r} contradict each other: a bank file "
                             "fixes its patterns")
        if not project_path(cfg.bank_file).is_file():
            raise FileNotFoundError(f"noise bank not found: {project_path(cfg.bank_file)} "
                                    f"(bank_file={cfg.bank_file!r})")
    if cfg.init_from is not None and not project_path(cfg.init_from).exists():
        raise FileNotFoundError(f"weights not found: {project_path(cfg.init_from)} (init_from={cfg.init_from!r})")
    if params:
        colors = [kind for _, kind in schedule if kind in COLORS]
        if not colors:
            raise ValueError(f"mask_params={cfg.mask_params!r} applies to color masks, but mask={cfg.mask!r} has none")
        for kind in colors:
            color_params(kind, **params)  # names and sigma order, e.g. sigma1 < sigma2
    if schedule[-1][0] >= cfg.epochs:
        raise ValueError(f"mask={cfg.mask!r} switches at epoch {schedule[-1][0]}, but the run has epochs={cfg.epochs} "
                         f"(epochs 0 to {cfg.epochs - 1}): the switch would never happen")


def run(cfg: PretrainConfig) -> dict:
    """Pretrain; returns (and writes) the run summary."""
    validate(cfg)
    with start_run(cfg, "pretrain") as r:
        if r.finished is not None:
            return r.finished
        info, device = r.info, r.device
        mcfg = get_config(cfg.preset, **({} if cfg.norm_pix_loss is None else {"norm_pix_loss": cfg.norm_pix_loss}))
        maskers = build_maskers(cfg, mcfg.grid, device)

        # data first: a missing path fails here, before the model is built
        sampler, loader, dataset, pipeline = train_loader(
            cfg, info, device, cfg.batch_size, img_size=mcfg.img_size, labeled=False, length=cfg.dataset_length,
            files_transform=data_lib.pretrain_transform(mcfg.img_size), batch_augment=TrainAugment(mcfg.img_size))
        global_batch = cfg.batch_size * info.world_size
        batches_per_epoch = len(dataset) // global_batch
        steps_per_epoch = batches_per_epoch // cfg.accum_iter
        if steps_per_epoch < 1:
            raise ValueError(f"batch_size={cfg.batch_size} x accum_iter={cfg.accum_iter} x {info.world_size} "
                             f"processes exceeds the dataset ({len(dataset)} samples): no optimizer step per epoch")
        total_steps = steps_per_epoch * cfg.epochs

        torch.manual_seed(cfg.seed)  # model init
        model = MaskedAutoencoder(mcfg)
        init = None
        if cfg.init_from is not None and r.resume_from is None:  # a fresh start only: a resume keeps its weights
            init = init_from_pretrained(model, project_path(cfg.init_from))
        model = model.to(device)
        eff_batch = global_batch * cfg.accum_iter
        lr = cfg.blr * eff_batch / 256
        optimizer = create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95),
                                        **adamw_options(device))
        scheduler = cosine_schedule(optimizer, total_steps, int(cfg.warmup_epochs * steps_per_epoch), cfg.min_lr)
        # the precision, resolved once for the encoder's kept tokens (and recorded)
        amp = r.precision(encoder_width_tokens(model, maskers[0][1].n_keep))
        scaler = grad_scaler(amp, device)
        # the same mask seed on every rank: each rank draws the global batch's masks and takes its slice
        mask_gen = torch.Generator().manual_seed(cfg.seed + 1)

        step, epoch, batch_in_epoch, _ = r.restore(("mae_config",), model, optimizer, scaler, mask_gen)
        ddp_model = wrap_ddp(model, info, device)
        forward = compile_model(ddp_model, cfg.compile, cfg.compile_mode)  # forward + loss
        r.start_logging(cfg, step, total_steps, "pretrain")

        def state() -> dict:
            return r.training_state(model, optimizer, scaler, step, epoch, batch_in_epoch, mask_gen,
                                    mae_config=asdict(mcfg))

        local, stop = cfg.batch_size, False
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
                with no_sync, autocast(amp, device):
                    loss, _, _ = forward(imgs, (mask[sl], ids_keep[sl], ids_restore[sl]))
                r.check_loss(loss, epoch, step)
                scaler.scale(loss / cfg.accum_iter).backward()
                batch_in_epoch += 1
                if not boundary:
                    continue
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                scheduler.step_update(num_updates=step)
                r.log_step(step, epoch + batch_in_epoch / batches_per_epoch, loss, optimizer.param_groups[0]["lr"],
                           imgs.shape[0] * info.world_size * cfg.accum_iter, mask=masker.kind)
                if r.should_stop(step):
                    stop = True
                    break
                if batch_in_epoch >= steps_per_epoch * cfg.accum_iter:
                    break  # the tail that cannot fill an optimizer step is dropped
                if r.checkpoint_due():
                    r.save(state)
            if not stop:
                epoch, batch_in_epoch = epoch + 1, 0
                r.end_epoch(epoch, step, state, datasets=(dataset,))
        finished = epoch >= cfg.epochs
        if stop:
            r.save(state)
        if info.is_main and finished:
            save_torch(export_encoder(model), r.dir.file(ENCODER))

        summary = r.summary_base(
            total_steps, step, finished, artifacts=(LAST, ENCODER), pipeline=pipeline, mae_config=asdict(mcfg),
            effective_batch=eff_batch, accum_iter=cfg.accum_iter, lr=lr, adamw=adamw_impl(device),
            compile=cfg.compile_mode if cfg.compile else "off",
            epochs_done=epoch + batch_in_epoch / batches_per_epoch, masks=[m.describe() for _, m in maskers],
            num_params=sum(p.numel() for p in model.parameters()), skipped_images=data_lib.skipped_images(dataset),
            **({"init_from": init} if init is not None else {}))
        return r.finish(summary)


CONFIG = PretrainConfig  # the engine's config: colormae.engines.launch builds its command line from it
