"""One self-training round of one teacher model's chain: pseudo-label the test set with the chain's current model,
then fit (or load from the cache) the student of each pseudo-fold and predict with it.

The chain's model labels the round: the teacher model in round 1, then the previous round's students. Its
scored rows (which no model of the chain trains on) say how far its labels can be trusted: the confidence cut of
--pseudo-precision and --pseudo-weight net, the certain tags of a multi-label item, the loss weights of --pseudo-weight.
With K folds every chain's labeling model is one of K trained alike, each scored on its own fold: their scored rows
pooled (every labeled row, each predicted by the model of its fold's chain) are the evidence for all of them, instead
of one fold's handful (20 rows at 10 labels a class and 5 folds). A chain's own scored rows are among them, as the
holdout is with one fold: a curve of confidence against correctness is all that reaches its students.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.cache import models as model_cache
from pipeline.cache.stage import folder_of
from pipeline.errors import UserError
from pipeline.method import pseudo, trust
from pipeline.run.config import RunConfig
from pipeline.run.seeds import student_seed

if TYPE_CHECKING:  # TensorFlow is imported only where a model is built
    from pipeline.data.items import Items
    from pipeline.model.spec import ModelSpec
    from pipeline.plugin.registry import Competition

WORKERS_DIFFER = ("their models, in step until now, predicted differently: run every worker on the same kind of device "
                  "with the same installation (`make install` from the same checkout)")


@dataclass(frozen=True)
class Inputs:
    """What every round of every chain reads."""

    cfg: RunConfig
    spec: ModelSpec  # every student's
    competition: Competition
    items: Items
    teacher_key: str  # the teacher's cache key: every student's key starts from it
    pseudo_fold: np.ndarray  # the pseudo-fold of each readable test item (--pseudo-folds)


@dataclass(frozen=True)
class Evidence:
    """Labeled rows that no labeling model of a round trained on: their probabilities by it, and their truth."""

    probs: np.ndarray
    y: np.ndarray
    where: str  # for the log: "the 20 scored rows", "the 100 out-of-fold rows of the 5 folds' labeling models"


def pooled_evidence(chains: list[Chain], y: np.ndarray) -> Evidence:
    """Every chain's labeling model on its own scored rows, pooled (K folds: every labeled row out of fold)."""
    probs = np.concatenate([chain.scored_probs for chain in chains])
    return Evidence(probs, np.concatenate([y[chain.scored_rows] for chain in chains]),
                    f"the {len(probs)} out-of-fold rows of the {len(chains)} folds' labeling models" if len(chains) > 1
                    else f"the {len(probs)} scored rows")


@dataclass(frozen=True)
class Chain:
    """One teacher model's chain as a round starts: its rows, and the model that labels the round."""

    model: int
    n_models: int
    fit_rows: np.ndarray  # the labeled rows its models train on
    scored_rows: np.ndarray  # the labeled rows they never train on
    thresholds: np.ndarray  # the competition's decision thresholds, fit on the labeling model's scored rows
    test_probs: np.ndarray  # the labeling model's predictions of the test set
    scored_probs: np.ndarray  # and of the scored rows
    init: Path | list[np.ndarray]  # the weights the next student continues (--student-init teacher)
    init_key: str  # their cache key
    labeled: bool = False  # whether an earlier round selected any pseudo-label
    evidence: Evidence | None = None  # how far the labels can be trusted (pooled_evidence); None: the scored rows

    @property
    def prefix(self) -> str:
        return f"model {self.model + 1}/{self.n_models} " if self.n_models > 1 else ""

    def trust(self, y: np.ndarray) -> Evidence:
        """The evidence for this chain's labels (`y`: every labeled row's truth)."""
        return self.evidence if self.evidence is not None else pooled_evidence([self], y)


@dataclass
class Round:
    """One round of one chain: what it selected, what its students learned, and the chain for the next round."""

    round: int
    chain: Chain  # the next round's: labeled by this round's students
    steps: int  # the round's budget, each of its students' optimizer steps (0: no self-training, --pseudo-ratio 0)
    selections: list[pseudo.PseudoSelection]  # one per pseudo-fold
    info: list[dict]  # one per pseudo-fold: its student's fit (or why none was trained)
    cutoff: float  # the confidence --pseudo-precision asks for (0 when off, infinite when out of reach)
    band: tuple[float, float] | None  # a multi-label item's certain tags (see trust.certain_tag_band)
    as_control: bool = False  # the last round of a chain no round gave a pseudo-label: its student is the control


