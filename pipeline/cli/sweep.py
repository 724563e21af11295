"""`python -m pipeline sweep`: a grid of pseudo-label settings (ratio x groups), one run each, in-process.

The teacher (and the features of a frozen backbone) is cached on disk and keyed by everything that
determines it, so only the first setting trains it; later settings train only their student. The sweep
ends with the `compare` table of its runs: which groups to pseudo-label, and what share.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli.compare import add_compare_options, print_comparison
from pipeline.run.config import add_run_options, config_from_args
from pipeline.errors import UserError
from pipeline.ledger.store import Ledger
from pipeline.plugin.api import GROUPS
from pipeline.run.sweep import run_sweep, summary, sweep_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("sweep", help="grid of pseudo-label ratios x groups, reusing the cached teacher",
                                   description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_run_options(parser, skip=("output", "run_name", "pseudo_ratio", "pseudo_groups"))
    parser.add_argument("--ratios", type=float, nargs="+", required=True,
                        help="pseudo-label shares to try (0 = teacher only, run once); replaces --pseudo-ratio")
    parser.add_argument("--groups", nargs="+", default=[",".join(GROUPS)],
                        help="leaderboard groups to pseudo-label, one comma-separated set per setting, e.g. "
                             "public private public,private; replaces --pseudo-groups")
    add_compare_options(parser)
    parser.set_defaults(func=run, trains=True)


def run(args: argparse.Namespace) -> int:
    base = config_from_args(args)
    if base.ledger_path is None:
        raise UserError("sweep compares its runs through the ledger; drop --no-ledger")
    settings = sweep_settings(args.ratios, args.groups)
    for ratio, groups in settings:  # every setting valid before hours of training start
        base.replace(pseudo_ratio=ratio, pseudo_groups=groups)
    print(f"sweep of {len(settings)} settings: " + "; ".join(
        "teacher only" if r == 0 else f"{r:g} on {','.join(g)}" for r, g in settings), flush=True)
    results = run_sweep(base, settings)
    print("\n" + summary(results) + "\n", flush=True)
    run_ids = [r.run_id for r in results if r.run_id]
    # the sweep has just written its runs: it stores what the comparison computes, as it always has
    print_comparison(Ledger(base.ledger_path), base.competition, args, run_ids=run_ids, record=True)
    return 1 if any(r.error for r in results) else 0
