"""Guarded extraction of downloaded competition archives: zip, 7z, tar, tar.gz/tgz/bz2/xz, and nests of them.

Kaggle archives are untrusted input: an entry may try to escape the target (`../evil`, `/etc/x`), be a
link or a device, or be part of a bomb (one huge entry, or many small ones). Every entry is checked
before a byte of it is written (name, type, declared size) and the bytes actually written count against
the same limits while streaming: per-entry and total expansion ratio, a total size cap, and a share of the
free disk space. Nothing is ever read whole into memory (Amazon's archives are GBs).

Extraction goes into a hidden staging folder beside the target that is renamed into place only when every
archive, nested ones included (Kaggle ships `train.zip` and `test_stg2.7z` inside the competition zip, and
Amazon's images as `.tar.7z`), has been extracted. With a `layout` (the top-level names a competition
expects), entries of the download the layout does not need are skipped, and a redundant top folder inside
an archive is flattened (`train.zip` holding `train/train/...`, a zip wrapped in a folder named after
the competition, a `test_stg2.7z` holding bare images).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Collection
from pathlib import Path

from pipeline.errors import UserError
from pipeline.kaggle.archive_formats import archive_stem, extract_one, is_archive
from pipeline.kaggle.extract_guard import Budget, ExtractSummary, Limits, is_junk

MAX_NESTING = 3
NOT_EXTRACTED_SUFFIXES = (".rar", ".gz", ".bz2", ".xz")  # single-file compressions: left alone and named


def extract_archive(archive: Path, target: Path, limits: Limits = Limits(), layout: Collection[str] | None = None,
                    verify: Callable[[Path], None] | None = None) -> ExtractSummary:
    """Extract `archive` and every archive inside it into the new folder `target`; ValueError if anything is unsafe.

    `target` must not exist or be an empty folder: a complete download is never mixed with an old one.
    `layout`: the top-level names the result should have (e.g. `train`, `test_stg2`,
    `sample_submission_stg2.csv`); entries of `archive` that none of them needs are skipped, and inner
    archives are placed so that their contents land under their layout name. `verify(staging)` runs on the
    complete extraction before it is moved into place: when it raises, `target` is never created.
    """
    archive, target = Path(archive), Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"{target} already exists and is not an empty folder; remove it or choose another target")
    if not archive.is_file():
        raise UserError(f"archive {archive} does not exist; download it again")
    target.parent.mkdir(parents=True, exist_ok=True)
    layout_names = frozenset(layout or ())
    summary = ExtractSummary()
    budget = Budget(limits, summary, free_bytes=shutil.disk_usage(target.parent).free,
                    top_size=archive.stat().st_size, where=target.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        keep = _needed_by(layout_names) if layout_names else None
        if layout_names:
            unpack = Path(tempfile.mkdtemp(prefix=".unpack-", dir=staging))
            extract_one(archive, unpack, staging, budget, archive.name, keep=keep)
            _place(unpack, staging, archive_stem(archive.name), layout_names, archive.name)
        else:
            extract_one(archive, staging, staging, budget, archive.name, keep=keep)
        _extract_nested(staging, budget, layout_names, depth=1)
        summary.not_extracted = sorted(str(p.relative_to(staging)) for p in staging.rglob("*")
                                       if p.is_file() and p.name.lower().endswith(NOT_EXTRACTED_SUFFIXES))
        if verify is not None:
            verify(staging)
        if target.exists():
            target.rmdir()  # empty (checked above); os.replace needs the name free or an empty folder
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    summary.skipped.sort()
    skipped = f"; skipped (not needed): {', '.join(summary.skipped)}" if summary.skipped else ""
    print(f"extracted {summary.files} files ({summary.bytes / 1e6:.1f} MB) into {target}{skipped}", flush=True)
    return summary


def _needed_by(layout: frozenset[str]) -> Callable[[str], bool]:
    """Whether an entry of the download is needed: some part of its path, archive suffixes removed, is a layout name."""
    def keep(name: str) -> bool:
        return any(archive_stem(part) in layout or part in layout for part in name.replace("\\", "/").split("/"))
    return keep


def _extract_nested(root: Path, budget: Budget, layout: frozenset[str], depth: int) -> None:
    """Extract every archive under `root` where it lies (then delete it), with the same guards and budget."""
    inner = sorted(p for p in root.rglob("*") if p.is_file() and is_archive(p.name) and not is_junk(p.name))
    if not inner:
        return
    if depth > MAX_NESTING:
        raise UserError(f"archives nested more than {MAX_NESTING} deep (e.g. {inner[0].relative_to(root)}); "
                         "refusing to go on")
    for path in inner:
        label = str(path.relative_to(root))
        unpack = Path(tempfile.mkdtemp(prefix=f".{path.name}.unpack-", dir=path.parent))
        extract_one(path, unpack, root, budget, label)
        budget.summary.files -= 1  # the inner archive is replaced by its contents
        budget.summary.bytes -= path.stat().st_size
        path.unlink()
        _place(unpack, path.parent, archive_stem(path.name), layout, label)
    _extract_nested(root, budget, layout, depth + 1)


def _place(unpack: Path, dest: Path, stem: str, layout: frozenset[str], label: str) -> None:
    """Move what an archive held from its unpack folder into `dest`, flattening redundant top folders.

    Without a layout everything lands next to the archive, as extracted. With one: a single top folder
    that is not a layout name (the competition's name), or that repeats the archive's own name inside
    itself (`train/train/`), is unwrapped; an archive named after a layout folder whose contents are not
    in that folder (`test_stg2.7z` holding bare images) becomes that folder.
    """
    source = unpack
    if layout:
        while True:
            entries = _visible(source)
            if len(entries) != 1 or not entries[0].is_dir():
                break
            only = entries[0]
            children = _visible(only)
            redundant = only.name == stem and len(children) == 1 and children[0].is_dir() and children[0].name == stem
            if only.name in layout and not redundant:
                break
            source = only
        names = {archive_stem(e.name) for e in _visible(source)}
        if stem in layout and stem not in names and not names & layout:
            _move(source, dest / stem, label)
            shutil.rmtree(unpack, ignore_errors=True)
            return
    for entry in _visible(source):
        _move(entry, dest / entry.name, label)
    shutil.rmtree(unpack, ignore_errors=True)


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not is_junk(p.name))


def _move(source: Path, destination: Path, label: str) -> None:
    if destination.exists():
        raise UserError(f"{label}: its {source.name!r} would overwrite {destination.name!r}, which another archive "
                         "already extracted; refusing to mix them (download the data again or report the archive)")
    os.replace(source, destination)

