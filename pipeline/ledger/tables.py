"""The ledger's rows shaped for reading: the flat runs table behind `runs list`, `compare` and the local
leaderboard, and the full record of one run behind `runs show`.

Every function here only reads, on a connection the caller opened (pipeline/ledger/connection.py owns
connections, transactions and the schema), so a read-only ledger serves them as well as a writable one.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pandas as pd

from pipeline.errors import UserError

# which runs column holds which local leaderboard score (finish_run and set_leaderboard write them)
LEADERBOARD_COLUMNS = {("teacher", "public"): "lb_teacher_public", ("teacher", "private"): "lb_teacher_private",
                       ("student", "public"): "lb_student_public", ("student", "private"): "lb_student_private",
                       ("control", "public"): "lb_control_public", ("control", "private"): "lb_control_private"}
RUNS_COLUMNS = ["run_id", "competition", "status", "started_at", "finished_at", "wall_time_s", "metric",
                "greater_is_better", "pseudo_ratio", "pseudo_groups", "pseudo_labels", "pseudo_selected",
                "holdout_teacher", "holdout_student", "holdout_control", "submitted_model",
                *LEADERBOARD_COLUMNS.values(), "kaggle_public",
                "kaggle_private", "seed", "data_fingerprint", "git_commit", "git_dirty", "submission_path",
                "submission_sha256", "error"]
_NUMERIC = ["wall_time_s", "pseudo_ratio", "pseudo_selected", "holdout_teacher", "holdout_student", "holdout_control",
            *LEADERBOARD_COLUMNS.values(), "kaggle_public", "kaggle_private"]


def runs_frame(db: sqlite3.Connection, competition: str | None = None) -> pd.DataFrame:
    """One row per run (oldest first) with flat columns for tables: scores, settings, status, latest Kaggle scores."""
    where, params = ("WHERE competition = ?", (competition,)) if competition else ("", ())
    rows = [dict(r) for r in db.execute(f"SELECT * FROM runs {where} ORDER BY started_at, rowid", params)]
    kaggle = latest_kaggle_scores(db)
    table = []
    for row in rows:
        config = json.loads(row["config_json"])
        pseudo = json.loads(row["pseudo_json"]) if row["pseudo_json"] else {}
        groups = config.get("pseudo_groups")
        public, private = kaggle.get(row["run_id"], (None, None))
        table.append({
            **{k: row[k] for k in RUNS_COLUMNS if k in row},
            "greater_is_better": None if row["greater_is_better"] is None else bool(row["greater_is_better"]),
            "git_dirty": None if row["git_dirty"] is None else bool(row["git_dirty"]),
            "pseudo_ratio": config.get("pseudo_ratio"),
            "pseudo_groups": ",".join(groups) if isinstance(groups, (list, tuple)) else groups,
            "pseudo_labels": config.get("pseudo_labels"),
            "pseudo_selected": pseudo.get("selected"),
            "kaggle_public": public, "kaggle_private": private,
        })
    frame = pd.DataFrame(table, columns=RUNS_COLUMNS)
    frame[_NUMERIC] = frame[_NUMERIC].astype(float)
    return frame


def run_record(db: sqlite3.Connection, run_id: str, path: Path) -> dict:
    """Everything recorded about one run (JSON decoded) and its Kaggle submissions; a unique id prefix works.

    `path` is the ledger file, named in the error when the id matches no run or several."""
    matches = [r["run_id"] for r in db.execute(
        "SELECT run_id FROM runs WHERE run_id = ? OR substr(run_id, 1, length(?)) = ? ORDER BY run_id",
        (run_id, run_id, run_id))]
    if run_id in matches:
        matches = [run_id]
    if len(matches) != 1:
        hint = (f"it matches {', '.join(matches[:5])}; give more of the id" if matches
                else "`python -m pipeline runs list` shows the recorded runs")
        raise UserError(f"ledger {path}: no single run {run_id!r}: {hint}")
    row = dict(db.execute("SELECT * FROM runs WHERE run_id = ?", (matches[0],)).fetchone())
    submissions = [dict(r) for r in db.execute(
        "SELECT * FROM submissions WHERE run_id = ? OR sha256 = ? ORDER BY id", (matches[0], row["submission_sha256"]))]
    record = {}
    for key, value in row.items():
        if key.endswith("_json"):
            record[key[: -len("_json")]] = json.loads(value) if value else None
        elif key in ("git_dirty", "greater_is_better"):
            record[key] = None if value is None else bool(value)
        else:
            record[key] = value
    record["submissions"] = submissions
    return record


def latest_kaggle_scores(db: sqlite3.Connection) -> dict[str, tuple[float | None, float | None]]:
    """run_id -> (public, private) of its most recently synced submission that has a score."""
    scores: dict[str, tuple[float | None, float | None]] = {}
    for row in db.execute(
            "SELECT coalesce(s.run_id, r.run_id) AS run_id, s.public_score, s.private_score FROM submissions s"
            " LEFT JOIN runs r ON s.run_id IS NULL AND r.submission_sha256 = s.sha256"
            " WHERE s.public_score IS NOT NULL OR s.private_score IS NOT NULL"
            " ORDER BY coalesce(s.synced_at, s.submitted_at), s.id"):
        if row["run_id"] is not None:
            scores[row["run_id"]] = (row["public_score"], row["private_score"])
    return scores
