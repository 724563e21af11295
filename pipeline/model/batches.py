"""What each optimizer step of a fit sees: the labeled stream, and what a student adds on top of it, augmented."""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from pipeline.data import augment
from pipeline.data import streams as data
from pipeline.model import online, own_statistics
from pipeline.model.spec import ModelSpec, pseudo_batch_size


def training_batches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int,
                     pseudo: tuple[np.ndarray, np.ndarray] | None = None, weights: np.ndarray | None = None,
                     pseudo_weights: np.ndarray | None = None,
                     apart: tuple[keras.Sequential | None, keras.Sequential | None] | None = None
                     ) -> tuple[tf.data.Dataset, int]:
    """Endless (items, targets, loss weights) batches of a fit, and how many pseudo-labeled items each batch adds
    (see train.fit). `apart`: (the labeled items' augmentation, the pseudo-labeled items') applied to each stream
    before they join a batch (--pseudo-augment); without it the batches are as drawn, for fit_batches to augment."""
    noise, pseudo_noise = apart or (None, None)
    batches = augmented(data.training_stream(x, y, seed, weights).batch(batch_size), noise)
    if pseudo is None or len(pseudo[0]) == 0:
        return batches, 0
    extra = pseudo_batch_size(batch_size, len(x), len(pseudo[0]))
    on_top = augmented(data.training_stream(*pseudo, seed + 1, pseudo_weights).batch(extra), pseudo_noise)
    if apart:
        return data.joined(batches, on_top), extra
    return tf.data.Dataset.zip((batches, on_top)).map(
        lambda a, b: tuple(tf.concat([a[i], b[i]], axis=0) for i in range(3))), extra


def augmented(stream: tf.data.Dataset, layers: keras.Sequential | None) -> tf.data.Dataset:
    """(items, targets, loss weights) batches with `layers` applied to the items; the stream itself without."""
    if layers is None:
        return stream
    return stream.map(lambda items, targets, w: (layers(tf.cast(items, tf.float32), training=True), targets, w),
                      num_parallel_calls=tf.data.AUTOTUNE)


def fit_batches(spec: ModelSpec, x: np.ndarray, y: np.ndarray, seed: int, augment_level: str,
                pseudo: tuple[np.ndarray, np.ndarray] | None, weights: np.ndarray | None,
                pseudo_weights: np.ndarray | None, unlabeled: np.ndarray | None,
                pseudo_foreign: np.ndarray | None, pseudo_level: str | None = None) -> tuple[tf.data.Dataset, int]:
    """A fit's batches with `augment_level` applied to every labeled and pseudo-labeled item (`pseudo_level`, when
    given and different, to the pseudo-labeled ones), and how many items each step adds to its --batch-size labeled
    ones. Three shapes, for three train steps (train.fit attaches them): one batch (labeled + pseudo-labeled), labeled
    + test images in two views (`unlabeled`: online.py), or one batch and the foreign pseudo-labeled items apart
    (`pseudo_foreign`: own_statistics.py)."""
    batch_size = spec.settings.batch_size
    noise = augment.augmenter(augment_level, spec.flips)
    noisy = lambda items: noise(tf.cast(items, tf.float32), training=True)  # noqa: E731  (used where noise is set)
    if pseudo is not None and unlabeled is None and pseudo_level not in (None, augment_level):
        return _apart_noise(spec, x, y, seed, noise, augment.augmenter(pseudo_level, spec.flips), pseudo, weights,
                            pseudo_weights, pseudo_foreign)
    if unlabeled is not None or pseudo_foreign is not None:
        labeled = data.training_stream(x, y, seed, weights).batch(batch_size)  # the control's own stream
    if unlabeled is not None:
        return online.batches(augmented(labeled, noise), len(x), unlabeled, batch_size, seed, spec.flips,
                              images=spec.feature_dim is None)
    if pseudo_foreign is not None:
        batches, extra = own_statistics.batches(labeled, *pseudo, pseudo_weights, pseudo_foreign,
                                                pseudo_batch_size(batch_size, len(x), len(pseudo[0])), seed)
        if noise is None:
            return batches, extra
        return batches.map(lambda a, b: ((noisy(a[0]), a[1], a[2]), (noisy(b[0]), b[1], b[2])),
                           num_parallel_calls=tf.data.AUTOTUNE), extra
    batches, extra = training_batches(x, y, batch_size, seed, pseudo, weights, pseudo_weights)
    return augmented(batches, noise), extra  # one warp over the step's whole batch, as drawn



def _apart_noise(spec: ModelSpec, x: np.ndarray, y: np.ndarray, seed: int, noise, pseudo_noise,
                 pseudo: tuple[np.ndarray, np.ndarray], weights: np.ndarray | None, pseudo_weights: np.ndarray | None,
                 pseudo_foreign: np.ndarray | None) -> tuple[tf.data.Dataset, int]:
    """fit_batches' one-batch and two-pass shapes with the pseudo-labeled items under noise of their own
    (--pseudo-augment): each stream is augmented before the step's batch is put together, so the labeled items get
    the control's augmentation, drawn apart from the pseudo-labeled items' (FixMatch: labels from a plain view,
    learned under strong noise)."""
    batch_size = spec.settings.batch_size
    if pseudo_foreign is None:
        return training_batches(x, y, batch_size, seed, pseudo, weights, pseudo_weights, apart=(noise, pseudo_noise))
    labeled = augmented(data.training_stream(x, y, seed, weights).batch(batch_size), noise)
    return own_statistics.batches(labeled, *pseudo, pseudo_weights, pseudo_foreign,
                                  pseudo_batch_size(batch_size, len(x), len(pseudo[0])), seed,
                                  lambda stream: augmented(stream, pseudo_noise))
