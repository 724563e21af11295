"""Self-training and its control, for each of the teacher's models.

Each teacher model m (one per fold) starts its own chain, so its scored rows stay unseen by every model of
the chain and the verdict is honest: round r's student trains on m's train rows plus the test items its
predecessor labels most confidently (r/R of the share), then relabels the test set for round r + 1. The
control gets the same optimizer steps on the same train rows without any pseudo-label: what the student
gains over it is the pseudo-labels' doing, not the longer training. By default (--student-batch
real+pseudo) each student step sees a full batch of train rows, as the control's step does, with the
pseudo-labeled items on top, so the pseudo-labels add to the labeled data instead of diluting it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from pipeline.cache import models as model_cache
from pipeline.cache.stage import folder_of
from pipeline.method import pseudo
from pipeline.data import split
from pipeline.run.config import RunConfig, control_seed, student_seed

WORKERS_DIFFER = ("their models, in step until now, predicted differently: run every worker on the same kind of device "
                  "with the same installation (`make install` from the same checkout)")


@dataclass
class ModelFamily:
    """Predictions of one kind of model (control or student) over all of the teacher's folds."""

    name: str
    scored_probs: np.ndarray  # (n_train, C), NaN on rows no model of the family is scored on
    test_probs: np.ndarray  # (n_test, C): the mean over the folds' models
    info: list[dict] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class SelfTraining:
    student: ModelFamily
    control: ModelFamily | None
    selections: list[pseudo.PseudoSelection]  # every (model, round, pseudo-fold) selection, in order
    provenance: pd.DataFrame  # one row per readable test item and selection: status, round, fold, confidence
    summary: dict  # the last round's selection of the first chain, plus per-round counts


