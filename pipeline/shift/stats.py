"""Two-sample statistics for distribution shift: KS, normalised Wasserstein, Cramér's V, adversarial AUC.

Each function compares set A with set B and returns plain numbers; deciding OK/WARN/FAIL is shift.py's job.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from scipy.stats.contingency import association
from sklearn.base import clone
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import roc_auc_score


@dataclass(frozen=True)
class NumericComparison:
    ks_d: float  # Kolmogorov-Smirnov statistic: largest gap between the two empirical CDFs, 0..1
    ks_p: float  # its p-value, uncorrected
    emd: float  # Wasserstein-1 (earth mover's) distance, in the property's units
    emd_norm: float  # emd / standard deviation of both sets pooled (0 when both are the same constant)


def compare_numeric(a: np.ndarray, b: np.ndarray) -> NumericComparison:
    """KS and Wasserstein distance between two samples of one numeric property.

    The Wasserstein distance is divided by the pooled standard deviation so that one threshold fits
    every property: a shift of the whole distribution by k standard deviations gives about k (for small k).
    The pooled standard deviation, not the IQR, because many properties here (height, width, format
    sizes) are constant within a set, where the IQR is 0 although the sets differ.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        raise ValueError(f"compare_numeric needs two non-empty samples, got sizes {len(a)} and {len(b)}")
    with warnings.catch_warnings():
        # scipy tries the exact p-value first and, where that overflows (two equal-size groups of a two-valued
        # property: the hand photos' file sizes), warns and falls back to the asymptotic one, the answer either way
        warnings.filterwarnings("ignore", message="ks_2samp: Exact calculation unsuccessful", category=RuntimeWarning)
        ks = stats.ks_2samp(a, b)
    emd = float(stats.wasserstein_distance(a, b))
    scale = float(np.std(np.concatenate([a, b])))
    return NumericComparison(
        ks_d=float(ks.statistic), ks_p=float(ks.pvalue), emd=emd, emd_norm=emd / scale if scale > 0 else 0.0
    )


def cramers_v(a: Sequence[str], b: Sequence[str]) -> tuple[float, float]:
    """(Cramér's V, chi-squared p-value) of set membership against a categorical property.

    V is 0 when both sets have the same mix of categories and 1 when they share none. A property with a
    single category in both sets cannot differ: (0, 1).
    """
    labels = pd.Series(list(a) + list(b), dtype="string")
    membership = np.repeat(["a", "b"], [len(a), len(b)])
    table = pd.crosstab(membership, labels.to_numpy()).to_numpy()
    if table.shape[0] < 2 or table.shape[1] < 2:
        return 0.0, 1.0
    v = float(association(table, method="cramer"))
    p = float(stats.chi2_contingency(table).pvalue)
    return v, p


@dataclass(frozen=True)
class AdversarialResult:
    auc: float  # out-of-bag ROC AUC of telling B from A (0.5 = cannot tell)
    p_value: float  # permutation p-value of that AUC: (1 + #permuted AUCs >= auc) / (1 + n_permutations)
    permuted_aucs: np.ndarray  # the same AUC after refitting on shuffled set labels
    importances: dict[str, float]  # impurity importance of each property (sums to 1)
    prob_b: np.ndarray  # out-of-bag probability of belonging to B, one per row (A rows first, then B)


def adversarial_validation(
    xa: np.ndarray,
    xb: np.ndarray,
    feature_names: Sequence[str],
    *,
    n_permutations: int = 19,
    n_trees: int = 50,
    seed: int = 0,
    workers: int = 1,  # threads fitting forests
) -> AdversarialResult:
    """A random forest that tries to tell rows of B from rows of A, scored by its out-of-bag AUC.

    An AUC near 0.5 means the properties carry no trace of which set an image came from. Out-of-bag
    predictions are cross-validation that comes with one fit (each tree is scored on the rows its bootstrap
    left out), so the permutation test costs n_permutations + 1 fits instead of k times that: the same
    forest is refit on shuffled set labels, which also accounts for any optimism of the forest itself.
    The smallest possible p-value is 1 / (n_permutations + 1).
    """
    if len(xa) < 2 or len(xb) < 2:
        raise ValueError(f"adversarial validation needs at least 2 images per set, got {len(xa)} and {len(xb)}")
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations!r}")
    x = np.vstack([xa, xb]).astype(np.float64)
    y = np.repeat([0, 1], [len(xa), len(xb)])
    forest = RandomForestClassifier(
        n_estimators=n_trees, min_samples_leaf=3, max_features="sqrt", oob_score=True, random_state=seed, n_jobs=1,
    )  # no class_weight: sklearn would weight the bootstrap too, leaving some rows of the smaller set never out of bag

    def oob_fit(labels: np.ndarray, keep: bool) -> tuple[float, np.ndarray | None, RandomForestClassifier | None]:
        fitted = clone(forest).fit(x, labels)
        votes = fitted.oob_decision_function_
        prob = np.where(votes.sum(axis=1) > 0, votes[:, 1], 0.5)  # no out-of-bag vote (rare): undecided
        return float(roc_auc_score(labels, prob)), prob if keep else None, fitted if keep else None

    rng = np.random.default_rng(seed)
    label_sets = [y] + [rng.permutation(y) for _ in range(n_permutations)]
    # Fits run in threads (the tree builder releases the GIL), one forest each, so results do not depend on
    # timing; only the forest on the true labels is kept.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        fits = list(pool.map(oob_fit, label_sets, [True] + [False] * n_permutations))
    auc, prob_b, fitted = fits[0]
    permuted = np.array([f[0] for f in fits[1:]])
    p_value = (1 + int(np.sum(permuted >= auc))) / (1 + n_permutations)
    importances = dict(zip(feature_names, (float(v) for v in fitted.feature_importances_)))
    return AdversarialResult(auc=auc, p_value=p_value, permuted_aucs=permuted, importances=importances, prob_b=prob_b)
