"""--adapt-bn: batch-norm statistics re-estimated on a test group's own images (AdaBN), then put back."""
from __future__ import annotations

import numpy as np
import pytest


def _bn_model(n_classes: int = 3):
    import keras

    inputs = keras.Input((4, 4, 3))
    x = keras.layers.BatchNormalization(name="bn")(inputs)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="head")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


def test_adapted_statistics_are_the_size_weighted_moments_of_the_rows_and_are_put_back():
    from pipeline.model.train import adapted_batch_norm, restore_batch_norm

    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (50, 4, 4, 3), dtype=np.uint8)
    rows = np.arange(3, 50, 2)  # 24 rows: batches of 10, 10 and 4
    model = _bn_model()
    layer = model.get_layer("bn")
    before = layer.moving_mean.numpy().copy(), layer.moving_variance.numpy().copy()
    saved = adapted_batch_norm(model, source, rows, batch_size=10)
    images = source[rows].astype(np.float64)
    np.testing.assert_allclose(layer.moving_mean.numpy(), images.mean(axis=(0, 1, 2)), rtol=1e-5)
    batches = [images[i:i + 10] for i in range(0, len(rows), 10)]
    expected_variance = sum(len(b) * b.var(axis=(0, 1, 2)) for b in batches) / len(rows)
    np.testing.assert_allclose(layer.moving_variance.numpy(), expected_variance, rtol=1e-4)
    assert layer.momentum == pytest.approx(0.99)  # Keras's default is back
    restore_batch_norm(saved)
    np.testing.assert_array_equal(layer.moving_mean.numpy(), before[0])
    np.testing.assert_array_equal(layer.moving_variance.numpy(), before[1])


def test_adapted_prediction_of_a_darkened_group_equals_the_prediction_of_the_original_images():
    """Batch norm on the raw pixels: dividing the images by 2 moves every statistic with them, so after adaptation
    the darkened group is normalised exactly as the original one was, and the model predicts the same."""
    from pipeline.model import train
    from pipeline.model.spec import ModelSpec, TrainSettings

    rng = np.random.default_rng(1)
    bright = rng.integers(0, 256, (40, 4, 4, 3), dtype=np.uint8)
    dark = (bright // 2).astype(np.uint8)
    model = _bn_model()
    model.get_layer("bn").set_weights([np.ones(3), np.zeros(3), np.full(3, 10.0), np.full(3, 400.0)])
    model.get_layer("head").set_weights([rng.normal(size=(3, 3)), np.zeros(3)])
    spec = ModelSpec(TrainSettings.defaults(tta=False), 3, multi_label=False)
    on_bright = train.predict(model, bright, None, spec, adapt=True)
    on_dark = train.predict(model, dark, None, spec, adapt=True)
    unadapted_dark = train.predict(model, dark, None, spec)
    assert np.abs(on_dark - on_bright).max() < 0.02  # the integer halving rounds: not exactly equal
    assert np.abs(unadapted_dark - on_bright).max() > 0.05  # without adaptation the darkening shows
    assert model.get_layer("bn").moving_mean.numpy() == pytest.approx([10.0] * 3)  # put back after predicting
