"""The decision stage: per-model decisions -> verdict -> submissions (-> leaderboard scores), from what a run folder
holds (RunProbabilities) alone.

A run calls it after training, and `runs rescore` calls it on the folder the run left, so a rescore of an
unchanged run reproduces its verdict, scores and submissions byte for byte by construction.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.method import verdict as verdicts
from pipeline.method.verdict import MODELS
from pipeline.plugin.api import Competition, Decision
from pipeline.run.folder import RunProbabilities
from pipeline.submission import read_solution, score_against_solution, validate_submission


@dataclass
class Outcome:
    decisions: dict[str, Decision]  # model -> fit on the scored rows
    scores: dict[str, float]  # model -> metric on the scored rows
    verdict: verdicts.Verdict  # which of the run's models is submitted, and why
    tables: dict[str, pd.DataFrame]  # model -> its validated submission
    leaderboard: dict[str, dict] | None  # model -> {"public", "private"} against a solution; None without one

    @property
    def holdout(self) -> dict[str, float | None]:
        """Every model's score on the scored rows, None for one the run did not train (metrics.json's holdout)."""
        return {name: self.verdict.scores.get(name) for name in MODELS}


def decide(competition: Competition, probs: RunProbabilities, guard_confidence: float, seed: int,
           solution: Path | str | None = None) -> Outcome:
    """Fit each model's decision on the scored rows, score it, run the verdict and its guard over the run's models
    (MODELS; another entry, such as a rescore's blend, is decided and scored but never submitted), and make every
    model's submission; with a solution, score each against the public and private rows."""
    y = probs.y_scored
    decisions = {name: competition.fit_decision(y, p) for name, p in probs.scored.items()}
    models = {name: p for name, p in probs.scored.items() if name in MODELS}
    verdict = verdicts.decide_submission(competition, y, models, decisions, probs.kind, guard_confidence, seed)
    scores = {name: verdict.scores[name] if name in verdict.scores else verdicts.score(competition, y, p, decisions[name])
              for name, p in probs.scored.items()}
    tables = {name: submission_table(competition, probs, p, decisions[name]) for name, p in probs.test.items()}
    leaderboard = None
    if solution:
        answers = read_solution(Path(solution))
        leaderboard = {name: score_against_solution(competition, t, answers, probs.classes) for name, t in tables.items()}
    return Outcome(decisions, scores, verdict, tables, leaderboard)


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
