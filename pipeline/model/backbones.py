"""Backbones (a small CNN trained from scratch, or any keras.applications model) and classification heads."""
from __future__ import annotations

import importlib

import keras
from keras import layers

from pipeline.errors import UserError

SMALL_CNN = "small-cnn"
RESNET = "resnet"
FROM_SCRATCH = (RESNET, SMALL_CNN)
# Batch-norm moving averages with momentum 0.9 (PyTorch's 0.1), not Keras' 0.99: a from-scratch fit on a small
# data set is a few hundred steps, and 0.99 keeps inference-time statistics close to their initial values for
# hundreds of steps (measured: a 100-step fisheries teacher scored worse than uniform with 0.99)
BN_MOMENTUM = 0.9


def _batch_norm() -> layers.BatchNormalization:
    return layers.BatchNormalization(momentum=BN_MOMENTUM)


class Subsample(layers.Layer):
    """Every `stride`-th pixel of each row and column, starting at the first: what a 1x1 convolution with that stride
    and "valid" padding reads.

    Why: the residual shortcut is a strided 1x1 convolution, and TensorFlow 2.21's oneDNN kernel for its filter
    gradient (Conv2DBackpropFilter) corrupts the heap when the input has few channels (<= 8) and the batch is odd:
    `double free or corruption` or SIGSEGV in the first train step (a student's 32 + 7 batch at --width 8, with 4 of 4
    odd sizes measured). Subsampling, then a unit-stride 1x1 convolution, is the same function with the same weights,
    and its gradient takes the unit-stride kernel (tests/test_models.py).
    """

    def __init__(self, stride: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.stride = int(stride)

    def call(self, images):
        return images[:, ::self.stride, ::self.stride, :]

    def compute_output_shape(self, input_shape):
        def sampled(n):
            return None if n is None else -(-n // self.stride)
        return (input_shape[0], sampled(input_shape[1]), sampled(input_shape[2]), input_shape[3])

    def get_config(self) -> dict:
        return {**super().get_config(), "stride": self.stride}


def pointwise(x, filters: int, stride: int):
    """A 1x1 convolution with `stride`, as Subsample + a unit-stride 1x1 convolution (see Subsample for why)."""
    if stride != 1:
        x = Subsample(stride)(x)
    return layers.Conv2D(filters, 1, use_bias=False)(x)


def application_names() -> list[str]:
    return sorted(name for name in dir(keras.applications) if name[:1].isupper() and callable(getattr(keras.applications, name)))


def _application(name: str):
    if name not in application_names():
        raise UserError(f"unknown --backbone {name!r}; use {RESNET}, {SMALL_CNN} or a keras.applications model: "
                        f"{', '.join(application_names())}")
    return getattr(keras.applications, name)


def pretrained_backbone(name: str, image_size: int, weights: str) -> keras.Model:
    """uint8-range images -> pooled embedding, with the model's own preprocessing inside."""
    import http.client
    import os
    import urllib.error

    constructor = _application(name)
    preprocess = importlib.import_module(constructor.__module__).preprocess_input
    try:  # keras downloads the ImageNet weights on first use, into $KERAS_HOME/models (default ~/.keras/models)
        base = constructor(include_top=False, weights="imagenet" if weights == "imagenet" else None,
                           input_shape=(image_size, image_size, 3), pooling="avg")
    except Exception as error:  # keras.utils.get_file wraps a failed URL fetch in a bare Exception
        # a failed download: no network, a refused or dropped connection, an HTTP error, here or in what it came from
        cause, chain = error, []
        while cause is not None and len(chain) < 10:
            chain.append(cause)
            cause = cause.__cause__ or cause.__context__
        if weights != "imagenet" or not any(
                isinstance(e, (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError))
                or str(e).startswith("URL fetch failure") for e in chain):
            raise
        home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
        raise UserError(f"--backbone {name} --weights imagenet: its ImageNet weights could not be downloaded ({error}); "
                        f"run once with network access so that Keras caches them in {os.path.join(home, 'models')}, "
                        "or download that file elsewhere and pass it with --weights PATH") from None
    if weights not in ("imagenet", "none"):
        base.load_weights(weights)
    inputs = keras.Input((image_size, image_size, 3))
    outputs = base(layers.Lambda(preprocess, name="preprocess")(inputs))
    return keras.Model(inputs, outputs, name=f"{name}_backbone")


def small_cnn(image_size: int) -> keras.Model:
    """Four conv blocks, batch norm, global pooling: about 16M multiply-adds at 64 px, seconds per epoch on a CPU."""
    inputs = keras.Input((image_size, image_size, 3))
    x = layers.Rescaling(1 / 255.0)(inputs)
    for filters in (16, 32, 64, 128):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = _batch_norm()(x)
        x = layers.Activation("relu")(x)
        x = layers.MaxPooling2D()(x)
    outputs = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, outputs, name="small_cnn")


def resnet(image_size: int, width: int = 32) -> keras.Model:
    """A compact residual net (stem + three stages of one basic block, width doubling per stage).

    Measured on real photos with 10 labels per class (benchmarks/RESULTS.md, `make bench ARGS=real`): with augmentation it
    beats the plain four-block CNN by a wide margin at about 60M multiply-adds per 64 px image.
    """
    inputs = keras.Input((image_size, image_size, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = layers.Conv2D(width, 3, strides=2 if image_size >= 48 else 1, padding="same", use_bias=False)(x)
    x = layers.Activation("relu")(_batch_norm()(x))
    for stage in range(3):
        filters, stride = width * 2 ** stage, 1 if stage == 0 else 2
        shortcut = x
        y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
        y = layers.Activation("relu")(_batch_norm()(y))
        y = _batch_norm()(layers.Conv2D(filters, 3, padding="same", use_bias=False)(y))
        if stride != 1 or shortcut.shape[-1] != filters:
            shortcut = _batch_norm()(pointwise(shortcut, filters, stride))
        x = layers.Activation("relu")(layers.Add()([y, shortcut]))
    return keras.Model(inputs, layers.GlobalAveragePooling2D()(x), name="resnet")


def image_classifier(backbone: keras.Model, n_classes: int, multi_label: bool, trainable_backbone: bool = True) -> keras.Model:
    """backbone -> dropout -> softmax or sigmoid head (augmentation happens in the input pipeline, see augment.py)."""
    backbone.trainable = trainable_backbone
    inputs = keras.Input(backbone.input_shape[1:])
    x = backbone(inputs) if trainable_backbone else backbone(inputs, training=False)  # frozen: batch norm in inference mode
    return _head(inputs, x, n_classes, multi_label)


def feature_classifier(n_features: int, n_classes: int, multi_label: bool) -> keras.Model:
    """The head alone, trained on cached embeddings of a frozen backbone."""
    inputs = keras.Input((n_features,))
    return _head(inputs, inputs, n_classes, multi_label)


def _head(inputs, x, n_classes: int, multi_label: bool) -> keras.Model:
    x = layers.Dropout(0.2)(x)
    # float32 even under --mixed-precision: a float16 softmax/sigmoid loses the small probabilities log loss needs
    outputs = layers.Dense(n_classes, activation="sigmoid" if multi_label else "softmax", name="head", dtype="float32")(x)
    return keras.Model(inputs, outputs)
