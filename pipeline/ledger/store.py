"""The run ledger: one SQLite file recording every run and every Kaggle submission, so runs stay comparable.

A run records the pid, start time and host of the process that runs it. A process killed with SIGKILL (or
a machine that lost power) cannot mark its own row, so every open marks `running` rows whose process is gone
from this host as `interrupted` (rows of other hosts are left alone: their processes cannot be seen from
here). An interrupted run's id may be started again. A run whose outputs are all written when the ledger is
unavailable keeps them and says how to record it later (`runs record RUN_FOLDER`, `record_finished_run`).

This module holds the runs' rows: what each write and read does. The file itself (opening, migrating,
transactions, SQLite's errors) is pipeline/ledger/connection.py, the Kaggle submissions' rows
pipeline/ledger/submissions.py, the migration steps pipeline/ledger/schema.py, the tables shaped for reading
pipeline/ledger/tables.py, and provenance capture (git, versions, the process) pipeline/ledger/provenance.py.
"""
from __future__ import annotations

import json
import socket
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from pipeline.errors import UserError
from pipeline.files import sha256_of
from pipeline.ledger.connection import as_flag, as_json, as_real, utc_now
from pipeline.ledger.provenance import git_state, library_versions, process_gone, redact, this_process
from pipeline.ledger.submissions import SubmissionRows
from pipeline.ledger.tables import LEADERBOARD_COLUMNS, run_record, runs_frame
from pipeline.run.config import REPO_ROOT


def default_ledger_path(runs_dir: Path | str) -> Path:
    """The ledger that belongs to a runs folder: `<runs-dir>/ledger.sqlite` (what every command defaults to)."""
    return Path(runs_dir) / "ledger.sqlite"


def open_ledger(path: Path | str | None, read_only: bool = False) -> "Ledger | None":
    """The ledger at `path`, or None when recording is switched off (no path)."""
    return Ledger(Path(path), read_only=read_only) if path else None


