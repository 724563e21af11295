"""`python -m pipeline runs list|show|score|rescore|record`: read the run ledger, record Kaggle scores typed by
hand, recompute a run's scores, verdict, blends and submissions from its folder alone (no training), and record
a finished run folder that could not record itself (its ledger was locked or its disk full when it ended)."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from pipeline.cli.kaggle import add_ledger_options, ledger_path
from pipeline.run.config import SUBMISSIONS_DIR
from pipeline.errors import UserError
from pipeline.ledger.store import Ledger

LIST_COLUMNS = ["run_id", "status", "started_at", "pseudo_ratio", "pseudo_groups", "holdout_teacher",
                "holdout_student", "lb_student_public", "lb_student_private", "kaggle_public", "kaggle_private",
                "wall_time_s"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("runs", help="list, show and score recorded runs (the run ledger)",
                                   description=__doc__)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="one line per recorded run, oldest first")
    listing.add_argument("--competition", help="only runs of this competition")
    listing.set_defaults(func=list_runs)

    show = actions.add_parser("show", help="everything recorded about one run, as JSON")
    show.add_argument("run_id", metavar="RUN", help="run id (a unique prefix is enough)")
    show.set_defaults(func=show_run)

    score = actions.add_parser("score", help="record the Kaggle public/private scores of a run's submission")
    score.add_argument("run_id", metavar="RUN", help="run id (a unique prefix is enough)")
    score.add_argument("--public", type=float, help="public leaderboard score shown by Kaggle")
    score.add_argument("--private", type=float, help="private leaderboard score shown by Kaggle")
    score.set_defaults(func=score_run)

    for sub in (listing, show, score):
        add_ledger_options(sub)

    again = actions.add_parser("rescore", help="recompute a run's scores, verdict and submissions from its folder "
                               "(split.csv, probabilities.npz): no training, no images")
    again.add_argument("run_id", metavar="RUN", help="the run folder, or its run id under --runs-dir")
    again.add_argument("--runs-dir", type=Path, default=SUBMISSIONS_DIR, help="where run folders are (default %(default)s)")
    again.add_argument("--competition", help="look for RUN under RUNS_DIR/COMPETITION only")
    again.add_argument("--metric", help="score with another of the plugin's metrics (default: the run's)")
    again.add_argument("--solution", type=Path, help="Kaggle's solution.csv: also score public and private")
    again.add_argument("--blend", metavar="MODEL=W,...", help="score a weighted blend of the run's models' probabilities, "
                       "e.g. student=0.5,control=0.5 (weights are normalised to sum to 1)")
    again.add_argument("--write", metavar="MODEL", help="write rescored_MODEL_submission.csv into the run folder "
                       "(teacher, control, student, or blend); an existing file is never overwritten")
    again.set_defaults(func=rescore_run)

    record = actions.add_parser("record", help="record a finished run folder in the ledger from its metrics.json "
                                "(a run whose ledger was locked or full when it ended says to)")
    record.add_argument("run_id", metavar="RUN", help="the run folder, or its run id under --runs-dir")
    record.add_argument("--runs-dir", type=Path, default=SUBMISSIONS_DIR, help="where run folders are (default %(default)s)")
    record.add_argument("--competition", help="look for RUN under RUNS_DIR/COMPETITION only")
    record.add_argument("--ledger", type=Path, default=None,
                        help="run ledger file (default: the run's own: its --ledger, else ledger.sqlite in its runs folder)")
    record.set_defaults(func=record_run)


def list_runs(args: argparse.Namespace) -> int:
    runs = Ledger(ledger_path(args)).runs(args.competition)
    if runs.empty:
        print(f"no runs recorded in {ledger_path(args)}" + (f" for {args.competition}" if args.competition else ""))
        return 0
    for competition, group in runs.groupby("competition", sort=True):
        print(f"== {competition} ({len(group)} runs)")
        print(group[LIST_COLUMNS].to_string(index=False, na_rep="-", float_format=lambda x: f"{x:.4g}"))
        for row in group[group["status"].isin(["failed", "interrupted"])].itertuples():
            last_line = (row.error or "").strip().splitlines()[-1:] or ["(no error text)"]
            print(f"  {row.run_id} {row.status}: {last_line[0]}")
    return 0


def show_run(args: argparse.Namespace) -> int:
    print(json.dumps(Ledger(ledger_path(args)).run(args.run_id), indent=2, sort_keys=True, default=str))
    return 0


def score_run(args: argparse.Namespace) -> int:
    """Kaggle scores typed by hand become a submission row of the run, like scores synced from Kaggle."""
    if args.public is None and args.private is None:
        raise UserError("runs score needs --public and/or --private (the scores Kaggle shows for the submission)")
    for name in ("public", "private"):
        value = getattr(args, name)
        if value is not None and not math.isfinite(value):
            raise UserError(f"--{name} must be a finite number, got {value!r}")
    ledger = Ledger(ledger_path(args))
    run = ledger.run(args.run_id)
    if not run["submission_sha256"]:
        raise UserError(f"run {run['run_id']} has no submission recorded (status {run['status']}); "
                         "only a finished run's submission can have Kaggle scores")
    ledger.add_submission(run["run_id"], run["submission_sha256"], None, "scores typed by hand (runs score)",
                          "complete", args.public, args.private)
    print(f"recorded for {run['run_id']}: public {args.public}, private {args.private}")
    return 0


def rescore_run(args: argparse.Namespace) -> int:
    from pipeline.run.folder import find_run
    from pipeline.run.rescore import rescore

    result = rescore(find_run(args.run_id, args.runs_dir, args.competition), args.metric, args.solution, args.blend,
                     args.write)
    print(result.table())
    return 0


def record_run(args: argparse.Namespace) -> int:
    from pipeline.ledger.record import record_run_folder
    from pipeline.run.folder import find_run

    run_id, outcome, ledger = record_run_folder(find_run(args.run_id, args.runs_dir, args.competition), args.ledger)
    print({"recorded": f"recorded run {run_id} as done in {ledger}",
           "added": f"recorded run {run_id} as done in {ledger} (it had no row there)",
           "already recorded": f"run {run_id} is already recorded as done in {ledger}; nothing to do"}[outcome])
    return 0
