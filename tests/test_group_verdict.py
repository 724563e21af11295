"""Importance weights of the scored rows for a test group (pipeline/method/importance.py) and the verdict per group
(pipeline/method/group_verdict.py): the guard on the scored rows weighted like the group, trusted only when it can be."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from pipeline.data.image_properties import NUMERIC_PROPERTIES
from pipeline.method.group_verdict import MAX_FOREIGN, MIN_ESS, Unmeasured, decide_groups
from pipeline.method.importance import density_weights, effective_sample_size
from pipeline.method.verdict import AVERAGE, BY_GROUP, Verdict, decide_submission
from pipeline.plugin.api import Decision
from pipeline.plugin.registry import get_competition


def properties(brightness: np.ndarray, prefix: str, seed: int) -> pd.DataFrame:
    """A property table whose images differ only in brightness (the other properties: the same noise everywhere)."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame({name: rng.normal(0, 1, len(brightness)) for name in NUMERIC_PROPERTIES})
    table["mean_intensity"] = brightness
    table.insert(0, "path", [f"{prefix}/{i}.png" for i in range(len(brightness))])
    return table


def test_effective_sample_size_counts_equal_weights_fully_and_one_heavy_row_as_one():
    assert effective_sample_size(np.ones(40)) == pytest.approx(40)
    assert effective_sample_size(np.r_[1000.0, np.zeros(39)]) == pytest.approx(1)
    assert effective_sample_size(np.zeros(5)) == 0.0


def test_scored_rows_like_a_brighter_group_weigh_more_and_a_group_drawn_like_train_weighs_them_evenly():
    rng = np.random.default_rng(0)
    train = properties(rng.normal(100, 20, 400), "train", 1)
    scored = train["path"].to_numpy()[::4]  # every 4th train image is scored
    brighter = properties(rng.normal(130, 20, 300), "test", 2)
    alike = properties(rng.normal(100, 20, 300), "test", 3)
    w = density_weights(train, scored, brighter, seed=0)
    assert w.shape == (100,) and w.mean() == pytest.approx(1.0)
    brightness = train["mean_intensity"].to_numpy()[::4]
    assert spearmanr(w, brightness).statistic > 0.9  # the ratio grows with brightness (it is not linear in it)
    assert effective_sample_size(w) < 80
    assert effective_sample_size(density_weights(train, scored, alike, seed=0)) > 90


def test_a_scored_path_without_properties_gives_no_weights():
    rng = np.random.default_rng(0)
    train = properties(rng.normal(100, 20, 50), "train", 1)
    assert density_weights(train, np.array(["train/0.png", "train/missing.png"]), train, seed=0) is None


