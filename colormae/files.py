"""Files that never tear: atomic writes, JSON / CSV / torch files, directory locks, repository paths.

The lowest layer of the package: it imports nothing from colormae."""
from __future__ import annotations

import contextlib
import csv
import errno
import json
import math
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

# the repository root (relative paths in configs and notebook parameters are taken from here)
ROOT = Path(__file__).resolve().parents[1]


class OutputError(OSError):
    """A file could not be written for a reason the user fixes outside the program (disk full,
    read-only folder, a file where a folder should be); the message says what to do."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()  # the message alone, not "[Errno 28] ..."


class DiskFullError(OutputError):
    pass


# what torch.save's zip writer raises when the OS refuses the bytes (disk full, file size limit)
_TORCH_WRITE_FAILED = ("unexpected pos", "file write failed", "PytorchStreamWriter failed writing")


def output_error(err: BaseException, path: str | os.PathLike) -> OutputError | None:
    """The clear error for a failed write of ``path`` (None: not one of the known causes).

    ENOSPC / EFBIG and torch's zip-writer failures (``[enforce fail at inline_container.cc]
    unexpected pos``, its form of a short write) are a full disk (or a file size limit); EROFS /
    EACCES an output folder that cannot be written; EEXIST / ENOTDIR a file where a folder is needed."""
    path = Path(path)
    code = getattr(err, "errno", None)
    torch_short_write = isinstance(err, RuntimeError) and any(m in str(err) for m in _TORCH_WRITE_FAILED)
    if code in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) or torch_short_write:
        try:
            free = f"{shutil.disk_usage(path.parent if path.parent.exists() else '.').free} bytes free"
        except OSError:
            free = "free space unknown"
        return DiskFullError(errno.ENOSPC, f"the disk is full: could not write {path} ({free}; or a file size "
                             "limit was reached). Free space or choose another --output-dir, then resume with "
                             "--resume auto")
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return OutputError(code, f"cannot write {path}: {os.strerror(code)}. Choose a writable --output-dir "
                           "(relative paths are taken from the repository root)")
    if code in (errno.EEXIST, errno.ENOTDIR):
        return OutputError(code, f"cannot write {path}: a file stands where a folder is needed "
                           f"({os.strerror(code)}). Choose another --output-dir or move that file")
    return None


def make_dirs(path: str | os.PathLike) -> Path:
    """``mkdir -p`` with the clear errors of ``output_error`` (an --output-dir that is a file, a
    read-only file system)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(errno.EEXIST, f"{path} is a file, not a folder: choose another --output-dir or move "
                          "the file")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        mapped = output_error(e, path / ".")
        if mapped is None:
            raise
        raise mapped from e
    return path


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
    make_dirs(path.parent)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; checkpoints get normal permissions
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        mapped = output_error(e, path) if isinstance(e, (OSError, RuntimeError)) else None
        if mapped is not None and not isinstance(e, OutputError):
            raise mapped from e
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
    """The JSON in ``path``; ValueError naming the file when it is not JSON (a torn or hand-edited record)."""
    path = Path(path)
    text = path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}): restore it (git checkout / a backup) or delete it "
                         "to recompute what it records") from None


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


def project_path(path: str | os.PathLike) -> Path:
    """Relative paths are taken from the repository root, so a notebook writes to the same place
    whether papermill runs it from the root (``papermill notebooks/01_pretrain.ipynb out.ipynb``) or
    JupyterLab runs it from ``notebooks/``. Absolute paths are kept."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else ROOT / path


# -- committed records ------------------------------------------------------------------------------
# A notebook run from a fresh clone must not rewrite what is committed under results/ and
# paper_figures/: it writes into the same path under LOCAL_RECORDS (git-ignored) and compares.

LOCAL_RECORDS = ROOT / "results" / "local"
# keys whose values change from one identical computation to the next (timings, machine facts)
VOLATILE_KEYS = ("environment", "wall_time_s", "session_wall_time_s", "images_per_s", "img_per_s",
                 "peak_memory_bytes", "extract_time_s", "eval_time_s", "train_time_s")
RECORD_RTOL = 1e-4  # numbers that agree this closely reproduce the record (BLAS order moves them ~1e-6)
_UNCOMPARED = (".pdf",)  # vector twins of compared PNGs (fonts and layout metadata differ by version)


def committed_files(path: str | os.PathLike) -> list[str] | None:
    """The files git tracks at or under ``path``, repository-relative ([] when ``path`` lies outside
    the repository); None when git cannot tell (no git, not a checkout, an index being rewritten:
    tried twice), which ``record_dir`` treats as "maybe committed"."""
    rel = repo_relative(path)
    if rel is None or Path(rel).is_absolute():
        return []
    for _ in range(2):
        try:
            out = subprocess.run(["git", "ls-files", "-z", "--", rel], cwd=ROOT, capture_output=True, text=True,
                                 timeout=120)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0:
            return [name for name in out.stdout.split("\0") if name]
        time.sleep(1)
    return None


def local_mirror(path: str | os.PathLike) -> Path:
    """``path``'s place under ``LOCAL_RECORDS`` (results/x -> results/local/x)."""
    rel = Path(repo_relative(path))
    if rel.is_absolute():
        raise ValueError(f"{path} is outside the repository {ROOT}: it has no local mirror")
    if rel.parts[:1] == ("results",):
        rel = Path(*rel.parts[1:])
    return LOCAL_RECORDS / rel


