"""The checks every archive format shares: entry names, entry types, and a byte budget that bombs cannot pass.

A zip bomb is not only one huge entry: 150 files of 1 MB of zeros each compress to a 171 KB zip, every
entry small enough to look harmless. So besides the per-entry ratio, the bytes extracted from each
archive are bounded by a ratio to that archive's size, all bytes by a ratio to the downloaded file's
size, and the total by a cap and by a share of the free disk space measured before extraction starts.
"""
from __future__ import annotations

import re
import stat
from pipeline.errors import UserError
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

GB = 10**9
# Real Kaggle data is mostly JPEG (ratio near 1); CSVs reach 10-20x; bombs are 1000x and more.
DEFAULT_MAX_TOTAL_BYTES = 200 * GB
DEFAULT_MAX_RATIO = 200.0
DEFAULT_MAX_FILES = 2_000_000
DEFAULT_DISK_SHARE = 0.9  # extraction may fill at most this share of the free space it found
RATIO_FLOOR_BYTES = 1 << 20  # expansions below this are harmless whatever their ratio (a tiny CSV compresses 50x)
CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")
_JUNK_FOLDERS = ("__MACOSX",)


@dataclass(frozen=True)
class Limits:
    """What an archive (with everything nested in it) may expand to.

    `max_ratio` bounds each entry (when its compressed size is known), each archive's total and the
    grand total relative to the downloaded file; `disk_share` the share of the free disk space used.
    """

    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES
    max_ratio: float = DEFAULT_MAX_RATIO
    max_files: int = DEFAULT_MAX_FILES
    disk_share: float = DEFAULT_DISK_SHARE

    def __post_init__(self) -> None:
        if not self.max_total_bytes > 0 or not self.max_ratio > 0 or not self.max_files > 0:
            raise UserError(f"extraction limits must be positive, got {self}")
        if not 0 < self.disk_share <= 1:
            raise UserError(f"disk_share must be in (0, 1], got {self.disk_share!r}")


@dataclass
class ExtractSummary:
    files: int = 0
    bytes: int = 0
    archives: list[str] = field(default_factory=list)  # archives extracted, outer first, relative to the target
    not_extracted: list[str] = field(default_factory=list)  # single-file compressions (.gz, .rar...) left as they are
    skipped: list[str] = field(default_factory=list)  # entries of the download the layout does not need


def is_junk(name: str) -> bool:
    """macOS metadata (`__MACOSX/`, `._x`, `.DS_Store`) that Kaggle zips sometimes carry: never extracted."""
    parts = name.replace("\\", "/").split("/")
    return any(p in _JUNK_FOLDERS for p in parts) or parts[-1].startswith("._") or parts[-1] == ".DS_Store"


def safe_parts(name: str, label: str) -> list[str]:
    """Path components of an entry name, or ValueError for absolute paths, `..`, drive letters and NUL bytes."""
    unified = name.replace("\\", "/")
    if "\x00" in name or unified.startswith("/") or _DRIVE.match(unified):
        raise UserError(f"{label}: entry {name!r} has an absolute path; refusing to extract")
    parts = [p for p in PurePosixPath(unified).parts if p not in ("", ".")]
    if ".." in parts:
        raise UserError(f"{label}: entry {name!r} points outside the target folder ('..'); refusing to extract")
    if not parts:
        raise UserError(f"{label}: an entry has an empty name {name!r}; refusing to extract")
    return parts


def refuse_special(name: str, label: str) -> ValueError:
    return ValueError(f"{label}: entry {name!r} is a link or special file (device, fifo, socket); refusing to extract")


def check_mode(name: str, mode: int, label: str) -> None:
    """Unix mode bits of an entry (0 = none recorded): only regular files and folders pass."""
    if mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise refuse_special(name, label)


class Budget:
    """Bytes and files extracted so far, against the limits, for one `extract_archive` call (nested archives share it)."""

    def __init__(self, limits: Limits, summary: ExtractSummary, free_bytes: int, top_size: int, where: Path) -> None:
        self.limits, self.summary, self.top_size, self.where = limits, summary, max(top_size, 1), where
        self.free_bytes = free_bytes
        self.allowed = min(limits.max_total_bytes, int(free_bytes * limits.disk_share))

    def over_total(self, what: str) -> ValueError:
        """`what` (e.g. "x.zip declares 10 bytes") is over the free-disk share or the size cap."""
        if self.allowed < self.limits.max_total_bytes:
            return ValueError(
                f"{what}, more than {self.limits.disk_share:.0%} of the {self.free_bytes} bytes free on the disk of "
                f"{self.where} ({self.allowed} bytes); free some space or extract to a bigger disk")
        return ValueError(f"{what}, over the limit of {self.limits.max_total_bytes} bytes (with {self.summary.bytes} "
                          "already extracted); refusing to extract (possible zip bomb)")

    def check_declared(self, label: str, files: int, declared: int) -> None:
        """Refuse an archive whose declared contents alone break a limit, before anything of it is written."""
        if self.summary.files + files > self.limits.max_files:
            raise UserError(f"{label} has {files} files, more than the limit of {self.limits.max_files}; "
                             "refusing to extract")
        if self.summary.bytes + declared > self.allowed:
            raise self.over_total(f"{label} declares {declared} bytes uncompressed")

    def archive(self, label: str, archive_size: int, entries: int | None, declared: int | None) -> "ArchiveBudget":
        return ArchiveBudget(self, label, archive_size, entries, declared)


