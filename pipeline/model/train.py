"""Fit and predict: thin Keras code shared by the teacher, the control and the students.

Every fit runs a fixed budget of optimizer steps (AdamW, short warm-up, cosine decay to zero) instead of
early stopping on the holdout: the holdout then only scores, so its score is not biased by picking epochs.
"""
from __future__ import annotations

import math
import time
import warnings
import weakref
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pipeline.data import streams as data
from pipeline.model import distribute, online, own_statistics
from pipeline.errors import UserError
from pipeline.model.batches import fit_batches
from pipeline.model.spec import ModelSpec, TrainSettings, pseudo_batch_size
from pipeline.run.config import PREDICTION_BATCH, STRONG_NOISE_PASSES

# --jit auto turns XLA on (CPU, one device) when every fit of the run has at least this many steps (--min-steps), or
# never with None. Measured on this 2-core CPU (benchmarks/RESULTS.md, "--jit"): XLA's steps were 3-4x slower than
# TensorFlow's oneDNN ones for the default model, and slower still on cached embeddings, on top of a longer compile,
# so no fit length repays it: None. A measurement that finds a length where it pays sets it here.
XLA_MIN_STEPS: int | None = None


class WarmupCosineDecay(keras.optimizers.schedules.CosineDecay):
    """Keras's CosineDecay with warm-up, the same values computed without a graph branch.

    The optimizer evaluates its schedule for every variable (AdamW's weight decay reads `learning_rate` once per
    variable) while tf.function traces the train step, and Keras's `ops.cond` made those evaluations about a third
    of a short fit's tracing. Both branches here are Keras's own arithmetic; `where` picks one (the unused warm-up
    branch may divide by zero). In a traced graph the schedule is built once per step variable and reused: every
    evaluation in one train step reads the same step count (the optimizer counts the step after its update), so
    the values are the same, and 30 evaluations were still 0.8 s of a 5 s trace of the default model.
    """

    def __call__(self, step):
        if not tf.inside_function():
            return self._value(step)
        traced = self.__dict__.setdefault("_traced", weakref.WeakKeyDictionary())  # graph -> (step, value)
        graph = tf.compat.v1.get_default_graph()
        if graph not in traced or traced[graph][0] is not step:
            traced[graph] = (step, self._value(step))
        return traced[graph][1]

    def _value(self, step):
        from keras import ops

        start = ops.convert_to_tensor(self.initial_learning_rate)
        dtype = start.dtype
        decay_steps, warmup_steps = ops.cast(self.decay_steps, dtype), ops.cast(self.warmup_steps, dtype)
        target = ops.cast(self.warmup_target, dtype)
        step = ops.minimum(ops.cast(step, dtype), decay_steps + warmup_steps)
        return ops.where(step < warmup_steps, self._warmup_function(step, warmup_steps, target, start),
                         self._decay_function(step - warmup_steps, decay_steps, target, dtype))


def xla_enabled(settings: TrainSettings) -> bool:
    """--jit resolved on this machine, once for every fit of a run (the teacher's cache key holds it when on).

    `auto`: on a single CPU device when --min-steps reaches XLA_MIN_STEPS (today never); off on a GPU and under a multi-replica
    strategy, where Keras's own `jit_compile="auto"` turns it off too (op determinism, tf.distribute). `on` is
    refused under several replicas, before any fit (the teacher's key asks first).
    """
    one_device = distribute.replicas() == 1 and not distribute.is_multiworker()
    if settings.jit == "on" and not one_device:
        # measured: XLA's train step reads variables mirrored on another device (InvalidArgumentError, "Trying to
        # access resource ... located in device ... CPU:1"), tests/test_jit.py
        raise UserError(f"--jit on needs one device, and --distribute trains {distribute.replicas()} replica(s) on "
                        f"{type(distribute.strategy()).__name__}: XLA cannot read the variables mirrored on the other "
                        "devices; use --jit auto or off, or --distribute none")
    if settings.jit != "auto":
        return settings.jit == "on"
    return (XLA_MIN_STEPS is not None and one_device and not tf.config.list_physical_devices("GPU")
            and settings.min_steps >= XLA_MIN_STEPS)


