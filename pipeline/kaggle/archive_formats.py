"""Readers for the archive formats Kaggle ships (zip, 7z, tar with or without compression), all streaming.

Each reader checks every entry through `ArchiveBudget` (name, type, sizes) before writing it, and writes
it block by block so the budget sees the bytes actually produced. zip and 7z list their entries up front,
so a whole archive is refused before its first byte is written; a tar is a stream, so each entry is
checked as it comes (the staging folder of `extract_archive` keeps a refused archive out of the target).
"""
from __future__ import annotations

import contextlib
import stat
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from pipeline.kaggle.extract_guard import ArchiveBudget, Budget, check_mode, is_junk, refuse_special, safe_parts
from pipeline.errors import UserError

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
ARCHIVE_SUFFIXES = (".zip", ".7z", *TAR_SUFFIXES)
Keep = Callable[[str], bool] | None


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def archive_stem(name: str) -> str:
    """The name without its archive suffixes: `train-jpg.tar.7z` -> `train-jpg`, `x.csv.zip` -> `x.csv`."""
    stem = name
    while True:
        lower = stem.lower()
        suffix = next((s for s in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True) if lower.endswith(s)), None)
        if suffix is None or len(stem) == len(suffix):
            return stem
        stem = stem[: -len(suffix)]


def extract_one(archive: Path, dest: Path, root: Path, budget: Budget, label: str, keep: Keep = None) -> None:
    """Extract one archive (not the archives inside it) into `dest`, which lies under `root`."""
    name = archive.name.lower()
    size = archive.stat().st_size
    with open(archive, "rb") as handle:
        magic = handle.read(6)
    if name.endswith(".7z") or magic == b"7z\xbc\xaf\x27\x1c":
        _extract_7z(archive, dest, root, budget, label, size, keep)
    elif name.endswith(".zip") or magic[:2] == b"PK":
        _extract_zip(archive, dest, root, budget, label, size, keep)
    else:
        _extract_tar(archive, dest, root, budget, label, size, keep)
    budget.summary.archives.append(label)


def _skip(name: str, keep: Keep, budget: Budget) -> bool:
    if is_junk(name):
        return True
    if keep is not None and not keep(name):
        budget.summary.skipped.append(name)
        return True
    return False


# ---- zip --------------------------------------------------------------------------------------------
def _extract_zip(archive: Path, dest: Path, root: Path, budget: Budget, label: str, size: int, keep: Keep) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as error:
        raise UserError(f"{label} is not a readable zip archive ({error}); delete it and download again") from error
    with zf:
        plan = []
        for info in zf.infolist():
            safe_parts(info.filename, label)  # hostile names are refused even when skipped
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise refuse_special(info.filename, label)
            check_mode(info.filename, mode, label)
            if not _skip(info.filename, keep, budget):
                plan.append(info)
        files = [i for i in plan if not i.is_dir()]
        declared = sum(i.file_size for i in files)
        budget.check_declared(label, len(files), declared)
        meter = budget.archive(label, size, len(files), declared)
        meter.check_totals_ratio(declared)
        outputs = []
        for info in plan:
            meter.check_entry_ratio(info.filename, info.file_size, info.compress_size)
            outputs.append(meter.output(info.filename, dest, root, info.is_dir()))
        print(f"extracting {label}: {len(files)} files, {declared / 1e6:.1f} MB declared", flush=True)
        for info, out in zip(plan, outputs):
            try:
                if info.is_dir():
                    out.mkdir(parents=True, exist_ok=True)
                else:
                    with zf.open(info) as source:
                        meter.copy(source, out, info.filename, info.compress_size)
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError, OSError) as error:
                raise UserError(f"{label}: entry {info.filename!r} cannot be extracted ({error}); "
                                 "download the data again") from error
        if meter.files >= 1000:
            meter.report()


# ---- 7z ---------------------------------------------------------------------------------------------
def _extract_7z(archive: Path, dest: Path, root: Path, budget: Budget, label: str, size: int, keep: Keep) -> None:
    import py7zr
    from py7zr.exceptions import ArchiveError

    errors = (ArchiveError, py7zr.exceptions.Bad7zFile, py7zr.exceptions.CrcError,
              py7zr.exceptions.UnsupportedCompressionMethodError, EOFError, OSError, KeyError, IndexError, TypeError,
              AttributeError, __import__("lzma").LZMAError)
    with open(archive, "rb") as handle:  # a file object: py7zr then decompresses in this thread, in order
        try:
            sz = py7zr.SevenZipFile(handle, mode="r")
        except errors as error:
            raise UserError(f"{label} is not a readable 7z archive ({type(error).__name__}: {error}); "
                             "delete it and download again") from error
        with sz:
            if sz.needs_password():
                raise UserError(f"{label} is encrypted (needs a password); this pipeline cannot extract it")
            plan: dict[str, tuple[object, Path]] = {}
            dirs, files, wanted = [], [], []
            for entry in sz.files:
                name = entry.filename
                safe_parts(name, label)
                if entry.is_symlink or entry.is_junction or entry.is_socket:
                    raise refuse_special(name, label)
                if not entry.is_directory and not entry.is_file:  # is_file reads the unix mode: devices, fifos
                    raise refuse_special(name, label)
                if _skip(name, keep, budget):
                    continue
                (dirs if entry.is_directory else files).append(entry)
                wanted.append(entry)
            declared = sum(int(e.uncompressed or 0) for e in files)
            budget.check_declared(label, len(files), declared)
            meter = budget.archive(label, size, len(files), declared)
            meter.check_totals_ratio(declared)
            for entry in wanted:
                meter.check_entry_ratio(entry.filename, int(entry.uncompressed or 0), entry.compressed)
                out = meter.output(entry.filename, dest, root, entry.is_directory)
                if not entry.is_directory:
                    plan["/".join(safe_parts(entry.filename, label)).lower()] = (entry, out)
            print(f"extracting {label}: {len(files)} files, {declared / 1e6:.1f} MB declared", flush=True)
            for entry in dirs:
                dest.joinpath(*safe_parts(entry.filename, label)).mkdir(parents=True, exist_ok=True)
            factory = _SevenZipSinks(plan, meter, label)
            try:
                with _small_blocks():
                    sz.extract(targets=[e.filename for e in files], factory=factory)
            except ValueError:
                raise
            except errors as error:
                raise UserError(f"{label}: cannot be extracted ({type(error).__name__}: {error}); "
                                 "download the data again") from error
            finally:
                factory.close_all()
    for key, (entry, out) in plan.items():
        if key not in factory.done:
            if int(entry.uncompressed or 0) != 0:
                raise UserError(f"{label}: entry {entry.filename!r} was not extracted; download the data again")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.touch(exist_ok=False)  # an empty file: 7z stores no stream for it
            meter.file_done()
    if meter.files >= 1000:
        meter.report()


