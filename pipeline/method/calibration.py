"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"): one number per model, fit on
the scored rows, that softens (T > 1) or sharpens (T < 1) its class probabilities so that their log loss is lowest.

A network trained on a few labels is overconfident: a wrong answer at 0.99 costs 4.6 nats of log loss, and one such
row can cost more than the class prior would. Dividing the log-probabilities by T keeps every argmax (accuracy and
the pseudo-label ranking do not change) and fixes most of that.

The verdict must not score a model on the rows its temperature was fit on (one parameter, but 20 scored rows), so
the scored rows are cross-fitted: each fold is scaled by the temperature fit on the other folds. The test set is
scaled by the temperature fit on every scored row. Pure numpy and scipy: no TensorFlow.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from pipeline.run.config import CALIBRATIONS  # noqa: F401  (--calibrate's choices, defined with the option)

FOLDS = 5  # of the cross-fitted scored rows
LOWEST, HIGHEST = 0.05, 20.0  # the temperatures searched: from 20x sharper to 20x softer
_EPS = 1e-7


def scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax of log(probs) / temperature, row by row (float64 inside, the input's dtype out)."""
    logits = np.log(np.clip(np.asarray(probs, np.float64), _EPS, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return (scaled / scaled.sum(axis=1, keepdims=True)).astype(np.asarray(probs).dtype)


def fit_temperature(y: np.ndarray, probs: np.ndarray) -> float:
    """The temperature in [LOWEST, HIGHEST] with the lowest mean log loss of `probs` (rows of class probabilities)
    against one-hot `y`; 1.0 when there is nothing to fit (no row)."""
    y, log_p = np.asarray(y, np.float64), np.log(np.clip(np.asarray(probs, np.float64), _EPS, 1.0))
    if len(y) == 0:
        return 1.0
    truth = (y * log_p).sum(axis=1)

    def log_loss(log_t: float) -> float:
        z = log_p / np.exp(log_t)
        top = z.max(axis=1)
        return float(np.mean(top + np.log(np.exp(z - top[:, None]).sum(axis=1)) - truth / np.exp(log_t)))

    found = minimize_scalar(log_loss, bounds=(np.log(LOWEST), np.log(HIGHEST)), method="bounded",
                            options={"xatol": 1e-4})
    return float(np.exp(found.x))


def cross_fitted(y: np.ndarray, probs: np.ndarray, seed: int) -> np.ndarray:
    """`probs` of the scored rows, each fold (FOLDS, drawn with `seed`) scaled by the temperature fit on the others:
    what the verdict scores, so that no row is scored by a temperature it helped choose."""
    n = len(y)
    folds = min(FOLDS, n)
    if folds < 2:
        return np.asarray(probs).copy()
    fold_of = np.random.default_rng(seed).permutation(n) % folds
    out = np.empty_like(np.asarray(probs))
    for k in range(folds):
        held = fold_of == k
        out[held] = scale(probs[held], fit_temperature(y[~held], probs[~held]))
    return out
