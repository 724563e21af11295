"""The plugin contract, checked rather than only written down.

A plugin is checked twice: its class when it registers (name, metrics with their direction, flips, the
Kaggle layout, no abstract method left), and its item tables when a run lists them (required columns,
`group` public or private, unique non-empty ids and paths, labels that are tuples of known classes; names
that are valid UTF-8 and class names that a submission can hold beside its id). Every failure is a
UserError naming the plugin, the column or value, and the fix, so a broken plugin fails at once instead
of after training. The types it checks against live in pipeline/plugin/api.py.
"""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import UserError
from pipeline.files import is_utf8, printable
from pipeline.plugin.api import FLIPS, GROUPS, TEST_COLUMNS, TRAIN_COLUMNS, Competition, Metric

PLUGIN_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
# why a name must be valid UTF-8: what a message about one says
NOT_UTF8 = ("shown with its bytes as \\xNN; Linux file names are bytes, and this one cannot be written to the submission "
            "CSV, the run's JSON files or the ledger")


def check_plugin_class(cls: type) -> None:
    """Refuse a plugin class that the engine could not use: called by `@register`, before it is listed."""
    where = f"plugin class {cls.__module__}.{cls.__qualname__}"
    if not (isinstance(cls, type) and issubclass(cls, Competition)):
        raise UserError(f"{where} is not a subclass of pipeline.plugin.api.Competition; subclass it to register")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not PLUGIN_NAME.match(name):
        raise UserError(f"{where}: name = {name!r} must be lowercase letters, digits, '_' or '-' (it is the "
                        "--competition value and a folder name); set the class attribute `name`")
    where = f"plugin {name!r} ({cls.__module__}.{cls.__qualname__})"
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise UserError(f"{where} does not define {missing}; every Competition method marked abstract is required")
    metrics = getattr(cls, "metrics", None)
    if not isinstance(metrics, tuple) or not metrics:
        raise UserError(f"{where}: metrics = {metrics!r} must be a non-empty tuple of Metric(name, higher_is_better) "
                        "(the first is the default)")
    for metric in metrics:
        if not isinstance(metric, Metric):
            raise UserError(f"{where}: metric {metric!r} has no direction; declare it as "
                            f"Metric({str(metric)!r}, higher_is_better=True or False)")
        if not isinstance(metric.higher_is_better, bool):
            raise UserError(f"{where}: metric {metric.name!r} has higher_is_better={metric.higher_is_better!r}; "
                            "it must be True or False")
    names = [m.name for m in metrics]
    if len(set(names)) != len(names):
        raise UserError(f"{where}: metric names {names} repeat; each metric once")
    check_flips(cls.flips, where)
    layout = cls.kaggle_layout
    if not (isinstance(layout, tuple) and all(isinstance(name, str) and name for name in layout)):
        raise UserError(f"{where}: kaggle_layout = {layout!r} must be a tuple of file or folder names (what the data "
                        "folder holds after a Kaggle download), or () to check only check_layout")
    if not isinstance(cls.multi_label, bool):
        raise UserError(f"{where}: multi_label = {cls.multi_label!r} must be True or False")


def check_flips(flips: object, where: str) -> None:
    if flips not in FLIPS:
        raise UserError(f"{where}: flips = {flips!r} must be one of {', '.join(FLIPS)} (which mirror images keep "
                        "the label)")


def check_items(competition: Competition, data_dir: Path, train: pd.DataFrame, test: pd.DataFrame) -> None:
    """Both item tables of a run, once, right after the plugin lists them (preflight calls it)."""
    if not is_utf8(data_dir):
        raise UserError(f"the data folder {printable(data_dir)} has a name that is not valid UTF-8 ({NOT_UTF8}); "
                        "rename the folder (or a folder above it) to a UTF-8 name and pass that as --data")
    check_train_items(competition, competition.class_names(data_dir), train)
    check_test_items(competition, test)


def check_train_items(competition: Competition, classes: list[str], table: pd.DataFrame) -> None:
    """`train_items`: columns path and labels; unique non-empty paths; labels tuples of known class names
    (exactly one for a single-label competition, at least one for a multi-label one)."""
    where = _where(competition, "train_items")
    _check_table(table, TRAIN_COLUMNS, where)
    check_class_names(competition, classes)
    _check_names(table["path"], "path", where, "an image file path")
    known = set(classes)
    for row, labels in enumerate(table["labels"]):
        problem = _label_problem(labels, known, competition.multi_label)
        if problem:
            raise UserError(f"{where} row {row} (path {table['path'].iloc[row]!r}): labels {labels!r} {problem}; the "
                            f"classes are {classes}")


