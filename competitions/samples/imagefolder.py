"""A small image-folder data set: four fish species on boat decks, private test partly at night."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from competitions.samples.fisheries import Boat, _make_boat, _save, render_scene  # noqa: PLC2701 (shared renderer)
from pipeline.files import write_csv_atomic

CLASSES = ["ALB", "LAG", "NoF", "SHARK"]


def write_imagefolder_sample(out_dir: Path, seed: int = 0, per_class: int = 60, test_per_group: int = 80) -> None:
    rng = np.random.default_rng(seed)
    boats: list[Boat] = [_make_boat(rng) for _ in range(5)]
    data = out_dir / "data"
    for c in CLASSES:
        for k in range(per_class):
            _save(render_scene(rng, c, boats[rng.integers(3)], night=rng.random() < 0.15), data / "train" / c / f"{c.lower()}_{k:04d}.jpg")
    answers = []
    for group, night_share, pool in (("public", 0.15, boats[:3]), ("private", 0.4, boats)):
        for k in range(test_per_group):
            label = CLASSES[rng.integers(len(CLASSES))]
            name = f"{k:04d}.jpg"
            _save(render_scene(rng, label, pool[rng.integers(len(pool))], night=rng.random() < night_share), data / "test" / group / name)
            answers.append({"id": f"{group}/{name}", **{c: float(c == label) for c in CLASSES}, "Usage": group.capitalize()})
    write_csv_atomic(out_dir / "solution.csv", pd.DataFrame(answers))
