"""Augmentation cost: Keras's four random layers in sequence vs the pipeline's one warp.

`make bench ARGS="augment [--batch 32] [--batches 30] [--repeats 3] [--fit-steps 60]"`

1. For each level, CPU milliseconds per batch of 64 px uint8 images through the input pipeline's map (what a
   training step waits for, or competes with on a CPU): RandomFlip, RandomRotation, RandomZoom and
   RandomTranslation chained, as the pipeline did before, then brightness and contrast; and `augment.augmenter`,
   where the first four are one warp with the same transforms (tests/test_augment.py; `light`, flips alone,
   keeps Keras's RandomFlip). Best of --repeats.
2. What a fit gains: `train.fit` of the default model (`standard`, as the teacher and control train) for
   --fit-steps steps with each, run alternately --repeats times; wall and CPU seconds, medians.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time

import numpy as np


def keras_layers(level: str, flips: str):
    """The previous pipeline: one Keras layer per transform."""
    import keras
    from keras import layers

    from pipeline.data.augment import STRENGTH

    s = STRENGTH[level]
    steps = [layers.RandomFlip(flips)] if flips != "none" else []
    if s > 0:
        steps += [layers.RandomRotation(0.04 * s, fill_mode="reflect"),
                  layers.RandomZoom((-0.2 * s, 0.05 * s), fill_mode="reflect"),
                  layers.RandomTranslation(0.08 * s, 0.08 * s, fill_mode="reflect")]
    steps += [layers.RandomBrightness(0.2 * max(s, 1.0), value_range=(0, 255)), layers.RandomContrast(0.25 * max(s, 1.0))]
    return keras.Sequential(steps)


def cpu_ms_per_batch(noise, images: np.ndarray, batch: int, batches: int, repeats: int) -> float:
    import tensorflow as tf

    stream = tf.data.Dataset.from_tensor_slices(images).repeat().batch(batch).map(
        lambda x: noise(tf.cast(x, tf.float32), training=True), num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)
    iterator = iter(stream)
    for _ in range(3):  # tracing and warm-up
        next(iterator)
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        for _ in range(batches):
            next(iterator)
        best = min(best, (time.process_time() - started) / batches * 1000)
    return best


def fit_seconds(steps: int, repeats: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds of a `standard` fit of the default model, with each augmentation."""
    from benchmarks import alternating, default_model_spec
    from pipeline.data import augment
    from pipeline.model import train

    spec = default_model_spec()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (512, 64, 64, 3), dtype=np.uint8)
    y = np.eye(8, dtype=np.float32)[rng.integers(0, 8, 512)]
    one_warp = augment.augmenter
    times: dict[str, list[tuple[float, float]]] = {"Keras's layers": [], "one warp": []}
    for _, name in alternating(times, repeats):
        augment.augmenter = keras_layers if name == "Keras's layers" else one_warp  # what train.fit builds
        try:
            wall, cpu = time.perf_counter(), time.process_time()
            with contextlib.redirect_stdout(io.StringIO()):  # its progress lines
                train.fit(spec, "bench", x, y, steps, seed=0, augment_level="standard")
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
        finally:
            augment.augmenter = one_warp
    return {name: (statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)) for name, runs in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks augment", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--flips", default="horizontal")
    parser.add_argument("--fit-steps", type=int, default=60, help="steps of the timed fits (0: skip them)")
    args = parser.parse_args()
    from pipeline.data import augment
    from pipeline.model.train import seed_everything

    seed_everything(0)
    images = np.random.default_rng(0).integers(0, 256, (256, 64, 64, 3), dtype=np.uint8)
    print(f"CPU ms per batch of {args.batch} 64 px images, flips {args.flips}, best of {args.repeats} x {args.batches} batches")
    for level in ("light", "standard", "strong"):
        before = cpu_ms_per_batch(keras_layers(level, args.flips), images, args.batch, args.batches, args.repeats)
        now = cpu_ms_per_batch(augment.augmenter(level, args.flips), images, args.batch, args.batches, args.repeats)
        print(f"  {level:8s} Keras's layers {before:6.1f} ms, augment.augmenter {now:6.1f} ms: {before / now:.1f}x less CPU",
              flush=True)
    if args.fit_steps:
        seconds = fit_seconds(args.fit_steps, args.repeats)
        print(f"train.fit, default model, `standard`, {args.fit_steps} steps of 32, median of {args.repeats} (tracing included):")
        for name, (wall, cpu) in seconds.items():
            print(f"  {name:15s} {wall:6.1f} s wall, {cpu:6.1f} s CPU")
        (wall_before, cpu_before), (wall_now, cpu_now) = seconds.values()
        print(f"  one warp: {wall_before / wall_now:.2f}x faster, {cpu_before / cpu_now:.2f}x less CPU", flush=True)
