"""The decision stage: per-model decisions -> verdict -> submissions (-> leaderboard scores), from what a run folder
holds (RunProbabilities) alone.

A run calls it after training, and `runs rescore` calls it on the folder the run left, so a rescore of an
unchanged run reproduces its verdict, scores and submissions byte for byte by construction.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.method import calibration
from pipeline.method import verdict as verdicts
from pipeline.method.calibration import CALIBRATIONS
from pipeline.method.group_verdict import Unmeasured, decide_groups
from pipeline.method.verdict import AVERAGE, BY_GROUP, MODELS
from pipeline.plugin.api import Competition, Decision
from pipeline.run.folder import RunProbabilities
from pipeline.submission import read_solution, score_against_solution, validate_submission


@dataclass
class Outcome:
    decisions: dict[str, Decision]  # model -> fit on the scored rows
    scores: dict[str, float]  # model -> metric on the scored rows
    verdict: verdicts.Verdict  # which of the run's models is submitted (per test group too), and why
    tables: dict[str, pd.DataFrame]  # model (and BY_GROUP when the groups differ) -> its validated submission
    leaderboard: dict[str, dict] | None  # model -> {"public", "private"} against a solution; None without one
    scored: dict[str, np.ndarray]  # model -> the scored rows' probabilities, calibrated as its submission is

    @property
    def submitted(self) -> str:
        """The table that becomes submission.csv: the verdict's model, or BY_GROUP when the groups got different ones."""
        return BY_GROUP if self.verdict.by_group else self.verdict.submitted

    @property
    def holdout(self) -> dict[str, float | None]:
        """Every model's score on the scored rows, None for one the run did not train (metrics.json's holdout)."""
        return {name: self.verdict.scores.get(name) for name in MODELS}


def decide(competition: Competition, probs: RunProbabilities, guard_confidence: float, seed: int,
           solution: Path | str | None = None, calibrate: str = "none",
           temperature_prior_sd: float | None = calibration.PRIOR_SD, unmeasured: Unmeasured = Unmeasured(),
           learned: dict[str, int] | None = None, guard_compares: str = "calibrated") -> Outcome:
    """Calibrate each model (--calibrate), fit its decision on the scored rows, score it, run the verdict and its
    guard over the run's models (MODELS; another entry, such as a rescore's blend, is decided and scored but never
    submitted), then per test group where the run kept importance weights, and make every model's submission (and
    the by-group one when the groups got different models); with a solution, score each against the public and
    private rows. `temperature_prior_sd`: the temperature fit's prior (None: none, as runs before it had);
    `unmeasured`: what a group no scored row can measure gets (group_verdict.unmeasured_choice; `learned`:
    group -> pseudo-labels the student learned from its images); with the choice "average", the AVERAGE of control and
    student is one more model, calibrated, decided and submitted like the others. `guard_compares`: "uncalibrated" runs the
    guard's comparisons on the models' probabilities as predicted (the scores and submissions stay calibrated)."""
    y = probs.y_scored
    average = (unmeasured.choice == "average" and {"control", "student"} <= set(probs.scored)
               and bool(probs.group_weights) and probs.test_groups is not None
               and not np.array_equal(probs.test["student"], probs.test["control"]))  # a student that learned nothing
    if average:
        probs = with_blend(probs, AVERAGE, {"control": 0.5, "student": 0.5})
    raw = probs.scored
    probs, temperatures = calibrated(competition, probs, calibrate, seed, temperature_prior_sd)
    decisions = {name: competition.fit_decision(y, p) for name, p in probs.scored.items()}
    models = {name: p for name, p in probs.scored.items() if name in MODELS}
    guarded = calibrate != "none"  # the teacher must beat the control beyond noise (decide_submission)
    # the models as they predicted, with their decisions (only where calibration changed them)
    as_predicted = ({name: raw[name] for name in models},
                    {name: competition.fit_decision(y, raw[name]) for name in models}) if temperatures else None
    # On 20 held-out rows each cross-fitted temperature rests on 16, and one confident mistake sets it: compared
    # calibrated, a student right on 19 of 20 rows lost to its control in every resample while its raw log loss was
    # lower (digits, default budget). On the quality suite the calibrated comparison submitted the best model in 27 of
    # 36 runs, the uncalibrated one in 31 (benchmarks/RESULTS.md).
    compared = as_predicted if guard_compares == "uncalibrated" else None
    verdict = verdicts.decide_submission(competition, y, models, decisions, probs.kind, guard_confidence, seed,
                                         teacher_needs_guard=guarded, compared=compared)
    verdict.compared = "uncalibrated" if compared else None
    verdict.temperatures = {name: round(t, 4) for name, t in temperatures.items() if name in MODELS}
    verdict.temperature_prior_sd = temperature_prior_sd if temperatures else None
    if calibrate != "none":  # older runs recorded no prior; their rescore must reproduce their metrics.json
        prior = np.tile(probs.y.mean(axis=0), (len(y), 1))
        verdict.prior = verdicts.score(competition, y, prior, competition.fit_decision(y, prior))
    if probs.group_weights and probs.test_groups is not None:
        student_p_better = None  # the verdict's own comparison when it ran uncalibrated (decide_groups' default)
        if as_predicted and not compared:
            student_p_better = uncalibrated_student_p_better(competition, y, as_predicted, seed)
        verdict.groups = decide_groups(competition, y, models, decisions, verdict, probs.group_weights,
                                       {g: probs.foreign_share(g) for g in probs.group_weights}, guard_confidence, seed,
                                       guarded, unmeasured, learned, student_p_better, compared)
    scores = {name: verdict.scores[name] if name in verdict.scores else verdicts.score(competition, y, p, decisions[name])
              for name, p in probs.scored.items()}
    tables = {name: submission_table(competition, probs, p, decisions[name]) for name, p in probs.test.items()}
    if verdict.by_group:
        tables[BY_GROUP] = by_group_table(probs, tables, verdict)
    leaderboard = None
    if solution:
        answers = read_solution(Path(solution))
        leaderboard = {name: score_against_solution(competition, t, answers, probs.classes) for name, t in tables.items()}
    return Outcome(decisions, scores, verdict, tables, leaderboard, probs.scored)


