"""The shift check's result: its settings, one verdict per pair of image sets, and how it is shown.

`ShiftReport` is what pipeline/shift/assess.py computes and what the run reads (`shifted_groups` feeds the
per-group pseudo-label quotas); it renders itself for the terminal (`table`), the run report (`html_fragment`),
shift.json (`to_dict`) and the ledger (`summary`). The plots are drawn by pipeline/shift/plots.py.
"""
from __future__ import annotations

import dataclasses
import html
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipeline.data.image_properties import CATEGORICAL_PROPERTIES, NUMERIC_PROPERTIES, PropertyTable
from pipeline.errors import UserError
from pipeline.plugin.api import GROUPS

OK, WARN, FAIL, TOO_FEW = "OK", "WARN", "FAIL", "too few to judge"
_RANK = {TOO_FEW: 0, OK: 1, WARN: 2, FAIL: 3}
SETS = ("train",) + GROUPS
PAIRS = ("train_vs_public", "train_vs_private", "public_vs_private")


@dataclass(frozen=True)
class ShiftSettings:
    """Thresholds of the verdicts and the cost knobs; defaults follow common drift-tool practice."""

    warn_d: float = 0.1  # KS statistic D
    fail_d: float = 0.2
    warn_emd: float = 0.1  # Wasserstein distance / pooled standard deviation
    fail_emd: float = 0.2
    warn_v: float = 0.1  # Cramér's V of the categorical properties (format, mode)
    fail_v: float = 0.25
    alpha: float = 0.01  # family-wise significance of the property tests (Bonferroni over one pair's properties)
    warn_auc: float = 0.55  # adversarial AUC
    fail_auc: float = 0.65
    auc_alpha: float = 0.05  # significance of the adversarial AUC (permutation p-value)
    n_permutations: int = 19  # smallest possible p-value is 1 / (n + 1) = 0.05
    n_trees: int = 50  # trees of the adversarial random forest
    max_adversarial_rows: int = 1000  # per set; a seeded random subset keeps the classifier fast on big sets
    min_images: int = 30  # fewer readable images in either set: "too few to judge"
    workers: int = 2
    n_examples: int = 8  # images listed and shown per pair and side
    progress_every: int = 500  # images between progress lines; 0 = quiet

    def __post_init__(self) -> None:
        for warn, fail in (("warn_d", "fail_d"), ("warn_emd", "fail_emd"), ("warn_v", "fail_v"),
                           ("warn_auc", "fail_auc")):
            low, high = getattr(self, warn), getattr(self, fail)
            if not (0 <= low <= high):
                raise UserError(f"shift thresholds need 0 <= {warn} <= {fail}, got {low!r} and {high!r}")
        for name in ("alpha", "auc_alpha"):
            if not (0 < getattr(self, name) < 1):
                raise UserError(f"shift setting {name} must be between 0 and 1, got {getattr(self, name)!r}")
        for name, low in (("n_permutations", 1), ("n_trees", 20), ("max_adversarial_rows", 2), ("min_images", 2),
                          ("workers", 1), ("n_examples", 0), ("progress_every", 0)):
            value = getattr(self, name)
            if int(value) != value or value < low:
                raise UserError(f"shift setting {name} must be an integer >= {low}, got {value!r}")


@dataclass
class PropertyResult:
    name: str
    kind: str  # "numeric" | "categorical"
    statistic: float  # KS D (numeric) or Cramér's V (categorical)
    p_value: float  # uncorrected
    p_adjusted: float  # Bonferroni: p times the number of properties compared in the pair, at most 1
    emd: float | None  # normalised Wasserstein distance (numeric only)
    status: str


@dataclass
class PairResult:
    a: str
    b: str
    n_a: int
    n_b: int
    status: str
    reason: str
    properties: list[PropertyResult] = field(default_factory=list)
    adversarial: dict | None = None  # auc, p_value, status, importances, a_most_like_b, b_most_distinct


