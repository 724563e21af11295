"""`python -m pipeline upload RUN`: upload a finished run's submission.csv again, without rerunning anything.

What a failed `submit --upload` (network, Kaggle down, daily limit) needs: the run's CSV is validated
again, checked against the sha256 the ledger recorded for the run, uploaded, and its score awaited and
recorded exactly as `submit --upload` does.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.cli.kaggle import add_http_timeout, add_ledger_options, ledger_path, positive
from pipeline.errors import UserError


def register(subparsers) -> None:
    parser = subparsers.add_parser("upload", help="upload an existing run's validated submission.csv to Kaggle",
                                   description=__doc__)
    parser.add_argument("run", metavar="RUN", help="a run folder, or a run id (or unique prefix) under --runs-dir")
    add_ledger_options(parser)  # --ledger: default the ledger the run recorded itself in (its config.json)
    parser.add_argument("--data", type=Path, help="the competition's data folder (default: the one the run used)")
    parser.add_argument("--message", default="", help="the Kaggle description (run id and sha256 are added)")
    parser.add_argument("--poll-timeout", type=float, default=600,
                        help="seconds to wait for the score (`make scores` fetches it later; default %(default)g)")
    add_http_timeout(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.kaggle.submit import upload_run_submission
    from pipeline.kaggle.credentials import find_credentials
    from pipeline.files import sha256_of
    from pipeline.ledger.store import Ledger

    if not args.poll_timeout >= 0:
        raise UserError(f"--poll-timeout must be >= 0 seconds, got {args.poll_timeout}")
    http_timeout = positive("--http-timeout", args.http_timeout)
    run_dir = find_run_folder(args.run, Path(args.runs_dir), ledger_path(args))
    config = _read_json(run_dir / "config.json")
    run_id = (_read_json(run_dir / "metrics.json", required=False) or {}).get("run_id") or run_dir.name
    csv = run_dir / "submission.csv"
    if not csv.is_file():
        raise UserError(f"{csv} does not exist: run {run_id} did not finish writing its submission; "
                         "run `python -m pipeline submit` again")
    competition, data = config.get("competition"), args.data or config.get("data")
    if not competition or not data:
        raise UserError(f"{run_dir / 'config.json'} names no competition or data folder; pass --data")
    # where the run recorded itself (its config), unless --ledger says otherwise; else beside --runs-dir
    ledger_file = args.ledger or (Path(config["ledger"]) if config.get("ledger") else ledger_path(args))
    if Path(ledger_file).is_file():
        recorded = _recorded_sha256(Ledger(Path(ledger_file)), run_id)
        if recorded and recorded != sha256_of(csv):
            raise UserError(f"{csv} changed since run {run_id} wrote it (the ledger {ledger_file} recorded sha256 "
                             f"{recorded[:12]}..., the file now has {sha256_of(csv)[:12]}...); refusing to upload a file "
                             "whose scores could not be matched to its run")
    find_credentials()
    upload_run_submission(competition, csv, Path(data), run_id, args.message, Path(ledger_file),
                          poll_timeout_s=args.poll_timeout, http_timeout_s=http_timeout)
    return 0


def find_run_folder(run: str, runs_dir: Path, ledger_file: Path) -> Path:
    """A run folder from a path, a run id under `runs_dir/<competition>/`, or an id (prefix) the ledger knows."""
    given = Path(run)
    if given.is_dir():
        return given
    if "/" in run or "\\" in run or run in ("", ".", ".."):
        raise UserError(f"run folder {run} does not exist")
    found = sorted(folder / run for folder in (runs_dir.iterdir() if runs_dir.is_dir() else [])
                   if folder.is_dir() and (folder / run).is_dir())
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise UserError(f"run {run!r} is in several competitions: {', '.join(map(str, found))}; pass the folder")
    if Path(ledger_file).is_file():
        from pipeline.ledger.store import Ledger

        record = Ledger(Path(ledger_file)).run(run)  # ValueError naming the candidates when not unique
        if record.get("submission_path") and Path(record["submission_path"]).parent.is_dir():
            return Path(record["submission_path"]).parent
        raise UserError(f"run {record['run_id']} is in the ledger {ledger_file} but its folder is gone "
                         f"({record.get('submission_path') or 'no submission recorded'})")
    raise UserError(f"no run {run!r} under {runs_dir} and no ledger at {ledger_file}; pass the run folder "
                     "(`python -m pipeline runs list` shows the recorded runs)")


def _recorded_sha256(ledger, run_id: str) -> str | None:
    try:
        return ledger.run(run_id)["submission_sha256"]
    except ValueError:  # a run folder the ledger does not know (recorded elsewhere or with --no-ledger)
        return None


def _read_json(path: Path, required: bool = True) -> dict | None:
    if not path.is_file():
        if required:
            raise UserError(f"{path} does not exist; is {path.parent} a run folder made by `python -m pipeline submit`?")
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}); was it edited by hand?") from None
