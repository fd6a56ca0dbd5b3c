"""A run directory is one experiment. This module owns its files and the rules that keep it so.

    config.json        the run's configuration (written at start)
    metrics.jsonl      one JSON record per logged step (+ tensorboard/)
    checkpoint-last.pth  everything an exact resume needs; written atomically
    checkpoint-NNNN.pth  optional numbered snapshots
    encoder.pth        pretraining: the encoder as stock-timm weights, when the run finished
    summary.json       config, environment, timings and results (finished or not)
    run.lock           the pid and host of the one process writing here

Rules (``resolve_resume``, ``finished_summary``, ``RunDir.acquire_lock``): a fresh run never
replaces an existing one (``overwrite`` must say so); a resumed run must have the same experiment
config (only non-experiment knobs and a larger epoch count may differ); a finished run is
reported, not re-run; one writer at a time.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..files import (
    atomic_write,
    make_dirs,
    output_error,
    project_path,
    read_json,
    record_dir,
    repo_relative,
    save_torch,
    write_json,
)
from .config import differences, experiment_fields, path_fields

log = logging.getLogger(__name__)

CONFIG, SUMMARY, METRICS, LAST, ENCODER, LOCK, TENSORBOARD = (
    "config.json", "summary.json", "metrics.jsonl", "checkpoint-last.pth", "encoder.pth", "run.lock", "tensorboard")
RUN_FILES = (CONFIG, SUMMARY, METRICS, LAST, ENCODER)
# epochs may grow on resume (extending a schedule); every other experiment field must match
GROWABLE = ("epochs",)




# -- atomic files ------------------------------------------------------------------------------















# -- checkpoints ---------------------------------------------------------------------------------



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
        self._clear_pending = False  # overwrite: the old run goes when the new one writes its first file

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
        self._clear_if_pending()
        return write_json(config_record(cfg), self.path / CONFIG)

    def write_summary(self, summary: dict) -> Path:
        self._clear_if_pending()
        return write_json(summary, self.path / SUMMARY)

    def save(self, state: dict, name: str = LAST) -> Path:
        self._clear_if_pending()
        return save_torch(state, self.path / name)

    def clear_before_first_write(self) -> None:
        """``overwrite``: delete the old run when the new one writes its first file (config,
        checkpoint or summary), i.e. after the engine has loaded its encoder and data and built its
        model. A new run that fails before that leaves the old one as it was."""
        self._clear_pending = True

    def _clear_if_pending(self) -> None:
        if self._clear_pending:
            self._clear_pending = False
            if self.holds_run():
                log.warning("overwrite: deleting the run in %s", self.path)
                self.clear()

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
        on this host, or an empty / unparseable one (a write cut short); RunInUseError if a live
        process (or one on another host) holds it.

        The lock is written whole to a temp file and linked into place (``os.link`` fails if the
        name exists): it is never seen half written, and a full disk leaves no lock behind."""
        make_dirs(self.path)
        lock = self.path / LOCK
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        for _ in range(3):
            try:
                _link_new(lock, json.dumps(me))
            except FileExistsError:
                owner = _read_lock(lock)
                if owner == {}:
                    continue  # released between our try and the read
                if owner is None:
                    log.warning("taking over the lock %s: it is empty or unreadable (a write was cut short)", lock)
                    lock.unlink(missing_ok=True)
                    continue
                if owner.get("host") == me["host"] and not _alive(owner.get("pid")):
                    log.warning("taking over the stale lock %s of process %s (no longer running)", lock,
                                owner.get("pid"))
                    lock.unlink(missing_ok=True)
                    continue
                raise RunInUseError(
                    f"run directory {self.path} is in use by process {owner.get('pid')} on host "
                    f"{owner.get('host')} since {owner.get('since')} ({lock}). Wait for it, or choose another "
                    f"--output-dir; if that process is dead on another host, delete the lock file.") from None
            return
        raise RunInUseError(f"could not take the lock {lock}")

    def release_lock(self) -> None:
        lock = self.path / LOCK
        try:
            if json.loads(lock.read_text()).get("pid") == os.getpid():
                lock.unlink()
        except (OSError, json.JSONDecodeError):
            pass


