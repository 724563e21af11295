"""Decode every image once: readability, shift properties and a resized uint8 copy, cached on disk.

One pass over the files (threads: Pillow's decoders release the GIL) writes, per data set and image size,
one `pixels.npy` of shape [N, S, S, 3] that teacher, control, students, folds, sweeps and reruns read
through a memory map instead of decoding again. An entry is keyed by a sha256 of every file's bytes, and its
own files are checked against the sha256s in its manifest when read (file_digests says what that costs).
Each image is decoded by pipeline/data/decode.py, the one definition of "readable".
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import stat
import tempfile
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.decode import decode_all
from pipeline.data.image_properties import MAX_SIDE, NUMERIC_PROPERTIES, PropertyRows, PropertyTable, property_frame
from pipeline.files import sha256_of, write_text_atomic

# bump when decoding, resizing or the properties change what a cached store would hold
# (3: 16-bit and float greys scaled, EXIF orientation applied, keyed by the files' sha256, entries verified)
FORMAT_VERSION = 3
_WHAT = re.compile(r"^[A-Za-z0-9_-]{1,40}$")


class StaleCacheWarning(UserWarning):
    """A cached image store was incomplete or corrupt and is being rebuilt."""


def read_rows(pixels: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """An in-memory copy of pixels[rows].

    From a store's memory map this reads the file with pread instead of touching the mapping: mapped pages
    count toward the process's RSS, so streaming a large test set through the map would grow it by the
    whole set, while reads into a fresh buffer keep it flat.
    """
    rows = np.asarray(rows, dtype=np.int64)
    filename = getattr(pixels, "filename", None)
    whole_file = (isinstance(pixels, np.memmap) and filename and pixels.flags.c_contiguous and len(rows)
                  and os.path.getsize(filename) == pixels.offset + pixels.nbytes)  # not a slice of the map
    if not whole_file:
        return np.asarray(pixels[rows])
    if rows.min() < 0 or rows.max() >= len(pixels):
        raise IndexError(f"rows must be within 0..{len(pixels) - 1}, got {rows.min()}..{rows.max()}")
    out = np.empty((len(rows), *pixels.shape[1:]), dtype=pixels.dtype)
    row_bytes = out[0].nbytes
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1  # one read per run of consecutive rows
    fd = os.open(filename, os.O_RDONLY)
    try:
        for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):
            view = memoryview(out[start:stop].reshape(-1))
            offset = pixels.offset + int(rows[start]) * row_bytes
            while len(view):
                got = os.preadv(fd, [view], offset)
                if got == 0:
                    raise OSError(f"{filename} ended early; delete its folder to rebuild the image store")
                view, offset = view[got:], offset + got
    finally:
        os.close(fd)
    return out


@dataclass
class ImageStore:
    """One data set's decoded images at one size: rows follow `paths`; unreadable rows are zeros."""

    paths: list[str]
    pixels: np.ndarray  # [N, S, S, 3] uint8, memory-mapped read-only
    readable: np.ndarray  # [N] bool
    problems: dict[str, str]  # path -> why it cannot be used
    properties: pd.DataFrame  # one row per readable path: path, then the shift properties
    cache_status: str  # "hit" | "miss"
    folder: Path
    what: str = "images"
    file_digests: list[str] = field(default_factory=list)  # per path: the sha256 of its bytes that keyed the store
    image_size: int = field(init=False)

    def __post_init__(self) -> None:
        self.image_size = int(self.pixels.shape[1])

    @cached_property
    def _index(self) -> dict[str, int]:
        return {path: row for row, path in enumerate(self.paths)}

    def rows(self, paths: Sequence[str]) -> np.ndarray:
        """Row indices of these paths, in their order."""
        index = self._index
        missing = [str(p) for p in paths if str(p) not in index]
        if missing:
            raise ValueError(f"{missing[0]} is not in the {self.what} image store {self.folder} "
                             f"({len(missing)} of {len(paths)} paths are not); build the store from a list that includes them")
        return np.fromiter((index[str(p)] for p in paths), dtype=np.int64, count=len(paths))

    def read(self, rows: np.ndarray) -> np.ndarray:
        """pixels[rows] as an in-memory array (for training sets); see read_rows for why not plain indexing."""
        return read_rows(self.pixels, rows)

    def property_table(self, paths: Sequence[str] | None = None) -> PropertyTable:
        """The shift check's input for these paths (default: all), in their order: the readable ones'
        properties, and (path, why) for the others."""
        if paths is None:
            return PropertyTable(self.properties, [(p, self.problems[p]) for p in self.paths if p in self.problems])
        rows = self.rows(paths)
        position = np.cumsum(self.readable) - 1  # store row -> row of self.properties
        table = self.properties.iloc[position[rows[self.readable[rows]]]].reset_index(drop=True)
        return PropertyTable(table, [(self.paths[r], self.problems[self.paths[r]]) for r in rows[~self.readable[rows]]])


