"""Competition plugins: the interface the engine relies on, and a name -> plugin registry.

A plugin knows one competition's files, labels, metric and submission format; the engine knows none of
that. Plugins are the modules of the `competitions` package, found like the CLI's commands (every module is
imported; those that define a plugin register it with `@register`). The contract is checked, not only
documented (pipeline/plugin/contract.py): the class when it registers, its item tables when a run lists them.
"""
from __future__ import annotations

import abc
import importlib
import inspect
import pkgutil
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import pandas as pd

from pipeline.plugin.contract import GROUPS, TEST_COLUMNS, TRAIN_COLUMNS, Decision, Metric, check_flips, check_plugin_class
from pipeline.errors import UserError

__all__ = ["GROUPS", "TEST_COLUMNS", "TRAIN_COLUMNS", "Competition", "Decision", "Metric", "get_competition",
           "list_competitions", "register", "target_matrix"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class Competition(abc.ABC):
    """One Kaggle competition: where its files are, what a label is, how it is scored and submitted.

    `y_true` and predictions are float matrices of shape (n_items, n_classes) in the order of
    `class_names()`: one-hot rows for single-label competitions, 0/1 rows for multi-label ones.
    """

    name: ClassVar[str]
    multi_label: ClassVar[bool] = False
    metrics: ClassVar[tuple[Metric, ...]]  # each with its direction; the first one is the default
    kaggle_slug: ClassVar[str | None] = None  # the competition's name in Kaggle URLs and the API
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


_REGISTRY: dict[str, type[Competition]] = {}


def register(cls: type[Competition]) -> type[Competition]:
    """Class decorator: check the plugin class against the contract, then make it available under `cls.name`."""
    check_plugin_class(cls)
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise UserError(f"two competition plugins are named {cls.name!r}: {_REGISTRY[cls.name]} and {cls}; rename one")
    _REGISTRY[cls.name] = cls
    return cls


def list_competitions() -> list[str]:
    _load_plugins()
    return sorted(_REGISTRY)


def get_competition(name: str, metric: str | None = None, options: dict[str, str] | None = None) -> Competition:
    """The plugin called `name`, with plugin-specific `options` (keyword arguments of its constructor).

    An unknown name lists the valid ones; an unknown option lists the plugin's options."""
    _load_plugins()
    if name not in _REGISTRY:
        raise UserError(f"unknown competition {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    plugin = _REGISTRY[name]
    accepted = [p for p in inspect.signature(plugin.__init__).parameters if p not in ("self", "metric")]
    unknown = sorted(set(options or {}) - set(accepted))
    if unknown:
        raise UserError(f"{name} has no option {', '.join(unknown)}; its options: {', '.join(accepted) or 'none'}")
    competition = plugin(metric=metric, **(options or {}))
    check_flips(competition.flips, f"plugin {name!r}")  # a plugin option may set it per instance
    return competition


def _load_plugins() -> None:
    """Import every module of the `competitions` package once (as the CLI finds its commands): a module that
    defines a plugin registers it; helper modules (single_label) and subpackages (samples) register nothing.
    A concrete Competition subclass that a module defines but does not register is refused: it would
    silently be missing from every list and test."""
    import competitions

    for module in sorted(m.name for m in pkgutil.iter_modules(competitions.__path__) if not m.ispkg):
        loaded = importlib.import_module(f"competitions.{module}")
        for _, cls in inspect.getmembers(loaded, inspect.isclass):
            if (issubclass(cls, Competition) and cls.__module__ == loaded.__name__ and not inspect.isabstract(cls)
                    and _REGISTRY.get(getattr(cls, "name", None)) is not cls):
                raise UserError(f"{loaded.__name__}.{cls.__name__} is a Competition plugin that is not registered; "
                                "decorate it with @register (from pipeline.plugin.registry)")


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
