"""Did pseudo-labeling help? Teacher, control and student scored on the same labeled rows, compared with a
paired bootstrap, and the guard that decides which model's predictions become submission.csv.

`paired_bootstrap` is the pipeline's one bootstrap of a gain and `Comparison` its one result, at one interval
level (LEVEL): `compare` (the local leaderboard's public gain) resamples the public rows with it too.

The scored rows are the holdout (--folds 1) or every labeled row out of fold (--folds K): no model of a
chain ever trained on them, and no epoch was picked on them (fits run a fixed budget), so their scores
are unbiased, if noisy; the bootstrap says how noisy.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.plugin.api import Decision

MODELS = ("teacher", "control", "student")  # every model a run can have, in the order tables show them
BY_GROUP = "by-group"  # the submission that gives each test group its own model's predictions (Verdict.by_group)
AVERAGE = "average"  # the mean of the control's and the student's probabilities: what an unmeasured group can get
BOOTSTRAP_RESAMPLES = 500  # the verdict's; `compare --resamples` chooses its own
LEVEL = 0.90  # of every bootstrap interval reported: the verdict's, `runs rescore`'s and `compare`'s
# LEVEL's two tails, written out: (1 - LEVEL) / 2 is 0.04999999999999999, and a quantile taken there would move
# the intervals recorded by earlier runs, which `runs rescore` reproduces exactly
_QUANTILES = (0.05, 0.95)


@dataclass
class Comparison:
    """Model `better` against its baseline `worse` on the same rows: the one paired bootstrap of this pipeline."""

    better: str  # the model that should win, e.g. "student"
    worse: str  # its baseline, e.g. "control"
    gain: float  # metric difference, signed so that > 0 means `better` is better
    p_better: float  # share of bootstrap resamples in which `better` is better
    interval: tuple[float, float]  # LEVEL bootstrap interval of the gain
    # share of resamples in which `worse` is better: 1 - p_better less the ties, which an accuracy gain has often
    # (not recorded: the verdict's decision is, and a rescore recomputes it)
    p_worse: float | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        return f"{self.better}_vs_{self.worse}"

    def describe(self) -> str:
        """The gain, its interval and p_better in words: what the run, its report and `runs rescore` print."""
        return (f"gain {self.gain:+.4f} ({LEVEL:.0%} interval {self.interval[0]:+.4f} .. {self.interval[1]:+.4f}; "
                f"better in {self.p_better:.0%} of resamples)")

    def line(self) -> str:
        return f"{self.better + ' vs ' + self.worse:<22} {self.describe()}"

    def to_dict(self) -> dict:
        return {"gain": self.gain, "p_better": self.p_better, "interval": list(self.interval)}

    @classmethod
    def from_dict(cls, name: str, record: dict) -> "Comparison":
        """`to_dict`'s form back, under its key in the verdict (`student_vs_control`)."""
        better, _, worse = name.partition("_vs_")
        low, high = record["interval"]
        return cls(better, worse, float(record["gain"]), float(record["p_better"]), (float(low), float(high)))


@dataclass
class GroupVerdict:
    """Which model a test group gets (pipeline/method/group_verdict.py): the scored rows weighted like the group."""

    group: str
    ess: float  # effective sample size of the weights
    foreign: float  # share of the group's images with no look-alike among train (pipeline/method/adaptation.py)
    confident: bool  # the weighted estimate decided; otherwise the group got the verdict's model
    submitted: str
    reason: str
    scores: dict[str, float] = field(default_factory=dict)  # model -> weighted metric (empty when not estimated)

    def to_dict(self) -> dict:
        return {"ess": self.ess, "foreign": self.foreign, "confident": self.confident,
                "submitted": self.submitted, "reason": self.reason, "scores": self.scores}

    @classmethod
    def from_dict(cls, group: str, record: dict) -> "GroupVerdict":
        return cls(group, float(record["ess"]), float(record["foreign"]), bool(record["confident"]), record["submitted"],
                   record["reason"], dict(record.get("scores") or {}))


