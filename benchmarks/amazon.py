"""Amazon on the bundled sample: teacher vs student F2 (holdout, public, private) over 3 seeds with default
settings, per-tag thresholds tuned on the holdout vs a flat 0.2, and wall time. Prints figures, asserts nothing.

The flat-vs-tuned comparison on the test sets uses the teacher's cached test probabilities: tuning is fit
on the holdout, so the public/private columns are the out-of-sample view of it.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

SEEDS = (0, 1, 2)


def main() -> None:
    import competitions.amazon  # noqa: F401  (registers the plugin)
    from competitions.amazon_tags import START_THRESHOLD, TAGS
    from pipeline.run.config import RunConfig
    from pipeline.plugin.registry import get_competition
    from pipeline.run.stages import run_pipeline

    amazon = get_competition("amazon")
    with tempfile.TemporaryDirectory(prefix="bench-amazon-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        amazon.make_sample(root / "sample", seed=0)
        sample_s = time.perf_counter() - started
        data, solution_csv = root / "sample" / "data", root / "sample" / "solution.csv"
        solution = pd.read_csv(solution_csv, dtype=str, keep_default_na=False)
        sol_ids, y_true, usage = amazon.from_solution(solution, list(TAGS))
        test_ids = amazon.test_items(data)["id"].tolist()
        order = [test_ids.index(i) for i in sol_ids]
        rows = []
        for seed in SEEDS:
            cfg = RunConfig(competition="amazon", data=str(data), solution=str(solution_csv), seed=seed,
                            runs_dir=str(root / "runs"), cache_dir=str(root / f"cache-{seed}"), record=False)
            result = run_pipeline(cfg)
            m = result.metrics
            decision = m["decision"]["teacher"]
            (probs_file,) = (root / f"cache-{seed}" / "amazon" / "teachers").glob("*/test_probs.npy")
            probs = np.load(probs_file)[order]  # every sample image is readable, so rows = test items
            row = {"seed": seed, "total_s": m["timings"]["total_s"], "teacher_s": m["timings"]["teacher_s"],
                   "student_s": m["timings"]["student_s"], "pseudo": m["pseudo"]["selected"]}
            for who in ("teacher", "student"):
                row[f"{who}_holdout"] = m["holdout"][who]
                for board in ("public", "private"):
                    row[f"{who}_{board}"] = m["leaderboard"][who][board]
            row["holdout_flat"], row["holdout_tuned"] = decision["baseline_f2_at_0.2"], decision["tuned_f2"]
            for board in ("Public", "Private"):
                pick = usage == board
                flat = amazon.decide(probs[pick], {"thresholds": [START_THRESHOLD] * len(TAGS)})
                tuned = amazon.decide(probs[pick], decision)
                row[f"{board.lower()}_flat"] = amazon.metric(y_true[pick], flat)
                row[f"{board.lower()}_tuned"] = amazon.metric(y_true[pick], tuned)
            rows.append(row)
    table = pd.DataFrame(rows).set_index("seed")
    mean = table.mean()
    pd.set_option("display.width", 200)
    print(f"\n== amazon sample (800 train / 300 public / 300 private, 64 px, default settings), sample made in {sample_s:.1f}s")
    print("F2, teacher vs student:")
    print(table[[c for c in table.columns if c.startswith(("teacher_", "student_")) and not c.endswith("_s")]]
          .to_string(float_format=lambda x: f"{x:.4f}"))
    for where in ("holdout", "public", "private"):
        print(f"  mean {where:<8} teacher {mean[f'teacher_{where}']:.4f}  student {mean[f'student_{where}']:.4f}  "
              f"student - teacher {mean[f'student_{where}'] - mean[f'teacher_{where}']:+.4f}")
    print("teacher F2, flat 0.2 vs per-tag thresholds tuned on the holdout (holdout = in-sample, public/private = out-of-sample):")
    print(table[[f"{w}_{k}" for w in ("holdout", "public", "private") for k in ("flat", "tuned")]]
          .to_string(float_format=lambda x: f"{x:.4f}"))
    for where in ("holdout", "public", "private"):
        print(f"  mean {where:<8} flat {mean[f'{where}_flat']:.4f}  tuned {mean[f'{where}_tuned']:.4f}  "
              f"gain {mean[f'{where}_tuned'] - mean[f'{where}_flat']:+.4f}")
    print("wall time per run (s):")
    print(table[["total_s", "teacher_s", "student_s", "pseudo"]].to_string())
    print(f"  mean total {mean['total_s']:.1f}s (the `make demo COMP=amazon` run, plus {sample_s:.1f}s for the sample)")


if __name__ == "__main__":
    main()
