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
from pipeline.ledger.store import Ledger, default_ledger_path
from pipeline.run.config import RunConfig
from pipeline.run.folder import METRICS, SUBMISSION, RunFolder


def record_command(run_dir: Path, ledger: Path) -> str:
    """The command that records `run_dir` into `ledger` (what a run prints when it could not record itself)."""
    return f"python -m pipeline runs record {run_dir} --ledger {ledger}"


def run_ledger_path(run_dir: Path, config: RunConfig) -> Path:
    """The ledger the run used: its --ledger, else ledger.sqlite in its runs folder (RUNS_DIR/COMPETITION/RUN)."""
    return Path(config.ledger) if config.ledger else default_ledger_path(Path(run_dir).parent.parent)


def record_run_folder(run_dir: Path, ledger_path: Path | None = None) -> tuple[str, str, Path]:
    """Record the finished run in `run_dir` (default ledger: the run's own); returns (run id, outcome, ledger path)
    with outcome "recorded" (its row is now done), "added" (it had no row) or "already recorded"."""
    folder = RunFolder(run_dir)
    config = folder.read_config()
    metrics = folder.read_metrics()
    metrics_path = folder.file(METRICS)
    if metrics is None:
        raise UserError(f"{folder.path} has no metrics.json: the run did not finish writing its outputs, so there is "
                        f"nothing finished to record; finish it with `python -m pipeline submit --resume "
                        f"{folder.path.name} --competition {config.competition} --runs-dir {folder.path.parent.parent}`")
    if not metrics.run_id or metrics.competition != config.competition:
        raise UserError(f"{metrics_path} names run {metrics.run_id!r} of {metrics.competition!r} but config.json a run "
                        f"of {config.competition!r}; the folder mixes two runs and cannot be recorded")
    changed = folder.submission_changed(metrics)
    if changed:
        raise UserError(f"{folder.file(SUBMISSION)} {changed}; a finished run is recorded with the submission it wrote: "
                        f"{folder.restore_hint(metrics)} and run this again")
    if metrics.timings.total_s is None:
        raise UserError(f"{metrics_path} has no timings.total_s; it was not written by a finished run")
    ledger_path = Path(ledger_path) if ledger_path is not None else run_ledger_path(folder.path, config)
    finished_at = datetime.fromtimestamp(metrics_path.stat().st_mtime, timezone.utc)
    outcome = Ledger(ledger_path).record_finished_run(metrics.run_id, metrics.competition, config.to_dict(),
                                                      metrics.to_dict(), folder.file(SUBMISSION),
                                                      float(metrics.timings.total_s), finished_at)
    return metrics.run_id, outcome, ledger_path
