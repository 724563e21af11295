"""The one-warp augmentation: the same transforms as Keras's RandomFlip/Rotation/Zoom/Translation layers."""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from keras import layers, ops  # noqa: E402

from pipeline.data import augment  # noqa: E402
from pipeline.model.train import seed_everything  # noqa: E402

NO_CHANGE = dict(rotation=0.0, zoom=(0.0, 0.0), translation=0.0, flip_horizontal=False, flip_vertical=False)
MIDDLE = [0.5, 0.5, 0.5, 0.5, 0.9, 0.9]  # the draws of no rotation, zoom, shift or flip


def smooth_image(height: int = 64, width: int = 48) -> np.ndarray:
    """A smooth, non-symmetric [1, H, W, 3] image: interpolation errors stay small, every warp shows."""
    yy, xx = np.mgrid[0:height, 0:width]
    channels = [np.sin(xx / 5) + np.cos(yy / 7), np.cos(xx / 9) * yy / height, (xx + 2 * yy) / 100]
    return (np.stack(channels, axis=-1)[None] * 100).astype("float32")


def warp(image: np.ndarray, draws: list[float], **settings) -> np.ndarray:
    transform = augment.geometry(ops.convert_to_tensor(np.array([draws], "float32")), image.shape[1], image.shape[2],
                                 **{**NO_CHANGE, **settings})
    return ops.convert_to_numpy(ops.image.affine_transform(image, transform, interpolation="bilinear", fill_mode="reflect"))


def test_no_draw_leaves_the_image_and_flips_mirror_it_exactly():
    image = smooth_image()
    assert np.array_equal(warp(image, MIDDLE), image)
    assert np.array_equal(warp(image, [0.5, 0.5, 0.5, 0.5, 0.1, 0.9], flip_horizontal=True), image[:, :, ::-1])
    assert np.array_equal(warp(image, [0.5, 0.5, 0.5, 0.5, 0.9, 0.1], flip_vertical=True), image[:, ::-1])
    assert np.array_equal(warp(image, [0.5, 0.5, 0.5, 0.5, 0.1, 0.1]), image)  # flips that are not allowed


@pytest.mark.parametrize("draws, settings, layer", [
    ([0.5, 0.0, 0.5, 0.5, 0.9, 0.9], dict(zoom=(-0.2, 0.05)), layers.RandomZoom((-0.2, -0.2), fill_mode="reflect")),
    ([0.5, 1.0, 0.5, 0.5, 0.9, 0.9], dict(zoom=(-0.2, 0.05)), layers.RandomZoom((0.05, 0.05), fill_mode="reflect")),
    ([1.0, 0.5, 0.5, 0.5, 0.9, 0.9], dict(rotation=0.04), layers.RandomRotation((0.04, 0.04), fill_mode="reflect")),
    ([0.0, 0.5, 0.5, 0.5, 0.9, 0.9], dict(rotation=0.04), layers.RandomRotation((-0.04, -0.04), fill_mode="reflect")),
    ([0.5, 0.5, 1.0, 0.0, 0.9, 0.9], dict(translation=0.08),
     layers.RandomTranslation((-0.08, -0.08), (0.08, 0.08), fill_mode="reflect")),
])
def test_each_extreme_draw_is_what_the_keras_layer_does_at_that_factor(draws, settings, layer):
    """The ends of each range equal Keras's layer fixed at that end, so the ranges (and uniform draws between)
    are Keras's: the level's strength means what it meant with the four layers."""
    image = smooth_image()
    expected = ops.convert_to_numpy(layer(image, training=True))
    assert np.abs(warp(image, draws, **settings) - expected).max() < 1e-2


def test_one_warp_is_the_four_layers_in_sequence():
    image = smooth_image()
    chain = [layers.RandomRotation((0.04, 0.04), fill_mode="reflect"), layers.RandomZoom((-0.2, -0.2), fill_mode="reflect"),
             layers.RandomTranslation((0.05, 0.05), (0.05, 0.05), fill_mode="reflect")]
    expected = image[:, :, ::-1]  # the flip first, as RandomFlip was
    for layer in chain:
        expected = ops.convert_to_numpy(layer(expected, training=True))
    got = warp(image, [1.0, 0.0, 1.0, 1.0, 0.1, 0.9], rotation=0.04, zoom=(-0.2, 0.05), translation=0.05,
               flip_horizontal=True)
    inner = (slice(None), slice(12, -12), slice(12, -12))  # borders: one reflection vs three
    # three resamplings blur a little more than one; a wrong composition is off by tens
    assert np.abs(got - expected)[inner].mean() < 0.5
    assert np.abs(warp(image, MIDDLE) - expected)[inner].mean() > 10


def test_levels_and_reproducibility():
    assert augment.augmenter("none", "horizontal") is None
    with pytest.raises(ValueError, match="unknown augmentation level 'heavy'"):
        augment.augmenter("heavy", "horizontal")
    with pytest.raises(ValueError, match="flips must be"):
        augment.RandomGeometry(flips="diagonal")
    assert not any(isinstance(layer, augment.RandomGeometry) for layer in augment.augmenter("light", "none").layers)
    light = augment.augmenter("light", "horizontal")  # flips alone: Keras's RandomFlip, no warp
    assert [type(layer) for layer in light.layers][:1] == [layers.RandomFlip]
    images = np.repeat(smooth_image(), 8, axis=0)
    outputs = []
    for _ in range(2):
        seed_everything(3)
        noise = augment.augmenter("strong", "horizontal_and_vertical")
        outputs.append(ops.convert_to_numpy(noise(images, training=True)))
    assert np.array_equal(outputs[0], outputs[1])  # same seed, same noise
    assert not np.allclose(outputs[0][0], outputs[0][1])  # each image its own draw
    assert outputs[0].shape == images.shape
