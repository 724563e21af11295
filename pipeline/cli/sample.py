"""`python -m pipeline sample COMPETITION DIR`: a small data set in the competition's layout, with answers."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from pipeline.errors import UserError
from pipeline.plugin.registry import get_competition, list_competitions


def register(subparsers) -> None:
    parser = subparsers.add_parser("sample", help="make a small procedural data set (DIR/data) and its answers (DIR/solution.csv)")
    parser.add_argument("competition", help=f"one of: {', '.join(list_competitions())}")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--small", action="store_true", help="a few dozen images per group (what the generated plugin tests use)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    competition = get_competition(args.competition)
    if (args.out_dir / "data").exists():
        raise UserError(f"{args.out_dir / 'data'} already exists; remove it or choose another folder")
    started = time.perf_counter()
    competition.make_sample(args.out_dir, seed=args.seed, small=args.small)
    count = sum(1 for p in (args.out_dir / "data").rglob("*") if p.is_file())
    print(f"wrote {count} files to {args.out_dir / 'data'} and the answers to {args.out_dir / 'solution.csv'} "
          f"in {time.perf_counter() - started:.1f}s")
    return 0
