"""Foreign pseudo-labeled items (predicted with batch-norm statistics of their own) train in a pass of their own."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.parametrize("extra, n_pseudo, n_foreign, expected", [
    (32, 1520, 760, (16, 16)),  # half of them foreign: half of the step's pseudo-labeled items
    (32, 1520, 0, (32, 0)),  # none: the one-batch step
    (32, 1520, 1520, (0, 32)),  # all foreign: the labeled batch alone in the first pass
    (21, 341, 60, (21, 0)),  # 4 a step: too few for statistics of their own, they stay in the one batch
    (32, 100, 99, (1, 31)),  # the like-train ones keep at least one item a step
])
def test_each_step_shares_its_pseudo_labeled_items_between_the_two_passes(extra, n_pseudo, n_foreign, expected):
    from pipeline.model.own_statistics import split_sizes

    assert split_sizes(extra, n_pseudo, n_foreign) == expected


def _moving_statistics(model):
    import keras

    return [w.numpy() for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)
            for w in (layer.moving_mean, layer.moving_variance)]


def test_foreign_items_leave_the_moving_statistics_to_the_labeled_batch():
    """With the learning rate at 0 the weights stay put and only the moving statistics move: they are the labeled
    batches' alone when the pseudo-labeled items are foreign, and not when the same items share the batch."""
    from pipeline.model import train
    from pipeline.model.spec import ModelSpec, TrainSettings

    rng = np.random.default_rng(0)
    x = rng.integers(0, 120, (24, 16, 16, 3), dtype=np.uint8)
    y = np.eye(3, dtype=np.float32)[np.arange(24) % 3]
    bright = np.full((24, 16, 16, 3), 250, dtype=np.uint8)  # unlike every labeled image
    targets = np.eye(3, dtype=np.float32)[np.arange(24) % 3]
    spec = ModelSpec(TrainSettings.defaults(backbone="small-cnn", image_size=16, batch_size=8, min_steps=1,
                                            learning_rate=0.0, weight_decay=0.0), n_classes=3, multi_label=False)
    alone, _ = train.fit(spec, "control", x, y, 3, seed=1, augment_level="none")
    apart, info = train.fit(spec, "student", x, y, 3, seed=1, augment_level="none", pseudo=(bright, targets),
                            pseudo_foreign=np.ones(24, bool))
    mixed, _ = train.fit(spec, "student", x, y, 3, seed=1, augment_level="none", pseudo=(bright, targets))
    assert info["pseudo_per_batch"] == 8  # as many as the labeled items, all in the second pass
    assert info["final_loss"] > 0  # the step's own loss, not an untouched compiled metric
    for a, b in zip(_moving_statistics(alone), _moving_statistics(apart)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(a, m, rtol=1e-3) for a, m in zip(_moving_statistics(alone), _moving_statistics(mixed)))
