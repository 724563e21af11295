"""The ledger's SQLite file: opened safely, migrated in order, written one short transaction at a time.

Each write is one short `BEGIN IMMEDIATE` transaction on a fresh connection with a busy timeout, so several
processes (a sweep, a submit, a score sync) can write the same file at once. The schema carries its version
in `schema_version` and older files are migrated in order on open (the steps are pipeline/ledger/schema.py).
A file that is not a ledger is never touched: opening it is a UserError saying how to fix it.

A ledger that another process keeps locked for longer than the busy timeout (60 s; the environment variable
PIPELINE_LEDGER_BUSY_TIMEOUT_S changes it), or that cannot be written (a full disk, a read-only file), is a
`LedgerUnavailable` (a UserError): one line naming the file and what to do.

A ledger opened with `read_only=True` (what `compare` does without `--record`) is opened through SQLite's
`mode=ro`: nothing is created, migrated or marked, and a write is refused, so the file is left byte for byte.

How a value is stored in a column (`utc_now`, `as_json`, `as_real`, `as_flag`) is defined here once too.
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from pipeline.errors import UserError
from pipeline.files import free_bytes, json_plain
from pipeline.ledger.schema import MIGRATIONS, SCHEMA_VERSION

BUSY_TIMEOUT_S = 60.0
BUSY_TIMEOUT_ENV = "PIPELINE_LEDGER_BUSY_TIMEOUT_S"  # overrides BUSY_TIMEOUT_S (tests wait a second, not a minute)
SQLITE_HEADER = b"SQLite format 3\x00"


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


class LedgerFile:
    """One ledger file: checked and (for writing) created or migrated when opened; `_transaction` and `_read`
    are the only ways to its rows (pipeline/ledger/store.py's `Ledger` builds on them)."""

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

    def schema_version(self) -> int:
        with self._read() as db:
            return _version(db)

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
            db.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (version + 1, utc_now()))

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


def utc_now() -> str:
    """The current time as the ledger stores it: UTC, ISO 8601, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def as_json(value: object) -> str | None:
    """A JSON column's text (keys sorted, numpy values as plain numbers); None stays NULL."""
    return None if value is None else json.dumps(value, sort_keys=True, default=json_plain)


def as_real(value: object) -> float | None:
    return None if value is None else float(value)


def as_flag(value: object) -> int | None:
    """A 0/1 column (SQLite has no booleans); None stays NULL."""
    return None if value is None else int(bool(value))


def _version(db: sqlite3.Connection) -> int:
    return db.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
