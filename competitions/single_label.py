"""Shared parts of single-label competitions scored on a probability table (`id,<class>,...`)."""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
from pipeline.errors import UserError
from pipeline.files import printable
from pipeline.plugin.api import Competition, Metric

KAGGLE_LOGLOSS_EPS = 1e-15


def kaggle_log_loss(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    """Kaggle's multi-class log loss: each row divided by its sum, then clipped to [eps, 1 - eps]."""
    from sklearn.metrics import log_loss  # imported here: scikit-learn costs a second at CLI start-up

    prob = np.asarray(y_prob, dtype=np.float64)
    prob = prob / prob.sum(axis=1, keepdims=True)
    prob = np.clip(prob, KAGGLE_LOGLOSS_EPS, 1 - KAGGLE_LOGLOSS_EPS)
    return float(log_loss(np.argmax(y_true, axis=1), prob, labels=list(range(prob.shape[1]))))


def kaggle_log_loss_rows(y_true: np.ndarray, y_prob: np.ndarray) -> np.ndarray:
    """Each row's term of `kaggle_log_loss` (their mean is it): minus the log of the true class's probability."""
    prob = np.asarray(y_prob, dtype=np.float64)
    prob = np.clip(prob / prob.sum(axis=1, keepdims=True), KAGGLE_LOGLOSS_EPS, 1 - KAGGLE_LOGLOSS_EPS)
    prob = prob / prob.sum(axis=1, keepdims=True)  # as scikit-learn renormalises after the clip
    return -np.log(prob[np.arange(len(prob)), np.argmax(y_true, axis=1)])


class ProbabilityTableCompetition(Competition):
    """Submission: an id column then one probability column per class; solution: one-hot rows + Usage."""

    id_column: ClassVar[str] = "id"
    metrics = (Metric("logloss", higher_is_better=False), Metric("accuracy", higher_is_better=True))

    def metric(self, y_true: np.ndarray, y_submitted: np.ndarray) -> float:
        from sklearn.metrics import accuracy_score  # imported here: scikit-learn costs a second at CLI start-up

        if self.metric_name == "accuracy":
            return float(accuracy_score(np.argmax(y_true, axis=1), np.argmax(y_submitted, axis=1)))
        return kaggle_log_loss(y_true, y_submitted)

    def metric_rows(self, y_true: np.ndarray, y_submitted: np.ndarray) -> np.ndarray:
        if self.metric_name == "accuracy":
            return (np.argmax(y_true, axis=1) == np.argmax(y_submitted, axis=1)).astype(np.float64)
        return kaggle_log_loss_rows(y_true, y_submitted)

    def to_submission(self, ids: list[str], y_submitted: np.ndarray, classes: list[str]) -> pd.DataFrame:
        if self.id_column in classes:  # the contract check (pipeline/plugin/contract.py) calls this before training
            raise UserError(f"class {self.id_column!r} has the name of the submission's id column ({self.id_column}), "
                            "so the submission's header would name it twice; rename that class (its class folder)")
        table = pd.DataFrame(np.asarray(y_submitted, dtype=np.float64), columns=classes)
        table.insert(0, self.id_column, ids)
        return table

    def from_submission(self, submission: pd.DataFrame, classes: list[str]) -> tuple[list[str], np.ndarray]:
        expected = [self.id_column, *classes]
        if list(submission.columns) != expected:
            raise UserError(f"submission header must be {','.join(expected)}; got {','.join(map(str, submission.columns))}")
        values = submission[classes].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        return submission[self.id_column].astype(str).tolist(), values

    def from_solution(self, solution: pd.DataFrame, classes: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
        expected = {self.id_column, *classes, "Usage"}
        if set(solution.columns) != expected:
            raise UserError(f"solution columns must be {self.id_column},{','.join(classes)},Usage; got {','.join(solution.columns)}")
        y_true = solution[classes].astype(float).to_numpy(dtype=np.float32)
        return solution[self.id_column].astype(str).tolist(), y_true, solution["Usage"].to_numpy()


def list_class_folder_items(train_dir: Path, known_classes: list[str] | None) -> pd.DataFrame:
    """Train items from `train_dir/<class>/*`: every visible file (unreadable ones are found by the scan).

    Anything the layout would not read (a file directly in `train_dir`, a folder inside a class folder) is
    refused rather than left out without a word."""
    files, folders = folder_entries(train_dir)
    if not folders:
        raise UserError(f"{train_dir} has no class folders; expected {train_dir}/<class name>/<image files>")
    if files:
        raise UserError(f"{train_dir} holds {_few(files)} directly, outside any class folder, so they have no "
                        f"label; move each into {train_dir}/<class name>/ or remove it")
    if known_classes is not None:
        unknown = [f"'{printable(p.name)}'" for p in folders if p.name not in known_classes]
        if unknown:
            raise UserError(
                f"{train_dir} has class folders [{', '.join(unknown)}] that are not classes of this competition; "
                f"the classes are {known_classes}: rename or remove those folders"
            )
    rows = []
    for folder in folders:
        images, nested = folder_entries(folder)
        if nested:
            raise UserError(f"class folder {folder} holds folder(s) {_few(nested, '/')} whose images would be left "
                            f"out; move their images up into {folder} or remove the folders")
        if not images:
            raise UserError(f"class folder {folder} is empty; add its images or remove the folder")
        rows += [(str(p.resolve()), (folder.name,)) for p in images]
    return pd.DataFrame(rows, columns=["path", "labels"])


def visible_files(folder: Path) -> list[Path]:
    """Files of a test folder in sorted (deterministic) order, hidden files left out.

    A folder inside it is refused: its images would vanish from the submission without a word."""
    files, folders = folder_entries(folder)
    if folders:
        raise UserError(f"test folder {folder} holds folder(s) {_few(folders, '/')} whose images would be left out "
                        f"of the submission; test images must be files directly in {folder}: move them there "
                        "(test images have no classes) or remove the folders")
    return files


def folder_entries(folder: Path) -> tuple[list[Path], list[Path]]:
    """(files, folders) of `folder`, sorted, hidden ones left out; anything else (a pipe, a broken link) is refused."""
    files, folders, other = [], [], []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        (files if path.is_file() else folders if path.is_dir() else other).append(path)
    if other:
        raise UserError(f"{folder} holds {_few(other)}, which are neither image files nor folders (a pipe, a socket "
                        "or a broken link); remove them")
    return files, folders


def _few(paths: list[Path], suffix: str = "", limit: int = 5) -> str:
    names = ", ".join(f"{printable(p.name)}{suffix}" for p in paths[:limit])
    return names + (f" and {len(paths) - limit} more" if len(paths) > limit else "")
