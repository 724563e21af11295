"""Compare the recorded runs of one competition: holdout vs public vs private, gains over each run's teacher,
how well the scores agree across runs (Spearman), and whether a public gain is bigger than its noise.

A public gain is "noise" when the 90% paired-bootstrap interval of (student - teacher) on the public rows
contains 0: the same rows resampled with replacement for both submissions, scored with the competition's
own metric, by the verdict's bootstrap (pipeline/method/verdict.py) at its level. That is the check a
leaderboard climber should make before trusting a public improvement (the spirit of Blum & Hardt's Ladder):
the private leaderboard has other rows.

Comparing only reads the ledger. With `record=True` (`compare --record`) the local leaderboard scores and
bootstrap intervals it had to compute are stored in the ledger, so later comparisons reuse them.
The table, CSV, JSON, Markdown and the plot of a comparison are pipeline/ledger/compare_output.py's.
"""
from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from pipeline.errors import UserError
from pipeline.files import sha256_of
from pipeline.ledger.store import Ledger
from pipeline.method.verdict import LEVEL, paired_bootstrap
from pipeline.plugin.api import GROUPS, Competition
from pipeline.plugin.registry import get_competition
from pipeline.run.folder import SUBMISSION, model_submission
from pipeline.submission import align_to_solution, read_solution, score_against_solution

SORT_KEYS = ("holdout", "public", "private")
# the comparison's text columns; every other column is a number (NaN where unknown)
TEXT_COLUMNS = ("run_id", "groups", "verdict", "board_source", "submitted", "submitted_reason", "pseudo_by_group",
                "shift", "run_dir")


@dataclass
class ComparedRuns:
    """The done runs of a competition side by side (one row each), with how well their scores agree."""

    competition: str
    metric: str
    greater_is_better: bool
    sort: str
    table: pd.DataFrame  # one row per done run, best first by `sort`
    correlations: dict = field(default_factory=dict)  # name -> {rho, p, n, note}
    notes: list[str] = field(default_factory=list)
    plot: Path | None = None
    page: Path | None = None  # runs.html, once written (pipeline/ledger/runs_page.py)


def compare_runs(ledger: Ledger, competition: str, sort: str = "public", solution: Path | None = None,
                 metric: str | None = None, run_ids: list[str] | None = None, resamples: int = 1000,
                 seed: int = 0, record: bool = False) -> ComparedRuns:
    """Build the comparison of the done runs of `competition` (or only `run_ids`); fills in local leaderboard
    scores and bootstrap intervals the ledger lacks when a solution file is known, and with `record` stores
    them in the ledger (which must then be writable)."""
    if record and ledger.read_only:
        raise RuntimeError(f"compare_runs(record=True) needs a writable ledger; {ledger.path} was opened read-only")
    if sort not in SORT_KEYS:
        raise UserError(f"--sort must be one of {', '.join(SORT_KEYS)}, got {sort!r}")
    if resamples != 0 and resamples < 100:
        raise UserError(f"--resamples must be 0 (no noise check) or at least 100 for a {LEVEL:.0%} interval, got {resamples}")
    runs = ledger.runs(competition)
    if run_ids is not None:
        runs = runs[runs["run_id"].isin(run_ids)]
    done = runs[runs["status"] == "done"]
    if done.empty:
        raise UserError(f"ledger {ledger.path} has no finished runs of {competition!r}"
                         f"{' among the given ids' if run_ids is not None else ''}; "
                         f"run `make submit COMP={competition}` or `make sweep COMP={competition}` first")
    metrics_used = sorted(done["metric"].dropna().unique())
    if metric is None and len(metrics_used) > 1:
        raise UserError(f"runs of {competition} use different metrics ({', '.join(metrics_used)}); "
                         "choose one with --metric")
    plugin = get_competition(competition, metric or (metrics_used[0] if metrics_used else None))
    same_metric = done["metric"].isna() | (done["metric"] == plugin.metric_name)
    notes = [f"{int((runs['status'] == s).sum())} {s} run(s) left out (only done runs are compared)"
             for s in ("running", "failed") if (runs["status"] == s).any()]
    if not same_metric.all():
        notes.append(f"{int((~same_metric).sum())} run(s) scored with another metric than {plugin.metric_name} left out")
    done = done[same_metric]

    solutions: dict[Path, pd.DataFrame] = {}
    rows = []
    for run in done.itertuples(index=False):
        stored = ledger.run(run.run_id)
        rows.append(_row(ledger, plugin, run, stored, solution, solutions, resamples, seed, notes, record))
    table = pd.DataFrame(rows)
    numeric = [c for c in table.columns if c not in TEXT_COLUMNS]
    table[numeric] = table[numeric].astype(float)  # None -> NaN so that sorting and plotting treat it as missing
    ascending = not plugin.greater_is_better
    table = table.sort_values(sort, ascending=ascending, na_position="last", kind="stable").reset_index(drop=True)
    correlations = {
        "holdout_vs_public": _spearman(table["holdout"], table["public"]),
        "public_vs_private": _spearman(table["public"], table["private"]),
    }
    return ComparedRuns(competition, plugin.metric_name, plugin.greater_is_better, sort, table, correlations, notes)


