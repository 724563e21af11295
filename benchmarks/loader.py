"""Loader speed on fisheries-sized photos: the image store vs Keras, and prediction from the store vs memory.

`python -m benchmarks loader [--images 400] [--size 64] [--repeats 3] [--noise 6 9 12] [--profile]`

1. Cold first pass over N generated 1280x720 JPEGs to 64 px, at each --noise level (about 150, 200 and
   240 KiB a frame: the range of the Kaggle fisheries frames): `build_store` (decode at a reduced DCT scale,
   antialiased resize, shift properties, written to a fresh cache folder each time) vs
   `keras.utils.image_dataset_from_directory(..., image_size=(64, 64))` iterated once (full-size decode,
   bilinear resize), on the same files in the same process. Target: the store at >= 1.5x Keras's images/s.
2. Prediction with the small CNN: `model.predict` over `data.prediction_batches` (rows streamed from the
   store's file) vs `model.predict` on the same rows as an in-memory array. Target: >= 0.8x.
Each repetition runs both sides back to back (which goes first alternates) and gives one ratio; the
median ratio is printed with the spread over repetitions (the machine is shared: a burst of load from
elsewhere moves single runs). The files are in the OS page cache for both loaders (they were just
written): this times decoding, not the disk. --profile adds the per-image cost of each stage, one thread.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def write_frames(folder: Path, n: int, seed: int = 0, noise: int = 12) -> list[str]:
    """n camera-like 1280x720 JPEGs: a few smooth random scenes (gradients), shifted and re-lit per frame,
    with uniform sensor noise of +-`noise` levels (6, 9, 12 give about 150, 200, 240 KiB a frame at quality 90)."""
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


def paired_rates(n: int, runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[tuple[float, float]]]:
    """{name: [(images per second, CPU milliseconds per image) per repetition]}.

    Each repetition runs every side once, back to back, starting with a different side each time, so
    that the ratio of one repetition compares runs that saw the same load from elsewhere. CPU time (all
    threads of this process) says how much work a loader does per image whatever else the machine runs."""
    names = list(runs)
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for repetition in range(repeats):
        shift = repetition % len(names)
        for name in names[shift:] + names[:shift]:
            before, started = _cpu_seconds(), time.perf_counter()
            runs[name]()
            seconds = time.perf_counter() - started
            out[name].append((n / seconds, 1000 * (_cpu_seconds() - before) / n))
    return out


def ratio_line(rates: dict[str, list[tuple[float, float]]], top: str, bottom: str) -> tuple[float, str]:
    """The median over repetitions of top/bottom images per second, and a 'median (min-max)' text."""
    ratios = [a / b for (a, _), (b, _) in zip(rates[top], rates[bottom])]
    median = statistics.median(ratios)
    return median, f"{median:.2f}x (repetitions {min(ratios):.2f}-{max(ratios):.2f})"


def _median(values: list[tuple[float, float]], index: int) -> float:
    return statistics.median(v[index] for v in values)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def profile(paths: list[str], size: int) -> None:
    """CPU milliseconds per image of each stage on one thread (best of 3): where the store's time goes,
    next to what Keras's loader does per image (tf.io.decode_image at full size, then tf.image.resize)."""
    import tensorflow as tf

    from pipeline.data.image_properties import describe
    from pipeline.data.decode import decode_image

    blobs = [Path(p).read_bytes() for p in paths]
    tensors = [tf.constant(b) for b in blobs]

    def pil(draft: Callable[[Image.Image], tuple[int, int]] | None) -> Callable[[], None]:
        def run() -> None:
            for blob in blobs:
                with Image.open(io.BytesIO(blob)) as image:
                    if draft:
                        image.draft("RGB", draft(image))
                    image.load()
        return run

    decoded = []
    for blob in blobs:
        with Image.open(io.BytesIO(blob)) as image:
            image.draft("RGB", (size, size))
            image.load()
            decoded.append(image)
    stages = {
        "read the file": lambda: [Path(p).read_bytes() for p in paths],
        "PIL: open (parse the headers)": lambda: [Image.open(io.BytesIO(b)).size for b in blobs],
        "PIL: decode at full size": pil(None),
        "PIL: decode at 1/2 DCT scale": pil(lambda image: (image.width // 2, image.height // 2)),
        f"PIL: decode at the draft for {size} px ({decoded[0].width}x{decoded[0].height})": pil(lambda _: (size, size)),
        "  properties (histograms of the draft)": lambda: [describe(im, width=1, height=1, file_size=1, fmt="JPEG", mode="RGB")
                                                       for im in decoded],
        f"  antialiased resize to {size} px + array": lambda: [np.asarray(im.resize((size, size), Image.Resampling.BILINEAR))
                                                          for im in decoded],
        "store: decode_image (all of the above)": lambda: [decode_image(p, size) for p in paths],
        "TF: decode_jpeg at full size": lambda: [tf.io.decode_jpeg(t, channels=3) for t in tensors],
        "TF: decode_jpeg(ratio=8)": lambda: [tf.io.decode_jpeg(t, channels=3, ratio=8) for t in tensors],
        "keras: decode_image + resize (one op at a time)": lambda: [
            tf.image.resize(tf.io.decode_image(t, channels=3, expand_animations=False), (size, size)) for t in tensors],
    }
    for name, run in stages.items():
        best = float("inf")
        for _ in range(3):
            started = time.process_time()
            run()
            best = min(best, time.process_time() - started)
        print(f"    {name:58s} {1000 * best / len(paths):5.2f} CPU ms/image", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks loader")
    parser.add_argument("--images", type=int, default=400, help="generated 1280x720 JPEGs per noise level")
    parser.add_argument("--size", type=int, default=64, help="image size the loaders resize to")
    parser.add_argument("--repeats", type=int, default=3, help="paired runs of each figure; the median is printed")
    parser.add_argument("--noise", type=int, nargs="+", default=[6, 9, 12],
                        help="sensor noise of the frames, +- grey levels, one benchmark each: more noise, bigger files "
                             "and a larger share of Huffman decoding, which DCT scaling cannot skip (default: %(default)s)")
    parser.add_argument("--profile", action="store_true", help="also print the per-image cost of each stage")
    args = parser.parse_args()
    import keras

    from pipeline.data import streams as data
    from pipeline.model import backbones as models
    from pipeline.data.image_store import build_store

    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        summary, store = [], None
        for noise in args.noise:
            frames = Path(tmp) / f"frames-noise{noise}"
            paths = write_frames(frames, args.images, noise=noise)
            kib = sum(os.path.getsize(p) for p in paths) / len(paths) / 1024

            def store_pass(cache: Path = Path(tmp) / "cache", workers: int | None = None):  # cold: an empty cache
                shutil.rmtree(cache, ignore_errors=True)
                with contextlib.redirect_stdout(io.StringIO()):  # its progress lines
                    return build_store(paths, args.size, cache, "bench", workers=workers)

            def keras_pass():
                dataset = keras.utils.image_dataset_from_directory(frames, labels=None, batch_size=32,
                                                                   image_size=(args.size, args.size), shuffle=False,
                                                                   verbose=False)
                for _ in dataset:
                    pass

            print(f"\n{len(paths)} 1280x720 JPEGs, noise +-{noise}: {kib:.0f} KiB each; {os.cpu_count()} CPUs", flush=True)
            if args.profile:
                profile(paths[:100], args.size)
            cores = len(os.sched_getaffinity(0))
            rates = paired_rates(len(paths), {"keras": keras_pass, "store": store_pass,
                                              "store, a thread a core": lambda: store_pass(workers=cores)}, args.repeats)
            median, text = ratio_line(rates, "store", "keras")
            print(f"  cold first pass to {args.size} px, median of {args.repeats}:")
            labels = {"keras": "keras image_dataset_from_directory", "store": "image store (scan + properties + cache)",
                      "store, a thread a core": f"  the same with {cores} threads, not the pool's default"}
            for name, label in labels.items():
                print(f"    {label:42s} {_median(rates[name], 0):5.0f} images/s, {_median(rates[name], 1):5.2f} CPU ms/image")
            print(f"    store / keras: {text} images/s (target >= 1.5x); "
                  f"{_median(rates['keras'], 1) / _median(rates['store'], 1):.2f}x less CPU per image", flush=True)
            print(f"    with {cores} threads: {ratio_line(rates, 'store, a thread a core', 'keras')[1]}", flush=True)
            summary.append(f"{kib:.0f} KiB {median:.2f}x")
            if store is None or noise == args.noise[len(args.noise) // 2]:  # the middle level's, for prediction
                store = store_pass(Path(tmp) / "cache-predict")

        rows = np.tile(np.arange(len(store.paths)), max(1, 3000 // len(store.paths)))  # enough rows to time the model
        in_memory = store.read(rows)
        model = models.image_classifier(models.small_cnn(args.size), 8, multi_label=False)
        model.predict(in_memory[:64], batch_size=32, verbose=0)  # warm up: tracing is not part of the cost
        model.predict(data.prediction_batches(store.pixels, rows[:64], 32), verbose=0)
        rates = paired_rates(len(rows), {
            "memory": lambda: model.predict(in_memory, batch_size=32, verbose=0),
            "store": lambda: model.predict(data.prediction_batches(store.pixels, rows, 32), verbose=0)}, args.repeats)
        predict_median, predict_text = ratio_line(rates, "store", "memory")
        print(f"\nprediction, small CNN at {args.size} px, {len(rows)} rows, batch 32, median of {args.repeats}:")
        print(f"  model.predict on an in-memory array:                {_median(rates['memory'], 0):5.0f} images/s")
        print(f"  model.predict over prediction_batches (store file): {_median(rates['store'], 0):5.0f} images/s")
        print(f"  store / in-memory: {predict_text} (target >= 0.8x)", flush=True)
        print(f"\nside by side: loader vs keras {', '.join(summary)} (target >= 1.5x); "
              f"prediction from files {predict_median:.2f}x in-memory (target >= 0.8x)")
