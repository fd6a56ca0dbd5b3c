"""The scaffold every training engine shares, as helpers around an explicit loop (no Trainer class).

An engine's ``run(cfg)`` reads top to bottom::

    with start_run(cfg, "pretrain") as run:          # device, DDP, run dir rules, lock, signals
        if run.finished is not None: return run.finished
        ... data, model, optimizer ...
        step, epoch, batch, _ = run.restore(required_keys, model, optimizer, scaler)   # resume (or zeros)
        while epoch < cfg.epochs:
            for batch in loader:
                ... forward, backward ...
                run.check_loss(loss, epoch, step)         # queued on the device: non-finite / exploding stops
                ... optimizer step ...
                run.log_step(step, epoch_float, loss, lr, n_images)   # reads the queue every --log-every steps
                if run.should_stop(step): break           # max_steps, SIGTERM/SIGINT
                if run.checkpoint_due(): run.save(state)     # every --checkpoint-minutes
            run.end_epoch(epoch, step, state)             # checkpoint-last + numbered snapshots
        return run.finish(run.summary_base(total_steps, step, finished, **results))

No host sync per step: the losses stay on the device until ``Run.read_losses`` reads them, at every
``--log-every`` step, at epoch ends, before every checkpoint and before evaluations (one transfer; under
DDP one all-reduce, which also carries the ranks' agreement on a signal and on a checkpoint by the
clock). A non-finite or exploding loss therefore stops the run up to ``log_every`` steps after it
happened, with the error naming that step. The optimizer steps between it and the read are applied
in memory (the weights may already be NaN) and then discarded: every checkpoint write reads the
queue first and also checks the weights themselves for finiteness, so no checkpoint ever holds a
step at or after the bad loss. (Skipping the step on the device would need the optimizer's
found-inf path; stopping at the read keeps the optimizer untouched.)
"""
from __future__ import annotations

import logging
import math
import signal
import statistics
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from timm.scheduler import CosineLRScheduler

from ..data import datasets as data_lib
from ..files import OutputError, load_checkpoint, repo_relative
from ..runtime import (
    Timer,
    environment_info,
    peak_memory_bytes,
    progress,
    resolve_amp,
    rng_state,
    set_rng_state,
    setup_device,
)
from .config import check_common
from .rundir import (
    LAST,
    MetricLog,
    RunDir,
    RunInUseError,
    check_inputs,
    check_same_experiment,
    config_record,
    finished_summary,
    recorded_precision,
    resolve_resume,
)

log = logging.getLogger(__name__)
TRAINING_STATE_KEYS = ("model", "optimizer", "scaler", "step", "epoch", "batch_in_epoch", "rng", "config")
# a loss this many times the running median of recent steps is an explosion, stopped before NaN
EXPLOSION_FACTOR = 100.0
EXPLOSION_WINDOW = 50
# queued losses read at the latest after this many entries, whatever --log-every says (bounded memory)
MAX_QUEUED_LOSSES = 1024


class RunInterrupted(Exception):
    """SIGTERM / SIGINT arrived; a checkpoint was written at a step boundary."""


