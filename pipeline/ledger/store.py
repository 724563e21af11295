"""The run ledger: one SQLite file recording every run and every Kaggle submission, so runs stay comparable.

Each write is one short `BEGIN IMMEDIATE` transaction on a fresh connection with a busy timeout, so several
processes (a sweep, a submit, a score sync) can write the same file at once. The schema carries its version
in `schema_version` and older files are migrated in order on open. A file that is not a ledger is never
touched: opening it is a UserError saying how to fix it.

A run records the pid, start time and host of the process that runs it. A process killed with SIGKILL (or
a machine that lost power) cannot mark its own row, so every open marks `running` rows whose process is gone
from this host as `interrupted` (rows of other hosts are left alone: their processes cannot be seen from
here). An interrupted run's id may be started again.

A ledger that another process keeps locked for longer than the busy timeout (60 s; the environment variable
PIPELINE_LEDGER_BUSY_TIMEOUT_S changes it), or that cannot be written (a full disk, a read-only file), is a
`LedgerUnavailable` (a UserError): one line naming the file and what to do. A run whose outputs are all written
when that happens keeps them and says how to record it later (`runs record RUN_FOLDER`, `record_finished_run`).

A ledger opened with `read_only=True` (what `compare` does without `--record`) is opened through SQLite's
`mode=ro`: nothing is created, migrated or marked, and a write is refused, so the file is left byte for byte.

Provenance capture (git, versions, the process) lives in pipeline/ledger/provenance.py, the tables shaped
for reading in pipeline/ledger/tables.py, the schema's migration steps in pipeline/ledger/schema.py; this
module owns the file: connections, migrating, rows.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pandas as pd

from pipeline.run.config import REPO_ROOT
from pipeline.errors import UserError
from pipeline.files import free_bytes, json_plain, sha256_of
from pipeline.ledger.provenance import git_state, library_versions, process_gone, redact, this_process
from pipeline.ledger.schema import MIGRATIONS, SCHEMA_VERSION
from pipeline.ledger.tables import LEADERBOARD_COLUMNS, run_record, runs_frame

BUSY_TIMEOUT_S = 60.0
BUSY_TIMEOUT_ENV = "PIPELINE_LEDGER_BUSY_TIMEOUT_S"  # overrides BUSY_TIMEOUT_S (tests wait a second, not a minute)
SQLITE_HEADER = b"SQLite format 3\x00"
STATUSES = ("running", "done", "failed", "interrupted")


def default_ledger_path(runs_dir: Path | str) -> Path:
    """The ledger that belongs to a runs folder: `<runs-dir>/ledger.sqlite` (what every command defaults to)."""
    return Path(runs_dir) / "ledger.sqlite"


class LedgerUnavailable(UserError):
    """The ledger could not be written now: locked by another process past the busy timeout, a full disk, a
    read-only file. `why` is the short reason (the message adds what to do)."""

    def __init__(self, message: str, why: str) -> None:
        super().__init__(message)
        self.why = why


def busy_timeout_s() -> float:
    """How long a write waits for another process's lock: BUSY_TIMEOUT_S, or PIPELINE_LEDGER_BUSY_TIMEOUT_S."""
    text = os.environ.get(BUSY_TIMEOUT_ENV)
    if text is None or not text.strip():
        return BUSY_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e6:  # also NaN
        raise UserError(f"{BUSY_TIMEOUT_ENV}={text!r} must be a number of seconds >= 0 (how long a ledger write waits "
                        f"for another process's lock; default {BUSY_TIMEOUT_S:g})")
    return value


def open_ledger(path: Path | str | None, read_only: bool = False) -> "Ledger | None":
    """The ledger at `path`, or None when recording is switched off (no path)."""
    return Ledger(Path(path), read_only=read_only) if path else None


