"""Sweep cost: how much cheaper a second pseudo-label setting is than the first (targets: 5x at the demo's budget,
3x at the full defaults).

`make bench ARGS="sweep [--ratios 0.25 0.33] [--groups public,private] [--variant default|frozen|all] [--work DIR]"`

On the fisheries sample with the demo's budget (the Makefile's QUICK options, which `make bench` passes in the
environment; run directly, `python -m benchmarks sweep` uses the full defaults and says so), a sweep from a
cold cache, in this process: the first setting decodes the images, runs the shift check and trains the teacher,
the control and its students; a later setting reuses all of them from the cache and trains only its students.
Prints each setting's wall time and parts, and the ratio first / mean of the later ones.

Variants: `default` (the default backbone, trained from scratch) and `frozen` (a frozen MobileNetV2 whose
embeddings are cached once, so a later setting trains only small heads; random-initialised weights keep it
offline, and the timing does not depend on their values).
"""
from __future__ import annotations

import argparse
import os
import shlex
import tempfile
import time
from pathlib import Path

from benchmarks import submit_config
from pipeline.plugin.registry import get_competition
from pipeline.run.sweep import run_sweep, summary, sweep_settings

VARIANTS = {
    "default": ("the default backbone, trained from scratch", []),
    "frozen": ("MobileNetV2 frozen, cached features", ["--backbone", "MobileNetV2", "--weights", "none"]),
}


def budget() -> tuple[list[str], str]:
    """The run options of the demo's budget: the Makefile's QUICK, passed by `make bench` as $QUICK."""
    quick = os.environ.get("QUICK")
    if quick is None:
        return [], "the full defaults (QUICK is not set: run it as `make bench ARGS=sweep` for the demo's budget)"
    return shlex.split(quick), f"the demo's budget (QUICK: {quick or 'empty, the full defaults'})"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.33])
    parser.add_argument("--groups", nargs="+", default=["public,private"])
    parser.add_argument("--variant", choices=[*VARIANTS, "all"], default="default")
    parser.add_argument("--work", type=Path, help="keep the sample, runs and ledger here (default: a temporary folder)")
    args = parser.parse_args()
    options, said = budget()
    settings = sweep_settings(args.ratios, args.groups)
    print(f"sweep of {len(settings)} settings on the fisheries sample, {said}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        root = args.work or Path(tmp)
        if not (root / "sample" / "data").exists():
            get_competition("fisheries").make_sample(root / "sample", seed=0)
        figures = []
        for key in (VARIANTS if args.variant == "all" else [args.variant]):
            name, changes = VARIANTS[key]
            cache = Path(tempfile.mkdtemp(prefix=f"cache-{key}-", dir=root))  # always cold: the first setting trains
            base = submit_config([
                "--competition", "fisheries", "--data", str(root / "sample" / "data"),
                "--solution", str(root / "sample" / "solution.csv"), "--runs-dir", str(root / "runs"),
                "--cache-dir", str(cache), "--ledger", str(root / "ledger.sqlite"), *options, *changes])
            started = time.perf_counter()
            results = run_sweep(base, settings)
            figures.append((name, summary(results), time.perf_counter() - started))
        print(f"\n== benchmark: sweep of {len(settings)} settings on the fisheries sample (cold cache), {said}")
        for name, text, seconds in figures:
            target = "1/5" if options else "1/3"  # the demo's budget, or the full defaults (issue 26)
            print(f"-- {name} ({seconds:.0f}s)\n{text}\n(target: a later setting <= {target} of the first)")
