"""Disk caches keyed by everything that determines their content: the teacher's predictions, the
embeddings of a frozen pretrained backbone, and the shift check's statistics. Changing only pseudo-label
settings never retrains the teacher nor re-measures the images."""
from __future__ import annotations

import hashlib
import dataclasses
import json
import pickle
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import RunConfig
from pipeline.files import sha256_of

CACHE_VERSION = 3  # bump when training or prediction code changes what a cached teacher would contain
WEIGHTS = "teacher.weights.h5"


@dataclass
class Teacher:
    holdout_probs: np.ndarray
    test_probs: np.ndarray
    info: dict
    seconds: float
    cache_status: str  # "hit" or "miss"
    weights: Path  # the trained teacher's weights (students can start from them)


def _key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def _lines_digest(lines) -> str:
    """Order matters: feature rows and shift sets follow the path order."""
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _weights_identity(cfg: RunConfig) -> str:
    return cfg.weights if cfg.weights in ("imagenet", "none") else sha256_of(Path(cfg.weights))


def teacher_key(cfg: RunConfig, spec, fingerprint: str) -> str:
    return _key({
        "version": CACHE_VERSION, "data": fingerprint, "competition": cfg.competition, "backbone": cfg.backbone,
        "weights": _weights_identity(cfg), "fine_tune": cfg.fine_tune, "image_size": cfg.image_size,
        "epochs": cfg.epochs, "batch_size": cfg.batch_size, "learning_rate": cfg.learning_rate, "seed": cfg.seed,
        "val_fraction": cfg.val_fraction, "n_classes": spec.n_classes, "multi_label": spec.multi_label,
    })


def get_or_train(cfg: RunConfig, spec, items) -> Teacher:
    """The cached teacher's holdout and test predictions, or train it now and cache them."""
    from pipeline import train

    folder = Path(cfg.cache_dir) / cfg.competition / "teachers" / teacher_key(cfg, spec, items.fingerprint)
    if (folder / "info.json").is_file():
        print(f"teacher: cached in {folder} (delete it to retrain)", flush=True)
        info = json.loads((folder / "info.json").read_text())
        return Teacher(np.load(folder / "holdout_probs.npy"), np.load(folder / "test_probs.npy"), info, 0.0, "hit", folder / WEIGHTS)
    started = time.perf_counter()
    model, info = train.fit(spec, "teacher", [(items.x_train, items.y_train)], items.x_holdout, items.y_holdout, cfg.seed, cfg.epochs)
    holdout_probs = train.predict(model, items.x_holdout, cfg)
    test_probs = train.predict(model, items.x_test, cfg)
    seconds = time.perf_counter() - started
    with _staging(folder) as staging:
        np.save(staging / "holdout_probs.npy", holdout_probs)
        np.save(staging / "test_probs.npy", test_probs)
        model.save_weights(staging / WEIGHTS)
        (staging / "info.json").write_text(json.dumps({**info, "train_seconds": round(seconds, 2)}, indent=2))
    return Teacher(holdout_probs, test_probs, info, seconds, "miss", folder / WEIGHTS)


def get_or_embed(cfg: RunConfig, paths: np.ndarray, fingerprint: str) -> np.ndarray:
    """Embeddings of every image by the frozen backbone, computed once per data/backbone/weights/size."""
    from pipeline import models, train

    key = _key({"version": CACHE_VERSION, "data": fingerprint, "paths": _lines_digest(paths),
                "backbone": cfg.backbone, "weights": _weights_identity(cfg), "image_size": cfg.image_size})
    folder = Path(cfg.cache_dir) / cfg.competition / "features" / key
    if (folder / "features.npy").is_file():
        print(f"features: cached in {folder}", flush=True)
        return np.load(folder / "features.npy", mmap_mode="r")
    backbone = models.pretrained_backbone(cfg.backbone, cfg.image_size, cfg.weights)
    features = train.embed(backbone, paths, cfg, "train+test")
    with _staging(folder) as staging:
        np.save(staging / "features.npy", features)
    return features


def get_or_assess_shift(cfg: RunConfig, sets: dict[str, list[str]], fingerprint: str, out_dir: Path, settings):
    """The shift report for these images and settings, from the cache when they have not changed.

    The cache holds our own pickled report (statistics and property tables); plots are redrawn into out_dir."""
    from pipeline.shift import assess_shift, write_outputs

    key = _key({"version": CACHE_VERSION, "data": fingerprint, "sets": {k: _lines_digest(v) for k, v in sets.items()},
                "settings": dataclasses.asdict(settings), "seed": cfg.seed})
    cached = Path(cfg.cache_dir) / cfg.competition / "shift" / key / "report.pickle"
    if cached.is_file():
        print(f"shift: cached in {cached.parent}", flush=True)
        report = pickle.loads(cached.read_bytes())
        write_outputs(report, out_dir)
        return report
    report = assess_shift(sets, out_dir, settings, seed=cfg.seed)
    with _staging(cached.parent) as staging:
        (staging / "report.pickle").write_bytes(pickle.dumps(report))
    return report


class _staging:
    """A temporary sibling folder renamed into place only when complete, so a crash leaves no half cache."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __enter__(self) -> Path:
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.", dir=self.folder.parent))
        return self.tmp

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None and not self.folder.exists():
            self.tmp.rename(self.folder)
        shutil.rmtree(self.tmp, ignore_errors=True)