class Ledger:
    """Runs and Kaggle submissions in one SQLite file; created or migrated when opened for writing.

    `read_only=True` reads an existing, current ledger without writing anything (no creation, migration or
    marking of interrupted runs); it is a UserError when the file is missing, empty or of an older schema."""

    def __init__(self, path: Path, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._check_is_sqlite()
        if read_only:
            self._check_readable()
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._transaction() as db:
            self._migrate(db)
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
                (run_id, competition, _now(), commit, None if dirty is None else int(dirty), data_fingerprint,
                 _json(redact(config)), int(seed), _json(library_versions()), pid, process_start, hostname),
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
                     _json(redact(config)), config.get("seed")))
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
            _update(db, run_id, {"shift_json": _json(summary)})

    def set_leaderboard(self, run_id: str, scores: dict) -> None:
        """Store local leaderboard scores {teacher: {public, private}, student: {public, private}} of a run."""
        values = {column: _float((scores.get(who) or {}).get(group))
                  for (who, group), column in LEADERBOARD_COLUMNS.items()}
        with self._transaction() as db:
            self._require_run(db, run_id)
            _update(db, run_id, {k: v for k, v in values.items() if v is not None})

    def set_public_gain(self, run_id: str, result: dict) -> None:
        """Cache the bootstrap interval of a run's public gain over its teacher (with the inputs it depends on)."""
        with self._transaction() as db:
            self._require_run(db, run_id)
            _update(db, run_id, {"public_gain_json": _json(result)})

    # ---- Kaggle submissions ----------------------------------------------------------------------
    def add_submission(self, run_id: str | None, sha256: str, ref: str | None, message: str, status: str,
                       public_score: float | None, private_score: float | None) -> None:
        """Record a Kaggle submission, or update the row with the same (ref, sha256): syncing twice is harmless.

        A row is never taken over: its run stays the run it was recorded for, a row with the same ref but
        another file (another submission) is left alone, and a score is never replaced by no score (a stale
        PENDING listing cannot undo a COMPLETE one). A row without a ref (scores typed by hand) is always new.
        """
        now = _now()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO submissions (run_id, sha256, ref, message, status, public_score, private_score,"
                " submitted_at, synced_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(ref, sha256) DO UPDATE SET run_id = coalesce(run_id, excluded.run_id),"
                f" {_KEEP_SCORED}, synced_at = excluded.synced_at",
                (run_id, sha256, ref, message, status, _float(public_score), _float(private_score), now, now),
            )

    def update_submission(self, ref: str, status: str, public_score: float | None,
                          private_score: float | None, sha256: str | None = None) -> bool:
        """Update a submission's status and scores from Kaggle; False when no submission has this ref (and sha256).

        Give `sha256` whenever it is known: the ref alone may also name another run's row."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE submissions SET status = ?, public_score = ?, private_score = ?, synced_at = ?"
                " WHERE ref = ? AND (? IS NULL OR sha256 = ?)",
                (status, _float(public_score), _float(private_score), _now(), ref, sha256, sha256),
            )
            return cursor.rowcount > 0

    def run_for_sha256(self, sha256: str) -> str | None:
        """The latest finished run whose submission file has this sha256 (how a Kaggle submission finds its run)."""
        with self._read() as db:
            row = db.execute("SELECT run_id FROM runs WHERE submission_sha256 = ?"
                             " ORDER BY status = 'done' DESC, started_at DESC, rowid DESC", (sha256,)).fetchone()
        return row["run_id"] if row else None

    # ---- reading ---------------------------------------------------------------------------------
    def runs(self, competition: str | None = None) -> pd.DataFrame:
        """One row per run (oldest first) with flat columns for tables: scores, settings, status, latest Kaggle scores."""
        with self._read() as db:
            return runs_frame(db, competition)

    def run(self, run_id: str) -> dict:
        """Everything recorded about one run (JSON decoded) and its Kaggle submissions; a unique id prefix works."""
        with self._read() as db:
            return run_record(db, run_id, self.path)

    def schema_version(self) -> int:
        with self._read() as db:
            return _version(db)

    # ---- plumbing --------------------------------------------------------------------------------
    def _check_is_sqlite(self) -> None:
        """Refuse, before SQLite opens it, a file that is not an SQLite database (SQLite would fail later)."""
        if self.path.is_dir():
            raise UserError(f"ledger path {self.path} is a folder; pass a file path such as {self.path / 'ledger.sqlite'}")
        if self.path.is_file() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as handle:
                if handle.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
                    raise self._corrupt("it does not start with the SQLite header")

    def _corrupt(self, why: str) -> UserError:
        return UserError(
            f"ledger {self.path} is not a readable run ledger ({why}); it was left untouched. Move it aside "
            f"(mv {self.path} {self.path}.broken) to start a new ledger, or pass another ledger path")

    def _check_readable(self) -> None:
        """What a read-only open needs: an existing ledger of this code's schema (migrating would write)."""
        if not self.path.is_file():
            raise UserError(f"ledger {self.path} does not exist: no run was recorded there; run `make submit` "
                             "first, or name the ledger with --ledger (or its folder with --runs-dir)")
        with self._read() as db:
            current = self._checked_version(db)
        if current is None:
            raise UserError(f"ledger {self.path} is empty: no run was recorded there; run `make submit` first, "
                             "or name another ledger with --ledger")
        if current < SCHEMA_VERSION:
            raise UserError(f"ledger {self.path} has schema version {current}, older than this code's "
                             f"{SCHEMA_VERSION}, and was opened read-only; migrate it by opening it once for writing "
                             f"(`python -m pipeline runs list --ledger {self.path}`, or `compare --record`)")

    def _connect(self) -> sqlite3.Connection:
        try:
            if self.read_only:  # SQLite itself refuses every write, and creates no file
                db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=busy_timeout_s(),
                                     isolation_level=None)
            else:
                db = sqlite3.connect(self.path, timeout=busy_timeout_s(), isolation_level=None)
        except sqlite3.OperationalError as error:
            need = "readable" if self.read_only else "writable"
            raise UserError(f"cannot open ledger {self.path}: {error}; check the folder exists and is {need}") from error
        db.row_factory = sqlite3.Row
        return db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: the write lock is taken up front so a busy file waits instead of deadlocking."""
        if self.read_only:  # a bug in the caller, not the user's mistake: keep the traceback
            raise RuntimeError(f"ledger {self.path} was opened read-only; open it with read_only=False to write")
        with self._errors(), contextlib.closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.in_transaction:  # SQLite may already have rolled back (e.g. on a corrupt page)
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several SELECTs."""
        with self._errors(), contextlib.closing(self._connect()) as db:
            db.execute("BEGIN")
            try:
                yield db
            finally:
                if db.in_transaction:
                    db.execute("ROLLBACK")

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as error:
            message = str(error)
            if "not a database" in message or "malformed" in message:
                raise self._corrupt(f"SQLite says: {message}") from error
            if isinstance(error, sqlite3.OperationalError):
                unavailable = self._unavailable(message)
                if unavailable is not None:
                    raise unavailable from error
            raise

    def _unavailable(self, message: str) -> LedgerUnavailable | None:
        """The LedgerUnavailable for SQLite's `message`, or None when it is not one of those states."""
        if "database is locked" in message or "database table is locked" in message:
            why = (f"ledger {self.path} was locked by another process for more than {busy_timeout_s():g} s (SQLite: "
                   f"{message})")
            return LedgerUnavailable(f"{why}; another process (a sweep, a submit, a score sync, an open sqlite3 shell) "
                                     f"holds its write lock: let it finish and run this again, or wait longer with "
                                     f"{BUSY_TIMEOUT_ENV}=SECONDS", why)
        if "database or disk is full" in message:
            free = free_bytes(self.path)
            why = (f"ledger {self.path} could not be written: no space left on device (SQLite: {message}"
                   + ("" if free is None else f"; {free} bytes free there") + ")")
            return LedgerUnavailable(f"{why}; free some space on its disk, or pass another --ledger", why)
        if "readonly database" in message:
            why = f"ledger {self.path} is read-only (SQLite: {message})"
            return LedgerUnavailable(f"{why}; make the file and its folder writable, or pass another --ledger", why)
        return None

    def _migrate(self, db: sqlite3.Connection) -> None:
        current = self._checked_version(db)
        if current is None:
            db.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
            current = 0
        for version in range(current, SCHEMA_VERSION):
            for statement in MIGRATIONS[version]:
                db.execute(statement)
            db.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (version + 1, _now()))

    def _checked_version(self, db: sqlite3.Connection) -> int | None:
        """The file's schema version, None for an empty database; other databases and newer schemas are refused."""
        tables = {r["name"] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "schema_version" not in tables:
            if tables - {"sqlite_sequence"}:
                raise UserError(f"{self.path} is an SQLite database but not a run ledger (it has tables "
                                 f"{', '.join(sorted(tables))} and no schema_version); pass another ledger path")
            return None
        current = _version(db)
        if current > SCHEMA_VERSION:
            raise UserError(f"ledger {self.path} has schema version {current}, newer than this code's "
                             f"{SCHEMA_VERSION}; update the pipeline or pass another ledger path")
        return current

    def _require_run(self, db: sqlite3.Connection, run_id: str) -> sqlite3.Row:
        row = db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise UserError(f"ledger {self.path}: run {run_id!r} was never started (call start_run first)")
        return row


# On an upsert: keep a scored row's status and scores when the new listing has no score.
_KEEP_SCORED = ", ".join(
    f"{column} = CASE WHEN excluded.public_score IS NULL AND excluded.private_score IS NULL"
    f" AND (public_score IS NOT NULL OR private_score IS NOT NULL) THEN {column} ELSE excluded.{column} END"
    for column in ("status", "public_score", "private_score"))


def _done_values(row: sqlite3.Row, run_id: str, metrics: dict, submission_path: Path, sha256: str,
                 wall_time_s: float) -> dict:
    """The columns of a `done` run from its metrics.json content (finish_run, record_finished_run)."""
    if metrics.get("competition") not in (None, row["competition"]):
        raise UserError(f"run {run_id}: metrics are for {metrics['competition']!r} but the run was "
                        f"started for {row['competition']!r}")
    board = metrics.get("leaderboard") or {}
    scores = {column: _float((board.get(who) or {}).get(group)) for (who, group), column in LEADERBOARD_COLUMNS.items()}
    holdout = metrics.get("holdout") or {}
    versions = {**(json.loads(row["versions_json"]) if row["versions_json"] else {}), **(metrics.get("versions") or {})}
    return {
        "status": "done", "finished_at": _now(), "metric": metrics.get("metric"),
        "data_fingerprint": metrics.get("data_fingerprint") or row["data_fingerprint"],
        "greater_is_better": _bool(metrics.get("greater_is_better")),
        "holdout_teacher": _float(holdout.get("teacher")), "holdout_student": _float(holdout.get("student")),
        "holdout_control": _float(holdout.get("control")),
        "submitted_model": (metrics.get("submission") or {}).get("model"), "verdict_json": _json(metrics.get("verdict")),
        "pseudo_json": _json(metrics.get("pseudo")), "submission_path": str(submission_path.resolve()),
        "submission_sha256": sha256, "wall_time_s": float(wall_time_s), "metrics_json": _json(redact(metrics)),
        "versions_json": _json(versions), "error": None, **scores,
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


def _version(db: sqlite3.Connection) -> int:
    return db.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _json(value: object) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, default=json_plain)


def _float(value: object) -> float | None:
    return None if value is None else float(value)


def _bool(value: object) -> int | None:
    return None if value is None else int(bool(value))
