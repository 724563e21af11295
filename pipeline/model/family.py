"""A family of models: one per fold of the split, each fit on its fold's train rows, predicting the fold's scored
rows (which it never trained on) and the test set. The teacher is one, the control another.

Why one loop: every labeled row is scored by exactly the model that never saw it, for the teacher and the
control alike, so the verdict compares them on honest predictions.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from pipeline.data import split
from pipeline.run.seeds import teacher_seed

if TYPE_CHECKING:
    from pipeline.data.items import Items
    from pipeline.model.spec import ModelSpec


@dataclass
class FoldModel:
    """One model of a family and its predictions."""

    scored_probs: np.ndarray  # its fold's scored rows
    test_probs: np.ndarray  # every readable test item
    info: dict
    model: object = None  # the Keras model, where the caller keeps it (the teacher caches its weights)


def fit_family(name: str, fold: np.ndarray, n_classes: int,
               fit_one: Callable[[int, str, np.ndarray, np.ndarray], FoldModel]) -> tuple[np.ndarray, list[FoldModel]]:
    """`fit_one(m, label, fit_rows, scored_rows)` for every model m of the split, in order.

    Returns the scored rows' probabilities, (n_train, C), each row predicted by the model that never trained on it
    (NaN on rows no model is scored on), and the models."""
    n_models = split.n_models(fold)
    scored = np.full((len(fold), n_classes), np.nan, dtype=np.float32)
    models = []
    for m, fit_rows, scored_rows in split.model_rows(fold):
        label = name if n_models == 1 else f"{name} {m + 1}/{n_models}"
        one = fit_one(m, label, fit_rows, scored_rows)
        scored[scored_rows] = one.scored_probs
        models.append(one)
    return scored, models


def mean_over_models(test_probs: list[np.ndarray]) -> np.ndarray:
    """The family's test prediction: the models' mean, summed in model order as p / K, the order every cached control
    and student prediction was made in (np.mean's pairwise sum can differ in the last bits)."""
    mean = np.zeros_like(test_probs[0])
    for probs in test_probs:
        mean += probs / len(test_probs)
    return mean


def fit_teacher(spec: ModelSpec, items: Items, epochs: int, augment_level: str, seed: int) -> tuple[np.ndarray, list[FoldModel], float]:
    """The teacher's models, trained now: (scored rows' probabilities, the models, seconds)."""
    from pipeline.model import train

    def fit_one(m: int, label: str, fit_rows: np.ndarray, scored_rows: np.ndarray) -> FoldModel:
        model, info = train.fit(spec, label, items.train_x[fit_rows], items.y[fit_rows],
                                spec.steps(len(fit_rows), epochs), teacher_seed(seed, m), augment_level)
        return FoldModel(train.predict(model, items.train_x, scored_rows, spec), items.predict_test(model, spec), info,
                         model)

    started = time.perf_counter()
    scored, models = fit_family("teacher", items.fold, spec.n_classes, fit_one)
    return scored, models, time.perf_counter() - started
