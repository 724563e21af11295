"""Submit a run's CSV to Kaggle and follow its score; sync every submission's scores into the ledger.

A submission's Kaggle description carries the run id and the file's sha256 (`submission_message`), so each
score Kaggle lists finds its run again, whoever submitted it and from wherever.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

from pipeline.files import sha256_of
from pipeline.kaggle.client import (DEFAULT_HTTP_TIMEOUT_S, KaggleError, KaggleTimeout, competition_slug, kaggle_api,
                                    kaggle_call)
from pipeline.kaggle.credentials import Credentials, scrub
from pipeline.plugin.api import Competition
from pipeline.plugin.registry import get_competition

COMPLETE, PENDING, ERROR = "COMPLETE", "PENDING", "ERROR"
_MESSAGE_KEYS = re.compile(r"\b(run|sha256)=(\S+)")
MIN_POLL_TIMEOUT_S = 1.0  # a status check near the end of --poll-timeout still gets this long to answer


def submission_message(run_id: str, sha256: str, message: str) -> str:
    """The Kaggle description: run id and the file's full sha256, so scores can be matched back to runs."""
    return " ".join(part for part in (f"run={run_id}", f"sha256={sha256}", message.strip()) if part)


def parse_message(description: str | None) -> dict:
    """{'run': ..., 'sha256': ...} from a description written by `submission_message` (empty when not ours)."""
    return dict(_MESSAGE_KEYS.findall(description or ""))


def upload_run_submission(competition: str, csv_path: Path, data_dir: Path, run_id: str, message: str,
                          ledger_path: Path | None, poll_timeout_s: float = 600, poll_start_s: float = 5,
                          http_timeout_s: float = DEFAULT_HTTP_TIMEOUT_S) -> dict:
    """Validate `csv_path`, upload it, wait (with back-off) for its score and record it in the ledger.

    An invalid CSV raises before Kaggle is contacted. A failed upload, or a submission Kaggle cannot score
    (recorded as ERROR), is a KaggleError. Running out of `poll_timeout_s` (a status check that does not
    answer in time included) is not an error: the status so far is recorded and `scores` picks it up later.
    """
    from pipeline.submission import load_submission

    plugin = get_competition(competition)
    slug = competition_slug(plugin)
    csv_path = Path(csv_path)
    load_submission(csv_path, plugin, Path(data_dir))
    sha256 = sha256_of(csv_path)
    description = submission_message(run_id, sha256, message)
    ledger = _open_ledger(ledger_path)  # a broken ledger fails before anything is uploaded
    api, credentials = kaggle_api(http_timeout_s)
    print(f"uploading {csv_path} to {slug} ...", flush=True)
    with kaggle_call(credentials, f"submitting {csv_path.name} to {slug}", plugin, timeout_s=http_timeout_s):
        response = api.competition_submit(str(csv_path), description, slug, quiet=True)
    text = scrub(str(getattr(response, "message", "") or ""), credentials)
    if text.startswith(api.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE):
        raise KaggleError(f"uploading {csv_path} to {slug} failed: {text}; nothing was submitted, try again later "
                          f"with `python -m pipeline upload {run_id}`")
    print(f"Kaggle: {text}", flush=True)
    ref = str(response.ref) if getattr(response, "ref", 0) else None
    if ledger is not None and ref is not None:  # recorded before waiting: an interrupted wait loses nothing
        ledger.add_submission(run_id, sha256, ref, description, PENDING, None, None)
    found = _wait_for_score(api, credentials, plugin, sha256, ref, poll_timeout_s, poll_start_s, http_timeout_s)
    result = {"ref": found["ref"], "status": found["status"], "public_score": found["public_score"],
              "private_score": found["private_score"], "run_id": run_id, "sha256": sha256, "message": description}
    if ledger is not None and ref is None:
        ledger.add_submission(run_id, sha256, result["ref"], description, result["status"], result["public_score"],
                              result["private_score"])
    elif ledger is not None:
        ledger.update_submission(ref, result["status"], result["public_score"], result["private_score"], sha256=sha256)
    if result["status"] == ERROR:
        raise KaggleError(f"Kaggle could not score submission {result['ref']}: {found['error'] or 'no reason given'}")
    if result["status"] == COMPLETE:
        print(f"scored: public {result['public_score']}, private {result['private_score']}")
    else:
        print(f"not scored after {poll_timeout_s:g}s (status {result['status']}); `make scores` fetches the score later")
    return result


