"""Label-preserving augmentation, applied to float batches in the input pipeline (training only).

Levels: none, light (flips and lighting), standard (plus small rotations, zoom and shifts: a random resized
crop), strong (the same, larger; the students' noise in the Noisy Student sense). Which flips keep a label
is the competition's call (`Competition.flips`): satellite tiles take both, hands and fish only mirrors.

The flip, rotation, zoom and shift of an image are one projective warp (`RandomGeometry`), drawn from the same
distributions as Keras's RandomFlip, RandomRotation, RandomZoom and RandomTranslation: chained, those layers warp
the batch three times (and flip it): on 2 CPU cores, `standard` at batch 32 cost 32-42 ms of CPU a batch, the
one warp 9-18 ms (`make bench ARGS=augment` prints both), and a 60-step fit ran 1.26x faster. One resampling
also blurs less than three. Flips alone (`light`) stay Keras's RandomFlip, which copies pixels.
"""
from __future__ import annotations

import math

import keras
from keras import layers, ops

from pipeline.plugin.api import FLIPS

STRENGTH = {"light": 0.0, "standard": 1.0, "strong": 1.5}


def geometry(draws, height, width, rotation: float, zoom: tuple[float, float], translation: float,
             flip_horizontal: bool, flip_vertical: bool):
    """Per-image warps for `keras.ops.image.affine_transform`, from uniform draws in [0, 1) of shape [N, 6].

    For each output pixel, where in the input it comes from: mirrored (draw < 0.5 flips, per allowed axis),
    rotated by up to `rotation` turns either way about the centre, scaled by 1 + z with z in `zoom` (below 0
    samples a smaller region: zooms in) and shifted by up to `translation` of the side either way. Keras's
    layers in sequence compose the same way: the flip's input is the rotation's output, and so on.
    """
    height, width = ops.cast(height, "float32"), ops.cast(width, "float32")
    angle = (2 * draws[:, 0] - 1) * rotation * 2 * math.pi
    scale = 1 + zoom[0] + (zoom[1] - zoom[0]) * draws[:, 1]
    shift_x = (2 * draws[:, 2] - 1) * translation * width
    shift_y = (2 * draws[:, 3] - 1) * translation * height
    ones = ops.ones_like(scale)
    mirror_x = ops.where(draws[:, 4] < 0.5, -ones, ones) if flip_horizontal else ones
    mirror_y = ops.where(draws[:, 5] < 0.5, -ones, ones) if flip_vertical else ones
    centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
    cos, sin = ops.cos(angle), ops.sin(angle)
    # input - centre = mirror * rotation * scale * (output - centre - shift)
    a00, a01 = mirror_x * cos * scale, -mirror_x * sin * scale
    a10, a11 = mirror_y * sin * scale, mirror_y * cos * scale
    offset_x, offset_y = -centre_x - shift_x, -centre_y - shift_y
    zeros = ops.zeros_like(scale)
    return ops.stack([a00, a01, a00 * offset_x + a01 * offset_y + centre_x,
                      a10, a11, a10 * offset_x + a11 * offset_y + centre_y, zeros, zeros], axis=1)


class RandomGeometry(layers.Layer):
    """Random flip, rotation, zoom and shift of each image as one bilinear warp with reflected borders."""

    def __init__(self, rotation: float = 0.0, zoom: tuple[float, float] = (0.0, 0.0), translation: float = 0.0,
                 flips: str = "none", seed: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if flips not in FLIPS:  # the plugins' own choices (pipeline/plugin/contract.py)
            raise ValueError(f"flips must be one of {', '.join(FLIPS)}, got {flips!r}")
        self.rotation, self.zoom, self.translation, self.flips = rotation, tuple(zoom), translation, flips
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=True):
        if not training:
            return images
        shape = ops.shape(images)
        draws = keras.random.uniform((shape[0], 6), seed=self.seed_generator)
        warps = geometry(draws, shape[1], shape[2], self.rotation, self.zoom, self.translation,
                         "horizontal" in self.flips, "vertical" in self.flips)
        return ops.image.affine_transform(images, warps, interpolation="bilinear", fill_mode="reflect")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "rotation": self.rotation, "zoom": self.zoom, "translation": self.translation,
                "flips": self.flips}


def augmenter(level: str, flips: str) -> keras.Sequential | None:
    """A Keras pipeline of random layers for `level`, or None for "none"."""
    if level == "none":
        return None
    if level not in STRENGTH:
        raise ValueError(f"unknown augmentation level {level!r}; expected none, {', '.join(STRENGTH)}")
    s = STRENGTH[level]
    steps = []
    if s > 0:
        # zooming in (down to 0.8 of the side at `standard`) is a random resized crop
        steps.append(RandomGeometry(rotation=0.04 * s, zoom=(-0.2 * s, 0.05 * s), translation=0.08 * s, flips=flips))
    elif flips != "none":  # flips alone: Keras's RandomFlip copies pixels, cheaper than a warp
        steps.append(layers.RandomFlip(flips))
    steps += [layers.RandomBrightness(0.2 * max(s, 1.0), value_range=(0, 255)), layers.RandomContrast(0.25 * max(s, 1.0))]
    return keras.Sequential(steps, name=f"augment_{level}")
