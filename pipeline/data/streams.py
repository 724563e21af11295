"""tf.data input from decoded uint8 arrays (pipeline/data/image_store.py): shuffled training streams, and test
batches streamed in row order from the store's file so that memory does not grow with the test set."""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
import tensorflow as tf

from pipeline.data import decode, image_store

AUTOTUNE = tf.data.AUTOTUNE


def without_autotuning(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """The dataset with tf.data's autotuning off: each AUTOTUNE parallelism stays at its start value, the
    number of CPU cores (at most 16), and no tuning thread runs beside the iterator.

    Why: a fit drops its endless training stream after its last step, and deleting that iterator waited, idle,
    for the tuning thread: 2.4-8.0 s after 9 of 12 fits of 100 steps on 2 cores, 27-31 s after each of 3 fits of
    400 steps, never with autotuning off, at the same speed per step (`make bench ARGS=fit`). Predictions
    were no slower without it either.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def image_problem(path: str) -> str | None:
    """Why the pipeline cannot use an image file, or None: the image store's decoder is the one definition."""
    return decode.image_problem(path)


def scan_images(paths: Sequence[str], what: str) -> dict[str, str]:
    """{path: problem} for the images the store's decoder cannot read (threads; Pillow releases the GIL).

    A check without caching (tests, tools); a run builds the image store, which finds the same problems in its one pass.
    """
    problems: dict[str, str] = {}
    step = max(500, len(paths) // 10)
    for done, (path, (_, _, problem)) in enumerate(zip(paths, decode.decode_all(paths, 64)), start=1):
        if problem:
            problems[path] = problem
        if done % step == 0 or done == len(paths):
            print(f"  scanned {done}/{len(paths)} {what} images, {len(problems)} unreadable", flush=True)
    return problems


def fingerprint(paths: Sequence[str], digests: Sequence[str] | None = None) -> str:
    """Changes when any file is added, removed or its bytes change, whatever its size and modification time.

    Each file counts by the sha256 of its bytes, as in the image store's key (image_store.file_digests says why
    not stat fields): the teacher cache follows exactly the changes that make a new image store, and a missing
    or unreadable file counts by its reason instead of failing here. `digests`, one per path, are the ones the
    image stores already computed (ImageStore.file_digests), so a run reads each file's bytes once; without them
    the files are hashed here.
    """
    paths = [str(p) for p in paths]
    digests = image_store.file_digests(paths) if digests is None else list(digests)
    if len(digests) != len(paths):
        raise ValueError(f"fingerprint got {len(paths)} paths but {len(digests)} digests; they must be aligned")
    digest = hashlib.sha256()
    for path, content in sorted(zip(paths, digests)):
        digest.update(f"{path}\0{content}\n".encode())
    return digest.hexdigest()[:16]


def training_stream(pixels: np.ndarray, y: np.ndarray, seed: int, weights: np.ndarray | None = None) -> tf.data.Dataset:
    """Endless shuffled (item, target, loss weight) stream from in-memory arrays (uint8 images or cached embeddings);
    every weight is 1 unless `weights` gives one per item.

    Only row indices are shuffled and the rows gathered afterwards: a shuffle buffer of images would hold
    a second copy of the whole training set.
    """
    if len(pixels) != len(y):
        raise ValueError(f"training_stream got {len(pixels)} items but {len(y)} targets; they must be aligned")
    if len(pixels) == 0:
        raise ValueError("training_stream got no items; a model needs at least one training image")
    weights = np.ones(len(pixels), np.float32) if weights is None else np.asarray(weights, dtype=np.float32)
    if weights.shape != (len(pixels),):
        raise ValueError(f"training_stream got {weights.shape} weights for {len(pixels)} items; give one per item")
    items = tf.convert_to_tensor(np.asarray(pixels))
    targets = tf.convert_to_tensor(np.asarray(y, dtype=np.float32))
    loss_weights = tf.convert_to_tensor(weights)
    order = tf.data.Dataset.range(len(pixels)).shuffle(len(pixels), seed=seed, reshuffle_each_iteration=True).repeat()
    return order.map(lambda i: (tf.gather(items, i), tf.gather(targets, i), tf.gather(loss_weights, i)),
                     num_parallel_calls=AUTOTUNE, deterministic=True)


def prediction_batches(pixels: np.ndarray, rows: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """Batches of pixels[rows] in the given order, read from the store's file a batch at a time.

    Nothing is cached or shuffled, so memory stays flat however large the test set, and the i-th output
    row of model.predict is rows[i].
    """
    rows = np.asarray(rows, dtype=np.int64)
    if rows.ndim != 1:
        raise ValueError(f"rows must be a 1-D array of row indices, got shape {rows.shape}")
    if len(rows) and (rows.min() < 0 or rows.max() >= len(pixels)):
        raise ValueError(f"rows must lie in 0..{len(pixels) - 1} (the store has {len(pixels)} rows), "
                         f"got {rows.min()}..{rows.max()}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")

    def batches():
        for start in range(0, len(rows), batch_size):
            yield image_store.read_rows(pixels, rows[start:start + batch_size])

    # A generator, not Dataset.range(n).map(tf.numpy_function(...)): as fast here (both far above the
    # model), and its peak memory stayed flat from 10,000 to 40,000 rows where the map's grew.
    signature = tf.TensorSpec((None, *pixels.shape[1:]), tf.as_dtype(pixels.dtype))
    dataset = tf.data.Dataset.from_generator(batches, output_signature=signature)
    n_batches = -(-len(rows) // batch_size)  # known length: Keras then stops without an "ran out of data" warning
    return without_autotuning(dataset.apply(tf.data.experimental.assert_cardinality(n_batches)).prefetch(AUTOTUNE))


def joined(first: tf.data.Dataset, second: tf.data.Dataset) -> tf.data.Dataset:
    """Each (items, targets, loss weights) batch of `first` with `second`'s on top, as float32 (either may be
    augmented already, the other not)."""
    return tf.data.Dataset.zip((first, second)).map(
        lambda a, b: tuple(tf.concat([tf.cast(a[i], tf.float32), tf.cast(b[i], tf.float32)], 0) for i in range(3)))
