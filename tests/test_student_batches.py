"""A student's batches: the control's own batch of labeled items, with pseudo-labeled items on top."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.parametrize("n_train, n_pseudo, expected", [
    (640, 600, 30),  # about one pseudo-labeled item per labeled one
    (80, 1520, 32),  # few labels, a large pool: capped at the batch size
    (300, 100, 11),  # a quarter of the combined set: a third of a batch on top
    (1000, 1, 1),  # never rounded away
    (10, 0, 0),
])
def test_pseudo_items_per_batch_follow_their_share_of_the_pool(n_train, n_pseudo, expected):
    from pipeline.train import pseudo_batch_size

    assert pseudo_batch_size(32, n_train, n_pseudo) == expected


def test_the_labeled_part_of_each_batch_is_what_a_fit_without_pseudo_labels_sees():
    from pipeline.train import training_batches

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 255, (50, 4, 4, 3), dtype=np.uint8), rng.random((50, 3)).astype(np.float32)
    x_pseudo = np.full((20, 4, 4, 3), 7, dtype=np.uint8)  # recognisable: no labeled image is constant 7
    x[x == 7] = 8
    y_pseudo = np.full((20, 3), np.nan, dtype=np.float32)
    alone, none_added = training_batches(x, y, 8, seed=3)
    mixed, added = training_batches(x, y, 8, seed=3, pseudo=(x_pseudo, y_pseudo))
    assert none_added == 0 and added == 3  # round(8 * 20 / 50)
    for (xa, ya), (xm, ym) in zip(alone.take(12), mixed.take(12)):  # past one pass over both pools
        assert xm.shape[0] == 11 and ym.shape == (11, 3)
        assert np.array_equal(xm[:8], xa) and np.array_equal(ym[:8], ya)
        assert (xm.numpy()[8:] == 7).all() and np.isnan(ym.numpy()[8:]).all()
