"""A comparison of runs (pipeline/ledger/compare.py) as people and programs read it: an aligned text table, CSV,
JSON or Markdown, and a PNG of each run's scores against its teacher with the public gain's interval.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.ledger.compare import ComparedRuns
from pipeline.errors import UserError
from pipeline.files import write_bytes_atomic
from pipeline.ledger.store import Ledger
from pipeline.method.verdict import LEVEL

FORMATS = ("table", "csv", "json", "markdown")


def render(comparison: ComparedRuns, fmt: str) -> str:
    """The comparison as an aligned text table, CSV, JSON or a Markdown table."""
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "csv":
        return comparison.table.to_csv(index=False, lineterminator="\n")
    if fmt == "json":
        return json.dumps({
            "competition": comparison.competition, "metric": comparison.metric,
            "greater_is_better": comparison.greater_is_better, "sort": comparison.sort,
            "runs": json.loads(comparison.table.to_json(orient="records")),
            "spearman": comparison.correlations, "notes": comparison.notes,
            "plot": str(comparison.plot) if comparison.plot else None,
            "page": str(comparison.page) if comparison.page else None,
        }, indent=2) + "\n"
    shown = _display_table(comparison.table)
    if fmt == "markdown":
        lines = ["| " + " | ".join(shown.columns) + " |", "|" + "|".join("---" for _ in shown.columns) + "|"]
        lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in shown.itertuples(index=False)]
        body = "\n".join(lines)
    else:
        body = shown.to_string(index=False)
    better = "higher" if comparison.greater_is_better else "lower"
    header = (f"{comparison.competition}: {len(comparison.table)} runs, {comparison.metric} ({better} is better), "
              f"sorted by {comparison.sort}; gain = improvement over the run's own teacher (positive = better)")
    footer = [f"Spearman {name.replace('_', ' ')}: {_describe(c)}" for name, c in comparison.correlations.items()]
    footer += comparison.notes
    if comparison.plot:
        footer.append(f"plot: {comparison.plot}")
    if comparison.page:
        footer.append(f"page of all runs: {comparison.page}")
    return "\n".join([header, "", body, "", *footer]) + "\n"


def write_plot(comparison: ComparedRuns, path: Path) -> Path:
    """PNG: per run, holdout/public/private of the student against its teacher, and the public gain with its
    bootstrap interval (an interval crossing 0 is noise)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = comparison.table
    labels = _labels(table)
    x = np.arange(len(table))
    fig, (scores, gains) = plt.subplots(2, 1, figsize=(max(6.0, 0.9 * len(table) + 3), 7.5), sharex=True)
    for offset, (name, colour) in zip((-0.2, 0.0, 0.2), (("holdout", "tab:blue"), ("public", "tab:orange"), ("private", "tab:green"))):
        scores.scatter(x + offset, table[name], color=colour, label=f"{name} (student)", zorder=3)
        scores.scatter(x + offset, table[f"teacher_{name}"], color=colour, marker="_", s=300, linewidths=2,
                       label=f"{name} (teacher baseline)", zorder=2)
    better = "higher" if comparison.greater_is_better else "lower"
    scores.set_ylabel(f"{comparison.metric} ({better} is better)")
    fig.suptitle(f"{comparison.competition}: runs sorted by {comparison.sort}")
    scores.legend(fontsize=7, ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    scores.grid(alpha=0.3)

    low = (table["public_gain"] - table["public_gain_low"]).clip(lower=0)
    high = (table["public_gain_high"] - table["public_gain"]).clip(lower=0)
    colours = ["tab:green" if v == "real gain" else "tab:red" if v == "real loss" else "tab:gray" for v in table["verdict"]]
    gains.bar(x, table["public_gain"], color=colours, alpha=0.7)
    has_ci = table["public_gain_low"].notna().to_numpy()
    gains.errorbar(x[has_ci], table["public_gain"][has_ci], yerr=[low[has_ci], high[has_ci]], fmt="none",
                   ecolor="black", capsize=4)
    for position, (gain, top, bottom, verdict) in enumerate(zip(
            table["public_gain"], table["public_gain_high"], table["public_gain_low"], table["verdict"])):
        if pd.notna(gain):  # the verdict just beyond the end of the bar or of its interval
            end = max(gain, top) if gain >= 0 and pd.notna(top) else min(gain, bottom) if pd.notna(bottom) else gain
            gains.annotate(verdict, (position, end), textcoords="offset points", xytext=(0, 3 if gain >= 0 else -3),
                           ha="center", va="bottom" if gain >= 0 else "top", fontsize=7)
    gains.axhline(0, color="black", linewidth=0.8)
    gains.set_ylabel(f"public gain over teacher\n({LEVEL:.0%} bootstrap interval)")
    gains.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    gains.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())
    comparison.plot = Path(path)
    return Path(path)


def plot_path(ledger: Ledger, competition: str) -> Path:
    """submissions/<competition>/compare.png: next to the ledger, beside the run folders."""
    return ledger.path.parent / competition / "compare.png"


def _display_table(table: pd.DataFrame) -> pd.DataFrame:
    def number(value: object, signed: bool = False) -> str:
        return "-" if pd.isna(value) else (f"{value:+.4f}" if signed else f"{value:.4f}")

    def interval(low: object, high: object) -> str:
        return "-" if not (pd.notna(low) and pd.notna(high)) else f"[{low:+.4f}, {high:+.4f}]"

    return pd.DataFrame({
        "run": table["run_id"],
        "ratio": [("-" if pd.isna(r) else f"{r:g}") for r in table["ratio"]],
        "groups": table["groups"].fillna("-"),
        "holdout": [number(v) for v in table["holdout"]],
        "holdout gain": [number(v, True) for v in table["holdout_gain"]],
        "control holdout": [number(v) for v in table["control_holdout"]],
        "submitted": table["submitted"].fillna("-"),
        "public": [number(v) for v in table["public"]],
        "public gain": [number(v, True) for v in table["public_gain"]],
        f"{LEVEL:.0%} interval of public gain": [interval(a, b) for a, b in zip(table["public_gain_low"], table["public_gain_high"])],
        "verdict": table["verdict"],
        "private": [number(v) for v in table["private"]],
        "private gain": [number(v, True) for v in table["private_gain"]],
        "board": table["board_source"],
    })


def _labels(table: pd.DataFrame) -> list[str]:
    labels = ["teacher only" if r == 0 else f"{r:g} {g}" if pd.notna(r) else str(run)[-18:]
              for r, g, run in zip(table["ratio"], table["groups"], table["run_id"])]
    seen: dict[str, int] = {}
    unique = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if labels.count(label) == 1 else f"{label} #{seen[label]}")
    return unique


def _describe(correlation: dict) -> str:
    if correlation["rho"] is None:
        return f"n/a ({correlation['note']}; {correlation['n']} runs)"
    return f"rho {correlation['rho']:+.2f} (p {correlation['p']:.3g}, {correlation['n']} runs)"