def _sure_of_the_truth(n: int, k: int, right: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n rows of k classes (labels cycling): the labels, their one-hot targets, and probabilities that put `right` on
    the true class and share the rest evenly."""
    labels = np.arange(n) % k
    probs = np.full((n, k), (1 - right) / (k - 1))
    probs[np.arange(n), labels] = right
    return labels, np.eye(k)[labels], probs


def _two_halves():
    """Scored rows in two halves: the student is right and sure on the second half, where the control is unsure,
    and wrong on the first, where the control is right: over all rows the control wins."""
    fisheries = get_competition("fisheries")
    n, k = 200, 8
    labels, y, control = _sure_of_the_truth(n, k, 0.6)
    student = control.copy()
    first = np.arange(n) < n // 2
    student[first] = np.roll(control[first], 1, axis=1)  # wrong, at 0.6
    student[~first] = 0.02 / (k - 1)
    student[np.flatnonzero(~first), labels[~first]] = 0.98
    scored = {"teacher": control.copy(), "control": control, "student": student}
    decisions = {name: Decision() for name in scored}
    verdict = decide_submission(fisheries, y, scored, decisions, "holdout", 0.8, seed=0)
    return fisheries, y, scored, decisions, verdict, first


def _close_call():
    """Scored rows where the student and the control differ on a few rows only, the student right on 11 of those 20:
    the guard keeps the control (the student is not better beyond noise), and the student was at least even."""
    fisheries = get_competition("fisheries")
    labels, y, control = _sure_of_the_truth(200, 8, 0.6)
    student = control.copy()
    student[:9] = np.roll(control[:9], 1, axis=1)  # wrong where the control is right
    control = control.copy()
    control[9:20] = np.roll(control[9:20], 1, axis=1)  # and the other way round
    teacher = np.sqrt(control) / np.sqrt(control).sum(axis=1, keepdims=True)  # the control, less sure: calibrated,
    # the two are one model (every resample a tie), and a tie keeps the control
    scored = {"teacher": teacher, "control": control, "student": student}
    decisions = {name: Decision() for name in scored}
    verdict = decide_submission(fisheries, y, scored, decisions, "holdout", 0.8, seed=0)
    assert verdict.submitted == "control" and 0.5 <= verdict.comparisons["student_vs_control"].p_better < 0.8
    return fisheries, y, scored, decisions, verdict


def test_a_group_like_the_rows_where_the_student_wins_gets_the_student_and_the_others_keep_the_verdict():
    fisheries, y, scored, decisions, verdict, first = _two_halves()
    assert verdict.submitted == "control"
    like_second = np.where(first, 0.05, 1.95)  # ESS about 110 of 200
    like_all = np.ones(len(y))
    groups = decide_groups(fisheries, y, scored, decisions, verdict, {"public": like_all, "private": like_second},
                           {"public": 0.0, "private": 0.02}, 0.8, seed=0)
    assert groups["public"].confident and groups["public"].submitted == "control"
    assert groups["private"].confident and groups["private"].submitted == "student"
    assert groups["private"].scores["student"] < groups["private"].scores["control"]
    assert "weighted like the private group (ESS 1" in groups["private"].reason
    verdict.groups = groups
    assert verdict.by_group and BY_GROUP == "by-group"
    assert Verdict.from_dict(verdict.to_dict()) == verdict


@pytest.mark.parametrize("why", ["few rows", "foreign"])
def test_a_group_the_weights_cannot_speak_for_gets_the_verdicts_model_and_says_why(why):
    fisheries, y, scored, decisions, verdict, first = _two_halves()
    weights = np.where(first, 0.0, 1.0)
    foreign = 0.0
    if why == "few rows":
        weights = np.zeros(len(y))
        weights[-int(MIN_ESS) + 1:] = 1.0  # the student's half, but one row short of MIN_ESS
    else:
        foreign = MAX_FOREIGN
    groups = decide_groups(fisheries, y, scored, decisions, verdict, {"private": weights}, {"private": foreign}, 0.8, 0)
    private = groups["private"]
    assert not private.confident and private.submitted == "control" == verdict.submitted
    assert private.reason.startswith("not confident for the private group: ")
    assert ("weigh as 19 rows (needs 20)" if why == "few rows" else "10% of its images look unlike every train image") \
        in private.reason


def test_the_decision_stage_submits_each_group_its_own_model_and_each_models_own_file_stays_whole():
    from pipeline.run.decision import decide
    from pipeline.run.folder import RunProbabilities

    fisheries, y, scored, decisions, verdict, first = _two_halves()
    classes = ["ALB", "BET", "DOL", "LAG", "NoF", "OTHER", "SHARK", "YFT"]
    test_ids = np.array([f"img_{i}.jpg" for i in range(10)])
    groups = np.array(["public"] * 5 + ["private"] * 5)
    rng = np.random.default_rng(0)
    test = {m: rng.dirichlet(np.ones(8), 10) for m in scored}
    probs = RunProbabilities(classes, np.array([f"train/{i}.jpg" for i in range(len(y))]), y, np.zeros(len(y), int),
                             test_ids, groups, list(test_ids[::-1]), scored, test,
                             {"public": np.ones(len(y)), "private": np.where(first, 0.05, 1.95)}, np.zeros(10, bool))
    outcome = decide(fisheries, probs, 0.8, seed=0)
    assert outcome.verdict.submitted == "control" and outcome.verdict.groups["private"].submitted == "student"
    assert outcome.submitted == BY_GROUP
    mixed, control, student = (outcome.tables[name].set_index("image") for name in (BY_GROUP, "control", "student"))
    public, private = list(test_ids[:5]), list(test_ids[5:])
    pd.testing.assert_frame_equal(mixed.loc[public], control.loc[public])
    pd.testing.assert_frame_equal(mixed.loc[private], student.loc[private])
    assert list(mixed.index) == list(test_ids[::-1])  # the submission's own order
    np.testing.assert_allclose(student.loc[list(test_ids)].to_numpy(), test["student"], atol=1e-6)  # uncalibrated


@pytest.mark.parametrize("unmeasured", ["student", "average"])
def test_a_mostly_foreign_group_under_a_control_verdict_gets_the_student_or_the_average_and_no_other_group_does(unmeasured):
    fisheries, y, scored, decisions, verdict = _close_call()
    decisions = {**decisions, AVERAGE: Decision()}  # decide() adds the average as one more model
    few = np.zeros(len(y))
    few[-int(MIN_ESS) + 1:] = 1.0  # one row short of MIN_ESS, but with look-alikes among train
    weights = {"night": np.ones(len(y)), "few": few, "public": np.ones(len(y))}
    foreign = {"night": MAX_FOREIGN, "few": 0.0, "public": 0.0}
    learned = {"night": 30, "few": 30, "public": 30}
    groups = decide_groups(fisheries, y, scored, decisions, verdict, weights, foreign, 0.8, 0, unmeasured=Unmeasured(unmeasured),
                           learned=learned)
    assert groups["night"].submitted == unmeasured and not groups["night"].confident
    assert "the student learned from 30 of its images" in groups["night"].reason
    assert groups["few"].submitted == "control" and groups["public"].submitted == "control"
    for other in ({"learned": {**learned, "night": 0}}, {"unmeasured": Unmeasured("verdict")}):  # nothing learned there; the option
        kept = decide_groups(fisheries, y, scored, decisions, verdict, weights, foreign, 0.8, 0,
                             **{"unmeasured": Unmeasured(unmeasured), "learned": learned, **other})
        assert kept["night"].submitted == "control" and kept["night"].reason.endswith("it gets the verdict's control")
    fisheries, y, scored, decisions, lost, first = _two_halves()  # the student loses beyond noise on the scored rows
    assert lost.submitted == "control" and lost.comparisons["student_vs_control"].p_better < 0.2
    groups = decide_groups(fisheries, y, scored, {**decisions, AVERAGE: Decision()}, lost, weights, foreign, 0.8, 0,
                           unmeasured=Unmeasured(unmeasured), learned=learned)
    assert groups["night"].submitted == "control"
    student_verdict = decide_submission(fisheries, y, scored, decisions, "holdout", 0.0, seed=0)  # guard off: student
    groups = decide_groups(fisheries, y, scored, decisions, student_verdict, weights, foreign, 0.0, 0,
                           unmeasured=Unmeasured(unmeasured), learned=learned)
    assert groups["night"].submitted == "student"  # the verdict's own model: nothing to hedge


def _foreign_private_run(student_differs: bool = True):
    from pipeline.run.folder import RunProbabilities

    fisheries, y, scored, decisions, verdict = _close_call()
    classes = ["ALB", "BET", "DOL", "LAG", "NoF", "OTHER", "SHARK", "YFT"]
    test_ids = np.array([f"img_{i}.jpg" for i in range(10)])
    groups = np.array(["public"] * 5 + ["private"] * 5)
    rng = np.random.default_rng(0)
    test = {m: rng.dirichlet(np.ones(8), 10) for m in scored}
    if not student_differs:
        scored["student"], test["student"] = scored["control"].copy(), test["control"].copy()
    probs = RunProbabilities(classes, np.array([f"train/{i}.jpg" for i in range(len(y))]), y, np.zeros(len(y), int),
                             test_ids, groups, list(test_ids), scored, test,
                             {"public": np.ones(len(y)), "private": np.ones(len(y))}, groups == "private")
    return fisheries, probs


def test_the_decision_stage_submits_a_foreign_group_the_mean_of_control_and_student_probabilities():
    from pipeline.run.decision import decide

    fisheries, probs = _foreign_private_run()
    outcome = decide(fisheries, probs, 0.8, seed=0, unmeasured=Unmeasured("average"), learned={"public": 5, "private": 5})
    assert outcome.verdict.submitted == "control" and outcome.verdict.groups["private"].submitted == AVERAGE
    assert outcome.submitted == BY_GROUP and AVERAGE not in outcome.holdout  # scored, never the run's verdict
    mixed, control, average = (outcome.tables[name].set_index("image") for name in (BY_GROUP, "control", AVERAGE))
    private = list(probs.test_ids[5:])
    pd.testing.assert_frame_equal(mixed.loc[private], average.loc[private])
    pd.testing.assert_frame_equal(mixed.loc[list(probs.test_ids[:5])], control.loc[list(probs.test_ids[:5])])
    mean = (probs.test["control"] + probs.test["student"]) / 2
    np.testing.assert_allclose(average.loc[list(probs.test_ids)].to_numpy(), mean / mean.sum(axis=1, keepdims=True),
                               atol=1e-6)  # uncalibrated, as every model here
    assert decide(fisheries, probs, 0.8, seed=0).verdict.groups["private"].submitted == "control"  # the default: verdict


def test_the_rule_reads_the_students_uncalibrated_comparison_with_the_control():
    fisheries, y, scored, decisions, lost, first = _two_halves()  # calibrated, the student lost beyond noise
    weights, foreign, learned = {"night": np.ones(len(y))}, {"night": 1.0}, {"night": 30}
    kept = decide_groups(fisheries, y, scored, decisions, lost, weights, foreign, 0.8, 0, unmeasured=Unmeasured("student"),
                         learned=learned)
    given = decide_groups(fisheries, y, scored, decisions, lost, weights, foreign, 0.8, 0, unmeasured=Unmeasured("student"),
                          learned=learned, student_p_better=0.55)  # as the models predicted, it did not lose
    assert kept["night"].submitted == "control" and given["night"].submitted == "student"
    assert "(uncalibrated, better in 55% of resamples, needs 50%)" in given["night"].reason


def test_an_unmeasured_group_gets_the_student_only_if_it_was_better_in_the_required_share_of_resamples():
    fisheries, y, scored, decisions, lost, first = _two_halves()
    weights, foreign, learned = {"night": np.ones(len(y))}, {"night": 1.0}, {"night": 30}

    def night(rule: Unmeasured, p_better: float) -> str:
        return decide_groups(fisheries, y, scored, decisions, lost, weights, foreign, 0.8, 0, unmeasured=rule,
                             learned=learned, student_p_better=p_better)["night"].submitted

    assert night(Unmeasured("student"), 0.45) == "control"  # the default: at least even
    assert night(Unmeasured("student"), 0.5) == "student"
    assert night(Unmeasured("student", min_p_better=0.2), 0.45) == "student"  # "not worse beyond noise"
    assert night(Unmeasured("student", min_p_better=0.2), 0.15) == "control"


def test_a_calibrated_decision_gates_an_unmeasured_group_on_the_raw_probabilities():
    from pipeline.method.verdict import compare
    from pipeline.run.decision import decide

    fisheries, probs = _foreign_private_run()
    outcome = decide(fisheries, probs, 0.8, seed=0, calibrate="temperature", unmeasured=Unmeasured("student"),
                     learned={"public": 5, "private": 5})
    y = probs.y_scored
    raw = compare(fisheries, y, probs.scored["student"], probs.scored["control"], (Decision(), Decision()),
                  ("student", "control"), 0).p_better
    private = outcome.verdict.groups["private"]
    assert outcome.verdict.submitted == "control"  # calibrated, the teacher ties it in every resample: not a win
    assert private.submitted == "student" and f"(uncalibrated, better in {raw:.0%} of resamples, needs 50%)" in private.reason


def test_a_student_that_learned_nothing_gives_no_average():
    from pipeline.run.decision import decide

    fisheries, probs = _foreign_private_run(student_differs=False)
    outcome = decide(fisheries, probs, 0.8, seed=0, unmeasured=Unmeasured("average"), learned={"public": 5, "private": 5})
    assert AVERAGE not in outcome.tables and outcome.verdict.groups["private"].submitted == outcome.verdict.submitted


def test_a_group_with_nearly_even_weights_is_drawn_like_train_and_takes_the_verdicts_model():
    fisheries, y, scored, decisions, verdict, first = _two_halves()
    nearly_even = np.where(first, 0.8, 1.2)  # ESS 192 of 200: a second bootstrap would only re-toss close calls
    groups = decide_groups(fisheries, y, scored, decisions, verdict, {"public": nearly_even}, {"public": 0.0}, 0.8, 0)
    assert groups["public"].submitted == verdict.submitted and groups["public"].scores == {}
    assert groups["public"].reason == "drawn like the holdout rows (ESS 192 of 200): the verdict's control"


def test_calibrated_runs_submit_the_teacher_over_the_control_only_beyond_noise():
    fisheries = get_competition("fisheries")
    n, k = 40, 8
    labels, y, control = _sure_of_the_truth(n, k, 0.5)
    teacher = control.copy()
    teacher[0] = np.roll(control[0], 1)  # wrong on one row: the teacher is worse there ...
    teacher[1:] = 0.45 / (k - 1)
    teacher[np.arange(1, n), labels[1:]] = 0.55  # ... and a little surer elsewhere: better on the mean, barely
    student = np.roll(control, 1, axis=1)  # wrong everywhere: the guard refuses it
    scored = {"teacher": teacher, "control": control, "student": student}
    decisions = {name: Decision() for name in scored}
    point = decide_submission(fisheries, y, scored, decisions, "holdout", 0.8, seed=0)
    guarded = decide_submission(fisheries, y, scored, decisions, "holdout", 0.8, seed=0, teacher_needs_guard=True)
    control_vs_teacher = point.comparisons["control_vs_teacher"]
    assert control_vs_teacher.gain < 0 and 1 - control_vs_teacher.p_better < 0.8  # better, but not beyond noise
    assert point.submitted == "teacher" and guarded.submitted == "control"


def test_the_scored_rows_speak_for_a_group_drawn_like_them_or_with_enough_look_alikes():
    from pipeline.method.group_verdict import weighed_like

    assert weighed_like(np.ones(20))  # drawn like them: however few
    few = np.zeros(300)
    few[:5] = 60.0  # 5 look-alikes of 300: effective sample size 5
    assert not weighed_like(few)
    some = np.zeros(300)
    some[:30] = 10.0  # 30 of them
    assert weighed_like(some)


def test_the_summary_names_each_groups_model_and_the_by_group_score(capsys, tmp_path):
    from pipeline.run.decision import decide
    from pipeline.run.folder import RunFolder
    from pipeline.run.metrics import RunMetrics, SubmissionRecord, Timings
    from pipeline.run.outputs import print_summary

    fisheries, probs = _foreign_private_run()
    outcome = decide(fisheries, probs, 0.8, seed=0, unmeasured=Unmeasured("student"), learned={"public": 5, "private": 5})
    board = {"teacher": {"public": 1.5, "private": 1.6}, "control": {"public": 1.0, "private": 1.3},
             "student": {"public": 1.1, "private": 1.2}, BY_GROUP: {"public": 1.0, "private": 1.2}}
    metrics = RunMetrics("r", "fisheries", "logloss", False, holdout=outcome.holdout, verdict=outcome.verdict,
                         pseudo={"selected_per_round": {"1": 10}, "stop_reason": "threshold", "by_group": {"public": 5, "private": 5},
                                 "shifted_groups": ["private"]},
                         leaderboard=board, submission=SubmissionRecord(str(tmp_path / "submission.csv"), None, 10, BY_GROUP))
    metrics.timings = Timings(1.0, 1.0, 1.0, 3.0)
    print_summary(metrics, RunFolder(tmp_path))
    out = capsys.readouterr().out
    assert "submission.csv gives each test group its own model: public the control, private the student" in out
    assert "private     teacher 1.6000   control 1.3000   student 1.2000   by-group 1.2000" in out
