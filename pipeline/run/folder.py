"""RunFolder: the one owner of a run folder (RUNS_DIR/<competition>/<run>/): the name of every file a run writes,
and their typed reading and writing.

The folder is the interface between training and deciding (kaggle-imet-2019's make_submission): training leaves
what the scores are made of (RunProbabilities: probabilities.npz and split.csv), the decision stage
(pipeline/run/decision.py) turns it into submissions and metrics.json (RunMetrics), and `runs rescore` reads
the same files back into the same stage, without training.
"""
from __future__ import annotations

import dataclasses
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import UserError
from pipeline.files import json_plain, sha256_of, write_bytes_atomic, write_csv_atomic, write_text_atomic
from pipeline.method.verdict import AVERAGE, BY_GROUP, MODELS
from pipeline.run.config import RunConfig
from pipeline.run.metrics import RunMetrics, SubmissionRecord

# Options added after runs were made, with the value those runs were made under: a config.json without one is an older
# run's, and `runs rescore` and `submit --resume` must reproduce what it did.
LEGACY_DEFAULTS = {"calibrate": "none", "unmeasured_groups": "verdict", "pseudo_labeler": "teacher",
                   "guard_compares": "calibrated",
                   # before the option, the student had only to not lose beyond noise: the guard's confidence mirrored
                   "unmeasured_p_better": lambda values: round(1 - values.get("guard_confidence", RunConfig.guard_confidence), 9)}
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")  # a run id: the folder's name
CONFIG = "config.json"  # the resolved RunConfig: what `submit --resume` runs again
SPLIT = "split.csv"  # each labeled image's fold
PROBABILITIES = "probabilities.npz"  # RunProbabilities
PSEUDO_LABELS = "pseudo_labels.csv"  # one row per test item and selection: what happened to it and why
SUBMISSION = "submission.csv"  # the submitted model's: the file to upload
METRICS = "metrics.json"  # RunMetrics, written last: a folder holding it (and SUBMISSION) is a finished run
REPORT = "report.html"
CONFIDENCE_PLOT = "confidence.png"  # of the report
SHIFT = "shift.json"  # of the shift check (pipeline/shift/assess.py), with its plots


def model_submission(model: str) -> str:
    """Every model's own submission, beside SUBMISSION (which is a copy of the submitted model's)."""
    return f"{model}_submission.csv"


def rescored_submission(model: str) -> str:
    """What `runs rescore --write MODEL` writes: never one of the run's own names."""
    return f"rescored_{model}_submission.csv"


def outputs() -> frozenset[str]:
    """The names of the files a run writes besides CONFIG: what `submit --resume` may remove."""
    from pipeline.shift.plots import PLOT_NAMES  # matplotlib: only when asked

    return frozenset({SUBMISSION, *(model_submission(m) for m in (*MODELS, AVERAGE, BY_GROUP)), SPLIT, PROBABILITIES, PSEUDO_LABELS, METRICS,
                      REPORT, CONFIDENCE_PLOT, SHIFT, *PLOT_NAMES.values()})


def find_run(run: str, runs_dir: Path, competition: str | None = None) -> Path:
    """RUN as a folder path, or a run id under RUNS_DIR/<competition>/ (any competition when not given)."""
    if run and Path(run).is_dir():
        return Path(run)
    pattern = f"{competition}/{run}" if competition else f"*/{run}"
    found = sorted(p for p in Path(runs_dir).glob(pattern) if p.is_dir())
    if not found:
        raise UserError(f"no run folder {run!r} under {runs_dir}" + (f"/{competition}" if competition else "")
                        + "; pass the run folder's path, or its id with --runs-dir (and --competition)")
    if len(found) > 1:
        raise UserError(f"run id {run!r} is in several competitions ({', '.join(str(p) for p in found)}); "
                        "pass --competition or the folder's path")
    return found[0]


