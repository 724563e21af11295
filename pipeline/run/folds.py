"""--folds auto: how many folds a run gets for its number of labeled images (pipeline.run.stages settles it before
anything reads it, so that config.json, the ledger and every cache key hold a number)."""
from __future__ import annotations

import math

# A holdout of fewer rows than this is too few to measure the pseudo-labels' precision and the student's gain on (20
# held-out rows at 10 labels a class: three right of three is little evidence, one confident mistake sets a
# temperature); K folds score every labeled image out of fold, and the test predictions average K models.
FEW_SCORED_ROWS = 50
AUTO_FOLDS = 5


def folds_for(n_labeled: int, val_fraction: float) -> int:
    """AUTO_FOLDS when a holdout of `n_labeled` labeled images would hold fewer than FEW_SCORED_ROWS of them (and
    each fold keeps at least 2), else one holdout."""
    holdout = math.ceil(n_labeled * val_fraction)  # as train_test_split rounds
    if holdout < FEW_SCORED_ROWS and n_labeled // AUTO_FOLDS >= 2:
        return AUTO_FOLDS
    return 1


def settle(n_labeled: int, val_fraction: float) -> tuple[int, str]:
    """--folds auto for `n_labeled` labeled images: (the folds, the line that says so)."""
    folds, holdout = folds_for(n_labeled, val_fraction), math.ceil(n_labeled * val_fraction)
    if folds == 1:
        return folds, f"--folds auto: one holdout of {holdout} of the {n_labeled} labeled images"
    return folds, (f"--folds auto: {folds} cross-validated folds, every labeled image scored out of fold: a holdout would "
                   f"hold {holdout} of the {n_labeled} (under {FEW_SCORED_ROWS}), too few to measure the pseudo-labels "
                   f"and the student on; --folds 1 trains {folds} times less")
