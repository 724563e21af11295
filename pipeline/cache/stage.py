"""One cached stage: key -> load a verified entry and validate it for this run (or discard it) -> compute -> write.

Why one mechanism: the teacher, every student and control, a frozen backbone's embeddings and the shift report
are cached alike. Each names its entry with `cache_key` (the digest of everything that determines it), and
`get_or_compute` does the rest: a complete, intact entry whose content fits the run is a hit; a damaged or
unfitting one is reported, removed and computed again (pipeline/cache/entries.py); a miss is computed and
written whole.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import numpy as np

from pipeline.cache import entries
from pipeline.files import json_plain, sha256_of

T = TypeVar("T")
Writers = dict[str, Callable[[Path], None]]


def cache_key(parts: dict) -> str:
    """The name of the entry made from `parts`: 20 hex digits of the sha256 of their sorted JSON.

    Never change how this text is made: every cached teacher, model, embedding and shift report is found by it."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=json_plain).encode()).hexdigest()[:20]


def lines_digest(lines) -> str:
    """Order matters: feature rows and shift sets follow the path order."""
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def array_digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def weights_identity(weights: str) -> str:
    """What keys --weights: `imagenet` or `none` as such, a weights file by its sha256 (not its path)."""
    return weights if weights in ("imagenet", "none") else sha256_of(Path(weights))


def folder_of(cfg, kind: str, key: str) -> Path:
    """The entry `key` of this kind (teachers, students, controls, features, shift) for the run's competition."""
    return Path(cfg.cache_dir) / cfg.competition / kind / key


def get_or_compute(folder: Path, names: Sequence[str], load: Callable[[Path], T],
                   compute: Callable[[], tuple[T, Writers]], hit_line: str, read: bool = True) -> tuple[T, bool]:
    """(the value cached in `folder`, True) after printing `hit_line`, or (the value computed now, False).

    `compute()` returns the value and the writers of the entry's files (see `read_entry` for `names` and `load`).
    `read=False` always computes, and still writes the entry."""
    value = read_entry(folder, names, load) if read else None
    if value is not None:
        print(hit_line, flush=True)
        return value, True
    value, files = compute()
    entries.write_entry(folder, files)
    return value, False


def read_entry(folder: Path, names: Sequence[str], load: Callable[[Path], T]) -> T | None:
    """`load(folder)` of an entry whose `names` match its manifest, or None: a miss, or an unusable entry (warned
    about and removed). `load` raises one of entries.LOAD_ERRORS when the content does not fit this run."""
    if entries.load_entry(folder, names) is None:
        return None
    try:
        return load(folder)
    except entries.LOAD_ERRORS as error:
        entries.discard(folder, f"{type(error).__name__}: {error}")
        return None
