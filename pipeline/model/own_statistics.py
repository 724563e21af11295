"""Pseudo-labeled foreign images learn under batch-norm statistics of their own, as they are predicted.

--adapt-bn predicts the test images unlike every train image (a darker camera, night frames) with batch-norm
statistics re-estimated on their own batches (pipeline/method/adaptation.py). A student that trains on them in the
same batch as the labeled items normalises them with the mixed batch's statistics instead: it learns their
pseudo-labels on activations it will never see at prediction, and its moving statistics, which predict every image
drawn like train, drift towards theirs. So each step forwards them in a pass of their own (domain-specific batch
norm, Chang et al. 2019, as AdaBN does at prediction): the labeled items and the pseudo-labeled items drawn like train
in one batch, exactly as before, the foreign ones in a second, whose statistics normalise them and then are dropped
(the moving averages stay those of the first pass). One loss over both, averaged over every item of the step.
"""
from __future__ import annotations

from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from pipeline.data import streams as data

# Statistics of fewer items a step are too noisy to normalise by: on the fisheries sample (60 foreign of 341
# pseudo-labels, 4 a step) the student's private log loss rose from 1.183 (one batch) to 1.196. Below this many a step
# the foreign items stay in the one batch.
MIN_OWN_BATCH = 8


def split_sizes(extra: int, n_pseudo: int, n_foreign: int) -> tuple[int, int]:
    """(pseudo-labeled items drawn like train, foreign items) of each step's `extra` pseudo-labeled items, shared in
    proportion to their numbers (the like-train ones at least 1 when there are any); (extra, 0), one batch for all,
    when the foreign share is under MIN_OWN_BATCH items."""
    own = int(round(extra * n_foreign / n_pseudo)) if n_pseudo else 0
    if own < MIN_OWN_BATCH:
        return extra, 0
    if n_foreign == n_pseudo:
        return 0, extra
    return max(1, extra - own), min(own, extra - 1)


def needed(pseudo: tuple[np.ndarray, np.ndarray] | None, pseudo_foreign: np.ndarray | None, extra: int) -> bool:
    """Whether a fit with `extra` pseudo-labeled items a step trains foreign ones in a pass of their own."""
    if pseudo is None or pseudo_foreign is None or len(pseudo[0]) == 0:
        return False
    return split_sizes(extra, len(pseudo[0]), int(np.sum(pseudo_foreign)))[1] > 0


def batches(labeled: tf.data.Dataset, pseudo_x: np.ndarray, pseudo_y: np.ndarray, pseudo_weights: np.ndarray | None,
            foreign: np.ndarray, extra: int, seed: int,
            noisy: Callable[[tf.data.Dataset], tf.data.Dataset] | None = None) -> tuple[tf.data.Dataset, int]:
    """((labeled + like-train pseudo items, targets, weights), (foreign items, targets, weights)) batches, and how many
    pseudo-labeled items each step adds in all. `labeled` is the control's own batched stream; `noisy`, when given,
    augments each batched pseudo-labeled stream before it joins a step (--pseudo-augment)."""
    noisy = noisy or (lambda stream: stream)
    weights = np.ones(len(pseudo_x), np.float32) if pseudo_weights is None else np.asarray(pseudo_weights, np.float32)
    foreign = np.asarray(foreign, dtype=bool)
    like_train, own = split_sizes(extra, len(pseudo_x), int(foreign.sum()))
    mixed = labeled
    if like_train:
        rest = ~foreign
        on_top = noisy(data.training_stream(pseudo_x[rest], pseudo_y[rest], seed + 1, weights[rest]).batch(like_train))
        mixed = data.joined(labeled, on_top)
    apart = noisy(data.training_stream(pseudo_x[foreign], pseudo_y[foreign], seed + 2, weights[foreign]).batch(own))
    return tf.data.Dataset.zip((mixed, apart)), like_train + own


def attach(model: keras.Model, loss: keras.losses.Loss) -> None:
    """Make `model`'s compiled train step the two-pass one (call after compile, before fit)."""
    norms = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
             if isinstance(layer, keras.layers.BatchNormalization)]

    def train_step(batch):
        (x, y, w), (xf, yf, wf) = batch
        with tf.GradientTape() as tape:
            probs = model(tf.cast(x, tf.float32), training=True)
            kept = [(tf.identity(layer.moving_mean), tf.identity(layer.moving_variance)) for layer in norms]
            with tf.control_dependencies([k for pair in kept for k in pair]):
                foreign_probs = model(tf.cast(xf, tf.float32), training=True)
            with tf.control_dependencies([foreign_probs]):
                for layer, (mean, variance) in zip(norms, kept):
                    layer.moving_mean.assign(mean)
                    layer.moving_variance.assign(variance)
            foreign_total = tf.reduce_sum(wf * loss.call(yf, foreign_probs))
            total = tf.reduce_sum(w * loss.call(y, probs)) + foreign_total
            value = total / tf.cast(tf.shape(x)[0] + tf.shape(xf)[0], tf.float32)
            if model.losses:
                value += tf.add_n(model.losses)
            scaled = model.optimizer.scale_loss(value)  # divided by the replicas under a distribution strategy
        variables = model.trainable_weights
        model.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        # a second key: logs whose keys are exactly the compiled metrics' ("loss") are replaced by those metrics, which
        # this step does not update (Keras's Trainer._get_metrics_result_or_logs), and read 0
        return {"loss": value, "foreign_loss": foreign_total / tf.cast(tf.shape(xf)[0], tf.float32)}

    model.train_step = train_step