def _link_new(path: Path, text: str) -> None:
    """Create ``path`` holding ``text``, atomically and exclusively (FileExistsError if it exists);
    write errors (disk full, read-only) as ``files.output_error``."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise (output_error(e, path) or e) from e
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError as e:
        raise (output_error(e, path) or e) from e
    finally:
        Path(tmp).unlink(missing_ok=True)


def _read_lock(lock: Path) -> dict | None:
    """The owner recorded in a lock file; None when it is empty or not a lock record (stale)."""
    try:
        owner = json.loads(lock.read_text())
    except FileNotFoundError:
        return {}  # released meanwhile: the next try takes it
    except (OSError, ValueError):
        return None
    if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int) or not owner.get("host"):
        return None
    return owner


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


def check_same_experiment(saved: dict, cfg, where: str | os.PathLike, growable: tuple[str, ...] = GROWABLE,
                          recorded_amp: str | None = None) -> None:
    """ValueError listing every experiment field of ``cfg`` that differs from the ``saved`` config
    (the ``growable`` ones, epochs, may grow: a resume extends the schedule), with how to proceed.
    ``recorded_amp``: the precision the run computed in (``recorded_precision``); an ``amp`` of "auto",
    saved or new, stands for it, so "auto" and the precision it resolved to are the same experiment."""
    names = experiment_fields(type(cfg))
    new = config_record(cfg)
    saved = {**saved, **{n: repo_relative(saved[n]) for n in path_fields(type(cfg)) if saved.get(n) is not None}}
    if recorded_amp is not None:
        saved, new = ({**d, "amp": recorded_amp} if d.get("amp") == "auto" else d for d in (saved, new))
    diffs = [(n, a, b) for n, a, b in differences(saved, new, names)
             if not (n in growable and isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > a)]
    if diffs:
        listed = "; ".join(f"{n}: {a!r} -> {b!r}" for n, a, b in diffs)
        raise ValueError(f"{where} was run with another experiment config ({listed}). A run directory holds one "
                         "experiment: choose a new --output-dir, or pass --overwrite (without --resume) to "
                         "replace it.")


def recorded_engine(path: str | os.PathLike) -> str | None:
    """What a run directory holds, from its own records: summary.json's ``engine`` (for the
    fine-tuning engine, its protocol), else "pretrain" or "transfer" from config.json's fields
    (transfer runs name an ``encoder``); None for no run."""
    run_dir = RunDir(path)
    summary = run_dir.read_summary() if run_dir.file(SUMMARY).is_file() else None
    if isinstance(summary, dict) and summary.get("engine"):
        return str(summary["engine"])
    saved = run_dir.read_config() if run_dir.file(CONFIG).is_file() else None
    if not isinstance(saved, dict):
        return None
    return "transfer" if "encoder" in saved else "pretrain" if "mask" in saved else "unknown"


def foreign_fields(saved: dict, cls: type) -> list[str]:
    """The fields of a saved config that config type ``cls`` does not have (a run of another
    engine); fields ``cls`` retired (``RETIRED_FIELDS``: configs written before they moved out)
    do not count."""
    own = {f.name for f in dataclasses.fields(cls)} | set(getattr(cls, "RETIRED_FIELDS", ())) | {"engine"}
    return sorted(set(saved) - own)


def check_same_engine(cfg, run_dir: RunDir) -> None:
    """ValueError when ``run_dir`` holds a run of another engine (its config.json has fields this
    engine's config lacks): neither --resume nor --overwrite may touch it."""
    saved = run_dir.read_config() if run_dir.file(CONFIG).is_file() else None
    if saved is None:
        summary = run_dir.read_summary() if run_dir.file(SUMMARY).is_file() else None
        saved = summary.get("config") if isinstance(summary, dict) else None
    if not isinstance(saved, dict):
        return
    foreign = foreign_fields(saved, type(cfg))
    if foreign:
        kind = recorded_engine(run_dir.path) or "another engine's"
        raise ValueError(f"{run_dir.path} holds a {kind} run (its config has {', '.join(foreign[:4])}, which "
                         f"{type(cfg).__name__} has not): --resume and --overwrite only continue or replace a "
                         "run of the same engine. Choose another --output-dir (or delete that run yourself).")


def check_inputs_outside(cfg, run_dir: RunDir) -> None:
    """ValueError when an input of ``cfg`` (a path field other than output_dir and resume: the
    encoder, the data) lies in ``run_dir``, the folder --overwrite would clear."""
    here = run_dir.path.resolve()
    for name in path_fields(type(cfg)):
        value = getattr(cfg, name)
        if name in ("output_dir", "resume") or value in (None, "auto"):
            continue
        p = project_path(value).resolve()
        if p == here or here in p.parents:
            raise ValueError(f"--{name.replace('_', '-')} {value} is in --output-dir {run_dir.path}, the folder "
                             "--overwrite would clear: the run would delete its own input. Choose another "
                             "--output-dir.")


def check_inputs(cfg) -> None:
    """Every input field (a knob with ``input=ENGINE``: a run directory of that engine or a file)
    exists and, when a run directory, holds a run of that engine: checked before the output folder
    is touched."""
    for f in dataclasses.fields(type(cfg)):
        want, value = f.metadata.get("input"), getattr(cfg, f.name)
        if want is None or value is None:
            continue
        flag = "--" + f.name.replace("_", "-")
        path = project_path(value)
        if not path.exists():
            raise FileNotFoundError(f"{flag} {value}: no such file or folder ({path})")
        if path.is_dir():
            kind = recorded_engine(path)
            if kind not in (None, want):
                raise ValueError(f"{flag} {value}: {path} is a {kind} run, not a {ENGINE_NOUNS.get(want, want)} run")


ENGINE_NOUNS = {"pretrain": "pretraining"}


def resolve_resume(cfg, run_dir: RunDir) -> Path | None:
    """The checkpoint to resume from (None: fresh start), after the rules in the module docstring."""
    present = run_dir.holds_run()
    if cfg.overwrite:
        check_inputs_outside(cfg, run_dir)
    if present:
        check_same_engine(cfg, run_dir)
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
        check_same_experiment(saved, cfg, run_dir.path, recorded_amp=recorded_precision(run_dir, path))
    return path


PRECISIONS = ("bf16", "fp16", "none")  # what "auto" resolves to (runtime.resolve_amp)


def checkpoint_precision(path: str | os.PathLike) -> str | None:
    """The precision a checkpoint's run computed in (its ``amp`` entry; None in checkpoints written
    before it was recorded). Memory-mapped: the weights are not read."""
    try:
        amp = torch.load(path, map_location="cpu", weights_only=False, mmap=True).get("amp")
    except Exception:  # a corrupt file: load_checkpoint names it when the run loads it
        return None
    return amp if amp in PRECISIONS else None


def recorded_precision(run_dir: RunDir, checkpoint: str | os.PathLike | None = None) -> str | None:
    """The precision the run in ``run_dir`` computed in, from its own records: the ``checkpoint`` it
    resumes from, else summary.json's ``amp`` (the resolved precision), else an explicit ``amp`` in
    config.json; None when nothing records it (no run, or an older run with "auto" and no summary)."""
    if checkpoint is not None and Path(checkpoint).is_file():
        amp = checkpoint_precision(checkpoint)
        if amp is not None:
            return amp
    summary = run_dir.read_summary() if run_dir.file(SUMMARY).is_file() else None
    if isinstance(summary, dict) and summary.get("amp") in PRECISIONS:
        return summary["amp"]
    saved = run_dir.read_config() if run_dir.file(CONFIG).is_file() else None
    amp = saved.get("amp") if isinstance(saved, dict) else None
    return amp if amp in PRECISIONS else None


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
        log.info("%s: weights are not committed; recomputing (≈ %s, as recorded)", repo_relative(run_dir.path),
                 _minutes(summary.get("wall_time_s")))
        return None
    return summary


def _minutes(seconds: float | None) -> str:
    return "unknown time" if seconds is None else f"{max(1, round(seconds / 60))} min"


def _summaries(path: Path) -> list[dict]:
    """The summaries of the run in ``path`` or of the runs one level below it."""
    files = [path / SUMMARY] if (path / SUMMARY).is_file() else sorted(path.glob(f"*/{SUMMARY}"))
    return [read_json(f) | {"_dir": f.parent} for f in files]


def run_location(path: str | os.PathLike, update: bool = False) -> Path:
    """The folder a notebook runs (or reads back) the run(s) of ``path`` in: ``path`` when ``update``,
    when git tracks nothing there, or when its runs are finished and hold their weights (a finished
    run is read, never rewritten); else (a fresh clone: weights are not committed) its local mirror,
    so recomputing leaves the committed record as it is (``files.record_dir``)."""
    path = project_path(path)
    local = record_dir(path, update)
    if local == path:
        return path
    summaries = _summaries(path)
    if summaries and all(s.get("finished") and all((s["_dir"] / a).exists() for a in s.get("artifacts", []))
                         for s in summaries):
        return path
    if summaries and not (local.is_dir() and _summaries(local)):
        log.info("%s: weights are not committed; recomputing in %s (≈ %s, as recorded); the committed record "
                 "stays as it is", repo_relative(path), repo_relative(local),
                 _minutes(sum(s.get("wall_time_s") or 0 for s in summaries)))
    return local


# -- loading what runs produced --------------------------------------------------------------





