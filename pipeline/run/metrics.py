"""RunMetrics: the record of a finished run, as metrics.json holds it (and the ledger, and `runs rescore`, read it).

`to_dict` is metrics.json's content, key for key in this order; `from_dict` reads it back, and reads what older
versions wrote too: a key they did not write yet gets its default (None, or empty).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import UserError
from pipeline.method.verdict import MODELS, Verdict
from pipeline.plugin.api import Decision


@dataclass
class SubmissionRecord:
    """submission.csv as the run wrote it: the sha256 tells a later edit apart."""

    path: str
    sha256: str | None
    rows: int | None
    model: str | None = None  # whose predictions it holds (None: a run older than the control and guard)

    def to_dict(self) -> dict:
        record = {"path": self.path, "sha256": self.sha256, "rows": self.rows}
        return record if self.model is None else {**record, "model": self.model}


@dataclass
class Timings:
    """Wall-clock seconds of the run's parts, rounded to 0.01 s."""

    teacher_s: float | None = None
    student_s: float | None = None
    control_s: float | None = None  # None: a run older than the control
    total_s: float | None = None  # None: not finished

    def to_dict(self) -> dict:
        return {name: value for name, value in dataclasses.asdict(self).items() if value is not None}


@dataclass
class RunMetrics:
    run_id: str
    competition: str
    metric: str | None
    greater_is_better: bool | None
    data_fingerprint: str | None = None
    seed: int | None = None
    holdout: dict[str, float | None] = field(default_factory=dict)  # model -> score on the scored rows (None: not trained)
    verdict: Verdict | None = None  # None: a run older than the verdict
    pseudo: dict = field(default_factory=dict)  # the selection's summary (pipeline/method/pseudo.py)
    shift: dict | None = None  # the shift check's summary; None: it did not run
    decision: dict[str, Decision] = field(default_factory=dict)  # model -> what turned its probabilities into submissions
    items: dict = field(default_factory=dict)  # counts of labeled, scored and test items, and the unreadable ones
    teacher_cache: str | None = None  # "hit" | "miss"
    teacher_training: Any = field(default_factory=dict)  # as the teacher's fit reports it
    student_training: list = field(default_factory=list)
    control_training: list = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)
    submission: SubmissionRecord | None = None
    versions: dict = field(default_factory=dict)  # library versions
    resumed: dict | None = None  # {"from_status", "at"} of a resumed run
    leaderboard: dict | None = None  # model -> {"public", "private"} against --solution

    @property
    def models(self) -> list[str]:
        """The run's models with a score, in MODELS order."""
        return [m for m in MODELS if self.holdout.get(m) is not None]

    def to_dict(self) -> dict:
        record = {
            "run_id": self.run_id, "competition": self.competition, "metric": self.metric,
            "greater_is_better": self.greater_is_better, "data_fingerprint": self.data_fingerprint, "seed": self.seed,
            "holdout": self.holdout, "verdict": None if self.verdict is None else self.verdict.to_dict(),
            "pseudo": self.pseudo, "shift": self.shift, "decision": {name: d.to_dict() for name, d in self.decision.items()},
            "items": self.items, "teacher_cache": self.teacher_cache, "teacher_training": self.teacher_training,
            "student_training": self.student_training, "control_training": self.control_training,
            "timings": self.timings.to_dict(), "submission": None if self.submission is None else self.submission.to_dict(),
            "versions": self.versions,
        }
        if self.resumed:
            record["resumed"] = self.resumed
        if self.leaderboard:
            record["leaderboard"] = self.leaderboard
        return record

    @classmethod
    def from_dict(cls, record: dict, where: str = "metrics.json") -> "RunMetrics":
        """`to_dict`'s form back, or an older version's; a UserError naming `where` when it is not metrics.json."""
        if not isinstance(record, dict):
            raise UserError(f"{where} holds a {type(record).__name__}, not a JSON object; the run folder is damaged")
        try:
            submission, verdict = record.get("submission"), record.get("verdict")
            return cls(
                str(record.get("run_id") or ""), str(record.get("competition") or ""), record.get("metric"),
                record.get("greater_is_better"), record.get("data_fingerprint"), record.get("seed"),
                dict(record.get("holdout") or {}), None if not verdict else Verdict.from_dict(verdict),
                record.get("pseudo") or {}, record.get("shift"),
                {name: Decision.from_dict(d, f"{where}: decision.{name}") for name, d in (record.get("decision") or {}).items()},
                record.get("items") or {}, record.get("teacher_cache"), record.get("teacher_training") or {},
                record.get("student_training") or [], record.get("control_training") or [],
                Timings(**(record.get("timings") or {})),
                None if not submission else SubmissionRecord(submission["path"], submission.get("sha256"),
                                                             submission.get("rows"), submission.get("model")),
                record.get("versions") or {}, record.get("resumed"), record.get("leaderboard"))
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise UserError(f"{where} is not a metrics.json this pipeline wrote ({type(error).__name__}: {error}); "
                            "the run folder is damaged") from None
