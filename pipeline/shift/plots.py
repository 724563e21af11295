"""The shift report's plots: property histograms per set, adversarial AUCs and importances, and the images
that tell the sets apart. Matplotlib's object-oriented API (no pyplot state), imported only when drawing.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from pipeline.files import write_bytes_atomic
from pipeline.data.image_properties import NUMERIC_PROPERTIES
from pipeline.shift.report import FAIL, WARN, PairResult, ShiftReport

PLOT_NAMES = {
    "intensity": "shift_mean_intensity.png",
    "properties": "shift_properties.png",
    "adversarial": "shift_adversarial.png",
    "examples": "shift_examples.png",
}


def write_plots(report: ShiftReport, out_dir: Path) -> list[Path]:
    """Each plot the report has something to show for, as a PNG in out_dir (written atomically); their paths."""
    written = []
    for kind, draw in (("intensity", _plot_intensity), ("properties", _plot_properties),
                       ("adversarial", _plot_adversarial), ("examples", _plot_examples)):
        figure = draw(report)
        if figure is not None:
            path = out_dir / PLOT_NAMES[kind]
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
            write_bytes_atomic(path, buffer.getvalue())
            written.append(path)
    return written


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # object-oriented API: no pyplot state, Agg canvas on savefig

    return Figure(figsize=(width, height))


def _histograms(ax, report: ShiftReport, name: str) -> None:
    columns = {n: t.table[name].to_numpy(dtype=np.float64) for n, t in report.sets.items() if len(t.table)}
    values = np.concatenate(list(columns.values()))
    bins = np.histogram_bin_edges(values, bins=int(np.clip(np.sqrt(len(values)), 10, 40))) if np.ptp(values) > 0 else 10
    for n, column in columns.items():
        ax.hist(column, bins=bins, density=True, histtype="step", linewidth=1.8, label=f"{n} (n={len(column)})")
    statuses = ", ".join(f"{k.replace('_vs_', '/')} {p.status}" for k, p in report.pairs.items()
                         for q in p.properties if q.name == name)
    ax.set_title(f"{name}\n{statuses}" if statuses else name, fontsize=9)
    ax.legend(fontsize=7)


def _plot_intensity(report: ShiftReport):
    if not any(len(t.table) for t in report.sets.values()):
        return None
    figure = _figure(7, 4)
    ax = figure.subplots()
    _histograms(ax, report, "mean_intensity")
    ax.set_xlabel("mean grey intensity (0-255)")
    ax.set_ylabel("density")
    return figure


def _plot_properties(report: ShiftReport):
    shifted = [name for name in NUMERIC_PROPERTIES if name != "mean_intensity" and any(
        q.name == name and q.status in (WARN, FAIL) for p in report.pairs.values() for q in p.properties)]
    if not shifted:
        return None
    shifted = shifted[:12]
    cols = min(3, len(shifted))
    rows = math.ceil(len(shifted) / cols)
    figure = _figure(4.5 * cols, 3.3 * rows)
    axes = np.atleast_1d(figure.subplots(rows, cols)).ravel()
    for ax, name in zip(axes, shifted):
        _histograms(ax, report, name)
    for ax in axes[len(shifted):]:
        ax.set_visible(False)
    figure.tight_layout()
    return figure


def _judged(report: ShiftReport) -> list[tuple[str, PairResult]]:
    return [(k, p) for k, p in report.pairs.items() if p.adversarial is not None]


def _plot_adversarial(report: ShiftReport):
    judged = _judged(report)
    if not judged:
        return None
    s = report.settings
    figure = _figure(11, 4)
    left, right = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1, 2]})
    labels = [k.replace("_vs_", " vs\n") for k, _ in judged]
    aucs = [p.adversarial["auc"] for _, p in judged]
    colours = [{"OK": "tab:green", "WARN": "tab:orange", "FAIL": "tab:red"}[p.adversarial["status"]] for _, p in judged]
    x = np.arange(len(judged))
    left.bar(x, aucs, color=colours)
    left.scatter(x, [p.adversarial["null_auc_95"] for _, p in judged], marker="_", s=400, color="black",
                 label="95% of shuffled-label AUCs")
    left.axhline(s.warn_auc, color="tab:orange", linestyle="--", linewidth=1, label=f"warn {s.warn_auc}")
    left.axhline(s.fail_auc, color="tab:red", linestyle="--", linewidth=1, label=f"fail {s.fail_auc}")
    for i, (_, p) in enumerate(judged):
        top = max(aucs[i], p.adversarial["null_auc_95"])
        left.text(i, top + 0.015, f"{aucs[i]:.2f}\np={p.adversarial['p_value']:.2g}", ha="center", fontsize=8)
    left.set_xticks(x, labels, fontsize=8)
    left.set_ylim(0.3, 1.08)
    left.set_ylabel("adversarial AUC (out-of-bag)")
    left.legend(fontsize=7, loc="lower left")
    features = list(judged[0][1].adversarial["importances"])
    order = sorted(features, key=lambda f: -max(p.adversarial["importances"][f] for _, p in judged))[:10]
    height = 0.8 / len(judged)
    for j, (key, p) in enumerate(judged):
        right.barh(np.arange(len(order)) + j * height, [p.adversarial["importances"][f] for f in order], height=height,
                   label=key.replace("_vs_", " vs "))
    right.set_yticks(np.arange(len(order)) + 0.4 - height / 2, order, fontsize=8)
    right.invert_yaxis()
    right.set_xlabel("importance in telling the sets apart")
    right.legend(fontsize=7)
    figure.tight_layout()
    return figure


def _plot_examples(report: ShiftReport):
    from PIL import Image

    judged = [(k, p) for k, p in _judged(report) if report.settings.n_examples > 0]
    if not judged:
        return None
    strips = []
    for _, p in judged:
        strips.append((f"{p.b}: most unlike {p.a}", p.adversarial["b_most_distinct"]))
        strips.append((f"{p.a}: most like {p.b}", p.adversarial["a_most_like_b"]))
    cols = max(len(images) for _, images in strips)
    figure = _figure(1.4 * cols + 1, 1.6 * len(strips))
    axes = np.atleast_2d(figure.subplots(len(strips), cols, squeeze=False))
    for row, (title, images) in enumerate(strips):
        for col in range(cols):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(images):
                ax.set_visible(False)
                continue
            try:
                with Image.open(images[col]["path"]) as image:
                    image.draft("RGB", (96, 96))
                    thumb = image.convert("RGB")
                thumb.thumbnail((96, 96))
                ax.imshow(np.asarray(thumb))
            except (OSError, ValueError) as error:  # changed on disk since it was measured
                ax.text(0.5, 0.5, type(error).__name__, ha="center", va="center", fontsize=7)
            ax.set_xlabel(f"{Path(images[col]['path']).name}\np={images[col]['prob']:.2f}", fontsize=6)
            if col == 0:
                ax.set_ylabel(title, fontsize=7)
    figure.tight_layout()
    return figure
