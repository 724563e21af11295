"""Cache entries that are either complete and intact or not there: a folder of files plus `manifest.json`.

Why: a cache is read by every later run, so a truncated or tampered file must cost one recompute, not a
crash on every run until someone deletes it by hand. `write_entry` builds the entry in a staging folder
beside it, records the size and sha256 of every file in `manifest.json` (written last) and renames the
folder into place in one step. `load_entry` checks the manifest and every file against it; on any problem
it prints a WARNING naming the folder and the problem, removes the entry and returns None, so the caller
recomputes. Callers load only with formats that cannot run code (JSON, .npy/.npz without pickle, .h5), and
call `discard` when a verified file still fails to load.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.files import _umask, sha256_of

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
# what reading a verified entry's file can still raise: the caller then discards the entry and recomputes
LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, EOFError)


def write_entry(folder: Path, files: dict[str, Callable[[Path], None]], meta: dict | None = None) -> Path:
    """Write the entry `folder`: `files` maps each file name to a writer called with the path to write.

    The entry appears all at once (rename of a complete staging folder). If another process wrote the same
    entry meanwhile, its copy is kept and ours is dropped: same key, same content.
    """
    folder = Path(folder)
    for name in files:
        _check_name(name)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # The pid in the name lets files.remove_stale_temporaries tell a live writer's staging folder from a dead one's.
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.pid{os.getpid()}.", suffix=".tmp", dir=folder.parent))
    try:
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700 folders; a cache gets the usual permissions
        manifest = {}
        for name, write in files.items():
            path = staging / name
            write(path)
            if not path.is_file():
                raise RuntimeError(f"cache writer for {name} did not create {path}")
            _fsync(path)
            manifest[name] = {"sha256": sha256_of(path), "bytes": path.stat().st_size}
        body = {"version": MANIFEST_VERSION, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "files": manifest, "meta": meta or {}}
        (staging / MANIFEST).write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
        _fsync(staging / MANIFEST)
        _fsync(staging)
        try:
            os.rename(staging, folder)
        except OSError:
            if not folder.is_dir():  # not "someone else was first": a real problem
                raise
        else:
            _fsync(folder.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def load_entry(folder: Path, expected_names: list[str] | tuple[str, ...]) -> Path | None:
    """`folder` if it is a complete entry holding `expected_names` that match its manifest; else None.

    A missing entry is a plain miss. A damaged one (no or unreadable manifest, a file missing, of the wrong
    size or sha256, not a regular file) is reported with a WARNING on stderr and removed.
    """
    folder = Path(folder)
    if not os.path.lexists(folder):
        return None
    problem = _problem(folder, expected_names)
    if problem is None:
        return folder
    discard(folder, problem)
    return None


def discard(folder: Path, problem: str) -> None:
    """Warn that the entry `folder` is unusable and why, and remove it so the next run recomputes it."""
    folder = Path(folder)
    print(f"WARNING: cache entry {folder} is unusable ({problem}); removing it and recomputing", file=sys.stderr,
          flush=True)
    try:
        if folder.is_symlink() or not folder.is_dir():
            folder.unlink(missing_ok=True)
        else:
            shutil.rmtree(folder)
    except OSError as error:
        print(f"WARNING: could not remove {folder} ({error}); delete it by hand", file=sys.stderr, flush=True)


def _problem(folder: Path, expected_names) -> str | None:
    """What is wrong with the entry, or None when every expected file matches the manifest."""
    if folder.is_symlink() or not folder.is_dir():
        return "not a folder"
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return f"no {MANIFEST}: an interrupted write or an older cache format"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"{MANIFEST} is unreadable: {error}"
    if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION:
        return f"{MANIFEST} has an unknown format"
    files = manifest.get("files")
    if not isinstance(files, dict):
        return f"{MANIFEST} lists no files"
    for name in expected_names:
        recorded = files.get(name)
        if not isinstance(recorded, dict):
            return f"{name} is not in {MANIFEST}"
        path = folder / name
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return f"{name} is missing"
        except OSError as error:
            return f"{name}: {error}"
        if not stat.S_ISREG(info.st_mode):
            return f"{name} is not a regular file"
        if info.st_size != recorded.get("bytes"):
            return f"{name} has {info.st_size} bytes, the manifest says {recorded.get('bytes')} (truncated or replaced)"
        try:
            digest = sha256_of(path)
        except OSError as error:
            return f"{name} cannot be read: {error}"
        if digest != recorded.get("sha256"):
            return f"{name} does not match its sha256 in {MANIFEST} (changed after it was written)"
    return None


def _check_name(name: str) -> None:
    if not name or name in (".", "..", MANIFEST) or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"cache file name {name!r} must be a plain, visible file name other than {MANIFEST}")


def _fsync(path: Path) -> None:
    """Flush a file or folder to disk, so a crash after the rename cannot leave an entry of empty files."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_array(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A .npy file of an entry, without pickle, that must have the shape this run expects (ValueError if not)."""
    array = np.load(path, allow_pickle=False)
    if array.shape != tuple(shape):
        raise ValueError(f"{path.name} has shape {array.shape}, expected {tuple(shape)}")
    return array


def load_info(path: Path) -> dict:
    """An entry's JSON object (ValueError if the file holds anything else)."""
    info = json.loads(path.read_text())
    if not isinstance(info, dict):
        raise ValueError(f"{path.name} does not hold an object")
    return info
