"""Sweep cost: the first setting trains the teacher, later settings reuse it from the cache.

`python -m benchmarks sweep [--variant small-cnn|frozen|all] [--work DIR]`

On the fisheries sample, a sweep of 3 pseudo-label settings from a cold cache, with the demo's small CNN (teacher
and students train from scratch, so a later setting still trains a whole student) and with a frozen
keras.applications backbone (embeddings cached once; a later setting trains only a small head). Prints
each setting's wall time and the ratio first / mean of later ones. Random-initialised backbone weights
keep it offline; the timing does not depend on the weights' values.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pipeline.commands.sweep import run_sweep, summary
from pipeline.config import RunConfig
from pipeline.registry import GROUPS, get_competition

SETTINGS = [(0.1, GROUPS), (0.25, ("public",)), (0.33, GROUPS)]
VARIANTS = {
    "small-cnn": ("small-cnn (the demo's defaults)", {}),
    "frozen": ("MobileNetV2 frozen, cached features", {"backbone": "MobileNetV2", "weights": "none", "image_size": 64}),
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks sweep")
    parser.add_argument("--variant", choices=[*VARIANTS, "all"], default="all")
    parser.add_argument("--work", type=Path, help="keep the sample, runs and ledger here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        root = args.work or Path(tmp)
        if not (root / "sample" / "data").exists():
            started = time.perf_counter()
            get_competition("fisheries").make_sample(root / "sample", seed=0)
            print(f"fisheries sample in {time.perf_counter() - started:.1f}s", flush=True)
        figures = []
        for key in (VARIANTS if args.variant == "all" else [args.variant]):
            name, changes = VARIANTS[key]
            cache = Path(tempfile.mkdtemp(prefix=f"cache-{key}-", dir=root))  # always cold: the first setting trains
            base = RunConfig(competition="fisheries", data=str(root / "sample" / "data"),
                             solution=str(root / "sample" / "solution.csv"), runs_dir=str(root / "runs"),
                             cache_dir=str(cache), ledger=str(root / "ledger.sqlite"), **changes)
            results = run_sweep(base, SETTINGS)
            figures.append((name, summary(results)))
        print("\n== benchmark: sweep of 3 settings on the fisheries sample (cold cache)")
        for name, text in figures:
            print(f"-- {name}\n{text}")
