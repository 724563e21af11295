"""`python -m pipeline compare`: every recorded run of a competition side by side, with a plot and a page of all runs."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.ledger.compare import SORT_KEYS, compare_runs
from pipeline.ledger.compare_output import FORMATS, plot_path, render, write_plot
from pipeline.ledger.runs_page import runs_page_path, write_runs_page
from pipeline.cli.kaggle import add_ledger_options, ledger_path
from pipeline.ledger.store import Ledger
from pipeline.method.verdict import LEVEL


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare", help="table, plot and page (runs.html) of the recorded runs: holdout vs public vs private, gains, noise",
        description="Compare the done runs of a competition. Gains are over each run's own teacher (positive = "
                    f"better); a public gain is 'noise' when its {LEVEL:.0%} paired-bootstrap interval contains 0.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--competition", required=True, help="plugin name, e.g. fisheries")
    add_ledger_options(parser)
    parser.add_argument("--solution", type=Path,
                        help="Kaggle-format solution.csv (default: the one each run was made with, if any)")
    parser.add_argument("--metric", help="which metric's runs to compare when runs used several")
    parser.add_argument("--record", action="store_true",
                        help="store the local leaderboard scores and bootstrap intervals computed here in the "
                             "ledger, so later comparisons reuse them (without it the ledger is only read)")
    add_compare_options(parser)
    parser.set_defaults(func=run)


def add_compare_options(parser: argparse.ArgumentParser) -> None:
    """Options shared with `sweep`, which ends with the same table (it gets --solution and --metric from
    the run options)."""
    parser.add_argument("--sort", choices=SORT_KEYS, default="public", help="score to sort by, best first")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of the public gain (0 = skip the noise check)")


def run(args: argparse.Namespace) -> int:
    ledger = Ledger(ledger_path(args), read_only=not args.record)
    print_comparison(ledger, args.competition, args, record=args.record)
    return 0


def print_comparison(ledger: Ledger, competition: str, args: argparse.Namespace,
                     run_ids: list[str] | None = None, record: bool = False) -> None:
    """Print the comparison in the chosen format and write the PNG next to the ledger, and with it, when every
    run is compared (not a sweep's own), runs.html: the page of all runs (the ledger itself is written only
    with `record`)."""
    comparison = compare_runs(ledger, competition, sort=args.sort, solution=args.solution, metric=args.metric,
                              run_ids=run_ids, resamples=args.resamples, record=record)
    name = "compare.png" if run_ids is None else "sweep.png"
    write_plot(comparison, plot_path(ledger, competition).with_name(name))
    if run_ids is None:
        write_runs_page(comparison, runs_page_path(comparison.plot))
    print(render(comparison, args.format), end="")
    if args.format == "csv":  # CSV has no place for them; keep stdout machine-readable
        print(f"plot: {comparison.plot}", file=sys.stderr)
        if comparison.page:
            print(f"page of all runs: {comparison.page}", file=sys.stderr)
