"""`python -m pipeline submit`: the whole pipeline for one configuration, or `--resume RUN` of an unfinished one."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.run.config import add_run_options, config_from_args
from pipeline.errors import UserError

# With --resume the run's own config.json decides everything but where the run, its caches and its ledger are.
RESUME_OPTIONS = ("competition", "runs_dir", "cache_dir", "ledger")


def register(subparsers) -> None:
    parser = subparsers.add_parser("submit", help="teacher -> pseudo-labels -> student -> validated submission.csv",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_run_options(parser)
    for action in parser._actions:  # --resume reads the data folder from the run's config.json
        if action.dest == "data":
            action.required = False
            action.help += " (required unless --resume)"
    parser.add_argument("--resume", metavar="RUN",
                        help="continue the unfinished run RUN (interrupted or failed) of --competition under --runs-dir "
                             "from its own config.json, into its own folder, reusing every cached model")
    parser.add_argument("--upload", action="store_true",
                        help="upload the validated submission to Kaggle, wait for its score and record it (needs credentials)")
    parser.add_argument("--message", default="", help="with --upload: the Kaggle description (run id and sha256 are added)")
    parser.add_argument("--poll-timeout", type=float, default=600,
                        help="with --upload: seconds to wait for the score (`make scores` fetches it later)")
    parser.set_defaults(func=run, parser=parser, trains=True)


def run(args: argparse.Namespace) -> int:
    if args.resume is not None:
        return resume(args)
    if not args.data:
        raise UserError("submit needs --data DIR (the competition's data folder), or --resume RUN")
    if args.message and not args.upload:
        raise UserError("--message is the Kaggle submission's description; it needs --upload")
    cfg = config_from_args(args)
    if args.upload:
        from pipeline.kaggle.credentials import find_credentials

        find_credentials()  # no credentials: fail now, not after training
    from pipeline.run.stages import run_pipeline

    result = run_pipeline(cfg)
    from pipeline.model import distribute

    if args.upload and distribute.is_chief():  # other workers of --distribute multiworker wrote nothing to upload
        from pipeline.kaggle.submit import upload_run_submission
        from pipeline.run.folder import SUBMISSION

        upload_run_submission(cfg.competition, result.run_dir / SUBMISSION, Path(cfg.data), result.run_id,
                              args.message, cfg.ledger_path, poll_timeout_s=args.poll_timeout)
    return 0


def resume(args: argparse.Namespace) -> int:
    """Refuse options that would change the run's config (the interrupted run's is used), then resume it."""
    parser = args.parser
    given = [action.option_strings[0] for action in parser._actions
             if action.option_strings and action.dest not in (*RESUME_OPTIONS, "resume", "help")
             and getattr(args, action.dest, None) != parser.get_default(action.dest)]
    if given:
        raise UserError(f"--resume {args.resume} continues with that run's own config.json; {', '.join(given)} cannot "
                        "be given with it (only --runs-dir, --cache-dir and --ledger can); start a new run to change options")
    from pipeline.run.stages import resume_pipeline

    defaults = {name: parser.get_default(name) for name in ("cache_dir", "ledger")}
    resume_pipeline(args.runs_dir, args.competition, args.resume,
                    cache_dir=None if args.cache_dir == defaults["cache_dir"] else args.cache_dir,
                    ledger_path=None if args.ledger == defaults["ledger"] else args.ledger)
    return 0
