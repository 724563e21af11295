"""A finished run folder recorded in the ledger after the fact: `python -m pipeline runs record RUN`.

A run writes every output (submissions, probabilities.npz, metrics.json, the report) before it records itself
in the ledger. When that last write fails (another process kept the ledger locked past the busy timeout, the
ledger's disk was full) nothing of the run is missing but its row, which stays `running` (later `interrupted`).
This records the run from its folder alone, as the run would have, once the folder is checked to be the finished
run it claims: metrics.json present, and submission.csv the very file the run wrote (its sha256).
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from pipeline.errors import UserError
from pipeline.files import sha256_of
from pipeline.ledger.store import Ledger, default_ledger_path
from pipeline.run.rescore import read_json


def record_command(run_dir: Path, ledger: Path) -> str:
    """The command that records `run_dir` into `ledger` (what a run prints when it could not record itself)."""
    return f"python -m pipeline runs record {run_dir} --ledger {ledger}"


def run_ledger_path(run_dir: Path, config: dict) -> Path:
    """The ledger the run used: its --ledger, else ledger.sqlite in its runs folder (RUNS_DIR/COMPETITION/RUN)."""
    return Path(config["ledger"]) if config.get("ledger") else default_ledger_path(Path(run_dir).parent.parent)


def record_run_folder(run_dir: Path, ledger_path: Path | None = None) -> tuple[str, str, Path]:
    """Record the finished run in `run_dir` (default ledger: the run's own); returns (run id, outcome, ledger path)
    with outcome "recorded" (its row is now done), "added" (it had no row) or "already recorded"."""
    run_dir = Path(run_dir)
    config = read_json(run_dir / "config.json") if (run_dir / "config.json").is_file() else None
    if config is None or "competition" not in config:
        raise UserError(f"{run_dir / 'config.json'} is missing or names no competition; is {run_dir} a run folder?")
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise UserError(f"{run_dir} has no metrics.json: the run did not finish writing its outputs, so there is nothing "
                        f"finished to record; finish it with `python -m pipeline submit --resume {run_dir.name} "
                        f"--competition {config['competition']} --runs-dir {run_dir.parent.parent}`")
    metrics = read_json(metrics_path)
    run_id, competition = metrics.get("run_id"), metrics.get("competition")
    if not isinstance(run_id, str) or competition != config["competition"]:
        raise UserError(f"{metrics_path} names run {run_id!r} of {competition!r} but config.json a run of "
                        f"{config['competition']!r}; the folder mixes two runs and cannot be recorded")
    record = metrics.get("submission") or {}
    submission = run_dir / "submission.csv"
    if not submission.is_file():
        raise UserError(f"{submission} is missing; a finished run is recorded with the submission it wrote "
                        f"(restore it from {run_dir / (str(record.get('model')) + '_submission.csv')})")
    if record.get("sha256") != sha256_of(submission):
        raise UserError(f"{submission} is not the file the run wrote (its sha256 differs from the one in {metrics_path}); "
                        f"restore it (cp {run_dir / (str(record.get('model')) + '_submission.csv')} {submission}) "
                        "and run this again")
    try:
        wall_time_s = float(metrics["timings"]["total_s"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{metrics_path} has no timings.total_s; it was not written by a finished run") from None
    ledger_path = Path(ledger_path) if ledger_path is not None else run_ledger_path(run_dir, config)
    finished_at = datetime.fromtimestamp(metrics_path.stat().st_mtime, timezone.utc)
    outcome = Ledger(ledger_path).record_finished_run(run_id, competition, config, metrics, submission, wall_time_s,
                                                      finished_at)
    return run_id, outcome, ledger_path