def _sevenzip_io_base():
    from py7zr.io import Py7zIO

    return Py7zIO


SEVENZIP_BLOCK = 4 << 20


@contextlib.contextmanager
def _small_blocks():
    """py7zr hands out decompressed blocks of up to 128 MB (`get_memory_limit`): a bomb's first block alone
    would be that big in memory before the budget sees it. Blocks of SEVENZIP_BLOCK keep memory flat."""
    import py7zr.py7zr as engine

    original = getattr(engine, "get_memory_limit", None)
    if original is None:  # another py7zr version: its own block size applies
        yield
        return
    engine.get_memory_limit = lambda: min(original(), SEVENZIP_BLOCK)
    try:
        yield
    finally:
        engine.get_memory_limit = original


class _SevenZipSinks:
    """A py7zr WriterFactory: each entry py7zr decompresses is written through the budget to its checked path."""

    def __init__(self, plan: dict, meter: ArchiveBudget, label: str) -> None:
        self.plan, self.meter, self.label = plan, meter, label
        self.open: list = []
        self.done: set[str] = set()

    def create(self, filename: str):
        key = "/".join(safe_parts(filename, self.label)).lower()
        if key not in self.plan:
            raise UserError(f"{self.label}: py7zr wrote {filename!r}, an entry that was not checked; refusing")
        entry, out = self.plan[key]
        sink = _sink_class()(self, key, entry, out)
        self.open.append(sink)
        return sink

    def close_all(self) -> None:
        for sink in self.open:
            sink.release()


_SINK_CLASS = None


def _sink_class():
    """The Py7zIO subclass, made on first use so that py7zr is imported only when a 7z is extracted."""
    global _SINK_CLASS
    if _SINK_CLASS is None:
        class _Sink(_sevenzip_io_base()):
            def __init__(self, owner: _SevenZipSinks, key: str, entry, out: Path) -> None:
                self.owner, self.key, self.entry, self.out = owner, key, entry, out
                out.parent.mkdir(parents=True, exist_ok=True)
                self.handle = open(out, "xb")
                self.written = 0

            def write(self, s: bytes | bytearray) -> int:
                self.written += len(s)
                self.owner.meter.add(self.entry.filename, len(s), self.written, self.entry.compressed)
                return self.handle.write(s)

            def read(self, size: int | None = None) -> bytes:
                return b""

            def seek(self, offset: int, whence: int = 0) -> int:
                return 0

            def seekable(self) -> bool:
                return False

            def flush(self) -> None:
                self.handle.flush()

            def size(self) -> int:
                return self.written

            def close(self) -> None:  # py7zr: this entry is complete (and its CRC checked)
                if not self.handle.closed:
                    self.handle.close()
                    self.owner.done.add(self.key)
                    self.owner.meter.file_done()

            def release(self) -> None:
                if not self.handle.closed:
                    self.handle.close()

        _SINK_CLASS = _Sink
    return _SINK_CLASS


# ---- tar --------------------------------------------------------------------------------------------
def _extract_tar(archive: Path, dest: Path, root: Path, budget: Budget, label: str, size: int, keep: Keep) -> None:
    print(f"extracting {label}: {size / 1e6:.1f} MB archive", flush=True)
    meter = budget.archive(label, size, None, None)
    try:
        with tarfile.open(archive, mode="r|*") as tar:  # a stream: one pass, nothing held in memory
            for member in tar:
                safe_parts(member.name, label)
                if not (member.isdir() or (member.isfile() and not member.issparse())):
                    raise refuse_special(member.name, label)
                if _skip(member.name, keep, budget):
                    continue
                out = meter.output(member.name, dest, root, member.isdir())
                if member.isdir():
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                budget.check_declared(label, 1, member.size)
                source = tar.extractfile(member)
                if source is None:
                    raise refuse_special(member.name, label)
                with source:
                    meter.copy(source, out, member.name, None)
    except tarfile.TarError as error:
        raise UserError(f"{label} is not a readable tar archive ({error}); delete it and download again") from error
    except (EOFError, OSError) as error:
        raise UserError(f"{label}: cannot be extracted ({type(error).__name__}: {error}); "
                         "download the data again") from error
    if meter.files >= 1000:
        meter.report()

