"""Disk caches keyed by everything that determines their content: the teacher's predictions, the
embeddings of a frozen pretrained backbone, and the shift check's statistics. Changing only pseudo-label
settings never retrains the teacher nor re-measures the images.

Every entry is written and checked by pipeline/cache/entries.py (manifest with sha256 per file): a truncated or
altered entry is reported, removed and recomputed instead of crashing every later run. Nothing is pickled:
JSON, .npy/.npz read with allow_pickle=False, and Keras .weights.h5."""
from __future__ import annotations

import hashlib
import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.cache import entries as cache
from pipeline.run.config import RunConfig, teacher_seed, teacher_settings
from pipeline.files import hdf5_problem, json_plain, sha256_of, write_bytes_atomic

# bump when training or prediction code changes what a cached teacher would contain
# (6: the learning-rate schedule without a graph branch, float-level changes; 7: augmentation as one warp;
# 8: the resnet shortcut subsamples before its 1x1 convolution, float-level changes)
CACHE_VERSION = 8
TEACHER_FILES = ("scored_probs.npy", "test_probs.npy", "info.json")
FEATURE_FILES = ("features.npy",)
SHIFT_FILES = ("report.json", "tables.npz")


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


def _key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _lines_digest(lines) -> str:
    """Order matters: feature rows and shift sets follow the path order."""
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def array_digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _weights_identity(cfg: RunConfig) -> str:
    return cfg.weights if cfg.weights in ("imagenet", "none") else sha256_of(Path(cfg.weights))


def teacher_key(cfg: RunConfig, spec, items) -> str:
    """Everything that determines the teacher: the images, their labels and split, and every option marked
    `teacher` in RunConfig's table (so a new option cannot be left out)."""
    return _key({
        "version": CACHE_VERSION, "data": items.fingerprint, "labels": array_digest(items.y),
        "split": array_digest(items.fold), "settings": teacher_settings(cfg), "weights": _weights_identity(cfg),
        "n_classes": spec.n_classes, "multi_label": spec.multi_label, "flips": spec.flips,
        "adapted": list(items.adapted),
    })


def worker_data_key(cfg: RunConfig, spec, items) -> str:
    """What every worker of a multi-worker run must share, by content: teacher_key's file fingerprint holds paths
    and modification times, which differ between machines' copies of the same data, and so does a --weights path.
    The decoded pixels, not a frozen backbone's embeddings: those can differ in their last bits between devices."""
    settings = {**teacher_settings(cfg), "weights": _weights_identity(cfg)}
    train_store = items.stores["train"]
    pixels = items.train_x if items.train_x.dtype == np.uint8 else train_store.read(np.flatnonzero(train_store.readable))
    return _key({
        "pixels": array_digest(pixels), "labels": array_digest(items.y), "split": array_digest(items.fold),
        "test": _lines_digest(items.test["id"].astype(str)), "readable_test": array_digest(items.readable_test),
        "settings": settings, "n_classes": spec.n_classes, "multi_label": spec.multi_label, "flips": spec.flips,
    })


