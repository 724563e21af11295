"""Cache of the teacher: its K models' weights and predictions, keyed by everything that determines them, so that
changing only pseudo-label or student settings never retrains it.

Written and checked by pipeline/cache/stage.py (manifest with sha256 per file): a truncated or altered entry is
reported, removed and trained again instead of crashing every later run. Nothing is pickled: JSON, .npy read
with allow_pickle=False, and Keras .weights.h5."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.cache import entries as cache
from pipeline.cache.stage import array_digest, cache_key, folder_of, get_or_compute, lines_digest, read_entry, weights_identity
from pipeline.run.config import RunConfig, teacher_settings
from pipeline.files import hdf5_problem

# bump when training or prediction code changes what a cached teacher would contain
# (6: the learning-rate schedule without a graph branch, float-level changes; 7: augmentation as one warp;
# 8: the resnet shortcut subsamples before its 1x1 convolution, float-level changes)
CACHE_VERSION = 8
TEACHER_FILES = ("scored_probs.npy", "test_probs.npy", "info.json")


@dataclass
class Teacher:
    """The teacher's K models (one per fold; one with a single holdout) and their predictions."""

    scored_probs: np.ndarray  # (n_train, C): each labeled row predicted by the model that never trained on it; NaN if none
    test_probs: np.ndarray  # (K, n_test, C): each model's test predictions (the teacher's are their mean)
    info: dict
    seconds: float
    cache_status: str  # "hit" or "miss"
    weights: list[Path]  # each model's weights (its students start from them)

    @property
    def mean_test_probs(self) -> np.ndarray:
        return self.test_probs.mean(axis=0)


def weights_name(model: int) -> str:
    return f"teacher_{model}.weights.h5"


def teacher_key(cfg: RunConfig, spec, items) -> str:
    """Everything that determines the teacher: the images, their labels and split, and every option marked
    `teacher` in RunConfig's table (so a new option cannot be left out), and XLA where --jit turns it on.

    XLA rounds differently, so its models are other models; a run resolves --jit once for all its fits, and the
    students' and controls' keys hold this key, so they follow. Without XLA the key is what it was before --jit."""
    from pipeline.model.spec import TrainSettings
    from pipeline.model.train import xla_enabled

    parts = {
        "version": CACHE_VERSION, "data": items.fingerprint, "labels": array_digest(items.y),
        "split": array_digest(items.fold), "settings": teacher_settings(cfg), "weights": weights_identity(cfg.weights),
        "n_classes": spec.n_classes, "multi_label": spec.multi_label, "flips": spec.flips,
        "adapted": list(items.adapted),
    }
    return cache_key({**parts, "xla": True} if xla_enabled(TrainSettings.of(cfg)) else parts)


def worker_data_key(cfg: RunConfig, spec, items) -> str:
    """What every worker of a multi-worker run must share, by content: teacher_key's file fingerprint holds paths
    and modification times, which differ between machines' copies of the same data, and so does a --weights path.
    The decoded pixels, not a frozen backbone's embeddings: those can differ in their last bits between devices."""
    settings = {**teacher_settings(cfg), "weights": weights_identity(cfg.weights)}
    train_store = items.stores["train"]
    pixels = items.train_x if items.train_x.dtype == np.uint8 else train_store.read(np.flatnonzero(train_store.readable))
    return cache_key({
        "pixels": array_digest(pixels), "labels": array_digest(items.y), "split": array_digest(items.fold),
        "test": lines_digest(items.test["id"].astype(str)), "readable_test": array_digest(items.readable_test),
        "settings": settings, "n_classes": spec.n_classes, "multi_label": spec.multi_label, "flips": spec.flips,
    })


def get_or_train(cfg: RunConfig, spec, items) -> Teacher:
    """The cached teacher, or train its K models now (each on every labeled row outside its fold) and cache them."""
    from pipeline.data import split
    from pipeline.model import distribute
    from pipeline.model.family import fit_teacher

    folder = folder_of(cfg, "teachers", teacher_key(cfg, spec, items))
    n_models = split.n_models(items.fold)
    if distribute.is_multiworker():  # before the first fit: its steps come from the number of training images
        distribute.check_workers_agree("training images, labels, test ids or teacher options", worker_data_key(cfg, spec, items),
                                       "give every worker the same copy of the data and the same command (only "
                                       "TF_CONFIG's task index differs)")

    def train() -> tuple[Teacher, dict]:
        scored, models, seconds = fit_teacher(spec, items, cfg.epochs, cfg.augment, cfg.seed)
        test_probs = np.stack([m.test_probs for m in models])
        info = {"models": [m.info for m in models], "train_seconds": round(seconds, 2)}
        files = {
            "scored_probs.npy": lambda path: np.save(path, scored, allow_pickle=False),
            "test_probs.npy": lambda path: np.save(path, test_probs, allow_pickle=False),
            "info.json": lambda path: path.write_text(json.dumps(info, indent=2)),
        }
        for m, fitted in enumerate(models):
            files[weights_name(m)] = lambda path, model=fitted.model: model.save_weights(path)
        return Teacher(scored, test_probs, info, seconds, "miss", _weight_paths(folder, n_models)), files

    # Across machines every worker must run the same fits (their gradients meet in collective ops): a hit on one
    # machine's cache and a miss on another's would leave the others waiting forever, so workers always train
    # (the chief still caches the result for later runs).
    teacher, _ = get_or_compute(folder, _teacher_files(n_models),
                                lambda f: _load(f, n_models, len(items.y), len(items.test_rows), spec.n_classes), train,
                                f"teacher: cached in {folder} (delete it to retrain)", read=not distribute.is_multiworker())
    return teacher


def load_teacher(folder: Path, n_models: int, n_train: int, n_test: int, n_classes: int) -> Teacher | None:
    """The teacher cached in `folder`, or None (a miss, or a damaged entry: warned about and removed)."""
    return read_entry(folder, _teacher_files(n_models), lambda f: _load(f, n_models, n_train, n_test, n_classes))


def _load(folder: Path, n_models: int, n_train: int, n_test: int, n_classes: int) -> Teacher:
    """Beyond the manifest, the arrays must have the shapes this run expects and the weights must be readable HDF5
    files, so a student never starts from weights that fail to load."""
    info = cache.load_info(folder / "info.json")
    scored = cache.load_array(folder / "scored_probs.npy", (n_train, n_classes))
    test_probs = cache.load_array(folder / "test_probs.npy", (n_models, n_test, n_classes))
    for m in range(n_models):
        problem = hdf5_problem(folder / weights_name(m))
        if problem:
            raise ValueError(f"{weights_name(m)} {problem}")
    return Teacher(scored, test_probs, info, 0.0, "hit", _weight_paths(folder, n_models))


def _teacher_files(n_models: int) -> tuple[str, ...]:
    return TEACHER_FILES + tuple(weights_name(m) for m in range(n_models))


def _weight_paths(folder: Path, n_models: int) -> list[Path]:
    return [folder / weights_name(m) for m in range(n_models)]
