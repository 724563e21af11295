"""How much each scored row looks like a test group: importance weights for a verdict per group.

The scored rows are drawn like train, so their score estimates the score on a test group only when the group is
drawn like train too. Weighting each scored row by the density ratio p_group(x) / p_train(x) (Sugiyama et al. 2007;
Shimodaira 2000) estimates the score the group would get, from the labels we have, as long as the group's images
have look-alikes among the scored rows. The effective sample size (ESS, Kish: (sum w)^2 / sum w^2) says how many
rows the weighted estimate really rests on: near the row count when the group looks like train, near zero when no
scored row looks like it (a darkened or night-vision group), where no verdict on labeled rows can see it.

The density ratio comes from a classifier telling train images from the group's, on the properties the image store
measured while decoding (pipeline/data/image_properties.py: the ones the shift check compares): a logistic
regression, whose smooth probabilities make a usable ratio (the shift check's random forest votes near 0 or 1).
Train rows are predicted out of fold, so a row is not weighted by a classifier that saw it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.data.image_properties import NUMERIC_PROPERTIES

FOLDS = 5
_CLIP = 1e-3  # of the classifier's probabilities: a ratio at most ~1000x, so one row cannot take all the weight


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's effective sample size of these weights: (sum w)^2 / sum w^2 (0 when every weight is 0)."""
    weights = np.asarray(weights, np.float64)
    square = float((weights ** 2).sum())
    return float(weights.sum() ** 2 / square) if square > 0 else 0.0


def density_weights(train: pd.DataFrame, scored_paths: np.ndarray, group: pd.DataFrame, seed: int) -> np.ndarray | None:
    """The weight of each scored row (its path among `train`'s) for `group`: the train-vs-group density ratio,
    scaled to mean 1. `train` and `group` are property tables (a path column, then the properties). None when a
    scored path has no properties (it was unreadable) or either side has too few images to fit a classifier."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    row_of = {path: row for row, path in enumerate(train["path"].astype(str))}
    rows = [row_of.get(str(path)) for path in scored_paths]
    if any(row is None for row in rows) or min(len(train), len(group)) < FOLDS:
        return None
    x = np.vstack([_features(train), _features(group)])
    is_group = np.repeat([0, 1], [len(train), len(group)])
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=seed)
    p_group = cross_val_predict(classifier, x, is_group, cv=folds, method="predict_proba")[: len(train), 1]
    p = np.clip(p_group[np.array(rows)], _CLIP, 1 - _CLIP)
    ratio = p / (1 - p) * len(train) / len(group)
    return (ratio / ratio.mean()).astype(np.float64)


def _features(table: pd.DataFrame) -> np.ndarray:
    values = table[list(NUMERIC_PROPERTIES)].to_numpy(np.float64)
    return np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)


def for_groups(train: pd.DataFrame, scored_paths: np.ndarray, groups: dict[str, pd.DataFrame],
               seed: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per test group (its property table in `groups`): the scored rows' weights (`density_weights`; a group it
    cannot weigh is left out) and the share of its images with no train look-alike (adaptation.foreign_images)."""
    from pipeline.method.adaptation import foreign_images

    weights, foreign = {}, {}
    for group, table in groups.items():
        if len(table) == 0:
            continue
        w = density_weights(train, scored_paths, table, seed)
        if w is not None:
            weights[group] = w
            foreign[group] = float(foreign_images(train, table).mean())
    return weights, foreign