class Ledger(SubmissionRows):
    """Runs and Kaggle submissions in one SQLite file; created or migrated when opened for writing.

    `read_only=True` reads an existing, current ledger without writing anything (no creation, migration or
    marking of interrupted runs); it is a UserError when the file is missing, empty or of an older schema."""

    def __init__(self, path: Path, read_only: bool = False) -> None:
        super().__init__(path, read_only)
        if not read_only:
            self.mark_interrupted()

    # ---- runs ------------------------------------------------------------------------------------
    def start_run(self, run_id: str, competition: str, config: dict, data_fingerprint: str | None, seed: int) -> None:
        """Record a run as `running`, with the code version (git) and library versions of this process.

        Call it before anything can fail (the data fingerprint may be None then: finish_run takes it from
        the metrics), so that every failure is recorded by fail_run. The id of an interrupted run (its process
        died without finishing) may be started again: the new run replaces its row."""
        commit, dirty = git_state(REPO_ROOT)
        pid, process_start, hostname = this_process()
        with self._transaction() as db:
            existing = db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if existing is not None:
                if existing["status"] != "interrupted" and not process_gone(existing):
                    raise UserError(f"ledger {self.path}: run {run_id!r} is already recorded (status "
                                    f"{existing['status']}); give each run a new id")
                db.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))  # an interrupted run, started again
            db.execute(
                "INSERT INTO runs (run_id, competition, status, started_at, git_commit, git_dirty, data_fingerprint,"
                " config_json, seed, versions_json, pid, process_start, hostname)"
                " VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, competition, utc_now(), commit, None if dirty is None else int(dirty), data_fingerprint,
                 as_json(redact(config)), int(seed), as_json(library_versions()), pid, process_start, hostname),
            )

    def resume_run(self, run_id: str) -> None:
        """Set an `interrupted` or `failed` run back to `running` on its own row, now run by this process.

        Its config and start time stay; the code version is this process's. finish_run records the metrics,
        whose `resumed` field says that the run was resumed and from which status."""
        commit, dirty = git_state(REPO_ROOT)
        pid, process_start, hostname = this_process()
        with self._transaction() as db:
            row = self._require_run(db, run_id)
            if row["status"] not in ("interrupted", "failed"):
                raise UserError(f"ledger {self.path}: run {run_id!r} has status {row['status']}; only an interrupted "
                                "or failed run can be resumed")
            _update(db, run_id, {"status": "running", "finished_at": None, "error": None, "wall_time_s": None,
                                 "git_commit": commit, "git_dirty": None if dirty is None else int(dirty), "pid": pid,
                                 "process_start": process_start, "hostname": hostname})

    def finish_run(self, run_id: str, metrics: dict, submission_path: Path, wall_time_s: float) -> None:
        """Mark a run `done` with its metrics.json content and the sha256 of the submission written."""
        submission_path = Path(submission_path)
        if not submission_path.is_file():
            raise UserError(f"run {run_id}: submission {submission_path} does not exist; finish_run needs the written CSV")
        sha256 = sha256_of(submission_path)
        with self._transaction() as db:
            row = self._require_run(db, run_id)
            _update(db, run_id, _done_values(row, run_id, metrics, submission_path, sha256, wall_time_s))

    def record_finished_run(self, run_id: str, competition: str, config: dict, metrics: dict, submission_path: Path,
                            wall_time_s: float, finished_at: datetime) -> str:
        """Record, after the fact, a run that wrote all its outputs but not its ledger row (`runs record`).

        Its row (left `running`, `interrupted` or `failed`) becomes `done` as finish_run would have made it; a
        run with no row (the ledger was another file, or it ran with --no-ledger) gets one, with no git commit
        or process (they are not known now). A row already `done` with this submission is left alone; one `done`
        with another submission is refused. Returns "recorded", "added" or "already recorded"."""
        submission_path = Path(submission_path)
        sha256 = sha256_of(submission_path)
        with self._transaction() as db:
            row = db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is not None and row["status"] == "done":
                if row["submission_sha256"] == sha256:
                    return "already recorded"
                raise UserError(f"ledger {self.path}: run {run_id!r} is already recorded as done with another "
                                f"submission (sha256 {row['submission_sha256']}, not {sha256} of {submission_path}); "
                                "a run id is recorded once")
            outcome = "recorded"
            if row is None:
                started = finished_at.timestamp() - float(wall_time_s)
                db.execute(
                    "INSERT INTO runs (run_id, competition, status, started_at, config_json, seed)"
                    " VALUES (?, ?, 'running', ?, ?, ?)",
                    (run_id, competition, datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
                     as_json(redact(config)), config.get("seed")))
                row = self._require_run(db, run_id)
                outcome = "added"
            values = _done_values(row, run_id, metrics, submission_path, sha256, wall_time_s)
            values["finished_at"] = finished_at.astimezone(timezone.utc).isoformat(timespec="seconds")
            _update(db, run_id, values)
        return outcome

    def fail_run(self, run_id: str, error: str) -> None:
        """Mark a run `failed` with its error text (e.g. the traceback); the wall time is measured from the start."""
        with self._transaction() as db:
            row = self._require_run(db, run_id)
            finished = datetime.now(timezone.utc)
            started = datetime.fromisoformat(row["started_at"])
            _update(db, run_id, {"status": "failed", "finished_at": finished.isoformat(timespec="seconds"),
                                 "error": str(error), "wall_time_s": (finished - started).total_seconds()})

    def mark_interrupted(self) -> list[str]:
        """Mark `running` rows whose process is gone from this host as `interrupted`; returns their ids.

        A row is stale when its pid is not running here, or runs a later process that reused the pid (its
        start time differs). Rows of other hosts, and rows written before pids were recorded, are left alone."""
        host = socket.gethostname()
        with self._read() as db:
            rows = db.execute("SELECT * FROM runs WHERE status = 'running' AND hostname = ? AND pid IS NOT NULL",
                              (host,)).fetchall()
        stale = [row for row in rows if process_gone(row)]
        if not stale:
            return []
        finished = datetime.now(timezone.utc)
        with self._transaction() as db:
            for row in stale:
                reason = (f"interrupted: process {row['pid']} on {host} ended without finishing the run (killed, "
                          "crashed hard or the machine restarted); start it again with the same run id")
                folder = _finished_folder(row)
                if folder is not None:
                    reason = (f"interrupted: process {row['pid']} on {host} ended after writing every output of the run "
                              f"({folder / 'metrics.json'}) but not its ledger row (was the ledger locked?); record it "
                              f"with `python -m pipeline runs record {folder} --ledger {self.path}`")
                seconds = (finished - datetime.fromisoformat(row["started_at"])).total_seconds()
                db.execute("UPDATE runs SET status = 'interrupted', finished_at = ?, error = ?, wall_time_s = ?"
                           " WHERE run_id = ? AND status = 'running'",
                           (finished.isoformat(timespec="seconds"), reason, seconds, row["run_id"]))
        return [row["run_id"] for row in stale]

    def record_shift(self, run_id: str, summary: dict) -> None:
        """Store the distribution-shift summary of a run."""
        with self._transaction() as db:
            self._require_run(db, run_id)
            _update(db, run_id, {"shift_json": as_json(summary)})

    def set_leaderboard(self, run_id: str, scores: dict) -> None:
        """Store local leaderboard scores {teacher: {public, private}, student: {public, private}} of a run."""
        values = {column: as_real((scores.get(who) or {}).get(group))
                  for (who, group), column in LEADERBOARD_COLUMNS.items()}
        with self._transaction() as db:
            self._require_run(db, run_id)
            _update(db, run_id, {k: v for k, v in values.items() if v is not None})

    def set_public_gain(self, run_id: str, result: dict) -> None:
        """Cache the bootstrap interval of a run's public gain over its teacher (with the inputs it depends on)."""
        with self._transaction() as db:
            self._require_run(db, run_id)
            _update(db, run_id, {"public_gain_json": as_json(result)})

    # ---- reading ---------------------------------------------------------------------------------
    def runs(self, competition: str | None = None) -> pd.DataFrame:
        """One row per run (oldest first) with flat columns for tables: scores, settings, status, latest Kaggle scores."""
        with self._read() as db:
            return runs_frame(db, competition)

    def run(self, run_id: str) -> dict:
        """Everything recorded about one run (JSON decoded) and its Kaggle submissions; a unique id prefix works."""
        with self._read() as db:
            return run_record(db, run_id, self.path)

    # ---- plumbing --------------------------------------------------------------------------------
    def _require_run(self, db: sqlite3.Connection, run_id: str) -> sqlite3.Row:
        row = db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise UserError(f"ledger {self.path}: run {run_id!r} was never started (call start_run first)")
        return row


