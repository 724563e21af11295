"""The multi-label loss: Keras's binary cross-entropy over the tags that have a label (NaN = no label)."""
from __future__ import annotations

import numpy as np
import pytest


def test_without_missing_tags_it_is_kerass_loss_and_gradient_bit_for_bit():
    import keras
    import tensorflow as tf

    from pipeline.model.spec import MaskedBinaryCrossentropy

    rng = np.random.default_rng(0)
    y = (rng.random((32, 17)) < 0.3).astype(np.float32)
    p = tf.Variable(rng.uniform(0.01, 0.99, (32, 17)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        ours = MaskedBinaryCrossentropy(label_smoothing=0.1)(y, p)
        theirs = keras.losses.BinaryCrossentropy(label_smoothing=0.1)(y, p)
    assert ours.numpy() == theirs.numpy()  # so teachers trained before this loss existed are still the same teachers
    assert np.array_equal(tape.gradient(ours, p).numpy(), tape.gradient(theirs, p).numpy())


def test_missing_tags_add_nothing_to_the_loss_or_the_gradient():
    import keras
    import tensorflow as tf

    from pipeline.model.spec import MaskedBinaryCrossentropy

    y = np.array([[1, np.nan, 0], [np.nan, np.nan, np.nan]], dtype=np.float32)
    p = tf.Variable(np.array([[0.8, 0.3, 0.1], [0.2, 0.6, 0.9]], dtype=np.float32))
    with tf.GradientTape() as tape:
        loss = MaskedBinaryCrossentropy(label_smoothing=0.1).call(y, p)  # per item, before Keras averages the batch
    per_item = loss.numpy()
    known = keras.losses.BinaryCrossentropy(label_smoothing=0.1)(y[:1, [0, 2]], p.numpy()[:1, [0, 2]]).numpy()
    assert per_item[0] == pytest.approx(known, rel=1e-6)  # the mean over the two labeled tags
    assert per_item[1] == 0.0  # an item with no labeled tag
    gradient = tape.gradient(loss, p).numpy()
    assert np.isfinite(gradient).all()
    assert (gradient[np.isnan(y)] == 0).all() and (gradient[~np.isnan(y)] != 0).all()