def compile_with_xla(model: keras.Model) -> None:
    """XLA for the compiled train step, whatever Keras would decide: Keras turns `jit_compile=True` off (one warning)
    while op determinism is on (seed_everything), though XLA's CPU fits rerun bit for bit (tests/test_jit.py)."""
    unsupported = [layer.name for layer in model._flatten_layers() if not layer.supports_jit]
    if unsupported:
        raise UserError(f"--jit on: layers {', '.join(unsupported)} do not support XLA; use --jit off or auto")
    model._jit_compile = True  # the value Keras's jit_compile setter would keep if it did not check op determinism


def seed_everything(seed: int) -> None:
    """Same seed, same machine -> same weights, batches and predictions."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


class StepLog(keras.callbacks.Callback):
    """About ten progress lines per fit: step, training loss, seconds."""

    def __init__(self, name: str, steps: int) -> None:
        super().__init__()
        self.name, self.steps, self.start, self.done = name, steps, time.perf_counter(), 0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.done = min(self.steps, self.done + self.params["steps"])
        loss = (logs or {}).get("loss", float("nan"))
        share = (logs or {}).get("online_share")  # --pseudo-labels online: the step's test images it labeled
        kept = "" if share is None else f", {float(share):.0%} of the step's test images labeled"
        print(f"  {self.name}: step {self.done}/{self.steps}, loss {loss:.4f}{kept} ({time.perf_counter() - self.start:.0f}s)",
              flush=True)


def labeled_passes(steps: int, batch_size: int, n_train: int, n_pseudo: int, pooled: bool) -> float:
    """How many times a student fit goes over each labeled item (real+pseudo: --batch-size of them a step)."""
    per_step = batch_size * n_train / (n_train + n_pseudo) if pooled else batch_size
    return steps * per_step / max(n_train, 1)


def applied_augmentation(spec: ModelSpec, level: str) -> str:
    """The augmentation a fit of `spec` applies at `level`: none on a frozen backbone's cached embeddings, which
    have no images to warp."""
    return "none" if spec.feature_dim is not None else level


def student_augment_level(level: str, passes: float, control_level: str) -> str:
    """--student-augment, with `auto` resolved by the labeled passes: strong above STRONG_NOISE_PASSES (Noisy
    Student's noise), else the control's --augment. Never less than the control's: a student trained without the
    augmentation its control gets loses to it for that alone (benchmarks/RESULTS.md, 7 of 7 runs)."""
    if level != "auto":
        return level
    return "strong" if passes > STRONG_NOISE_PASSES else control_level


def fit(spec: ModelSpec, name: str, x: np.ndarray, y: np.ndarray, steps: int, seed: int, augment_level: str,
        init: Path | list[np.ndarray] | None = None,
        pseudo: tuple[np.ndarray, np.ndarray] | None = None, weights: np.ndarray | None = None,
        pseudo_weights: np.ndarray | None = None, unlabeled: np.ndarray | None = None,
        pseudo_foreign: np.ndarray | None = None, pseudo_augment_level: str | None = None) -> tuple[keras.Model, dict]:
    """Train on (x, targets) for exactly `steps` optimizer steps; `init` starts from saved or given weights.

    With `pseudo` (items, targets), every step takes --batch-size items of (x, y), the very stream a fit without
    them sees, plus `pseudo_batch_size` pseudo-labeled items on top (from their own shuffled stream): the labeled
    data is seen as often as the control sees it, and what the pseudo-labels add is all that differs.
    `weights` (per item of x) and `pseudo_weights` (per pseudo-labeled item) scale each item's loss; default 1.
    With `unlabeled` test items instead, the student labels them itself at every step (pipeline/model/online.py).
    `pseudo_foreign` marks the pseudo-labeled items predicted with batch-norm statistics of their own (--adapt-bn):
    they train in a batch-norm pass of their own too (pipeline/model/own_statistics.py). `pseudo_augment_level`: the
    pseudo-labeled items' augmentation when it is not `augment_level` (--pseudo-augment).

    Under the run's strategy (pipeline/model/distribute.py) each global batch of --batch-size items is split across
    the replicas and their gradients all-reduced into the global batch's, so the steps and schedule do not depend on
    the number of devices.
    """
    settings = spec.settings
    seed_everything(seed)
    with distribute.model_scope():  # variables (and the optimizer's, built from them) mirrored on every replica
        model = spec.build()
        if isinstance(init, Path):
            model.load_weights(init)
        elif init is not None:
            model.set_weights(init)
        warmup = min(100, steps // 10)
        schedule = WarmupCosineDecay(settings.learning_rate * 0.1, max(1, steps - warmup), alpha=0.0,
                                     warmup_target=settings.learning_rate, warmup_steps=warmup)
        own = own_statistics.needed(pseudo, pseudo_foreign, 0 if pseudo is None else
                                    pseudo_batch_size(settings.batch_size, len(x), len(pseudo[0])))
        # a train step of our own computes its loss itself; a compiled loss would make Keras build the model
        # symbolically under a distribution strategy, from a batch that is not the model's input
        own_step = unlabeled is not None or own
        model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=settings.weight_decay),
                      loss=None if own_step else spec.loss(), jit_compile=False)
        if unlabeled is not None:
            online.attach(model, settings.label_smoothing)
        elif own:
            own_statistics.attach(model, spec.loss())
        xla = xla_enabled(settings)
        if xla:
            compile_with_xla(model)
        # Built here, not lazily in the first step: a variable created while tf.function traces the train step makes
        # it trace that step twice, and tracing is most of a short fit's time (a tiny fit: 2 traces -> 1)
        model.optimizer.build(model.trainable_variables)
        if distribute.is_multiworker():
            distribute.detach_for_multiworker(model)
    augment_level = applied_augmentation(spec, augment_level)
    pseudo_level = None if pseudo_augment_level is None else applied_augmentation(spec, pseudo_augment_level)
    batches, extra = fit_batches(spec, x, y, seed, augment_level, pseudo, weights, pseudo_weights, unlabeled,
                                 pseudo_foreign if own else None, pseudo_level)
    batches = distribute.shard_by_data(data.without_autotuning(batches.prefetch(tf.data.AUTOTUNE)))
    chunk = max(1, math.ceil(steps / 10))
    started = time.perf_counter()
    with warnings.catch_warnings():  # Keras warns that a tf.data input ignores shuffle=True; ours is shuffled
        warnings.filterwarnings("ignore", message=".*shuffle=True.*")
        with distribute.strategy().scope(), distribute.peers_alive(f"the fit of the {name}"):
            # the scope is a no-op on one device, and where a multi-worker model finds its strategy
            history = model.fit(batches, epochs=math.ceil(steps / chunk), steps_per_epoch=chunk, verbose=0,
                                callbacks=[StepLog(name, steps)])
    model._jit_compile = False  # predictions run as without --jit: XLA would compile again for every batch shape
    distribute.average_replica_statistics(model)
    losses = history.history["loss"]
    n_pseudo = int(len(unlabeled)) if unlabeled is not None else 0 if pseudo is None else int(len(pseudo[0]))
    shares = history.history.get("online_share")
    return model, {"steps": int(math.ceil(steps / chunk) * chunk), "items": int(len(x)) + n_pseudo,
                   "batch": settings.batch_size + extra, "pseudo_per_batch": extra, "augment": augment_level,
                   **({"pseudo_augment": pseudo_level} if pseudo_level not in (None, augment_level) else {}),
                   "final_loss": float(losses[-1]), "seconds": round(time.perf_counter() - started, 2),
                   "strategy": type(distribute.strategy()).__name__, "replicas": distribute.replicas(), "xla": xla,
                   **({"online_share": float(shares[-1])} if shares else {})}


def adapted_batch_norm(model: keras.Model, source: np.ndarray, rows: np.ndarray, batch_size: int) -> list[tuple]:
    """Set every batch-norm layer's moving statistics to those of its inputs over source[rows] (AdaBN, Li et al.
    2016), and return what to restore: [(layer, moving mean, moving variance)].

    Why: a test group filmed darker, in another colour or blurrier shifts every layer's activations, and the
    statistics learned on train then normalise them wrongly; re-estimated on the group's own images (no label
    needed), each layer sees inputs centred and scaled as in training. Each batch's mean and variance enter a running
    average weighted by its size (the momentum of a cumulative mean), so the result does not depend on how many
    batches there are; the within-batch variances miss the spread between batch means, negligible at these sizes.
    """
    layers = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
              if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [(layer, layer.moving_mean.numpy(), layer.moving_variance.numpy()) for layer in layers]
    if not layers or len(rows) == 0:
        return saved
    momenta = [layer.momentum for layer in layers]
    seen = 0
    try:
        for batch in data.prediction_batches(source, rows, batch_size):
            n = int(batch.shape[0])
            for layer in layers:
                layer.momentum = seen / (seen + n)  # moving = moving * seen/(seen+n) + batch * n/(seen+n)
            model(tf.cast(batch, tf.float32), training=True)  # updates the moving statistics; no weight changes
            seen += n
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return saved


def restore_batch_norm(saved: list[tuple]) -> None:
    for layer, mean, variance in saved:
        layer.moving_mean.assign(mean)
        layer.moving_variance.assign(variance)


def predict(model: keras.Model, source: np.ndarray, rows: np.ndarray | None, spec: ModelSpec,
            adapt: bool = False) -> np.ndarray:
    """Probabilities in row order, streamed batch by batch; averaged with the mirror image when --tta allows.

    `adapt`: predict with batch-norm statistics re-estimated on these rows' own images (adapted_batch_norm), then
    put the model's own back. Cached embeddings of a frozen backbone have no batch norm left to adapt.

    Mirrored replicas split each batch and Keras concatenates their outputs in order. Across machines each
    worker predicts every row on its own device (distribute.detach_for_multiworker; training keeps the weights
    in step), instead of Keras gathering shards in an order that depends on how tf.data split them.
    """
    n_out = model.output_shape[-1]
    if spec.feature_dim is not None:  # cached embeddings: a small in-memory array
        x = np.asarray(source if rows is None else source[rows], dtype=np.float32)
        return model.predict(x, batch_size=1024, verbose=0).astype(np.float32) if len(x) else np.zeros((0, n_out), np.float32)
    rows = np.arange(len(source)) if rows is None else np.asarray(rows)
    if len(rows) == 0:
        return np.zeros((0, n_out), dtype=np.float32)
    saved = adapted_batch_norm(model, source, rows, spec.settings.batch_size * PREDICTION_BATCH) if adapt else []
    try:
        batches = data.prediction_batches(source, rows, spec.settings.batch_size * PREDICTION_BATCH)
        probs = model.predict(batches, verbose=0).astype(np.float32)
        if spec.settings.tta and "horizontal" in spec.flips:
            mirrored = batches.map(lambda images: tf.reverse(images, axis=[2]))
            probs = (probs + model.predict(mirrored, verbose=0).astype(np.float32)) / 2
    finally:
        restore_batch_norm(saved)
    return probs


def embed(backbone: keras.Model, source: np.ndarray, batch_size: int, what: str) -> np.ndarray:
    """Embeddings of a frozen backbone for every row of `source`, with progress; cached by the caller."""
    out = []
    rows = np.arange(len(source))
    for done, batch in enumerate(data.prediction_batches(source, rows, batch_size), start=1):
        out.append(backbone(tf.cast(batch, tf.float32), training=False).numpy())
        if done % 20 == 0:
            print(f"  embedded {min(done * batch_size, len(rows))}/{len(rows)} {what} images", flush=True)
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, backbone.output_shape[-1]), np.float32)