@dataclass
class RunProbabilities:
    """What the scores of a run are made of (probabilities.npz): every model's probabilities of the scored train
    rows and of the readable test items, with their ids, and the ids of the run's submissions in their order."""

    classes: list[str]
    train_paths: np.ndarray  # every readable train row, as in split.csv
    y: np.ndarray  # their targets
    fold: np.ndarray  # their folds (split.TRAIN_ONLY: never scored)
    test_ids: np.ndarray  # the readable test items, in the run's order
    test_groups: np.ndarray | None  # their leaderboard groups (None: not kept by the run)
    submission_ids: list[str] | None  # every id a submission holds, in order (None: a run older than their keeping)
    scored: dict[str, np.ndarray]  # model -> probabilities of the scored rows (fold >= 0), in the run's model order
    test: dict[str, np.ndarray]  # model -> probabilities of the readable test items
    # test group -> each scored row's importance weight for it (pipeline/method/importance.py); empty: none made
    group_weights: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    test_foreign: np.ndarray | None = None  # per test item: no look-alike among train images (None: not kept)
    # per test item: no scored row vouches for a confidence there: foreign, or in a group they cannot weigh like
    # (group_verdict.weighed_like); None: not kept, test_foreign then stands for it
    test_unvouched: np.ndarray | None = None

    def foreign_share(self, group: str) -> float:
        """The share of the group's test items with no look-alike among the train images (0 when not kept)."""
        if self.test_foreign is None or self.test_groups is None:
            return 0.0
        mine = np.asarray(self.test_groups).astype(str) == group
        return float(self.test_foreign[mine].mean()) if mine.any() else 0.0

    @property
    def y_scored(self) -> np.ndarray:
        return self.y[self.fold >= 0]

    @property
    def kind(self) -> str:
        """What the scored rows are: one holdout, or every labeled row out of fold."""
        return "holdout" if self.fold.max() == 0 else "out-of-fold"


