"""Shared fixtures: small data sets written to disk, and one tiny end-to-end run reused by several tests."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from competitions.samples.fisheries import SMALL, write_fisheries_sample  # noqa: E402

TINY = SMALL


@pytest.fixture(scope="session")
def tiny_fisheries(tmp_path_factory) -> Path:
    """A small fisheries sample (DIR/data, DIR/solution.csv); read-only: copy it before changing files."""
    out = tmp_path_factory.mktemp("tiny_fisheries")
    write_fisheries_sample(out, seed=3, size=TINY)
    return out


def tiny_config(data: Path, tmp: Path, **changes):
    """A RunConfig small enough for tests: 32 px, few epochs, one self-training round, no shift check (about half
    of a tiny run's CPU; the tests of rounds and of the shift check turn them on), pooled student batches (the
    default real+pseudo doubles a student's batch: the suite went from 7 min 43 s to 8 min 20 s; its batches are
    tested in test_student_batches.py and the Amazon end-to-end run keeps it), every selected pseudo-label at weight
    1 and no batch-norm adaptation (a tiny teacher scored on a few rows earns no pseudo-label under the default
    --pseudo-weight net, and the tests of selection, rounds and folds need some; net weights and --adapt-bn foreign
    have their own tests), one holdout (--folds auto would train 5 of everything on a test's few labeled images; the
    cross-validated run and the auto rule have their own tests), everything written under tmp."""
    from pipeline.run.config import RunConfig

    values = dict(competition="fisheries", data=str(data), image_size=32, epochs=3, batch_size=32, min_steps=10, width=8, folds=1,
                  student_epochs=1, pseudo_rounds=1, on_shift="ignore", student_batch="pooled", pseudo_weight="none",
                  adapt_bn="none",
                  runs_dir=str(tmp / "runs"), cache_dir=str(tmp / "cache"), record=False)
    values.update(changes)
    return RunConfig(**values)


@pytest.fixture(scope="session")
def plugin_sample(tmp_path_factory):
    """`plugin_sample(name, small=False)`: the plugin's bundled sample (seed 1), made once per session; read-only."""
    from pipeline.plugin.registry import get_competition

    made: dict[tuple[str, bool], Path] = {}

    def sample(name: str, small: bool = False) -> Path:
        if (name, small) not in made:
            made[name, small] = tmp_path_factory.mktemp(f"sample_{name}{'_small' if small else ''}")
            get_competition(name).make_sample(made[name, small], seed=1, small=small)
        return made[name, small]

    return sample


@pytest.fixture(scope="session")
def tiny_plugin_run(plugin_sample, tmp_path_factory):
    """`tiny_plugin_run(name)`: one tiny end-to-end run (teacher, one student round, control; no shift check) on
    the plugin's small sample, scored against its solution; made once per session and shared (tests/test_plugin_contract.py,
    tests/test_rescore.py, tests/test_hostile_outputs.py: their xdist group "plugin-runs"). Read-only: copy the run
    folder before changing it."""
    made: dict = {}

    def run(name: str):
        if name not in made:
            from pipeline.run.stages import run_pipeline

            sample, tmp = plugin_sample(name, small=True), tmp_path_factory.mktemp(f"run_{name}")
            # no shift check: it is plugin-independent (tests/test_shift.py, test_pipeline_e2e.py) and was 33 of
            # this run's 74 CPU seconds
            cfg = tiny_config(sample / "data", tmp, competition=name, solution=str(sample / "solution.csv"),
                              run_name=f"tiny-{name}", epochs=1, min_steps=8, tta=False)
            made[name] = run_pipeline(cfg)
        return made[name]

    return run
