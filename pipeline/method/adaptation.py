"""Which test images are predicted with their own batch-norm statistics (AdaBN, Li et al. 2016), and in which sets.

A test group filmed darker, at night or by another camera moves every layer's activations; batch-norm statistics
re-estimated on those images' own batches put them back where the weights expect them. Re-estimated on a whole
group that only partly moved (a deck camera filming day and night), one set of statistics fits neither part and
costs accuracy (benchmarks/RESULTS.md). So `--adapt-bn foreign` adapts only the images that look unlike every train
image, and gives them statistics of their own. "Unlike" is measured on the pixel statistics the shift check already
has (brightness, contrast, channel means and shares: what batch norm sees; not file size or format, which a
re-encoding changes without changing a pixel): an image is foreign when its nearest train image, in train-scaled
units, is farther than all but 1% of train images are from their own nearest other train image. A group drawn like
train has about 1% such images by chance: below MIN_SHARE of the group, nothing is adapted.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipeline.run.config import ADAPT_BN_MODES

if TYPE_CHECKING:
    from pipeline.data.items import Items
    from pipeline.shift.report import ShiftReport

PIXEL_PROPERTIES = ("mean_intensity", "contrast", "red_mean", "green_mean", "blue_mean", "red_rel", "green_rel", "blue_rel")
TRAIN_QUANTILE = 0.99  # foreign: farther from train than this share of train images are from each other
MIN_SHARE = 0.10  # fewer foreign images than this share of a group: chance (1 - TRAIN_QUANTILE, more with few train images)
MIN_IMAGES = 32  # batch-norm statistics need a few batches' worth of images


def foreign_images(train: pd.DataFrame, group: pd.DataFrame) -> np.ndarray:
    """Per row of `group`: whether it looks unlike every train image, by its distance to the nearest train image in
    units of the train images' spread (per property: its standard deviation)."""
    from sklearn.neighbors import NearestNeighbors

    if len(train) < 2 or len(group) == 0:
        return np.zeros(len(group), dtype=bool)
    columns = list(PIXEL_PROPERTIES)
    a, b = train[columns].to_numpy(np.float64), group[columns].to_numpy(np.float64)
    centre, spread = a.mean(axis=0), a.std(axis=0)
    spread = np.where(spread > 1e-6 * (1 + np.abs(centre)), spread, 1.0)  # a constant property: raw units
    a, b = (a - centre) / spread, (b - centre) / spread
    neighbours = NearestNeighbors(n_neighbors=2).fit(a)
    within = neighbours.kneighbors(a)[0][:, 1]  # each train image's nearest other train image
    to_train = neighbours.kneighbors(b, n_neighbors=1)[0][:, 0]
    return to_train > np.quantile(within, TRAIN_QUANTILE)


def domains(mode: str, groups: np.ndarray, paths: np.ndarray, tables: dict[str, pd.DataFrame] | None,
            shifted: list[str]) -> np.ndarray:
    """The adaptation set of every readable test item ("" = the model's own statistics), in item order.

    none: no item; all: each group its own set; shifted: each group the shift check flags; foreign: the foreign
    images of each group, when they are at least MIN_SHARE of it and MIN_IMAGES. `tables` are the shift check's
    property tables ("train" and each group: a path column and the numeric properties); `paths` the items' paths.
    """
    if mode not in ADAPT_BN_MODES:
        raise ValueError(f"unknown --adapt-bn {mode!r}; expected one of {', '.join(ADAPT_BN_MODES)}")
    groups = np.asarray(groups).astype(str)
    out = np.full(len(groups), "", dtype=object)
    present = list(dict.fromkeys(groups))
    if mode == "none":
        return out
    if mode in ("all", "shifted"):
        for g in present:
            if mode == "all" or g in shifted:
                out[groups == g] = g
        return out
    if tables is None:
        return out
    train = tables["train"]
    for g in present:
        table = tables.get(g)
        if table is None or len(table) == 0:
            continue
        foreign = foreign_images(train, table)
        if foreign.sum() < max(MIN_IMAGES, MIN_SHARE * len(table)):
            continue
        foreign_paths = set(table["path"].to_numpy(dtype=str)[foreign])
        mine = (groups == g) & np.isin(np.asarray(paths).astype(str), list(foreign_paths))
        out[mine] = f"{g} foreign ({int(mine.sum())} images)"
    return out


def assign_sets(mode: str, items: Items, shift: ShiftReport | None) -> None:
    """Set each readable test item's adaptation set (`items.domain`, --adapt-bn `mode`)."""
    if mode == "shifted" and shift is None:
        print("--adapt-bn shifted: no shift check ran (--on-shift ignore), so no group is adapted", flush=True)
    tables = None
    if mode == "foreign":  # the image store measured every image's properties when it decoded it
        tables = items.property_tables()
    paths = items.test["path"].to_numpy(dtype=str)[items.readable_test]
    items.domain = domains(mode, items.test_groups, paths, tables, [] if shift is None else shift.shifted_groups())
    if mode != "none":
        print(f"batch-norm statistics re-estimated on their own images for: {', '.join(items.adapted) or 'none'} "
              f"(--adapt-bn {mode})", flush=True)
