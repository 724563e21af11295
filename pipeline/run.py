"""One run: teacher -> split-aware pseudo-labels -> student -> validated submission, report and metrics."""
from __future__ import annotations

import json
import platform
import re
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from pipeline import pseudo, report
from pipeline.config import RunConfig
from pipeline.files import sha256_of, write_csv_atomic, write_text_atomic
from pipeline.registry import Competition, get_competition, target_matrix
from pipeline.shift import ShiftReport, ShiftSettings
from pipeline.submission import read_solution, reindex_to_expected, score_against_solution, validate_submission

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    metrics: dict


@dataclass
class Items:
    """Everything the run learns from, after the unreadable images are set aside."""

    classes: list[str]
    x_train: np.ndarray  # image paths, or embeddings in feature-cache mode
    y_train: np.ndarray
    x_holdout: np.ndarray
    y_holdout: np.ndarray
    x_test: np.ndarray  # readable test items only
    test: pd.DataFrame  # every test item (path, id, group) in plugin order
    train_paths: list[str]  # every listed train image, readable or not (for the shift check)
    readable_test: np.ndarray  # bool per row of `test`
    unreadable: dict[str, dict[str, str]]
    fingerprint: str


def run_pipeline(cfg: RunConfig) -> RunResult:
    """Run everything for one config and write the run folder; the ledger records success or failure."""
    started = time.perf_counter()
    competition = get_competition(cfg.competition, cfg.metric, cfg.plugin_options)
    data_dir = Path(cfg.data)
    competition.check_layout(data_dir)
    run_id = _run_id(cfg)
    run_dir = Path(cfg.runs_dir) / cfg.competition / run_id
    if run_dir.exists():
        raise ValueError(f"run folder {run_dir} already exists; pick another --run-name")
    ledger = _open_ledger(cfg)  # a corrupt ledger stops the run before it leaves a folder behind
    run_dir.mkdir(parents=True)
    cfg.save(run_dir / "config.json")
    print(f"run {run_id}: {cfg.competition} from {data_dir}", flush=True)
    if ledger:  # recorded before anything can fail, so every failure is in the ledger too
        ledger.start_run(run_id, cfg.competition, cfg.to_dict(), None, cfg.seed)
    try:
        items = load_items(competition, data_dir, cfg)
        shift = _check_shift(cfg, items, run_dir)
        if ledger and shift is not None:
            ledger.record_shift(run_id, shift.summary())
        metrics = _train_and_submit(cfg, competition, data_dir, items, run_id, run_dir, started, shift)
    except BaseException:
        if ledger:
            ledger.fail_run(run_id, traceback.format_exc())
        raise
    if ledger:
        ledger.finish_run(run_id, metrics, Path(metrics["submission"]["path"]), metrics["timings"]["total_s"])
    return RunResult(run_id, run_dir, metrics)


def load_items(competition: Competition, data_dir: Path, cfg: RunConfig) -> Items:
    """List, scan and split the items: bad train images are skipped, bad test images kept for prior rows."""
    from pipeline import data  # TensorFlow loads here, not at import time of the CLI

    classes = competition.class_names(data_dir)
    train = competition.train_items(data_dir)
    test = competition.test_items(data_dir)
    if test.empty:
        raise ValueError(f"no test images found under {data_dir}; the submission needs them")
    print(f"{len(train)} train and {len(test)} test images ({_group_counts(test)})", flush=True)
    train_paths = train["path"].tolist()
    bad_train = data.scan_images(train["path"].tolist(), "train")
    bad_test = data.scan_images(test["path"].tolist(), "test")
    for path, problem in bad_train.items():
        print(f"WARNING: skipping unreadable train image {path}: {problem}", file=sys.stderr, flush=True)
    for path, problem in bad_test.items():
        print(f"WARNING: test image {path} is unreadable ({problem}); its submission row gets the class prior", file=sys.stderr, flush=True)
    train = train[~train["path"].isin(bad_train)].reset_index(drop=True)
    readable_test = ~test["path"].isin(bad_test).to_numpy()
    y = target_matrix(train["labels"], classes, source=lambda row: f"train image {train['path'][row]}")
    fit_rows, holdout_rows = _stratified_holdout(y, cfg.val_fraction, cfg.seed)
    fingerprint = data.fingerprint(train["path"].tolist() + test["path"].tolist())
    x_train = train["path"].to_numpy(dtype=str)
    x_test = test["path"].to_numpy(dtype=str)[readable_test]
    if cfg.backbone != "small-cnn" and not cfg.fine_tune:
        x_train, x_test = _cached_features(cfg, x_train, x_test, fingerprint)
    return Items(classes, x_train[fit_rows], y[fit_rows], x_train[holdout_rows], y[holdout_rows], x_test, test, train_paths,
                 readable_test, {"train": bad_train, "test": bad_test}, fingerprint)