class Run:
    """What a training loop needs from its surroundings; see the module docstring."""

    def __init__(self, cfg, engine: str):
        check_common(cfg)
        self.cfg, self.engine = cfg, engine
        self.info, self.device = setup_device(cfg.device)
        self.dir = RunDir(cfg.output_dir)
        self.finished: dict | None = None
        self._locked = False
        self.resume_from: Path | None = None
        self.metrics: MetricLog | None = None
        self.timer = Timer()
        self.bar = None
        self._signal = None
        self._old_handlers: dict = {}
        self._recent: deque = deque(maxlen=EXPLOSION_WINDOW)
        # on the device until read_losses: (epoch, step, loss) per checked loss; (step, epoch, loss, lr,
        # extra) per optimizer step
        self._checks: list[tuple[int, int, torch.Tensor]] = []
        self._steps: list[tuple[int, float, torch.Tensor, float, dict]] = []
        self._step = 0
        # under DDP: (step, signal anywhere, rank 0's checkpoint clock due) agreed at the last read
        self._agreed: tuple[int, bool, bool] = (-1, False, False)
        self._bad_median: float | None = None  # the running median an exploding loss was compared with
        self._last_checkpoint_time = time.monotonic()
        # progress carried across resumes: wall time and images of every earlier session
        self.elapsed_before, self.images_before, self.images_seen = 0.0, 0, 0
        self.epoch_loss_sum, self.epoch_loss_count, self.last_epoch_loss = 0.0, 0, None
        self.last_batch_loss = float("nan")
        self.amp: str | None = None  # the precision computed in, once resolved (``precision``)

    # -- opening and closing ---------------------------------------------------------------------
    def __enter__(self) -> "Run":
        try:
            check_inputs(self.cfg)
            # a finished run is reported without the lock (a read-only copy of results can be read)
            self.resume_from = resolve_resume(self.cfg, self.dir)  # config mismatch: ValueError here
            self.finished = finished_summary(self.cfg, self.dir)
            if self.finished is not None:
                log.info("%s is already finished: nothing to do; summary %s", self.dir.path,
                         self.dir.file("summary.json"))
                return self
            if self.info.is_main:
                self.dir.acquire_lock()
                self._locked = True
            self.resume_from = resolve_resume(self.cfg, self.dir)  # again under the lock
            if self.info.is_main:
                if self.cfg.overwrite and self.dir.holds_run():
                    self.dir.clear_before_first_write()
                self.dir.clean_temp_files()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self._install_signal_handlers()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.metrics is not None:
            self.metrics.close()
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        if self.info.is_main and self._locked:
            self.dir.release_lock()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        def handler(signum, frame):
            self._signal = signum
            log.warning("%s received: stopping at the next step boundary with a checkpoint",
                        signal.Signals(signum).name)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old_handlers[sig] = signal.signal(sig, handler)

    def start_logging(self, cfg_to_save, step: int, total_steps: int, desc: str) -> None:
        """config.json, metrics (cut at the resumed step) and the progress bar."""
        if self.info.is_main:
            self.dir.write_config(cfg_to_save)
        self.metrics = MetricLog(self.dir.path, self.info.is_main, resume_step=step)
        self.timer = Timer()  # wall time and img/s count the loop, not data and model set-up
        self.bar = progress(total=total_steps, initial=step, disable=not self.info.is_main, desc=desc)

    # -- precision -------------------------------------------------------------------------------
    def precision(self, width_tokens: int | None) -> str:
        """The precision this run computes in ("bf16", "fp16" or "none"), resolved once after the
        engine built its model: an explicit ``amp`` as given; "auto" as the run recorded it when it
        continues one (checkpoint, else summary: "auto" never changes a recorded run's precision),
        else ``runtime.resolve_amp`` for the encoder's ``width_tokens`` (``models.backbone.
        encoder_width_tokens``). Recorded in checkpoints and the summary."""
        amp = resolve_amp(self.cfg.amp, self.device, width_tokens)
        recorded = None if self.cfg.overwrite else recorded_precision(self.dir, self.resume_from)
        if self.cfg.amp == "auto" and recorded is not None:
            if recorded != amp:
                log.info("amp auto: %s computed in %s, and continues in it (auto would choose %s for a new run "
                         "here)", self.dir.path, recorded, amp)
            amp = recorded
        self.amp = amp
        return amp

    # -- resume ------------------------------------------------------------------------------------
    def restore(self, required: tuple[str, ...], model, optimizer, scaler,
                mask_generator: torch.Generator | None = None) -> tuple[int, int, int, dict | None]:
        """Load the resume checkpoint into the live objects: (step, epoch, batch_in_epoch, ckpt), or
        zeros and None for a fresh run."""
        if self.resume_from is None:
            return 0, 0, 0, None
        path = self.resume_from
        ckpt = load_checkpoint(path, required=TRAINING_STATE_KEYS + tuple(required))
        check_same_experiment(ckpt["config"], self.cfg, path, recorded_amp=ckpt.get("amp") or self.amp)
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            raise ValueError(f"checkpoint {path} does not fit this model: {e}") from e
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"], mask_generator)
        prog = ckpt.get("progress", {})
        self.elapsed_before, self.images_before = prog.get("wall_time_s", 0.0), prog.get("images_seen", 0)
        self.epoch_loss_sum, self.epoch_loss_count = prog.get("epoch_loss_sum", 0.0), prog.get("epoch_loss_count", 0)
        self.last_epoch_loss = prog.get("last_epoch_loss")
        log.info("resumed from %s at epoch %d, step %d", path, ckpt["epoch"], ckpt["step"])
        return ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"], ckpt

    def training_state(self, model, optimizer, scaler, step: int, epoch: int, batch_in_epoch: int,
                       mask_generator: torch.Generator | None = None, **extra) -> dict:
        """Everything an exact resume needs (weights, optimizer, loss scaler, position, every RNG,
        progress counters, the config), plus the engine's own ``extra`` entries."""
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "rng": rng_state(mask_generator),
                "config": config_record(self.cfg), "amp": self.amp, "progress": self.progress_state(), **extra}

    def progress_state(self) -> dict:
        return {"wall_time_s": self.wall_time_s, "images_seen": self.images_before + self.images_seen,
                "epoch_loss_sum": self.epoch_loss_sum, "epoch_loss_count": self.epoch_loss_count,
                "last_epoch_loss": self.last_epoch_loss}

    @property
    def wall_time_s(self) -> float:
        """Wall time over every session of this run (resumes add up)."""
        return self.elapsed_before + self.timer.elapsed

    @property
    def images_per_s(self) -> float:
        return (self.images_before + self.images_seen) / max(self.wall_time_s, 1e-9)

    # -- inside the loop ---------------------------------------------------------------------------
    def optimizer_step(self, loss: torch.Tensor, epoch: int, step: int, optimizer, scaler) -> None:
        """One optimizer step of the fine-tuning engines: queue the loss for the guard, backward (fp16
        loss scaling when enabled), step, zero the gradients."""
        self.check_loss(loss, epoch, step)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    def check_loss(self, loss: torch.Tensor, epoch: int, step: int) -> None:
        """Queue ``loss`` (of the step after ``step``) for the guard: at the next read, a non-finite
        loss or one > EXPLOSION_FACTOR x the running median stops the run. No host sync here."""
        # a copy: a CUDA-graph replay (--compile-mode reduce-overhead) overwrites its outputs in place
        self._checks.append((epoch, step, loss.detach().clone()))

    def log_step(self, step: int, epoch: float, loss: torch.Tensor, lr: float, images: int, **extra) -> None:
        """After an optimizer step: queue the loss (averaged over ranks, added to the epoch mean at the
        read), count images, tick the progress bar; every ``log_every`` steps (and at step 1) read the
        queue and write a metrics record. ``extra`` values may be tensors: read only at those steps."""
        due = step % self.cfg.log_every == 0 or step == 1
        kept = {k: v.detach() if torch.is_tensor(v) else v for k, v in extra.items()} if due else {}
        self._steps.append((step, epoch, loss.detach().clone(), lr, kept))
        self._step = step
        self.images_seen += images
        self.bar.update(1)
        if due or len(self._checks) + len(self._steps) >= MAX_QUEUED_LOSSES:
            self.read_losses(at_step=step)

    def read_losses(self, at_step: int | None = None) -> None:
        """Read the queued losses (one transfer; under DDP one all-reduce): the guard, the epoch sums,
        the metrics records of the log steps among them. ``at_step``: a read every rank makes at this
        step of the loop, where the ranks also agree on a signal and on a checkpoint by the clock."""
        checks, steps, self._checks, self._steps = self._checks, self._steps, [], []
        if not checks and not steps:
            return
        n_checks = len(checks)
        values = torch.stack([t.float().reshape(()) for *_, t in checks] + [s[2].float().reshape(()) for s in steps])
        host = values.tolist()
        checked, logged = host[:n_checks], host[n_checks:]
        bad = self._first_bad(checked)
        if self.info.world_size > 1:
            due = self.info.is_main and self._clock_due()
            flags = torch.tensor([float(bad is not None), float(self._signal is not None), float(due)],
                                 device=values.device)
            shared = torch.cat([values[n_checks:], flags])
            dist.all_reduce(shared)
            shared[:len(steps)] /= self.info.world_size  # on the device, as a per-step mean over ranks divided
            reduced = shared.tolist()
            logged = reduced[:len(steps)]
            any_bad, signal_any, due_any = (x > 0 for x in reduced[len(steps):])
            if at_step is not None:
                self._agreed = (at_step, signal_any, due_any)
            if any_bad and bad is None:
                self._raise_loss(None, checks[0][0], checks[0][1], checks[-1][1])
        first_bad_step = None if bad is None else checks[bad][1]
        for (step, epoch, _, lr, extra), value in zip(steps, logged):
            if first_bad_step is not None and step > first_bad_step:
                break  # this step's update came after the bad loss
            self._add_step_loss(step, epoch, value, lr, extra)
        if bad is not None:
            self._raise_loss(checked[bad], checks[bad][0], checks[bad][1])

    def _first_bad(self, values: list[float]) -> int | None:
        """Index of the first non-finite or exploding loss in ``values`` (the running window keeps the
        good ones before it, as a check per step would)."""
        for i, value in enumerate(values):
            median = statistics.median(self._recent) if len(self._recent) >= 10 else None
            exploded = median is not None and median > 0 and value > EXPLOSION_FACTOR * median
            if not math.isfinite(value) or exploded:
                self._bad_median = median
                return i
            self._recent.append(value)
        return None

    def _add_step_loss(self, step: int, epoch: float, value: float, lr: float, extra: dict) -> None:
        self.last_batch_loss = value
        self.epoch_loss_sum += value
        self.epoch_loss_count += 1
        if self.info.is_main and (step % self.cfg.log_every == 0 or step == 1):
            rate = self.images_seen / max(self.timer.elapsed, 1e-9)
            extra = {k: v.item() if torch.is_tensor(v) else v for k, v in extra.items()}
            self.metrics.write({"step": step, "epoch": epoch, "loss": value, "lr": lr, "img_per_s": rate, **extra})
            self.bar.set_postfix(loss=f"{value:.4f}", img_s=f"{rate:.0f}", refresh=False)

    def _raise_loss(self, value: float | None, epoch: int, step: int, last_step: int | None = None) -> None:
        last = self.dir.last_checkpoint
        where = (f"The last good checkpoint is {last} (resume with --resume auto)" if last.exists()
                 else "No checkpoint exists yet")
        if value is None:
            what = f"another process had a non-finite or exploding loss between steps {step} and {last_step}"
        elif not math.isfinite(value):
            what = f"loss is {value}"
        else:
            what = (f"loss exploded to {value:.4g}, {value / self._bad_median:.0f}x the median of the last "
                    f"{len(self._recent)} steps")
        lr_flag = next((f"--{n.replace('_', '-')}" for n in ("blr", "lr") if hasattr(self.cfg, n)), None)
        fixes = " or ".join(([f"a lower {lr_flag}"] if lr_flag else []) + ["--amp none"])
        raise FloatingPointError(f"{what} at epoch {epoch}, step {step}: stopping. {where}; try {fixes}")

    def should_stop(self, step: int) -> bool:
        """max_steps reached, or a signal arrived. Under DDP the ranks agree on a signal at the reads
        (``read_losses``, every ``log_every`` steps), so every rank stops at the same step."""
        stop = self.cfg.max_steps is not None and step >= self.cfg.max_steps
        if self.info.world_size == 1:
            return stop or self._signal is not None
        return stop or (self._agreed[0] == step and self._agreed[1])

    def _clock_due(self) -> bool:
        minutes = self.cfg.checkpoint_minutes
        return minutes > 0 and time.monotonic() - self._last_checkpoint_time >= 60 * minutes

    def checkpoint_due(self) -> bool:
        """``--checkpoint-minutes`` passed since the last checkpoint-last; under DDP rank 0's clock
        decides, read with the losses (every ``log_every`` steps), so all ranks agree."""
        if self.info.world_size == 1:
            return self._clock_due()
        return self._agreed[0] == self._step and self._agreed[2]

    def save(self, state_fn: Callable[[], dict], name: str = LAST) -> None:
        """Write a checkpoint (rank 0); ``state_fn`` builds the state only where it is written. The
        queued losses are read first (a bad one raises: never saved), and weights that are not all
        finite are refused."""
        self.read_losses()
        if self.info.is_main:
            state = state_fn()
            check_finite_weights(state["model"], state["step"], self.dir.last_checkpoint)
            self.dir.save(state, name)
        if name == LAST:
            self._last_checkpoint_time = time.monotonic()

    def end_epoch(self, epoch_done: int, step: int, state_fn: Callable[[], dict], datasets=()) -> None:
        """After a full epoch: the epoch's mean loss, the corrupt-image ceiling, checkpoint-last and
        (every ``save_every`` epochs) a numbered snapshot."""
        self.read_losses()
        if self.epoch_loss_count:
            self.last_epoch_loss = self.epoch_loss_sum / self.epoch_loss_count
            if self.info.is_main:
                self.metrics.write({"step": step, "epoch": epoch_done, "epoch_loss": self.last_epoch_loss})
        self.epoch_loss_sum, self.epoch_loss_count = 0.0, 0
        data_lib.check_skipped(datasets)  # each dataset against its own corrupt-image ceiling
        self.save(state_fn)
        if self.cfg.save_every > 0 and epoch_done % self.cfg.save_every == 0:
            self.save(state_fn, f"checkpoint-{epoch_done:04d}.pth")

    # -- the end -----------------------------------------------------------------------------------
    def summary_base(self, total_steps: int, step: int, finished: bool, artifacts: tuple[str, ...] = (LAST,),
                     **extra) -> dict:
        """The summary fields every engine writes. ``final_loss`` is the mean training loss of the
        last full epoch (one batch is too noisy); ``last_batch_loss`` the last step's. ``artifacts``:
        the files a finished run must still hold to count as finished (see rundir.finished_summary)."""
        self.read_losses()
        amp = self.amp or resolve_amp(self.cfg.amp, self.device)  # resolved by ``precision`` in every engine
        return {"engine": self.engine, "config": config_record(self.cfg), "amp": amp,
                "environment": environment_info(self.device),
                "world_size": self.info.world_size, "steps": step, "total_steps": total_steps, "finished": finished,
                "final_loss": self.last_epoch_loss,
                "last_batch_loss": self.last_batch_loss if math.isfinite(self.last_batch_loss) else None,
                "artifacts": list(artifacts),
                "wall_time_s": self.wall_time_s, "images_per_s": self.images_per_s,
                "session_wall_time_s": self.timer.elapsed, "peak_memory_bytes": peak_memory_bytes(self.device),
                **extra}

    def finish(self, summary: dict) -> dict:
        if self.info.is_main:
            path = self.dir.write_summary(summary)
            state = "finished" if summary["finished"] else f"stopped at step {summary['steps']} (resumable)"
            loss = summary.get("final_loss")  # None before the first full epoch: left out, not "n/a"
            log.info("%s %s: %s%.0f img/s, %.0f s; summary %s", self.engine, state,
                     f"final loss (last-epoch mean) {loss:.4f}, " if loss is not None else "",
                     summary["images_per_s"], summary["wall_time_s"], repo_relative(path))
        if self._signal is not None and not summary["finished"]:
            raise RunInterrupted(f"{signal.Signals(self._signal).name}: stopped at step {summary['steps']} with a "
                                 f"checkpoint in {self.dir.last_checkpoint}; continue with --resume auto")
        return summary


