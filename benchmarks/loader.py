"""Loader speed on fisheries-sized photos: the image store vs Keras, and prediction from the store vs memory.

`python -m benchmarks loader [--images 600] [--size 64] [--repeats 2]`

1. Cold first pass over N generated 1280x720 JPEGs to 64 px: `build_store` (decode at a reduced DCT scale,
   antialiased resize, properties, written to a fresh cache folder) vs
   `keras.utils.image_dataset_from_directory(..., image_size=(64, 64))` iterated once (full-size decode).
   Target: the store at >= 1.5x Keras's images/s.
2. Prediction with the small CNN: `model.predict` over `data.prediction_batches` (rows streamed from the
   store's file) vs `model.predict` on the same rows as an in-memory array. Target: >= 0.8x. Also the
   first run's cost from files, when the store must be built first.
Each figure is the best of --repeats runs, alternating the two sides (the machine is shared). The
files are in the OS page cache for both loaders (they were just written): this times decoding, not the disk.
"""
from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def write_frames(folder: Path, n: int, seed: int = 0, noise: int = 12) -> list[str]:
    """n camera-like 1280x720 JPEGs: a few smooth random scenes, shifted and re-lit per frame, with uniform
    noise of +-`noise` levels (12 gives about 230 KiB per frame, like the fisheries photos)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    scenes = [np.asarray(Image.fromarray(rng.integers(0, 255, (9, 16, 3), dtype=np.uint8)).resize((1400, 800), Image.BICUBIC))
              for _ in range(4)]
    grain = rng.integers(-noise, noise + 1, (720, 1280, 3), dtype=np.int16)
    paths = []
    for i in range(n):
        dy, dx = rng.integers(0, 80), rng.integers(0, 120)
        frame = scenes[i % len(scenes)][dy:dy + 720, dx:dx + 1280] * rng.uniform(0.6, 1.2) + np.roll(grain, i, axis=1)
        path = folder / f"frame_{i:04d}.jpg"
        Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def best_rates(n: int, runs: dict, repeats: int) -> dict[str, tuple[float, float]]:
    """{name: (images per second, CPU milliseconds per image)}, each the best of `repeats` runs.

    The runs alternate (A, B, A, B, ...) so that a burst of load from elsewhere hits both sides alike.
    CPU time (all threads) says how much work a loader does per image whatever else the machine runs."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            before, started = _cpu_seconds(), time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - started)
            cpu[name].append(_cpu_seconds() - before)
    return {name: (n / min(seconds[name]), 1000 * min(cpu[name]) / n) for name in runs}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks loader")
    parser.add_argument("--images", type=int, default=600, help="generated 1280x720 JPEGs")
    parser.add_argument("--size", type=int, default=64, help="image size the loaders resize to")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each figure; the best is printed")
    parser.add_argument("--noise", type=int, default=12,
                        help="sensor noise of the frames, +- grey levels: less noise, smaller files, and a larger "
                             "share of the decode that DCT scaling saves (default: %(default)s)")
    args = parser.parse_args()
    import keras

    from pipeline import data, models
    from pipeline.image_store import build_store

    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        started = time.perf_counter()
        paths = write_frames(Path(tmp) / "frames", args.images, noise=args.noise)
        print(f"wrote {len(paths)} 1280x720 JPEGs ({sum(os.path.getsize(p) for p in paths) / len(paths) / 1024:.0f} KiB "
              f"each) in {time.perf_counter() - started:.0f}s; {os.cpu_count()} CPUs", flush=True)
        caches = iter(range(10**6))

        def store_pass():  # cold: a new cache folder every time
            return build_store(paths, args.size, Path(tmp) / f"cache-{next(caches)}", "bench")

        def keras_pass():
            dataset = keras.utils.image_dataset_from_directory(Path(tmp) / "frames", labels=None, batch_size=32,
                                                               image_size=(args.size, args.size), shuffle=False,
                                                               verbose=False)
            for _ in dataset:
                pass

        rates = best_rates(len(paths), {"keras": keras_pass, "store": store_pass}, args.repeats)
        (keras_rate, keras_cpu), (store_rate, store_cpu) = rates["keras"], rates["store"]
        print(f"\ncold first pass, {len(paths)} 1280x720 JPEGs to {args.size} px:")
        print(f"  keras image_dataset_from_directory:        {keras_rate:5.0f} images/s, {keras_cpu:5.2f} CPU ms/image")
        print(f"  image store (scan + properties + cache):   {store_rate:5.0f} images/s, {store_cpu:5.2f} CPU ms/image")
        print(f"  ratio store / keras: {store_rate / keras_rate:.2f}x images/s (target >= 1.5x), "
              f"{keras_cpu / store_cpu:.2f}x less CPU per image", flush=True)

        store = store_pass()
        rows = np.tile(np.arange(len(paths)), max(1, 3000 // len(paths)))  # enough rows to time the model
        in_memory = store.read(rows)
        model = models.image_classifier(models.small_cnn(args.size), 8, multi_label=False)
        model.predict(in_memory[:64], batch_size=32, verbose=0)  # warm up: tracing is not part of the cost
        model.predict(data.prediction_batches(store.pixels, rows[:64], 32), verbose=0)
        rates = best_rates(len(rows), {
            "memory": lambda: model.predict(in_memory, batch_size=32, verbose=0),
            "store": lambda: model.predict(data.prediction_batches(store.pixels, rows, 32), verbose=0)}, args.repeats)
        memory_rate, stream_rate = rates["memory"][0], rates["store"][0]
        print(f"\nprediction, small CNN at {args.size} px, {len(rows)} rows, batch 32:")
        print(f"  model.predict on an in-memory array:                {memory_rate:5.0f} images/s")
        print(f"  model.predict over prediction_batches (store file): {stream_rate:5.0f} images/s")
        print(f"  ratio store / in-memory: {stream_rate / memory_rate:.2f}x (target >= 0.8x)", flush=True)
        cold_rate = 1 / (1 / store_rate + 1 / stream_rate)
        print(f"  from files with no store yet (build it, then predict): {cold_rate:7.0f} images/s, "
              f"{cold_rate / memory_rate:.2f}x in-memory")
        print(f"\nside by side: loader {store_rate / keras_rate:.2f}x keras, prediction from files "
              f"{stream_rate / memory_rate:.2f}x in-memory")
