"""Fit and predict: thin Keras code shared by the teacher and the student."""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pipeline import data, models
from pipeline.config import RunConfig


def seed_everything(seed: int) -> None:
    """Same seed, same machine -> same weights, batches and predictions."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


@dataclass(frozen=True)
class ModelSpec:
    """How items are fed (image paths, or cached embeddings of a frozen backbone) and which model learns them."""

    cfg: RunConfig
    n_classes: int
    multi_label: bool
    feature_dim: int | None = None  # set in feature-cache mode

    def build(self) -> keras.Model:
        if self.feature_dim is not None:
            return models.feature_classifier(self.feature_dim, self.n_classes, self.multi_label)
        if self.cfg.backbone == models.SMALL_CNN:
            backbone = models.small_cnn(self.cfg.image_size)
        else:
            backbone = models.pretrained_backbone(self.cfg.backbone, self.cfg.image_size, self.cfg.weights)
        return models.image_classifier(backbone, self.n_classes, self.multi_label, trainable_backbone=True)

    @property
    def loss(self) -> str:
        return "binary_crossentropy" if self.multi_label else "categorical_crossentropy"


class EpochLog(keras.callbacks.Callback):
    def __init__(self, name: str, epochs: int) -> None:
        super().__init__()
        self.name, self.epochs, self.start = name, epochs, time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        print(f"  {self.name} epoch {epoch + 1}/{self.epochs}: loss {logs.get('loss', float('nan')):.4f}, "
              f"holdout loss {logs.get('val_loss', float('nan')):.4f} ({time.perf_counter() - self.start:.0f}s)", flush=True)


def fit(spec: ModelSpec, name: str, parts: list[tuple[np.ndarray, np.ndarray]], x_val: np.ndarray, y_val: np.ndarray, seed: int,
        epochs: int, init_weights: Path | None = None) -> tuple[keras.Model, dict]:
    """Train on one or more (x, targets) parts mixed in every batch in proportion to their sizes.

    The holdout picks the epoch (early stopping on its loss, best weights restored); it is never trained on.
    `init_weights` starts from saved weights (the teacher's) instead of a random initialisation.
    """
    cfg = spec.cfg
    seed_everything(seed)
    model = spec.build()
    if init_weights is not None:
        model.load_weights(init_weights)
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss=spec.loss)
    sizes = [len(x) for x, _ in parts]
    streams = [data.path_training_stream(x, y, cfg.image_size, seed + k) for k, (x, y) in enumerate(parts)]
    batches = data.mixed_batches(streams, [n / sum(sizes) for n in sizes], cfg.batch_size, seed)
    validation = data.element_dataset(x_val, y_val, cfg.image_size).cache().batch(cfg.batch_size)
    # A model trained from scratch has a noisy holdout loss for its first epochs (batch-norm statistics are
    # still settling), so early stopping only starts watching after a fifth of the epochs.
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=8, restore_best_weights=True,
                                            start_from_epoch=0 if init_weights is not None else epochs // 5)
    with warnings.catch_warnings():  # Keras warns that a tf.data input ignores shuffle=True; ours is shuffled
        warnings.filterwarnings("ignore", message=".*shuffle=True.*")
        history = model.fit(batches, epochs=epochs, steps_per_epoch=math.ceil(sum(sizes) / cfg.batch_size),
                            validation_data=validation, callbacks=[stopper, EpochLog(name, epochs)], verbose=0)
    losses = history.history["val_loss"]
    return model, {"epochs_run": len(losses), "best_epoch": int(np.argmin(losses)) + 1, "best_holdout_loss": float(np.min(losses))}


def predict(model: keras.Model, x: np.ndarray, cfg: RunConfig) -> np.ndarray:
    """Probabilities in input order, streamed batch by batch."""
    if len(x) == 0:
        return np.zeros((0, model.output_shape[-1]), dtype=np.float32)
    return model.predict(data.prediction_dataset(x, cfg.image_size, cfg.batch_size), verbose=0).astype(np.float32)


def embed(backbone: keras.Model, x: np.ndarray, cfg: RunConfig, what: str) -> np.ndarray:
    """Embeddings of a frozen backbone, with progress; computed once and cached by the caller."""
    out = []
    for done, batch in enumerate(data.prediction_dataset(x, cfg.image_size, cfg.batch_size), start=1):
        out.append(backbone(batch, training=False).numpy())
        if done % 20 == 0:
            print(f"  embedded {min(done * cfg.batch_size, len(x))}/{len(x)} {what} images", flush=True)
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, backbone.output_shape[-1]), np.float32)