def _check_shift(cfg: RunConfig, items: Items, run_dir: Path) -> ShiftReport | None:
    """Train vs public vs private images, before any pseudo-label is chosen; --on-shift decides what a shift does."""
    if cfg.on_shift == "ignore":
        return None
    test = items.test
    sets = {"train": items.train_paths}
    sets.update({g: test.loc[test["group"] == g, "path"].tolist() for g in pseudo.GROUPS})
    from pipeline.teacher_cache import get_or_assess_shift

    shift = get_or_assess_shift(cfg, sets, items.fingerprint, run_dir, ShiftSettings())  # run_dir/shift.json + shift_*.png
    print(shift.table(), flush=True)
    shifted = shift.shifted_groups()
    if shifted and cfg.on_shift == "fail":
        reasons = "; ".join(f"{g}: {shift.pairs[f'train_vs_{g}'].reason}" for g in shifted)
        raise ValueError(f"distribution shift between train and {', '.join(shifted)} ({reasons}); see "
                         f"{run_dir / 'shift.json'}; rerun with --on-shift warn to pseudo-label anyway")
    if shifted:
        print(f"WARNING: test group(s) {', '.join(shifted)} differ from train (see {run_dir / 'shift.json'}); "
              "pseudo-labeling them is where the student can adapt, and where the public score says least",
              file=sys.stderr, flush=True)
    return shift


def _train_and_submit(cfg: RunConfig, competition: Competition, data_dir: Path, items: Items, run_id: str, run_dir: Path,
                      started: float, shift: ShiftReport | None) -> dict:
    from pipeline import teacher_cache, train

    spec = train.ModelSpec(cfg, len(items.classes), competition.multi_label,
                           feature_dim=None if items.x_train.dtype.kind in "OUS" else int(items.x_train.shape[1]))
    teacher = teacher_cache.get_or_train(cfg, spec, items)
    teacher_decision = competition.fit_decision(items.y_holdout, teacher.holdout_probs)
    teacher_holdout = competition.metric(items.y_holdout, competition.decide(teacher.holdout_probs, teacher_decision))
    print(f"teacher holdout {competition.metric_name}: {teacher_holdout:.4f}", flush=True)

    test_groups = items.test["group"].to_numpy(dtype=str)[items.readable_test]
    student_started = time.perf_counter()
    student = _students(cfg, spec, competition, items, teacher, teacher_decision, test_groups)
    student_s = time.perf_counter() - student_started
    student_decision = competition.fit_decision(items.y_holdout, student["holdout_probs"])

    prior = items.y_train.mean(axis=0)
    tables = {}
    for name, probs, decision in (("teacher", teacher.test_probs, teacher_decision), ("student", student["test_probs"], student_decision)):
        full = np.tile(prior, (len(items.test), 1)).astype(np.float32)
        full[items.readable_test] = probs
        tables[name] = _submission_table(competition, data_dir, items, competition.decide(full, decision))
    submission_path = run_dir / "submission.csv"
    write_csv_atomic(submission_path, tables["student"])
    write_csv_atomic(run_dir / "teacher_submission.csv", tables["teacher"])
    if cfg.output:
        write_csv_atomic(Path(cfg.output), tables["student"])
    selection_rows = student["selection_rows"]
    write_csv_atomic(run_dir / "pseudo_labels.csv", selection_rows)

    metrics = {
        "run_id": run_id,
        "competition": cfg.competition,
        "metric": competition.metric_name,
        "greater_is_better": competition.greater_is_better,
        "data_fingerprint": items.fingerprint,
        "seed": cfg.seed,
        "holdout": {"teacher": teacher_holdout, "student": student["holdout_score"]},
        "pseudo": {**student["summary"], "shifted_groups": [] if shift is None else shift.shifted_groups()},
        "shift": None if shift is None else shift.summary(),
        "decision": {"teacher": teacher_decision, "student": student_decision},
        "items": {
            "train": len(items.x_train), "holdout": len(items.x_holdout),
            "test": {g: int((items.test["group"] == g).sum()) for g in pseudo.GROUPS},
            "unreadable_train": sorted(items.unreadable["train"]), "unreadable_test": sorted(items.unreadable["test"]),
        },
        "teacher_cache": teacher.cache_status,
        "teacher_training": teacher.info,
        "student_training": student["info"],
        "timings": {"teacher_s": round(teacher.seconds, 2), "student_s": round(student_s, 2)},
        "submission": {"path": str(submission_path), "sha256": sha256_of(submission_path), "rows": len(tables["student"])},
        "versions": _versions(),
    }
    if cfg.solution:
        solution = read_solution(Path(cfg.solution))
        metrics["leaderboard"] = {name: score_against_solution(competition, table, solution, items.classes) for name, table in tables.items()}
    metrics["timings"]["total_s"] = round(time.perf_counter() - started, 2)
    report.write_report(run_dir, metrics, test_groups,
                        {"teacher": teacher.test_probs, "student": student["test_probs"]}, competition.multi_label,
                        extra_html="" if shift is None else shift.html_fragment())
    write_text_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=2, default=_json_default) + "\n")
    _print_summary(metrics, run_dir)
    return metrics


