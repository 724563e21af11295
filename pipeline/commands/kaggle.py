"""`data` (download + guarded extraction + layout check) and `scores` (sync Kaggle scores into the ledger)."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import LEDGER_PATH
from pipeline.extract import DEFAULT_MAX_TOTAL_BYTES, GB, Limits


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="download and extract a competition's Kaggle data (needs credentials)")
    data.add_argument("--competition", required=True, help="plugin name, e.g. fisheries or amazon")
    data.add_argument("--data", required=True, type=Path, help="folder to create with the extracted data")
    data.add_argument("--max-gb", type=float, default=DEFAULT_MAX_TOTAL_BYTES / GB,
                      help="zip bomb guard: refuse archives that expand to more than this many GB (default %(default)g)")
    data.set_defaults(func=_data)

    scores = subparsers.add_parser("scores", help="sync public/private scores of past Kaggle submissions into the ledger")
    scores.add_argument("--competition", required=True)
    scores.add_argument("--ledger", type=Path, default=LEDGER_PATH, help=f"run ledger (default {LEDGER_PATH})")
    scores.set_defaults(func=_scores)


def _data(args: argparse.Namespace) -> int:
    from pipeline.kaggle_client import download_competition

    if not args.max_gb > 0:
        raise ValueError(f"--max-gb must be > 0, got {args.max_gb}")
    download_competition(args.competition, args.data, Limits(max_total_bytes=int(args.max_gb * GB)))
    return 0


def _scores(args: argparse.Namespace) -> int:
    from pipeline.kaggle_client import sync_scores

    sync_scores(args.competition, args.ledger)
    return 0
