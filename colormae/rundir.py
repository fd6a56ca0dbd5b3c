"""A run directory is one experiment. This module owns its files and the rules that keep it so.

    config.json        the run's configuration (written at start)
    metrics.jsonl      one JSON record per logged step (+ tensorboard/)
    checkpoint-last.pth  everything an exact resume needs; written atomically
    checkpoint-NNNN.pth  optional numbered snapshots
    encoder.pth        pretraining: the encoder as stock-timm weights, when the run finished
    summary.json       config, environment, timings and results (finished or not)
    run.lock           the pid and host of the one process writing here

Rules (``open_run``): a fresh run never replaces an existing one (``overwrite`` must say so); a
resumed run must have the same experiment config (only non-experiment knobs and a larger epoch
count may differ); a finished run is reported, not re-run; one writer at a time.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch

from .config import differences, experiment_fields, path_fields
from .runtime import ROOT, project_path

log = logging.getLogger(__name__)

CONFIG, SUMMARY, METRICS, LAST, ENCODER, LOCK, TENSORBOARD = (
    "config.json", "summary.json", "metrics.jsonl", "checkpoint-last.pth", "encoder.pth", "run.lock", "tensorboard")
RUN_FILES = (CONFIG, SUMMARY, METRICS, LAST, ENCODER)
# epochs may grow on resume (extending a schedule); every other experiment field must match
GROWABLE = ("epochs",)


class DiskFullError(OSError):
    pass


# -- atomic files ------------------------------------------------------------------------------

@contextlib.contextmanager
def locked_dir(path: str | os.PathLike):
    """Hold an exclusive advisory lock on directory ``path`` (created if missing): processes that
    read-modify-write a shared file in it (a grid's grid.json) take turns. POSIX ``flock`` on the
    directory itself, so no lock file is left behind; where ``fcntl`` is missing (Windows) it does
    not lock."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield path
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` into a temp file beside ``path``, then rename: readers and crashes never see
    half a file. Temp files are named ``.<name>.*.tmp`` (``RunDir.clean_temp_files`` removes
    those left by a killed process)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; checkpoints get normal permissions
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            raise DiskFullError(errno.ENOSPC, f"the disk is full: could not write {path} "
                                f"({shutil.disk_usage(path.parent).free} bytes free)") from e
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def write_csv(rows: list[dict], columns: list[str], path: str | os.PathLike) -> Path:
    """A table (one dict per row, in ``columns`` order), written atomically."""
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    return atomic_write(path, write)


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n"))


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def repo_relative(path: str | os.PathLike | None) -> str | None:
    """A path as stored in committed results: relative to the repository when inside it (relative
    inputs are taken from the repository root, as ``project_path`` does)."""
    if path is None:
        return None
    p = project_path(path)
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


# -- checkpoints ---------------------------------------------------------------------------------

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


# -- metrics -------------------------------------------------------------------------------------

def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl file (or of ``<run dir>/metrics.jsonl``); a torn last line
    (a process killed mid-write) is ignored."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS
    records = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {i + 1} is not JSON") from None
    return records


class MetricLog:
    """Per-step metrics as JSONL (+ TensorBoard). On resume, records past the resumed step are cut
    (they belong to steps that will be recomputed) and a torn last line is truncated."""

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int | None = None, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS
        self.writer = None
        if not enabled:
            return
        if self.path.exists():
            text = self.path.read_text()
            records = read_metrics(self.path)
            if text and not text.endswith("\n"):
                log.warning("%s: the last line was torn (a killed write); truncating it", self.path)
            kept = [r for r in records if resume_step is not None and r["step"] <= resume_step]
            atomic_write(self.path, lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in kept)))
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(Path(run_dir) / TENSORBOARD))

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


# -- the run directory ---------------------------------------------------------------------------

class RunInUseError(RuntimeError):
    pass


class RunDir:
    """File names, lock, and load/save of one run directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = project_path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def last_checkpoint(self) -> Path:
        return self.path / LAST

    def holds_run(self) -> list[str]:
        """The run files present (empty: nothing to protect)."""
        return [n for n in RUN_FILES if (self.path / n).exists()]

    def read_config(self) -> dict | None:
        p = self.path / CONFIG
        return read_json(p) if p.exists() else None

    def read_summary(self) -> dict | None:
        p = self.path / SUMMARY
        return read_json(p) if p.exists() else None

    def write_config(self, cfg) -> Path:
        return write_json(config_record(cfg), self.path / CONFIG)

    def write_summary(self, summary: dict) -> Path:
        return write_json(summary, self.path / SUMMARY)

    def save(self, state: dict, name: str = LAST) -> Path:
        return save_torch(state, self.path / name)

    def clean_temp_files(self) -> None:
        for tmp in self.path.glob(".*.tmp"):
            log.warning("removing %s, left by a killed write", tmp)
            tmp.unlink(missing_ok=True)

    def clear(self) -> None:
        """Delete the run's files (``overwrite``)."""
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        for snap in self.path.glob("checkpoint-*.pth"):
            snap.unlink()
        shutil.rmtree(self.path / TENSORBOARD, ignore_errors=True)

    # one writer at a time ----------------------------------------------------------------------
    def acquire_lock(self) -> None:
        """Create ``run.lock`` (pid, host) exclusively; take over a stale one left by a dead process
        on this host; RunInUseError if a live process (or one on another host) holds it."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock = self.path / LOCK
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    owner = json.loads(lock.read_text() or "{}")
                except (OSError, json.JSONDecodeError):
                    owner = {}
                if owner.get("host") == me["host"] and not _alive(owner.get("pid")):
                    log.warning("taking over the stale lock %s of process %s (no longer running)", lock,
                                owner.get("pid"))
                    lock.unlink(missing_ok=True)
                    continue
                raise RunInUseError(
                    f"run directory {self.path} is in use by process {owner.get('pid')} on host "
                    f"{owner.get('host')} since {owner.get('since')} ({lock}). Wait for it, or choose another "
                    f"--output-dir; if that process is dead on another host, delete the lock file.") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return
        raise RunInUseError(f"could not take the lock {lock}")

    def release_lock(self) -> None:
        lock = self.path / LOCK
        try:
            if json.loads(lock.read_text()).get("pid") == os.getpid():
                lock.unlink()
        except (OSError, json.JSONDecodeError):
            pass


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def config_record(cfg) -> dict:
    """The config as stored (config.json, checkpoints, summaries): path fields relative to the
    repository, so committed results hold no machine paths and compare across checkouts."""
    record = asdict(cfg)
    for name in path_fields(type(cfg)):
        if record[name] is not None and record[name] != "auto":
            record[name] = repo_relative(record[name])
    return record


def check_same_experiment(saved: dict, cfg, where: str | os.PathLike) -> None:
    """ValueError listing every experiment field of ``cfg`` that differs from the ``saved`` config
    (epochs may grow), with how to proceed."""
    names = experiment_fields(type(cfg))
    new = config_record(cfg)
    saved = {**saved, **{n: repo_relative(saved[n]) for n in path_fields(type(cfg)) if saved.get(n) is not None}}
    diffs = [(n, a, b) for n, a, b in differences(saved, new, names)
             if not (n in GROWABLE and isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > a)]
    if diffs:
        listed = "; ".join(f"{n}: {a!r} -> {b!r}" for n, a, b in diffs)
        raise ValueError(f"{where} was run with another experiment config ({listed}). A run directory holds one "
                         "experiment: choose a new --output-dir, or pass --overwrite (without --resume) to "
                         "replace it.")


def resolve_resume(cfg, run_dir: RunDir) -> Path | None:
    """The checkpoint to resume from (None: fresh start), after the rules in the module docstring."""
    present = run_dir.holds_run()
    if cfg.resume is None:
        if present and not cfg.overwrite:
            raise FileExistsError(
                f"{run_dir.path} already holds a run ({', '.join(present)}). Pass --resume auto to continue "
                "it, --overwrite to replace it, or choose another --output-dir.")
        return None
    if cfg.resume == "auto":
        path = run_dir.last_checkpoint if run_dir.last_checkpoint.exists() else None
    else:
        path = project_path(cfg.resume)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path} (from resume={cfg.resume!r})")
    saved = run_dir.read_config()
    if saved is not None:
        check_same_experiment(saved, cfg, run_dir.path)
    return path


def finished_summary(cfg, run_dir: RunDir) -> dict | None:
    """The summary of a finished run with the same experiment and epoch count, else None.

    A finished run whose files are gone (weights are git-ignored: a fresh clone has summaries
    without checkpoints) is not finished for this purpose: it is computed again, the same
    experiment, so its consumers (notebooks, evaluations) find what they need."""
    summary = run_dir.read_summary()
    if cfg.resume is None or not summary or not summary.get("finished"):
        return None
    if summary.get("config", {}).get("epochs") != getattr(cfg, "epochs", None):
        return None  # epochs grew: the run goes on
    needed = summary.get("artifacts", [LAST] if "total_steps" in summary else [])
    missing = [name for name in needed if not run_dir.file(name).exists()]
    if missing:
        log.warning("%s finished, but %s are missing (weights are not committed): computing the run again",
                    run_dir.path, ", ".join(missing))
        return None
    return summary


# -- loading what runs produced --------------------------------------------------------------

def load_mae(path: str | os.PathLike):
    """A pretrained MAE from a run directory (its checkpoint-last.pth) or a checkpoint file, in eval mode."""
    from .model import mae_from_checkpoint
    path = project_path(path)
    if path.is_dir():
        path = path / LAST
    return mae_from_checkpoint(load_checkpoint(path, required=("model", "mae_config"))).eval()


def _is_export(obj) -> bool:
    return isinstance(obj, dict) and all(k in obj for k in ("state_dict", "timm_name", "timm_kwargs"))


def load_encoder(path: str | os.PathLike, *, allow_unfinished: bool = False) -> dict:
    """The export dict of an encoder (see ``model.export_encoder``) from any of:

    * a pretraining run directory: its ``encoder.pth`` (written when the run finished); an
      unfinished run's ``checkpoint-last.pth`` only with ``allow_unfinished=True``,
    * an ``encoder.pth`` export,
    * a pretraining checkpoint (``checkpoint-*.pth``): the MAE is rebuilt and exported,
    * a compact fp16 MAE (``weights.save_compact``, committed for the grid's seed-0 runs): exported in fp32.
    """
    from .model import export_encoder, mae_from_checkpoint
    path = project_path(path)
    if path.is_dir():
        if (path / ENCODER).is_file():
            path = path / ENCODER
        elif (path / LAST).is_file():
            summary = RunDir(path).read_summary() or {}
            if not allow_unfinished:
                raise ValueError(
                    f"run {path} has no {ENCODER}: it is unfinished ({summary.get('epochs_done', '?')} of "
                    f"{summary.get('config', {}).get('epochs', '?')} epochs). Finish it with --resume auto, or "
                    f"pass its checkpoint explicitly ({path / LAST}) to evaluate it as it is.")
            log.warning("%s is unfinished: evaluating its %s", path, LAST)
            path = path / LAST
        else:
            raise FileNotFoundError(f"no encoder in run directory {path}: neither {ENCODER} nor {LAST}")
    if not path.is_file():
        raise FileNotFoundError(f"encoder not found: {path}")
    obj = load_checkpoint(path, required=())  # ValueError on corrupt / non-dict files
    if _is_export(obj):
        return obj
    from .weights import FORMAT as COMPACT, load_compact  # weights imports this module: imported here
    if obj.get("format") == COMPACT:
        return export_encoder(load_compact(path))
    if "model" in obj and "mae_config" in obj:
        return export_encoder(mae_from_checkpoint(obj))
    raise ValueError(f"{path} is neither an encoder export (keys state_dict, timm_name, timm_kwargs) nor a "
                     f"pretraining checkpoint (keys model, mae_config); it has keys {sorted(obj)[:10]}")
