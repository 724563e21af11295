"""The first stage of a run: list the competition's items, decode each image once (the image store), set the
unreadable ones aside, and split the labeled ones into folds."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data import split
from pipeline.run.config import RunConfig
from pipeline.errors import UserError
from pipeline.plugin.api import GROUPS, Competition, target_matrix


@dataclass
class Items:
    """Everything the run learns from, after the unreadable images are set aside."""

    classes: list[str]
    train: pd.DataFrame  # readable train items: path, labels
    y: np.ndarray  # (n_train, C) targets
    fold: np.ndarray  # per train row: which model scores it (split.py)
    train_x: np.ndarray  # uint8 images (n_train, S, S, 3) in memory, or embeddings in feature-cache mode
    test: pd.DataFrame  # every test item (path, id, group) in plugin order
    readable_test: np.ndarray  # bool per row of `test`
    test_source: np.ndarray  # the test store's memory-mapped pixels (or embeddings): rows for every readable item
    test_rows: np.ndarray  # row in test_source of each readable test item, in `test` order
    unreadable: dict[str, dict[str, str]]  # "train"/"test" -> {path: why}
    fingerprint: str
    stores: dict  # "train"/"test" -> ImageStore (the shift check reads their properties)
    domain: np.ndarray | None = None  # per readable test item: its adaptation set's name, "" = none (--adapt-bn)

    @property
    def adapted(self) -> tuple[str, ...]:
        """The adaptation sets' names, in item order: the test items predicted with their own batch-norm statistics."""
        return () if self.domain is None else tuple(d for d in dict.fromkeys(self.domain) if d)

    @property
    def test_groups(self) -> np.ndarray:
        return self.test["group"].to_numpy(dtype=str)[self.readable_test]

    @property
    def test_ids(self) -> np.ndarray:
        return self.test["id"].to_numpy(dtype=str)[self.readable_test]

    def predict_test(self, model, spec, index: np.ndarray | None = None) -> np.ndarray:
        """A model's probabilities of the readable test items (all, or these indices among them), group by group;
        the items of an adaptation set (`domain`, --adapt-bn) with batch-norm statistics of their own."""
        from pipeline.model import train

        index = np.arange(len(self.test_rows)) if index is None else np.asarray(index, dtype=np.int64)
        groups = self.test_groups[index]
        domain = np.full(len(self.test_rows), "", dtype=object) if self.domain is None else self.domain
        sets = groups.astype(object) + "\n" + domain[index]
        probs = np.zeros((len(index), model.output_shape[-1]), np.float32)
        for name in sorted(set(sets)):  # by group, then by adaptation set within it
            mine = sets == name
            adapted = name.split("\n", 1)[1] != ""
            probs[mine] = train.predict(model, self.test_source, self.test_rows[index[mine]], spec, adapt=adapted)
        return probs

    def property_tables(self) -> dict[str, pd.DataFrame]:
        """The image properties the stores measured while decoding (pipeline/data/image_properties.py): "train" (every
        readable train image) and each test group's readable items, in item order."""
        test = self.test[self.readable_test]
        tables = {"train": self.stores["train"].property_table().table}
        tables.update({g: self.stores["test"].property_table(test.loc[test["group"] == g, "path"].tolist()).table
                       for g in GROUPS})
        return tables

    def test_x(self, index: np.ndarray) -> np.ndarray:
        """In-memory images (or embeddings) of readable test items by their index among the readable ones."""
        rows = self.test_rows[np.asarray(index, dtype=np.int64)]
        if self.test_source.dtype == np.uint8:
            from pipeline.data.image_store import read_rows

            return read_rows(self.test_source, rows)
        return np.asarray(self.test_source[rows])


def load_items(cfg: RunConfig, competition: Competition, data_dir: Path, train: pd.DataFrame, test: pd.DataFrame) -> Items:
    """Decode once and split the plugin's listed items (`train_items`, `test_items`): bad train images are
    skipped, bad test images kept for prior rows."""
    from pipeline.data import streams as data
    from pipeline.data.image_store import build_store

    classes = competition.class_names(data_dir)
    if test.empty:
        raise UserError(f"no test images found under {data_dir}; the submission needs them")
    counts = ", ".join(f"{g} {n}" for g, n in test["group"].value_counts().sort_index().items())
    print(f"{len(train)} train and {len(test)} test images ({counts})", flush=True)
    cache_dir = Path(cfg.cache_dir) / cfg.competition
    stores = {"train": build_store(train["path"].tolist(), cfg.image_size, cache_dir, "train"),
              "test": build_store(test["path"].tolist(), cfg.image_size, cache_dir, "test")}
    for path, problem in stores["train"].problems.items():
        print(f"WARNING: skipping unreadable train image {path}: {problem}", file=sys.stderr, flush=True)
    for path, problem in stores["test"].problems.items():
        print(f"WARNING: test image {path} is unreadable ({problem}); its submission row gets the class prior",
              file=sys.stderr, flush=True)
    readable_train = stores["train"].readable
    train = train[readable_train].reset_index(drop=True)
    readable_test = stores["test"].readable.copy()
    y = target_matrix(train["labels"], classes, source=lambda row: f"train image {train['path'][row]}")
    fold = split.assign_folds(y, cfg.folds, cfg.val_fraction, cfg.seed)
    fingerprint = data.fingerprint(stores["train"].paths + stores["test"].paths,
                                   stores["train"].file_digests + stores["test"].file_digests)
    train_rows = np.flatnonzero(readable_train)
    test_rows = np.flatnonzero(readable_test)
    train_x = stores["train"].read(train_rows)
    test_source = stores["test"].pixels
    if cfg.backbone not in ("resnet", "small-cnn") and not cfg.fine_tune:
        from pipeline.cache.features import get_or_embed

        paths = train["path"].tolist() + test["path"].to_numpy(dtype=str)[readable_test].tolist()
        pixels = np.concatenate([train_x, stores["test"].read(test_rows)])
        features = get_or_embed(cfg, paths, pixels, fingerprint)
        train_x, test_source = np.asarray(features[: len(train)]), np.asarray(features[len(train):])
        test_rows = np.arange(len(test_source))
    return Items(classes, train, y, fold, train_x, test, readable_test, test_source, test_rows,
                 {"train": dict(stores["train"].problems), "test": dict(stores["test"].problems)}, fingerprint, stores)


def group_sizes(test: pd.DataFrame) -> dict[str, int]:
    return {g: int((test["group"] == g).sum()) for g in GROUPS}
