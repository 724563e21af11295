"""Planet: Understanding the Amazon from Space (Kaggle 2017): 17 tags per satellite tile, mean F2.

Layout under DATA (as Kaggle ships it):
    train_v2.csv                 image_name,tags   (tags space separated; image_name without .jpg)
    train-jpg/<image_name>.jpg
    test-jpg/test_N.jpg          public leaderboard (by default; see `Amazon.public_folder`)
    test-jpg-additional/file_N.jpg   private leaderboard
    sample_submission_v2.csv     image_name,tags: the ids (and order) a submission must contain

The submission is `image_name,tags`. Probabilities become tags through per-tag thresholds tuned on the
holdout (coordinate search from 0.2, the known recipe), then exactly one weather tag per image.
"""
from __future__ import annotations

import os
import re
from pathlib import Path, PureWindowsPath
from typing import ClassVar

import numpy as np
import pandas as pd
from sklearn.metrics import fbeta_score

from competitions.amazon_tags import (START_THRESHOLD, TAGS, WEATHER, WEATHER_THRESHOLD, binary_tags, decide_tags,
                                     parse_tags, row_f2, search_thresholds)
from pipeline.errors import UserError
from pipeline.files import is_utf8, printable
from pipeline.plugin.api import Competition, Decision, Metric
from pipeline.plugin.registry import register

TRAIN_CSV = "train_v2.csv"
SAMPLE_SUBMISSION = "sample_submission_v2.csv"
TRAIN_DIR = "train-jpg"
TEST_DIRS = ("test-jpg", "test-jpg-additional")
_GET_DATA = "run `make data COMP=amazon` (Kaggle download) or `make demo COMP=amazon` (bundled sample)"


