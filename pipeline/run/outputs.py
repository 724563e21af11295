"""The last stages of a run: what training leaves for the decision stage, and the record of the run.

Everything needed to decide again without retraining is kept in the run folder (kaggle-imet-2019 style;
pipeline/run/folder.py): split.csv, probabilities.npz and pseudo_labels.csv (one row per test item and
selection: what happened to it and why). Then metrics.json and the report, and the summary printed.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from pipeline.data import split
from pipeline.data.items import Items, group_sizes
from pipeline.method.verdict import BY_GROUP
from pipeline.plugin.api import Competition
from pipeline.run import report
from pipeline.run.folder import REPORT, RunFolder, RunProbabilities
from pipeline.run.metrics import RunMetrics
from pipeline.submission import reindex_to_expected


def run_probabilities(competition: Competition, data_dir: Path, items: Items, scored: dict[str, np.ndarray],
                      test: dict[str, np.ndarray]) -> RunProbabilities:
    """What the run's scores are made of: every model's probabilities of the scored rows and of the readable test
    items, and the ids of its submissions (`submission_ids`)."""
    return RunProbabilities(items.classes, items.train["path"].to_numpy(dtype=str), items.y, items.fold, items.test_ids,
                            items.test_groups, submission_ids(competition, data_dir, items), scored, test)


def shift_evidence(items: Items, seed: int) -> dict:
    """RunProbabilities' `group_weights` (each scored row's importance weight per test group,
    pipeline/method/importance.py), `test_foreign` (each readable test item with no look-alike among the train
    images, pipeline/method/adaptation.py) and `test_unvouched` (those, and every item of a group the scored rows
    cannot weigh like: group_verdict.weighed_like), from the properties the image stores measured while decoding."""
    from pipeline.method import importance
    from pipeline.method.adaptation import foreign_images
    from pipeline.method.group_verdict import weighed_like

    tables = items.property_tables()
    train = tables.pop("train")
    groups = np.asarray(items.test_groups).astype(str)
    foreign = np.zeros(len(groups), dtype=bool)
    for g, table in tables.items():
        if len(table) == (groups == g).sum():  # every item of the group measured, in item order
            foreign[groups == g] = foreign_images(train, table)
    scored_paths = items.train["path"].to_numpy(dtype=str)[items.fold >= 0]
    weights = importance.for_groups(train, scored_paths, tables, seed)
    unvouched = foreign.copy()
    for g, w in weights.items():
        if not weighed_like(w):
            unvouched[groups == g] = True
    return {"group_weights": weights, "test_foreign": foreign, "test_unvouched": unvouched}


def submission_ids(competition: Competition, data_dir: Path, items: Items) -> list[str]:
    """The ids of the run's submissions, in order: the sample submission's where there is one (a test image it does
    not list is left out, with a warning; an id it lists with no test image is an error), else every test item's."""
    ids = items.test["id"].tolist()
    expected = competition.expected_ids(data_dir)
    if expected is None:
        return ids
    unexpected = sorted(set(ids) - set(expected))
    if unexpected:
        print(f"WARNING: {len(unexpected)} test images are not in the sample submission and are left out of it, "
              f"e.g. {unexpected[:3]}", file=sys.stderr, flush=True)
    return reindex_to_expected(ids, np.arange(len(ids)), expected)[0]


def item_counts(items: Items) -> dict:
    return {
        "train": int((items.fold != 0).sum()) if split.n_models(items.fold) == 1 else len(items.y),
        "holdout": int((items.fold == 0).sum()) if split.n_models(items.fold) == 1 else 0,
        "labeled": len(items.y), "folds": split.n_models(items.fold), "test": group_sizes(items.test),
        "unreadable_train": sorted(items.unreadable["train"]), "unreadable_test": sorted(items.unreadable["test"]),
    }


def write_metrics(folder: RunFolder, metrics: RunMetrics, probs: RunProbabilities, multi_label: bool, extra_html: str) -> None:
    """The report, then metrics.json: written last, it marks the run folder finished."""
    report.write_report(folder, metrics, probs, multi_label, extra_html=extra_html)
    folder.write_metrics(metrics)


def print_summary(metrics: RunMetrics, folder: RunFolder) -> None:
    better = "higher" if metrics.greater_is_better else "lower"
    verdict = metrics.verdict
    names = metrics.models
    print(f"\n== {metrics.run_id} ({metrics.metric}, {better} is better)")
    prior = "" if verdict.prior is None else f"   class prior {verdict.prior:.4f}"
    if verdict.temperatures:
        print("calibrated  temperature " + ", ".join(f"{m} {t:.2f}" for m, t in verdict.temperatures.items())
              + " (fit on the scored rows; each row scored by a temperature fit without it)")
    print(f"{verdict.kind:<11} " + "   ".join(f"{m} {metrics.holdout[m]:.4f}" for m in names) + prior
          + f"   ({verdict.rows} rows)")
    scores = metrics.leaderboard
    for board in ("public", "private"):
        if scores and scores["teacher"].get(board) is not None:
            shown = [*names, *([BY_GROUP] if verdict.by_group and BY_GROUP in scores else [])]  # what submission.csv scored
            print(f"{board:<11} " + "   ".join(f"{m} {scores[m][board]:.4f}" for m in shown if m in scores))
    if verdict.compared:
        print(verdict.compared_text())
    for comparison in verdict.comparisons.values():
        print(comparison.line())
    print(("" if verdict.submitted == "student" else "\n!!! ") + f"submitted: {verdict.submitted} ({verdict.reason})")
    for group in verdict.groups.values():
        print(f"  {group.group} group: {group.submitted} ({group.reason})")
    if verdict.by_group:
        print("submission.csv gives each test group its own model: "
              + ", ".join(f"{g.group} the {g.submitted}" for g in verdict.groups.values()))
    if metrics.shift:
        print(f"shift       {metrics.shift['worst']}; shifted groups: {', '.join(metrics.pseudo['shifted_groups']) or 'none'}")
    pseudo = metrics.pseudo
    print(f"pseudo-labels per round: {report.counts_text(pseudo['selected_per_round'], 'round ')} ({pseudo['stop_reason']}); "
          f"last round: {report.counts_text(pseudo['by_group'])}")
    print(f"submission  {metrics.submission.path} ({metrics.submission.rows} rows)")
    print(f"report      {folder.file(REPORT)}")
    t = metrics.timings
    print(f"wall time   {t.total_s:.1f}s (teacher {t.teacher_s:.1f}s, students {t.student_s:.1f}s, control {t.control_s:.1f}s)")