def record_dir(path: str | os.PathLike, update: bool = False) -> Path:
    """Where a notebook writes what belongs in folder ``path``: ``path`` itself when ``update`` or
    when git tracks nothing under it; else its ``local_mirror`` (the committed files stay as they are)."""
    path = project_path(path)
    if update:
        return path
    committed = committed_files(path)
    if committed is None:  # git cannot tell: whatever the folder holds is treated as a record
        committed = [f for f in path.rglob("*") if f.is_file()] if path.is_dir() else []
    return local_mirror(path) if committed else path


def committed_spelling(text: str) -> str:
    """Paths into ``LOCAL_RECORDS`` spelled as the committed paths they mirror (``local_mirror``)."""
    local = repo_relative(LOCAL_RECORDS)
    return text.replace(f"{local}/paper_figures", "paper_figures").replace(f"{local}/", "results/")


def _normalize(value: Any) -> Any:
    """A record without its volatile keys, paths into the local mirror spelled as the committed ones."""
    if isinstance(value, dict):
        return {k: _normalize(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [_normalize(v) for v in value]
    if isinstance(value, str):
        return committed_spelling(value)
    return value


def _number(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _differences(new: Any, old: Any, where: str, out: list[str]) -> None:
    """Append 'where: committed X, here Y' for each leaf of ``old`` that ``new`` does not reproduce."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            at = f"{where}.{key}" if where else str(key)
            if key not in new:
                out.append(f"{at}: committed {_short(old[key])}, here missing")
            elif key not in old:
                out.append(f"{at}: not in the committed record, here {_short(new[key])}")
            else:
                _differences(new[key], old[key], at, out)
        return
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            out.append(f"{where}: committed {len(old)} entries, here {len(new)}")
            return
        for i, (a, b) in enumerate(zip(new, old)):
            _differences(a, b, f"{where}[{i}]", out)
        return
    a, b = _number(new), _number(old)
    if a is not None and b is not None and not isinstance(new, bool) and not isinstance(old, bool):
        if a == b or (math.isfinite(a) and math.isfinite(b) and abs(a - b) <= RECORD_RTOL * max(abs(a), abs(b))):
            return
        out.append(f"{where}: committed {_short(old)}, here {_short(new)}")
    elif new != old:
        out.append(f"{where}: committed {_short(old)}, here {_short(new)}")


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    text = json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _read_record(path: Path) -> Any:
    if path.suffix == ".json":
        return json.loads(path.read_text())
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return list(csv.reader(f))
    if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("RGBA"))
        return {"size": list(pixels.shape), "pixels": pixels.tobytes()}
    return path.read_text()


def compare_records(written: str | os.PathLike, committed: str | os.PathLike,
                    since: float | None = None) -> tuple[int, list[str]]:
    """(files compared, differences): each file git tracks under folder ``committed`` that folder
    ``written`` also holds (same relative path), compared as a record: JSON / JSONL / CSV leaf by
    leaf (numbers to ``RECORD_RTOL``; timings and machine facts, ``VOLATILE_KEYS``, left out; paths
    into ``written`` read as paths into ``committed``), images pixel by pixel, other text exactly.
    PDFs are not compared (the PNG twin is). ``since``: only files written at or after this time
    (``time.time()``), e.g. by one notebook run into a mirror other runs also write to."""
    written, committed = project_path(written), project_path(committed)
    count, diffs = 0, []
    for name in committed_files(committed) or []:
        rel = (ROOT / name).relative_to(committed)
        new_path = written / rel
        if new_path.suffix.lower() in _UNCOMPARED or not new_path.is_file():
            continue
        if since is not None and new_path.stat().st_mtime < since:
            continue
        count += 1
        found: list[str] = []
        new, old = _read_record(new_path), _read_record(ROOT / name)
        if isinstance(old, dict) and "pixels" in old:
            if new != old:
                found.append("the image differs")
        else:
            _differences(_normalize(new), _normalize(old), "", found)
        diffs += [f"{rel}: {d}" if d else str(rel) for d in found[:3]]
        if len(found) > 3:
            diffs.append(f"{rel}: ... and {len(found) - 3} more")
    return count, diffs
