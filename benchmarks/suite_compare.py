"""Two quality-suite runs side by side: a change against its control (same sets, variants, seeds and budget).

`make bench ARGS="suite_compare BEFORE.csv AFTER.csv [--names before after]"`, on the CSVs `suite --out` writes.
Only the (set, variant, seed) runs both hold are compared. Printed per set and variant, as means over the seeds:
the submitted model's private accuracy and log loss, student - control private accuracy and log loss; then, over
every run: the guard's hit rate (the submitted predictions best of teacher / control / student on private log loss,
within 0.005, as `suite` counts it) and how often the submitted log loss is below the class prior's.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

KEYS = ["set", "variant", "seed"]
MODELS = ("teacher", "control", "student")


def private_table(path: Path) -> pd.DataFrame:
    """One row per run: each model's private accuracy and log loss as columns (acc_<model>, ll_<model>)."""
    table = pd.read_csv(path)
    private = table[table["group"] == "private"]
    wide = private.pivot_table(index=KEYS, columns="model", values=["acc", "logloss"], aggfunc="first")
    wide.columns = [f"{'acc' if value == 'acc' else 'll'}_{model}" for value, model in wide.columns]
    which = private.groupby(KEYS)["submitted"].first().rename("which")
    return wide.join(which).reset_index()


def hits(runs: pd.DataFrame) -> int:
    best = runs[[f"ll_{m}" for m in MODELS]].min(axis=1)
    return int((runs["ll_submitted"] <= best + 0.005).sum())


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks suite_compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--names", nargs=2, default=["before", "after"])
    args = parser.parse_args()
    a, b = private_table(args.before), private_table(args.after)
    both = a.merge(b, on=KEYS, suffixes=("_a", "_b"))
    if both.empty:
        raise SystemExit(f"{args.before} and {args.after} hold no (set, variant, seed) run in common")
    x, y = args.names
    print(f"{len(both)} runs in common; means over seeds of private accuracy / log loss\n")
    print(f"| set | variant | seeds | submitted, {x} | submitted, {y} | student - control, {x} | student - control, {y} "
          f"| which, {x} | which, {y} |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (set_name, variant), part in both.groupby(["set", "variant"], sort=False):
        def cell(suffix: str, model: str) -> str:
            return f"{part[f'acc_{model}{suffix}'].mean():.3f} / {part[f'll_{model}{suffix}'].mean():.3f}"

        def gap(suffix: str) -> str:
            acc = (part[f"acc_student{suffix}"] - part[f"acc_control{suffix}"]).mean()
            ll = (part[f"ll_student{suffix}"] - part[f"ll_control{suffix}"]).mean()
            return f"{acc:+.3f} / {ll:+.3f}"

        which = {s: "".join(str(w)[0] for w in part.sort_values("seed")[f"which{s}"]) for s in ("_a", "_b")}
        print(f"| {set_name} | {variant} | {len(part)} | {cell('_a', 'submitted')} | {cell('_b', 'submitted')} | "
              f"{gap('_a')} | {gap('_b')} | {which['_a']} | {which['_b']} |")
    for name, suffix in ((x, "_a"), (y, "_b")):
        runs = both[[*KEYS, *(c for c in both.columns if c.endswith(suffix))]]
        runs.columns = [c.removesuffix(suffix) for c in runs.columns]
        below = int((runs["ll_submitted"] < runs["ll_class prior"]).sum())
        print(f"\n{name}: guard hit rate {hits(runs)}/{len(runs)}; submitted log loss below the class prior's in "
              f"{below}/{len(runs)}")


if __name__ == "__main__":
    main()
