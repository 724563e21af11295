"""Item checks and streaming tf.data loaders: decode and resize in parallel, keep test order and ids aligned."""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import tensorflow as tf
from PIL import Image, UnidentifiedImageError

DECODABLE_FORMATS = {"JPEG", "PNG", "GIF", "BMP"}  # what tf.io.decode_image reads
AUTOTUNE = tf.data.AUTOTUNE


def image_problem(path: str) -> str | None:
    """Why an image cannot be used (unreadable, truncated, unsupported format), or None if it decodes."""
    try:
        with Image.open(path) as image:
            if image.format not in DECODABLE_FORMATS:
                return f"format {image.format} is not one of {sorted(DECODABLE_FORMATS)}"
            image.draft("RGB", (64, 64))  # JPEG: decode at reduced scale, still reads every byte
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        return f"{type(error).__name__}: {error}"
    return None


def scan_images(paths: Sequence[str], what: str) -> dict[str, str]:
    """Decode every image once (two threads; PIL releases the GIL) and return {path: problem} for bad ones."""
    problems: dict[str, str] = {}
    step = max(500, len(paths) // 10)
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        for done, (path, problem) in enumerate(zip(paths, pool.map(image_problem, paths)), start=1):
            if problem:
                problems[path] = problem
            if done % step == 0 or done == len(paths):
                print(f"  scanned {done}/{len(paths)} {what} images, {len(problems)} unreadable", flush=True)
    return problems


def fingerprint(paths: Sequence[str]) -> str:
    """Changes when any file is added, removed, resized or rewritten (name, size and mtime; no content read)."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _decode(path: tf.Tensor, image_size: int) -> tf.Tensor:
    raw = tf.io.read_file(path)
    image = tf.io.decode_image(raw, channels=3, expand_animations=False)
    image = tf.image.resize(image, (image_size, image_size), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)  # uint8 keeps the cache 4x smaller


def element_dataset(x: np.ndarray, y: np.ndarray | None, image_size: int) -> tf.data.Dataset:
    """One element per item: decoded images from paths, or rows of cached features."""
    if x.dtype.kind in "OUS":
        dataset = tf.data.Dataset.from_tensor_slices(np.asarray(x, dtype=str))
        dataset = dataset.map(lambda p: _decode(p, image_size), num_parallel_calls=AUTOTUNE, deterministic=True)
    else:
        dataset = tf.data.Dataset.from_tensor_slices(np.asarray(x, dtype=np.float32))
    if y is None:
        return dataset
    return tf.data.Dataset.zip((dataset, tf.data.Dataset.from_tensor_slices(np.asarray(y, dtype=np.float32))))


def prediction_dataset(x: np.ndarray, image_size: int, batch_size: int) -> tf.data.Dataset:
    """Streamed in input order (no shuffle, no cache): memory does not grow with the test set."""
    return element_dataset(x, None, image_size).batch(batch_size).prefetch(AUTOTUNE)


def training_stream(x: np.ndarray, y: np.ndarray, image_size: int, seed: int) -> tf.data.Dataset:
    """Endless shuffled (item, target) stream; decoded images are cached so each file is decoded once per fit."""
    dataset = element_dataset(x, y, image_size).cache()
    return dataset.shuffle(len(x), seed=seed, reshuffle_each_iteration=True).repeat()


def mixed_batches(streams: list[tf.data.Dataset], shares: list[float], batch_size: int, seed: int) -> tf.data.Dataset:
    """Batches that draw from each stream at the given shares (train items and pseudo-labeled test items)."""
    if len(streams) == 1:
        mixed = streams[0]
    else:
        mixed = tf.data.Dataset.sample_from_datasets(streams, weights=shares, seed=seed)
    return mixed.batch(batch_size).prefetch(AUTOTUNE)
