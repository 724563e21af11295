"""Per-image properties (brightness, colour, contrast, size, format) for the shift check: what is measured.

Why these: they are what drift tools compare between image sets, and they are cheap. They are computed
from the copy of each image that pipeline/data/image_store.py decodes anyway for the model (a JPEG is decoded
at a reduced DCT scale there), so measuring costs no second read of the file. Only one small row per
image is kept, so memory grows by a few hundred bytes per image however many images there are.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from PIL import Image

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
MAX_SIDE = 128  # pixel statistics are taken on a copy at most this big (box-averaged by a whole factor)


@dataclass
class PropertyTable:
    """Properties of one set of images: one row per readable image, and the images that could not be read."""

    table: pd.DataFrame  # columns: path, then PROPERTIES
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, why)

    @property
    def n_items(self) -> int:
        return len(self.table) + len(self.unreadable)


def describe(rgb: Image.Image, *, width: int, height: int, file_size: int, fmt: str, mode: str,
             max_side: int = MAX_SIDE) -> dict:
    """The properties of one decoded RGB image; width, height, format and mode are those of the stored file."""
    if rgb.width * rgb.height == 0:
        raise ValueError("image has no pixels")
    if max(rgb.size) > max_side:
        # the mean of each f x f block: half the cost of a copy and an exact-size BOX thumbnail, same means
        rgb = rgb.reduce(-(-max(rgb.size) // max_side))
    # ImageStat's formulas (population mean and standard deviation from the histogram), with numpy doing
    # the sums instead of ImageStat's Python loops over the bins
    levels = np.arange(256.0)
    colour = np.asarray(rgb.histogram(), dtype=np.float64).reshape(3, 256)
    means = [float(m) for m in colour @ levels / colour[0].sum()]
    grey = np.asarray(rgb.convert("L").histogram(), dtype=np.float64)  # ITU-R 601 luma
    grey_mean = float(grey @ levels / grey.sum())
    grey_var = float(grey @ levels**2 / grey.sum()) - grey_mean**2
    total = sum(means)
    relative = [m / total for m in means] if total > 0 else [1 / 3] * 3
    return {
        "mean_intensity": grey_mean,
        "contrast": float(np.sqrt(max(grey_var, 0.0))),
        "red_mean": means[0], "green_mean": means[1], "blue_mean": means[2],
        "red_rel": relative[0], "green_rel": relative[1], "blue_rel": relative[2],
        "height": float(height), "width": float(width), "aspect_ratio": width / height, "area": float(width * height),
        "file_size": float(file_size),
        "format": fmt, "mode": mode,
    }


class PropertyRows:
    """Collects one row per readable image into preallocated arrays (about 100 bytes per image, no dicts kept)."""

    def __init__(self, total: int) -> None:
        self.numbers = np.full((total, len(NUMERIC_PROPERTIES)), np.nan)
        self.categories: dict[str, list[str]] = {name: [] for name in CATEGORICAL_PROPERTIES}
        self.rows: list[int] = []  # index of each readable image in the input list

    def add(self, index: int, props: dict) -> None:
        self.numbers[len(self.rows)] = [props[name] for name in NUMERIC_PROPERTIES]
        for name in CATEGORICAL_PROPERTIES:
            self.categories[name].append(sys.intern(props[name]))  # a handful of distinct values
        self.rows.append(index)

    def frame(self, paths: list[str]) -> pd.DataFrame:
        """Columns path, then PROPERTIES; one row per readable image, in input order."""
        return property_frame([paths[i] for i in self.rows], self.numbers[: len(self.rows)],
                              {name: list(values) for name, values in self.categories.items()})


def property_frame(paths: list[str], numbers: np.ndarray, categories: dict[str, list[str]]) -> pd.DataFrame:
    table = pd.DataFrame(np.asarray(numbers, dtype=np.float64).reshape(len(paths), len(NUMERIC_PROPERTIES)),
                         columns=list(NUMERIC_PROPERTIES))
    table.insert(0, "path", list(paths))
    for name in CATEGORICAL_PROPERTIES:
        table[name] = pd.array([str(v) for v in categories[name]], dtype="str")
    return table
