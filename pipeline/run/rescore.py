"""Recompute a run's scores from its folder alone: no training, no images (`runs rescore RUN`).

A run keeps what its scores are made of (kaggle-imet-2019 style): split.csv, probabilities.npz (every
model's probabilities of the scored train rows and of the readable test items, with ids, and the ids of its
validated submission), config.json and its submissions. From those this refits each model's decision on the scored rows, rescores every model,
reruns the verdict and its guard, scores a weighted blend of models, scores public/private against a
solution and writes a new validated submission, so thresholds, blends and bootstraps can be revisited
without retraining. A recomputation of an unchanged run reproduces its recorded scores exactly.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.method import verdict as verdicts
from pipeline.plugin.api import Decision
from pipeline.errors import UserError
from pipeline.files import sha256_of, write_csv_atomic
from pipeline.plugin.api import Competition
from pipeline.plugin.registry import get_competition
from pipeline.submission import read_solution, score_against_solution, validate_submission

MODELS = ("teacher", "control", "student")
BLEND = "blend"


@dataclass
class RunFolder:
    """What a run folder holds for recomputing: config, recorded metrics and the probabilities with ids."""

    path: Path
    config: dict
    metrics: dict  # metrics.json ({} when the run did not finish writing it)
    classes: list[str]
    y: np.ndarray  # targets of the readable train rows
    fold: np.ndarray  # per train row, as in split.csv
    test_ids: np.ndarray  # readable test items, in the run's order
    scored: dict[str, np.ndarray]  # model -> probabilities of the scored rows (fold >= 0)
    test: dict[str, np.ndarray]  # model -> probabilities of the readable test items
    submission_ids: list[str]  # every id a submission of the run holds, in its order (expected_submission_ids)

    @property
    def y_scored(self) -> np.ndarray:
        return self.y[self.fold >= 0]

    @property
    def kind(self) -> str:
        return "holdout" if self.fold.max() == 0 else "out-of-fold"


@dataclass
class Rescore:
    run: RunFolder
    metric: str
    greater_is_better: bool
    decisions: dict[str, Decision]
    scores: dict[str, float]  # model (and "blend") -> metric on the scored rows
    verdict: verdicts.Verdict
    blend: dict[str, float] = field(default_factory=dict)  # model -> weight (they sum to 1)
    blend_comparison: verdicts.Comparison | None = None  # the blend against the model the verdict submits
    leaderboard: dict[str, dict] = field(default_factory=dict)  # model -> {"public": .., "private": ..}
    written: Path | None = None

    def table(self) -> str:
        """One row per model: recomputed and recorded scores on the scored rows, public and private."""
        recorded = self.run.metrics.get("holdout", {}) if self.run.metrics.get("metric") == self.metric else {}
        rows = []
        for name, score in self.scores.items():
            label = name if name != BLEND else "blend " + " + ".join(f"{w:.2f} {m}" for m, w in self.blend.items())
            row = {"model": label, self.run.kind: score, "recorded": recorded.get(name),
                   "decision": "thresholds" if self.decisions[name].thresholds is not None else "probabilities"}
            for board in ("public", "private"):
                if self.leaderboard:
                    row[board] = self.leaderboard[name].get(board)
            rows.append(row)
        better = "higher" if self.greater_is_better else "lower"
        lines = [f"== rescore {self.run.path} ({self.metric}, {better} is better; {self.verdict.rows} {self.run.kind} rows)",
                 pd.DataFrame(rows).to_string(index=False, na_rep="-", float_format=lambda x: f"{x:.6f}")]
        for key, c in [*self.verdict.comparisons.items(), *([(f"blend_vs_{self.blend_comparison.worse}", self.blend_comparison)]
                                                             if self.blend_comparison else [])]:
            lines.append(f"{key.replace('_', ' '):<22} gain {c.gain:+.4f} (90% interval {c.interval[0]:+.4f} .. "
                         f"{c.interval[1]:+.4f}; better in {c.p_better:.0%} of resamples)")
        was = self.run.metrics.get("verdict", {}).get("submitted")
        lines.append(f"submitted: {self.verdict.submitted} ({self.verdict.reason})"
                     + (f"; the run recorded {was}" if was and was != self.verdict.submitted else ""))
        if self.written:
            lines.append(f"wrote {self.written}")
        return "\n".join(lines)


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


def load_run_folder(path: Path, competition: Competition) -> RunFolder:
    """Read config.json, metrics.json, split.csv and probabilities.npz, and the ids a submission of the run must
    hold (`expected_submission_ids`); check they agree."""
    path = Path(path)
    needed = ("config.json", "split.csv", "probabilities.npz")
    missing = [name for name in needed if not (path / name).is_file()]
    if missing:
        raise UserError(f"run folder {path} lacks {', '.join(missing)}; rescoring needs {', '.join(needed)} "
                        "(written by every finished run)")
    config = read_json(path / "config.json")
    metrics = read_json(path / "metrics.json") if (path / "metrics.json").is_file() else {}
    try:
        with np.load(path / "probabilities.npz", allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as error:
        raise UserError(f"{path / 'probabilities.npz'} is not a readable .npz ({error}); the run cannot be rescored") from error
    for key in ("classes", "train_paths", "y", "fold", "test_ids", "scored_teacher", "test_teacher"):
        if key not in arrays:
            raise UserError(f"{path / 'probabilities.npz'} has no {key!r} array; it was not written by this pipeline's run")
    split = pd.read_csv(path / "split.csv", dtype={"path": str})
    if (list(split.get("path", [])) != arrays["train_paths"].tolist()
            or not np.array_equal(split.get("fold", pd.Series(dtype=int)).to_numpy(), arrays["fold"])):
        raise UserError(f"{path / 'split.csv'} and probabilities.npz disagree on the train rows or their folds; "
                        "the folder was edited or mixes two runs")
    classes = [str(c) for c in arrays["classes"]]
    ids = expected_submission_ids(path, arrays, metrics, competition, classes)
    models = [m for m in MODELS if f"scored_{m}" in arrays and f"test_{m}" in arrays]
    return RunFolder(path, config, metrics, classes, arrays["y"], arrays["fold"], arrays["test_ids"].astype(str),
                     {m: arrays[f"scored_{m}"] for m in models}, {m: arrays[f"test_{m}"] for m in models}, ids)


def expected_submission_ids(path: Path, arrays: dict[str, np.ndarray], metrics: dict, competition: Competition,
                            classes: list[str]) -> list[str]:
    """The ids, in order, that every submission of the run must hold: those of the submission the run validated.

    The run keeps them in probabilities.npz. Not submission.csv: it is the file people open, edit and re-save,
    and ids read from an edited copy once gave a rescored submission with ids missing that still "validated"
    (against itself). Not the data folder: it lies outside the run, and may be gone, moved or re-downloaded
    since (a later stage's sample submission). A submission.csv that no longer holds those ids is refused: the
    folder was edited. A run written before the ids were kept falls back on its submission.csv only while that is
    the very file it wrote (the sha256 in metrics.json)."""
    submission = path / "submission.csv"
    record = metrics.get("submission") or {}
    chosen = path / f"{record.get('model')}_submission.csv"
    restore = (f"restore it (cp {chosen} {submission}: the same file as the run wrote it)" if record.get("model")
               else "restore the file the run wrote")
    if "submission_ids" in arrays:
        expected = [str(i) for i in arrays["submission_ids"]]
        if submission.is_file():
            _check_submission_ids(submission, competition, classes, expected, restore)
        return expected
    if not submission.is_file():
        raise UserError(f"run folder {path} lacks submission.csv, and its probabilities.npz predates the submission "
                        "ids kept there: a run of this age is rescored with the submission.csv it wrote")
    if not record.get("sha256") or sha256_of(submission) != record["sha256"]:
        why = ("it is not the file the run wrote (its sha256 differs from the one in metrics.json)" if record.get("sha256")
               else "metrics.json records no sha256 of it to check it against")
        raise UserError(f"{submission} cannot be trusted for the ids a submission of the run must hold: {why}, and "
                        f"this run's probabilities.npz predates the ids kept there; {restore} and run this again")
    ids, _ = competition.from_submission(_read_submission(submission), classes)
    return ids


def _check_submission_ids(submission: Path, competition: Competition, classes: list[str], expected: list[str],
                          restore: str) -> None:
    """Refuse a submission.csv whose ids are not the run's (missing, foreign or repeated ids): it was edited."""
    try:
        ids, _ = competition.from_submission(_read_submission(submission), classes)
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


def _read_submission(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not a readable CSV ({error}); it was edited after the run") from error


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
    """Refit decisions, rescore every model (and a blend), rerun the verdict; optionally score against a solution
    and write `rescored_<model>_submission.csv` into the run folder (never over an existing file)."""
    config = read_json(Path(path) / "config.json") if (Path(path) / "config.json").is_file() else {}
    if "competition" not in config:
        raise UserError(f"{Path(path) / 'config.json'} is missing or names no competition; is {path} a run folder?")
    competition = get_competition(config["competition"], metric or config.get("metric"), config.get("plugin_options") or {})
    run = load_run_folder(Path(path), competition)
    scored, test = dict(run.scored), dict(run.test)
    weights = parse_blend(blend, list(scored)) if blend else {}
    if weights:
        scored[BLEND] = sum(w * run.scored[m] for m, w in weights.items())
        test[BLEND] = sum(w * run.test[m] for m, w in weights.items())
    if write is not None and write not in test:
        raise UserError(f"--write {write!r}: choose one of {', '.join(test)}" + ("" if weights else " (or blend, with --blend)"))
    y = run.y_scored
    decisions = {name: competition.fit_decision(y, p) for name, p in scored.items()}
    scores = {name: float(competition.metric(y, competition.decide(p, decisions[name]))) for name, p in scored.items()}
    models = {m: scored[m] for m in run.scored}
    verdict = verdicts.decide_submission(competition, y, models, decisions, run.kind,
                                         float(run.config.get("guard_confidence", 0.8)), int(run.config.get("seed", 0)))
    result = Rescore(run, competition.metric_name, competition.greater_is_better, decisions, scores, verdict, weights)
    if weights:
        result.blend_comparison = verdicts.compare(competition, y, scored[BLEND], scored[verdict.submitted],
                                                   (decisions[BLEND], decisions[verdict.submitted]),
                                                   (BLEND, verdict.submitted), int(run.config.get("seed", 0)))
    tables = {}
    if solution is not None or write is not None:
        tables = {name: submission_table(competition, run, p, decisions[name]) for name, p in test.items()}
    if solution is not None:
        answers = read_solution(Path(solution))
        result.leaderboard = {name: score_against_solution(competition, t, answers, run.classes) for name, t in tables.items()}
    if write is not None:
        target = run.path / f"rescored_{write}_submission.csv"
        if target.exists():
            raise UserError(f"{target} already exists; remove it first (rescore never overwrites a submission)")
        write_csv_atomic(target, tables[write])
        result.written = target
    return result


def submission_table(competition: Competition, run: RunFolder, test_probs: np.ndarray, decision: Decision) -> pd.DataFrame:
    """The submission for these test probabilities, with the run's submission ids and order, validated against
    them: an id with no readable image gets the class prior of the train labels, as in the run."""
    full = np.tile(run.y.mean(axis=0), (len(run.submission_ids), 1)).astype(np.float32)
    position = {item_id: row for row, item_id in enumerate(run.test_ids)}
    rows = [(k, position[i]) for k, i in enumerate(run.submission_ids) if i in position]
    if rows:
        at, source = np.array(rows).T
        full[at] = test_probs[source]
    table = competition.to_submission(run.submission_ids, competition.decide(full, decision), run.classes)
    validate_submission(table, competition, run.classes, run.submission_ids)
    return table


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path} is not readable JSON ({error}); the run folder is damaged") from error
    if not isinstance(value, dict):
        raise UserError(f"{path} holds a {type(value).__name__}, not a JSON object; the run folder is damaged")
    return value
