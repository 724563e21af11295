"""Fisheries sample: teacher vs student log loss (holdout, public, private) over 3 seeds, and wall time.

`python -m benchmarks fisheries [--ratio R] [--labels soft|hard] [--seeds 0 1 2]`
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.run.config import RunConfig
from pipeline.plugin.registry import get_competition


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks fisheries")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ratio", type=float, default=RunConfig("", "").pseudo_ratio)
    parser.add_argument("--labels", default=RunConfig("", "").pseudo_labels)
    parser.add_argument("--groups", default="public,private")
    parser.add_argument("--work", type=Path, help="keep data and caches here (default: a temporary folder)")
    args = parser.parse_args()
    from pipeline.run.stages import run_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        if not (work / "sample" / "data").exists():
            get_competition("fisheries").make_sample(work / "sample", seed=0)
        rows = []
        for seed in args.seeds:
            started = time.perf_counter()
            cfg = RunConfig(competition="fisheries", data=str(work / "sample" / "data"), solution=str(work / "sample" / "solution.csv"),
                            seed=seed, pseudo_ratio=args.ratio, pseudo_labels=args.labels, pseudo_groups=tuple(args.groups.split(",")),
                            runs_dir=str(work / "runs"), cache_dir=str(work / "cache"), record=False)
            m = run_pipeline(cfg).metrics
            lb = m["leaderboard"]
            rows.append((seed, m["holdout"]["teacher"], m["holdout"]["student"], lb["teacher"]["public"], lb["student"]["public"],
                         lb["teacher"]["private"], lb["student"]["private"], time.perf_counter() - started))
    print(f"\nfisheries sample, ratio {args.ratio}, {args.labels} labels, groups {args.groups} (log loss, lower is better)")
    print(f"{'seed':>4} {'hold T':>7} {'hold S':>7} {'pub T':>7} {'pub S':>7} {'priv T':>7} {'priv S':>7} {'wall s':>7}")
    for row in rows:
        print(f"{row[0]:>4} " + " ".join(f"{v:7.4f}" for v in row[1:7]) + f" {row[7]:7.1f}")
    table = np.array([r[1:7] for r in rows])
    print("mean " + " ".join(f"{v:7.4f}" for v in table.mean(axis=0)))
    wins = int((table[:, 5] < table[:, 4]).sum())
    print(f"student beats teacher on private in {wins}/{len(rows)} seeds; mean private delta {np.mean(table[:, 5] - table[:, 4]):+.4f}")
