"""Shared fixtures: small data sets written to disk, and one tiny end-to-end run reused by several tests."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from competitions.samples.fisheries import SampleSize, write_fisheries_sample  # noqa: E402

TINY = SampleSize(train=160, public=48, private=64, train_boats=3, new_boats=2)


@pytest.fixture(scope="session")
def tiny_fisheries(tmp_path_factory) -> Path:
    """A small fisheries sample (DIR/data, DIR/solution.csv); read-only: copy it before changing files."""
    out = tmp_path_factory.mktemp("tiny_fisheries")
    write_fisheries_sample(out, seed=3, size=TINY)
    return out


def tiny_config(data: Path, tmp: Path, **changes):
    """A RunConfig small enough for tests: 32 px, few epochs, everything written under tmp."""
    from pipeline.config import RunConfig

    values = dict(competition="fisheries", data=str(data), image_size=32, epochs=3, batch_size=32, min_steps=10, width=8,
                  student_epochs=1,
                  runs_dir=str(tmp / "runs"), cache_dir=str(tmp / "cache"), record=False)
    values.update(changes)
    return RunConfig(**values)