def fit_students(cfg: RunConfig, spec, competition, items, teacher) -> SelfTraining:
    """Rounds of pseudo-labeling and students for every teacher model, then the controls."""
    from pipeline.model import distribute
    from pipeline.model import train
    from pipeline.cache.teachers import teacher_key

    settings = pseudo.PseudoSettings.of(cfg)
    key_of_teacher = teacher_key(cfg, spec, items)
    n_models = split.n_models(items.fold)
    test_groups = items.test_groups
    pseudo_fold = pseudo.assign_folds(test_groups, cfg.pseudo_folds, cfg.seed)
    ids = items.test_ids
    student_scored = np.full_like(teacher.scored_probs, np.nan)
    student_test = np.zeros_like(teacher.mean_test_probs)
    selections, provenance, infos, budgets = [], [], [], []
    cutoffs: dict[int, list] = {}
    bands: dict[int, list] = {}
    started = time.perf_counter()
    for m in range(n_models):
        fit_rows, scored_rows = np.flatnonzero(items.fold != m), np.flatnonzero(items.fold == m)
        x_fit, y_fit = items.train_x[fit_rows], items.y[fit_rows]
        thresholds = competition.fit_decision(items.y[scored_rows], teacher.scored_probs[scored_rows]).threshold_array
        probs, init, steps_used = teacher.test_probs[m], teacher.weights[m], 0
        init_key = f"{key_of_teacher}/teacher {m}"
        chain = f"model {m + 1}/{n_models} " if n_models > 1 else ""
        for r in range(1, cfg.pseudo_rounds + 1):
            next_probs = np.zeros_like(probs)
            scored_sum = np.zeros((len(scored_rows), probs.shape[1]), dtype=np.float32)
            round_steps = 0
            # the confidence its labels must reach, from how often the labeling model is right on the scored rows
            labeler = _scored(teacher, student_scored, scored_rows, r)
            cutoff = pseudo.precision_threshold(labeler, items.y[scored_rows], cfg.pseudo_precision, competition.multi_label,
                                                thresholds)
            round_settings = replace(settings, threshold=max(settings.threshold, cutoff))
            band = None  # only hard multi-label targets have tags to leave out
            if competition.multi_label and cfg.pseudo_labels == "hard":
                band = pseudo.certain_tag_band(labeler, items.y[scored_rows], cfg.pseudo_tag_confidence)
            if band is not None:
                bands.setdefault(r, []).append([round(band[0], 4), round(band[1], 4)])
                print(f"{chain}round {r}: tags at <= {band[0]:.3f} become 0 and at >= {band[1]:.3f} become 1 (right "
                      f">= {cfg.pseudo_tag_confidence:g} of the time on the scored rows); the tags between stay unlabeled",
                      flush=True)
            if cfg.pseudo_precision > 0:
                cutoffs.setdefault(r, []).append(None if np.isinf(cutoff) else round(cutoff, 4))
                print(f"{chain}round {r}: confidence >= {cutoff:.3f} keeps pseudo-label precision >= "
                      f"{cfg.pseudo_precision:g} on the {len(scored_rows)} scored rows", flush=True)
            for k in range(cfg.pseudo_folds):
                predict_rows = pseudo_fold == k  # all rows when there is one pseudo-fold
                eligible = ~predict_rows if cfg.pseudo_folds > 1 else predict_rows
                selection = pseudo.select_pseudo_labels(probs, test_groups, eligible, len(fit_rows), y_fit.mean(axis=0),
                                                        round_settings, competition.multi_label, thresholds, round=r,
                                                        tag_band=band)
                label = f"{chain}student round {r}/{cfg.pseudo_rounds}" + (f" fold {k + 1}/{cfg.pseudo_folds}" if cfg.pseudo_folds > 1 else "")
                print(f"{label}: {len(selection)} pseudo-labels ({selection.stop_reason}); by group "
                      f"{ {g: int((selection.group == g).sum()) for g in settings.groups} }", flush=True)
                # The count sets the fit's steps and batch (none: no fit), so a worker that picked more or fewer rows
                # would fall out of step. Which rows may differ: nondeterministic GPU kernels can move a row across the
                # confidence cut on one worker, and each worker training on its own rows is still in step.
                distribute.check_workers_agree(f"numbers of pseudo-labels ({label})", str(len(selection)), WORKERS_DIFFER)
                selections.append(selection)
                provenance.append(provenance_rows(ids, test_groups, selection, m, k, items.classes))
                if len(selection) == 0:  # nothing to learn from: this round's model is its predecessor
                    next_probs[predict_rows] = probs[predict_rows]
                    scored_sum += labeler
                    infos.append({"model": m, "round": r, "pseudo_fold": k, "trained": False, "reason": selection.stop_reason})
                    continue
                weights = None
                if cfg.pseudo_weight == "calibrated":
                    weights = pseudo.correctness_weights(labeler, items.y[scored_rows], selection.confidence,
                                                         competition.multi_label, thresholds)
                    print(f"{label}: loss weights {weights.min():.2f}-{weights.max():.2f}, mean {weights.mean():.2f} "
                          f"(how often the labeling model is right at each confidence on the scored rows)", flush=True)
                pooled = cfg.student_batch == "pooled"
                steps = spec.steps(len(x_fit), cfg.student_epochs, len(selection), pooled=pooled)
                starts_from = init_key if cfg.student_init == "teacher" else "scratch"
                key = model_cache.student_key(key_of_teacher, cfg, m, r, k, model_cache.selection_digest(
                    selection.index, selection.targets), starts_from, steps)

                passes = train.labeled_passes(steps, cfg.batch_size, len(x_fit), len(selection), pooled=pooled)
                noise = train.applied_augmentation(spec, train.student_augment_level(cfg.student_augment, passes))
                why = " (cached embeddings)" if spec.feature_dim is not None else (
                    " (auto)" if cfg.student_augment == "auto" else "")
                print(f"{label}: {steps} steps, {passes:.0f} passes over each labeled item, augmentation {noise}{why}",
                      flush=True)

                def fit(label=label, selection=selection, steps=steps, seed=student_seed(cfg.seed, r, k, m), init=init,
                        noise=noise, pooled=pooled, weights=weights):
                    start = init if cfg.student_init == "teacher" else None
                    x_pseudo = items.test_x(selection.index)
                    if pooled:
                        pool_weights = None if weights is None else np.concatenate([np.ones(len(x_fit), np.float32), weights])
                        return train.fit(spec, label, np.concatenate([x_fit, x_pseudo]),
                                         np.concatenate([y_fit, selection.targets]), steps, seed, noise, init=start,
                                         weights=pool_weights)
                    return train.fit(spec, label, x_fit, y_fit, steps, seed, noise, init=start,
                                     pseudo=(x_pseudo, selection.targets), pseudo_weights=weights)

                def predict(model, index=np.flatnonzero(predict_rows)):
                    return (items.predict_test(model, spec, index),
                            train.predict(model, items.train_x, scored_rows, spec))

                n_predicted = int(predict_rows.sum())
                outcome = model_cache.get_or_fit(folder_of(cfg, "students", key), label,
                                                 ((n_predicted, probs.shape[1]), (len(scored_rows), probs.shape[1])),
                                                 fit, predict)
                round_steps = max(round_steps, steps)
                next_probs[predict_rows] = outcome.test_probs
                scored_sum += outcome.scored_probs
                infos.append({"model": m, "round": r, "pseudo_fold": k, **outcome.info})
                if cfg.pseudo_folds == 1:
                    init, init_key = outcome.weights, key  # the next round continues from this student
            probs = next_probs
            student_scored[scored_rows] = scored_sum / cfg.pseudo_folds
            steps_used += round_steps
        student_test += probs / n_models
        budgets.append(steps_used)
    student = ModelFamily("student", student_scored, student_test, infos, time.perf_counter() - started)
    control = fit_controls(cfg, spec, items, teacher, key_of_teacher, budgets) if cfg.control else None
    per_round = {}
    for selection in selections:
        per_round.setdefault(selection.round, []).append(len(selection))
    last = [s for s in selections if s.round == cfg.pseudo_rounds][0]
    summary = {**last.summary(items.classes), "rounds": cfg.pseudo_rounds,
               "selected_per_round": {str(r): int(np.mean(v)) for r, v in per_round.items()},
               "precision_thresholds": {str(r): v for r, v in cutoffs.items()},
               "certain_tag_bands": {str(r): v for r, v in bands.items()}}
    return SelfTraining(student, control, selections, pd.concat(provenance, ignore_index=True), summary)


