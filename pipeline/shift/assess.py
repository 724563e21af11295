"""Distribution shift between train, public and private test images: measuring, comparing, writing the outputs.

`assess_shift` takes every image's properties (pipeline/data/image_properties.py, measured in the image store's
one decoding pass), compares each pair of sets property by property and with an adversarial classifier
(pipeline/shift/stats.py), and turns the numbers into OK / WARN / FAIL. A verdict needs both a large enough
effect (KS D, normalised Wasserstein distance, Cramér's V or adversarial AUC above its threshold) and
significance after Bonferroni correction: on large sets tiny, harmless shifts are significant, and on small
sets large-looking gaps are noise. The report it returns, and how that is shown, is pipeline/shift/report.py;
the plots are drawn by pipeline/shift/plots.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.image_properties import CATEGORICAL_PROPERTIES, NUMERIC_PROPERTIES, PropertyTable
from pipeline.data.decode import measure_images
from pipeline.files import write_text_atomic
from pipeline.shift.plots import write_plots
from pipeline.shift.report import (FAIL, OK, PAIRS, SETS, TOO_FEW, WARN, PairResult, PropertyResult, ShiftReport,
                                   ShiftSettings, worst_status)
from pipeline.shift.stats import adversarial_validation, compare_numeric, cramers_v


def assess_shift(
    sets: dict[str, list[str] | PropertyTable],
    out_dir: Path | None,
    settings: ShiftSettings = ShiftSettings(),
    seed: int = 0,
) -> ShiftReport:
    """Compare the images of train / public / private (any may be missing or empty).

    A set is either its properties, already measured by the image store's one decoding pass
    (`ImageStore.property_table`), or a list of paths measured here without caching pixels.
    With `out_dir`, writes shift.json and the PNG plots there.
    """
    unknown = set(sets) - set(SETS)
    if unknown:
        raise ValueError(f"assess_shift got image sets {sorted(unknown)}; expected keys among {', '.join(SETS)}")
    tables = {name: _properties(name, sets.get(name, []), settings) for name in SETS}
    report = compare_sets(tables, settings, seed)
    if out_dir is not None:
        write_outputs(report, Path(out_dir))
    return report


def _properties(name: str, images: list[str] | PropertyTable, settings: ShiftSettings) -> PropertyTable:
    if isinstance(images, PropertyTable):
        missing = [c for c in ("path", *NUMERIC_PROPERTIES, *CATEGORICAL_PROPERTIES) if c not in images.table.columns]
        if missing:
            raise ValueError(f"the {name} property table lacks columns {missing}; build it with ImageStore.property_table")
        return images
    return measure_images([str(p) for p in images], workers=settings.workers, label=name,
                          progress_every=settings.progress_every)


def compare_sets(tables: dict[str, PropertyTable], settings: ShiftSettings = ShiftSettings(),
                 seed: int = 0) -> ShiftReport:
    """Verdicts for every pair of already-measured sets (separate from measuring, to re-split cheaply)."""
    empty = PropertyTable(pd.DataFrame(columns=["path", *NUMERIC_PROPERTIES, *CATEGORICAL_PROPERTIES]))
    pairs = {}
    for key in PAIRS:
        a, b = key.split("_vs_")
        pairs[key] = _compare_pair(a, tables.get(a, empty), b, tables.get(b, empty), settings, seed)
    return ShiftReport(settings=settings, sets=tables, pairs=pairs)


def _compare_pair(a: str, ta: PropertyTable, b: str, tb: PropertyTable, s: ShiftSettings, seed: int) -> PairResult:
    xa, xb = ta.table, tb.table
    small = [f"{name} has {len(t)} readable images" for name, t in ((a, xa), (b, xb)) if len(t) < s.min_images]
    if small:
        return PairResult(a, b, len(xa), len(xb), TOO_FEW, f"{' and '.join(small)} (< {s.min_images})")
    m = len(NUMERIC_PROPERTIES) + len(CATEGORICAL_PROPERTIES)  # Bonferroni: tests in this pair
    props = []
    for name in NUMERIC_PROPERTIES:
        c = compare_numeric(xa[name].to_numpy(), xb[name].to_numpy())
        p_adj = min(1.0, c.ks_p * m)
        status = _verdict(p_adj < s.alpha, c.ks_d >= s.warn_d or c.emd_norm >= s.warn_emd,
                          c.ks_d >= s.fail_d or c.emd_norm >= s.fail_emd)
        props.append(PropertyResult(name, "numeric", c.ks_d, c.ks_p, p_adj, c.emd_norm, status))
    for name in CATEGORICAL_PROPERTIES:
        v, p = cramers_v(xa[name].tolist(), xb[name].tolist())
        p_adj = min(1.0, p * m)
        status = _verdict(p_adj < s.alpha, v >= s.warn_v, v >= s.fail_v)
        props.append(PropertyResult(name, "categorical", v, p, p_adj, None, status))
    if s.progress_every:
        print(f"shift: {a} vs {b}: adversarial validation ({s.n_permutations + 1} forest fits)", flush=True)
    adversarial = _adversarial(xa, xb, s, seed)
    status = worst_status([p.status for p in props] + [adversarial["status"]])
    return PairResult(a, b, len(xa), len(xb), status, _reason(props, adversarial), props, adversarial)


def _reason(props: list[PropertyResult], adversarial: dict) -> str:
    """One line saying why: the adversarial AUC and the most shifted properties, or that nothing is."""
    auc = f"adversarial AUC {adversarial['auc']:.2f} (p={adversarial['p_value']:.2g})"
    reasons = [auc] if adversarial["status"] in (WARN, FAIL) else []
    for p in sorted(props, key=lambda p: -p.statistic):
        if p.status in (WARN, FAIL):
            size = f"V={p.statistic:.2f}" if p.emd is None else f"D={p.statistic:.2f} EMD={p.emd:.2f}"
            reasons.append(f"{p.name} {size}")
    if not reasons:
        return f"no property differs beyond the thresholds; {auc}"
    return "; ".join(reasons[:4]) + (f"; and {len(reasons) - 4} more" if len(reasons) > 4 else "")


def _verdict(significant: bool, over_warn: bool, over_fail: bool) -> str:
    if not significant:
        return OK
    return FAIL if over_fail else WARN if over_warn else OK


def _adversarial(xa: pd.DataFrame, xb: pd.DataFrame, s: ShiftSettings, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    keep_a, keep_b = (np.sort(rng.choice(len(x), min(len(x), s.max_adversarial_rows), replace=False)) for x in (xa, xb))
    sub_a, sub_b = xa.iloc[keep_a], xb.iloc[keep_b]
    features = list(NUMERIC_PROPERTIES) + list(CATEGORICAL_PROPERTIES)

    def matrix(frame: pd.DataFrame) -> np.ndarray:
        columns = [frame[n].to_numpy(dtype=np.float64) for n in NUMERIC_PROPERTIES]
        for name in CATEGORICAL_PROPERTIES:  # codes over both sets, so a category means the same number in each
            categories = sorted(set(sub_a[name]) | set(sub_b[name]))
            columns.append(pd.Categorical(frame[name], categories=categories).codes.astype(np.float64))
        return np.column_stack(columns)

    result = adversarial_validation(matrix(sub_a), matrix(sub_b), features, n_permutations=s.n_permutations,
                                    n_trees=s.n_trees, seed=seed, workers=s.workers)
    prob_a, prob_b = result.prob_b[: len(sub_a)], result.prob_b[len(sub_a):]
    significant = result.p_value <= s.auc_alpha
    return {
        "auc": result.auc,
        "p_value": result.p_value,
        "null_auc_95": float(np.quantile(result.permuted_aucs, 0.95)),
        "status": _verdict(significant, result.auc >= s.warn_auc, result.auc >= s.fail_auc),
        "rows": {"a": len(sub_a), "b": len(sub_b)},
        "importances": dict(sorted(result.importances.items(), key=lambda kv: -kv[1])),
        # rows of A the classifier takes for B (for train: the most test-like, a validation set that looks like test)
        "a_most_like_b": _top(sub_a["path"].to_numpy(), prob_a, s.n_examples),
        # rows of B most confidently told apart from A: what the shift looks like
        "b_most_distinct": _top(sub_b["path"].to_numpy(), prob_b, s.n_examples),
    }


def _top(paths: np.ndarray, prob: np.ndarray, k: int) -> list[dict]:
    order = np.argsort(-prob, kind="stable")[:k]
    return [{"path": str(paths[i]), "prob": round(float(prob[i]), 4)} for i in order]


# ---- outputs --------------------------------------------------------------------------------------------

def write_outputs(report: ShiftReport, out_dir: Path) -> None:
    """shift.json and the PNG plots (pipeline/shift/plots.py) in out_dir; report.plots lists the PNGs written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report.plots = write_plots(report, out_dir)
    write_report_json(report, out_dir)


def write_report_json(report: ShiftReport, out_dir: Path) -> None:
    """shift.json in out_dir (it lists report.plots by name)."""
    write_text_atomic(out_dir / "shift.json", json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n")
