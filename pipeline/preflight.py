"""Checks that run before any training: everything that would otherwise fail only once the model is trained.

Why: a run spends minutes to hours training before it writes the submission, so a bad `--output`, a sample
submission that lists an image nobody has, or a `--weights` file that is not weights must stop it at the
start, with a message that says what to fix. Each problem is a UserError; all problems found are reported
together so that one rerun is enough. Things that only make a run worse (a class with no train image, a tag
that never varies) are warnings.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd

from pipeline.contract import check_items
from pipeline.errors import UserError
from pipeline.files import hdf5_problem
from pipeline.registry import Competition

SHOW = 5  # ids or names quoted in a message


def check_before_training(cfg, competition: Competition, data_dir: Path, train_items: pd.DataFrame,
                          test_items: pd.DataFrame) -> None:
    """Raise UserError naming every problem that would make this run fail after training.

    `cfg` is read by attribute name (output, runs_dir, cache_dir, weights, competition); `train_items` and
    `test_items` are the plugin's tables (TRAIN_COLUMNS, TEST_COLUMNS) as listed for this run; they are checked
    against the plugin contract first (a broken table is the plugin's fault, named at once)."""
    check_items(competition, data_dir, train_items, test_items)
    problems = [
        *output_problems(getattr(cfg, "output", None)),
        *folder_problems("--runs-dir", getattr(cfg, "runs_dir", None)),
        *folder_problems("--cache-dir", getattr(cfg, "cache_dir", None)),
        *weights_problems(getattr(cfg, "weights", "none")),
        *label_problems(competition, data_dir, train_items),
        *submission_problems(competition, data_dir, test_items),
    ]
    if len(problems) == 1:
        raise UserError(problems[0])
    if problems:
        raise UserError(f"{len(problems)} problems, found before training: "
                        + " ".join(f"({k}) {p}" for k, p in enumerate(problems, 1)))


def output_problems(output: str | os.PathLike | None) -> list[str]:
    """`--output FILE`: not a folder, not a device, and its folder exists and is writable."""
    if not output:
        return []
    path = Path(output)
    if path.is_dir():
        return [f"--output {path} is a folder; pass a file path such as {path / 'submission.csv'}"]
    if path.exists() and not path.is_file():
        return [f"--output {path} exists and is not a regular file; pass a path for the submission CSV"]
    parent = path.parent
    if not parent.is_dir():
        what = "is a file, not a folder" if parent.exists() else "does not exist"
        return [f"--output {path}: its folder {parent} {what}; create the folder or pass another path"]
    if not os.access(parent, os.W_OK | os.X_OK):
        return [f"--output {path}: its folder {parent} is not writable; pass a path in a folder you can write"]
    return []


def folder_problems(option: str, folder: str | os.PathLike | None) -> list[str]:
    """A folder the run creates and writes (`--runs-dir`, `--cache-dir`): not a file, nor below a file, writable."""
    if not folder:
        return []
    path = Path(folder)
    if path.exists() and not path.is_dir():
        return [f"{option} {path} is a file, not a folder; pass a folder path (it is created if missing)"]
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return [f"{option} {path} cannot be created: {existing} is a file; pass another folder"]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [f"{option} {path}: {existing} is not writable; pass a folder you can write"]
    return []


def weights_problems(weights: str | None) -> list[str]:
    """`--weights PATH` must be a readable Keras weights file (HDF5, named .h5 or .weights.h5)."""
    if weights in (None, "", "imagenet", "none"):
        return []
    path = Path(weights)
    hint = "pass a Keras weights file saved with model.save_weights (NAME.weights.h5), or imagenet or none"
    if path.is_dir():
        return [f"--weights {path} is a folder; {hint}"]
    if not path.is_file():
        return [f"--weights {path} does not exist; {hint}"]
    if not path.name.endswith(".h5"):
        return [f"--weights {path} is not named .h5 or .weights.h5, which Keras requires; {hint}"]
    problem = hdf5_problem(path)
    return [f"--weights {path} {problem}; {hint}"] if problem else []


def label_problems(competition: Competition, data_dir: Path, train_items: pd.DataFrame) -> list[str]:
    """Train labels a model can learn from: two classes at least, a tag that varies at least (multi-label)."""
    if len(train_items) < 2:
        return [f"train under {data_dir} has {len(train_items)} image(s); a teacher and its holdout need more "
                "(dozens per class at least)"]
    counts = pd.Series([name for labels in train_items["labels"] for name in labels]).value_counts()
    classes = competition.class_names(data_dir)
    if not competition.multi_label:
        if len(counts) < 2:
            only = ", ".join(f"{name} ({n} images)" for name, n in counts.items()) or "none"
            return [f"train under {data_dir} has images of one class only: {only}; a classifier needs at least "
                    f"two classes: add the images of the others ({', '.join(c for c in classes if c not in counts)})"]
        absent = [c for c in classes if c not in counts]
        if absent:
            _warn(f"class(es) {', '.join(absent)} have no train image: the model cannot learn to predict them")
        return []
    never = [c for c in classes if c not in counts]
    always = [c for c in classes if counts.get(c, 0) == len(train_items)]
    if len(never) + len(always) == len(classes):
        return [f"no tag of train under {data_dir} varies ({len(always)} in every image, {len(never)} in none): "
                "nothing can be learned; the train set needs images with and without each tag"]
    for tags, where in ((never, "no"), (always, "every")):
        if tags:
            _warn(f"tag(s) {', '.join(tags)} are in {where} train image: not learnable, predicted constant")
    return []


def submission_problems(competition: Competition, data_dir: Path, test_items: pd.DataFrame) -> list[str]:
    """Every id the sample submission expects has a test image, each id once; otherwise the run would fail
    when it writes the submission, after training."""
    if test_items.empty:
        return [f"no test images found under {data_dir}; the submission needs them"]
    expected = competition.expected_ids(data_dir)
    if expected is None:
        return []
    source = competition.sample_submission(data_dir) or "the sample submission"
    expected_series = pd.Series(expected, dtype=object)
    duplicated = expected_series[expected_series.duplicated()].unique().tolist()
    if duplicated:
        return [f"{source} lists {len(duplicated)} id(s) more than once, e.g. {duplicated[:SHOW]}; each id must "
                "appear once (re-download it from Kaggle)"]
    have = set(test_items["id"])
    missing = [i for i in expected if i not in have]
    if missing:
        return [f"{source} lists {len(missing)} id(s) with no test image under {data_dir}, e.g. {missing[:SHOW]}; "
                "add the missing images (re-download the test folders) or use the sample submission that came "
                "with them"]
    extra = sorted(have - set(expected))
    if extra:
        _warn(f"{len(extra)} test image(s) are not in {source} and will not be submitted, e.g. {extra[:SHOW]}")
    return []


def _warn(message: str) -> None:
    print(f"WARNING: {message}", file=sys.stderr, flush=True)
