"""Which test items become pseudo-labeled training items, and with what targets. NumPy only, no TensorFlow.

Every selected item carries its group (public/private), class, confidence and round; the selection says
why it stopped, like scikit-learn's SelfTrainingClassifier (`termination_condition_`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

GROUPS = ("public", "private")


@dataclass(frozen=True)
class PseudoSettings:
    ratio: float = 0.25  # target share of pseudo-labeled items in train + pseudo
    threshold: float = 0.0  # minimum confidence
    class_cap: float = 2.0  # a class gets at most class_cap x its train share of a group's quota
    groups: tuple[str, ...] = GROUPS
    labels: str = "soft"  # hard: 0/1 targets; soft: the teacher's probabilities


@dataclass
class PseudoSelection:
    index: np.ndarray  # rows of the test arrays
    targets: np.ndarray  # (n, n_classes) float32
    group: np.ndarray  # "public" / "private"
    classes: list[tuple[int, ...]]  # the positive classes of each selected item
    confidence: np.ndarray
    round: np.ndarray  # 1 for every item selected in the first round
    target_count: int
    stop_reason: str
    per_group: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.index)

    def summary(self, class_names: list[str]) -> dict:
        """Counts per group, per class and per group x class, mean confidence per group: for metrics.json."""
        by_group_class = {g: {c: 0 for c in class_names} for g in GROUPS}
        for group, positives in zip(self.group, self.classes):
            for c in positives:
                by_group_class[str(group)][class_names[c]] += 1
        return {
            "target": self.target_count,
            "selected": len(self),
            "stop_reason": self.stop_reason,
            "by_group": {g: int((self.group == g).sum()) for g in GROUPS},
            "by_class": {c: sum(by_group_class[g][c] for g in GROUPS) for c in class_names},
            "by_group_class": by_group_class,
            "mean_confidence": {g: float(self.confidence[self.group == g].mean()) if (self.group == g).any() else None for g in GROUPS},
            "per_group": self.per_group,
        }


def target_count(n_train: int, ratio: float) -> int:
    """Pseudo items needed for them to be `ratio` of train + pseudo (0.25 -> one per three train items)."""
    return 0 if ratio <= 0 else int(round(n_train * ratio / (1.0 - ratio)))


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
) -> PseudoSelection:
    """Pick the most confident eligible test items, with quotas per group and caps per class.

    The target count follows `settings.ratio` of the combined set; it is split over the chosen groups in
    proportion to their eligible sizes. Within a group items are taken by falling confidence, skipping any
    whose class already holds `class_cap` x its train share of the quota (the teacher's favourite class
    cannot flood the student).
    """
    probs = np.asarray(probs, dtype=np.float64)
    groups = np.asarray(groups).astype(str)
    eligible = np.asarray(eligible, dtype=bool)
    if not (len(probs) == len(groups) == len(eligible)):
        raise ValueError(f"probs, groups and eligible must have one row per test item; got {len(probs)}, {len(groups)}, {len(eligible)}")
    confidence, hard = confidence_and_classes(probs, multi_label, thresholds)
    wanted = target_count(n_train, settings.ratio)
    available = {g: np.flatnonzero(eligible & (groups == g)) for g in settings.groups}
    pool = sum(len(v) for v in available.values())
    chosen: list[int] = []
    per_group: dict[str, dict] = {}
    for g, candidates in available.items():
        quota = min(len(candidates), int(round(wanted * len(candidates) / pool))) if pool else 0
        caps = np.ceil(settings.class_cap * np.asarray(train_share, dtype=np.float64) * quota)
        counts = np.zeros(probs.shape[1])
        taken: list[int] = []
        skipped_by_cap, below_threshold = 0, False
        for row in candidates[np.argsort(-confidence[candidates], kind="stable")]:
            if len(taken) >= quota:
                break
            if confidence[row] < settings.threshold:
                below_threshold = True
                break
            positives = np.flatnonzero(hard[row])
            if (counts[positives] >= caps[positives]).any():
                skipped_by_cap += 1
                continue
            counts[positives] += 1
            taken.append(int(row))
        if quota == 0:
            reason = "nothing asked" if wanted == 0 else "no eligible items"
        elif len(taken) >= quota:
            reason = "quota reached"
        elif below_threshold:
            reason = f"threshold {settings.threshold}"
        else:  # every candidate was seen: the rest were over their class cap
            reason = "class caps"
        per_group[g] = {"eligible": int(len(candidates)), "quota": int(quota), "selected": len(taken), "stop_reason": reason, "skipped_by_class_cap": skipped_by_cap}
        chosen += taken
    index = np.array(sorted(chosen), dtype=np.int64)
    if wanted == 0:
        stop = "pseudo-ratio 0: teacher only"
    elif wanted > pool:
        stop = f"ran out of eligible test items ({pool} for {wanted} wanted)"
    elif len(index) >= sum(v["quota"] for v in per_group.values()):
        stop = "target reached"
    else:
        stop = "; ".join(f"{g}: stopped by {v['stop_reason']}" for g, v in per_group.items() if v["selected"] < v["quota"])
    targets = (hard if settings.labels == "hard" else probs)[index].astype(np.float32)
    return PseudoSelection(
        index=index,
        targets=targets,
        group=groups[index],
        classes=[tuple(int(c) for c in np.flatnonzero(hard[i])) for i in index],
        confidence=confidence[index],
        round=np.ones(len(index), dtype=np.int64),
        target_count=wanted,
        stop_reason=stop,
        per_group=per_group,
    )


def assign_folds(groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold number per test item, each group spread evenly over the folds (seeded)."""
    rng = np.random.default_rng(seed)
    groups = np.asarray(groups).astype(str)
    fold = np.zeros(len(groups), dtype=np.int64)
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        fold[rng.permutation(rows)] = np.arange(len(rows)) % folds
    return fold