def with_blend(probs: RunProbabilities, name: str, weights: dict[str, float]) -> RunProbabilities:
    """`probs` with one more model, `name`: the weighted mean of the named models' probabilities (weights summing to
    1), of the scored rows and of the test items; `decide` calibrates, decides and scores it like any model."""
    def mix(models: dict[str, np.ndarray]) -> np.ndarray:
        return sum(w * models[m] for m, w in weights.items())

    return dataclasses.replace(probs, scored={**probs.scored, name: mix(probs.scored)},
                               test={**probs.test, name: mix(probs.test)})


def uncalibrated_student_p_better(competition: Competition, y: np.ndarray,
                                  as_predicted: tuple[dict[str, np.ndarray], dict[str, Decision]],
                                  seed: int) -> float | None:
    """The share of bootstrap resamples in which the student beats the control as the two predicted the scored rows,
    before calibration (`as_predicted`: their probabilities and decisions): what group_verdict.unmeasured_choice gates
    on (its doc says why). None without both."""
    raw, decisions = as_predicted
    if not {"student", "control"} <= set(raw):
        return None
    return verdicts.compare(competition, y, raw["student"], raw["control"], (decisions["student"], decisions["control"]),
                            ("student", "control"), seed).p_better


def calibrated(competition: Competition, probs: RunProbabilities, calibrate: str, seed: int,
               prior_sd: float | None = calibration.PRIOR_SD) -> tuple[RunProbabilities, dict[str, float]]:
    """The run's probabilities temperature-scaled per model (pipeline/method/calibration.py) and the temperatures:
    the test rows by the temperature fit on every scored row, the scored rows cross-fitted. Single-label only (a
    multi-label metric thresholds each tag on the scored rows, which a temperature does not change).

    A test image with no look-alike among the train images (`test_foreign`) is only ever softened, never sharpened:
    the scored rows say how sure the model should be where it has seen images like them, not on a night frame. (On
    the quality suite, sharpening by the holdout's temperature, 0.35-0.5, raised the night variants' private log
    loss from 2.17 to 2.40: benchmarks/RESULTS.md.) Nor is any image of a group the scored rows cannot weigh like it
    (`test_unvouched`): a blurred private half has as many look-alikes by pixel statistics as train, but few scored
    rows vouch for how sure the model may be there (hand photos, blurred: the control sharpened by the holdout's
    temperature, 0.45, scored 2.68-2.77 private log loss, the class prior 2.30)."""
    if calibrate not in CALIBRATIONS:
        raise ValueError(f"unknown calibration {calibrate!r}; expected one of {', '.join(CALIBRATIONS)}")
    if calibrate == "none" or competition.multi_label:
        return probs, {}
    y = probs.y_scored
    temperatures = {name: calibration.fit_temperature(y, p, prior_sd) for name, p in probs.scored.items()}
    kept = probs.test_unvouched if probs.test_unvouched is not None else probs.test_foreign  # older runs: foreign
    unvouched = np.zeros(len(probs.test_ids), bool) if kept is None else kept.astype(bool)

    def scale_test(p: np.ndarray, temperature: float) -> np.ndarray:
        out = calibration.scale(p, temperature)
        out[unvouched] = calibration.scale(p[unvouched], max(temperature, 1.0))
        return out

    return dataclasses.replace(
        probs, scored={name: calibration.cross_fitted(y, p, seed, prior_sd) for name, p in probs.scored.items()},
        test={name: scale_test(p, temperatures[name]) for name, p in probs.test.items()}), temperatures


def by_group_table(probs: RunProbabilities, tables: dict[str, pd.DataFrame], verdict: verdicts.Verdict) -> pd.DataFrame:
    """The submission that gives each test group's rows its own verdict's model (ids the run could not read keep
    the verdict's model: they belong to no group it knows)."""
    group_of = dict(zip(probs.test_ids.tolist(), np.asarray(probs.test_groups).astype(str).tolist()))
    out = tables[verdict.submitted].copy()
    groups = np.array([group_of.get(i, "") for i in probs.submission_ids])  # the tables' rows, in order
    for group, chosen in verdict.groups.items():
        rows = groups == group
        out.loc[rows] = tables[chosen.submitted].loc[rows].to_numpy()
    return out


def submission_table(competition: Competition, probs: RunProbabilities, test_probs: np.ndarray,
                     decision: Decision) -> pd.DataFrame:
    """The submission for these test probabilities, with the run's submission ids and order, validated against
    them: an id with no readable image gets the class prior of the train labels."""
    ids = probs.submission_ids
    full = np.tile(probs.y.mean(axis=0), (len(ids), 1)).astype(np.float32)
    position = {item_id: row for row, item_id in enumerate(probs.test_ids)}
    rows = [(k, position[i]) for k, i in enumerate(ids) if i in position]
    if rows:
        at, source = np.array(rows).T
        full[at] = test_probs[source]
    table = competition.to_submission(ids, competition.decide(full, decision), probs.classes)
    validate_submission(table, competition, probs.classes, ids)
    return table