def _row(ledger: Ledger, plugin: Competition, run, stored: dict, solution: Path | None,
         solutions: dict[Path, pd.DataFrame], resamples: int, seed: int, notes: list[str], record: bool) -> dict:
    """One table row; local leaderboard scores and the bootstrap come from the run folder and the solution."""
    config = stored["config"] or {}
    run_dir = Path(run.submission_path).parent
    # the student's own predictions (runs before the control and guard wrote only submission.csv for it)
    student_csv = run_dir / model_submission("student")
    student_csv = student_csv if student_csv.is_file() else run_dir / SUBMISSION
    teacher_csv = run_dir / model_submission("teacher")
    solution_path = Path(solution) if solution else (Path(config["solution"]) if config.get("solution") else None)
    board = {"teacher": {"public": run.lb_teacher_public, "private": run.lb_teacher_private},
             "student": {"public": run.lb_student_public, "private": run.lb_student_private}}
    source = "local" if _known(run.lb_student_public) else ("kaggle" if _known(run.kaggle_public) else "-")
    gain_ci: dict = {"verdict": "n/a: no solution file (pass --solution)"}

    if solution_path is not None and not solution_path.is_file():
        gain_ci = {"verdict": f"n/a: solution {solution_path} not found"}
    elif solution_path is not None:
        if solution_path not in solutions:
            solutions[solution_path] = read_solution(solution_path)
        missing = [p.name for p in (student_csv, teacher_csv) if not p.is_file()]
        if missing:
            gain_ci = {"verdict": f"n/a: {', '.join(missing)} missing in {run_dir}"}
        else:
            try:
                gain_ci = _local_scores(ledger, plugin, run, stored, solution_path, solutions[solution_path],
                                        student_csv, teacher_csv, board, resamples, seed, notes, record)
            except UserError as error:
                raise UserError(f"run {run.run_id} ({run_dir}): {error}") from error
            board = gain_ci.pop("board")
            source = "local"

    public = board["student"]["public"] if source == "local" else run.kaggle_public
    private = board["student"]["private"] if source == "local" else run.kaggle_private
    teacher_public, teacher_private = board["teacher"]["public"], board["teacher"]["private"]
    return {
        "run_id": run.run_id, "ratio": run.pseudo_ratio, "groups": run.pseudo_groups,
        "holdout": run.holdout_student, "holdout_gain": _gain(plugin, run.holdout_student, run.holdout_teacher),
        "public": public, "public_gain": _gain(plugin, public, teacher_public),
        "public_gain_low": gain_ci.get("low"), "public_gain_high": gain_ci.get("high"), "verdict": gain_ci["verdict"],
        "private": private, "private_gain": _gain(plugin, private, teacher_private),
        "teacher_holdout": run.holdout_teacher, "teacher_public": teacher_public, "teacher_private": teacher_private,
        "control_holdout": run.holdout_control, "control_public": run.lb_control_public, "control_private": run.lb_control_private,
        "submitted": run.submitted_model, **_verdict_confidence(stored.get("verdict")),
        "board_source": source, "pseudo_selected": run.pseudo_selected,
        "pseudo_by_group": _counts((stored.get("pseudo") or {}).get("by_group")), "shift": _shift(stored.get("shift")),
        "wall_time_s": run.wall_time_s, "run_dir": str(run_dir),
    }


def _local_scores(ledger: Ledger, plugin: Competition, run, stored: dict, solution_path: Path,
                  solution: pd.DataFrame, student_csv: Path, teacher_csv: Path, board: dict, resamples: int,
                  seed: int, notes: list[str], record: bool) -> dict:
    """Leaderboard scores (computed when the ledger lacks them) and the public-gain interval (cached in the
    ledger, keyed by the exact files and settings it was computed from); both stored only with `record`."""
    classes = plugin.class_names(Path((stored["config"] or {}).get("data", "")))
    tables = {"student": _read_csv(student_csv), "teacher": _read_csv(teacher_csv)}
    if not _known(run.lb_student_public):
        board = {name: score_against_solution(plugin, table, solution, classes) for name, table in tables.items()}
        if record:
            ledger.set_leaderboard(run.run_id, board)
        notes.append(f"{run.run_id}: scored against {solution_path} and "
                     + ("recorded in the ledger" if record else "not stored (--record stores it)"))
    key = {"student_sha256": sha256_of(student_csv), "teacher_sha256": sha256_of(teacher_csv),
           "solution_sha256": sha256_of(solution_path), "resamples": resamples, "seed": seed,
           "metric": plugin.metric_name, "level": LEVEL}  # an interval cached at another level is computed again
    cached = stored.get("public_gain") or {}
    if key["student_sha256"] == key["teacher_sha256"]:
        gain_ci = {"gain": 0.0, "low": 0.0, "high": 0.0, "verdict": "same as teacher"}
    elif resamples == 0:
        gain_ci = {"verdict": "n/a: noise check off (--resamples 0)"}
    elif cached.get("key") == key:
        gain_ci = cached
    else:
        print(f"bootstrap of the public gain of {run.run_id} ({resamples} resamples)", file=sys.stderr, flush=True)
        gain_ci = {"key": key, **public_gain_interval(plugin, tables["student"], tables["teacher"], solution,
                                                       classes, resamples, seed)}
        if record:
            ledger.set_public_gain(run.run_id, gain_ci)
    return {**gain_ci, "board": board}


