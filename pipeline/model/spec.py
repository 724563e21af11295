"""What a model is: the few settings that build, fit and predict it (TrainSettings), and which model learns which
items with which loss (ModelSpec).

Why narrow: training reads ten of a run's options. A benchmark or a test builds and fits a model from a
TrainSettings (`TrainSettings.defaults(...)`) without inventing a run, and a run passes `TrainSettings.of(cfg)`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import keras

from pipeline.model import backbones as models


@dataclass(frozen=True)
class TrainSettings:
    """The options building, fitting and predicting read; their meaning, bounds and defaults are RunConfig's."""

    backbone: str
    width: int
    weights: str
    image_size: int
    batch_size: int
    min_steps: int
    learning_rate: float
    weight_decay: float
    label_smoothing: float
    tta: bool
    jit: str  # --jit: auto | on | off (train.xla_enabled resolves it)

    @classmethod
    def of(cls, options) -> "TrainSettings":
        """The settings of a run's options (a RunConfig): the same names, the values its option table checked."""
        return cls(**{f.name: getattr(options, f.name) for f in dataclasses.fields(cls)})

    @classmethod
    def defaults(cls, **changes) -> "TrainSettings":
        """RunConfig's defaults with `changes`: one table of defaults, for runs, tests and benchmarks alike."""
        from pipeline.run.config import RunConfig

        table = {f.name: f.default for f in dataclasses.fields(RunConfig)}
        return cls(**{**{f.name: table[f.name] for f in dataclasses.fields(cls)}, **changes})


class MaskedBinaryCrossentropy(keras.losses.Loss):
    """Keras's BinaryCrossentropy (with label smoothing) over the known tags only: a NaN target is no label.

    A pseudo-labeled multi-label item keeps the tags its labeling model is sure of and leaves the rest
    unlabeled (UPS, Rizve et al. 2021), instead of forcing a 0 or 1 on every tag. With no NaN it equals Keras's loss.
    """

    def __init__(self, label_smoothing: float = 0.0, name: str = "masked_binary_crossentropy") -> None:
        super().__init__(name=name)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        from keras import ops

        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(y_true, y_pred.dtype)
        known = ops.logical_not(ops.isnan(y_true))
        target = ops.where(known, y_true, ops.zeros_like(y_true)) * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
        per_tag = ops.binary_crossentropy(target, y_pred)
        weight = ops.cast(known, y_pred.dtype)
        return ops.sum(per_tag * weight, axis=-1) / ops.maximum(ops.sum(weight, axis=-1), 1.0)

    def get_config(self) -> dict:
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


@dataclass(frozen=True)
class ModelSpec:
    """How items are fed (uint8 images, or cached embeddings of a frozen backbone) and which model learns them."""

    settings: TrainSettings
    n_classes: int
    multi_label: bool
    flips: str = "horizontal"  # which mirror images keep the label (the competition's call)
    feature_dim: int | None = None  # set in feature-cache mode

    def build(self) -> keras.Model:
        if self.feature_dim is not None:
            return models.feature_classifier(self.feature_dim, self.n_classes, self.multi_label)
        settings = self.settings
        if settings.backbone == models.RESNET:
            backbone = models.resnet(settings.image_size, settings.width)
        elif settings.backbone == models.SMALL_CNN:
            backbone = models.small_cnn(settings.image_size)
        else:
            backbone = models.pretrained_backbone(settings.backbone, settings.image_size, settings.weights)
        return models.image_classifier(backbone, self.n_classes, self.multi_label, trainable_backbone=True)

    def loss(self) -> keras.losses.Loss:
        smoothing = self.settings.label_smoothing
        if self.multi_label:
            return MaskedBinaryCrossentropy(label_smoothing=smoothing)
        return keras.losses.CategoricalCrossentropy(label_smoothing=smoothing)

    def steps(self, n_items: int, epochs: int) -> int:
        """The optimizer steps of one fit: `epochs` passes over its n_items labeled items, --batch-size a step, at
        least --min-steps. A student round's budget too, whatever its pseudo-labels (see pipeline/method/rounds.py):
        they ride on top of each step's labeled batch, so the control, trained on the labeled items alone, gets
        the same steps and one cached control serves every pseudo-label setting."""
        return max(self.settings.min_steps, epochs * math.ceil(n_items / self.settings.batch_size))


def pseudo_batch_size(batch_size: int, n_train: int, n_pseudo: int) -> int:
    """Pseudo-labeled items added to each step's --batch-size train items: their share of the pool, at most as
    many as the train items (1/4 of the combined set -> a third of a batch on top), at least 1."""
    if n_pseudo <= 0:
        return 0
    return int(min(batch_size, max(1, round(batch_size * n_pseudo / max(n_train, 1)))))
