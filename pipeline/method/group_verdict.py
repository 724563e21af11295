"""A verdict per test group: the guard run again on the scored rows weighted like each group
(pipeline/method/importance.py), which decides for the group only when that estimate can be trusted.

The holdout is drawn like train, so the run's verdict speaks for a test group drawn like train and says nothing
about one that is not. Weighted like the group, the scored rows estimate the group's score, but only over the part
of the group that has look-alikes among them. So a group's own choice is made only when both hold:
- the weights rest on enough rows: effective sample size at least MIN_ESS;
- the group has look-alikes: fewer than MAX_FOREIGN of its images are foreign (no train image near them,
  pipeline/method/adaptation.py); a group that is mostly foreign is where the weighted estimate is blind.
Otherwise the group gets the run's verdict, and the reason says why the estimate was not trusted; except where the
verdict fell back to the control and the group is mostly foreign (--unmeasured-groups, `unmeasured_choice`): there the
student is the one model that learned from the group's own images (its pseudo-labels, under batch-norm statistics of
their own), which is where self-training pays in domain adaptation (Zou et al. 2018), and no scored row can say
whether it did. So the group gets the student (`student`), or the mean of the two models' probabilities (`average`:
on log loss, which is convex, never worse than the two models' mean score), when the student learned from at least one
of the group's images and was at least even with the control on the scored rows (better in at least
`Unmeasured.min_p_better` of the guard's resamples, default a half: on the quality suite a half gave the private
group its best model in 33 of 36 runs, where "not worse beyond noise", a fifth, did in 31), as the models predicted
them: uncalibrated, since on 20 held-out rows each fold's temperature rests on 16, and one confident mistake sets it
(digits, default budget: the student's one wrong row at 0.85 made the calibrated student lose in every resample, with raw log
losses 0.417 against the control's 0.427). A group whose
weights are nearly even (ESS at least LIKE_TRAIN of the rows) is drawn like train: the run's verdict speaks for it,
and a second bootstrap on nearly the same rows would only flip a close call. Pure numpy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.method.importance import effective_sample_size
from pipeline.method.verdict import AVERAGE, GroupVerdict, Verdict, decide_submission
from pipeline.plugin.api import Decision

MIN_ESS = 20.0  # fewer effective rows: a percentile bootstrap of a weighted mean is noise
MAX_FOREIGN = 0.10  # a larger share of the group's images without a train look-alike: the estimate cannot see them
LIKE_TRAIN = 0.9  # ESS / rows at or above which a group is drawn like train and takes the verdict's model


@dataclass(frozen=True)
class Unmeasured:
    """--unmeasured-groups and --unmeasured-p-better: what a group no scored row can measure gets when the verdict fell
    back to the control (`choice`: student | average | verdict), and in how many of the guard's resamples of the
    scored rows the student must have beaten the control for it (`min_p_better`)."""
    choice: str = "verdict"
    min_p_better: float = 0.5

    @classmethod
    def of(cls, options) -> "Unmeasured":
        """The rule of a run (a RunConfig)."""
        return cls(options.unmeasured_groups, options.unmeasured_p_better)


def weighed_like(weights: np.ndarray) -> bool:
    """Whether the scored rows speak for a group: drawn like it (nearly even weights), or enough of them look like it."""
    return effective_sample_size(weights) >= min(MIN_ESS, LIKE_TRAIN * len(weights))


def decide_groups(competition, y: np.ndarray, scored: dict[str, np.ndarray], decisions: dict[str, Decision],
                  verdict: Verdict, weights: dict[str, np.ndarray], foreign: dict[str, float],
                  guard_confidence: float, seed: int, teacher_needs_guard: bool = False,
                  unmeasured: Unmeasured = Unmeasured(),
                  learned: dict[str, int] | None = None, student_p_better: float | None = None,
                  compared: tuple[dict[str, np.ndarray], dict[str, Decision]] | None = None) -> dict[str, GroupVerdict]:
    """Each weighted group's verdict (`weights`: group -> one weight per scored row; `foreign`: group -> share of
    its images with no train look-alike), falling back to `verdict`'s model where the estimate is not trusted, or to
    `unmeasured_choice` (`learned`: group -> pseudo-labels the student learned from its images; `student_p_better`:
    the share of resamples in which the uncalibrated student beat the control, default the verdict's; `compared`: the
    probabilities and decisions a confident group's comparisons run on, as decide_submission's)."""
    if student_p_better is None and "student_vs_control" in verdict.comparisons:
        student_p_better = verdict.comparisons["student_vs_control"].p_better
    out = {}
    any_model = next(iter(scored))
    per_row = competition.metric_rows(y, competition.decide(scored[any_model], decisions[any_model])) is not None
    for group, w in weights.items():
        ess, share = effective_sample_size(w), float(foreign.get(group, 0.0))
        if ess >= LIKE_TRAIN * len(y) and share < MAX_FOREIGN:
            out[group] = GroupVerdict(group, ess, share, True, verdict.submitted,
                                      f"drawn like the {verdict.kind} rows (ESS {ess:.0f} of {len(y)}): the verdict's "
                                      f"{verdict.submitted}")
            continue
        doubts = []
        if round(ess) < MIN_ESS:
            doubts.append(f"the scored rows that look like it weigh as {ess:.0f} rows (needs {MIN_ESS:.0f})")
        if share >= MAX_FOREIGN:
            doubts.append(f"{share:.0%} of its images look unlike every train image, and no scored row can speak "
                          f"for them (needs under {MAX_FOREIGN:.0%})")
        if not per_row:
            doubts.append(f"the {competition.metric_name} metric has no per-row form to weigh")
        chosen = unmeasured_choice(unmeasured, verdict.submitted, share, (learned or {}).get(group, 0),
                                   student_p_better, AVERAGE in decisions) if doubts else None
        if chosen:
            out[group] = GroupVerdict(group, ess, share, False, chosen,
                                      f"not confident for the {group} group: {'; '.join(doubts)}; the student learned "
                                      f"from {learned[group]} of its images and the control did not, and was at least "
                                      f"even with it on the {verdict.kind} rows (uncalibrated, better in "
                                      f"{student_p_better:.0%} of resamples, needs {unmeasured.min_p_better:.0%}): "
                                      f"it gets "
                                      + ("the student" if chosen == "student" else "the average of the two")
                                      + " (--unmeasured-groups)")
            continue
        if doubts:
            out[group] = GroupVerdict(group, ess, share, False, verdict.submitted,
                                      f"not confident for the {group} group: {'; '.join(doubts)}; it gets the "
                                      f"verdict's {verdict.submitted}")
            continue
        weighted = decide_submission(competition, y, scored, decisions, verdict.kind, guard_confidence, seed, w,
                                     rows=f"the {verdict.kind} rows weighted like the {group} group (ESS {ess:.0f} of "
                                          f"{len(y)})" + (", uncalibrated" if compared else ""),
                                     teacher_needs_guard=teacher_needs_guard, compared=compared)
        out[group] = GroupVerdict(group, ess, share, True, weighted.submitted, weighted.reason, weighted.scores)
    return out


def unmeasured_choice(unmeasured: Unmeasured, submitted: str, foreign_share: float, learned: int,
                      student_p_better: float | None, average_available: bool) -> str | None:
    """What a group no scored row can measure gets instead of the verdict's control (module doc), or None: keep it."""
    if (unmeasured.choice == "verdict" or foreign_share < MAX_FOREIGN or submitted != "control" or learned <= 0
            or student_p_better is None or student_p_better < unmeasured.min_p_better):
        return None
    if unmeasured.choice == "average":
        return AVERAGE if average_available else None
    return "student"
