"""`python -m pipeline submit`: the whole pipeline for one configuration."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import add_run_options, config_from_args
from pipeline.errors import UserError


def register(subparsers) -> None:
    parser = subparsers.add_parser("submit", help="teacher -> pseudo-labels -> student -> validated submission.csv",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_run_options(parser)
    parser.add_argument("--upload", action="store_true",
                        help="upload the validated submission to Kaggle, wait for its score and record it (needs credentials)")
    parser.add_argument("--message", default="", help="with --upload: the Kaggle description (run id and sha256 are added)")
    parser.add_argument("--poll-timeout", type=float, default=600,
                        help="with --upload: seconds to wait for the score (`make scores` fetches it later)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.message and not args.upload:
        raise UserError("--message is the Kaggle submission's description; it needs --upload")
    cfg = config_from_args(args)
    if args.upload:
        from pipeline.kaggle_credentials import find_credentials

        find_credentials()  # no credentials: fail now, not after training
    from pipeline.run import run_pipeline

    result = run_pipeline(cfg)
    from pipeline import distribute

    if args.upload and distribute.is_chief():  # other workers of --distribute multiworker wrote nothing to upload
        from pipeline.kaggle_client import upload_run_submission

        upload_run_submission(cfg.competition, result.run_dir / "submission.csv", Path(cfg.data), result.run_id,
                              args.message, cfg.ledger_path, poll_timeout_s=args.poll_timeout)
    return 0
