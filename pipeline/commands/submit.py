"""`python -m pipeline submit`: the whole pipeline for one configuration."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import RunConfig


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Every RunConfig option, with its default (shared by `submit` and `sweep`)."""
    d = RunConfig(competition="", data="")
    parser.add_argument("--competition", required=True, help="plugin name: fisheries, amazon, imagefolder")
    parser.add_argument("--data", required=True, help="the competition's data folder (Kaggle layout)")
    parser.add_argument("--solution", help="Kaggle-format solution.csv (Usage column): print public/private scores")
    parser.add_argument("--metric", help="the competition's metric when it has several (imagefolder: logloss|accuracy)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a plugin setting, e.g. --option public_folder=test-jpg-additional (amazon)")
    parser.add_argument("--backbone", default=d.backbone, help="small-cnn or a keras.applications name, e.g. MobileNetV2")
    parser.add_argument("--weights", default=d.weights, help="imagenet | none | PATH to a .weights.h5 file (pretrained backbones)")
    parser.add_argument("--fine-tune", action="store_true", help="train a pretrained backbone too, instead of caching its features")
    parser.add_argument("--image-size", type=int, default=d.image_size, help="square input size in pixels")
    parser.add_argument("--epochs", type=int, default=d.epochs, help="maximum epochs (early stopping on the holdout)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--learning-rate", type=float, default=d.learning_rate)
    parser.add_argument("--seed", type=int, default=d.seed, help="same seed, same machine: same submission")
    parser.add_argument("--val-fraction", type=float, default=d.val_fraction, help="stratified holdout share, never pseudo-labeled")
    parser.add_argument("--pseudo-ratio", type=float, default=d.pseudo_ratio, help="pseudo-labeled share of the combined training set (0 = teacher only)")
    parser.add_argument("--pseudo-threshold", type=float, default=d.pseudo_threshold, help="minimum confidence of a pseudo-label")
    parser.add_argument("--pseudo-class-cap", type=float, default=d.pseudo_class_cap, help="a class gets at most this multiple of its train share of the pseudo-labels")
    parser.add_argument("--pseudo-groups", default=",".join(d.pseudo_groups), help="which leaderboard groups to pseudo-label: public,private | public | private")
    parser.add_argument("--pseudo-labels", choices=("hard", "soft"), default=d.pseudo_labels, help="0/1 targets or the teacher's probabilities")
    parser.add_argument("--pseudo-folds", type=int, default=d.pseudo_folds, help="K > 1: out-of-fold students (fold k predicted by a student that never saw its pseudo-labels)")
    parser.add_argument("--student-init", choices=("teacher", "scratch"), default=d.student_init,
                        help="start the student from the teacher's weights (fast) or from scratch (Noisy Student style)")
    parser.add_argument("--student-epochs", type=int, default=d.student_epochs, help="maximum student epochs with --student-init teacher")
    parser.add_argument("--on-shift", choices=("warn", "fail", "ignore"), default=d.on_shift, help="what a FAIL of the shift check does")
    parser.add_argument("--runs-dir", default=d.runs_dir, help="where run folders go")
    parser.add_argument("--cache-dir", default=d.cache_dir, help="teacher and feature caches")
    parser.add_argument("--no-ledger", action="store_true", help="do not record the run in submissions/ledger.sqlite")


def config_from_args(args: argparse.Namespace, **overrides) -> RunConfig:
    values = dict(
        competition=args.competition, data=args.data, solution=args.solution, metric=args.metric, backbone=args.backbone,
        weights=args.weights, fine_tune=args.fine_tune, image_size=args.image_size, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed, val_fraction=args.val_fraction,
        pseudo_ratio=args.pseudo_ratio, pseudo_threshold=args.pseudo_threshold, pseudo_class_cap=args.pseudo_class_cap,
        pseudo_groups=tuple(g.strip() for g in args.pseudo_groups.split(",") if g.strip()), pseudo_labels=args.pseudo_labels,
        pseudo_folds=args.pseudo_folds, student_init=args.student_init, student_epochs=args.student_epochs, on_shift=args.on_shift, runs_dir=args.runs_dir, cache_dir=args.cache_dir,
        ledger=None if args.no_ledger else RunConfig(competition="", data="").ledger,
    )
    values.update(overrides)
    return RunConfig(**values, plugin_options=parse_options(args.option))


def parse_options(pairs: list[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--option {pair!r} must look like KEY=VALUE")
        options[key.strip()] = value.strip()
    return options


def register(subparsers) -> None:
    parser = subparsers.add_parser("submit", help="teacher -> pseudo-labels -> student -> validated submission.csv",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_run_options(parser)
    parser.add_argument("--output", help="also write the submission CSV here")
    parser.add_argument("--run-name", help="the run folder's name (default: time, ratio, groups, seed)")
    parser.add_argument("--upload", action="store_true",
                        help="upload the validated submission to Kaggle, wait for its score and record it (needs credentials)")
    parser.add_argument("--message", default="", help="with --upload: the Kaggle description (run id and sha256 are added)")
    parser.add_argument("--poll-timeout", type=float, default=600,
                        help="with --upload: seconds to wait for the score (`make scores` fetches it later)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.message and not args.upload:
        raise ValueError("--message is the Kaggle submission's description; it needs --upload")
    cfg = config_from_args(args, output=args.output, run_name=args.run_name)
    if args.upload:
        from pipeline.kaggle_client import find_credentials

        find_credentials()  # no credentials: fail now, not after training
    from pipeline.run import run_pipeline

    result = run_pipeline(cfg)
    if args.upload:
        from pipeline.kaggle_client import upload_run_submission

        upload_run_submission(cfg.competition, result.run_dir / "submission.csv", Path(cfg.data), result.run_id,
                              args.message, Path(cfg.ledger) if cfg.ledger else None, poll_timeout_s=args.poll_timeout)
    return 0
