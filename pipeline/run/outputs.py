"""The last stages' files: submissions, probabilities, split, pseudo-label provenance, metrics and report.

Everything needed to recompute without retraining is kept in the run folder (kaggle-imet-2019 style):
split.csv (each labeled image's fold), probabilities.npz (teacher, control and student probabilities of
every scored train row and readable test item, with ids, and the ids of the validated submission in its
order) and pseudo_labels.csv (one row per test item and selection: what happened to it and why).
"""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.run import report
from pipeline.data import split
from pipeline.files import json_plain, sha256_of, write_bytes_atomic, write_csv_atomic, write_text_atomic
from pipeline.data.items import Items, group_sizes
from pipeline.plugin.api import Competition, Decision
from pipeline.submission import read_solution, reindex_to_expected, score_against_solution, validate_submission

MODELS = ("teacher", "control", "student")


def full_test_probs(items: Items, probs: np.ndarray) -> np.ndarray:
    """Probabilities for every test item: unreadable ones get the class prior of the train labels."""
    full = np.tile(items.y.mean(axis=0), (len(items.test), 1)).astype(np.float32)
    full[items.readable_test] = probs
    return full


def submission_table(competition: Competition, data_dir: Path, items: Items, submitted: np.ndarray) -> pd.DataFrame:
    """The validated submission, reindexed to the sample submission's ids and order where there is one."""
    ids = items.test["id"].tolist()
    expected = competition.expected_ids(data_dir)
    if expected is not None:
        unexpected = sorted(set(ids) - set(expected))
        if unexpected:
            print(f"WARNING: {len(unexpected)} test images are not in the sample submission and are left out of it, "
                  f"e.g. {unexpected[:3]}", file=sys.stderr, flush=True)
        ids, submitted = reindex_to_expected(ids, submitted, expected)
    table = competition.to_submission(ids, submitted, items.classes)
    validate_submission(table, competition, items.classes, ids)
    return table


def write_recomputables(run_dir: Path, items: Items, scored: dict[str, np.ndarray], test: dict[str, np.ndarray],
                        provenance: pd.DataFrame, submission_ids: list[str]) -> None:
    """split.csv, probabilities.npz and pseudo_labels.csv. `submission_ids` (the validated submission's ids, in its
    order: the sample submission's, or every test item's) are kept in probabilities.npz, where `runs rescore` reads
    them: a file nobody opens in a spreadsheet, unlike submission.csv, and inside the run folder, unlike the data."""
    write_csv_atomic(run_dir / "split.csv", split.split_table(items.train["path"].tolist(), items.fold))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, classes=np.array(items.classes), train_paths=items.train["path"].to_numpy(dtype=str),
                        y=items.y, fold=items.fold, test_ids=items.test_ids, test_groups=items.test_groups,
                        submission_ids=np.array(submission_ids, dtype=str),
                        **{f"scored_{k}": v for k, v in scored.items()}, **{f"test_{k}": v for k, v in test.items()})
    write_bytes_atomic(run_dir / "probabilities.npz", buffer.getvalue())
    write_csv_atomic(run_dir / "pseudo_labels.csv", provenance)


def write_submissions(cfg, competition: Competition, data_dir: Path, items: Items, run_dir: Path, test: dict[str, np.ndarray],
                      decisions: dict[str, Decision], submitted: str) -> dict[str, pd.DataFrame]:
    """<model>_submission.csv for every model, and submission.csv (plus --output) for the one the verdict chose."""
    tables = {name: submission_table(competition, data_dir, items, competition.decide(full_test_probs(items, p), decisions[name]))
              for name, p in test.items()}
    for name, table in tables.items():
        write_csv_atomic(run_dir / f"{name}_submission.csv", table)
    write_csv_atomic(run_dir / "submission.csv", tables[submitted])
    if cfg.output:
        write_csv_atomic(Path(cfg.output), tables[submitted])
    return tables


def leaderboard(cfg, competition: Competition, items: Items, tables: dict[str, pd.DataFrame]) -> dict | None:
    if not cfg.solution:
        return None
    solution = read_solution(Path(cfg.solution))
    return {name: score_against_solution(competition, table, solution, items.classes) for name, table in tables.items()}


def write_metrics(run_dir: Path, metrics: dict, items: Items, test: dict[str, np.ndarray], multi_label: bool, extra_html: str) -> None:
    report.write_report(run_dir, metrics, items.test_groups, test, multi_label, extra_html=extra_html)
    write_text_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=2, default=json_plain) + "\n")


def item_counts(items: Items) -> dict:
    return {
        "train": int((items.fold != 0).sum()) if split.n_models(items.fold) == 1 else len(items.y),
        "holdout": int((items.fold == 0).sum()) if split.n_models(items.fold) == 1 else 0,
        "labeled": len(items.y), "folds": split.n_models(items.fold), "test": group_sizes(items.test),
        "unreadable_train": sorted(items.unreadable["train"]), "unreadable_test": sorted(items.unreadable["test"]),
    }


def submission_record(path: Path, rows: int) -> dict:
    return {"path": str(path), "sha256": sha256_of(path), "rows": rows}


def print_summary(metrics: dict, run_dir: Path) -> None:
    better = "higher" if metrics["greater_is_better"] else "lower"
    verdict = metrics["verdict"]
    names = [m for m in MODELS if m in metrics["holdout"] and metrics["holdout"][m] is not None]
    print(f"\n== {metrics['run_id']} ({metrics['metric']}, {better} is better)")
    print(f"{verdict['kind']:<11} " + "   ".join(f"{m} {metrics['holdout'][m]:.4f}" for m in names) + f"   ({verdict['rows']} rows)")
    scores = metrics.get("leaderboard")
    for board in ("public", "private"):
        if scores and scores["teacher"].get(board) is not None:
            print(f"{board:<11} " + "   ".join(f"{m} {scores[m][board]:.4f}" for m in names if m in scores))
    for key in ("student_vs_control", "control_vs_teacher", "student_vs_teacher"):
        if key in verdict:
            c = verdict[key]
            print(f"{key.replace('_', ' '):<22} gain {c['gain']:+.4f} (90% interval {c['interval'][0]:+.4f} .. "
                  f"{c['interval'][1]:+.4f}; better in {c['p_better']:.0%} of resamples)")
    print(("" if verdict["submitted"] == "student" else "\n!!! ") + f"submitted: {verdict['submitted']} ({verdict['reason']})")
    if metrics["shift"]:
        print(f"shift       {metrics['shift']['worst']}; shifted groups: {', '.join(metrics['pseudo']['shifted_groups']) or 'none'}")
    pseudo = metrics["pseudo"]
    print(f"pseudo-labels per round {pseudo['selected_per_round']} ({pseudo['stop_reason']}): last round {pseudo['by_group']}")
    print(f"submission  {metrics['submission']['path']} ({metrics['submission']['rows']} rows)")
    print(f"report      {run_dir / 'report.html'}")
    t = metrics["timings"]
    print(f"wall time   {t['total_s']:.1f}s (teacher {t['teacher_s']:.1f}s, students {t['student_s']:.1f}s, control {t['control_s']:.1f}s)")