def check_class_names(competition: Competition, classes: list[str]) -> None:
    """`class_names`: each class once, a non-empty UTF-8 string (it is a column or a tag of the submission CSV),
    and none named like a column the submission already has (a class folder `id` beside the id column)."""
    where = _where(competition, "class_names")
    if len(set(classes)) != len(classes):
        raise UserError(f"{where} repeats a class name in {classes}; each class once")
    for name in classes:
        if not isinstance(name, str) or not name:
            raise UserError(f"{where}: class {name!r} is not a non-empty string; every class needs a name")
        if not is_utf8(name):
            raise UserError(f"{where}: class '{printable(name)}' is not valid UTF-8 ({NOT_UTF8}); rename it (a class "
                            "folder: rename the folder) to a UTF-8 name")
    probe = competition.to_submission(["probe"], np.zeros((1, len(classes)), dtype=np.float32), classes)
    columns = [str(c) for c in probe.columns]
    taken = [c for c in columns if columns.count(c) > 1]
    if taken:
        raise UserError(f"{where}: class {taken[0]!r} has the name of a column the submission already has "
                        f"({', '.join(dict.fromkeys(taken))}: the submission's header would name it twice); rename that "
                        "class (a class folder: rename the folder)")


def check_test_items(competition: Competition, table: pd.DataFrame) -> None:
    """`test_items`: columns path, id and group; group only public or private; unique non-empty ids and paths."""
    where = _where(competition, "test_items")
    _check_table(table, TEST_COLUMNS, where)
    _check_names(table["path"], "path", where, "an image file path")
    _check_names(table["id"], "id", where, "the submission id")
    groups = table["group"]
    bad = groups[~groups.isin(GROUPS)]
    if len(bad):
        raise UserError(f"{where}: group {bad.iloc[0]!r} (row {bad.index[0]}, id {table['id'].loc[bad.index[0]]!r}) is "
                        f"not one of {', '.join(GROUPS)}; each test item counts for the public or the private leaderboard")


def _check_table(table: object, columns: tuple[str, ...], where: str) -> None:
    if not isinstance(table, pd.DataFrame):
        raise UserError(f"{where} returned a {type(table).__name__}; it must return a pandas DataFrame with columns "
                        f"{', '.join(columns)}")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise UserError(f"{where} lacks column(s) {', '.join(missing)} (it has {', '.join(map(str, table.columns)) or 'none'}); "
                        f"it must return columns {', '.join(columns)}")


def _check_names(values: pd.Series, column: str, where: str, what: str) -> None:
    """Non-empty UTF-8 strings, each once (a repeated id or path would be predicted twice and submitted once)."""
    empty = values[~values.map(lambda v: isinstance(v, str) and v != "")]
    if len(empty):
        raise UserError(f"{where}: {column} {empty.iloc[0]!r} at row {empty.index[0]} is not a non-empty string; "
                        f"each row needs {what}")
    bad = values[~values.map(is_utf8)]
    if len(bad):
        more = f" ({len(bad) - 1} more like it)" if len(bad) > 1 else ""
        raise UserError(f"{where}: {column} '{printable(bad.iloc[0])}' at row {bad.index[0]}{more} is not valid UTF-8 "
                        f"({NOT_UTF8}); rename the file (or its folder) to a UTF-8 name")
    repeated = values[values.duplicated()]
    if len(repeated):
        raise UserError(f"{where}: {column} {repeated.iloc[0]!r} appears {int((values == repeated.iloc[0]).sum())} times "
                        f"({len(repeated)} repeats in all); each {column} must be unique")


def _label_problem(labels: object, known: set[str], multi_label: bool) -> str | None:
    if not isinstance(labels, tuple):
        return f"is a {type(labels).__name__}, not a tuple of class names"
    unknown = [name for name in labels if name not in known]
    if unknown:
        return f"holds {unknown[0]!r}, not a class of this competition"
    if len(set(labels)) != len(labels):
        return "repeats a class"
    if multi_label and not labels:
        return "is empty; every image needs at least one label"
    if not multi_label and len(labels) != 1:
        return f"has {len(labels)} classes; a single-label competition needs exactly one per image"
    return None


def _where(competition: Competition, method: str) -> str:
    cls = type(competition)
    return f"plugin {cls.name!r} {method}() ({cls.__module__}.{cls.__qualname__})"
