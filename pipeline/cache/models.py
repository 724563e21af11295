"""Cache of every trained student and control: its weights, the predictions the run uses from it, its info.

Why: the students and controls are most of a run's time. With them cached, a second run of the same config,
or `submit --resume` after a run was killed, trains only the models no earlier run finished, and gives the
same bytes (training is deterministic, and a cached model's predictions are the very numbers it produced).

A model's key holds everything that determines it: the teacher's cache key (data, labels, split, teacher
settings), every option that can change a model (`model_settings`: all of RunConfig's table except the few
declared in NOT_MODEL_SETTINGS, so a new option is in the key unless someone says it cannot matter), its
place in the chain (teacher model, round, pseudo-fold), the digest of the pseudo-labels it trained on and the
key of the model it started from. A control's key leaves out the pseudo-label and student options too
(NOT_CONTROL_SETTINGS): a sweep over them trains the control once. Entries are written and verified by
pipeline/cache/stage.py (manifest with sha256s, atomic); a damaged one is reported, removed and trained again.
Nothing is pickled.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.cache import entries as cache
from pipeline.cache.stage import cache_key, get_or_compute
from pipeline.run.config import RunConfig
from pipeline.files import hdf5_problem, json_plain

# bump when training or prediction code changes what a cached student or control would contain
# (2: the learning-rate schedule without a graph branch, float-level changes; 3: augmentation as one warp;
# 4: the resnet shortcut subsamples before its 1x1 convolution, float-level changes; 5: a first-round student
# draws its train batches with its control's seed)
CACHE_VERSION = 5
WEIGHTS = "model.weights.h5"
MODEL_FILES = (WEIGHTS, "test_probs.npy", "scored_probs.npy", "info.json")
# Options that never change a trained student or control (where files go, what is done with the predictions);
# --jit does, but through the teacher's key, which holds what it resolved to (pipeline/cache/teachers.py).
NOT_MODEL_SETTINGS = frozenset({"data", "output", "solution", "run_name", "guard_confidence", "guard_compares", "calibrate",
                                "unmeasured_groups", "unmeasured_p_better", "on_shift",
                                "runs_dir", "cache_dir", "ledger", "record", "worker_wait", "jit"})
# Options a control never reads: it is the teacher continued on train only, so how the test set is pseudo-labeled
# and how students learn from it cannot change it (its budget, the students' steps, is in its key). Without this a
# sweep over pseudo-label settings retrained the same control for every setting.
NOT_CONTROL_SETTINGS = NOT_MODEL_SETTINGS | frozenset({
    "pseudo_ratio", "pseudo_rounds", "pseudo_weight", "pseudo_threshold", "pseudo_precision", "pseudo_tag_confidence", "pseudo_balance", "pseudo_class_cap",
    "pseudo_groups", "pseudo_labels", "pseudo_labeler", "pseudo_folds", "student_init", "student_epochs", "student_batch", "student_augment", "pseudo_augment", "control"})


@dataclass
class ModelOutcome:
    """What a run uses from one student or control; `weights` starts the next round's student."""

    test_probs: np.ndarray  # the test rows the model predicts (a student's pseudo-fold, or all)
    scored_probs: np.ndarray  # the teacher model's scored (held-out) rows
    info: dict  # the fit's info, plus "key" and "cache": "hit" | "miss"
    weights: Path | list[np.ndarray]