def public_gain_interval(competition: Competition, student: pd.DataFrame, teacher: pd.DataFrame,
                         solution: pd.DataFrame, classes: list[str], resamples: int = 1000, seed: int = 0) -> dict:
    """The student's gain over the teacher on the public rows (positive = better), by the verdict's paired bootstrap.

    Returns {gain, low, high, rows, verdict}: verdict "noise" when the LEVEL interval contains 0.
    """
    aligned = {}
    for name, table in (("student", student), ("teacher", teacher)):
        try:
            y_true, values, usage = align_to_solution(competition, table, solution, classes)
        except UserError as error:
            raise UserError(f"the {name} submission: {error}") from error
        public = usage == "Public"
        if not public.any():
            raise UserError("the solution has no Usage=Public rows; the public gain cannot be measured")
        aligned[name] = values[public]
    gain = paired_bootstrap(competition, y_true[public], aligned["student"], aligned["teacher"], ("student", "teacher"),
                            seed, resamples)
    low, high = gain.interval
    verdict = "real gain" if low > 0 else "real loss" if high < 0 else "noise"
    return {"gain": gain.gain, "low": low, "high": high, "rows": int(public.sum()), "verdict": verdict}


# ---- helpers -----------------------------------------------------------------------------------------
def _verdict_confidence(verdict: dict | None) -> dict:
    """How sure the verdict was: the share of bootstrap resamples in which the student beat its baseline (the
    control, or the teacher in runs without one), and the verdict's reason in words."""
    verdict = verdict or {}
    duel = verdict.get("student_vs_control") or verdict.get("student_vs_teacher") or {}
    return {"submitted_p_better": duel.get("p_better"), "submitted_reason": verdict.get("reason")}


def _counts(counts: dict | None) -> str | None:
    """{"private": 12, "public": 30} -> "public 30, private 12" (the test groups in GROUPS' order: the ledger's
    JSON keeps its keys sorted)."""
    if not counts:
        return None
    keys = [g for g in GROUPS if g in counts] + sorted(k for k in counts if k not in GROUPS)
    return ", ".join(f"{key} {counts[key]}" for key in keys)


def _shift(summary: dict | None) -> str | None:
    """The run's shift check in a few words: its worst verdict and the test groups it found shifted."""
    if not summary:
        return None
    shifted = summary.get("shifted_groups") or []
    return summary.get("worst", "?") + (f" ({', '.join(shifted)})" if shifted else "")


def _spearman(a: pd.Series, b: pd.Series) -> dict:
    """Spearman's rho across runs, with a permutation p-value (exact up to 7 runs): sweeps have few runs,
    where scipy's t approximation is far off (it says p = 0 for 3 runs in the same order)."""
    both = (a.notna() & b.notna()).to_numpy()
    n = int(both.sum())
    if n < 3:
        return {"rho": None, "p": None, "n": n, "note": "needs at least 3 runs with both scores"}
    x, y = a.to_numpy(dtype=float)[both], b.to_numpy(dtype=float)[both]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: scipy warns and returns NaN, reported below
        rho = float(stats.spearmanr(x, y).statistic)
    if math.isnan(rho):
        return {"rho": None, "p": None, "n": n, "note": "undefined: one of the scores is the same for every run"}
    rank_y = stats.rankdata(y) - stats.rankdata(y).mean()

    def pearson_of_ranks(rank_x: np.ndarray, axis: int = -1) -> np.ndarray:
        centred = rank_x - rank_x.mean(axis=axis, keepdims=True)
        return (centred * rank_y).sum(axis=axis) / np.sqrt((centred ** 2).sum(axis=axis) * (rank_y ** 2).sum())

    test = stats.permutation_test((stats.rankdata(x),), pearson_of_ranks, permutation_type="pairings",
                                  vectorized=True, n_resamples=9999, rng=np.random.default_rng(0))
    return {"rho": rho, "p": float(test.pvalue), "n": n, "note": "p from a permutation test"}


def _gain(competition: Competition, score: object, teacher: object) -> float | None:
    if not (_known(score) and _known(teacher)):
        return None
    return (score - teacher) if competition.greater_is_better else (teacher - score)


def _known(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not a readable CSV: {error}") from error