class RunFolder:
    """One run folder: where each file is, and reading and writing it typed."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    # ---- config.json ---------------------------------------------------------------------------------------
    def save_config(self, cfg: RunConfig) -> None:
        cfg.save(self.file(CONFIG))

    def read_config(self) -> RunConfig:
        """The run's RunConfig, validated; a UserError naming config.json when it is missing, unreadable, holds
        options this version does not have or a value the option does not allow."""
        path = self.file(CONFIG)
        try:
            values = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"{path} is missing; is {self.path} a run folder?") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UserError(f"{path} is unreadable ({error}); it must be the config.json the run wrote") from None
        fields = {f.name: f for f in dataclasses.fields(RunConfig)}
        unknown = sorted(set(values) - set(fields)) if isinstance(values, dict) else ["(not an object)"]
        if unknown:
            raise UserError(f"{path} holds {', '.join(unknown)}, which are not options of this version; use the "
                            "version that wrote it")
        if not values.get("competition"):
            raise UserError(f"{path} names no competition; is {self.path} a run folder?")
        for name, before in LEGACY_DEFAULTS.items():
            if name not in values:
                values[name] = before(values) if callable(before) else before
        for name, value in values.items():
            if isinstance(fields[name].default, tuple) and isinstance(value, list):
                values[name] = tuple(value)  # JSON has no tuples
        try:
            return RunConfig(**values)
        except UserError as error:
            raise UserError(f"{path}: {error}") from None

    # ---- what training leaves: split.csv, probabilities.npz, pseudo_labels.csv ------------------------------
    def write_recomputables(self, probs: RunProbabilities, provenance: pd.DataFrame) -> None:
        """split.csv, probabilities.npz and pseudo_labels.csv: everything needed to decide again without training."""
        from pipeline.data import split  # scikit-learn: seconds to import, for the run only

        write_csv_atomic(self.file(SPLIT), split.split_table(probs.train_paths.tolist(), probs.fold))
        buffer = io.BytesIO()
        np.savez_compressed(buffer, classes=np.array(probs.classes), train_paths=probs.train_paths, y=probs.y,
                            fold=probs.fold, test_ids=probs.test_ids, test_groups=probs.test_groups,
                            submission_ids=np.array(probs.submission_ids, dtype=str),
                            **{f"scored_{k}": v for k, v in probs.scored.items()},
                            **{f"test_{k}": v for k, v in probs.test.items()},
                            **{f"weight_{g}": w for g, w in probs.group_weights.items()},
                            **({} if probs.test_foreign is None else {"test_foreign": probs.test_foreign}),
                            **({} if probs.test_unvouched is None else {"test_unvouched": probs.test_unvouched}))
        write_bytes_atomic(self.file(PROBABILITIES), buffer.getvalue())
        write_csv_atomic(self.file(PSEUDO_LABELS), provenance)

    def read_probabilities(self) -> RunProbabilities:
        """probabilities.npz, checked against split.csv; what older runs did not keep is None."""
        needed = (SPLIT, PROBABILITIES)
        missing = [name for name in needed if not self.file(name).is_file()]
        if missing:
            raise UserError(f"run folder {self.path} lacks {', '.join(missing)}; rescoring needs {', '.join(needed)} "
                            "(written by every finished run)")
        path = self.file(PROBABILITIES)
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in npz.files}
        except (OSError, ValueError) as error:
            raise UserError(f"{path} is not a readable .npz ({error}); the run cannot be rescored") from error
        for key in ("classes", "train_paths", "y", "fold", "test_ids", "scored_teacher", "test_teacher"):
            if key not in arrays:
                raise UserError(f"{path} has no {key!r} array; it was not written by this pipeline's run")
        table = pd.read_csv(self.file(SPLIT), dtype={"path": str})
        if (list(table.get("path", [])) != arrays["train_paths"].tolist()
                or not np.array_equal(table.get("fold", pd.Series(dtype=int)).to_numpy(), arrays["fold"])):
            raise UserError(f"{self.file(SPLIT)} and {PROBABILITIES} disagree on the train rows or their folds; "
                            "the folder was edited or mixes two runs")
        scored_rows = int((arrays["fold"] >= 0).sum())
        for key in (k for k in arrays if k.startswith("weight_") and arrays[k].shape != (scored_rows,)):
            raise UserError(f"{path}: {key!r} holds {arrays[key].shape} values, not one per scored row ({scored_rows}); "
                            "the folder was edited or mixes two runs")
        models = [key.removeprefix("scored_") for key in arrays if key.startswith("scored_")]
        models = [m for m in models if f"test_{m}" in arrays]  # in the run's order
        ids = arrays.get("submission_ids")
        return RunProbabilities([str(c) for c in arrays["classes"]], arrays["train_paths"], arrays["y"], arrays["fold"],
                                arrays["test_ids"].astype(str), arrays.get("test_groups"),
                                None if ids is None else [str(i) for i in ids],
                                {m: arrays[f"scored_{m}"] for m in models}, {m: arrays[f"test_{m}"] for m in models},
                                {k.removeprefix("weight_"): v for k, v in arrays.items() if k.startswith("weight_")},
                                arrays.get("test_foreign"), arrays.get("test_unvouched"))

    # ---- what deciding writes: submissions and metrics.json ------------------------------------------------
    def write_submissions(self, tables: dict[str, pd.DataFrame], submitted: str, also: Path | None = None) -> SubmissionRecord:
        """<model>_submission.csv for every model, and submission.csv (and `also`, the run's --output) for the
        submitted one; returns submission.csv's record, as written."""
        for name, table in tables.items():
            write_csv_atomic(self.file(model_submission(name)), table)
        write_csv_atomic(self.file(SUBMISSION), tables[submitted])
        if also:
            write_csv_atomic(Path(also), tables[submitted])
        path = self.file(SUBMISSION)
        return SubmissionRecord(str(path), sha256_of(path), len(tables[submitted]), submitted)

    def write_rescored(self, model: str, table: pd.DataFrame) -> Path:
        """rescored_<model>_submission.csv, never over an existing file."""
        target = self.file(rescored_submission(model))
        if target.exists():
            raise UserError(f"{target} already exists; remove it first (rescore never overwrites a submission)")
        write_csv_atomic(target, table)
        return target

    def read_submission(self, name: str = SUBMISSION) -> pd.DataFrame:
        path = self.file(name)
        try:
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
            raise UserError(f"{path} is not a readable CSV ({error}); it was edited after the run") from error

    def submission_changed(self, metrics: RunMetrics | None) -> str | None:
        """How submission.csv differs from the very file the run wrote (by the sha256 in metrics.json), as a predicate
        of it ("is missing", ...); None when it is that file."""
        record = metrics.submission if metrics else None
        if not self.file(SUBMISSION).is_file():
            return "is missing"
        if record is None or not record.sha256:
            return f"has no sha256 recorded in {METRICS} to check it against"
        if sha256_of(self.file(SUBMISSION)) != record.sha256:
            return f"is not the file the run wrote (its sha256 differs from the one in {self.file(METRICS)})"
        return None

    def restore_hint(self, metrics: RunMetrics | None) -> str:
        """How to put back the submission.csv the run wrote: a copy of its submitted model's submission."""
        model = metrics.submission.model if metrics and metrics.submission else None
        if model is None:
            return "restore the file the run wrote"
        return (f"restore it (cp {self.file(model_submission(model))} {self.file(SUBMISSION)}: the same file as the run "
                "wrote it)")

    def write_metrics(self, metrics: RunMetrics) -> None:
        write_text_atomic(self.file(METRICS), json.dumps(metrics.to_dict(), indent=2, default=json_plain) + "\n")

    def read_metrics(self) -> RunMetrics | None:
        """metrics.json, typed (older runs' forms too); None when the run did not write it."""
        path = self.file(METRICS)
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UserError(f"{path} is not readable JSON ({error}); the run folder is damaged") from error
        return RunMetrics.from_dict(record, str(path))