def round_steps(inputs: Inputs, chain: Chain) -> int:
    """A student round's budget: --student-epochs passes over the chain's train rows in --batch-size batches (at
    least --min-steps), whatever the pseudo-label count and --student-batch. The control trains --pseudo-rounds times
    this, so it depends on the teacher and the train rows only, and one cached control serves every setting."""
    return inputs.spec.steps(len(chain.fit_rows), inputs.cfg.student_epochs)


def chain_budget(inputs: Inputs, fit_rows: np.ndarray) -> int:
    """A chain's whole budget, known before its first round: --pseudo-rounds times round_steps (0 with --pseudo-ratio
    0: no student trains). The control trains this long."""
    if inputs.cfg.pseudo_ratio == 0:
        return 0
    return inputs.cfg.pseudo_rounds * inputs.spec.steps(len(fit_rows), inputs.cfg.student_epochs)


def fit_round(inputs: Inputs, chain: Chain, r: int) -> Round:
    """Round r of `chain`: each pseudo-fold's selection from the chain's model, and its student's predictions.

    Every round of a chain trains its students for the round's budget, also one whose selection is empty (the
    chain's model continued on its train rows), so a student always has its control's budget. Two exceptions:
    --pseudo-ratio 0 trains nothing (the teacher stands), and a chain whose rounds all came back empty does not
    train its last round: self-training was then the teacher continued on its train rows, which is the control,
    and the control is its student (see selftrain.fit_students).
    """
    cfg = inputs.cfg
    multi_label = inputs.competition.multi_label
    settings = pseudo.PseudoSettings.of(cfg)
    online = cfg.pseudo_labels == "online"
    if online and multi_label:
        raise UserError(f"--pseudo-labels online takes the class a single-label model is surest of; "
                        f"{cfg.competition} is multi-label: use --pseudo-labels hard or soft")
    if online and cfg.student_batch == "pooled":
        raise UserError("--pseudo-labels online adds the test images on top of each labeled batch; "
                        "use --student-batch real+pseudo with it")
    labeler = chain  # whose probabilities pick, label and weigh the round's pseudo-labels
    if cfg.pseudo_balance == "aligned" and not multi_label:
        labeler = _aligned(inputs, chain, r, settings.groups)
    # the confidence its labels must reach, from how often the labeling model is right on the scored rows; an online
    # student labels its test images itself, with a cut of its own (pipeline/model/online.py)
    evidence = labeler.trust(inputs.items.y)
    cutoff = trust.precision_threshold(evidence.probs, evidence.y, cfg.pseudo_precision, multi_label, chain.thresholds)
    if cfg.pseudo_weight == "net" and not online:  # only labels whose net weight is above 0: likelier right than wrong
        cutoff = max(cutoff, trust.net_threshold(evidence.probs, evidence.y, multi_label, chain.thresholds))
    round_settings = replace(settings, threshold=max(settings.threshold, cutoff))
    band = None  # only hard multi-label targets have tags to leave out
    if multi_label and cfg.pseudo_labels == "hard":
        band = trust.certain_tag_band(evidence.probs, evidence.y, cfg.pseudo_tag_confidence)
    _print_cuts(cfg, chain, r, cutoff, band, evidence)
    selections = [_select(inputs, labeler, r, k, round_settings, band) for k in range(cfg.pseudo_folds)]
    labeled = chain.labeled or any(len(selection) > 0 for selection in selections)
    if cfg.pseudo_ratio == 0 or (r == cfg.pseudo_rounds and not labeled):
        info = [{"model": chain.model, "round": r, "pseudo_fold": k, "trained": False, "reason": selection.stop_reason}
                for k, selection in enumerate(selections)]
        steps = 0 if cfg.pseudo_ratio == 0 else round_steps(inputs, chain)
        return Round(r, chain, steps, selections, info, cutoff, band, as_control=cfg.pseudo_ratio > 0)
    steps = round_steps(inputs, chain)
    next_probs = np.zeros_like(chain.test_probs)
    scored_sum = np.zeros((len(chain.scored_rows), chain.test_probs.shape[1]), dtype=np.float32)
    info, init, init_key = [], chain.init, chain.init_key
    for k, selection in enumerate(selections):
        predict_rows = inputs.pseudo_fold == k  # all rows when there is one pseudo-fold
        student, key = _fit_student(inputs, labeler, r, k, selection, steps, predict_rows)
        next_probs[predict_rows] = student.test_probs
        scored_sum += student.scored_probs
        info.append({"model": chain.model, "round": r, "pseudo_fold": k, **student.info,
                     **({} if len(selection) else {"reason": selection.stop_reason})})
        if cfg.pseudo_folds == 1:
            init, init_key = student.weights, key  # the next round's student continues from this one
    after = replace(chain, test_probs=next_probs, scored_probs=scored_sum / cfg.pseudo_folds, init=init,
                    init_key=init_key, labeled=labeled, evidence=None)  # the next round's: its own labeling models
    return Round(r, after, steps, selections, info, cutoff, band)


