"""Did pseudo-labeling help? Teacher, control and student scored on the same labeled rows, compared with a
paired bootstrap, and the guard that decides which model's predictions become submission.csv.

The scored rows are the holdout (--folds 1) or every labeled row out of fold (--folds K): no model of a
chain ever trained on them, and no epoch was picked on them (fits run a fixed budget), so their scores
are unbiased, if noisy; the bootstrap says how noisy.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.plugin.api import Decision

BOOTSTRAP_RESAMPLES = 500


@dataclass
class Comparison:
    better: str  # the model that should win, e.g. "student"
    worse: str  # its baseline, e.g. "control"
    gain: float  # metric difference, signed so that > 0 means `better` is better
    p_better: float  # share of bootstrap resamples in which `better` is better
    interval: tuple[float, float]  # 90% bootstrap interval of the gain

    def to_dict(self) -> dict:
        return {"gain": self.gain, "p_better": self.p_better, "interval": list(self.interval)}


@dataclass
class Verdict:
    scores: dict[str, float]  # model -> metric on the scored rows
    rows: int
    kind: str  # "holdout" | "out-of-fold"
    comparisons: dict[str, Comparison] = field(default_factory=dict)  # "student_vs_control", ...
    submitted: str = "student"
    reason: str = ""

    def to_dict(self) -> dict:
        return {"scores": self.scores, "rows": self.rows, "kind": self.kind, "submitted": self.submitted, "reason": self.reason,
                **{name: c.to_dict() for name, c in self.comparisons.items()}}


def compare(competition, y: np.ndarray, a: np.ndarray, b: np.ndarray, decisions: tuple[Decision, Decision], names: tuple[str, str],
            seed: int) -> Comparison:
    """Paired bootstrap over rows of the metric difference between model a and model b."""
    submitted_a = competition.decide(a, decisions[0])
    submitted_b = competition.decide(b, decisions[1])
    sign = 1.0 if competition.greater_is_better else -1.0
    rows_a, rows_b = competition.metric_rows(y, submitted_a), competition.metric_rows(y, submitted_b)
    per_row = None if rows_a is None or rows_b is None else sign * (np.asarray(rows_a, np.float64) - np.asarray(rows_b, np.float64))

    def gain(rows: np.ndarray) -> float:
        if per_row is not None:  # a mean of per-row values: resample those, no metric call per resample
            return float(per_row[rows].mean())
        return sign * (competition.metric(y[rows], submitted_a[rows]) - competition.metric(y[rows], submitted_b[rows]))

    rng = np.random.default_rng(seed)
    gains = np.array([gain(rng.integers(0, len(y), len(y))) for _ in range(BOOTSTRAP_RESAMPLES)])
    low, high = np.quantile(gains, [0.05, 0.95])
    whole = sign * (competition.metric(y, submitted_a) - competition.metric(y, submitted_b))
    return Comparison(names[0], names[1], float(whole), float((gains > 0).mean()), (float(low), float(high)))


def decide_submission(competition, y: np.ndarray, scored: dict[str, np.ndarray], decisions: dict[str, Decision], kind: str,
                      guard_confidence: float, seed: int) -> Verdict:
    """Score every model on the scored rows; submit the student only if it beats the control (or, without a
    control, the teacher) in at least `guard_confidence` of the bootstrap resamples. Otherwise submit the
    better of control and teacher, and say why."""
    scores = {name: float(competition.metric(y, competition.decide(p, decisions[name]))) for name, p in scored.items()}
    verdict = Verdict(scores, len(y), kind)
    pairs = [("student", "control"), ("control", "teacher"), ("student", "teacher")]
    for better, worse in pairs:
        if better in scored and worse in scored:
            verdict.comparisons[f"{better}_vs_{worse}"] = compare(competition, y, scored[better], scored[worse],
                                                                  (decisions[better], decisions[worse]), (better, worse), seed)
    baseline = "control" if "control" in scored else "teacher"
    if "student" not in scored:
        verdict.submitted, verdict.reason = "teacher", "no student was trained"
        return verdict
    duel = verdict.comparisons[f"student_vs_{baseline}"]
    if guard_confidence == 0 or duel.p_better >= guard_confidence:
        verdict.submitted = "student"
        verdict.reason = (f"the student beats the {baseline} in {duel.p_better:.0%} of bootstrap resamples of the {len(y)} "
                          f"{kind} rows (guard: {guard_confidence:.0%})")
        return verdict
    fallback = baseline
    if baseline == "control" and "student_vs_teacher" in verdict.comparisons:
        control_vs_teacher = verdict.comparisons["control_vs_teacher"]
        fallback = "control" if control_vs_teacher.gain >= 0 else "teacher"
    verdict.submitted = fallback
    verdict.reason = (f"GUARD: the student beats the {baseline} in only {duel.p_better:.0%} of bootstrap resamples of the "
                      f"{len(y)} {kind} rows (needs {guard_confidence:.0%}); submitting the {fallback} instead")
    return verdict