@dataclass
class ShiftReport:
    settings: ShiftSettings
    sets: dict[str, PropertyTable]
    pairs: dict[str, PairResult]
    plots: list[Path] = field(default_factory=list)

    def status(self, pair: str) -> str:
        """OK | WARN | FAIL | "too few to judge" for a pair such as "train_vs_private"."""
        if pair not in self.pairs:
            raise ValueError(f"unknown shift comparison {pair!r}; expected one of {', '.join(PAIRS)}")
        return self.pairs[pair].status

    def shifted_groups(self) -> list[str]:
        """Test groups (public, private) whose comparison with train is WARN or FAIL."""
        return [g for g in GROUPS if self.status(f"train_vs_{g}") in (WARN, FAIL)]

    @property
    def worst(self) -> str:
        """The worst verdict over the pairs; "too few to judge" only when no pair could be judged."""
        return worst_status(p.status for p in self.pairs.values())

    def summary(self) -> dict:
        """A few numbers per pair, small enough for the ledger."""
        return {
            "worst": self.worst,
            "shifted_groups": self.shifted_groups(),
            "images": {name: len(t.table) for name, t in self.sets.items()},
            "unreadable": {name: len(t.unreadable) for name, t in self.sets.items()},
            "pairs": {
                key: {
                    "status": pair.status,
                    "auc": None if pair.adversarial is None else round(pair.adversarial["auc"], 4),
                    "auc_p": None if pair.adversarial is None else round(pair.adversarial["p_value"], 4),
                    "shifted": [p.name for p in pair.properties if p.status in (WARN, FAIL)],
                }
                for key, pair in self.pairs.items()
            },
        }

    def to_dict(self) -> dict:
        """Everything, JSON-able: settings, per-set descriptions, unreadable files, per-pair statistics."""
        return {
            "worst": self.worst,
            "shifted_groups": self.shifted_groups(),
            "settings": dataclasses.asdict(self.settings),
            "sets": {name: _describe_set(t) for name, t in self.sets.items()},
            "pairs": {key: dataclasses.asdict(pair) for key, pair in self.pairs.items()},
            "plots": [p.name for p in self.plots],
        }

    def table(self) -> str:
        """The terminal report: one block per pair, one row per property."""
        groups = ", ".join(self.shifted_groups()) or "none"
        lines = [f"Distribution shift: worst {self.worst}; shifted test groups: {groups}",
                 "images: " + ", ".join(f"{name} {len(t.table)} readable" + (f" ({len(t.unreadable)} unreadable)"
                                                                               if t.unreadable else "")
                                        for name, t in self.sets.items())]
        for name, t in self.sets.items():
            lines += [f"  unreadable {name}: {path}: {error}" for path, error in t.unreadable[:5]]
            if len(t.unreadable) > 5:
                lines.append(f"  ... and {len(t.unreadable) - 5} more unreadable {name} images (all in shift.json)")
        for pair in self.pairs.values():
            lines += ["", f"{pair.a} (n={pair.n_a}) vs {pair.b} (n={pair.n_b}): {pair.status} - {pair.reason}"]
            if pair.properties:
                lines += self._pair_rows(pair)
        return "\n".join(lines)

    def _pair_rows(self, pair: PairResult) -> list[str]:
        a, b = self.sets[pair.a].table, self.sets[pair.b].table
        rows = [f"  {'property':<15} {pair.a + ' mean ± sd':>22} {pair.b + ' mean ± sd':>22} "
                f"{'D/V':>6} {'EMD':>6} {'p adj':>8}  status"]
        for prop in pair.properties:
            emd = "-" if prop.emd is None else f"{prop.emd:.3f}"
            rows.append(f"  {prop.name:<15} {_describe_column(a, prop.name):>22} {_describe_column(b, prop.name):>22} "
                        f"{prop.statistic:>6.3f} {emd:>6} {prop.p_adjusted:>8.2g}  {prop.status}")
        adv = pair.adversarial
        top = ", ".join(f"{k} {v:.2f}" for k, v in list(adv["importances"].items())[:3])
        rows.append(f"  adversarial AUC {adv['auc']:.3f} (permutation p={adv['p_value']:.3g}) {adv['status']}; "
                    f"driven by {top}")
        if adv["a_most_like_b"]:
            names = ", ".join(f"{Path(r['path']).name} ({r['prob']:.2f})" for r in adv["a_most_like_b"][:5])
            rows.append(f"  {pair.a} images most like {pair.b}: {names}")
        return rows

    def html_fragment(self) -> str:
        """A <section> for the run report: verdicts, the table, and the plots by relative file name."""
        rows = "".join(
            f"<tr><td>{html.escape(key)}</td><td>{html.escape(p.status)}</td><td>{html.escape(p.reason)}</td></tr>"
            for key, p in self.pairs.items()
        )
        images = "".join(f'<p><img src="{html.escape(p.name)}" alt="{html.escape(p.stem)}"></p>' for p in self.plots)
        return (
            '<section class="shift"><h2>Distribution shift</h2>'
            f"<p>Worst verdict: <b>{html.escape(self.worst)}</b>; shifted test groups: "
            f"{html.escape(', '.join(self.shifted_groups()) or 'none')}.</p>"
            f"<table><tr><th>comparison</th><th>status</th><th>why</th></tr>{rows}</table>"
            f"<details><summary>all properties</summary><pre>{html.escape(self.table())}</pre></details>"
            f"{images}</section>"
        )


def worst_status(statuses: Iterable[str]) -> str:
    """The worst of some verdicts (FAIL > WARN > OK > "too few to judge"); "too few to judge" for none."""
    return max(statuses, key=_RANK.__getitem__, default=TOO_FEW)


def _describe_set(t: PropertyTable) -> dict:
    props = {}
    for name in NUMERIC_PROPERTIES:
        column = t.table[name]
        props[name] = {"mean": float(column.mean()), "sd": float(column.std(ddof=0))} if len(column) else None
    for name in CATEGORICAL_PROPERTIES:
        props[name] = {str(k): int(v) for k, v in t.table[name].value_counts().items()}
    return {
        "n_items": t.n_items,
        "n_readable": len(t.table),
        "unreadable": [{"path": path, "error": error} for path, error in t.unreadable],
        "properties": props,
    }


def _describe_column(table: pd.DataFrame, name: str) -> str:
    column = table[name]
    if len(column) == 0:
        return "-"
    if name in CATEGORICAL_PROPERTIES:
        counts = column.value_counts(normalize=True)
        return f"{counts.index[0]} {100 * counts.iloc[0]:.0f}%"
    mean, sd = float(column.mean()), float(column.std(ddof=0))
    return f"{_fmt(mean)} ± {_fmt(sd if sd > 1e-9 * abs(mean) else 0.0)}"  # not 2e-16 for a constant


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1e4 else f"{x:.2e}"
