"""A small, procedural data set in the exact Kaggle Amazon layout, with answers.

Each 64x64 tile is drawn from its tags: dark textured canopy (primary) or scrub, straight-edged fields
(agriculture), small clearings (cultivation), a dark river or lake (water), thin pale lines (road),
clusters of bright roofs (habitation), and the rare tags as small distinctive marks; then the weather:
nothing (clear), a grey veil (haze), soft cloud blobs (partly_cloudy) or a near-total cover (cloudy,
which hides everything, so it is the image's only tag, as on Kaggle). Clouds may hide tagged features,
as they do on the real tiles. Tag frequencies follow Kaggle's train set, except that the rare tags are
2-4x more common so that 800 tiles hold a handful of each.

The public test set (test-jpg) is drawn like train; the private one (test-jpg-additional) is hazier and
brighter: the shift that pseudo-labeling on the test set can adapt to and the shift check should flag.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from competitions.samples.amazon_tiles import render_tile
from pipeline.errors import UserError
from pipeline.files import write_csv_atomic

WEATHER_P = {"clear": 0.70, "partly_cloudy": 0.18, "haze": 0.07, "cloudy": 0.05}  # Kaggle: .70 .18 .07 .05
RARE_P = {  # Kaggle train frequency in brackets
    "bare_ground": 0.035,  # (0.021)
    "selective_logging": 0.02,  # (0.008)
    "artisinal_mine": 0.02,  # (0.008)
    "blooming": 0.02,  # (0.008)
    "slash_burn": 0.015,  # (0.005)
    "blow_down": 0.012,  # (0.0025)
    "conventional_mine": 0.012,  # (0.0025)
}
SAMPLE_TAGS = "primary clear agriculture road water"  # what Kaggle's sample_submission_v2.csv holds


def write_sample(out_dir: Path, seed: int = 0, n_train: int = 800, n_public: int = 300, n_private: int = 300) -> None:
    """Write out_dir/data (train_v2.csv, train-jpg/, test-jpg/, test-jpg-additional/, sample_submission_v2.csv)
    and out_dir/solution.csv (image_name,tags,Usage). Deterministic given `seed`.

    The data folder is built beside its final place and renamed at the end, so it is complete or absent.
    """
    for name, n, low in (("n_train", n_train, 10), ("n_public", n_public, 1), ("n_private", n_private, 1)):
        if int(n) != n or n < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {n!r}")
    out_dir = Path(out_dir)
    data = out_dir / "data"
    if data.exists():
        raise UserError(f"{data} already exists; delete it (or choose another folder) to make a fresh sample")
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".data.", dir=out_dir))
    try:
        splits = (("train", "train-jpg", "train", n_train), ("public", "test-jpg", "test", n_public),
                  ("private", "test-jpg-additional", "file", n_private))
        tables = {}
        for split_no, (split, folder, prefix, n) in enumerate(splits):
            (staging / folder).mkdir()
            rows = []
            for i in range(n):
                rng = np.random.default_rng([seed, split_no, i])
                tags = draw_tags(rng)
                image = render_tile(rng, tags, shifted=split == "private")
                name = f"{prefix}_{i}"
                image.save(staging / folder / f"{name}.jpg", quality=90)
                rows.append((name, " ".join(tags)))
            tables[split] = pd.DataFrame(rows, columns=["image_name", "tags"])
            print(f"amazon sample: {n} {split} tiles in {folder}/", flush=True)
        write_csv_atomic(staging / "train_v2.csv", tables["train"])
        test = pd.concat([tables["public"].assign(Usage="Public"), tables["private"].assign(Usage="Private")],
                         ignore_index=True)
        write_csv_atomic(staging / "sample_submission_v2.csv", test[["image_name"]].assign(tags=SAMPLE_TAGS))
        staging.rename(data)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    write_csv_atomic(out_dir / "solution.csv", test)


def draw_tags(rng: np.random.Generator) -> tuple[str, ...]:
    """One tile's tags (sorted): one weather tag, then ground tags with Kaggle-like rates and co-occurrence."""
    weather = str(rng.choice(list(WEATHER_P), p=list(WEATHER_P.values())))
    if weather == "cloudy":
        return ("cloudy",)
    tags = {weather}
    if rng.random() < 0.93:
        tags.add("primary")
    if rng.random() < 0.31:
        tags.add("agriculture")
    if rng.random() < 0.17:
        tags.add("water")
    if rng.random() < (0.38 if "agriculture" in tags else 0.08):
        tags.add("road")
    if rng.random() < (0.4 if "road" in tags else 0.02):
        tags.add("habitation")
    if rng.random() < (0.25 if "agriculture" in tags else 0.05):
        tags.add("cultivation")
    for tag, p in RARE_P.items():
        if rng.random() < p:
            tags.add(tag)
    if "artisinal_mine" in tags and rng.random() < 0.7:
        tags.add("water")  # gold mining happens along rivers
    if tags & {"blooming", "blow_down", "selective_logging"}:
        tags.add("primary")  # these are things that happen to forest
    if tags == {weather}:
        tags.add("primary")
    return tuple(sorted(tags))
