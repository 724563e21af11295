"""Per-image properties (brightness, colour, contrast, size, format), streamed over many image files.

Why these: they are what drift tools compare between image sets, and they are cheap. Pixels come from a
reduced copy of each image (`Image.draft` lets the JPEG decoder scale by 1/2..1/8 while decoding), so a
large photo costs about as much as a small one. Only one small row per image is kept, so memory grows by
a few hundred bytes per image however many images there are.
"""
from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from PIL import Image, ImageStat

NUMERIC_PROPERTIES = (
    "mean_intensity",  # mean grey level (PIL's "L": ITU-R 601 luma, rounded to integers per pixel), 0..255
    "contrast",  # RMS contrast: standard deviation of the grey levels
    "red_mean", "green_mean", "blue_mean",  # per-channel means, 0..255
    "red_rel", "green_rel", "blue_rel",  # channel mean / sum of the three means (1/3 each for grey images)
    "height", "width", "aspect_ratio", "area",  # of the stored image, in pixels (aspect = width / height)
    "file_size",  # bytes on disk
)
CATEGORICAL_PROPERTIES = ("format", "mode")  # PIL's format (JPEG, PNG, ...) and mode (RGB, L, P, ...)
PROPERTIES = NUMERIC_PROPERTIES + CATEGORICAL_PROPERTIES
# What Pillow raises for a missing, truncated, corrupt or oversized file; anything else is a bug to see.
_UNREADABLE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


@dataclass
class PropertyTable:
    """Properties of one set of images: one row per readable image, and the images that could not be read."""

    table: pd.DataFrame  # columns: path, then PROPERTIES
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, why)

    @property
    def n_items(self) -> int:
        return len(self.table) + len(self.unreadable)


def image_properties(path: str, max_side: int = 128) -> dict:
    """The properties of one image file; Pillow's error if it cannot be read."""
    file_size = os.stat(path).st_size
    with Image.open(path) as image:
        fmt, mode = image.format or "unknown", image.mode
        width, height = image.size
        if fmt == "JPEG":
            image.draft("RGB", (max_side, max_side))  # decode at the smallest DCT scale >= max_side
        rgb = image.convert("RGB")
    if rgb.width * rgb.height == 0:
        raise ValueError("image has no pixels")
    if max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.BOX)
    colour = ImageStat.Stat(rgb)  # histogram-based, in C
    grey = ImageStat.Stat(rgb.convert("L"))  # ITU-R 601 luma
    means = colour.mean
    total = sum(means)
    relative = [m / total for m in means] if total > 0 else [1 / 3] * 3
    return {
        "mean_intensity": grey.mean[0],
        "contrast": grey.stddev[0],
        "red_mean": means[0], "green_mean": means[1], "blue_mean": means[2],
        "red_rel": relative[0], "green_rel": relative[1], "blue_rel": relative[2],
        "height": float(height), "width": float(width), "aspect_ratio": width / height, "area": float(width * height),
        "file_size": float(file_size),
        "format": fmt, "mode": mode,
    }


def _measure_one(path: str, max_side: int) -> tuple[dict | None, str | None]:
    try:
        return image_properties(path, max_side), None
    except _UNREADABLE_ERRORS as error:
        return None, f"{type(error).__name__}: {error}"


def measure_images(
    paths: Sequence[str],
    *,
    workers: int = 2,
    max_side: int = 128,
    label: str = "images",
    progress_every: int = 500,
    log: Callable[[str], None] = print,
) -> PropertyTable:
    """Properties of every image in `paths` (in order), measured by `workers` threads.

    Threads, not processes: Pillow's decoders and numpy release the GIL, so threads run in parallel
    without pickling rows between processes. Work is handed out in bounded chunks so that a list of a
    million paths never becomes a million pending futures, and numbers go straight into one preallocated
    float array (about 100 bytes per image) instead of Python objects.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    paths = [str(p) for p in paths]
    total = len(paths)
    numbers = np.full((total, len(NUMERIC_PROPERTIES)), np.nan)
    categories: dict[str, list[str]] = {name: [] for name in CATEGORICAL_PROPERTIES}
    readable: list[int] = []
    unreadable: list[tuple[str, str]] = []
    done, started = 0, time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for chunk in _chunks(range(total), 64 * workers):
            for index, (props, error) in zip(chunk, pool.map(lambda i: _measure_one(paths[i], max_side), chunk)):
                if props is None:
                    unreadable.append((paths[index], error or "unreadable"))
                else:
                    numbers[len(readable)] = [props[name] for name in NUMERIC_PROPERTIES]
                    for name in CATEGORICAL_PROPERTIES:
                        categories[name].append(sys.intern(props[name]))  # a handful of distinct values
                    readable.append(index)
                done += 1
                if progress_every and total >= progress_every and (done % progress_every == 0 or done == total):
                    rate = done / max(time.perf_counter() - started, 1e-9)
                    log(f"shift: {label}: {done}/{total} images measured ({rate:.0f}/s, {len(unreadable)} unreadable)")
    table = pd.DataFrame(numbers[: len(readable)], columns=list(NUMERIC_PROPERTIES))
    table.insert(0, "path", [paths[i] for i in readable])
    for name in CATEGORICAL_PROPERTIES:
        table[name] = pd.array(categories[name], dtype="str")
    return PropertyTable(table=table, unreadable=unreadable)


def _chunks(items: Iterable[int], size: int) -> Iterable[list[int]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk
