"""The verdict and its guard: paired bootstrap on the scored rows, and which model's predictions are submitted."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.plugin.api import Decision
from pipeline.plugin.registry import get_competition
from pipeline.data.split import TRAIN_ONLY, assign_folds, split_table
from pipeline.method.verdict import decide_submission


def one_hot(labels: np.ndarray, k: int) -> np.ndarray:
    return np.eye(k, dtype=np.float32)[labels]


def noisy(labels: np.ndarray, k: int, right: float, seed: int) -> np.ndarray:
    """Probabilities that put `right` on the true class for a random 80% of rows, on a wrong one otherwise."""
    rng = np.random.default_rng(seed)
    p = np.full((len(labels), k), (1 - right) / (k - 1), dtype=np.float32)
    wrong = rng.random(len(labels)) < 0.2
    target = np.where(wrong, (labels + 1) % k, labels)
    p[np.arange(len(labels)), target] = right
    return p


@pytest.fixture
def fisheries():
    return get_competition("fisheries")


def test_a_clearly_better_student_is_submitted(fisheries):
    y = np.arange(200) % 8
    scored = {"teacher": noisy(y, 8, 0.4, 0), "control": noisy(y, 8, 0.45, 1), "student": noisy(y, 8, 0.9, 2)}
    scored["student"][:] = 0.3 / 7
    scored["student"][np.arange(200), y] = 0.7  # right on every row
    decisions = {name: Decision() for name in scored}
    verdict = decide_submission(fisheries, one_hot(y, 8), scored, decisions, "holdout", 0.8, seed=0)
    assert verdict.submitted == "student" and verdict.comparisons["student_vs_control"].p_better == 1.0
    assert verdict.scores["student"] < verdict.scores["control"]  # log loss: lower is better
    assert verdict.comparisons["student_vs_control"].gain > 0  # signed so that > 0 means better


def test_a_student_no_better_than_the_control_is_not_submitted(fisheries):
    y = np.arange(200) % 8
    same = noisy(y, 8, 0.6, 0)
    scored = {"teacher": noisy(y, 8, 0.3, 1), "control": same, "student": same.copy()}
    verdict = decide_submission(fisheries, one_hot(y, 8), scored, {n: {} for n in scored}, "out-of-fold", 0.8, seed=0)
    assert verdict.comparisons["student_vs_control"].p_better == 0.0  # never strictly better than itself
    assert verdict.submitted == "control" and verdict.reason.startswith("GUARD")
    assert "200 out-of-fold rows" in verdict.reason


def test_the_fallback_is_the_teacher_when_the_control_lost_to_it(fisheries):
    y = np.arange(160) % 8
    scored = {"teacher": noisy(y, 8, 0.7, 0), "control": noisy(y, 8, 0.3, 1), "student": noisy(y, 8, 0.25, 2)}
    verdict = decide_submission(fisheries, one_hot(y, 8), scored, {n: {} for n in scored}, "holdout", 0.8, seed=0)
    assert verdict.submitted == "teacher"


def test_guard_zero_always_submits_the_student(fisheries):
    y = np.arange(80) % 8
    scored = {"teacher": noisy(y, 8, 0.7, 0), "control": noisy(y, 8, 0.7, 1), "student": noisy(y, 8, 0.2, 2)}
    verdict = decide_submission(fisheries, one_hot(y, 8), scored, {n: {} for n in scored}, "holdout", 0.0, seed=0)
    assert verdict.submitted == "student"


def test_accuracy_metrics_count_higher_as_better():
    imagefolder = get_competition("imagefolder", metric="accuracy")
    y = np.arange(100) % 4
    scored = {"teacher": noisy(y, 4, 0.6, 0), "student": one_hot(y, 4)}
    verdict = decide_submission(imagefolder, one_hot(y, 4), scored, {n: {} for n in scored}, "holdout", 0.8, seed=0)
    assert verdict.submitted == "student" and verdict.comparisons["student_vs_teacher"].gain > 0


def test_one_holdout_is_stratified_and_k_folds_cover_every_row_once():
    y = one_hot(np.repeat(np.arange(5), 20), 5)
    fold = assign_folds(y, 1, 0.2, seed=0)
    assert (fold == 0).sum() == 20 and set(fold) == {0, TRAIN_ONLY}
    assert (y[fold == 0].sum(axis=0) == 4).all()  # 4 of each class held out
    fold = assign_folds(y, 5, 0.2, seed=0)
    assert sorted(np.bincount(fold)) == [20] * 5 and (fold >= 0).all()
    for k in range(5):
        assert (y[fold == k].sum(axis=0) == 4).all()
    table = split_table([f"img{i}.jpg" for i in range(100)], fold)
    assert set(table["role"]) == {"fold"} and table["fold"].tolist() == fold.tolist()


def test_too_many_folds_is_a_user_error():
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="--folds 40"):
        assign_folds(one_hot(np.arange(20) % 2, 2), 40, 0.2, seed=0)


def test_the_per_row_bootstrap_matches_calling_the_metric_on_each_resample(fisheries):
    """metric_rows makes the bootstrap fast; it must resample the same rows and find the same gains."""
    from competitions.fisheries import Fisheries
    from pipeline.method.verdict import compare

    class MetricOnly(Fisheries):  # no per-row values: the bootstrap calls the metric per resample
        def metric_rows(self, y_true, y_submitted):
            return None

    y = np.arange(120) % 8
    a, b = noisy(y, 8, 0.6, 0), noisy(y, 8, 0.55, 1)
    for metric in ("logloss", "accuracy"):
        fast = compare(get_competition("fisheries", metric), one_hot(y, 8), a, b, (Decision(), Decision()), ("a", "b"), 3)
        slow = compare(MetricOnly(metric), one_hot(y, 8), a, b, (Decision(), Decision()), ("a", "b"), 3)
        assert fast.gain == slow.gain and fast.p_better == slow.p_better
        assert fast.interval == pytest.approx(slow.interval, rel=1e-9, abs=1e-12)