def _wait_for_score(api, credentials: Credentials, plugin: Competition, sha256: str, ref: str | None, timeout_s: float,
                    first_wait_s: float, http_timeout_s: float = DEFAULT_HTTP_TIMEOUT_S) -> dict:
    """Poll the submission list with exponential back-off until ours is COMPLETE or ERROR, or time runs out.

    Each check may take at most what is left of `timeout_s` (never less than MIN_POLL_TIMEOUT_S): a listing
    that does not answer counts as 'not scored yet', so the wait ends on time even when Kaggle hangs.
    """
    deadline = time.monotonic() + timeout_s
    wait = max(first_wait_s, 0.01)
    pending = {"ref": ref, "status": PENDING, "public_score": None, "private_score": None, "error": None}
    while True:
        left = max(deadline - time.monotonic(), MIN_POLL_TIMEOUT_S)
        ours: list[dict] = []
        try:
            with kaggle_call(credentials, "checking the submission's status", plugin,
                              timeout_s=min(http_timeout_s, left)):
                rows = [_row(s) for s in api.competition_submissions(plugin.kaggle_slug) or [] if s is not None]
            # by ref and sha256 when Kaggle returned a ref; else the newest (lists come newest first) with our sha256
            ours = [r for r in rows if parse_message(r["description"]).get("sha256") == sha256
                    and (ref is None or r["ref"] == ref)]
        except KaggleTimeout as error:
            print(f"{error}; treating it as not scored yet", flush=True)
        status = ours[0]["status"] if ours else PENDING
        if status in (COMPLETE, ERROR) or time.monotonic() + wait > deadline:
            return ours[0] if ours else pending
        print(f"status {status}; next check in {wait:.3g}s", flush=True)
        time.sleep(wait)
        wait = min(wait * 2, 120.0)


def _row(submission) -> dict:
    status = getattr(submission.status, "name", str(submission.status))
    return {"ref": str(submission.ref), "status": status, "description": submission.description or "",
            "public_score": _score(submission.public_score), "private_score": _score(submission.private_score),
            "date": submission.date.isoformat(timespec="seconds") if submission.date else "",
            "error": submission.error_description}


def _score(value: str | None) -> float | None:
    """Kaggle sends scores as optional strings; '' or None means not scored."""
    return float(value) if value not in (None, "") else None


def _open_ledger(ledger_path: Path | None):
    from pipeline.ledger.store import open_ledger  # imported here: the ledger is optional for Kaggle calls

    return open_ledger(ledger_path)


def sync_scores(competition: str, ledger_path: Path | None, page_size: int = 100, max_pages: int = 50,
                http_timeout_s: float = DEFAULT_HTTP_TIMEOUT_S) -> list[dict]:
    """Fetch every submission of the competition, match each to its run by sha256, store the scores; print a table.

    A Kaggle row is the ledger's row with the same (ref, sha256 of its description): a row of another
    submission that happens to carry the same ref is never overwritten.
    """
    import pandas as pd

    plugin = get_competition(competition)
    slug = competition_slug(plugin)
    ledger = _open_ledger(ledger_path)  # a broken ledger fails before Kaggle is contacted
    api, credentials = kaggle_api(http_timeout_s)
    rows: list[dict] = []
    for page in range(1, max_pages + 1):
        with kaggle_call(credentials, f"listing submissions of {slug}", plugin, timeout_s=http_timeout_s):
            batch = api.competition_submissions(slug, page_number=page, page_size=page_size) or []
        batch = [s for s in batch if s is not None]
        rows += [_row(s) for s in batch]
        if len(batch) < page_size:
            break
    for row in rows:
        row["description"] = scrub(row["description"], credentials)
        row["sha256"] = parse_message(row["description"]).get("sha256")
        row["run_id"] = ledger.run_for_sha256(row["sha256"]) if ledger is not None and row["sha256"] else None
        if ledger is not None and row["sha256"]:  # an upsert on (ref, sha256): syncing twice is harmless
            ledger.add_submission(row["run_id"], row["sha256"], row["ref"], row["description"], row["status"],
                                  row["public_score"], row["private_score"])
    if not rows:
        print(f"no submissions to {slug} yet")
        return rows
    table = pd.DataFrame(rows)[["ref", "date", "status", "public_score", "private_score", "run_id", "description"]]
    print(table.to_string(index=False, na_rep="-", max_colwidth=60))
    unmatched = sum(1 for r in rows if not r["sha256"])
    if unmatched:
        print(f"{unmatched} submissions carry no sha256 in their description (not made by this pipeline): shown, not stored")
    return rows