def get_or_train(cfg: RunConfig, spec, items) -> Teacher:
    """The cached teacher, or train its K models now (each on every labeled row outside its fold) and cache them."""
    from pipeline.model import distribute
    from pipeline.data import split
    from pipeline.model import train

    folder = Path(cfg.cache_dir) / cfg.competition / "teachers" / teacher_key(cfg, spec, items)
    n_models = split.n_models(items.fold)
    if distribute.is_multiworker():  # before the first fit: its steps come from the number of training images
        distribute.check_workers_agree("training images, labels, test ids or teacher options", worker_data_key(cfg, spec, items),
                                       "give every worker the same copy of the data and the same command (only "
                                       "TF_CONFIG's task index differs)")
    # Across machines every worker must run the same fits (their gradients meet in collective ops): a hit on one
    # machine's cache and a miss on another's would leave the others waiting forever, so workers always train
    # (the chief still caches the result for later runs).
    cached = None if distribute.is_multiworker() else load_teacher(folder, n_models, len(items.y), len(items.test_rows),
                                                                   spec.n_classes)
    if cached is not None:
        print(f"teacher: cached in {folder} (delete it to retrain)", flush=True)
        return cached
    started = time.perf_counter()
    scored = np.full((len(items.y), spec.n_classes), np.nan, dtype=np.float32)
    test_probs, infos, models = [], [], []
    for m in range(n_models):
        fit_rows, scored_rows = np.flatnonzero(items.fold != m), np.flatnonzero(items.fold == m)
        name = "teacher" if n_models == 1 else f"teacher {m + 1}/{n_models}"
        model, info = train.fit(spec, name, items.train_x[fit_rows], items.y[fit_rows], spec.steps(len(fit_rows), cfg.epochs),
                                teacher_seed(cfg.seed, m), cfg.augment)
        scored[scored_rows] = train.predict(model, items.train_x, scored_rows, spec)
        test_probs.append(items.predict_test(model, spec))
        infos.append(info)
        models.append(model)
    test_probs = np.stack(test_probs)
    seconds = time.perf_counter() - started
    info = {"models": infos, "train_seconds": round(seconds, 2)}
    files = {
        "scored_probs.npy": lambda path: np.save(path, scored, allow_pickle=False),
        "test_probs.npy": lambda path: np.save(path, test_probs, allow_pickle=False),
        "info.json": lambda path: path.write_text(json.dumps(info, indent=2)),
    }
    for m, model in enumerate(models):
        files[weights_name(m)] = lambda path, model=model: model.save_weights(path)
    cache.write_entry(folder, files)
    return Teacher(scored, test_probs, info, seconds, "miss", [folder / weights_name(m) for m in range(n_models)])


def load_teacher(folder: Path, n_models: int, n_train: int, n_test: int, n_classes: int) -> Teacher | None:
    """The teacher cached in `folder`, or None (a miss, or a damaged entry: warned about and removed).

    Beyond the manifest, the arrays must have the shapes this run expects and the weights must be readable
    HDF5 files, so a student never starts from weights that fail to load."""
    names = TEACHER_FILES + tuple(weights_name(m) for m in range(n_models))
    if cache.load_entry(folder, names) is None:
        return None
    try:
        info = cache.load_info(folder / "info.json")
        scored = cache.load_array(folder / "scored_probs.npy", (n_train, n_classes))
        test_probs = cache.load_array(folder / "test_probs.npy", (n_models, n_test, n_classes))
        for m in range(n_models):
            problem = hdf5_problem(folder / weights_name(m))
            if problem:
                raise ValueError(f"{weights_name(m)} {problem}")
    except cache.LOAD_ERRORS as error:
        cache.discard(folder, f"{type(error).__name__}: {error}")
        return None
    return Teacher(scored, test_probs, info, 0.0, "hit", [folder / weights_name(m) for m in range(n_models)])


def get_or_embed(cfg: RunConfig, paths: list[str], pixels: np.ndarray, fingerprint: str) -> np.ndarray:
    """Embeddings of every image (rows of `pixels`, named by `paths`) by the frozen backbone, computed once
    per data/backbone/weights/size."""
    from pipeline.model import backbones as models
    from pipeline.model import train

    key = _key({"version": CACHE_VERSION, "data": fingerprint, "paths": _lines_digest(paths),
                "backbone": cfg.backbone, "weights": _weights_identity(cfg), "image_size": cfg.image_size})
    folder = Path(cfg.cache_dir) / cfg.competition / "features" / key
    if cache.load_entry(folder, FEATURE_FILES) is not None:
        try:
            features = np.load(folder / "features.npy", mmap_mode="r", allow_pickle=False)
            if features.ndim != 2 or len(features) != len(paths):
                raise ValueError(f"features.npy has shape {features.shape}, expected ({len(paths)}, n)")
        except cache.LOAD_ERRORS as error:
            cache.discard(folder, f"{type(error).__name__}: {error}")
        else:
            print(f"features: cached in {folder}", flush=True)
            return features
    backbone = models.pretrained_backbone(cfg.backbone, cfg.image_size, cfg.weights)
    features = train.embed(backbone, pixels, cfg.batch_size, "train+test")
    cache.write_entry(folder, {"features.npy": lambda path: np.save(path, features, allow_pickle=False)})
    return features


