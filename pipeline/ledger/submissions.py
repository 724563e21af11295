"""The ledger's Kaggle submissions: one row per submitted file and ref, synced from Kaggle as often as wanted.

A submission is identified by (ref, sha256): its Kaggle ref and the sha256 of the file sent. Syncing the same
listing twice changes nothing, and a submission finds its run by the sha256 of the run's submission file.
"""
from __future__ import annotations

from pipeline.ledger.connection import LedgerFile, as_real, utc_now


class SubmissionRows(LedgerFile):
    """The submissions table of a ledger file (pipeline/ledger/store.py's `Ledger` adds the runs)."""

    def add_submission(self, run_id: str | None, sha256: str, ref: str | None, message: str, status: str,
                       public_score: float | None, private_score: float | None) -> None:
        """Record a Kaggle submission, or update the row with the same (ref, sha256): syncing twice is harmless.

        A row is never taken over: its run stays the run it was recorded for, a row with the same ref but
        another file (another submission) is left alone, and a score is never replaced by no score (a stale
        PENDING listing cannot undo a COMPLETE one). A row without a ref (scores typed by hand) is always new.
        """
        now = utc_now()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO submissions (run_id, sha256, ref, message, status, public_score, private_score,"
                " submitted_at, synced_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(ref, sha256) DO UPDATE SET run_id = coalesce(run_id, excluded.run_id),"
                f" {_KEEP_SCORED}, synced_at = excluded.synced_at",
                (run_id, sha256, ref, message, status, as_real(public_score), as_real(private_score), now, now),
            )

    def update_submission(self, ref: str, status: str, public_score: float | None,
                          private_score: float | None, sha256: str | None = None) -> bool:
        """Update a submission's status and scores from Kaggle; False when no submission has this ref (and sha256).

        Give `sha256` whenever it is known: the ref alone may also name another run's row."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE submissions SET status = ?, public_score = ?, private_score = ?, synced_at = ?"
                " WHERE ref = ? AND (? IS NULL OR sha256 = ?)",
                (status, as_real(public_score), as_real(private_score), utc_now(), ref, sha256, sha256),
            )
            return cursor.rowcount > 0

    def run_for_sha256(self, sha256: str) -> str | None:
        """The latest finished run whose submission file has this sha256 (how a Kaggle submission finds its run)."""
        with self._read() as db:
            row = db.execute("SELECT run_id FROM runs WHERE submission_sha256 = ?"
                             " ORDER BY status = 'done' DESC, started_at DESC, rowid DESC", (sha256,)).fetchone()
        return row["run_id"] if row else None


# On an upsert: keep a scored row's status and scores when the new listing has no score.
_KEEP_SCORED = ", ".join(
    f"{column} = CASE WHEN excluded.public_score IS NULL AND excluded.private_score IS NULL"
    f" AND (public_score IS NOT NULL OR private_score IS NOT NULL) THEN {column} ELSE excluded.{column} END"
    for column in ("status", "public_score", "private_score"))
