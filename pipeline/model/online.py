"""Online pseudo-labels (--pseudo-labels online): the student labels its test images itself, at every step.

Each step sees the control's labeled batch plus test images, each in two views: a weak one (flips, light
lighting) that the student labels, and a strong one (Noisy Student's warp and lighting) that learns that label
(FixMatch, Sohn et al. 2020). An offline pseudo-label is fixed when the round starts, so a student fine-tuned from
an undertrained teacher learns that teacher's mistakes; an online label improves as the student does.

Two refinements from AdaMatch (Berthelot et al. 2022), made for a test set that differs from train:
- the label counts only where the student's confidence in it clears RELATIVE_THRESHOLD x its mean confidence on
  the step's labeled items: a fixed 0.95 hands over nothing from a weak model and everything from a strong one,
  while a relative cut follows how sure the model can be on this problem at this point of training;
- the weak view's probabilities are multiplied by the labeled batch's mean prediction over the test batch's
  (distribution alignment), so a shifted group whose predictions collapse onto a few classes is pulled back to
  the train class balance before its labels are taken.
Labeled and test images go through the network in one batch, so batch normalisation sees both.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from pipeline.data import augment
from pipeline.data import streams as data
from pipeline.model.spec import pseudo_batch_size

RELATIVE_THRESHOLD = 0.9  # AdaMatch's tau
UNLABELED_WEIGHT = 1.0  # the test images' loss beside the labeled batch's (FixMatch's lambda_u)
WEAK, STRONG = "light", "strong"  # the augmentation levels of the two views (pipeline/data/augment.py)


def batches(labeled: tf.data.Dataset, n_labeled: int, unlabeled: np.ndarray, batch_size: int, seed: int, flips: str,
            images: bool) -> tuple[tf.data.Dataset, int]:
    """Endless ((labeled items, targets, loss weights), (weak views, strong views)) batches, and how many test
    images each step adds (`pseudo_batch_size`). `labeled` is the control's own batched, augmented stream of its
    `n_labeled` items; `images` False (cached embeddings) leaves both views as they are."""
    extra = pseudo_batch_size(batch_size, n_labeled, len(unlabeled))
    placeholder = np.zeros((len(unlabeled), 1), np.float32)  # the stream carries targets; test images have none
    test = data.training_stream(unlabeled, placeholder, seed + 1).batch(extra)
    weak = augment.augmenter(WEAK, flips) if images else None
    strong = augment.augmenter(STRONG, flips) if images else None

    def views(items, _targets, _weights):
        items = tf.cast(items, tf.float32)
        if weak is None:
            return items, items
        return weak(items, training=True), strong(items, training=True)

    test = test.map(views, num_parallel_calls=tf.data.AUTOTUNE)
    return tf.data.Dataset.zip((labeled, test)), extra


def attach(model: keras.Model, label_smoothing: float) -> None:
    """Make `model`'s compiled train step the online one (call after compile, before fit)."""

    def train_step(batch):
        (x, y, w), (weak, strong) = batch
        n, u = tf.shape(x)[0], tf.shape(weak)[0]
        with tf.GradientTape() as tape:
            probs = model(tf.concat([tf.cast(x, tf.float32), weak, strong], axis=0), training=True)
            labeled, guess, learner = probs[:n], tf.stop_gradient(probs[n:n + u]), probs[n + u:]
            target, mask = online_targets(tf.stop_gradient(labeled), guess)
            labeled_loss = tf.reduce_sum(w * keras.losses.categorical_crossentropy(
                y, labeled, label_smoothing=label_smoothing)) / tf.cast(n, tf.float32)
            test_loss = tf.reduce_sum(mask * keras.losses.categorical_crossentropy(
                target, learner, label_smoothing=label_smoothing)) / tf.cast(u, tf.float32)
            loss = labeled_loss + UNLABELED_WEIGHT * test_loss
            if model.losses:
                loss += tf.add_n(model.losses)
            scaled = model.optimizer.scale_loss(loss)  # divided by the replicas under a distribution strategy
        variables = model.trainable_weights
        model.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        return {"loss": loss, "labeled_loss": labeled_loss, "online_share": tf.reduce_mean(mask)}

    model.train_step = train_step


def online_targets(labeled_probs, test_probs):
    """(one-hot targets, 0/1 mask) for a batch of test images from their weak views' probabilities: aligned to the
    labeled batch's class distribution, kept where confident relative to the labeled batch (AdaMatch)."""
    eps = 1e-6
    aligned = test_probs * (tf.reduce_mean(labeled_probs, axis=0) + eps) / (tf.reduce_mean(test_probs, axis=0) + eps)
    aligned = aligned / tf.reduce_sum(aligned, axis=1, keepdims=True)
    cut = RELATIVE_THRESHOLD * tf.reduce_mean(tf.reduce_max(labeled_probs, axis=1))
    mask = tf.cast(tf.reduce_max(aligned, axis=1) >= cut, tf.float32)
    return tf.one_hot(tf.argmax(aligned, axis=1), tf.shape(test_probs)[1]), mask
