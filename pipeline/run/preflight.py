"""Checks that run before any training: everything that would otherwise fail only once the model is trained.

Why: a run spends minutes to hours training before it writes the submission, so a bad `--output`, a sample
submission that lists an image nobody has, or a `--weights` file that is not weights must stop it at the
start, with a message that says what to fix. Each problem is a UserError; all problems found are reported
together so that one rerun is enough. Things that only make a run worse (a class with no train image, a tag
that never varies) are warnings.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pandas as pd

from pipeline.plugin.contract import check_items
from pipeline.errors import UserError
from pipeline.files import hdf5_problem
from pipeline.plugin.api import Competition

SHOW = 5  # ids or names quoted in a message


def check_before_training(cfg, competition: Competition, data_dir: Path, train_items: pd.DataFrame,
                          test_items: pd.DataFrame) -> None:
    """Raise UserError naming every problem that would make this run fail after training.

    `cfg` is read by attribute name (data, output, runs_dir, cache_dir, ledger, weights, competition, folds,
    pseudo_folds, pseudo_ratio, image_size; a missing one is not checked); `train_items` and
    `test_items` are the plugin's tables (TRAIN_COLUMNS, TEST_COLUMNS) as listed for this run; they are checked
    against the plugin contract first (a broken table is the plugin's fault, named at once)."""
    check_items(competition, data_dir, train_items, test_items)
    problems = [
        *data_folder_problems(cfg),
        *output_problems(getattr(cfg, "output", None)),
        *folder_problems("--runs-dir", getattr(cfg, "runs_dir", None)),
        *folder_problems("--cache-dir", getattr(cfg, "cache_dir", None)),
        *weights_problems(getattr(cfg, "weights", "none")),
        *label_problems(competition, data_dir, train_items),
        *submission_problems(competition, data_dir, test_items),
        *size_problems(cfg, train_items, test_items),
    ]
    if len(problems) == 1:
        raise UserError(problems[0])
    if problems:
        raise UserError(f"{len(problems)} problems, found before training: "
                        + " ".join(f"({k}) {p}" for k, p in enumerate(problems, 1)))


def written_paths(cfg) -> list[tuple[str, Path, Path]]:
    """(option, its value, a path written because of it) for every place a run writes: --output, the run folders
    and caches (in a COMPETITION folder under --runs-dir and --cache-dir) and the ledger."""
    competition = getattr(cfg, "competition", "") or ""
    paths = []
    if getattr(cfg, "output", None):
        paths.append(("--output", Path(cfg.output), Path(cfg.output)))
    for option, name in (("--runs-dir", "runs_dir"), ("--cache-dir", "cache_dir")):
        folder = getattr(cfg, name, None)
        if folder:
            paths += [(option, Path(folder), Path(folder))] + ([(option, Path(folder), Path(folder) / competition)]
                                                               if competition else [])
    ledger = getattr(cfg, "ledger", None) if getattr(cfg, "record", True) else None  # by default in --runs-dir
    if ledger:
        paths.append(("--ledger", Path(ledger), Path(ledger)))
    return paths


def inside_folder_problems(written: list[tuple[str, Path, Path]], folder: str | os.PathLike, what: str) -> list[str]:
    """A problem for each option that writes into `folder` (the folder itself or anything below it, once symlinks
    and `..` are resolved): however it is spelled, an output may not go into the data that a run reads."""
    root = Path(folder).resolve()
    problems, named = [], set()
    for option, given, path in written:
        resolved = path.resolve()
        if option in named or not (resolved == root or root in resolved.parents):
            continue
        named.add(option)
        puts = "" if path == given else f" puts its files in {path}, which"
        plain = resolved == path.absolute() and root == Path(folder).absolute()
        problems.append(f"{option} {given}{puts} is inside the {what} {folder}"
                        + ("" if plain else f" ({resolved} is in {root})")
                        + f": writing there would change the competition's data (replace a CSV, or add an image the "
                          f"next run reads); pass a path outside {folder}")
    return problems


def data_folder_problems(cfg) -> list[str]:
    """Nothing the run writes may go into its data folder (`--output data/train_v2.csv` replaced the labels)."""
    data = getattr(cfg, "data", None)
    return inside_folder_problems(written_paths(cfg), data, "data folder") if data else []


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


def size_problems(cfg, train_items: pd.DataFrame, test_items: pd.DataFrame) -> list[str]:
    """Options whose bound depends on the data: folds and pseudo-folds the images can fill, and image caches that
    fit on the disk and in memory (the store is N x S x S x 3 bytes; a run holds the train images in memory)."""
    problems = []
    n_train = len(train_items)
    folds = getattr(cfg, "folds", 1)
    if folds > 1 and n_train >= 2 and folds > n_train // 2:
        problems.append(f"--folds {folds} leaves fewer than 2 of the {n_train} train images per fold; use at most "
                        f"{n_train // 2}")
    pseudo_folds = getattr(cfg, "pseudo_folds", 1)
    if pseudo_folds > 1 and getattr(cfg, "pseudo_ratio", 0) > 0 and len(test_items):
        # pipeline.method.pseudo.assign_folds deals each test group out over folds 0, 1, ...: beyond the largest group's
        # size a pseudo-fold has no test image to predict, and its student would be trained for nothing
        sizes = test_items["group"].value_counts()
        if pseudo_folds > int(sizes.max()):
            problems.append(f"--pseudo-folds {pseudo_folds}: the largest test group ({sizes.idxmax()}) has "
                            f"{int(sizes.max())} image(s), so some pseudo-folds would have no test image to predict; "
                            f"use at most {int(sizes.max())}")
    size, cache_dir = getattr(cfg, "image_size", None), getattr(cfg, "cache_dir", None)
    if size and cache_dir:
        problems += image_cache_problems(int(size), Path(cache_dir) / getattr(cfg, "competition", ""), train_items,
                                         test_items)
    return problems


GIB = 2 ** 30
LOUD_CACHE_BYTES = GIB  # an image cache this large is announced before it is written
DISK_SHARE = 0.9  # an image cache may take at most this share of the free disk space (extraction's rule too)


def image_cache_problems(size: int, cache_dir: Path, train_items: pd.DataFrame, test_items: pd.DataFrame) -> list[str]:
    """The image stores at --image-size SIZE (N x SIZE x SIZE x 3 bytes each) must fit in 90% of the disk's free
    space, and the train images in the memory available; a large new cache is announced with its size."""
    per_image = size * size * 3
    stores = {"train": train_items, "test": test_items}
    new = {what: table for what, table in stores.items() if not _store_exists(cache_dir, what, size, table)}
    needed = sum(len(table) for table in new.values()) * per_image
    problems = []
    if needed:
        existing = cache_dir
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        try:
            free = shutil.disk_usage(existing).free
        except OSError:
            free = None
        count = sum(len(table) for table in new.values())
        estimate = f"{count} images x {size} x {size} x 3 bytes = {needed / GIB:.2f} GiB"
        if free is not None and needed > DISK_SHARE * free:
            fits = int((DISK_SHARE * free / (3 * count)) ** 0.5)
            problems.append(f"--image-size {size}: the image cache would take {estimate} in {cache_dir / 'images'}, "
                            f"more than {DISK_SHARE:.0%} of the {free / GIB:.2f} GiB free there; use a smaller "
                            f"--image-size (at most {fits} fits) or a --cache-dir on a disk with more room")
        elif needed >= LOUD_CACHE_BYTES:
            print(f"images: caching them at {size} px takes {estimate} in {cache_dir / 'images'}", flush=True)
    in_memory = len(train_items) * per_image
    available = _memory_available()
    if available is not None and in_memory > available:
        fits = int((available / (3 * max(1, len(train_items)))) ** 0.5)
        problems.append(f"--image-size {size}: a run holds its {len(train_items)} train images in memory, "
                        f"{len(train_items)} x {size} x {size} x 3 bytes = {in_memory / GIB:.2f} GiB, more than the "
                        f"{available / GIB:.2f} GiB of memory available; use a smaller --image-size (at most {fits} fits)")
    return problems


def _store_exists(cache_dir: Path, what: str, size: int, table: pd.DataFrame) -> bool:
    """Whether a complete image store of these very paths at this size is cached (pipeline/data/image_store.py's
    `WHAT-SIZEpx-KEY/manifest.json`): reusing it writes nothing."""
    paths = [str(p) for p in table["path"]]
    for manifest in (cache_dir / "images").glob(f"{what}-{size}px-*/manifest.json"):
        try:
            if json.loads(manifest.read_text()).get("paths") == paths:
                return True
        except (OSError, ValueError, AttributeError):
            continue
    return False


def _memory_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (Linux); None where it cannot be read."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


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
