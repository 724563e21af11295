"""Temperature scaling (pipeline/method/calibration.py) and the decision stage's use of it."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss

from pipeline.method.calibration import HIGHEST, LOWEST, cross_fitted, fit_temperature, scale


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def calibrated_draw(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits): probabilities softmax(logits) are calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (n, k))
    labels = np.array([rng.choice(k, p=p) for p in softmax(logits)])
    return logits, np.eye(k)[labels]


@pytest.mark.parametrize("true_temperature", [0.5, 3.0])
def test_the_fitted_temperature_undoes_an_over_or_under_confident_model(true_temperature):
    logits, y = calibrated_draw(4000, 5, seed=1)
    probs = softmax(logits / true_temperature)  # T < 1: overconfident; T > 1: too soft
    found = fit_temperature(y, probs)
    assert found == pytest.approx(1 / true_temperature, rel=0.1)
    assert log_loss(y, scale(probs, found)) < log_loss(y, probs) - 0.01


def test_scaling_keeps_every_argmax_and_rows_that_sum_to_one():
    probs = softmax(np.random.default_rng(0).normal(0, 3, (50, 7))).astype(np.float32)
    for t in (LOWEST, 0.7, 2.5, HIGHEST):
        scaled = scale(probs, t)
        assert scaled.dtype == np.float32
        assert np.array_equal(scaled.argmax(axis=1), probs.argmax(axis=1))
        np.testing.assert_allclose(scaled.sum(axis=1), 1.0, rtol=1e-5)


def test_without_the_prior_a_model_never_right_gets_the_softest_temperature_and_one_always_right_the_sharpest():
    y = np.eye(3)[np.arange(30) % 3]
    right = 0.6 * y + 0.2 * (1 - y)
    wrong = np.roll(right, 1, axis=1)
    assert fit_temperature(y, right, prior_sd=None) == pytest.approx(LOWEST, rel=0.01)
    assert fit_temperature(y, wrong, prior_sd=None) == pytest.approx(HIGHEST, rel=0.01)


def test_the_prior_keeps_a_few_right_rows_from_asking_for_the_sharpest_temperature_and_yields_to_many():
    def always_right(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.eye(3)[np.arange(n) % 3]
        return y, 0.6 * y + 0.2 * (1 - y)

    few, many = fit_temperature(*always_right(16)), fit_temperature(*always_right(1000))
    assert 0.2 < few < 1.0  # sharper, but a wrong answer made at this temperature costs a few nats, not ten
    assert many < 0.6 * few  # a thousand rows outweigh the prior
    logits, y = calibrated_draw(200, 5, seed=4)
    probs = softmax(logits / 2.0)  # needs T = 0.5
    assert fit_temperature(y, probs) == pytest.approx(fit_temperature(y, probs, prior_sd=None), rel=0.1)


def test_on_twenty_rows_one_confident_mistake_costs_less_cross_fitted_with_the_prior_than_without():
    y = np.eye(4)[np.arange(20) % 4]
    probs = 0.85 * y + 0.05 * (1 - y)  # right on 19 rows at 0.85
    probs[7] = np.roll(probs[7], 1)  # and wrong on one at 0.85: the fold holding it is scaled by the other 16
    with_prior, without = cross_fitted(y, probs, seed=0), cross_fitted(y, probs, seed=0, prior_sd=None)
    assert log_loss(y, with_prior) < log_loss(y, without) - 0.2
    assert -np.log(without[7, 3]) > 8  # the failure the prior is for: one row at the sharpest temperature


def test_a_cross_fitted_row_is_scaled_by_a_temperature_its_own_label_did_not_choose():
    logits, y = calibrated_draw(60, 4, seed=2)
    probs = softmax(3 * logits)
    before = cross_fitted(y, probs, seed=0)
    for row in (0, 17, 59):
        flipped = y.copy()
        flipped[row] = np.roll(flipped[row], 1)  # another label for this row only
        after = cross_fitted(flipped, probs, seed=0)
        np.testing.assert_array_equal(after[row], before[row])
        assert not np.array_equal(after, before)  # the label moved the temperature of the other folds
    assert np.array_equal(before.argmax(axis=1), probs.argmax(axis=1))


def test_cross_fitting_an_overconfident_model_lowers_its_scored_log_loss():
    logits, y = calibrated_draw(200, 5, seed=3)
    probs = softmax(4 * logits)
    assert log_loss(y, cross_fitted(y, probs, seed=0)) < log_loss(y, probs) - 0.1


def test_the_decision_stage_submits_calibrated_probabilities_records_the_temperatures_and_the_class_prior():
    from pipeline.plugin.registry import get_competition
    from pipeline.run.decision import decide
    from pipeline.run.folder import RunProbabilities

    fisheries = get_competition("fisheries")
    classes = ["ALB", "BET", "DOL", "LAG", "NoF", "OTHER", "SHARK", "YFT"]
    logits, y = calibrated_draw(300, 8, seed=4)
    test_logits, _ = calibrated_draw(20, 8, seed=5)
    scored = {"teacher": softmax(logits), "control": softmax(logits), "student": softmax(4 * logits)}
    test = {m: softmax(test_logits * (4 if m == "student" else 1)) for m in scored}
    ids = [f"img_{i}.jpg" for i in range(20)]
    probs = RunProbabilities(classes, np.array([f"train/{i}.jpg" for i in range(300)]), y, np.zeros(300, int),
                             np.array(ids), np.array(["public", "private"] * 10), ids, scored, test)
    plain, calibrated = decide(fisheries, probs, 0.8, 0), decide(fisheries, probs, 0.8, 0, calibrate="temperature")
    temperatures = calibrated.verdict.temperatures
    assert temperatures["student"] == pytest.approx(4, rel=0.15) and temperatures["teacher"] == pytest.approx(1, rel=0.15)
    assert plain.verdict.temperatures == {} and plain.verdict.prior is None
    assert calibrated.verdict.prior == pytest.approx(log_loss(y, np.tile(y.mean(axis=0), (300, 1))))
    assert calibrated.scores["student"] < plain.scores["student"] - 0.1  # cross-fitted, so not flattered
    submitted = calibrated.tables["student"].set_index("image").loc[ids].to_numpy()
    np.testing.assert_allclose(submitted, scale(test["student"], fit_temperature(y, scored["student"])), atol=1e-6)


def test_the_guard_compares_the_models_as_they_predicted_unless_told_to_compare_them_calibrated():
    """20 held-out rows: the student is right on 19 at 0.9 and confidently wrong on one; the control is right on all
    20 at 0.3. As predicted, the student is far better; calibrated, the control is sharpened to nearly 0 log loss while
    the student's one mistake stays costly. The scores (and submissions) are the calibrated ones either way."""
    from pipeline.method.verdict import Verdict
    from pipeline.plugin.registry import get_competition
    from pipeline.run.decision import decide
    from pipeline.run.folder import RunProbabilities

    fisheries = get_competition("fisheries")
    classes = ["ALB", "BET", "DOL", "LAG", "NoF", "OTHER", "SHARK", "YFT"]
    labels = np.arange(20) % 8
    y = np.eye(8)[labels]
    control = np.full((20, 8), 0.1)
    control[np.arange(20), labels] = 0.3
    student = np.full((20, 8), 0.1 / 7)
    student[np.arange(20), labels] = 0.9
    student[0] = 0.01 / 6
    student[0, labels[0]], student[0, (labels[0] + 1) % 8] = 0.01, 0.98
    scored = {"teacher": control, "control": control, "student": student}
    ids = [f"img_{i}.jpg" for i in range(4)]
    probs = RunProbabilities(classes, np.array([f"train/{i}.jpg" for i in range(20)]), y, np.zeros(20, int),
                             np.array(ids), np.array(["public", "private"] * 2), ids, scored,
                             {m: p[:4] for m, p in scored.items()})
    raw = decide(fisheries, probs, 0.8, 0, calibrate="temperature", guard_compares="uncalibrated")
    calibrated = decide(fisheries, probs, 0.8, 0, calibrate="temperature", guard_compares="calibrated")
    assert raw.verdict.submitted == "student" and raw.verdict.comparisons["student_vs_control"].p_better >= 0.99
    assert calibrated.verdict.submitted == "control" and calibrated.verdict.comparisons["student_vs_control"].p_better < 0.2
    assert raw.scores == calibrated.scores and raw.scores["student"] > raw.scores["control"]  # calibrated scores
    assert raw.verdict.compared == "uncalibrated" and calibrated.verdict.compared is None
    assert raw.verdict.compared_text().startswith("compared uncalibrated: ") and calibrated.verdict.compared_text() == ""
    assert Verdict.from_dict(raw.verdict.to_dict()).compared == "uncalibrated"
    assert "compared" not in calibrated.verdict.to_dict()  # earlier runs' verdicts read and rescore as they were
    uncalibrated_run = decide(fisheries, probs, 0.8, 0, guard_compares="uncalibrated")  # nothing calibrated: the same
    assert uncalibrated_run.verdict.compared is None and uncalibrated_run.verdict.submitted == "student"


