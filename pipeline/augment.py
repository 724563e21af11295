"""Label-preserving augmentation, applied to uint8 batches in the input pipeline (training only).

Levels: none, light (flips and lighting), standard (plus small rotations, zoom and shifts: a random resized
crop), strong (the same, larger; the students' noise in the Noisy Student sense). Which flips keep a label
is the competition's call (`Competition.flips`): satellite tiles take both, hands and fish only mirrors.
"""
from __future__ import annotations

import keras
from keras import layers

STRENGTH = {"light": 0.0, "standard": 1.0, "strong": 1.5}


def augmenter(level: str, flips: str) -> keras.Sequential | None:
    """A Keras pipeline of random layers for `level`, or None for "none"."""
    if level == "none":
        return None
    if level not in STRENGTH:
        raise ValueError(f"unknown augmentation level {level!r}; expected none, {', '.join(STRENGTH)}")
    s = STRENGTH[level]
    steps = [layers.RandomFlip(flips)] if flips != "none" else []
    if s > 0:
        steps += [layers.RandomRotation(0.04 * s, fill_mode="reflect"),
                  layers.RandomZoom((-0.2 * s, 0.05 * s), fill_mode="reflect"),  # zooming in = a random resized crop
                  layers.RandomTranslation(0.08 * s, 0.08 * s, fill_mode="reflect")]
    steps += [layers.RandomBrightness(0.2 * max(s, 1.0), value_range=(0, 255)), layers.RandomContrast(0.25 * max(s, 1.0))]
    return keras.Sequential(steps, name=f"augment_{level}")
