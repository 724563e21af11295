"""Which test items become pseudo-labeled training items, and with what targets. NumPy only, no TensorFlow.

Every selected item carries its group (public/private), class, confidence and round; the selection says
why it stopped, like scikit-learn's SelfTrainingClassifier (`termination_condition_`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.plugin.api import GROUPS  # the leaderboard groups, defined once in the plugin API

STATUSES = ("selected", "below threshold", "over class cap", "over quota", "not eligible", "group not pseudo-labeled")
# why selection stopped, per group: a closed set (scikit-learn's termination_condition_), details go in text
STOP_REASONS = ("nothing asked", "no eligible items", "quota reached", "threshold", "class caps")


@dataclass(frozen=True)
class PseudoSettings:
    """The run's --pseudo-* selection options; no defaults here: theirs are RunConfig's (`PseudoSettings.of`)."""

    ratio: float  # target share of pseudo-labeled items in train + pseudo, in the last round
    threshold: float  # minimum confidence
    class_cap: float  # a class gets at most class_cap x its share (see balance) of a group's quota
    groups: tuple[str, ...]
    labels: str  # hard: 0/1 targets; soft: the teacher's probabilities
    balance: str  # predicted: the teacher's class distribution on the group; train: the train share; none
    rounds: int

    @classmethod
    def of(cls, options) -> "PseudoSettings":
        """The selection options of a run (a RunConfig)."""
        return cls(options.pseudo_ratio, options.pseudo_threshold, options.pseudo_class_cap, tuple(options.pseudo_groups),
                   options.pseudo_labels, options.pseudo_balance, options.pseudo_rounds)


@dataclass
class PseudoSelection:
    index: np.ndarray  # rows of the test arrays
    targets: np.ndarray  # (n, n_classes) float32
    group: np.ndarray  # "public" / "private"
    classes: list[tuple[int, ...]]  # the positive classes of each selected item
    confidence: np.ndarray
    round: int  # the self-training round (1 = picked from the teacher's predictions)
    target_count: int
    stop_reason: str  # one of STOP_REASONS for a single group, or "target reached" / a per-group text
    per_group: dict = field(default_factory=dict)
    status: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))  # one of STATUSES per test item
    item_confidence: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per test item

    def __len__(self) -> int:
        return len(self.index)

    def summary(self, class_names: list[str]) -> dict:
        """Counts per group, per class and per group x class, mean confidence per group: for metrics.json."""
        by_group_class = {g: {c: 0 for c in class_names} for g in GROUPS}
        for group, positives in zip(self.group, self.classes):
            for c in positives:
                by_group_class[str(group)][class_names[c]] += 1
        return {
            "round": self.round,
            "target": self.target_count,
            "selected": len(self),
            "stop_reason": self.stop_reason,
            "by_group": {g: int((self.group == g).sum()) for g in GROUPS},
            "by_class": {c: sum(by_group_class[g][c] for g in GROUPS) for c in class_names},
            "by_group_class": by_group_class,
            "by_status": {s: int((self.status == s).sum()) for s in STATUSES},
            "mean_confidence": {g: float(self.confidence[self.group == g].mean()) if (self.group == g).any() else None for g in GROUPS},
            "per_group": self.per_group,
        }


def target_count(n_train: int, ratio: float, round: int = 1, rounds: int = 1) -> int:
    """Pseudo items for them to be `ratio` of train + pseudo in the last round (0.25 -> one per three train
    items); round r of R asks for r/R of that (a curriculum: the most confident first)."""
    if ratio <= 0:
        return 0
    return int(round_half_up(n_train * ratio / (1.0 - ratio) * round / rounds))


def round_half_up(value: float) -> int:
    return int(np.floor(value + 0.5))


def confidence_and_classes(probs: np.ndarray, multi_label: bool, thresholds: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Confidence in [0, 1] per item and its hard 0/1 labels.

    Single-label: the top probability. Multi-label: every tag must be clearly on or off, so the confidence
    is the smallest per-tag margin from its threshold, scaled to [0, 1] on each side of the threshold.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if not multi_label:
        hard = np.zeros_like(probs)
        hard[np.arange(len(probs)), probs.argmax(axis=1)] = 1.0
        return probs.max(axis=1), hard
    t = np.full(probs.shape[1], 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    t = np.clip(t, 1e-6, 1 - 1e-6)
    margin = np.where(probs >= t, (probs - t) / (1 - t), (t - probs) / t)
    return margin.min(axis=1), (probs >= t).astype(np.float64)


def select_pseudo_labels(
    probs: np.ndarray,
    groups: np.ndarray,
    eligible: np.ndarray,
    n_train: int,
    train_share: np.ndarray,
    settings: PseudoSettings,
    multi_label: bool = False,
    thresholds: np.ndarray | None = None,
    round: int = 1,
    tag_band: tuple[float, float] | None = None,
) -> PseudoSelection:
    """Pick the most confident eligible test items, with quotas per group and caps per class.

    The target count follows `settings.ratio` of the combined set (r/R of it in round r of R); it is split
    over the chosen groups in proportion to their eligible sizes. Within a group items are taken by falling
    confidence, skipping any whose class already holds `class_cap` x its share of the quota. The share is
    the teacher's predicted class distribution on that group by default: a shifted group whose classes
    differ from train keeps its own balance, and the teacher's favourite class cannot flood the student.
    Multi-label hard targets with a `tag_band` (low, high) from `trust.certain_tag_band` are NaN (no label) for
    tags strictly between low and high; the loss skips them.
    """
    probs = np.asarray(probs, dtype=np.float64)
    groups = np.asarray(groups).astype(str)
    eligible = np.asarray(eligible, dtype=bool)
    if not (len(probs) == len(groups) == len(eligible)):
        raise ValueError(f"probs, groups and eligible must have one row per test item; got {len(probs)}, {len(groups)}, {len(eligible)}")
    confidence, hard = confidence_and_classes(probs, multi_label, thresholds)
    status = np.where(np.isin(groups, settings.groups), "not eligible", "group not pseudo-labeled").astype(object)
    available = {g: np.flatnonzero(eligible & (groups == g)) for g in settings.groups}
    pool = sum(len(v) for v in available.values())
    final = target_count(n_train, settings.ratio)
    # the curriculum grows towards what the last round can have: the target, or the whole pool when it is smaller
    wanted = round_half_up(min(final, pool) * round / settings.rounds) if round < settings.rounds else final
    chosen: list[int] = []
    per_group: dict[str, dict] = {}
    for g, candidates in available.items():
        quota = min(len(candidates), round_half_up(wanted * len(candidates) / pool)) if pool else 0
        caps = np.ceil(settings.class_cap * _class_share(hard[candidates], train_share, settings.balance) * quota)
        counts = np.zeros(probs.shape[1])
        taken: list[int] = []
        skipped_by_cap, below_threshold = 0, False
        for row in candidates[np.argsort(-confidence[candidates], kind="stable")]:
            if len(taken) >= quota:
                status[row] = "over quota"
                continue
            if confidence[row] < settings.threshold:
                below_threshold = True
                status[row] = "below threshold"
                continue
            positives = np.flatnonzero(hard[row])
            if (counts[positives] >= caps[positives]).any():
                skipped_by_cap += 1
                status[row] = "over class cap"
                continue
            counts[positives] += 1
            taken.append(int(row))
            status[row] = "selected"
        if quota == 0:
            reason = "nothing asked" if wanted == 0 else "no eligible items"
        elif len(taken) >= quota:
            reason = "quota reached"
        elif below_threshold:
            reason = "threshold"
        else:  # every candidate was seen: the rest were over their class cap
            reason = "class caps"
        per_group[g] = {"eligible": int(len(candidates)), "quota": int(quota), "selected": len(taken), "stop_reason": reason,
                        "skipped_by_class_cap": skipped_by_cap}
        chosen += taken
    index = np.array(sorted(chosen), dtype=np.int64)
    if wanted == 0:
        stop = "pseudo-ratio 0: teacher only"
    elif wanted > pool and len(index) == pool:
        stop = f"the whole eligible pool ({pool} for {wanted} wanted)"
    elif len(index) >= sum(v["quota"] for v in per_group.values()):
        stop = "target reached"
    else:
        stop = "; ".join(f"{g}: stopped by {v['stop_reason']}" for g, v in per_group.items() if v["selected"] < v["quota"])
    targets = (hard if settings.labels == "hard" else probs)[index].astype(np.float32)
    if multi_label and settings.labels == "hard" and tag_band is not None:
        low, high = tag_band
        chosen_probs = probs[index]
        targets = np.where(chosen_probs >= high, 1.0, np.where(chosen_probs <= low, 0.0, np.nan)).astype(np.float32)
    return PseudoSelection(
        index=index,
        targets=targets,
        group=groups[index],
        classes=[tuple(int(c) for c in np.flatnonzero(hard[i])) for i in index],
        confidence=confidence[index],
        round=round,
        target_count=wanted,
        stop_reason=stop,
        per_group=per_group,
        status=status,
        item_confidence=confidence,
    )


def _class_share(hard: np.ndarray, train_share: np.ndarray, balance: str) -> np.ndarray:
    """Each class's expected share of a group's pseudo-labels; infinite (no cap) with balance "none"."""
    if balance == "none":
        return np.full(hard.shape[1], np.inf)
    if balance in ("train", "aligned"):
        return np.asarray(train_share, dtype=np.float64)
    if balance == "predicted":
        return hard.mean(axis=0) if len(hard) else np.zeros(hard.shape[1])
    raise ValueError(f"unknown balance {balance!r}; expected predicted, train, aligned or none")


def align_to_prior(probs: np.ndarray, prior: np.ndarray, iterations: int = 100) -> np.ndarray:
    """Per-class weights w such that the rows of probs x w, renormalised, average to `prior` (distribution alignment,
    ReMixMatch and AdaMatch; the class-normalised confidences of class-balanced self-training, Zou et al. 2018).

    Why: a teacher trained on few labels favours some classes. On sign-language photos with 10 labels a class it
    called 513 of ~1,900 test hands a 4 and 21 a 3, and picking its most confident labels hands that bias to the
    student, which then learns never to say 3. Rescaling each class until the predicted distribution matches the train
    share lets the 3s it ranks highest become 3s. Found by alternating rescaling (iterative proportional fitting); a
    class no row gives any probability keeps weight 1.
    """
    probs = np.asarray(probs, dtype=np.float64)
    prior = np.asarray(prior, dtype=np.float64)
    weights = np.ones(probs.shape[1])
    if len(probs) == 0:
        return weights
    for _ in range(iterations):
        aligned = probs * weights
        aligned /= np.maximum(aligned.sum(axis=1, keepdims=True), 1e-300)
        mean = aligned.mean(axis=0)
        weights = np.where(mean > 0, weights * prior / np.maximum(mean, 1e-300), weights)
    return weights / weights.max()


def aligned(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """probs rescaled per class by `weights` (align_to_prior) and renormalised per row."""
    out = np.asarray(probs, dtype=np.float64) * weights
    return out / np.maximum(out.sum(axis=1, keepdims=True), 1e-300)


def assign_folds(groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold number per test item, each group spread evenly over the folds (seeded)."""
    rng = np.random.default_rng(seed)
    groups = np.asarray(groups).astype(str)
    fold = np.zeros(len(groups), dtype=np.int64)
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        fold[rng.permutation(rows)] = np.arange(len(rows)) % folds
    return fold

