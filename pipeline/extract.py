"""Guarded zip extraction for downloaded competition archives.

Kaggle archives are untrusted input: an entry may try to escape the target (`../evil`, `/etc/x`), be a
link, or be a zip bomb. Everything is checked before a byte is written (declared sizes, names, types) and
again while streaming (the bytes actually written count against the same limits). Extraction goes into a
hidden temporary folder beside the target that is renamed into place only when every archive, nested ones
included (Kaggle ships `train.zip` inside the competition zip), has been extracted.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

GB = 10**9
# Real Kaggle data is mostly JPEG (ratio near 1); CSVs reach 10-20x; bombs are 1000x and more.
DEFAULT_MAX_TOTAL_BYTES = 200 * GB
DEFAULT_MAX_RATIO = 200.0
DEFAULT_MAX_FILES = 2_000_000
RATIO_FLOOR_BYTES = 1 << 20  # small files of zeros compress enormously and are harmless: ratio applies above this
MAX_NESTING = 3
_CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")
NOT_ZIP_ARCHIVES = (".7z", ".rar", ".tar", ".tgz", ".tar.gz", ".gz", ".bz2", ".xz")


@dataclass(frozen=True)
class Limits:
    """What an archive (with everything nested in it) may expand to."""

    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES
    max_ratio: float = DEFAULT_MAX_RATIO
    max_files: int = DEFAULT_MAX_FILES


@dataclass
class ExtractSummary:
    files: int = 0
    bytes: int = 0
    archives: list[str] = field(default_factory=list)  # zips extracted, outer first, relative to the target
    not_extracted: list[str] = field(default_factory=list)  # other archive formats left as they are


def extract_archive(archive: Path, target: Path, limits: Limits = Limits()) -> ExtractSummary:
    """Extract `archive` (and zips inside it) into the new folder `target`; ValueError if anything is unsafe.

    `target` must not exist or be an empty folder: a complete download is never mixed with an old one.
    """
    archive, target = Path(archive), Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ValueError(f"{target} already exists and is not an empty folder; remove it or choose another target")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        summary = ExtractSummary()
        _extract_zip(archive, staging, staging, limits, summary, label=archive.name)
        _extract_nested(staging, limits, summary, depth=1)
        summary.not_extracted = sorted(str(p.relative_to(staging)) for p in staging.rglob("*")
                                       if p.is_file() and p.name.lower().endswith(NOT_ZIP_ARCHIVES))
        if target.exists():
            target.rmdir()  # empty (checked above); os.replace needs the name free or an empty folder
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"extracted {summary.files} files ({summary.bytes / 1e6:.1f} MB) into {target}", flush=True)
    return summary


def _extract_nested(root: Path, limits: Limits, summary: ExtractSummary, depth: int) -> None:
    """Extract every .zip under `root` next to itself (then delete it), with the same guards and budget."""
    inner = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() == ".zip")
    if inner and depth > MAX_NESTING:
        raise ValueError(f"zip archives nested more than {MAX_NESTING} deep (e.g. {inner[0].relative_to(root)}); "
                         "refusing to go on")
    for path in inner:
        _extract_zip(path, path.parent, root, limits, summary, label=str(path.relative_to(root)))
        summary.files -= 1  # the inner zip is replaced by its contents
        summary.bytes -= path.stat().st_size
        path.unlink()
    if inner:
        _extract_nested(root, limits, summary, depth + 1)


def _extract_zip(archive: Path, dest: Path, root: Path, limits: Limits, summary: ExtractSummary, label: str) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"{label} is not a readable zip archive ({error}); delete it and download again") from error
    with zf:
        members = zf.infolist()
        plan = _plan(members, dest, root, limits, summary, label)
        total = sum(info.file_size for info, _ in plan)
        print(f"extracting {label}: {len(plan)} files, {total / 1e6:.1f} MB declared", flush=True)
        next_report = 0.1
        for number, (info, out) in enumerate(plan, 1):
            try:
                if info.is_dir():
                    out.mkdir(parents=True, exist_ok=True)
                else:
                    _write_member(zf, info, out, limits, summary, label)
                    summary.files += 1
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError, OSError) as error:
                raise ValueError(f"{label}: entry {info.filename!r} cannot be extracted ({error}); "
                                 "download the data again") from error
            if len(plan) >= 1000 and number / len(plan) >= next_report:
                print(f"  {label}: {number}/{len(plan)} entries", flush=True)
                next_report += 0.1
    summary.archives.append(label)


def _plan(members: list[zipfile.ZipInfo], dest: Path, root: Path, limits: Limits, summary: ExtractSummary,
          label: str) -> list[tuple[zipfile.ZipInfo, Path]]:
    """Check every entry before writing anything; return (entry, output path) pairs."""
    files = [m for m in members if not m.is_dir()]
    if summary.files + len(files) > limits.max_files:
        raise ValueError(f"{label} has {len(files)} files, more than the limit of {limits.max_files}; "
                         "refusing to extract")
    declared = sum(m.file_size for m in files)
    if summary.bytes + declared > limits.max_total_bytes:
        raise ValueError(
            f"{label} declares {declared} bytes uncompressed, over the limit of {limits.max_total_bytes} bytes "
            f"(with {summary.bytes} already extracted); refusing to extract (possible zip bomb)"
        )
    seen: set[str] = set()
    plan = []
    root_resolved = root.resolve()
    for info in members:
        parts = _safe_parts(info.filename, label)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode) or (mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR)):
            raise ValueError(f"{label}: entry {info.filename!r} is a link or special file; refusing to extract")
        _check_ratio(info, info.file_size, limits, label)
        key = "/".join(parts).lower()  # case-insensitively unique: no overwrites on case-insensitive disks either
        if key in seen and not info.is_dir():
            raise ValueError(f"{label}: entry {info.filename!r} appears more than once; refusing to overwrite")
        seen.add(key)
        out = dest.joinpath(*parts)
        if not out.resolve().is_relative_to(root_resolved):
            raise ValueError(f"{label}: entry {info.filename!r} would be written outside {root}; refusing to extract")
        if out.exists() and not info.is_dir():
            raise ValueError(f"{label}: entry {info.filename!r} would overwrite {out.relative_to(root)}; "
                             "refusing to extract")
        plan.append((info, out))
    return plan


def _safe_parts(name: str, label: str) -> list[str]:
    """Path components of an entry name, or ValueError for absolute paths, `..`, drive letters and NUL bytes."""
    unified = name.replace("\\", "/")
    if "\x00" in name or unified.startswith("/") or _DRIVE.match(unified):
        raise ValueError(f"{label}: entry {name!r} has an absolute path; refusing to extract")
    parts = [p for p in PurePosixPath(unified).parts if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"{label}: entry {name!r} points outside the target folder ('..'); refusing to extract")
    if not parts:
        raise ValueError(f"{label}: an entry has an empty name {name!r}; refusing to extract")
    return parts


def _check_ratio(info: zipfile.ZipInfo, size: int, limits: Limits, label: str) -> None:
    if size > RATIO_FLOOR_BYTES and size / max(info.compress_size, 1) > limits.max_ratio:
        raise ValueError(
            f"{label}: entry {info.filename!r} expands {size / max(info.compress_size, 1):.0f}x "
            f"({info.compress_size} -> {size} bytes), over the limit of {limits.max_ratio:.0f}x; "
            "refusing to extract (possible zip bomb)"
        )


def _write_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, out: Path, limits: Limits, summary: ExtractSummary,
                  label: str) -> None:
    """Stream one entry to disk, counting the bytes actually written against the limits.

    zipfile stops at the size the header declares and then checks the CRC, so an entry whose header
    understates its size fails with BadZipFile (a ValueError from the caller); counting here keeps the
    limits honest without relying on that.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with zf.open(info) as source, open(out, "xb") as sink:
        while block := source.read(_CHUNK):
            written += len(block)
            if summary.bytes + written > limits.max_total_bytes:
                raise ValueError(
                    f"{label}: extraction passed the limit of {limits.max_total_bytes} bytes at {info.filename!r}; "
                    "refusing to extract (possible zip bomb)"
                )
            _check_ratio(info, written, limits, label)
            sink.write(block)
    summary.bytes += written