def _students(cfg: RunConfig, spec, competition: Competition, items: Items, teacher, teacher_decision: dict, test_groups: np.ndarray) -> dict:
    """Pseudo-label the test set and train the student(s); with K folds, fold k is predicted by a student
    that never saw fold k's pseudo-labels. Ratio 0 means the teacher is the final model."""
    from pipeline import train

    settings = pseudo.PseudoSettings(cfg.pseudo_ratio, cfg.pseudo_threshold, cfg.pseudo_class_cap, tuple(cfg.pseudo_groups), cfg.pseudo_labels)
    thresholds = teacher_decision.get("thresholds")  # multi-label: "confidently on/off" is relative to these
    train_share = items.y_train.mean(axis=0)
    folds = pseudo.assign_folds(test_groups, cfg.pseudo_folds, cfg.seed)
    test_probs = np.zeros_like(teacher.test_probs)
    holdout_probs, holdout_scores, summaries, rows, infos = [], [], [], [], []
    ids = items.test["id"].to_numpy(dtype=str)[items.readable_test]
    for fold in range(cfg.pseudo_folds):
        predict_rows = folds == fold  # all rows when there is one fold
        eligible = ~predict_rows if cfg.pseudo_folds > 1 else predict_rows
        selection = pseudo.select_pseudo_labels(teacher.test_probs, test_groups, eligible, len(items.x_train), train_share,
                                                settings, competition.multi_label, thresholds)
        label = f"student {fold + 1}/{cfg.pseudo_folds}" if cfg.pseudo_folds > 1 else "student"
        print(f"{label}: {len(selection)} pseudo-labels ({selection.stop_reason}); by group "
              f"{ {g: int((selection.group == g).sum()) for g in settings.groups} }", flush=True)
        if len(selection) == 0:
            fold_holdout, info = teacher.holdout_probs, {"trained": False, "reason": selection.stop_reason}
            test_probs[predict_rows] = teacher.test_probs[predict_rows]
        else:
            from_teacher = cfg.student_init == "teacher"
            model, info = train.fit(spec, label, [(items.x_train, items.y_train), (items.x_test[selection.index], selection.targets)],
                                    items.x_holdout, items.y_holdout, cfg.seed + 1000 * (fold + 1),
                                    epochs=cfg.student_epochs if from_teacher else cfg.epochs,
                                    init_weights=teacher.weights if from_teacher else None)
            fold_holdout = train.predict(model, items.x_holdout, cfg)
            test_probs[predict_rows] = train.predict(model, items.x_test[predict_rows], cfg)
        decision = competition.fit_decision(items.y_holdout, fold_holdout)
        holdout_scores.append(competition.metric(items.y_holdout, competition.decide(fold_holdout, decision)))
        holdout_probs.append(fold_holdout)
        summaries.append(selection.summary(items.classes))
        infos.append(info)
        rows.append(pd.DataFrame({
            "id": ids[selection.index], "group": selection.group,
            "classes": [" ".join(items.classes[c] for c in cs) for cs in selection.classes],
            "confidence": np.round(selection.confidence, 5), "round": selection.round, "student": fold + 1,
        }))
    print(f"student holdout {competition.metric_name}: {np.mean(holdout_scores):.4f}", flush=True)
    return {
        "test_probs": test_probs,
        "holdout_probs": np.mean(holdout_probs, axis=0),
        "holdout_score": float(np.mean(holdout_scores)),
        "summary": summaries[0] if len(summaries) == 1 else {**summaries[0], "folds": summaries},
        "selection_rows": pd.concat(rows, ignore_index=True),
        "info": infos,
    }


