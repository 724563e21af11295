"""`python -m pipeline shift`: how far the public and private test images are from the training images."""
from __future__ import annotations

import argparse
import dataclasses
from datetime import datetime, timezone
from pathlib import Path

from pipeline.run.config import CACHE_DIR, SUBMISSIONS_DIR, RunConfig
from pipeline.data.image_store import build_store
from pipeline.run.preflight import folder_problems, inside_folder_problems
from pipeline.plugin.api import GROUPS
from pipeline.plugin.registry import get_competition
from pipeline.shift.assess import assess_shift
from pipeline.shift.report import ShiftSettings
from pipeline.errors import UserError

_DEFAULTS = ShiftSettings()
_SETTING_OPTIONS = (  # flag, ShiftSettings field, type, help, the largest value (None: any; ShiftSettings checks the rest)
    ("--warn-d", "warn_d", float, "KS statistic D that warns", None),
    ("--fail-d", "fail_d", float, "KS statistic D that fails", None),
    ("--warn-emd", "warn_emd", float, "normalised Wasserstein distance that warns", None),
    ("--fail-emd", "fail_emd", float, "normalised Wasserstein distance that fails", None),
    ("--warn-v", "warn_v", float, "Cramer's V (format, mode) that warns", None),
    ("--fail-v", "fail_v", float, "Cramer's V (format, mode) that fails", None),
    ("--warn-auc", "warn_auc", float, "adversarial AUC that warns", None),
    ("--fail-auc", "fail_auc", float, "adversarial AUC that fails", None),
    ("--alpha", "alpha", float, "family-wise significance of the property tests", None),
    ("--min-images", "min_images", int, "fewer readable images in a set: too few to judge", None),
    # each permutation is a forest fit, and all their label sets are drawn at once: 9999 gives p-values down to 1e-4
    ("--permutations", "n_permutations", int, "permutations of the adversarial AUC test", 9999),
    ("--trees", "n_trees", int, "trees of the adversarial random forest", 10_000),
    ("--workers", "workers", int, "threads measuring images and fitting forests", 256),
)
_IMAGE_SIZE = {f.name: f for f in dataclasses.fields(RunConfig)}["image_size"].metadata["check"]  # submit's bounds
SEED_LIMIT = 2 ** 32  # scikit-learn's random_state


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "shift", help="distribution-shift report: train vs public vs private images",
        description="Measure every image (brightness, colour, contrast, size, format), compare train, public and "
                    "private property by property and with an adversarial classifier, and say OK / WARN / FAIL. "
                    "A verdict needs an effect above the threshold and significance after Bonferroni correction; "
                    "a set with too few images is 'too few to judge'.")
    parser.add_argument("--competition", required=True, help="plugin name, e.g. fisheries")
    parser.add_argument("--data", required=True, type=Path, help="the competition's data folder")
    parser.add_argument("--out", type=Path, help="output folder (default: submissions/<competition>/shift-<UTC time>/)")
    parser.add_argument("--image-size", type=int, default=RunConfig.image_size,
                        help="size of the decoded copies cached with the properties; the same as submit's "
                             "--image-size lets the run reuse them (default: %(default)s)")
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR,
                        help="where the decoded images are cached (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the adversarial classifier and its permutations (default: %(default)s)")
    for flag, name, kind, text, most in _SETTING_OPTIONS:
        parser.add_argument(flag, dest=name, type=kind, default=getattr(_DEFAULTS, name),
                            help=f"{text} (default: %(default)s" + ("" if most is None else f"; at most {most}") + ")")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for flag, name, _, _, most in _SETTING_OPTIONS:
        if most is not None and getattr(args, name) > most:
            raise UserError(f"{flag} must be at most {most}, got {getattr(args, name)}")
    problem = _IMAGE_SIZE(args.image_size)
    if problem:
        raise UserError(f"--image-size {problem}, got {args.image_size} (submit's --image-size has the same bounds)")
    if not 0 <= args.seed < SEED_LIMIT:
        raise UserError(f"--seed must be an integer >= 0 and <= {SEED_LIMIT - 1} (scikit-learn's seeds are below 2**32), "
                        f"got {args.seed}")
    settings = ShiftSettings(**{name: getattr(args, name) for _, name, _, _, _ in _SETTING_OPTIONS})
    competition = get_competition(args.competition)
    competition.check_layout(args.data)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = args.out or SUBMISSIONS_DIR / competition.name / f"shift-{stamp}"
    # checked before any image is decoded
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file; --out is the folder that shift.json and the plots go into (created "
                        f"if missing): pass a folder path such as {out_dir.with_name(out_dir.name + '-shift')}")
    problems = [*folder_problems("--out", out_dir), *folder_problems("--cache-dir", args.cache_dir),
                *inside_folder_problems([("--out", out_dir, out_dir), ("--cache-dir", args.cache_dir, args.cache_dir)],
                                        args.data, "data folder")]
    if problems:
        raise UserError("; ".join(problems))
    test = competition.test_items(args.data)
    strange = sorted(set(test["group"]) - set(GROUPS))
    if strange:
        raise UserError(f"{competition.name}: test items have groups {strange}; expected only {', '.join(GROUPS)}")
    # The same two stores as a run (train, and every test image in plugin order): one decode serves both.
    train = build_store(competition.train_items(args.data)["path"].tolist(), args.image_size, args.cache_dir, "train")
    test_store = build_store(test["path"].tolist(), args.image_size, args.cache_dir, "test")
    sets = {"train": train.property_table()}
    sets.update({group: test_store.property_table(test.loc[test["group"] == group, "path"].tolist()) for group in GROUPS})
    report = assess_shift(sets, out_dir, settings, seed=args.seed)
    print(report.table())
    print(f"\nwrote {out_dir / 'shift.json'} and {len(report.plots)} plots: {', '.join(p.name for p in report.plots)}")
    return 0
