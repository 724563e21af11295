"""The competition plugin API: the types a plugin implements and returns, in one place.

A plugin knows one competition's files, labels, metric and submission format; the engine knows none of
that. This module is what the two share: `Competition` (the class a plugin subclasses), `Metric` (a metric's
name and direction), `Decision` (what turns probabilities into a submission), the columns of the item tables
and the leaderboard `GROUPS`. The contract that checks a plugin against these is pipeline/plugin/contract.py;
the registry that finds plugins by name is pipeline/plugin/registry.py.
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import numpy as np
import pandas as pd

from pipeline.errors import UserError

TRAIN_COLUMNS = ("path", "labels")  # labels: tuple of class names (exactly one for single-label)
TEST_COLUMNS = ("path", "id", "group")  # group: "public" or "private" (the leaderboard it counts for)
GROUPS = ("public", "private")
FLIPS = ("none", "horizontal", "horizontal_and_vertical")


@dataclass(frozen=True)
class Metric:
    """A leaderboard metric and its direction: the verdict, the guard and every ranking read the direction."""

    name: str
    higher_is_better: bool


@dataclass(frozen=True)
class Decision:
    """What turns probabilities into the submitted values, fit on the scored rows by `Competition.fit_decision`.

    `thresholds`: per-class cut-offs (multi-label), None when the probabilities are submitted or argmaxed;
    pseudo-label selection reads them too ("confidently on/off" is relative to them). `scores`: figures
    recorded beside it (e.g. the metric at a flat threshold), never read by the engine.
    """

    thresholds: tuple[float, ...] | None = None
    scores: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.thresholds is not None:
            values = tuple(float(t) for t in np.asarray(self.thresholds, dtype=np.float64).ravel())
            if not all(math.isfinite(t) for t in values):
                raise ValueError(f"decision thresholds must be finite, got {values}")
            object.__setattr__(self, "thresholds", values)
        object.__setattr__(self, "scores", {str(k): float(v) for k, v in dict(self.scores).items()})

    @property
    def threshold_array(self) -> np.ndarray | None:
        return None if self.thresholds is None else np.asarray(self.thresholds, dtype=np.float64)

    def to_dict(self) -> dict:
        """The JSON form kept in metrics.json: {"thresholds": [...] or null, <score name>: value, ...}."""
        return {"thresholds": None if self.thresholds is None else list(self.thresholds), **self.scores}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any], where: str = "decision") -> "Decision":
        """Read `to_dict`'s form back (metrics.json); a malformed record is a UserError naming `where`."""
        if not isinstance(record, Mapping):
            raise UserError(f"{where} must be a JSON object like {{\"thresholds\": null}}, got {record!r}")
        thresholds = record.get("thresholds")
        if thresholds is not None and not (isinstance(thresholds, list) and all(_is_number(t) for t in thresholds)):
            raise UserError(f"{where}: thresholds must be null or a list of numbers, got {thresholds!r}")
        scores = {k: v for k, v in record.items() if k != "thresholds"}
        bad = [k for k, v in scores.items() if not _is_number(v)]
        if bad:
            raise UserError(f"{where}: {bad[0]!r} must be a number, got {scores[bad[0]]!r}")
        return cls(None if thresholds is None else tuple(thresholds), scores)