def build_store(paths: Sequence[str], image_size: int, cache_dir: Path, what: str, *,
                workers: int | None = None) -> ImageStore:
    """Decode each file once into `cache_dir/images/`, or reuse the entry for the same files and size.

    The key covers every path in order with a sha256 of its bytes (file_digests), the image size and the
    format version: changing a file's bytes (whatever its size and modification time), adding, removing or
    reordering one makes a new entry. An entry whose files do not match the sha256s in its manifest, or that
    is otherwise incomplete or corrupt, is discarded with a StaleCacheWarning and rebuilt.
    """
    paths = [str(p) for p in paths]
    if isinstance(image_size, bool) or int(image_size) != image_size or image_size < 1:
        raise ValueError(f"image_size must be a positive integer number of pixels, got {image_size!r}")
    image_size = int(image_size)
    if not _WHAT.match(what):
        raise ValueError(f"what must be a short name of letters, digits, '-' or '_' (e.g. 'train'), got {what!r}")
    seen: set[str] = set()
    for path in paths:
        if path in seen:
            raise ValueError(f"{path} is listed twice in the {what} images; each file must appear once "
                             "(its row in the store is its position in the list)")
        seen.add(path)
    files = file_digests(paths, workers)
    key = hashlib.sha256(json.dumps({"version": FORMAT_VERSION, "image_size": image_size, "max_side": MAX_SIDE,
                                     "paths": paths, "files": files}).encode()).hexdigest()[:20]
    folder = Path(cache_dir) / "images" / f"{what}-{image_size}px-{key}"
    if folder.exists():
        try:
            store = _load(folder, paths, files, image_size, what, "hit")
        except _BAD_ENTRY as error:
            warnings.warn(f"image store {folder} is incomplete or corrupt ({type(error).__name__}: {error}); "
                          "rebuilding it", StaleCacheWarning, stacklevel=2)
            shutil.rmtree(folder)
        else:
            print(f"images: cached in {folder} ({len(paths)} {what} images, {len(store.problems)} unreadable)",
                  flush=True)
            return store
    _write(folder, paths, files, image_size, what, workers)
    return _load(folder, paths, files, image_size, what, "miss", verify=False)  # just hashed while writing


def file_digests(paths: Sequence[str], workers: int | None = None) -> list[str]:
    """A sha256 of each file's bytes, in order (threads), or why it has none ("unreadable: FileNotFoundError",
    "not a regular file"): what identifies a file in the store's key and in data.fingerprint.

    Why the bytes and not stat fields: a file replaced by another of the same size whose modification time was
    put back (`cp -p`, `rsync -t`, re-extracting an archive) keeps its size and mtime. st_ctime_ns and st_ino
    would catch that for the cost of a stat, but they also change when the bytes do not (chmod, a new hard link,
    re-extracting the same archive, a remounted network or FUSE file system), and each such change would
    rebuild the store and retrain the teacher (data.fingerprint keys it the same way).
    The cost, measured on a 2-core machine shared with other jobs (ranges over runs; files in the page cache):
    3,000 Amazon-like 256x256 JPEGs (85 MB) hash in 0.15-0.46 s and decode for the store in 1.1-4.9 s; 400
    1280x720 frames (136 MB) hash in 0.06-0.36 s and decode in 0.8-4.1 s; a whole build_store hit on either
    took 0.12-0.33 s, where the stats of the old key took 4-10 ms. So a hit now reads every file, about a tenth
    of a rebuild's time (some 10 s for Amazon's 101,670 JPEGs), bound by the disk when they are not cached.
    """
    workers = min(32, (os.cpu_count() or 1) + 4) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    with ThreadPoolExecutor(max_workers=workers) as pool:  # hashlib and reads release the GIL
        return list(pool.map(_file_digest, paths, chunksize=64))


def _file_digest(path: str) -> str:
    try:
        # O_NONBLOCK: a FIFO among the files opens at once (and is refused below) instead of waiting for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        return f"unreadable: {type(error).__name__}"
    with open(fd, "rb") as handle:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return "not a regular file"
            return hashlib.file_digest(handle, "sha256").hexdigest()
        except OSError as error:
            return f"unreadable: {type(error).__name__}"


