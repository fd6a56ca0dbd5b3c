"""What every training engine shares: distributed set-up, seeded data order, atomic checkpoints,
RNG capture, metric logs and run summaries. Plain functions; no trainer class."""
from __future__ import annotations

import json
import logging
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]


def project_path(path: str | os.PathLike) -> Path:
    """Relative paths are taken from the repository root, so a notebook writes to the same place
    whether papermill runs it from the root (``papermill notebooks/01_pretrain.ipynb out.ipynb``) or
    JupyterLab runs it from ``notebooks/``. Absolute paths are kept."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else ROOT / path


# -- distributed ------------------------------------------------------------------------------

@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> DistInfo:
    """Join the process group torchrun set up (NCCL on CUDA, gloo on CPU); single process otherwise."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return info


def setup_device(device: str) -> tuple[DistInfo, torch.device]:
    """Join torchrun's process group (if any) and pick this process's device."""
    wants_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    info = init_distributed("cuda" if wants_cuda else "cpu")
    return info, resolve_device(device, info)


def wrap_ddp(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` under torchrun; the model itself otherwise."""
    if info.world_size == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def mean_across_ranks(x: torch.Tensor, info: DistInfo) -> float:
    """A scalar tensor averaged over all processes (the loss every rank logs)."""
    if info.world_size > 1:
        x = x.clone()
        dist.all_reduce(x)
        x /= info.world_size
    return float(x.item())


def add_engine_args(parser, defaults) -> None:
    """The flags every engine shares (run bookkeeping), with ``defaults`` from its config dataclass."""
    d = defaults
    parser.add_argument("--amp", default=d.amp, help=f"one of {AMP_MODES}")
    parser.add_argument("--output-dir", default=d.output_dir)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--resume", default=d.resume, help="checkpoint path, or 'auto' (<output-dir>/checkpoint-last.pth)")
    parser.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--max-steps", type=int, default=d.max_steps, help="stop after this many optimizer steps")
    parser.add_argument("--num-workers", type=int, default=d.num_workers)
    parser.add_argument("--skip-corrupt", action="store_true", help="skip (and count) unreadable images")
    parser.add_argument("--log-every", type=int, default=d.log_every)


def cli_main(run, config) -> dict:
    """What every engine's ``main`` does: log to stderr, turn expected errors into a clean exit
    (message, status 2) and always leave the process group."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return run(config)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        log.error("%s", e)
        raise SystemExit(2) from e
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def resolve_device(device: str, info: DistInfo) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but CUDA is not available; use device='cpu'")
        if device == "cuda":
            device = f"cuda:{info.local_rank}"
        torch.cuda.set_device(torch.device(device))
    elif device != "cpu":
        raise ValueError(f"device={device!r}; allowed values: auto, cpu, cuda, cuda:N")
    return torch.device(device)


# -- mixed precision -------------------------------------------------------------------------

AMP_MODES = ("bf16", "fp16", "none")


def autocast(amp: str, device: torch.device):
    """bf16 / fp16 autocast on ``device`` (CPU or CUDA), or a no-op for "none"."""
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=amp in ("bf16", "fp16"))


def grad_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 only (bf16 has fp32's range); disabled scalers are pass-throughs."""
    return torch.amp.GradScaler(device.type, enabled=(amp == "fp16"))


# -- seeded data order --------------------------------------------------------------------------

def sample_seed(seed: int, epoch: int, position: int) -> int:
    """Per-sample augmentation seed: depends on nothing but (run seed, epoch, place in the epoch)."""
    return (seed * 1_000_003 + epoch * 7_919 + position * 104_729) % (2 ** 31 - 1)


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Yields this rank's share of each *global* batch as (index, augmentation seed) pairs.

    The global order is a seeded permutation per epoch and rank r takes the r-th contiguous slice
    of every global batch, so N processes see exactly the samples (and augmentations) that one
    process sees with the same global batch. ``start_batch`` skips batches already trained on
    (exact mid-epoch resume).
    """

    def __init__(self, length: int, global_batch: int, info: DistInfo, seed: int):
        if length < global_batch:
            raise ValueError(f"the dataset has {length} samples, fewer than one global batch ({global_batch})")
        self.length, self.global_batch, self.info, self.seed = length, global_batch, info, seed
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.length // self.global_batch - self.start_batch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 9973 + self.epoch)
        order = torch.randperm(self.length, generator=g).tolist()
        local = self.global_batch // self.info.world_size
        for b in range(self.start_batch, self.length // self.global_batch):
            start = b * self.global_batch + self.info.rank * local
            yield [(order[p], sample_seed(self.seed, self.epoch, p)) for p in range(start, start + local)]


class SeededSamples(torch.utils.data.Dataset):
    """Applies each sample's seed before loading it, so augmentation ignores workers and resumes.

    torch, python and numpy are all seeded: torchvision draws with torch, timm's RandAugment picks
    its operations with numpy and python's ``random``."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        return self.dataset[index]


# -- checkpoints --------------------------------------------------------------------------------

def atomic_torch_save(obj, path: str | os.PathLike) -> Path:
    """Write to a temp file in the same folder, then rename: a crash never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, required: tuple[str, ...] = ("model",)) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, pickle garbage, ...
        raise ValueError(f"checkpoint {path} is corrupt or not a torch checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in required):
        raise ValueError(f"checkpoint {path} is not a ColorMAE checkpoint: needs keys {list(required)}")
    return ckpt


def resume_path(resume: str | None, out_dir: Path) -> Path | None:
    """What ``--resume`` points at: a checkpoint path, or "auto" = ``out_dir/checkpoint-last.pth``
    when that exists. None means a fresh run."""
    if resume == "auto":
        last = Path(out_dir) / "checkpoint-last.pth"
        return last if last.exists() else None
    return Path(resume) if resume else None


TRAINING_STATE_KEYS = ("model", "optimizer", "scaler", "step", "epoch", "batch_in_epoch", "rng")


def training_state(model, optimizer, scaler, step: int, epoch: int, batch_in_epoch: int,
                   mask_generator: torch.Generator | None = None, **extra) -> dict:
    """Everything an exact resume needs (weights, optimizer, loss scaler, position, every RNG),
    plus the engine's own ``extra`` entries (config, ...)."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "rng": rng_state(mask_generator),
            **extra}


def restore_training_state(ckpt: dict, path, model, optimizer, scaler,
                           mask_generator: torch.Generator | None = None) -> tuple[int, int, int]:
    """Load a ``training_state`` into the live objects; returns (step, epoch, batch_in_epoch)."""
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise ValueError(f"checkpoint {path} does not fit this model: {e}") from e
    optimizer.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"], mask_generator)
    log.info("resumed from %s at epoch %d, step %d", path, ckpt["epoch"], ckpt["step"])
    return ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]


def rng_state(mask_generator: torch.Generator | None = None) -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if mask_generator is not None:
        state["mask_generator"] = mask_generator.get_state()
    return state


def set_rng_state(state: dict, mask_generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if mask_generator is not None and "mask_generator" in state:
        mask_generator.set_state(state["mask_generator"])


# -- logs and summaries ----------------------------------------------------------------------

class MetricLog:
    """Per-step metrics as JSONL (+ TensorBoard). On resume, lines past the resumed step are cut."""

    def __init__(self, out_dir: Path, enabled: bool, resume_step: int | None = None, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self.writer = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            kept = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln)["step"] <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        elif self.path.exists():
            self.path.unlink()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(Path(out_dir) / "tensorboard"))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl file (or of ``<run dir>/metrics.jsonl``)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment_info(device: torch.device) -> dict:
    import timm
    from . import __version__
    info = {"python": sys.version.split()[0], "torch": torch.__version__, "timm": timm.__version__,
            "colormae": __version__, "numpy": np.__version__, "platform": platform.platform(),
            "device": str(device), "git_sha": git_sha(), "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    else:
        info["device_name"] = platform.processor() or platform.machine()
    return info


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def write_json(obj: dict, path: str | os.PathLike) -> Path:
    """Atomic JSON write (summaries are read by notebooks while runs go on)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)
    return path


def progress(iterable=None, **kwargs):
    """tqdm bar refreshed every ``$COLORMAE_PROGRESS_SECONDS`` seconds (default 2): notebooks set a
    long interval so their saved outputs hold a few progress lines, not hundreds."""
    from tqdm import tqdm
    kwargs.setdefault("mininterval", float(os.environ.get("COLORMAE_PROGRESS_SECONDS", "2")))
    return tqdm(iterable, **kwargs)


class Timer:
    def __init__(self):
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start
