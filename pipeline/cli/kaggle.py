"""`data` (download + guarded extraction + layout and id checks) and `scores` (sync Kaggle scores into the ledger)."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.run.config import SUBMISSIONS_DIR
from pipeline.kaggle.extract_guard import DEFAULT_MAX_RATIO, DEFAULT_MAX_TOTAL_BYTES, GB, Limits
from pipeline.errors import UserError

HTTP_TIMEOUT_S = 60.0  # pipeline.kaggle.client.DEFAULT_HTTP_TIMEOUT_S; repeated so that building the CLI imports no Kaggle code


def add_http_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--http-timeout", type=float, default=HTTP_TIMEOUT_S, metavar="SECONDS",
                        help="give up on a Kaggle request that does not answer within this many seconds "
                             "(default %(default)g)")


def add_ledger_options(parser: argparse.ArgumentParser) -> None:
    """--runs-dir and --ledger, with the ledger beside the runs by default (shared by every ledger command)."""
    parser.add_argument("--runs-dir", type=Path, default=SUBMISSIONS_DIR,
                        help="where run folders are (default %(default)s)")
    parser.add_argument("--ledger", type=Path, default=None,
                        help="run ledger file (default: ledger.sqlite in --runs-dir)")


def ledger_path(args: argparse.Namespace) -> Path:
    from pipeline.ledger.store import default_ledger_path

    return args.ledger if args.ledger is not None else default_ledger_path(args.runs_dir)


def positive(name: str, value: float) -> float:
    if not value > 0:  # also NaN
        raise UserError(f"{name} must be > 0, got {value}")
    return value


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="download and extract a competition's Kaggle data (needs credentials)")
    data.add_argument("--competition", required=True, help="plugin name, e.g. fisheries or amazon")
    data.add_argument("--data", required=True, type=Path, help="folder to create with the extracted data")
    data.add_argument("--max-gb", type=float, default=DEFAULT_MAX_TOTAL_BYTES / GB,
                      help="zip bomb guard: refuse archives that expand to more than this many GB (default %(default)g); "
                           "extraction also never fills more than 90%% of the free disk space")
    data.add_argument("--max-ratio", type=float, default=DEFAULT_MAX_RATIO,
                      help="zip bomb guard: refuse an entry, an archive or the whole download expanding more than "
                           "this many times (default %(default)g)")
    add_http_timeout(data)
    data.set_defaults(func=_data)

    scores = subparsers.add_parser("scores", help="sync public/private scores of past Kaggle submissions into the ledger")
    scores.add_argument("--competition", required=True)
    add_ledger_options(scores)
    add_http_timeout(scores)
    scores.set_defaults(func=_scores)


def _data(args: argparse.Namespace) -> int:
    from pipeline.kaggle.download import download_competition

    limits = Limits(max_total_bytes=int(positive("--max-gb", args.max_gb) * GB),
                    max_ratio=positive("--max-ratio", args.max_ratio))
    download_competition(args.competition, args.data, limits, http_timeout_s=positive("--http-timeout", args.http_timeout))
    return 0


def _scores(args: argparse.Namespace) -> int:
    from pipeline.kaggle.submit import sync_scores

    sync_scores(args.competition, ledger_path(args), http_timeout_s=positive("--http-timeout", args.http_timeout))
    return 0
