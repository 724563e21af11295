"""Submission tables: reindex to the expected ids, validate like Kaggle would, score against a solution."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import UserError
from pipeline.plugin.api import Competition


def reindex_to_expected(ids: list[str], y_submitted: np.ndarray, expected_ids: list[str]) -> tuple[list[str], np.ndarray]:
    """Rows in the expected order; an expected id with no prediction is an error, never a silent gap."""
    position = {item_id: row for row, item_id in enumerate(ids)}
    missing = [item_id for item_id in expected_ids if item_id not in position]
    if missing:
        raise UserError(
            f"{len(missing)} ids the sample submission expects have no test image, e.g. {missing[:5]}; "
            "check that the test folders are complete (re-download with `make data`)"
        )
    rows = np.array([position[item_id] for item_id in expected_ids], dtype=np.int64)
    return list(expected_ids), y_submitted[rows]


def validate_submission(table: pd.DataFrame, competition: Competition, classes: list[str], expected_ids: list[str]) -> None:
    """Raise UserError unless every expected id appears exactly once with valid values and nothing else does."""
    ids, values = competition.from_submission(table, classes)
    series = pd.Series(ids)
    duplicated = series[series.duplicated()].tolist()
    if duplicated:
        raise UserError(f"submission lists {len(duplicated)} ids more than once, e.g. {duplicated[:5]}")
    expected = set(expected_ids)
    extra = [item_id for item_id in ids if item_id not in expected]
    missing = [item_id for item_id in expected_ids if item_id not in set(ids)]
    if extra or missing:
        raise UserError(
            f"submission ids do not match the expected ids: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(extra)} unexpected (e.g. {extra[:3]})"
        )
    if not np.isfinite(values).all():
        bad = ids[int(np.argwhere(~np.isfinite(values))[0, 0])]
        raise UserError(f"submission has a NaN or infinite value, first in the row of id {bad!r}")
    if (values < 0).any() or (values > 1).any():
        bad = ids[int(np.argwhere((values < 0) | (values > 1))[0, 0])]
        raise UserError(f"submission values must lie in [0, 1]; the row of id {bad!r} does not")


def load_submission(csv_path: Path, competition: Competition, data_dir: Path) -> pd.DataFrame:
    """Read a submission CSV and validate it against the plugin and the data's expected ids."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise UserError(f"submission file {csv_path} does not exist")
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise UserError(f"{csv_path} is not a readable CSV: {error}") from error
    classes = competition.class_names(data_dir)
    expected = competition.expected_ids(data_dir)
    if expected is None:
        expected = competition.test_items(data_dir)["id"].tolist()
    try:
        validate_submission(table, competition, classes, expected)
    except UserError as error:
        raise UserError(f"{csv_path}: {error}") from error
    return table


def align_to_solution(competition: Competition, submission: pd.DataFrame, solution: pd.DataFrame,
                      classes: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y_true, submitted values, usage), row for row in the solution's order; a missing id is an error."""
    sub_ids, submitted = competition.from_submission(submission, classes)
    sol_ids, y_true, usage = competition.from_solution(solution, classes)
    position = {item_id: row for row, item_id in enumerate(sub_ids)}
    missing = [item_id for item_id in sol_ids if item_id not in position]
    if missing:
        raise UserError(f"the submission has no row for {len(missing)} solution ids, e.g. {missing[:3]}")
    return y_true, submitted[[position[item_id] for item_id in sol_ids]], np.asarray(usage)


def score_against_solution(competition: Competition, submission: pd.DataFrame, solution: pd.DataFrame, classes: list[str]) -> dict:
    """Public and private scores, as Kaggle's leaderboards compute them from the Usage column."""
    y_true, aligned, usage = align_to_solution(competition, submission, solution, classes)
    scores = {}
    for board in ("Public", "Private"):
        rows = usage == board
        scores[board.lower()] = float(competition.metric(y_true[rows], aligned[rows])) if rows.any() else None
    return scores


def read_solution(path: Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"solution file {path} does not exist (the samples write it beside their data/ folder)")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise UserError(f"solution {path} is not a readable CSV ({error}); expected Kaggle's solution.csv "
                        "with an id column, the answer columns and Usage") from error
    if "Usage" not in table.columns:
        raise UserError(f"{path} has no Usage column; Kaggle's solution files mark each row Public or Private")
    bad = sorted(set(table["Usage"]) - {"Public", "Private", "Ignored"})
    if bad:
        raise UserError(f"{path}: Usage must be Public, Private or Ignored, found {bad[:3]}")
    return table
