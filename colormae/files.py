"""Files that never tear: atomic writes, JSON / CSV / torch files, directory locks, repository paths.

The lowest layer of the package: it imports nothing from colormae."""
from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

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
