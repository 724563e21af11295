"""The per-run HTML report: scores, pseudo-label counts per group and class, confidence histograms."""
from __future__ import annotations

import html
import io
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # object-oriented API: no pyplot state, Agg canvas on savefig

from pipeline.files import write_bytes_atomic, write_text_atomic
from pipeline.method.pseudo import confidence_and_classes
from pipeline.plugin.api import GROUPS
from pipeline.run.folder import CONFIDENCE_PLOT, REPORT, RunFolder, RunProbabilities
from pipeline.run.metrics import RunMetrics


def confidence_histogram(path: Path, groups: np.ndarray, probs: dict[str, np.ndarray], multi_label: bool) -> None:
    """One panel per model (teacher, student): how confident it is on each test group; written atomically."""
    fig = Figure(figsize=(5 * len(probs), 3.4))
    axes = fig.subplots(1, len(probs), sharey=True, squeeze=False)
    bins = np.linspace(0, 1, 21)
    for axis, (name, p) in zip(axes[0], probs.items()):
        confidence, _ = confidence_and_classes(p, multi_label)
        for group in GROUPS:
            rows = groups == group
            if rows.any():
                axis.hist(confidence[rows], bins=bins, alpha=0.55, label=f"{group} ({rows.sum()})")
        axis.set_title(f"{name}: confidence on the test set")
        axis.set_xlabel("top probability" if not multi_label else "smallest tag margin")
        axis.legend()
    axes[0][0].set_ylabel("images")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    write_bytes_atomic(path, buffer.getvalue())


def write_report(folder: RunFolder, metrics: RunMetrics, probs: RunProbabilities, multi_label: bool,
                 extra_html: str = "") -> Path:
    confidence_histogram(folder.file(CONFIDENCE_PLOT), probs.test_groups, probs.test, multi_label)
    models = metrics.models
    verdict = metrics.verdict
    rows = [(f"{verdict.kind} ({verdict.rows} rows)", [metrics.holdout[m] for m in models])]
    if verdict.prior is not None:
        rows[0] = (f"{verdict.kind} ({verdict.rows} rows; class prior {verdict.prior:.4f})", rows[0][1])
    for board in GROUPS:
        scores = metrics.leaderboard
        if scores and scores["teacher"].get(board) is not None:
            rows.append((f"{board} (solution)", [scores[m][board] for m in models]))
    better = "higher" if metrics.greater_is_better else "lower"
    score_rows = "".join(f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{v:.4f}</td>" for v in values) + "</tr>"
                         for name, values in rows)
    header = "".join(f"<th>{m}</th>" for m in models)
    comparisons = "".join(f"<li>{c.better} vs {c.worse}: {html.escape(c.describe())}</li>" for c in verdict.comparisons.values())
    groups = "".join(f"<li>{html.escape(g.group)} group: <b>{html.escape(g.submitted)}</b> ({html.escape(g.reason)})</li>"
                     for g in verdict.groups.values())
    text = verdict.compared_text()
    compared = f"<p>{html.escape(text[:1].upper() + text[1:])}.</p>" if text else ""
    verdict_html = (f"<h2>Did pseudo-labeling help?</h2>{compared}<ul>{comparisons}</ul>"
                    f"<p><b>Submitted: {html.escape(verdict.submitted)}</b> ({html.escape(verdict.reason)})</p>"
                    + (f"<p>Per test group (the scored rows weighted like each group):</p><ul>{groups}</ul>" if groups else ""))
    pseudo = metrics.pseudo
    classes = list(pseudo["by_class"])
    count_rows = "".join(
        f"<tr><td>{g}</td>" + "".join(f"<td>{pseudo['by_group_class'][g][c]}</td>" for c in classes)
        + f"<td>{pseudo['by_group'][g]}</td><td>{_fmt(pseudo['mean_confidence'][g])}</td></tr>" for g in GROUPS
    )
    items = metrics.items
    unreadable = items["unreadable_train"] + items["unreadable_test"]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(metrics.run_id)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_STYLE}</style>
</head><body><h1>{html.escape(metrics.competition)}: run {html.escape(metrics.run_id)}</h1>
<h2>Scores ({html.escape(metrics.metric)}, {better} is better)</h2>
<table><tr><th></th>{header}</tr>{score_rows}</table>
{verdict_html}
<h2>Pseudo-labels (last round): {pseudo['selected']} of {pseudo['target']} wanted; per round: {html.escape(counts_text(pseudo.get('selected_per_round', {}), 'round '))}</h2>{_labeler(pseudo)}<p>Stopped: {html.escape(pseudo['stop_reason'])}</p>{_tag_bands(pseudo)}
<table><tr><th>group</th>{''.join(f'<th>{html.escape(c)}</th>' for c in classes)}<th>total</th><th>mean confidence</th></tr>{count_rows}</table>
<h2>Confidence on the test set</h2><img src="{CONFIDENCE_PLOT}" alt="confidence histograms per test group">
{extra_html}
<h2>Items</h2><p>labeled {items['labeled']} in {items['folds']} fold(s) (train {items['train']}, holdout {items['holdout']}; scored rows are never pseudo-labeled),
test {html.escape(counts_text(items['test']))}; unreadable: {len(unreadable)}</p>
<ul>{''.join(f'<li>{html.escape(p)}</li>' for p in unreadable)}</ul>
<p>Submission: {html.escape(metrics.submission.path)} ({metrics.submission.rows} rows, sha256 {metrics.submission.sha256[:12]})</p>
</body></html>
"""
    path = folder.file(REPORT)
    write_text_atomic(path, page)
    return path


# Fits any window from about 800 px up without scrolling sideways: plots shrink to the page's width, long paths
# and the shift check's text wrap, and a header cell may break inside a word, so a table of many classes (the
# 17 Amazon tags) narrows its columns instead of widening the page.
_STYLE = """body{font-family:sans-serif;margin:2em;overflow-wrap:break-word}
td,th{padding:2px 10px;text-align:right} th:first-child,td:first-child{text-align:left}
th{overflow-wrap:anywhere} table{max-width:100%}
img{max-width:100%;height:auto} pre{white-space:pre-wrap;overflow-wrap:anywhere}
.shift td,.shift th{text-align:left}"""


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _labeler(pseudo: dict) -> str:
    """Which model labeled round 1 (--pseudo-labeler); runs before the option recorded none: the teacher did."""
    labeler = pseudo.get("labeler", "teacher")
    return f"<p>Round 1 labeled by the {html.escape(labeler)} (--pseudo-labeler).</p>"


def _tag_bands(pseudo: dict) -> str:
    """Multi-label: per round, the probabilities between which pseudo-tags were left unlabeled."""
    bands = pseudo.get("certain_tag_bands") or {}
    if not bands:
        return ""
    text = "; ".join(f"round {r}: " + ", ".join(f"{low:.3f}-{high:.3f}" for low, high in per_model) for r, per_model in bands.items())
    return f"<p>Tags left unlabeled (probability strictly between), per round and model: {html.escape(text)}</p>"


def counts_text(counts: dict, prefix: str = "") -> str:
    """{"1": 1520, "2": 3040} -> "round 1: 1520, round 2: 3040" (with prefix "round "): for people, not a dict's repr."""
    return ", ".join(f"{prefix}{key}: {value}" for key, value in counts.items()) or "none"
