"""Submission checks, Kaggle's log loss, atomic writes and leaderboard scoring against a solution."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from competitions.single_label import kaggle_log_loss
from pipeline.files import write_csv_atomic
from pipeline.plugin.registry import get_competition
from pipeline.submission import reindex_to_expected, score_against_solution, validate_submission

CLASSES = ["ALB", "BET", "DOL", "LAG", "NoF", "OTHER", "SHARK", "YFT"]


def table(ids, values):
    t = pd.DataFrame(np.asarray(values, dtype=float), columns=CLASSES)
    t.insert(0, "image", ids)
    return t


def test_kaggle_log_loss_normalises_rows_then_clips():
    y = np.eye(8)[[0, 1]]
    probs = np.full((2, 8), 0.1)
    probs[0, 0] = 0.3  # row 0 sums to 1.0 -> p(true) = 0.3
    probs[1, 1] = 0.0  # row 1: p(true) = 0 -> clipped to 1e-15
    expected = -(math.log(0.3 / 1.0) + math.log(1e-15)) / 2
    assert kaggle_log_loss(y, probs) == pytest.approx(expected, rel=1e-9)
    doubled = kaggle_log_loss(y, probs * 2)  # rows are divided by their sum first
    assert doubled == pytest.approx(expected, rel=1e-9)


def test_validation_catches_each_kind_of_bad_submission():
    fisheries = get_competition("fisheries")
    ids = ["a.jpg", "b.jpg", "c.jpg"]
    good = table(ids, np.full((3, 8), 1 / 8))
    validate_submission(good, fisheries, CLASSES, ids)
    with pytest.raises(ValueError, match="more than once"):
        validate_submission(table(["a.jpg", "a.jpg", "c.jpg"], np.full((3, 8), 1 / 8)), fisheries, CLASSES, ids)
    with pytest.raises(ValueError, match="1 missing"):
        validate_submission(table(ids[:2], np.full((2, 8), 1 / 8)), fisheries, CLASSES, ids)
    with pytest.raises(ValueError, match="unexpected"):
        validate_submission(table([*ids, "d.jpg"], np.full((4, 8), 1 / 8)), fisheries, CLASSES, ids)
    nan = np.full((3, 8), 1 / 8)
    nan[1, 2] = np.nan
    with pytest.raises(ValueError, match="'b.jpg'"):
        validate_submission(table(ids, nan), fisheries, CLASSES, ids)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        validate_submission(table(ids, np.full((3, 8), 1.5)), fisheries, CLASSES, ids)
    with pytest.raises(ValueError, match="header"):
        validate_submission(good.rename(columns={"ALB": "alb"}), fisheries, CLASSES, ids)


def test_reindex_follows_the_expected_order_and_refuses_gaps():
    values = np.arange(6, dtype=float).reshape(3, 2)
    ids, reordered = reindex_to_expected(["a", "b", "c"], values, ["c", "a", "b"])
    assert ids == ["c", "a", "b"] and reordered[0].tolist() == [4.0, 5.0]
    with pytest.raises(ValueError, match="no test image"):
        reindex_to_expected(["a", "b"], values[:2], ["a", "b", "z"])


def test_public_and_private_scores_use_only_their_rows():
    fisheries = get_competition("fisheries")
    ids = ["p1", "p2", "q1", "q2"]
    truth = np.eye(8)[[0, 1, 2, 3]]
    solution = table(ids, truth)
    solution["Usage"] = ["Public", "Public", "Private", "Private"]
    predicted = np.full((4, 8), 0.02)
    predicted[[0, 1], [0, 1]] = 0.86  # right on public
    predicted[[2, 3], [0, 0]] = 0.86  # wrong on private
    scores = score_against_solution(fisheries, table(ids, predicted), solution, CLASSES)
    assert scores["public"] == pytest.approx(kaggle_log_loss(truth[:2], predicted[:2]))
    assert scores["private"] == pytest.approx(kaggle_log_loss(truth[2:], predicted[2:]))
    assert scores["public"] < scores["private"]


def test_atomic_write_leaves_only_the_finished_file(tmp_path):
    path = tmp_path / "out" / "submission.csv"
    write_csv_atomic(path, table(["a"], np.full((1, 8), 1 / 8)))
    write_csv_atomic(path, table(["b"], np.full((1, 8), 1 / 8)))
    assert [p.name for p in path.parent.iterdir()] == ["submission.csv"]
    assert pd.read_csv(path)["image"].tolist() == ["b"]


def test_accuracy_is_the_share_of_right_rows_on_each_board_and_higher_is_better():
    """--metric accuracy: what a run scores with it, on a solution whose answers are known (this replaces a whole
    training run of imagefolder that only checked its accuracy to lie in [0, 1])."""
    accuracy, logloss = get_competition("imagefolder", metric="accuracy"), get_competition("imagefolder")
    classes = ["cat", "dog", "fox"]
    ids = ["public/a.png", "public/b.png", "private/c.png", "private/d.png", "private/e.png"]
    truth = np.eye(3)[[0, 1, 2, 0, 1]]
    solution = accuracy.to_submission(ids, truth, classes).assign(Usage=["Public"] * 2 + ["Private"] * 3)
    predicted = accuracy.to_submission(ids, 0.1 + 0.7 * np.eye(3)[[0, 2, 2, 0, 0]], classes)  # right: 1 of 2, 2 of 3
    assert list(predicted.columns) == ["id", *classes]
    assert score_against_solution(accuracy, predicted, solution, classes) == {"public": 0.5, "private": pytest.approx(2 / 3)}
    assert accuracy.greater_is_better and not logloss.greater_is_better
    assert score_against_solution(logloss, predicted, solution, classes)["public"] == pytest.approx(
        kaggle_log_loss(truth[:2], predicted[classes].to_numpy()[:2]))
