"""Self-training and its control, for each of the teacher's models.

Each teacher model m (one per fold) starts its own chain, so its scored rows stay unseen by every model of
the chain and the verdict is honest: round r's student trains on m's train rows plus the test items its
predecessor labels most confidently (r/R of the share; round 1's labels are the control's, or with --pseudo-labeler
teacher or --no-control the teacher model's), then relabels the test set for round r + 1. The chains go round by
round together, so that with K folds a round's labels are weighed on every chain's scored rows (rounds.pooled_evidence). The
control gets the same optimizer steps on the same train rows without any pseudo-label: what the student
gains over it is the pseudo-labels' doing, not the longer training. A round's budget is counted in labeled
batches (rounds.round_steps), so the control's (--pseudo-rounds times it) depends on the teacher and the train
rows only: one cached control serves every pseudo-label setting of a sweep. By default (--student-batch
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
from pipeline.data import split
from pipeline.method import pseudo
from pipeline.method.rounds import Chain, Inputs, Round, chain_budget, fit_round, pooled_evidence
from pipeline.model.family import FoldModel, fit_family, mean_over_models
from pipeline.run.config import RunConfig
from pipeline.run.seeds import control_seed


@dataclass
class ModelFamily:
    """Predictions of one kind of model (control or student) over all of the teacher's folds."""

    name: str
    scored_probs: np.ndarray  # (n_train, C), NaN on rows no model of the family is scored on
    test_probs: np.ndarray  # (n_test, C): the mean over the folds' models
    info: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    per_model_test: list[np.ndarray] = field(default_factory=list)  # (n_test, C) of each fold's model


@dataclass
class SelfTraining:
    student: ModelFamily
    control: ModelFamily | None
    selections: list[pseudo.PseudoSelection]  # every (model, round, pseudo-fold) selection, in order
    provenance: pd.DataFrame  # one row per readable test item and selection: status, round, fold, confidence
    summary: dict  # the last round's selection of the first chain, plus per-round counts


def fit_students(cfg: RunConfig, spec, competition, items, teacher) -> SelfTraining:
    """Rounds of pseudo-labeling and students for every teacher model, then the controls."""
    from pipeline.cache.teachers import teacher_key

    inputs = Inputs(cfg, spec, competition, items, teacher_key(cfg, spec, items),
                    pseudo.assign_folds(items.test_groups, cfg.pseudo_folds, cfg.seed))
    n_models = split.n_models(items.fold)
    every_rows = list(split.model_rows(items.fold))
    control = None
    if cfg.control and cfg.pseudo_labeler == "control" and cfg.pseudo_ratio > 0:
        # The control labels round 1: trained on the same rows as the teacher for the students' budget, it is the
        # better model, and fewer of its labels are wrong. Its budget is known before any round (rounds.chain_budget).
        control = fit_controls(cfg, spec, items, teacher, inputs.teacher_key,
                               [chain_budget(inputs, fit_rows) for _, fit_rows, _ in every_rows])
        print("round 1 is labeled by the control (--pseudo-labeler control); each student starts from the teacher and "
              "trains as long as the control did", flush=True)
    labeler, labeled_by = (teacher, "teacher") if control is None else (control, "control")
    started = time.perf_counter()
    states: list[Chain] = []
    for m, fit_rows, scored_rows in every_rows:
        scored_probs = labeler.scored_probs[scored_rows]
        test_probs = teacher.test_probs[m] if control is None else control.per_model_test[m]
        thresholds = competition.fit_decision(items.y[scored_rows], scored_probs).threshold_array
        states.append(Chain(m, n_models, fit_rows, scored_rows, thresholds, test_probs, scored_probs, teacher.weights[m],
                            f"{inputs.teacher_key}/teacher {m}"))
    chains: list[list[Round]] = [[] for _ in states]
    for r in range(1, cfg.pseudo_rounds + 1):  # round by round: a round's evidence is every chain's labeling model
        evidence = pooled_evidence(states, items.y)  # one fold: its own scored rows, as Chain.trust
        for m, state in enumerate(states):
            chains[m].append(fit_round(inputs, replace(state, evidence=evidence), r))
            states[m] = chains[m][-1].chain
    every = [done for rounds in chains for done in rounds]  # chain by chain, round by round
    seconds = time.perf_counter() - started  # the students' own: the controls are timed on their own
    budgets = [sum(done.steps for done in rounds) for rounds in chains]  # --pseudo-rounds x a round's (0: ratio 0)
    as_control = [m for m, rounds in enumerate(chains) if rounds[-1].as_control]
    for m in as_control:
        # Asked for pseudo-labels, the chain got none past the cut: self-training is then the teacher continued on
        # its train rows, which is what the control is. So the control, trained for the chain's budget, is its student.
        print(f"{chains[m][-1].chain.prefix}no pseudo-label passed the cut: the student is the control ({budgets[m]} "
              "steps on the train rows)", flush=True)
    if control is None and (cfg.control or as_control):  # a chain's student may be the control even unasked
        control = fit_controls(cfg, spec, items, teacher, inputs.teacher_key,
                               [b if cfg.control or m in as_control else 0 for m, b in enumerate(budgets)])
    scored = np.full_like(teacher.scored_probs, np.nan)
    test = []
    for m, rounds in enumerate(chains):
        last = rounds[-1].chain
        scored[last.scored_rows] = control.scored_probs[last.scored_rows] if m in as_control else last.scored_probs
        test.append(control.per_model_test[m] if m in as_control else last.test_probs)
    info = [info for done in every for info in done.info]
    info += [{"model": m, "trained": False, "reason": "no pseudo-label passed the cut: the student is the control"}
             for m in as_control]
    student = ModelFamily("student", scored, mean_over_models(test), info, seconds)
    provenance = [provenance_rows(items.test_ids, items.test_groups, selection, done.chain.model, k, items.classes)
                  for done in every for k, selection in enumerate(done.selections)]
    return SelfTraining(student, control if cfg.control else None, [s for done in every for s in done.selections],
                        pd.concat(provenance, ignore_index=True),
                        {**_summary(cfg, items.classes, every), "labeler": labeled_by})


