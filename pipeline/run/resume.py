"""`submit --resume RUN`: what a run left behind, whether it may be resumed, and a clean folder to resume into.

Why: a run killed outright (kill -9, a lost machine) leaves a folder with its config.json and partial outputs,
and a ledger row marked `interrupted` when the ledger is next opened. Resuming runs that very config again,
into the same folder and on the same ledger row; every cached stage (images, shift, teacher, each student
and control) is reused, so the submission is byte for byte the one the run would have written.
"""
from __future__ import annotations

import re
from pathlib import Path

from pipeline.errors import UserError
from pipeline.files import pid_is_alive, remove_stale_temporaries
from pipeline.run.config import RunConfig
from pipeline.run.folder import CONFIG, METRICS, RUN_NAME, SUBMISSION, RunFolder
from pipeline.run.folder import outputs as folder_outputs

RESUMABLE = ("interrupted", "failed")
NOT_RECORDED = "not recorded"  # a run with no ledger row (recorded with --no-ledger, or the ledger was replaced)


def load_run(runs_dir: Path, competition: str, run: str, cache_dir: str | None, ledger: str | None) -> tuple[RunConfig, Path]:
    """The config saved in `<runs_dir>/<competition>/<run>/config.json` and that folder.

    The run's own config is used as it is, except where its files go: the runs folder it was found in, and the
    cache folder and ledger when given."""
    if not RUN_NAME.match(run):
        raise UserError(f"--resume {run!r} is not a run name (letters, digits, '.', '_' or '-'); "
                        "`python -m pipeline runs list` shows the recorded runs")
    folder = RunFolder(Path(runs_dir) / competition / run)
    if not folder.path.is_dir():
        raise UserError(f"--resume {run}: no run {run!r} of {competition} in {runs_dir} ({folder.path} does not exist); "
                        "`python -m pipeline runs list` shows the recorded runs, --runs-dir says where to look")
    if not folder.file(CONFIG).is_file():
        raise UserError(f"--resume {run}: {folder.file(CONFIG)} is missing (the run stopped before saving its config): "
                        f"nothing to resume; delete {folder.path} and start the run again")
    try:
        cfg = folder.read_config()
    except UserError as error:
        raise UserError(f"--resume {run}: {error}") from None
    if cfg.competition != competition:
        raise UserError(f"--resume {run}: {folder.file(CONFIG)} is a run of {cfg.competition!r}, not of {competition!r}")
    where = {"runs_dir": str(runs_dir), "cache_dir": cache_dir, "ledger": ledger}
    cfg = cfg.replace(**{name: value for name, value in where.items() if value is not None})
    from pipeline.run.preflight import data_folder_problems

    inside = data_folder_problems(cfg)  # here, before the ledger is opened (and created) there
    if inside:
        raise UserError(f"--resume {run}: {inside[0]}")
    return cfg, folder.path


def check_unfinished(run: str, run_dir: Path, ledger) -> str:
    """The status the run is resumed from (`interrupted`, `failed` or NOT_RECORDED); a UserError naming the run
    and its status when it finished or is still running."""
    row = None
    if ledger is not None:
        try:
            row = ledger.run(run)
        except UserError:  # no row at all
            row = None
        if row is not None and row["run_id"] != run:  # ledger.run also matches an id prefix
            row = None
    if row is not None:
        if row["status"] in RESUMABLE:
            return row["status"]
        if row["status"] == "running":
            raise UserError(f"--resume {run}: run {run} is still running (status running, process {row['pid']} on "
                            f"{row['hostname']}); wait for it, or stop it first")
        raise UserError(f"--resume {run}: run {run} already finished (status {row['status']} in {ledger.path}); its "
                        f"submission is {run_dir / SUBMISSION}; start a new run to train again")
    if (run_dir / METRICS).is_file() and (run_dir / SUBMISSION).is_file():
        raise UserError(f"--resume {run}: run {run} already finished (status finished: {run_dir} holds its metrics.json "
                        "and submission.csv); start a new run to train again")
    return NOT_RECORDED


_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.pid(?P<pid>\d+)\..*\.tmp$")  # pipeline/files.py's atomic writes


def clear_run_folder(cfg: RunConfig, run_dir: Path) -> list[str]:
    """Remove what the run wrote but its config.json (its known outputs, and what a killed writer of one left
    half-written), and temporaries of dead writers in its cache folder; anything else is the user's and stays.

    The resumed run writes every output again: nothing stale survives beside a fresh file."""
    outputs = folder_outputs()
    removed, left = [], []
    for path in sorted(run_dir.iterdir()):
        if path.name == CONFIG:
            continue
        temporary = _TEMPORARY.match(path.name)
        ours = path.name in outputs or (temporary is not None and temporary["name"] in outputs
                                        and not pid_is_alive(int(temporary["pid"])))
        if ours and (path.is_file() or path.is_symlink()):
            path.unlink()
            removed.append(path.name)
        else:
            left.append(path.name + ("/" if path.is_dir() and not path.is_symlink() else ""))
    cache_folder = Path(cfg.cache_dir) / cfg.competition
    if cache_folder.is_dir():
        removed += [str(p) for p in remove_stale_temporaries(cache_folder)]
    if removed:
        print(f"resume: removed {len(removed)} partial outputs and temporaries: {', '.join(removed)}", flush=True)
    if left:
        print(f"resume: left {len(left)} file(s) in {run_dir} that the run does not write: {', '.join(left)}", flush=True)
    return removed