class Competition(abc.ABC):
    """One Kaggle competition: where its files are, what a label is, how it is scored and submitted.

    `y_true` and predictions are float matrices of shape (n_items, n_classes) in the order of
    `class_names()`: one-hot rows for single-label competitions, 0/1 rows for multi-label ones.
    """

    name: ClassVar[str]
    multi_label: ClassVar[bool] = False
    metrics: ClassVar[tuple[Metric, ...]]  # each with its direction; the first one is the default
    kaggle_slug: ClassVar[str | None] = None  # the competition's name in Kaggle URLs and the API
    # the top-level names its data folder has after a Kaggle download (`make data`); empty: check_layout only
    kaggle_layout: ClassVar[tuple[str, ...]] = ()
    flips: ClassVar[str] = "horizontal"  # mirror images that keep the label: none | horizontal | horizontal_and_vertical

    def __init__(self, metric: str | None = None) -> None:
        names = [m.name for m in self.metrics]
        if metric is not None and metric not in names:
            raise UserError(f"--metric {metric!r} is not available for {self.name}; choose one of {', '.join(names)}")
        self.metric_name = metric or names[0]

    # ---- data ------------------------------------------------------------------------------------
    @abc.abstractmethod
    def check_layout(self, data_dir: Path) -> None:
        """Raise UserError naming what is missing under `data_dir` and how to get it."""

    @abc.abstractmethod
    def class_names(self, data_dir: Path) -> list[str]:
        """Class (or tag) names in submission column order."""

    @abc.abstractmethod
    def train_items(self, data_dir: Path) -> pd.DataFrame:
        """Columns TRAIN_COLUMNS; `path` absolute, `labels` a tuple of class names."""

    @abc.abstractmethod
    def test_items(self, data_dir: Path) -> pd.DataFrame:
        """Columns TEST_COLUMNS, in a deterministic order; `id` is the submission id."""

    def expected_ids(self, data_dir: Path) -> list[str] | None:
        """Ids (and their order) the submission must contain, from the sample submission; None = the test items."""
        return None

    def sample_submission(self, data_dir: Path) -> Path | None:
        """The CSV `expected_ids` reads (named in error messages); None when there is none."""
        return None

    # ---- scoring and submission ------------------------------------------------------------------
    @property
    def greater_is_better(self) -> bool:
        """The chosen metric's declared direction (`Metric.higher_is_better`)."""
        return next(m.higher_is_better for m in self.metrics if m.name == self.metric_name)

    def fit_decision(self, y_true: np.ndarray, y_prob: np.ndarray) -> Decision:
        """What turns probabilities into the submission (e.g. per-tag thresholds), fit on the scored rows."""
        return Decision()

    def decide(self, y_prob: np.ndarray, decision: Decision) -> np.ndarray:
        """What gets submitted for these probabilities under `decision`: the probabilities themselves by default."""
        return y_prob

    @abc.abstractmethod
    def metric(self, y_true: np.ndarray, y_submitted: np.ndarray) -> float:
        """The leaderboard metric on what is submitted (the output of `decide`)."""

    def metric_rows(self, y_true: np.ndarray, y_submitted: np.ndarray) -> np.ndarray | None:
        """Optional: one value per row whose mean is `metric` (log loss, accuracy, samples-F2 are such means).
        The verdict's bootstrap then resamples these instead of calling `metric` 3,000 times; None = not a mean."""
        return None

    @abc.abstractmethod
    def to_submission(self, ids: list[str], y_submitted: np.ndarray, classes: list[str]) -> pd.DataFrame:
        """The submission table, columns in Kaggle's order."""

    @abc.abstractmethod
    def from_submission(self, submission: pd.DataFrame, classes: list[str]) -> tuple[list[str], np.ndarray]:
        """Parse a submission table back to (ids, y_submitted); UserError naming the first bad row/column."""

    @abc.abstractmethod
    def from_solution(self, solution: pd.DataFrame, classes: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Parse Kaggle's post-competition solution.csv to (ids, y_true, usage) with usage 'Public'/'Private'."""

    # ---- bundled sample --------------------------------------------------------------------------
    @abc.abstractmethod
    def make_sample(self, out_dir: Path, seed: int = 0, small: bool = False) -> None:
        """Write a small data set in this competition's layout to out_dir/data and its answers to out_dir/solution.csv.

        `small`: a few dozen images per group, both groups present, every class in train: what the generated
        per-plugin tests train on (tests/test_plugin_contract.py)."""


def target_matrix(labels: pd.Series, classes: list[str], source: Callable[[int], str] | None = None) -> np.ndarray:
    """Rows of 0/1 targets in `classes` order from tuples of class names; unknown names are a UserError."""
    index = {name: i for i, name in enumerate(classes)}
    y = np.zeros((len(labels), len(classes)), dtype=np.float32)
    for row, names in enumerate(labels):
        for name in names:
            if name not in index:
                where = source(row) if source else f"row {row}"
                raise UserError(f"{where}: label {name!r} is not one of the known classes {classes}")
            y[row, index[name]] = 1.0
    return y


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