def get_or_assess_shift(cfg: RunConfig, sets: dict[str, list[str]], fingerprint: str, out_dir: Path, settings,
                        tables: dict | None = None):
    """The shift report for these images and settings, from the cache when they have not changed.

    The cache holds the report's numbers (report.json), property tables (tables.npz) and its PNG plots, copied
    into out_dir: drawing them was most of a cached run's shift step (about 4 s of a sweep setting's 18).
    `tables` are the sets' properties already measured by the image store (else measured here)."""
    from pipeline.shift.assess import assess_shift, write_outputs, write_report_json

    from pipeline.data.image_store import FORMAT_VERSION  # the properties come from the store: its format keys them too

    key = _key({"version": CACHE_VERSION, "store": FORMAT_VERSION, "data": fingerprint, "sets": {k: _lines_digest(v) for k, v in sets.items()},
                "settings": dataclasses.asdict(settings), "seed": cfg.seed})
    folder = Path(cfg.cache_dir) / cfg.competition / "shift" / key
    if cache.load_entry(folder, SHIFT_FILES) is not None:
        try:
            report = load_shift_report(folder)
        except cache.LOAD_ERRORS as error:
            cache.discard(folder, f"{type(error).__name__}: {error}")
        else:
            print(f"shift: cached in {folder}", flush=True)
            plots = _cached_plot_names(folder)
            if plots is None:  # an entry from before plots were cached: draw them
                write_outputs(report, out_dir)
            else:
                out_dir.mkdir(parents=True, exist_ok=True)
                for name in plots:
                    write_bytes_atomic(out_dir / name, (folder / name).read_bytes())
                report.plots = [out_dir / name for name in plots]
                write_report_json(report, out_dir)
            return report
    report = assess_shift(tables or sets, out_dir, settings, seed=cfg.seed)
    save_shift_report(report, folder)
    return report


def save_shift_report(report, folder: Path) -> Path:
    """Cache a ShiftReport as report.json (settings, verdicts, statistics) and tables.npz (property tables)."""
    state = {
        "settings": dataclasses.asdict(report.settings),
        "pairs": {key: dataclasses.asdict(pair) for key, pair in report.pairs.items()},
        "sets": {name: {"columns": [[column, "number" if table.table[column].dtype.kind in "fiu" else "text"]
                                    for column in table.table.columns],
                        "unreadable": [list(row) for row in table.unreadable]}
                 for name, table in report.sets.items()},
    }
    arrays = {f"{name}/{column}": (table.table[column].to_numpy(dtype=np.float64) if kind == "number"
                                   else np.array(table.table[column].astype(str).tolist(), dtype=str))
              for name, table in report.sets.items() for column, kind in state["sets"][name]["columns"]}
    state["plots"] = [Path(plot).name for plot in report.plots]
    plots = {Path(plot).name: lambda path, plot=plot: shutil.copyfile(plot, path) for plot in report.plots}
    return cache.write_entry(folder, {
        "report.json": lambda path: path.write_text(json.dumps(state, default=json_plain)),
        "tables.npz": lambda path: _save_npz(path, arrays),
        **plots,
    })


def _cached_plot_names(folder: Path) -> list[str] | None:
    """The PNGs the entry holds (checked against its manifest), or None when it holds none or one is damaged."""
    names = json.loads((Path(folder) / "report.json").read_text()).get("plots")
    if not isinstance(names, list) or not names or any(not isinstance(n, str) or n != Path(n).name for n in names):
        return None
    return names if cache.load_entry(folder, names) is not None else None


def load_shift_report(folder: Path):
    """The ShiftReport saved by save_shift_report (plots empty: write_outputs draws them again)."""
    import pandas as pd

    from pipeline.data.image_properties import PropertyTable
    from pipeline.shift.report import PairResult, PropertyResult, ShiftReport, ShiftSettings

    state = json.loads((Path(folder) / "report.json").read_text())
    with np.load(Path(folder) / "tables.npz", allow_pickle=False) as arrays:
        sets = {}
        for name, described in state["sets"].items():
            columns = {column: (arrays[f"{name}/{column}"] if kind == "number"
                                else pd.array(arrays[f"{name}/{column}"].tolist(), dtype="str"))
                       for column, kind in described["columns"]}
            sets[name] = PropertyTable(pd.DataFrame(columns, columns=list(columns)),
                                       [(str(path), str(why)) for path, why in described["unreadable"]])
    pairs = {key: PairResult(**{**pair, "properties": [PropertyResult(**p) for p in pair["properties"]]})
             for key, pair in state["pairs"].items()}
    return ShiftReport(settings=ShiftSettings(**state["settings"]), sets=sets, pairs=pairs)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as handle:  # a file object: np.savez would add ".npz" to a name it does not end with
        np.savez(handle, **arrays)
