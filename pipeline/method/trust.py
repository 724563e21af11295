"""How far a labeling model's pseudo-labels can be trusted, measured on the labeled rows it never trained on (the
holdout, or every row out of fold): the confidence cut of --pseudo-precision, the loss weights of --pseudo-weight
calibrated and net, and the certain tags of a multi-label item. NumPy and scikit-learn only, no TensorFlow.
"""
from __future__ import annotations

import numpy as np

from pipeline.method.pseudo import confidence_and_classes


def confidence_and_correctness(probs: np.ndarray, y_true: np.ndarray, multi_label: bool = False,
                               thresholds: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per labeled row: the model's confidence, and whether its pseudo-label would be right (single-label: the
    predicted class, 0 or 1; multi-label: the share of tags decided correctly)."""
    confidence, hard = confidence_and_classes(probs, multi_label, thresholds)
    agree = hard == (np.asarray(y_true) > 0.5)
    return confidence, agree.mean(axis=1) if multi_label else agree.all(axis=1).astype(np.float64)


def precision_threshold(probs: np.ndarray, y_true: np.ndarray, target: float, multi_label: bool = False,
                        thresholds: np.ndarray | None = None) -> float:
    """The lowest confidence at which a model's pseudo-labels are still right `target` of the time.

    Measured on labeled rows the model never trained on (holdout or out-of-fold): ranked by confidence, the
    largest top slice whose labels are right at least `target` of the time sets the threshold. A weak teacher
    then hands over only what it is sure of, a strong one nearly everything. Right means the predicted class
    (single-label) or the share of tags decided correctly (multi-label). 0 when `target` is 0; infinite when
    not even the most confident row reaches it.
    """
    if target <= 0 or len(probs) == 0:
        return 0.0
    confidence, right = confidence_and_correctness(probs, y_true, multi_label, thresholds)
    order = np.argsort(-confidence, kind="stable")
    precision = np.cumsum(right[order]) / np.arange(1, len(order) + 1)
    reached = np.flatnonzero(precision >= target - 1e-12)
    return float(confidence[order][reached[-1]]) if len(reached) else float("inf")


def correctness_weights(probs: np.ndarray, y_true: np.ndarray, confidence: np.ndarray, multi_label: bool = False,
                        thresholds: np.ndarray | None = None) -> np.ndarray:
    """How often the labeling model is right at each of these confidences: a loss weight per pseudo-label.

    Fit on labeled rows the model never trained on (holdout or out-of-fold): an isotonic regression (scikit-learn) of
    being right (single-label: the predicted class; multi-label: the share of tags decided correctly) on the model's
    confidence. A weak teacher's pseudo-labels then weigh what they are worth in each step instead of as much as real
    labels, whatever their number; a strong teacher's keep nearly full weight.
    """
    return _right_at(*confidence_and_correctness(probs, y_true, multi_label, thresholds), confidence)


def _right_at(scored_confidence: np.ndarray, right: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """correctness_weights on already-measured scored rows: 1 where there are none."""
    from sklearn.isotonic import IsotonicRegression

    if len(right) == 0:
        return np.ones(len(confidence), dtype=np.float32)
    calibration = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scored_confidence, right)
    return calibration.predict(np.asarray(confidence, dtype=np.float64)).astype(np.float32)


PRECISION_BOUND = 0.95  # net weights rest on a one-sided 95% lower bound of the precision, not its point estimate


def net_weights(probs: np.ndarray, y_true: np.ndarray, confidence: np.ndarray, multi_label: bool = False,
                thresholds: np.ndarray | None = None) -> np.ndarray:
    """2p - 1, at least 0: a pseudo-label's expected net pull, from a precision p its labeling model is known to reach.

    A label right with probability p pulls towards the truth with weight p and away from it with weight 1 - p, so
    its net pull is 2p - 1, and a label no likelier right than wrong adds nothing. p is measured on the scored rows
    (holdout or out-of-fold) and is the smaller of two things: how often the model is right at that confidence
    (`correctness_weights`' isotonic fit), and what the evidence guarantees: the one-sided PRECISION_BOUND Wilson lower
    bound of the share of right labels among the scored rows at least that confident (the best such bound from any
    confidence at or below it, so a thin top slice does not undercut a thicker one). With 20 scored rows, three
    right out of three is little evidence (p >= 0.53: weight 0.05); 300 right out of 320 is plenty (p >= 0.91:
    weight 0.82). So a weak teacher, or one measured on few rows, hands over few pseudo-labels at small weights,
    and a strong one nearly all at nearly full weight.
    """
    return _net_at(*confidence_and_correctness(probs, y_true, multi_label, thresholds), confidence)


def _net_at(scored_confidence: np.ndarray, right: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """net_weights on already-measured scored rows: 1 where there are none."""
    confidence = np.asarray(confidence, dtype=np.float64)
    if len(right) == 0:
        return np.ones(len(confidence), dtype=np.float32)
    order = np.argsort(-scored_confidence, kind="stable")
    ranked = scored_confidence[order]
    n = np.arange(1, len(ranked) + 1)
    slice_weight = np.clip(2.0 * _wilson_lower(np.cumsum(right[order]), n) - 1.0, 0.0, 1.0)
    # scored confidences from low to high, each with the best weight of any slice starting at or below it
    ascending = ranked[::-1]
    best = np.maximum.accumulate(slice_weight[::-1])
    at = np.searchsorted(ascending, confidence, side="right") - 1  # the highest scored confidence <= c
    evidence = np.where(at >= 0, best[np.clip(at, 0, None)], 0.0)
    local = 2.0 * _right_at(scored_confidence, right, confidence) - 1.0
    return np.clip(np.minimum(evidence, local), 0.0, 1.0).astype(np.float32)


def net_threshold(probs: np.ndarray, y_true: np.ndarray, multi_label: bool = False,
                  thresholds: np.ndarray | None = None) -> float:
    """The lowest confidence whose pseudo-labels have a positive net weight (`net_weights`). Infinite when none has
    (nothing is handed over); 0 with no scored rows."""
    scored_confidence, right = confidence_and_correctness(probs, y_true, multi_label, thresholds)
    if len(scored_confidence) == 0:
        return 0.0
    candidates = np.unique(scored_confidence)
    positive = candidates[_net_at(scored_confidence, right, candidates) > 0]
    return float(positive.min()) if len(positive) else float("inf")


def _wilson_lower(right: np.ndarray, n: np.ndarray) -> np.ndarray:
    """One-sided PRECISION_BOUND Wilson lower bound of a proportion (right may be fractional: multi-label shares);
    vectorised, which scipy.stats.binomtest's proportion_ci is not."""
    from scipy.stats import norm

    z = norm.ppf(PRECISION_BOUND)
    p = np.asarray(right, dtype=np.float64) / n
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n)


def certain_tag_band(probs: np.ndarray, y_true: np.ndarray, confidence: float) -> tuple[float, float] | None:
    """(low, high): multi-label pseudo-tags at or below `low` are right as 0, at or above `high` as 1, with
    probability >= `confidence`; the tags between stay unlabeled (UPS, Rizve et al. 2021).

    Measured on labeled rows the model never trained on, pooled over tags: an isotonic regression of the truth
    on the model's probability (scikit-learn) estimates how often a tag at each probability is on, so a label
    smoothed or shifted model still gets the band its own holdout shows. None when confidence is 0: every tag
    labeled at its decision threshold, as before.
    """
    if confidence <= 0:
        return None
    from sklearn.isotonic import IsotonicRegression

    p = np.asarray(probs, dtype=np.float64).ravel()
    on = (np.asarray(y_true) > 0.5).ravel().astype(np.float64)
    if len(p) == 0:
        return 0.0, float("inf")  # nothing measured: no tag is certain
    calibrated = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, on).predict(p)
    negatives, positives = p[calibrated <= 1 - confidence], p[calibrated >= confidence]
    low = float(negatives.max()) if len(negatives) else -1.0
    high = float(positives.min()) if len(positives) else float("inf")
    return low, max(high, low + 1e-12)