def model_settings(cfg: RunConfig, ignored: frozenset[str] = NOT_MODEL_SETTINGS) -> dict:
    """Every option that can change a student (or, with NOT_CONTROL_SETTINGS, a control): the whole option table
    but those declared not to."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in ignored}


def selection_digest(index: np.ndarray, targets: np.ndarray) -> str:
    """The pseudo-labels a student trained on: which test rows, with which targets."""
    digest = hashlib.sha256()
    for array in (np.asarray(index, dtype=np.int64), np.asarray(targets, dtype=np.float32)):
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def student_key(teacher_key: str, cfg: RunConfig, model: int, round: int, pseudo_fold: int, selection: str,
                init: str, steps: int, augmentation: str, apart: int = 0) -> str:
    """Key of the student at (teacher model, round, pseudo-fold) trained on `selection` for `steps` optimizer steps,
    starting from `init` (the key of the model whose weights it continues, or "scratch"), with `augmentation` applied
    (what --student-augment auto resolved to: the option alone would keep a student trained under an older rule), and
    `apart` of its pseudo-labeled items in a batch-norm pass of their own (pipeline/model/own_statistics.py)."""
    settings = model_settings(cfg)
    if settings["pseudo_labeler"] == "teacher":  # as every student before the option was labeled: those keys stay
        del settings["pseudo_labeler"]
    if settings["pseudo_augment"] == "same":  # as every student before the option was augmented: those keys stay
        del settings["pseudo_augment"]
    fields = {"version": CACHE_VERSION, "kind": "student", "teacher": teacher_key, "settings": settings,
              "model": model, "round": round, "pseudo_fold": pseudo_fold, "selection": selection, "init": init,
              "steps": steps, "augmentation": augmentation}
    return cache_key({**fields, "apart": apart} if apart else fields)  # keys of students without any stay as they were


def control_key(teacher_key: str, cfg: RunConfig, model: int, steps: int) -> str:
    """Key of teacher model `model`'s control, continued for `steps` optimizer steps."""
    return cache_key({"version": CACHE_VERSION, "kind": "control", "teacher": teacher_key,
                      "settings": model_settings(cfg, NOT_CONTROL_SETTINGS), "model": model, "steps": steps})


def get_or_fit(folder: Path, label: str, shapes: tuple[tuple[int, int], tuple[int, int]],
               fit: Callable[[], tuple[object, dict]],
               predict: Callable[[object], tuple[np.ndarray, np.ndarray]]) -> ModelOutcome:
    """The model cached in `folder` (printing "LABEL: cached"), or fit it, predict with it and cache it.

    `shapes` are the (test, scored) prediction shapes this run expects; `fit` returns (model, info) and
    `predict(model)` returns (test_probs, scored_probs)."""
    from pipeline.model import distribute

    def train() -> tuple[ModelOutcome, dict]:
        model, info = fit()
        test_probs, scored_probs = predict(model)
        info = {**info, "key": folder.name}
        return (ModelOutcome(test_probs, scored_probs, {**info, "cache": "miss"}, model.get_weights()),
                _model_files(model, test_probs, scored_probs, info))

    # Across machines every worker must run the same fits (their gradients meet in collective ops), so under
    # --distribute multiworker the workers always train, as for the teacher (the chief still caches the model).
    return get_or_compute(folder, MODEL_FILES, lambda f: _load(f, *shapes), train, f"{label}: cached in {folder}",
                          read=not distribute.is_multiworker())[0]


def _model_files(model, test_probs: np.ndarray, scored_probs: np.ndarray, info: dict) -> dict:
    return {
        WEIGHTS: lambda path: model.save_weights(path),
        "test_probs.npy": lambda path: np.save(path, test_probs, allow_pickle=False),
        "scored_probs.npy": lambda path: np.save(path, scored_probs, allow_pickle=False),
        "info.json": lambda path: path.write_text(json.dumps(info, indent=2, default=json_plain)),
    }


def _load(folder: Path, test_shape: tuple[int, int], scored_shape: tuple[int, int]) -> ModelOutcome:
    """A verified entry's model; beyond the manifest, the predictions must have this run's shapes and the weights
    must be readable HDF5 (else one of entries.LOAD_ERRORS)."""
    info = cache.load_info(folder / "info.json")
    test_probs = cache.load_array(folder / "test_probs.npy", test_shape)
    scored_probs = cache.load_array(folder / "scored_probs.npy", scored_shape)
    problem = hdf5_problem(folder / WEIGHTS)
    if problem:
        raise ValueError(f"{WEIGHTS} {problem}")
    return ModelOutcome(test_probs, scored_probs, {**info, "cache": "hit"}, folder / WEIGHTS)