def _submission_table(competition: Competition, data_dir: Path, items: Items, submitted: np.ndarray) -> pd.DataFrame:
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


def _stratified_holdout(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Holdout rows stratified by class (multi-label: by each item's rarest tag); never pseudo-labeled."""
    frequency = y.sum(axis=0)
    key = np.where(y.any(axis=1), np.argmin(np.where(y > 0, frequency, np.inf), axis=1), -1)
    counts = pd.Series(key).value_counts()
    key = np.where(pd.Series(key).map(counts).to_numpy() < 2, -2, key)  # singletons cannot be split; pool them
    rows = np.arange(len(y))
    if len(rows) < 10:
        raise ValueError(f"only {len(rows)} readable train images; at least 10 are needed to hold some out")
    try:
        return tuple(train_test_split(rows, test_size=fraction, random_state=seed, stratify=key))
    except ValueError:  # a pooled bucket of one item still cannot be stratified
        return tuple(train_test_split(rows, test_size=fraction, random_state=seed))


def _cached_features(cfg: RunConfig, x_train: np.ndarray, x_test: np.ndarray, fingerprint: str) -> tuple[np.ndarray, np.ndarray]:
    from pipeline import teacher_cache

    features = teacher_cache.get_or_embed(cfg, np.concatenate([x_train, x_test]), fingerprint)
    return features[: len(x_train)], features[len(x_train):]


def _run_id(cfg: RunConfig) -> str:
    if cfg.run_name:
        if not RUN_NAME.match(cfg.run_name):
            raise ValueError(f"--run-name {cfg.run_name!r} must be letters, digits, '.', '_' or '-' (it names a folder)")
        return cfg.run_name
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")[:-3]
    return f"{stamp}-r{cfg.pseudo_ratio:g}-{'+'.join(cfg.pseudo_groups)}-s{cfg.seed}"


def _open_ledger(cfg: RunConfig):
    from pipeline.ledger import open_ledger

    return open_ledger(cfg.ledger)


def _group_counts(test: pd.DataFrame) -> str:
    return ", ".join(f"{g} {n}" for g, n in test["group"].value_counts().sort_index().items())


def _versions() -> dict:
    versions = {"python": platform.python_version()}
    for package in ("tensorflow-cpu", "tensorflow", "keras", "numpy", "pandas", "scikit-learn", "pillow"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _print_summary(metrics: dict, run_dir: Path) -> None:
    better = "higher" if metrics["greater_is_better"] else "lower"
    print(f"\n== {metrics['run_id']} ({metrics['metric']}, {better} is better)")
    print(f"holdout   teacher {metrics['holdout']['teacher']:.4f}   student {metrics['holdout']['student']:.4f}")
    for board in ("public", "private"):
        scores = metrics.get("leaderboard")
        if scores and scores["student"].get(board) is not None:
            print(f"{board:<9} teacher {scores['teacher'][board]:.4f}   student {scores['student'][board]:.4f}")
    if metrics["shift"]:
        print(f"shift      {metrics['shift']['worst']}; shifted groups: {', '.join(metrics['pseudo']['shifted_groups']) or 'none'}")
    print(f"pseudo-labels {metrics['pseudo']['selected']} ({metrics['pseudo']['stop_reason']}): {metrics['pseudo']['by_group']}")
    print(f"submission {metrics['submission']['path']} ({metrics['submission']['rows']} rows)")
    print(f"report     {run_dir / 'report.html'}")
    print(f"wall time  {metrics['timings']['total_s']:.1f}s (teacher {metrics['timings']['teacher_s']:.1f}s, student {metrics['timings']['student_s']:.1f}s)")
