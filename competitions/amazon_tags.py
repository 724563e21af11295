"""The 17 Amazon tags and how probabilities become them: the one-weather rule, each image's F2, and the
per-tag threshold search that `Amazon.fit_decision` runs (pure numpy, no files).

Kept apart from the plugin (competitions/amazon.py), which reads Kaggle's files and submissions.
"""
from __future__ import annotations

import numpy as np

from pipeline.errors import UserError

TAGS: tuple[str, ...] = tuple(sorted((
    "agriculture", "artisinal_mine", "bare_ground", "blooming", "blow_down", "clear", "cloudy",
    "conventional_mine", "cultivation", "habitation", "haze", "partly_cloudy", "primary", "road",
    "selective_logging", "slash_burn", "water",
)))
WEATHER: tuple[str, ...] = ("clear", "cloudy", "haze", "partly_cloudy")  # exactly one per image
START_THRESHOLD = 0.2
WEATHER_THRESHOLD = 0.5  # weather is decided by the rule; this only feeds pseudo-label confidence
THRESHOLD_GRID = np.round(np.arange(0.02, 0.981, 0.02), 2)  # contains START_THRESHOLD


def decide_tags(y_prob: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Boolean tags: each at or over its threshold, then exactly one weather tag (the most probable)."""
    pred = y_prob >= thresholds
    cols = np.array([TAGS.index(t) for t in WEATHER])
    pred[:, cols] = False
    pred[np.arange(len(y_prob)), cols[np.argmax(y_prob[:, cols], axis=1)]] = True
    return pred


def search_thresholds(y_true: np.ndarray, y_prob: np.ndarray, start: np.ndarray, cols: list[int],
                      sweeps: int) -> np.ndarray:
    """Move one threshold at a time to its best grid value (others fixed); stop when a sweep changes nothing.

    A move needs a strict gain, and among equal scores the value nearest the current one wins, so the
    score never goes down and empty tags do not wander.
    """
    thresholds = start.astype(np.float64).copy()
    for _ in range(sweeps):
        moved = False
        for j in cols:
            pred = decide_tags(y_prob, thresholds)
            truth = y_true.astype(bool)
            rest = np.ones(len(TAGS), dtype=bool)
            rest[j] = False
            tp = (pred[:, rest] & truth[:, rest]).sum(1)[:, None]
            fp = (pred[:, rest] & ~truth[:, rest]).sum(1)[:, None]
            fn = (~pred[:, rest] & truth[:, rest]).sum(1)[:, None]
            on = y_prob[:, j, None] >= THRESHOLD_GRID[None, :]
            pos = truth[:, j, None]
            scores = row_f2(tp + (on & pos), fp + (on & ~pos), fn + (~on & pos)).mean(0)
            current = row_f2(tp + (pred[:, j, None] & pos), fp + (pred[:, j, None] & ~pos),
                              fn + (~pred[:, j, None] & pos)).mean()
            best = scores.max()
            if best > current + 1e-12:
                ties = np.flatnonzero(scores >= best - 1e-12)
                thresholds[j] = THRESHOLD_GRID[ties[np.argmin(np.abs(THRESHOLD_GRID[ties] - thresholds[j]))]]
                moved = True
        if not moved:
            break
    return thresholds


def row_f2(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """Per-image F2 from counts, as sklearn's samples average with zero_division=0 (no true positive -> 0)."""
    denom = 5 * tp + 4 * fn + fp
    return np.divide(5 * tp, denom, out=np.zeros(np.broadcast(tp, fp, fn).shape), where=tp > 0)


def parse_tags(tags: object, where: str) -> tuple[str, ...]:
    """The sorted tags of a space-separated text (empty for none); unknown or repeated tags name `where`."""
    if tags is None or (isinstance(tags, float) and np.isnan(tags)):
        tags = ""
    if not isinstance(tags, str):
        raise UserError(f"{where}: tags must be space-separated text, got {tags!r}")
    names = tags.split()
    for name in names:
        if name not in TAGS:
            raise UserError(f"{where}: tag {name!r} is not one of the 17 Amazon tags {list(TAGS)}")
    if len(set(names)) != len(names):
        raise UserError(f"{where}: a tag is repeated in {tags!r}; list each tag once")
    return tuple(sorted(names))


def binary_tags(y: np.ndarray, what: str) -> np.ndarray:
    """`y` as int8 0/1 of shape (n, 17); anything else is a ValueError naming `what`."""
    y = np.asarray(y)
    if y.ndim != 2 or y.shape[1] != len(TAGS):
        raise ValueError(f"{what} must have shape (n, {len(TAGS)}), got {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"{what} must hold only 0 and 1")
    return y.astype(np.int8)
