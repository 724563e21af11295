"""Everything that talks to Kaggle: download data, upload a submission, sync scores.

The only module that imports `kaggle`, and only inside functions: importing the package authenticates
(and with an access token, contacts the server). Credentials are checked first (pipeline/kaggle/credentials.py)
so that a missing set-up gives the steps to fix it; every text the package prints or raises passes through
`scrub` so that no key or token reaches the terminal, a log or the ledger.
"""
from __future__ import annotations

import contextlib
import re
import sys
import tempfile
import time
from pathlib import Path

from pipeline.kaggle.archive_formats import is_archive
from pipeline.kaggle.extract import ExtractSummary, Limits, extract_archive
from pipeline.files import sha256_of
from pipeline.kaggle.credentials import SETUP_STEPS, Credentials, ScrubbingStream, find_credentials, scrub
from pipeline.plugin.api import Competition
from pipeline.plugin.registry import get_competition
from pipeline.errors import UserError

COMPLETE, PENDING, ERROR = "COMPLETE", "PENDING", "ERROR"
_MESSAGE_KEYS = re.compile(r"\b(run|sha256)=(\S+)")
# The package sets no HTTP timeout: a server that accepts and never answers would hang a command forever.
DEFAULT_HTTP_TIMEOUT_S = 60.0  # read timeout per request (per block while downloading)
CONNECT_TIMEOUT_S = 10.0
MIN_POLL_TIMEOUT_S = 1.0  # a status check near the end of --poll-timeout still gets this long to answer
# The top-level names each competition's folder must have after `make data` (what its plugin reads). A plugin
# may declare its own as `kaggle_layout`; these are the seeded competitions'.
KAGGLE_LAYOUTS: dict[str, tuple[str, ...]] = {
    "fisheries": ("train", "test_stg1", "test_stg2", "sample_submission_stg1.csv", "sample_submission_stg2.csv"),
    "amazon": ("train-jpg", "test-jpg", "test-jpg-additional", "train_v2.csv", "sample_submission_v2.csv"),
}


class KaggleError(UserError):
    """Kaggle refused or failed a request; the message says why and never contains a credential."""


class KaggleTimeout(KaggleError):
    """Kaggle did not answer within the HTTP timeout."""


@contextlib.contextmanager
def http_timeouts(read_s: float, connect_s: float = CONNECT_TIMEOUT_S):
    """Give every HTTP request made inside the block a (connect, read) timeout.

    The package (and kagglesdk under it) sends with no timeout, or its own 300 s per download block; all
    of its requests go through `requests.adapters.HTTPAdapter.send`, so the timeout is set there, for the
    duration of one call, without changing the package.
    """
    from requests.adapters import HTTPAdapter

    original = HTTPAdapter.send
    timeout = (min(connect_s, read_s), read_s)

    def send(self, request, *args, **kwargs):
        if len(args) >= 2:  # send(request, stream, timeout, ...)
            args = (args[0], timeout, *args[2:])
        else:
            kwargs["timeout"] = timeout
        return original(self, request, *args, **kwargs)

    HTTPAdapter.send = send
    try:
        yield
    finally:
        HTTPAdapter.send = original


@contextlib.contextmanager
def _kaggle_call(credentials: Credentials, what: str, competition: Competition | None = None,
                 timeout_s: float = DEFAULT_HTTP_TIMEOUT_S):
    """Run package code with scrubbed output and HTTP timeouts; turn its exceptions into KaggleError with an
    actionable message."""
    import requests  # a dependency of kaggle; its exceptions are what the package raises

    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = ScrubbingStream(out, credentials), ScrubbingStream(err, credentials)
    try:
        with http_timeouts(timeout_s):
            yield
    except requests.Timeout:
        raise KaggleTimeout(f"{what}: Kaggle did not answer within {timeout_s:g}s; try again later "
                            "(--http-timeout sets the limit)") from None
    except requests.HTTPError as error:
        code = error.response.status_code if error.response is not None else None
        detail = scrub(str(error), credentials)
        if code == 401:
            raise KaggleError(
                f"{what}: Kaggle rejected the credentials from {credentials.source} (HTTP 401). The key may be revoked "
                f"or mistyped: create a new one at https://www.kaggle.com/settings/api and replace it ({detail})"
            ) from None
        if code == 403 and competition is not None:
            raise KaggleError(
                f"{what}: Kaggle refused access (HTTP 403); accept the rules at "
                f"https://www.kaggle.com/competitions/{competition.kaggle_slug}/rules and try again ({detail})"
            ) from None
        if code == 404 and competition is not None:
            raise KaggleError(f"{what}: Kaggle has no competition {competition.kaggle_slug!r} (HTTP 404) ({detail})") \
                from None
        raise KaggleError(f"{what}: Kaggle answered HTTP {code} ({detail})") from None
    except requests.RequestException as error:
        detail = scrub(str(error), credentials)
        raise KaggleError(f"{what}: could not reach Kaggle ({detail}); check the network and try again") from None
    except KaggleError:
        raise
    except Exception as error:  # anything else the package raises: its text may quote a credential
        raise KaggleError(f"{what}: {type(error).__name__}: {scrub(str(error), credentials)}") from None
    finally:
        sys.stdout, sys.stderr = out, err


def kaggle_api(timeout_s: float = DEFAULT_HTTP_TIMEOUT_S):
    """(authenticated KaggleApi, Credentials); the one place `kaggle` is imported."""
    credentials = find_credentials()
    with _kaggle_call(credentials, "signing in to Kaggle", timeout_s=timeout_s):
        import kaggle  # authenticates on import

        api = kaggle.api
        if not api._authenticated:  # the package swallows its own failure at import time; try again loudly
            try:
                api.authenticate()
            except SystemExit:
                raise KaggleError(f"Kaggle did not accept the credentials from {credentials.source}.\n{SETUP_STEPS}") \
                    from None
    return api, credentials