def fit_controls(cfg: RunConfig, spec, items, teacher, key_of_teacher: str, budgets: list[int]) -> ModelFamily:
    """Each teacher model continued on its own train rows for its chain's budget (no pseudo-labels); budget 0: the
    teacher model itself."""
    from pipeline.model import train

    n_classes = teacher.scored_probs.shape[1]

    def fit_one(m: int, label: str, fit_rows: np.ndarray, scored_rows: np.ndarray) -> FoldModel:
        if budgets[m] == 0:  # no student was trained: the control is the teacher itself
            return FoldModel(teacher.scored_probs[scored_rows], teacher.test_probs[m], {"model": m, "trained": False})

        def fit():
            return train.fit(spec, label, items.train_x[fit_rows], items.y[fit_rows], budgets[m], control_seed(cfg.seed, m),
                             cfg.augment, init=teacher.weights[m])

        def predict(model):
            return items.predict_test(model, spec), train.predict(model, items.train_x, scored_rows, spec)

        folder = folder_of(cfg, "controls", model_cache.control_key(key_of_teacher, cfg, m, budgets[m]))
        outcome = model_cache.get_or_fit(folder, label, ((len(items.test_rows), n_classes), (len(scored_rows), n_classes)),
                                         fit, predict)
        return FoldModel(outcome.scored_probs, outcome.test_probs, {"model": m, **outcome.info})

    started = time.perf_counter()
    scored, models = fit_family("control", items.fold, n_classes, fit_one)
    return ModelFamily("control", scored, mean_over_models([m.test_probs for m in models]), [m.info for m in models],
                       time.perf_counter() - started, [m.test_probs for m in models])


def _summary(cfg: RunConfig, classes: list[str], every: list[Round]) -> dict:
    """The last round's selection of the first chain, the mean count per round, and each round's cuts per chain."""
    per_round, cutoffs, bands = {}, {}, {}
    for done in every:
        for selection in done.selections:
            per_round.setdefault(selection.round, []).append(len(selection))
        if cfg.pseudo_precision > 0:
            cutoffs.setdefault(done.round, []).append(None if np.isinf(done.cutoff) else round(done.cutoff, 4))
        if done.band is not None:
            bands.setdefault(done.round, []).append([round(done.band[0], 4), round(done.band[1], 4)])
    last = next(s for done in every for s in done.selections if s.round == cfg.pseudo_rounds)
    return {**last.summary(classes), "rounds": cfg.pseudo_rounds,
            "selected_per_round": {str(r): int(np.mean(v)) for r, v in per_round.items()},
            "precision_thresholds": {str(r): v for r, v in cutoffs.items()},
            "certain_tag_bands": {str(r): v for r, v in bands.items()}}


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