def _write(folder: Path, paths: list[str], files: list, image_size: int, what: str, workers: int | None) -> None:
    """Build into a staging folder renamed into place once complete: a crash never leaves a half entry."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        total = len(paths)
        shape = (total, image_size, image_size, 3)
        readable = np.zeros(total, dtype=bool)
        rows = PropertyRows(total)
        problems: dict[str, str] = {}
        blank = bytes(image_size * image_size * 3)
        pixels_digest = hashlib.sha256()  # of every byte written, so a hit can check the file without a rebuild
        step = next(s for s in (5000, 2000, 1000, 500) if total >= 10 * s or s == 500)  # about ten lines
        # Rows are written in order through a file, not a writable memory map: the page cache holds them,
        # not this process, so memory stays flat however many images there are.
        with open(staging / "pixels.npy", "wb", buffering=1 << 20) as handle:
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
            handle.write(header.getvalue())
            pixels_digest.update(header.getvalue())
            for index, (pixels, props, problem) in enumerate(decode_all(paths, image_size, MAX_SIDE, workers)):
                row = pixels.tobytes() if problem is None else blank
                handle.write(row)
                pixels_digest.update(row)
                if problem is None:
                    readable[index] = True
                    rows.add(index, props)
                else:
                    problems[paths[index]] = problem
                done = index + 1
                if done % step == 0 or done == total:
                    print(f"  cached {done}/{total} {what} images, {len(problems)} unreadable", flush=True)
            handle.flush()
            os.fsync(handle.fileno())
        np.save(staging / "readable.npy", readable)
        frame = rows.frame(paths)
        np.savez(staging / "properties.npz", rows=np.asarray(rows.rows, dtype=np.int64),
                 numbers=frame[list(NUMERIC_PROPERTIES)].to_numpy(dtype=np.float64),
                 format=np.asarray(frame["format"].tolist(), dtype=str), mode=np.asarray(frame["mode"].tolist(), dtype=str))
        digests = {"pixels.npy": pixels_digest.hexdigest(), "readable.npy": sha256_of(staging / "readable.npy"),
                   "properties.npz": sha256_of(staging / "properties.npz")}
        manifest = {"version": FORMAT_VERSION, "what": what, "image_size": image_size, "max_side": MAX_SIDE,
                    "paths": paths, "files": files, "problems": problems, "sha256": digests}
        write_text_atomic(staging / "manifest.json", json.dumps(manifest) + "\n")  # last: marks the entry complete
        try:
            staging.rename(folder)
        except OSError:
            if not (folder / "manifest.json").is_file():  # not another process finishing the same entry first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class _BadEntry(ValueError):
    pass


_BAD_ENTRY = (_BadEntry, ValueError, OSError, KeyError, TypeError)  # json.JSONDecodeError is a ValueError


def _load(folder: Path, paths: list[str], files: list, image_size: int, what: str, status: str, *,
          verify: bool = True) -> ImageStore:
    """Open an entry and check that every part matches; anything off raises one of _BAD_ENTRY.

    verify: check each file against the sha256 in the manifest (reads the whole entry: 0.8 s per 512 MiB of
    pixels on one core; the same size on disk can hold other bytes, which nothing else here would notice).
    """
    manifest = json.loads((folder / "manifest.json").read_text())
    expected = {"version": FORMAT_VERSION, "image_size": image_size, "max_side": MAX_SIDE, "paths": paths, "files": files}
    for name, value in expected.items():
        if manifest.get(name) != value:
            raise _BadEntry(f"manifest field {name!r} does not match")
    if verify:
        recorded = manifest.get("sha256")
        for name in ("readable.npy", "properties.npz", "pixels.npy"):
            if not isinstance(recorded, dict) or sha256_of(folder / name) != recorded.get(name):
                raise _BadEntry(f"{name} does not match its sha256 in manifest.json (changed since it was cached)")
    total = len(paths)
    shape = (total, image_size, image_size, 3)
    # np.load refuses pickled objects by default (allow_pickle=False); a short file fails to map
    pixels = np.load(folder / "pixels.npy", mmap_mode="r") if total else np.load(folder / "pixels.npy")
    if pixels.shape != shape or pixels.dtype != np.uint8:
        raise _BadEntry(f"pixels.npy holds {pixels.dtype} {pixels.shape}, expected uint8 {shape}")
    readable = np.load(folder / "readable.npy")
    if readable.shape != (total,) or readable.dtype != bool:
        raise _BadEntry(f"readable.npy holds {readable.dtype} {readable.shape}, expected bool ({total},)")
    problems = manifest["problems"]
    if not isinstance(problems, dict) or sorted(problems) != sorted(paths[i] for i in np.flatnonzero(~readable)):
        raise _BadEntry("the problems listed do not match readable.npy")
    with np.load(folder / "properties.npz") as saved:
        rows, numbers = saved["rows"], saved["numbers"]
        categories = {"format": saved["format"].tolist(), "mode": saved["mode"].tolist()}
    if not np.array_equal(rows, np.flatnonzero(readable)) or numbers.shape != (len(rows), len(NUMERIC_PROPERTIES)):
        raise _BadEntry("properties.npz does not match readable.npy")
    properties = property_frame([paths[i] for i in rows], numbers, categories)
    return ImageStore(paths, pixels, readable, problems, properties, status, folder, what, list(files))