@dataclass
class Verdict:
    scores: dict[str, float]  # model -> metric on the scored rows
    rows: int
    kind: str  # "holdout" | "out-of-fold"
    comparisons: dict[str, Comparison] = field(default_factory=dict)  # "student_vs_control", ...
    submitted: str = "student"
    reason: str = ""
    groups: dict[str, GroupVerdict] = field(default_factory=dict)  # test group -> its own choice (empty: none made)
    prior: float | None = None  # the class prior's score on the same rows: what a model must beat to have learned
    temperatures: dict[str, float] = field(default_factory=dict)  # model -> its temperature (--calibrate temperature)
    temperature_prior_sd: float | None = None  # the temperature fit's prior (calibration.PRIOR_SD); None: fit without one
    compared: str | None = None  # "uncalibrated": the comparisons ran on the models' probabilities before calibration

    def compared_text(self) -> str:
        """How the comparisons were made, in words, when not on the calibrated probabilities the scores are of: what
        the run's summary and its report print above them ("" otherwise)."""
        if self.compared is None:
            return ""
        return f"compared {self.compared}: the models' probabilities as they predicted the scored rows (--guard-compares)"

    @property
    def by_group(self) -> bool:
        """Whether the test groups got different models (submission.csv then mixes them, BY_GROUP)."""
        return any(g.submitted != self.submitted for g in self.groups.values())

    def to_dict(self) -> dict:
        groups = {"groups": {g: v.to_dict() for g, v in self.groups.items()}} if self.groups else {}
        prior = {} if self.prior is None else {"prior": self.prior}
        temperatures = {"temperatures": self.temperatures} if self.temperatures else {}
        if self.temperatures and self.temperature_prior_sd is not None:
            temperatures["temperature_prior_sd"] = self.temperature_prior_sd
        compared = {} if self.compared is None else {"compared": self.compared}
        return {"scores": self.scores, "rows": self.rows, "kind": self.kind, "submitted": self.submitted, "reason": self.reason,
                **{name: c.to_dict() for name, c in self.comparisons.items()}, **groups, **prior, **temperatures,
                **compared}

    @classmethod
    def from_dict(cls, record: dict) -> "Verdict":
        """`to_dict`'s form back (metrics.json)."""
        comparisons = {key: Comparison.from_dict(key, value) for key, value in record.items() if "_vs_" in key}
        groups = {g: GroupVerdict.from_dict(g, v) for g, v in (record.get("groups") or {}).items()}
        return cls(dict(record["scores"]), int(record["rows"]), record["kind"], comparisons, record["submitted"],
                   record["reason"], groups, record.get("prior"), dict(record.get("temperatures") or {}),
                   record.get("temperature_prior_sd"), record.get("compared"))


def score(competition, y: np.ndarray, probs: np.ndarray, decision: Decision, weights: np.ndarray | None = None) -> float:
    """The metric of what `decision` submits for these probabilities; with `weights`, the weighted mean of its
    per-row values (a metric with no per-row form cannot be weighted: ValueError)."""
    submitted = competition.decide(probs, decision)
    if weights is None:
        return float(competition.metric(y, submitted))
    return float(np.average(_metric_rows(competition, y, submitted), weights=weights))


def _metric_rows(competition, y: np.ndarray, submitted: np.ndarray) -> np.ndarray:
    rows = competition.metric_rows(y, submitted)
    if rows is None:
        raise ValueError(f"the {competition.metric_name} metric has no per-row form, so it cannot be weighted")
    return np.asarray(rows, np.float64)


def compare(competition, y: np.ndarray, a: np.ndarray, b: np.ndarray, decisions: tuple[Decision, Decision], names: tuple[str, str],
            seed: int, weights: np.ndarray | None = None) -> Comparison:
    """Model a against model b on their probabilities: each submits under its decision, then `paired_bootstrap`."""
    return paired_bootstrap(competition, y, competition.decide(a, decisions[0]), competition.decide(b, decisions[1]),
                            names, seed, weights=weights)