class ArchiveBudget:
    """The budget while one archive is extracted: its own ratio, progress lines, and the shared totals."""

    def __init__(self, budget: Budget, label: str, archive_size: int, entries: int | None, declared: int | None):
        self.budget, self.label, self.archive_size = budget, label, max(archive_size, 1)
        self.entries, self.declared = entries, declared
        self.files = self.bytes = 0
        self.seen: set[str] = set()
        self._next_files = max(1000, (entries or 0) // 10)
        self._next_bytes = max(256 << 20, (declared or 0) // 10)
        self._last_files = self._last_bytes = 0

    def output(self, name: str, dest: Path, root: Path, is_dir: bool) -> Path:
        """Where an entry goes, after checking its name: inside `root`, not a duplicate, not overwriting."""
        parts = safe_parts(name, self.label)
        key = "/".join(parts).lower()  # case-insensitively unique: no overwrites on case-insensitive disks either
        if key in self.seen and not is_dir:
            raise UserError(f"{self.label}: entry {name!r} appears more than once; refusing to overwrite")
        self.seen.add(key)
        out = dest.joinpath(*parts)
        if not out.resolve().is_relative_to(root.resolve()):
            raise UserError(f"{self.label}: entry {name!r} would be written outside {root}; refusing to extract")
        if out.exists() and not is_dir:
            raise UserError(f"{self.label}: entry {name!r} would overwrite {out.relative_to(root)}; refusing to extract")
        return out

    def check_entry_ratio(self, name: str, size: int, compressed: int | None) -> None:
        if compressed is not None and size > RATIO_FLOOR_BYTES and size / max(compressed, 1) > self.budget.limits.max_ratio:
            raise UserError(
                f"{self.label}: entry {name!r} expands {size / max(compressed, 1):.0f}x ({compressed} -> {size} bytes), "
                f"over the limit of {self.budget.limits.max_ratio:.0f}x; refusing to extract (possible zip bomb)")

    def check_totals_ratio(self, total_declared: int) -> None:
        """The many-small-files bomb: the archive as a whole may not expand more than max_ratio."""
        self._check_ratio(total_declared, "declares")

    def _check_ratio(self, archive_bytes: int, verb: str) -> None:
        limit = self.budget.limits.max_ratio
        ratio = archive_bytes / self.archive_size
        if archive_bytes > RATIO_FLOOR_BYTES and ratio > limit:
            raise UserError(
                f"{self.label} {verb} {archive_bytes} bytes from {self.archive_size} bytes ({ratio:.0f}x), over the "
                f"limit of {limit:.0f}x for a whole archive; refusing to extract (possible zip bomb)")
        grand = self.budget.summary.bytes
        if grand > RATIO_FLOOR_BYTES and grand / self.budget.top_size > limit:
            raise UserError(
                f"{self.label}: {grand} bytes extracted in all from a {self.budget.top_size}-byte download "
                f"({grand / self.budget.top_size:.0f}x), over the limit of {limit:.0f}x; refusing to extract "
                "(possible zip bomb)")

    def add(self, name: str, count: int, entry_written: int, compressed: int | None) -> None:
        """Count `count` bytes actually written for entry `name` (`entry_written` so far, this block included)."""
        self.bytes += count
        self.budget.summary.bytes += count
        if self.budget.summary.bytes > self.budget.allowed:
            raise self.budget.over_total(f"{self.label}: extraction reached {self.budget.summary.bytes} bytes at {name!r}")
        self.check_entry_ratio(name, entry_written, compressed)
        self._check_ratio(self.bytes, "expanded to")
        if self.bytes - self._last_bytes >= self._next_bytes:
            self.report()

    def file_done(self) -> None:
        self.files += 1
        self.budget.summary.files += 1
        if self.budget.summary.files > self.budget.limits.max_files:
            raise UserError(f"{self.label}: more than {self.budget.limits.max_files} files; refusing to extract")
        if self.files - self._last_files >= self._next_files:
            self.report()

    def report(self) -> None:
        """A progress line: files and bytes so far (of the declared totals when known)."""
        self._last_files, self._last_bytes = self.files, self.bytes
        files = f"{self.files}/{self.entries}" if self.entries else str(self.files)
        size = f"{self.bytes / 1e6:.1f}/{self.declared / 1e6:.1f} MB" if self.declared else f"{self.bytes / 1e6:.1f} MB"
        print(f"  {self.label}: {files} files, {size}", flush=True)

    def copy(self, source: BinaryIO, out: Path, name: str, compressed: int | None) -> None:
        """Stream one entry from `source` to the new file `out`, counting every block."""
        out.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with open(out, "xb") as sink:
            while block := source.read(CHUNK):
                written += len(block)
                self.add(name, len(block), written, compressed)
                sink.write(block)
        self.file_done()
