"""The process's surroundings: device and DDP set-up, mixed precision, per-sample seeds, RNG
capture, environment facts (versions, git sha, whether the tree was dirty) and progress bars.

Repository paths and atomic files live in ``colormae.files``; run directories in
``colormae.run.rundir``; the training-loop scaffold in ``colormae.run.scaffold``."""
from __future__ import annotations

import logging
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import timm
import torch
import torch.distributed as dist

from .files import ROOT

log = logging.getLogger(__name__)
__version__ = "0.1.0"


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
    device_ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def mean_across_ranks(x: torch.Tensor, info: DistInfo) -> float:
    """A scalar tensor averaged over all processes (the loss every rank logs)."""
    if info.world_size > 1:
        x = x.clone()
        dist.all_reduce(x)
        x /= info.world_size
    return float(x.item())


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

def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX). Without it PyTorch emulates
    bf16 matmuls: measured 6x slower than fp32 on an AVX2 AMD EPYC, where a CPU with native bf16
    ran the same step 1.36x faster than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


# "auto" on a CPU with native bf16: bf16 only from this encoder width x tokens per image (the tokens
# the encoder processes: the kept ones when pretraining). Below it bf16 was measured slower than fp32
# (fwd + bwd + AdamW, 75 % masked, Intel Xeon with AMX, same process, 8 steps each): bf16/fp32 speed
# mini_patch4_32 (128 x 16 = 2,048) 0.74, nano_patch2_32 (96 x 64 = 6,144) 0.95, tiny_patch4_64
# (192 x 64 = 12,288) 1.29. The threshold lies between the last two (docs/runs.md, "Precision").
CPU_BF16_MIN_WIDTH_TOKENS = 8192


def resolve_amp(amp: str, device: torch.device, width_tokens: int | None = None) -> str:
    """The precision ``amp`` computes in: "bf16", "fp16" or "none" (fp32); explicit values unchanged.

    "auto": bf16 on CUDA; on a CPU, bf16 only with native bf16 (``cpu_has_native_bf16``) and an encoder
    of ``width_tokens`` (embedding width x tokens per image) >= ``CPU_BF16_MIN_WIDTH_TOKENS``, where
    bf16 is measured faster; fp32 otherwise, and when the size is not given. A run resolves once and
    records the result (``colormae.run.scaffold.Run.precision``): "auto" never changes a recorded run."""
    if amp != "auto":
        return amp
    if device.type == "cuda":
        return "bf16"
    fast = cpu_has_native_bf16() and width_tokens is not None and width_tokens >= CPU_BF16_MIN_WIDTH_TOKENS
    return "bf16" if fast else "none"


def autocast(amp: str, device: torch.device):
    """bf16 / fp16 autocast on ``device`` (CPU or CUDA), or a no-op for "none" ("auto": resolve_amp)."""
    amp = resolve_amp(amp, device)
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=amp in ("bf16", "fp16"))


def grad_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 only (bf16 has fp32's range); disabled scalers are pass-throughs."""
    return torch.amp.GradScaler(device.type, enabled=(resolve_amp(amp, device) == "fp16"))


# -- seeded data order --------------------------------------------------------------------------

def seed_step(seed: int, step: int, rank: int) -> None:
    """Seed torch, numpy and random from (seed, step, rank) alone before a training step: drop path,
    mixup and proposal sampling resume exactly, however many workers, evaluation loaders or other RNG
    consumers ran before this step."""
    s = (seed * 1_000_003 + step * 7_919 + rank * 104_729 + 17) % (2 ** 31 - 1)
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """Per-sample augmentation seed: depends on nothing but (run seed, epoch, place in the epoch)."""
    return (seed * 1_000_003 + epoch * 7_919 + position * 104_729) % (2 ** 31 - 1)






# -- RNG state ----------------------------------------------------------------------------------

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


# -- environment and progress --------------------------------------------------------------------

def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def git_dirty() -> bool | None:
    """Whether tracked files differ from the commit ``git_sha`` names (None outside a git checkout).
    Recorded, never refused: a summary says whether its numbers came from committed code."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def environment_info(device: torch.device) -> dict:
    info = {"python": sys.version.split()[0], "torch": torch.__version__, "timm": timm.__version__,
            "colormae": __version__, "numpy": np.__version__, "platform": platform.platform(),
            "device": str(device), "git_sha": git_sha(), "git_dirty": git_dirty(),
            "cpu_threads": torch.get_num_threads()}
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


class _StdoutHandler(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stdout`` is at the time (a notebook kernel swaps it)."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


class _ShortFormatter(logging.Formatter):
    """The message alone for INFO and below; ``WARNING: message`` (etc.) above. Paths inside the
    repository and beside it (../shared/data) are shown relative to it: saved notebook outputs hold
    no machine paths."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).replace(f"{ROOT}{os.sep}", "").replace(f"{ROOT.parent}{os.sep}", f"..{os.sep}")
        return text if record.levelno <= logging.INFO else f"{record.levelname}: {text}"


def notebook_logging(level: int | str = logging.INFO, logger: str = "colormae") -> None:
    """Notebook-friendly logging: ``logger``'s records (colormae's by default) at ``level`` and above go
    to stdout as short messages, not to stderr (which Jupyter shows in red boxes). Idempotent: a second
    call replaces the handler. Other libraries keep their own (root) handlers."""
    target = logging.getLogger(logger)
    for handler in list(target.handlers):
        if isinstance(handler, _StdoutHandler):
            target.removeHandler(handler)
    handler = _StdoutHandler()
    handler.setFormatter(_ShortFormatter("%(message)s"))
    target.addHandler(handler)
    target.setLevel(level)
    target.propagate = False  # not again through root's (stderr) handlers


def progress(iterable=None, **kwargs):
    """tqdm bar refreshed every ``$COLORMAE_PROGRESS_SECONDS`` seconds (default 2): notebooks set a
    long interval so their saved outputs hold a few progress lines, not hundreds."""
    from tqdm.auto import tqdm  # a widget bar inside a Jupyter kernel (ipywidgets), a text bar elsewhere
    kwargs.setdefault("mininterval", float(os.environ.get("COLORMAE_PROGRESS_SECONDS", "2")))
    return tqdm(iterable, **kwargs)


class Timer:
    def __init__(self):
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