def _done_values(row: sqlite3.Row, run_id: str, metrics: dict, submission_path: Path, sha256: str,
                 wall_time_s: float) -> dict:
    """The columns of a `done` run from its metrics.json content (finish_run, record_finished_run)."""
    if metrics.get("competition") not in (None, row["competition"]):
        raise UserError(f"run {run_id}: metrics are for {metrics['competition']!r} but the run was "
                        f"started for {row['competition']!r}")
    board = metrics.get("leaderboard") or {}
    scores = {column: as_real((board.get(who) or {}).get(group)) for (who, group), column in LEADERBOARD_COLUMNS.items()}
    holdout = metrics.get("holdout") or {}
    versions = {**(json.loads(row["versions_json"]) if row["versions_json"] else {}), **(metrics.get("versions") or {})}
    return {
        "status": "done", "finished_at": utc_now(), "metric": metrics.get("metric"),
        "data_fingerprint": metrics.get("data_fingerprint") or row["data_fingerprint"],
        "greater_is_better": as_flag(metrics.get("greater_is_better")),
        "holdout_teacher": as_real(holdout.get("teacher")), "holdout_student": as_real(holdout.get("student")),
        "holdout_control": as_real(holdout.get("control")),
        "submitted_model": (metrics.get("submission") or {}).get("model"), "verdict_json": as_json(metrics.get("verdict")),
        "pseudo_json": as_json(metrics.get("pseudo")), "submission_path": str(submission_path.resolve()),
        "submission_sha256": sha256, "wall_time_s": float(wall_time_s), "metrics_json": as_json(redact(metrics)),
        "versions_json": as_json(versions), "error": None, **scores,
    }


def _finished_folder(row: sqlite3.Row) -> Path | None:
    """The run folder of a row when it holds the run's metrics.json (the run wrote every output), else None."""
    try:
        runs_dir = json.loads(row["config_json"]).get("runs_dir")
        folder = Path(runs_dir) / row["competition"] / row["run_id"]
        return folder if runs_dir and (folder / "metrics.json").is_file() else None
    except (TypeError, ValueError, AttributeError, OSError):
        return None


def _update(db: sqlite3.Connection, run_id: str, values: dict) -> None:
    if values:
        db.execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in values)} WHERE run_id = ?", (*values.values(), run_id))