def _slug(competition: Competition) -> str:
    if not competition.kaggle_slug:
        raise UserError(f"competition {competition.name!r} is not a Kaggle competition (its plugin has no kaggle_slug)")
    return competition.kaggle_slug


# ---- download ---------------------------------------------------------------------------------------
def kaggle_layout(competition: Competition) -> tuple[str, ...]:
    """Top-level names the competition's data folder must have after a download (empty: only check_layout)."""
    return tuple(getattr(competition, "kaggle_layout", None) or KAGGLE_LAYOUTS.get(competition.name, ()))


def verify_data(competition: Competition, data_dir: Path, layout: tuple[str, ...] = ()) -> None:
    """The folder is runnable: the plugin's layout, every name of `layout`, and test images matching the sample
    submission's ids one to one (checked here, before any training, not after an hour of it)."""
    data_dir = Path(data_dir)
    competition.check_layout(data_dir)
    missing = [name for name in layout if not (data_dir / name).exists()]
    if missing:
        raise UserError(f"{data_dir} lacks {', '.join(missing)} (the {competition.name} layout is "
                         f"{', '.join(layout)})")
    expected = competition.expected_ids(data_dir)
    if expected is None:
        return
    have = set(competition.test_items(data_dir)["id"])
    want = set(expected)
    no_image, not_expected = [i for i in expected if i not in have], sorted(have - want)
    if no_image or not_expected:
        raise UserError(
            f"{data_dir}: the test images and the sample submission disagree: {len(no_image)} ids the sample "
            f"submission expects have no test image (first: {[str(i) for i in no_image[:3]]}), {len(not_expected)} "
            f"test images are not in it (first: {not_expected[:3]}); the download is incomplete or a test archive "
            "was not extracted: download the data again")


def download_competition(name: str, data_dir: Path, limits: Limits = Limits(),
                         http_timeout_s: float = DEFAULT_HTTP_TIMEOUT_S) -> ExtractSummary | None:
    """Download the competition's files, extract them with guards into `data_dir` in the plugin's layout, and
    check it (layout, test ids against the sample submission) before the folder is moved into place.

    Returns None when `data_dir` already holds a complete layout (nothing downloaded).
    """
    competition = get_competition(name)
    slug = _slug(competition)
    data_dir = Path(data_dir)
    layout = kaggle_layout(competition)
    if data_dir.is_dir() and any(data_dir.iterdir()):
        try:
            competition.check_layout(data_dir)
        except ValueError as error:
            raise UserError(f"{data_dir} already has files but not a complete layout ({error}); "
                             f"move it away and run the download again") from None
        verify_data(competition, data_dir)
        print(f"{data_dir} already holds the {name} data; nothing to download")
        return None
    api, credentials = kaggle_api(http_timeout_s)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=data_dir.parent) as tmp:
        print(f"downloading {slug} from Kaggle ...", flush=True)
        with _kaggle_call(credentials, f"downloading {slug}", competition, timeout_s=http_timeout_s):
            api.competition_download_files(slug, path=tmp, force=True, quiet=False)
        archives = sorted(Path(tmp).iterdir())
        if len(archives) != 1 or not is_archive(archives[0].name):
            raise KaggleError(f"expected one archive from Kaggle, got {[p.name for p in archives]}")
        print(f"downloaded {archives[0].name} ({archives[0].stat().st_size / 1e6:.1f} MB)", flush=True)

        def check(staged: Path) -> None:
            try:
                verify_data(competition, staged, layout)
            except ValueError as error:
                raise UserError(f"downloaded and extracted {archives[0].name}, but the data is not usable, so "
                                 f"{data_dir} was not created: {str(error).replace(str(staged), str(data_dir))}") \
                    from None

        summary = extract_archive(archives[0], data_dir, limits, layout=layout or None, verify=check)
    print(f"{data_dir}: layout of {name} complete ({', '.join(layout) or 'checked by the plugin'}); "
          "test ids match the sample submission")
    return summary


# ---- submit -----------------------------------------------------------------------------------------
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
    slug = _slug(plugin)
    csv_path = Path(csv_path)
    load_submission(csv_path, plugin, Path(data_dir))
    sha256 = sha256_of(csv_path)
    description = submission_message(run_id, sha256, message)
    ledger = _open_ledger(ledger_path)  # a broken ledger fails before anything is uploaded
    api, credentials = kaggle_api(http_timeout_s)
    print(f"uploading {csv_path} to {slug} ...", flush=True)
    with _kaggle_call(credentials, f"submitting {csv_path.name} to {slug}", plugin, timeout_s=http_timeout_s):
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
            with _kaggle_call(credentials, "checking the submission's status", plugin,
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


# ---- scores -----------------------------------------------------------------------------------------
def sync_scores(competition: str, ledger_path: Path | None, page_size: int = 100, max_pages: int = 50,
                http_timeout_s: float = DEFAULT_HTTP_TIMEOUT_S) -> list[dict]:
    """Fetch every submission of the competition, match each to its run by sha256, store the scores; print a table.

    A Kaggle row is the ledger's row with the same (ref, sha256 of its description): a row of another
    submission that happens to carry the same ref is never overwritten.
    """
    import pandas as pd

    plugin = get_competition(competition)
    slug = _slug(plugin)
    ledger = _open_ledger(ledger_path)  # a broken ledger fails before Kaggle is contacted
    api, credentials = kaggle_api(http_timeout_s)
    rows: list[dict] = []
    for page in range(1, max_pages + 1):
        with _kaggle_call(credentials, f"listing submissions of {slug}", plugin, timeout_s=http_timeout_s):
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
