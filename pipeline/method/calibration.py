"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"): one number per model, fit on
the scored rows, that softens (T > 1) or sharpens (T < 1) its class probabilities so that their log loss is lowest.

A network trained on a few labels is overconfident: a wrong answer at 0.99 costs 4.6 nats of log loss, and one such
row can cost more than the class prior would. Dividing the log-probabilities by T keeps every argmax (accuracy and
the pseudo-label ranking do not change) and fixes most of that.

On a few scored rows the fit alone is not to be trusted: 16 rows the model gets right ask for the sharpest
temperature there is, and the next wrong answer then costs 10 nats. So the fit is a MAP estimate with a normal prior on
log T centred on 1 (the model as trained; PRIOR_SD): the rows' summed log loss outweighs it as they grow (at 100 rows
it moves a needed T of 2 by a few percent), and on 16 it keeps the temperature where one wrong row cannot dominate.

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
PRIOR_SD = 1.0  # of log T: a temperature beyond e^(+-2) (0.14 .. 7.4) needs the rows to ask for it
_EPS = 1e-7


def scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax of log(probs) / temperature, row by row (float64 inside, the input's dtype out)."""
    logits = np.log(np.clip(np.asarray(probs, np.float64), _EPS, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return (scaled / scaled.sum(axis=1, keepdims=True)).astype(np.asarray(probs).dtype)


def fit_temperature(y: np.ndarray, probs: np.ndarray, prior_sd: float | None = PRIOR_SD) -> float:
    """The temperature in [LOWEST, HIGHEST] with the lowest summed log loss of `probs` (rows of class probabilities)
    against one-hot `y` plus the prior's penalty (log T)^2 / (2 prior_sd^2); 1.0 when there is nothing to fit (no
    row). `prior_sd` None: no prior (how runs before it were calibrated; `runs rescore` reproduces them)."""
    y, log_p = np.asarray(y, np.float64), np.log(np.clip(np.asarray(probs, np.float64), _EPS, 1.0))
    if len(y) == 0:
        return 1.0
    truth = (y * log_p).sum(axis=1)

    def log_loss(log_t: float) -> float:
        z = log_p / np.exp(log_t)
        top = z.max(axis=1)
        loss = float(np.sum(top + np.log(np.exp(z - top[:, None]).sum(axis=1)) - truth / np.exp(log_t)))
        if prior_sd is None:
            return loss / len(y)  # the mean, as runs before the prior minimised it
        return loss + log_t ** 2 / (2 * prior_sd ** 2)

    found = minimize_scalar(log_loss, bounds=(np.log(LOWEST), np.log(HIGHEST)), method="bounded",
                            options={"xatol": 1e-4})
    return float(np.exp(found.x))


def cross_fitted(y: np.ndarray, probs: np.ndarray, seed: int, prior_sd: float | None = PRIOR_SD) -> np.ndarray:
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
        out[held] = scale(probs[held], fit_temperature(y[~held], probs[~held], prior_sd))
    return out