def fit_controls(cfg: RunConfig, spec, items, teacher, key_of_teacher: str, budgets: list[int]) -> ModelFamily:
    """Each teacher model continued on its own train rows for the steps its students took (no pseudo-labels)."""
    from pipeline.model import train

    started = time.perf_counter()
    scored = np.full_like(teacher.scored_probs, np.nan)
    test = np.zeros_like(teacher.mean_test_probs)
    infos = []
    for m, steps in enumerate(budgets):
        fit_rows, scored_rows = np.flatnonzero(items.fold != m), np.flatnonzero(items.fold == m)
        if steps == 0:  # no student was trained: the control is the teacher itself
            scored[scored_rows] = teacher.scored_probs[scored_rows]
            test += teacher.test_probs[m] / len(budgets)
            infos.append({"model": m, "trained": False})
            continue
        label = "control" + (f" {m + 1}/{len(budgets)}" if len(budgets) > 1 else "")

        def fit(label=label, fit_rows=fit_rows, steps=steps, m=m):
            return train.fit(spec, label, items.train_x[fit_rows], items.y[fit_rows], steps, control_seed(cfg.seed, m), cfg.augment,
                             init=teacher.weights[m])

        def predict(model, scored_rows=scored_rows):
            return (items.predict_test(model, spec),
                    train.predict(model, items.train_x, scored_rows, spec))

        n_classes = teacher.scored_probs.shape[1]
        outcome = model_cache.get_or_fit(
            folder_of(cfg, "controls", model_cache.control_key(key_of_teacher, cfg, m, steps)), label,
            ((len(items.test_rows), n_classes), (len(scored_rows), n_classes)), fit, predict)
        scored[scored_rows] = outcome.scored_probs
        test += outcome.test_probs / len(budgets)
        infos.append({"model": m, **outcome.info})
    return ModelFamily("control", scored, test, infos, time.perf_counter() - started)


def _scored(teacher, student_scored: np.ndarray, rows: np.ndarray, round: int) -> np.ndarray:
    """Scored-row predictions of the model that labels this round (the teacher, then the previous round's student);
    a round without pseudo-labels keeps that model."""
    return teacher.scored_probs[rows] if round == 1 else student_scored[rows]


def provenance_rows(ids: np.ndarray, groups: np.ndarray, selection: pseudo.PseudoSelection, model: int, pseudo_fold: int,
                    classes: list[str]) -> pd.DataFrame:
    """One row per test item of one selection: what happened to it (status), why, and with which confidence."""
    target, unlabeled = np.full(len(ids), "", dtype=object), np.full(len(ids), "", dtype=object)
    target[selection.index] = [" ".join(classes[i] for i in c) for c in selection.classes]
    missing = np.isnan(selection.targets)
    if missing.any():  # multi-label tags left unlabeled: the label is what the student trains on
        target[selection.index] = [" ".join(classes[i] for i in np.flatnonzero(t == 1)) for t in selection.targets]
        unlabeled[selection.index] = [" ".join(classes[i] for i in np.flatnonzero(m)) for m in missing]
    return pd.DataFrame({
        "id": ids, "group": groups, "model": model + 1, "round": selection.round, "pseudo_fold": pseudo_fold + 1,
        "status": selection.status, "confidence": np.round(selection.item_confidence, 5), "pseudo_label": target,
        "unlabeled_tags": unlabeled,
    })