def check_finite_weights(state_dict: dict, step: int, last: Path) -> None:
    """FloatingPointError naming the non-finite entries of ``state_dict`` (one host sync for all)."""
    floats = {k: v for k, v in state_dict.items() if torch.is_tensor(v) and v.is_floating_point()}
    if not floats or bool(torch.stack([v.isfinite().all() for v in floats.values()]).all()):
        return
    bad = [k for k, v in floats.items() if not bool(v.isfinite().all())]
    where = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint exists yet"
    raise FloatingPointError(f"non-finite weights at step {step} ({', '.join(bad[:5])}"
                             f"{', ...' if len(bad) > 5 else ''}): not saved; {where}; try --amp none or a lower lr")


def adamw_options(device: torch.device) -> dict:
    """Keyword arguments of AdamW (through timm's create_optimizer_v2, which passes them on): fused on
    CUDA (one kernel for all parameters; an fp16 GradScaler hands it found-inf without a host sync),
    multi-tensor foreach elsewhere (bit-identical to the per-parameter loop on CPU, measured)."""
    return {"fused": True} if device.type == "cuda" else {"foreach": True}


def compile_model(module: torch.nn.Module, enabled: bool, mode: str) -> torch.nn.Module:
    """``torch.compile(module)`` in ``mode`` (config.COMPILE_MODES) when ``enabled``; else ``module``.
    Call the result for forward + loss; save and evaluate the module itself (its own parameter names)."""
    if not enabled:
        return module
    return torch.compile(module, mode=None if mode == "default" else mode)


