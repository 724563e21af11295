"""Which labeled items each model trains on and which it is scored on: one holdout, or K folds.

`fold[i]` is the model that is scored on labeled item i and never trains on it: with --folds 1 the holdout
rows are fold 0 and the rest -1 (trained on by the one model); with K folds every item is in exactly one.
Stratified by class (multi-label: by each item's rarest tag), so small classes appear on both sides.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from pipeline.errors import UserError

TRAIN_ONLY = -1


def stratification_key(y: np.ndarray) -> np.ndarray:
    """One bucket per item: its class, or for multi-label its rarest tag; buckets of one item are pooled."""
    frequency = y.sum(axis=0)
    key = np.where(y.any(axis=1), np.argmin(np.where(y > 0, frequency, np.inf), axis=1), -1)
    counts = pd.Series(key).value_counts()
    return np.where(pd.Series(key).map(counts).to_numpy() < 2, -2, key)


def assign_folds(y: np.ndarray, folds: int, val_fraction: float, seed: int) -> np.ndarray:
    """Fold per labeled row (see the module docstring)."""
    n = len(y)
    if n < 10:
        raise UserError(f"only {n} readable train images; at least 10 are needed to hold some out")
    key = stratification_key(y)
    fold = np.full(n, TRAIN_ONLY, dtype=np.int64)
    rows = np.arange(n)
    if folds == 1:
        try:
            _, holdout = train_test_split(rows, test_size=val_fraction, random_state=seed, stratify=key)
        except ValueError:  # a pooled bucket of one item still cannot be stratified
            _, holdout = train_test_split(rows, test_size=val_fraction, random_state=seed)
        fold[holdout] = 0
        return fold
    if folds > n // 2:
        raise UserError(f"--folds {folds} leaves fewer than 2 of the {n} train images per fold; use at most {n // 2}")
    smallest = int(pd.Series(key).value_counts().min())
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    if smallest < folds:  # some class has fewer items than folds: sklearn would warn and skew; split unstratified
        key = np.zeros(n)
    for k, (_, scored) in enumerate(splitter.split(rows, key)):
        fold[scored] = k
    return fold


def n_models(fold: np.ndarray) -> int:
    return int(fold.max()) + 1


def model_rows(fold: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(m, the rows model m trains on, the rows it is scored on) for every model of the split, in order."""
    for m in range(n_models(fold)):
        yield m, np.flatnonzero(fold != m), np.flatnonzero(fold == m)


def split_table(paths: list[str], fold: np.ndarray) -> pd.DataFrame:
    """split.csv: each labeled image, its fold and whether it is trained on or scored by the one-holdout model."""
    role = np.where(fold == TRAIN_ONLY, "train", "holdout" if n_models(fold) == 1 else "fold")
    return pd.DataFrame({"path": paths, "fold": fold, "role": role})