@register
class Amazon(Competition):
    """Multi-label plugin: sigmoid heads, 0/1 targets in `TAGS` order, submissions `image_name,tags`.

    `public_folder` says which test folder counts for the public leaderboard (the other one is private).
    Kaggle never published it; the usual reading is test-jpg = public, test-jpg-additional = private, the
    default here. Change it with `Amazon(public_folder="test-jpg-additional")` or the class attribute.
    """

    name = "amazon"
    multi_label = True
    metrics = (Metric("f2", higher_is_better=True),)
    kaggle_slug = "planet-understanding-the-amazon-from-space"
    kaggle_layout = ("train-jpg", "test-jpg", "test-jpg-additional", "train_v2.csv", "sample_submission_v2.csv")
    public_folder: ClassVar[str] = "test-jpg"
    threshold_sweeps: ClassVar[int] = 3
    flips = "horizontal_and_vertical"  # satellite tiles have no up or left

    def __init__(self, metric: str | None = None, public_folder: str | None = None) -> None:
        super().__init__(metric)
        folder = public_folder or type(self).public_folder
        if folder not in TEST_DIRS:
            raise UserError(f"public_folder must be one of {TEST_DIRS}, got {folder!r}")
        self.public_folder = folder

    # ---- data ------------------------------------------------------------------------------------
    def check_layout(self, data_dir: Path) -> None:
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise UserError(f"data folder {data_dir} does not exist; {_GET_DATA}")
        for name, want_dir in ((TRAIN_CSV, False), (SAMPLE_SUBMISSION, False), (TRAIN_DIR, True),
                               *((d, True) for d in TEST_DIRS)):
            path = data_dir / name
            ok = path.is_dir() if want_dir else path.is_file()
            if not ok:
                kind = "folder" if want_dir else "file"
                raise UserError(f"{path} is missing (expected the Amazon {kind} {name!r} under {data_dir}); {_GET_DATA}")

    def class_names(self, data_dir: Path) -> list[str]:
        return list(TAGS)

    def train_items(self, data_dir: Path) -> pd.DataFrame:
        data_dir = Path(data_dir)
        self.check_layout(data_dir)
        csv_path = data_dir / TRAIN_CSV
        table = _read_id_csv(csv_path, ("image_name", "tags"))
        image_dir = data_dir / TRAIN_DIR
        present = _jpg_stems(image_dir)
        paths, labels = [], []
        for row, (image_name, tags) in enumerate(zip(table["image_name"], table["tags"])):
            where = f"{csv_path} line {row + 2} (image_name {image_name!r})"
            names = parse_tags(tags, where)
            if not names:
                raise UserError(f"{where} has no tags; every image needs at least its weather tag "
                                 f"({', '.join(WEATHER)}): add its tags or delete the row")
            if image_name not in present:
                raise UserError(f"{where}: no image {image_dir / (image_name + '.jpg')}; "
                                 f"add the file or delete the row")
            paths.append(str((image_dir / f"{image_name}.jpg").resolve()))
            labels.append(names)
        return pd.DataFrame({"path": paths, "labels": labels})

    def test_items(self, data_dir: Path) -> pd.DataFrame:
        data_dir = Path(data_dir)
        self.check_layout(data_dir)
        rows = []
        for folder in TEST_DIRS:
            group = "public" if folder == self.public_folder else "private"
            for stem in sorted(_jpg_stems(data_dir / folder, strict=True), key=_natural_key):
                rows.append((str((data_dir / folder / f"{stem}.jpg").resolve()), stem, group))
        items = pd.DataFrame(rows, columns=["path", "id", "group"])
        clash = items["id"][items["id"].duplicated()]
        if len(clash):
            raise UserError(f"test id {clash.iloc[0]!r} is in both {TEST_DIRS[0]} and {TEST_DIRS[1]}; ids must be unique")
        expected = self.expected_ids(data_dir)
        missing = sorted(set(expected) - set(items["id"]), key=_natural_key)
        extra = sorted(set(items["id"]) - set(expected), key=_natural_key)
        if missing or extra:
            raise UserError(
                f"{data_dir / SAMPLE_SUBMISSION} and the test folders disagree: "
                f"{len(missing)} ids have no image (first: {missing[:3]}), {len(extra)} images are not in the "
                f"sample submission (first: {extra[:3]}); re-download with `make data COMP=amazon`"
            )
        return items

    def expected_ids(self, data_dir: Path) -> list[str]:
        table = _read_id_csv(Path(data_dir) / SAMPLE_SUBMISSION, ("image_name", "tags"))
        return table["image_name"].tolist()

    def sample_submission(self, data_dir: Path) -> Path:
        return Path(data_dir) / SAMPLE_SUBMISSION

    # ---- decision: probabilities -> tags -----------------------------------------------------------
    def fit_decision(self, y_true: np.ndarray, y_prob: np.ndarray) -> Decision:
        """Per-tag thresholds maximising samples-F2 on the holdout, by coordinate search from 0.2.

        The search scores what `decide` submits (one-weather rule included) and starts at the flat 0.2,
        so the tuned F2 is never below the flat baseline. Weather columns are decided by the rule, so no
        threshold can change them: theirs is 0.5 (an even chance), read only by pseudo-label selection
        as the point where a weather tag counts as confidently on or off.
        """
        y_true = binary_tags(y_true, "y_true")
        y_prob = _probabilities(y_prob, y_true.shape)
        start = np.array([WEATHER_THRESHOLD if t in WEATHER else START_THRESHOLD for t in TAGS])
        other_cols = [j for j, t in enumerate(TAGS) if t not in WEATHER]
        thresholds = search_thresholds(y_true, y_prob, start, other_cols, self.threshold_sweeps)
        flat = Decision(thresholds=(START_THRESHOLD,) * len(TAGS))
        return Decision(tuple(thresholds), {
            "baseline_f2_at_0.2": self.metric(y_true, self.decide(y_prob, flat)),
            "f2_at_0.2_without_weather_rule": self.metric(y_true, (y_prob >= START_THRESHOLD).astype(np.float32)),
            "tuned_f2": self.metric(y_true, self.decide(y_prob, Decision(tuple(thresholds)))),
        })

    def decide(self, y_prob: np.ndarray, decision: Decision) -> np.ndarray:
        """0/1 tags: probability >= the tag's threshold (0.2 when none was fit), then one weather tag."""
        y_prob = np.asarray(y_prob, dtype=np.float64)
        fitted = decision.threshold_array
        thresholds = np.full(len(TAGS), START_THRESHOLD) if fitted is None else fitted
        if y_prob.ndim != 2 or y_prob.shape[1] != len(TAGS) or thresholds.shape != (len(TAGS),):
            raise ValueError(f"expected probabilities of shape (n, {len(TAGS)}) and {len(TAGS)} thresholds, "
                             f"got {y_prob.shape} and {thresholds.shape}")
        return decide_tags(y_prob, thresholds).astype(np.float32)

    def metric(self, y_true: np.ndarray, y_submitted: np.ndarray) -> float:
        """Mean F2 over images (Kaggle's metric); an image with no correct tag scores 0."""
        y_true = binary_tags(y_true, "y_true")
        y_submitted = binary_tags(y_submitted, "y_submitted (0/1 tags from decide(), not probabilities)")
        if y_true.shape != y_submitted.shape:
            raise ValueError(f"y_true {y_true.shape} and y_submitted {y_submitted.shape} differ in shape")
        return float(fbeta_score(y_true, y_submitted, beta=2, average="samples", zero_division=0))

    def metric_rows(self, y_true: np.ndarray, y_submitted: np.ndarray) -> np.ndarray:
        """Each image's F2 (their mean is `metric`), for the verdict's bootstrap."""
        truth = binary_tags(y_true, "y_true").astype(bool)
        pred = binary_tags(y_submitted, "y_submitted (0/1 tags from decide(), not probabilities)").astype(bool)
        return row_f2((pred & truth).sum(1), (pred & ~truth).sum(1), (~pred & truth).sum(1))

    # ---- submission files ------------------------------------------------------------------------
    def to_submission(self, ids: list[str], y_submitted: np.ndarray, classes: list[str]) -> pd.DataFrame:
        _check_classes(classes)
        y = binary_tags(y_submitted, "y_submitted")
        if y.shape != (len(ids), len(classes)):
            raise ValueError(f"{len(ids)} ids but predictions of shape {y.shape}")
        tags = [" ".join(classes[j] for j in np.flatnonzero(row)) for row in y]
        return pd.DataFrame({"image_name": list(ids), "tags": tags})

    def from_submission(self, submission: pd.DataFrame, classes: list[str]) -> tuple[list[str], np.ndarray]:
        _check_classes(classes)
        _require_columns(submission, ("image_name", "tags"), "submission")
        ids = [str(i) for i in submission["image_name"]]
        y = np.zeros((len(ids), len(classes)), dtype=np.float32)
        index = {name: j for j, name in enumerate(classes)}
        for row, tags in enumerate(submission["tags"]):
            for name in parse_tags(tags, f"submission line {row + 2} (image_name {ids[row]!r})"):
                y[row, index[name]] = 1.0
        return ids, y

    def from_solution(self, solution: pd.DataFrame, classes: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
        _check_classes(classes)
        _require_columns(solution, ("image_name", "tags", "Usage"), "solution")
        ids, y = self.from_submission(solution[["image_name", "tags"]], classes)
        usage = solution["Usage"].astype(str).to_numpy()
        bad = np.flatnonzero(~np.isin(usage, ("Public", "Private", "Ignored")))
        if len(bad):
            row = int(bad[0])
            raise UserError(f"solution line {row + 2} (image_name {ids[row]!r}): Usage {usage[row]!r} "
                             "is not Public, Private or Ignored")
        return ids, y, usage

    # ---- bundled sample --------------------------------------------------------------------------
    def make_sample(self, out_dir: Path, seed: int = 0, small: bool = False, n_train: int = 800, n_public: int = 300,
                    n_private: int = 300) -> None:
        from competitions.samples.amazon import write_sample

        if small:
            n_train, n_public, n_private = 160, 48, 48
        write_sample(Path(out_dir), seed=seed, n_train=n_train, n_public=n_public, n_private=n_private)


# ---- helpers ---------------------------------------------------------------------------------------
def _read_id_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """Read an `image_name,...` CSV as text; image names are untrusted: no paths, no duplicates."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not a readable CSV ({error}); expected columns {','.join(columns)}") from error
    _require_columns(table, columns, str(path))
    for row, name in enumerate(table["image_name"]):
        _check_image_name(name, f"{path} line {row + 2}")
    dup = table["image_name"][table["image_name"].duplicated()]
    if len(dup):
        raise UserError(f"{path}: image_name {dup.iloc[0]!r} appears more than once (line {dup.index[0] + 2}); "
                         "each image must be listed once")
    return table


def _check_image_name(name: str, where: str) -> None:
    # PureWindowsPath splits on both / and \ and knows drives, so any folder part changes .name
    bad = (not name or name in (".", "..") or name != name.strip()
           or PureWindowsPath(name).name != name or "\x00" in name)
    if bad:
        raise UserError(f"{where}: image_name {name!r} is not a plain file name (no folders, '..' or "
                         "absolute paths); expected e.g. 'train_0' for train-jpg/train_0.jpg")


def _jpg_stems(folder: Path, strict: bool = False) -> set[str]:
    """Stems of the .jpg files in `folder`; with `strict`, any other entry (bar hidden files) is an error."""
    stems = set()
    with os.scandir(folder) as entries:
        for entry in entries:
            if strict and not is_utf8(entry.name):  # its id could not be written to the submission CSV
                raise UserError(f"{printable(Path(folder) / entry.name)} has a file name that is not valid UTF-8 (shown "
                                "with its bytes as \\xNN), so its id cannot be written to the submission; rename it "
                                "(test files are <id>.jpg, with the id as in sample_submission_v2.csv)")
            if entry.name.endswith(".jpg") and entry.is_file():
                stems.add(entry.name[: -len(".jpg")])
            elif strict and not entry.name.startswith("."):
                raise UserError(f"{Path(folder) / entry.name} is not a .jpg image; the test folders must hold "
                                 "only <id>.jpg files: move it out")
    return stems


def _natural_key(name: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def _require_columns(table: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise UserError(f"{what} lacks column(s) {missing}; expected header {','.join(columns)}, "
                         f"got {','.join(map(str, table.columns))}")


def _check_classes(classes: list[str]) -> None:
    if list(classes) != list(TAGS):
        raise ValueError(f"Amazon classes must be the 17 tags in sorted order {list(TAGS)}, got {list(classes)}")


def _probabilities(y_prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    y_prob = np.asarray(y_prob, dtype=np.float64)
    if y_prob.shape != shape:
        raise ValueError(f"probabilities of shape {y_prob.shape} do not match y_true {shape}")
    if not np.isfinite(y_prob).all() or (y_prob < 0).any() or (y_prob > 1).any():
        raise ValueError("probabilities must be finite and within [0, 1]")
    return y_prob