def adamw_impl(device: torch.device) -> str:
    """The AdamW implementation ``adamw_options`` picks, for summaries: 'fused' or 'foreach'."""
    return next(iter(adamw_options(device)))


def start_run(cfg, engine: str) -> Run:
    """Validate the shared fields, set up device / DDP and open the run directory (use with ``with``)."""
    return Run(cfg, engine)




def cosine_schedule(optimizer, total_steps: int, warmup_steps: int, min_lr: float) -> CosineLRScheduler:
    """MAE's per-step schedule (util/lr_sched.py): linear warmup from 0, then a half cosine from the
    base lr to ``min_lr`` over the remaining steps. timm's scheduler with ``warmup_prefix`` computes
    exactly that; without it, the cosine would already be decaying during warmup."""
    warmup_steps = min(warmup_steps, total_steps - 1)
    return CosineLRScheduler(optimizer, t_initial=total_steps - warmup_steps, lr_min=min_lr, warmup_lr_init=0.0,
                             warmup_t=warmup_steps, warmup_prefix=True, t_in_epochs=False)


def cli_main(run: Callable, cfg) -> dict:
    """What every engine's ``main`` does: log to stderr, turn expected errors into a clean exit
    (message, status 2; interrupted: 143) and always leave the process group."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return run(cfg)
    except RunInterrupted as e:
        log.error("%s", e)
        raise SystemExit(143) from e
    except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError, RunInUseError, OutputError,
            data_lib.CorruptImageError) as e:
        log.error("%s", e)
        raise SystemExit(2) from e
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