def _aligned(inputs: Inputs, chain: Chain, r: int, groups: tuple[str, ...]) -> Chain:
    """The chain with its labeling model's probabilities rescaled per class until each pseudo-labeled group's
    predicted class distribution is the train share (pseudo.align_to_prior; --pseudo-balance aligned). The scored
    rows, which say how far a confidence can be trusted, are rescaled as the pooled groups are: they are drawn like
    train, as a group that did not shift is."""
    items = inputs.items
    prior = items.y[chain.fit_rows].mean(axis=0)
    test = np.asarray(chain.test_probs, dtype=np.float64).copy()
    pooled = pseudo.align_to_prior(test[np.isin(items.test_groups, groups)], prior)
    spread = []
    for g in groups:
        rows = items.test_groups == g
        weights = pseudo.align_to_prior(test[rows], prior)
        test[rows] = pseudo.aligned(test[rows], weights)
        spread.append(f"{g} {weights.min():.2f}-1")
    print(f"{chain.prefix}round {r}: class probabilities rescaled to the train share before labeling (class weights "
          f"{', '.join(spread)})", flush=True)
    evidence = None if chain.evidence is None else replace(
        chain.evidence, probs=pseudo.aligned(chain.evidence.probs, pooled).astype(np.float32))
    return replace(chain, test_probs=test.astype(np.float32),
                   scored_probs=pseudo.aligned(chain.scored_probs, pooled).astype(np.float32), evidence=evidence)


def _label(cfg: RunConfig, chain: Chain, r: int, k: int) -> str:
    return (f"{chain.prefix}student round {r}/{cfg.pseudo_rounds}"
            + (f" fold {k + 1}/{cfg.pseudo_folds}" if cfg.pseudo_folds > 1 else ""))


def _select(inputs: Inputs, chain: Chain, r: int, k: int, settings: pseudo.PseudoSettings,
            band: tuple[float, float] | None) -> pseudo.PseudoSelection:
    """Pseudo-fold k's selection in round r, from the chain's model, checked to be the same size on every worker."""
    from pipeline.model import distribute

    cfg, items = inputs.cfg, inputs.items
    predict_rows = inputs.pseudo_fold == k  # all rows when there is one pseudo-fold
    eligible = ~predict_rows if cfg.pseudo_folds > 1 else predict_rows
    selection = pseudo.select_pseudo_labels(chain.test_probs, items.test_groups, eligible, len(chain.fit_rows),
                                            items.y[chain.fit_rows].mean(axis=0), settings,
                                            inputs.competition.multi_label, chain.thresholds, round=r, tag_band=band)
    label = _label(cfg, chain, r, k)
    per_group = ", ".join(f"{g}: {int((selection.group == g).sum())}" for g in settings.groups)
    print(f"{label}: {len(selection)} pseudo-labels ({selection.stop_reason}); by group {per_group}", flush=True)
    # The count sets each step's batch (and whether a chain has any pseudo-label), so a worker that picked more or
    # fewer rows would fall out of step. Which rows may differ: nondeterministic GPU kernels can move a row across
    # the confidence cut on one worker, and each worker training on its own rows is still in step.
    distribute.check_workers_agree(f"numbers of pseudo-labels ({label})", str(len(selection)), WORKERS_DIFFER)
    return selection


def _print_cuts(cfg: RunConfig, chain: Chain, r: int, cutoff: float, band: tuple[float, float] | None,
                evidence: Evidence) -> None:
    if band is not None:
        print(f"{chain.prefix}round {r}: tags at <= {band[0]:.3f} become 0 and at >= {band[1]:.3f} become 1 (right "
              f">= {cfg.pseudo_tag_confidence:g} of the time on {evidence.where}); the tags between stay unlabeled",
              flush=True)
    if cfg.pseudo_precision > 0:
        print(f"{chain.prefix}round {r}: confidence >= {cutoff:.3f} keeps pseudo-label precision >= "
              f"{cfg.pseudo_precision:g} on {evidence.where}", flush=True)