@pytest.mark.parametrize("private_weighed", [True, False])
def test_a_test_image_unlike_every_train_image_is_softened_but_never_sharpened(private_weighed):
    """The scored rows say how sure a model should be on images like them, not on a foreign one (a night frame), nor
    on any image of a group they cannot weigh like (too few effective rows: a blurred private half)."""
    from pipeline.plugin.registry import get_competition
    from pipeline.run.decision import decide
    from pipeline.run.folder import RunProbabilities

    fisheries = get_competition("fisheries")
    classes = ["ALB", "BET", "DOL", "LAG", "NoF", "OTHER", "SHARK", "YFT"]
    logits, y = calibrated_draw(300, 8, seed=6)
    test_logits, _ = calibrated_draw(20, 8, seed=7)
    soft, sure = softmax(logits / 3), softmax(logits * 3)  # under- and overconfident on the scored rows
    ids = [f"img_{i}.jpg" for i in range(20)]
    foreign = np.arange(20) >= 10
    groups = np.array(["public", "private"] * 10)
    unvouched = foreign | ((groups == "private") & (not private_weighed))  # what the run keeps (outputs.shift_evidence)
    probs = RunProbabilities(classes, np.array([f"train/{i}.jpg" for i in range(300)]), y, np.zeros(300, int),
                             np.array(ids), groups, ids,
                             {"teacher": soft, "student": sure}, {"teacher": softmax(test_logits / 3),
                                                                  "student": softmax(test_logits * 3)},
                             test_foreign=foreign, test_unvouched=unvouched)
    outcome = decide(fisheries, probs, 0.8, 0, calibrate="temperature")
    temperatures = outcome.verdict.temperatures
    assert temperatures["teacher"] < 0.5 and temperatures["student"] > 2
    for model in ("teacher", "student"):
        submitted = outcome.tables[model].set_index("image").loc[ids].to_numpy()
        t = fit_temperature(y, probs.scored[model])
        np.testing.assert_allclose(submitted[~unvouched], scale(probs.test[model][~unvouched], t), atol=1e-6)
        np.testing.assert_allclose(submitted[unvouched], scale(probs.test[model][unvouched], max(t, 1.0)), atol=1e-6)
