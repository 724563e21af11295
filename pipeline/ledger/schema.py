"""The ledger's schema: the ordered migrations that build it, one released step per schema version.

A released step is never edited (files in the wild were built by it); a change of schema is a new step
at the end. pipeline/ledger/connection.py applies them in order when it opens an older file.
"""
from __future__ import annotations

# a released migration step must not change: v2 backfilled exactly these columns
_V2_LEADERBOARD_COLUMNS = {("teacher", "public"): "lb_teacher_public", ("teacher", "private"): "lb_teacher_private",
                           ("student", "public"): "lb_student_public", ("student", "private"): "lb_student_private"}

_V3_RUN_COLUMNS = ("run_id, competition, status, started_at, finished_at, git_commit, git_dirty, data_fingerprint,"
                   " config_json, seed, versions_json, metric, greater_is_better, holdout_teacher, holdout_student,"
                   " pseudo_json, submission_path, submission_sha256, wall_time_s, error, metrics_json,"
                   " lb_teacher_public, lb_teacher_private, lb_student_public, lb_student_private, shift_json,"
                   " public_gain_json")

# Ordered migrations: MIGRATIONS[i] brings a file from schema version i to i + 1. Never edit a released
# step; append a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # v1: runs and Kaggle submissions
        """CREATE TABLE runs (
            run_id TEXT PRIMARY KEY,
            competition TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')),
            started_at TEXT NOT NULL,
            finished_at TEXT,
            git_commit TEXT,
            git_dirty INTEGER,
            data_fingerprint TEXT,
            config_json TEXT NOT NULL,
            seed INTEGER,
            versions_json TEXT,
            metric TEXT,
            greater_is_better INTEGER,
            holdout_teacher REAL,
            holdout_student REAL,
            pseudo_json TEXT,
            submission_path TEXT,
            submission_sha256 TEXT,
            wall_time_s REAL,
            error TEXT,
            metrics_json TEXT)""",
        """CREATE TABLE submissions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT,
            sha256 TEXT NOT NULL,
            ref TEXT UNIQUE,
            message TEXT,
            status TEXT,
            public_score REAL,
            private_score REAL,
            submitted_at TEXT NOT NULL,
            synced_at TEXT)""",
        "CREATE INDEX runs_by_competition ON runs (competition, started_at)",
    ),
    (  # v2: local leaderboard scores and the shift summary; backfill scores from stored metrics
        "ALTER TABLE runs ADD COLUMN lb_teacher_public REAL",
        "ALTER TABLE runs ADD COLUMN lb_teacher_private REAL",
        "ALTER TABLE runs ADD COLUMN lb_student_public REAL",
        "ALTER TABLE runs ADD COLUMN lb_student_private REAL",
        "ALTER TABLE runs ADD COLUMN shift_json TEXT",
        *(f"UPDATE runs SET {column} = json_extract(metrics_json, '$.leaderboard.{who}.{group}') "
          "WHERE metrics_json IS NOT NULL AND json_valid(metrics_json)"
          for (who, group), column in _V2_LEADERBOARD_COLUMNS.items()),
        "CREATE INDEX submissions_by_sha256 ON submissions (sha256)",
        "CREATE INDEX submissions_by_run ON submissions (run_id)",
    ),
    (  # v3: the cached bootstrap interval of the public gain over the teacher (see pipeline/ledger/compare.py)
        "ALTER TABLE runs ADD COLUMN public_gain_json TEXT",
    ),
    (  # v4: a Kaggle submission is identified by (ref, sha256), not by its ref alone (SQLite needs a rebuild)
        """CREATE TABLE submissions_v4 (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT,
            sha256 TEXT NOT NULL,
            ref TEXT,
            message TEXT,
            status TEXT,
            public_score REAL,
            private_score REAL,
            submitted_at TEXT NOT NULL,
            synced_at TEXT,
            UNIQUE (ref, sha256))""",
        "INSERT INTO submissions_v4 (id, run_id, sha256, ref, message, status, public_score, private_score,"
        " submitted_at, synced_at) SELECT id, run_id, sha256, ref, message, status, public_score, private_score,"
        " submitted_at, synced_at FROM submissions",
        "DROP TABLE submissions",
        "ALTER TABLE submissions_v4 RENAME TO submissions",
        "CREATE INDEX submissions_by_sha256 ON submissions (sha256)",
        "CREATE INDEX submissions_by_run ON submissions (run_id)",
    ),
    (  # v5: status 'interrupted' (a CHECK constraint cannot be altered: the table is rebuilt) and the process
       # that runs each run (pid, its start time, host), so a run whose process died can be told from a live one
        """CREATE TABLE runs_v5 (
            run_id TEXT PRIMARY KEY,
            competition TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed', 'interrupted')),
            started_at TEXT NOT NULL,
            finished_at TEXT,
            git_commit TEXT,
            git_dirty INTEGER,
            data_fingerprint TEXT,
            config_json TEXT NOT NULL,
            seed INTEGER,
            versions_json TEXT,
            metric TEXT,
            greater_is_better INTEGER,
            holdout_teacher REAL,
            holdout_student REAL,
            pseudo_json TEXT,
            submission_path TEXT,
            submission_sha256 TEXT,
            wall_time_s REAL,
            error TEXT,
            metrics_json TEXT,
            lb_teacher_public REAL,
            lb_teacher_private REAL,
            lb_student_public REAL,
            lb_student_private REAL,
            shift_json TEXT,
            public_gain_json TEXT,
            pid INTEGER,
            process_start TEXT,
            hostname TEXT)""",
        f"INSERT INTO runs_v5 ({_V3_RUN_COLUMNS}) SELECT {_V3_RUN_COLUMNS} FROM runs ORDER BY rowid",
        "DROP TABLE runs",
        "ALTER TABLE runs_v5 RENAME TO runs",
        "CREATE INDEX runs_by_competition ON runs (competition, started_at)",
    ),
    (  # v6: the control (teacher continued without pseudo-labels) and which model the verdict submitted
        "ALTER TABLE runs ADD COLUMN holdout_control REAL",
        "ALTER TABLE runs ADD COLUMN lb_control_public REAL",
        "ALTER TABLE runs ADD COLUMN lb_control_private REAL",
        "ALTER TABLE runs ADD COLUMN submitted_model TEXT",
        "ALTER TABLE runs ADD COLUMN verdict_json TEXT",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)