def _fit_student(inputs: Inputs, chain: Chain, r: int, k: int, selection: pseudo.PseudoSelection, steps: int,
                 predict_rows: np.ndarray) -> tuple[model_cache.ModelOutcome, str]:
    """The student of pseudo-fold k in round r, cached or fit now for `steps`: (its outcome, its cache key). With an
    empty selection it is the model it starts from continued on the chain's train rows."""
    from pipeline.model import own_statistics, train
    from pipeline.model.spec import pseudo_batch_size

    cfg, spec, items = inputs.cfg, inputs.spec, inputs.items
    label = _label(cfg, chain, r, k)
    x_fit, y_fit = items.train_x[chain.fit_rows], items.y[chain.fit_rows]
    weights, online = None, cfg.pseudo_labels == "online"
    if cfg.pseudo_weight in ("calibrated", "net") and len(selection) and not online:
        weigh = trust.net_weights if cfg.pseudo_weight == "net" else trust.correctness_weights
        evidence = chain.trust(items.y)
        weights = weigh(evidence.probs, evidence.y, selection.confidence, inputs.competition.multi_label,
                        chain.thresholds)
        print(f"{label}: loss weights {weights.min():.2f}-{weights.max():.2f}, mean {weights.mean():.2f} "
              f"(how often the labeling model is right at each confidence on {evidence.where})", flush=True)
    pooled = cfg.student_batch == "pooled"
    passes = train.labeled_passes(steps, cfg.batch_size, len(x_fit), len(selection), pooled=pooled)
    noise = train.applied_augmentation(spec, train.student_augment_level(cfg.student_augment, passes, cfg.augment))
    # --pseudo-augment: the pseudo-labeled items' own noise (FixMatch: labeled from a plain view, learned under noise)
    pseudo_noise = None if cfg.pseudo_augment == "same" else train.applied_augmentation(spec, cfg.pseudo_augment)
    starts_from = chain.init_key if cfg.student_init == "teacher" else "scratch"
    # the pseudo-labeled items predicted with statistics of their own (--adapt-bn) train under their own too
    foreign = None
    if items.domain is not None and spec.feature_dim is None and not pooled and not online:
        foreign = np.asarray(items.domain[selection.index] != "", dtype=bool)
    extra = pseudo_batch_size(cfg.batch_size, len(x_fit), len(selection))
    apart = int(foreign.sum()) if own_statistics.needed((selection.index, selection.targets), foreign, extra) else 0
    key = model_cache.student_key(inputs.teacher_key, cfg, chain.model, r, k, model_cache.selection_digest(
        selection.index, selection.targets), starts_from, steps, noise, apart)
    why = " (cached embeddings)" if spec.feature_dim is not None else (" (auto)" if cfg.student_augment == "auto" else "")
    what = "" if len(selection) else " (no pseudo-label: the model it starts from, continued on its train rows)"
    if online and len(selection):
        what = f" (online: it labels these {len(selection)} test images itself at every step)"
    if apart:
        what += f" ({apart} foreign pseudo-labeled items in a batch-norm pass of their own)"
    if pseudo_noise not in (None, noise) and len(selection):
        what += f" (the pseudo-labeled items: augmentation {pseudo_noise})"
    print(f"{label}: {steps} steps, {passes:.0f} passes over each labeled item, augmentation {noise}{why}{what}",
          flush=True)
    seed, start = student_seed(cfg.seed, r, k, chain.model), chain.init if cfg.student_init == "teacher" else None

    def fit():
        if len(selection) == 0:
            return train.fit(spec, label, x_fit, y_fit, steps, seed, noise, init=start)
        x_pseudo = items.test_x(selection.index)
        if online:
            return train.fit(spec, label, x_fit, y_fit, steps, seed, noise, init=start, unlabeled=x_pseudo)
        if pooled:
            pool_weights = None if weights is None else np.concatenate([np.ones(len(x_fit), np.float32), weights])
            return train.fit(spec, label, np.concatenate([x_fit, x_pseudo]), np.concatenate([y_fit, selection.targets]),
                             steps, seed, noise, init=start, weights=pool_weights)
        return train.fit(spec, label, x_fit, y_fit, steps, seed, noise, init=start, pseudo=(x_pseudo, selection.targets),
                         pseudo_weights=weights, pseudo_foreign=foreign, pseudo_augment_level=pseudo_noise)

    def predict(model):
        return (items.predict_test(model, spec, np.flatnonzero(predict_rows)),
                train.predict(model, items.train_x, chain.scored_rows, spec))

    n_classes = chain.test_probs.shape[1]
    shapes = ((int(predict_rows.sum()), n_classes), (len(chain.scored_rows), n_classes))
    return model_cache.get_or_fit(folder_of(cfg, "students", key), label, shapes, fit, predict), key