def paired_bootstrap(competition, y: np.ndarray, submitted_a: np.ndarray, submitted_b: np.ndarray,
                     names: tuple[str, str], seed: int, resamples: int = BOOTSTRAP_RESAMPLES,
                     weights: np.ndarray | None = None) -> Comparison:
    """Paired bootstrap over rows of the metric difference between what a and b submit: the same resampled rows
    for both, the gain signed so that > 0 means a is better, its LEVEL percentile interval. With `weights` (one per
    row: how much it looks like a test group, pipeline/method/importance.py), every gain is the weighted mean of the
    per-row differences."""
    sign = 1.0 if competition.greater_is_better else -1.0
    rows_a, rows_b = competition.metric_rows(y, submitted_a), competition.metric_rows(y, submitted_b)
    per_row = None if rows_a is None or rows_b is None else sign * (np.asarray(rows_a, np.float64) - np.asarray(rows_b, np.float64))
    if weights is not None and per_row is None:
        raise ValueError(f"the {competition.metric_name} metric has no per-row form, so its gain cannot be weighted")

    def gain(rows: np.ndarray) -> float:
        if weights is not None:
            total = weights[rows].sum()
            return float((per_row[rows] * weights[rows]).sum() / total) if total > 0 else 0.0
        if per_row is not None:  # a mean of per-row values: resample those, no metric call per resample
            return float(per_row[rows].mean())
        return sign * (competition.metric(y[rows], submitted_a[rows]) - competition.metric(y[rows], submitted_b[rows]))

    rng = np.random.default_rng(seed)
    gains = np.array([gain(rng.integers(0, len(y), len(y))) for _ in range(resamples)])
    low, high = np.quantile(gains, _QUANTILES)
    if weights is None:
        whole = sign * (competition.metric(y, submitted_a) - competition.metric(y, submitted_b))
    else:
        whole = float(np.average(per_row, weights=weights))
    return Comparison(names[0], names[1], float(whole), float((gains > 0).mean()), (float(low), float(high)),
                      float((gains < 0).mean()))


def decide_submission(competition, y: np.ndarray, scored: dict[str, np.ndarray], decisions: dict[str, Decision], kind: str,
                      guard_confidence: float, seed: int, weights: np.ndarray | None = None,
                      rows: str | None = None, teacher_needs_guard: bool = False,
                      compared: tuple[dict[str, np.ndarray], dict[str, Decision]] | None = None) -> Verdict:
    """Score every model on the scored rows; submit the student only if it beats the control (or, without a
    control, the teacher) in at least `guard_confidence` of the bootstrap resamples. Otherwise submit the
    better of control and teacher, and say why. With `weights`, every score and gain is weighted per row, and
    `rows` says what the weighted rows stand for in the reason (default: "the N <kind> rows"). `compared`: other
    probabilities of the same models, with their decisions, for the bootstrap comparisons (--guard-compares
    uncalibrated: the models as they predicted, while the scores are those of the calibrated submissions).

    `teacher_needs_guard` (calibrated runs): the teacher is submitted instead of the control only when it beats
    the control in `guard_confidence` of the resamples. Calibration takes away most of the log-loss gap an over- or
    underconfident model shows, and on a few scored rows the rest is a coin toss between a model and the same model
    trained longer; uncalibrated runs keep the better point estimate, as they were decided."""
    scores = {name: score(competition, y, p, decisions[name], weights) for name, p in scored.items()}
    verdict = Verdict(scores, len(y), kind)
    duelling, duel_decisions = compared or (scored, decisions)
    pairs = [("student", "control"), ("control", "teacher"), ("student", "teacher")]
    for better, worse in pairs:
        if better in scored and worse in scored:
            duel = compare(competition, y, duelling[better], duelling[worse],
                           (duel_decisions[better], duel_decisions[worse]), (better, worse), seed, weights)
            verdict.comparisons[duel.name] = duel
    rows = rows or f"the {len(y)} {kind} rows"
    baseline = "control" if "control" in scored else "teacher"
    if "student" not in scored:
        verdict.submitted, verdict.reason = "teacher", "no student was trained"
        return verdict
    duel = verdict.comparisons[f"student_vs_{baseline}"]
    if guard_confidence == 0 or duel.p_better >= guard_confidence:
        verdict.submitted = "student"
        verdict.reason = (f"the student beats the {baseline} in {duel.p_better:.0%} of bootstrap resamples of {rows} "
                          f"(guard: {guard_confidence:.0%})")
        return verdict
    fallback = baseline
    if baseline == "control" and "student_vs_teacher" in verdict.comparisons:
        control_vs_teacher = verdict.comparisons["control_vs_teacher"]
        if teacher_needs_guard:  # the teacher replaces the control only as the student would: beyond noise
            fallback = "teacher" if control_vs_teacher.p_worse >= max(guard_confidence, 0.5) else "control"
        else:
            fallback = "control" if control_vs_teacher.gain >= 0 else "teacher"
    verdict.submitted = fallback
    verdict.reason = (f"GUARD: the student beats the {baseline} in only {duel.p_better:.0%} of bootstrap resamples of "
                      f"{rows} (needs {guard_confidence:.0%}); submitting the {fallback} instead")
    return verdict
