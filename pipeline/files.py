"""Atomic file writes and hashes: a reader never sees a half-written file.

Temporaries carry the writer's pid in their name (`.NAME.pid1234.XXXX.tmp`), so what a killed writer left
behind can be told from what a live one is still writing (`remove_stale_temporaries`).

A full disk (ENOSPC) or a spent quota (EDQUOT) is the user's to fix, not a bug: a write that hits it removes its
temporary, leaves the file it would have replaced as it was, and raises `NoSpaceLeft` (a UserError) naming the
file and the free space left there.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from pipeline.errors import UserError

NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class NoSpaceLeft(UserError):
    """A write failed because its file system is full (ENOSPC) or the user's disk quota is spent (EDQUOT)."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = Path(path)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`.

    On any failure the temporary is removed and an existing `path` is left as it was; a full disk is a
    NoSpaceLeft naming `path`."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.pid{os.getpid()}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual permissions
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS:
            raise NoSpaceLeft(f"{no_space_message(path, error)}; the write was undone ({printable(path.name)} is as it "
                              "was before, if it existed): free some space there, or use a folder on a larger disk, "
                              "and run it again", path) from error
        raise


def no_space_error(error: BaseException | None) -> BaseException | None:
    """The full-disk error behind `error` (itself, or what it was raised from), or None.

    An OSError with errno ENOSPC or EDQUOT, or an error whose text says so (h5py and SQLite report a full disk
    in their message, without an errno)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, NoSpaceLeft):
            return error
        if isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS:
            return error
        text = str(error)
        if any(words in text for words in ("No space left on device", "Disk quota exceeded", "database or disk is full")):
            return error
        error = error.__cause__ or error.__context__
    return None


def no_space_message(path: Path | str, error: BaseException | None = None, under: bool = False) -> str:
    """`no space left on device writing PATH (N bytes free there)`: what a UserError about a full disk starts with
    (`under`: PATH is the folder written in, not the file)."""
    why = "disk quota exceeded" if isinstance(error, OSError) and error.errno == errno.EDQUOT else "no space left on device"
    free = free_bytes(path)
    where = "" if free is None else f" ({_size(free)} free there)"
    return f"{why} writing {'under ' if under else ''}{printable(path)}{where}"


def free_bytes(path: Path | str) -> int | None:
    """Bytes an unprivileged writer may still use on the file system of `path` (or of its nearest existing folder)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        stats = os.statvfs(path)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"


def printable(name: Path | str) -> str:
    """A file name as text that can be printed and written anywhere: bytes that are not UTF-8 (Linux file names
    are bytes; Python keeps such bytes as lone surrogates) are shown as \\xNN escapes."""
    text = str(name)
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no file name produced
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def is_utf8(name: Path | str) -> bool:
    """Whether `name` is valid UTF-8 text (a CSV, JSON or the ledger can hold it as it is)."""
    try:
        str(name).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_csv_atomic(path: Path, table: pd.DataFrame) -> None:
    write_text_atomic(path, table.to_csv(index=False, float_format="%.6g", lineterminator="\n"))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_TEMPORARY = re.compile(r"^\..+\.tmp$")
_WRITER_PID = re.compile(r"\.pid(\d+)\.")


def hdf5_problem(path: Path) -> str | None:
    """Why `path` is not a readable HDF5 file (what Keras .h5/.weights.h5 files are), or None when it is."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(HDF5_SIGNATURE))
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    if head != HDF5_SIGNATURE:
        return "is not an HDF5 file (it lacks the HDF5 signature that Keras .h5 and .weights.h5 files start with)"
    try:
        import h5py

        with h5py.File(path, "r") as handle:
            if not len(handle.keys()):
                return "is an empty HDF5 file (no weights in it)"
    except (OSError, ValueError, KeyError) as error:
        return f"is a damaged HDF5 file ({error})"
    return None


def remove_stale_temporaries(folder: Path, min_age_s: float = 3600.0) -> list[Path]:
    """Remove the temporaries (`.*.tmp` files and staging folders) that killed writers left under `folder`.

    A temporary is stale when the writer whose pid is in its name is no longer running on this host, or,
    for one without a pid, when it is older than `min_age_s`. A live writer's temporaries are left alone.
    Returns what was removed.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for root, dirs, names in os.walk(folder):
        for name in [*names, *dirs]:
            if not _TEMPORARY.match(name):
                continue
            path = Path(root) / name
            match = _WRITER_PID.search(name)
            try:
                stale = (not pid_is_alive(int(match.group(1))) if match
                         else now - path.lstat().st_mtime > min_age_s)
                if not stale:
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except FileNotFoundError:  # its writer finished or another cleaner was first
                continue
            removed.append(path)
        dirs[:] = [d for d in dirs if Path(root) / d not in removed]
    return removed


def pid_is_alive(pid: int) -> bool:
    """Whether process `pid` is running on this host (a zombie, killed but not yet reaped, is not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        pass
    return _proc_stat(pid)[0] not in ("Z", "X")


def process_start_token(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, from /proc), or None where unknown.

    With the pid it tells a process from a later one that reused its pid."""
    return _proc_stat(pid)[1]


def _proc_stat(pid: int) -> tuple[str | None, str | None]:
    """(state, start time) of a process from /proc/PID/stat; (None, None) without /proc or without the process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None, None
    fields = text[text.rfind(")") + 2:].split()  # the command name (in parentheses) may hold spaces
    return (fields[0], fields[19]) if len(fields) > 19 else (None, None)


def json_plain(value: object) -> object:
    """`json.dumps(default=...)` for what our records hold besides plain JSON: numpy values, paths, sets."""
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as JSON")
