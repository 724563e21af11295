"""Recompute a run's scores from its folder alone: no training, no images (`runs rescore RUN`).

A run keeps what its scores are made of (kaggle-imet-2019 style; pipeline/run/folder.py): config.json, split.csv
and probabilities.npz (every model's probabilities of the scored train rows and of the readable test items, with
ids, and the ids of its validated submission). Rescoring runs the run's own decision stage (pipeline/run/decision.py)
on them again: each model's decision refit on the scored rows, every model scored, the verdict and its guard, every
submission; it also scores a weighted blend of models and public/private against a solution, and writes a new
validated submission, so thresholds, blends and bootstraps can be revisited without retraining. On an unchanged
run it reproduces the recorded scores, verdict and submissions byte for byte.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipeline.errors import UserError
from pipeline.method import calibration
from pipeline.method import verdict as verdicts
from pipeline.method.group_verdict import Unmeasured
from pipeline.method.verdict import MODELS
from pipeline.plugin.api import Competition
from pipeline.plugin.registry import get_competition
from pipeline.run.decision import Outcome, decide, with_blend
from pipeline.run.folder import SUBMISSION, RunFolder, RunProbabilities
from pipeline.run.metrics import RunMetrics

BLEND = "blend"


@dataclass
class Rescore:
    folder: RunFolder
    recorded: RunMetrics | None  # metrics.json (None when the run did not finish writing it)
    probs: RunProbabilities  # what the folder holds, with the submission ids (and a blend's probabilities)
    metric: str
    greater_is_better: bool
    outcome: Outcome  # of the decision stage, the run's own
    blend: dict[str, float] = field(default_factory=dict)  # model -> weight (they sum to 1)
    blend_comparison: verdicts.Comparison | None = None  # the blend against the model the verdict submits
    written: Path | None = None

    @property
    def verdict(self) -> verdicts.Verdict:
        return self.outcome.verdict

    def table(self) -> str:
        """One row per model: recomputed and recorded scores on the scored rows, public and private."""
        recorded = self.recorded.holdout if self.recorded and self.recorded.metric == self.metric else {}
        rows = []
        for name in sorted(self.outcome.scores, key=lambda n: MODELS.index(n) if n in MODELS else len(MODELS)):
            score = self.outcome.scores[name]
            label = name if name != BLEND else "blend " + " + ".join(f"{w:.2f} {m}" for m, w in self.blend.items())
            row = {"model": label, self.probs.kind: score, "recorded": recorded.get(name),
                   "decision": "thresholds" if self.outcome.decisions[name].thresholds is not None else "probabilities"}
            for board in ("public", "private"):
                if self.outcome.leaderboard:
                    row[board] = self.outcome.leaderboard[name].get(board)
            rows.append(row)
        better = "higher" if self.greater_is_better else "lower"
        lines = [f"== rescore {self.folder.path} ({self.metric}, {better} is better; {self.verdict.rows} {self.probs.kind} rows)",
                 pd.DataFrame(rows).to_string(index=False, na_rep="-", float_format=lambda x: f"{x:.6f}")]
        lines += [c.line() for c in [*self.verdict.comparisons.values(), *([self.blend_comparison] if self.blend_comparison else [])]]
        was = self.recorded.verdict.submitted if self.recorded and self.recorded.verdict else None
        lines.append(f"submitted: {self.verdict.submitted} ({self.verdict.reason})"
                     + (f"; the run recorded {was}" if was and was != self.verdict.submitted else ""))
        lines += [f"  {g.group}: {g.submitted} ({g.reason})" for g in self.verdict.groups.values()]
        if self.verdict.by_group:
            lines.append(f"submission.csv gives each group its model ({self.outcome.submitted})")
        if self.written:
            lines.append(f"wrote {self.written}")
        return "\n".join(lines)


def expected_submission_ids(folder: RunFolder, probs: RunProbabilities, metrics: RunMetrics | None,
                            competition: Competition) -> list[str]:
    """The ids, in order, that every submission of the run must hold: those of the submission the run validated.

    The run keeps them in probabilities.npz. Not submission.csv: it is the file people open, edit and re-save,
    and ids read from an edited copy once gave a rescored submission with ids missing that still "validated"
    (against itself). Not the data folder: it lies outside the run, and may be gone, moved or re-downloaded
    since (a later stage's sample submission). A submission.csv that no longer holds those ids is refused: the
    folder was edited. A run written before the ids were kept falls back on its submission.csv only while that is
    the very file it wrote (the sha256 in metrics.json)."""
    submission = folder.file(SUBMISSION)
    if probs.submission_ids is not None:
        if submission.is_file():
            _check_submission_ids(folder, competition, probs.classes, probs.submission_ids, folder.restore_hint(metrics))
        return probs.submission_ids
    if not submission.is_file():
        raise UserError(f"run folder {folder.path} lacks submission.csv, and its probabilities.npz predates the submission "
                        "ids kept there: a run of this age is rescored with the submission.csv it wrote")
    changed = folder.submission_changed(metrics)
    if changed:
        raise UserError(f"{submission} cannot be trusted for the ids a submission of the run must hold: it {changed}, and "
                        f"this run's probabilities.npz predates the ids kept there; {folder.restore_hint(metrics)} and "
                        "run this again")
    ids, _ = competition.from_submission(folder.read_submission(), probs.classes)
    return ids


def _check_submission_ids(folder: RunFolder, competition: Competition, classes: list[str], expected: list[str],
                          restore: str) -> None:
    """Refuse a submission.csv whose ids are not the run's (missing, foreign or repeated ids): it was edited."""
    submission = folder.file(SUBMISSION)
    try:
        ids, _ = competition.from_submission(folder.read_submission(), classes)
    except UserError as error:
        raise UserError(f"{submission} is no longer a submission of this run ({error}); it was edited after the run: "
                        f"{restore}, or move your copy out of the run folder") from error
    have, want = set(ids), set(expected)
    missing = [i for i in expected if i not in have]
    extra = [i for i in ids if i not in want]
    repeated = pd.Series(ids)[pd.Series(ids).duplicated()].tolist()
    if missing or extra or repeated:
        counts = [_some(missing, f"of its {len(expected)} ids are missing"), _some(extra, "are not the run's")]
        counts += [_some(repeated, "are repeated")] if repeated else []
        raise UserError(f"{submission} does not hold the run's submission ids: {', '.join(counts)}; it was edited after "
                        f"the run (the run's ids are kept in probabilities.npz): {restore}, or move your copy out of "
                        "the run folder, then run this again")


def _some(ids: list[str], what: str) -> str:
    return f"{len(ids)} {what}" + (f" (e.g. {ids[:3]})" if ids else "")


def parse_blend(text: str, models: list[str]) -> dict[str, float]:
    """`student=0.5,control=0.5` -> weights of models the run has, positive, normalised to sum to 1."""
    weights = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        name = name.strip()
        try:
            weight = float(value)
        except ValueError:
            weight = math.nan
        if name not in models or not math.isfinite(weight) or weight <= 0 or name in weights:
            raise UserError(f"--blend {text!r}: {part.strip()!r} must be MODEL=WEIGHT with MODEL one of {', '.join(models)} "
                            "(each once) and WEIGHT a positive number, e.g. --blend student=0.5,control=0.5")
        weights[name] = weight
    total = sum(weights.values())
    return {name: w / total for name, w in weights.items()}


def rescore(path: Path, metric: str | None = None, solution: Path | None = None, blend: str | None = None,
            write: str | None = None) -> Rescore:
    """The run's decision stage again, on what its folder holds (and on a blend of its models); optionally score
    against a solution and write `rescored_<model>_submission.csv` into the run folder (never over a file)."""
    folder = RunFolder(path)
    cfg = folder.read_config()
    competition = get_competition(cfg.competition, metric or cfg.metric, cfg.plugin_options)
    probs = folder.read_probabilities()
    metrics = folder.read_metrics()
    probs = dataclasses.replace(probs, submission_ids=expected_submission_ids(folder, probs, metrics, competition))
    weights = parse_blend(blend, [m for m in MODELS if m in probs.scored]) if blend else {}
    if weights:
        probs = with_blend(probs, BLEND, weights)
    if write is not None and write not in probs.test:
        raise UserError(f"--write {write!r}: choose one of {', '.join(probs.test)}" + ("" if weights else " (or blend, with --blend)"))
    recorded = metrics.verdict if metrics else None
    # a run calibrated before the temperature fit had a prior recorded none: its rescore fits as it did
    prior_sd = recorded.temperature_prior_sd if recorded and recorded.temperatures else calibration.PRIOR_SD
    learned = (metrics.pseudo if metrics else {}).get("by_group")  # what the student learned from, per group
    outcome = decide(competition, probs, cfg.guard_confidence, cfg.seed, solution, cfg.calibrate, prior_sd,
                     Unmeasured.of(cfg), learned, cfg.guard_compares)
    result = Rescore(folder, metrics, probs, competition.metric_name, competition.greater_is_better, outcome, weights)
    if weights:
        submitted = outcome.verdict.submitted
        scored = outcome.scored  # calibrated, as the submissions are
        result.blend_comparison = verdicts.compare(competition, probs.y_scored, scored[BLEND], scored[submitted],
                                                   (outcome.decisions[BLEND], outcome.decisions[submitted]),
                                                   (BLEND, submitted), cfg.seed)
    if write is not None:
        result.written = folder.write_rescored(write, outcome.tables[write])
    return result
