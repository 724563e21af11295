"""One run, as a list of stages: items -> shift -> teacher -> self-training and control -> decision -> outputs -> ledger.

Each stage is a function in the module that owns its policy and returns a dataclass; this module only
sequences them and records the run. The decision stage (pipeline/run/decision.py) reads only what training
leaves in the run folder, and is the one `runs rescore` runs again.
"""
from __future__ import annotations

import shutil
import sys
import time
import traceback
import dataclasses
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pipeline.run import outputs
from pipeline.run import preflight
from pipeline.run.config import RunConfig
from pipeline.run import folds
from pipeline.run.options import AUTO
from pipeline.run.decision import decide
from pipeline.run.folder import RUN_NAME, SHIFT, RunFolder
from pipeline.run.metrics import RunMetrics, Timings
from pipeline.errors import UserError
from pipeline.files import no_space_error
from pipeline.data.items import Items, load_items
from pipeline.method import adaptation
from pipeline.method.group_verdict import Unmeasured
from pipeline.ledger.provenance import library_versions
from pipeline.plugin.api import GROUPS, Competition
from pipeline.plugin.registry import get_competition
from pipeline.shift.report import ShiftReport, ShiftSettings


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    record: RunMetrics  # the finished run's metrics.json

    @property
    def metrics(self) -> dict:
        """metrics.json's content, as JSON holds it."""
        return self.record.to_dict()


def run_pipeline(cfg: RunConfig) -> RunResult:
    """Run every stage for one config and write the run folder; the ledger records success or failure."""
    started = time.perf_counter()
    # the layout first (files only): a wrong --data is one line in seconds, before TensorFlow starts
    competition = get_competition(cfg.competition, cfg.metric, cfg.plugin_options)
    data_dir = Path(cfg.data)
    competition.check_layout(data_dir)
    from pipeline.model import distribute  # imports TensorFlow

    cfg = distribute.setup(cfg)  # before any TensorFlow op: a multi-worker strategy must exist first
    run_id = _run_id(cfg)
    run_dir = Path(cfg.runs_dir) / cfg.competition / run_id
    if run_dir.exists():
        raise UserError(f"run folder {run_dir} already exists; pick another --run-name")
    train, test = competition.train_items(data_dir), competition.test_items(data_dir)  # listed once, for both
    if cfg.folds == AUTO:  # a number before anything reads it: config.json and every cache key get that number
        settled, line = folds.settle(len(train), cfg.val_fraction)
        print(line, flush=True)
        cfg = cfg.replace(folds=settled)
    preflight.check_before_training(cfg, competition, data_dir, train, test)
    ledger = _open_ledger(cfg)  # a corrupt ledger stops the run before it leaves a folder behind
    run_dir.mkdir(parents=True)
    try:
        RunFolder(run_dir).save_config(cfg)
    except BaseException:  # e.g. a full disk: no folder is left behind to block the same --run-name
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    print(f"run {run_id}: {cfg.competition} from {data_dir}", flush=True)
    if ledger:  # recorded before anything can fail, so every failure is in the ledger too
        ledger.start_run(run_id, cfg.competition, cfg.to_dict(), None, cfg.seed)
    return _run_stages(cfg, competition, data_dir, train, test, run_id, run_dir, ledger, started)


def resume_pipeline(runs_dir: str, competition_name: str, run: str, cache_dir: str | None = None,
                    ledger_path: str | None = None) -> RunResult:
    """Run an unfinished run again, from its own config.json, into its own folder, on its own ledger row.

    Every cached stage (images, shift, teacher, each student and control) is reused, so only the models the
    interrupted run had not finished are trained; the submission is the one the run would have written."""
    from pipeline.model import distribute
    from pipeline.run import resume

    started = time.perf_counter()
    cfg, run_dir = resume.load_run(Path(runs_dir), competition_name, run, cache_dir, ledger_path)
    cfg = distribute.setup(cfg)  # first: a multi-worker strategy must exist before any TensorFlow op
    if distribute.is_multiworker():  # workers would each clear and rewrite the one run folder
        raise UserError(f"--resume {run}: a --distribute multiworker run cannot be resumed; start it again under "
                        "a new --run-name (its cached teacher is reused)")
    ledger = _open_ledger(cfg)  # opening it marks the row of a killed run `interrupted`
    previous = resume.check_unfinished(run, run_dir, ledger)
    competition = get_competition(cfg.competition, cfg.metric, cfg.plugin_options)
    data_dir = Path(cfg.data)
    competition.check_layout(data_dir)
    train, test = competition.train_items(data_dir), competition.test_items(data_dir)
    preflight.check_before_training(cfg, competition, data_dir, train, test)
    if ledger and previous == resume.NOT_RECORDED:
        ledger.start_run(run, cfg.competition, cfg.to_dict(), None, cfg.seed)
    elif ledger:  # the same row, back to running in this process: from here on a second --resume is refused
        ledger.resume_run(run)
    print(f"run {run}: resuming ({previous}) {cfg.competition} from {data_dir}", flush=True)
    try:
        resume.clear_run_folder(cfg, run_dir)
        RunFolder(run_dir).save_config(cfg)
    except BaseException:
        if ledger:
            ledger.fail_run(run, traceback.format_exc())
        raise
    resumed = {"from_status": previous, "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return _run_stages(cfg, competition, data_dir, train, test, run, run_dir, ledger, started, resumed)


def _run_stages(cfg: RunConfig, competition: Competition, data_dir: Path, train, test, run_id: str, run_dir: Path, ledger,
                started: float, resumed: dict | None = None) -> RunResult:
    """The stages of a run whose folder and ledger row exist: a failure is recorded, success finishes the row."""
    folder = RunFolder(run_dir)
    try:
        items = load_items(cfg, competition, data_dir, train, test)
        shift = check_shift(cfg, items, run_dir)
        adaptation.assign_sets(cfg.adapt_bn, items, shift)
        if ledger and shift is not None:
            ledger.record_shift(run_id, shift.summary())
        train_and_submit(cfg, competition, data_dir, items, run_id, run_dir, started, shift, resumed)
        metrics = folder.read_metrics()  # what the folder holds is what the ledger records, as `runs record` does
    except BaseException as error:
        if ledger:
            _record_failure(ledger, run_id)
        full = no_space_error(error)
        if full is not None:  # the user's to fix: one line, not a traceback
            raise UserError(_no_space_line(cfg, run_id, full)) from error
        raise
    if ledger:
        _record_finish(ledger, run_id, folder, metrics)
    return RunResult(run_id, run_dir, metrics)


def _record_finish(ledger, run_id: str, folder: RunFolder, metrics: RunMetrics) -> None:
    """Mark the run done. A ledger that cannot be written now (locked past the busy timeout, a full disk) is a
    warning, not a failure: the run wrote every output, its submission is valid and usable, and one command
    records it later. So the run ends with status 0, as its submission is what a Kaggle user ran it for (an
    `--upload` or a `&&` chain goes on with it), and the warning says what is missing and how to add it."""
    from pipeline.ledger.connection import LedgerUnavailable
    from pipeline.ledger.record import record_command

    try:
        ledger.finish_run(run_id, metrics.to_dict(), Path(metrics.submission.path), metrics.timings.total_s)
    except LedgerUnavailable as error:
        print(f"WARNING: run {run_id} finished and wrote every output to {folder.path} (its submission.csv is valid), "
              f"but it is not recorded as done: {error.why}; once the ledger is free, record it with "
              f"`{record_command(folder.path, ledger.path)}`", file=sys.stderr, flush=True)


def _record_failure(ledger, run_id: str) -> None:
    """Mark the run failed with the traceback being handled; a ledger that cannot be written now is a warning
    (the failure itself is what the run reports)."""
    from pipeline.ledger.connection import LedgerUnavailable

    try:
        ledger.fail_run(run_id, traceback.format_exc())
    except LedgerUnavailable as error:
        print(f"WARNING: run {run_id} failed and could not be recorded as failed: {error.why}; the ledger marks it "
              "interrupted once this process has ended", file=sys.stderr, flush=True)


def _no_space_line(cfg: RunConfig, run_id: str, full: BaseException) -> str:
    """The one line of a run stopped by a full disk: where, how much is free, and how to finish the run."""
    from pipeline.files import NoSpaceLeft, free_bytes, no_space_message

    if isinstance(full, NoSpaceLeft):
        where = no_space_message(full.path, full.__cause__)
    elif isinstance(full, OSError) and full.filename:
        where = no_space_message(full.filename, full)
    else:  # h5py, SQLite and plain writes on an open file name no file: the fullest of the run's folders
        folders = [("--runs-dir", cfg.runs_dir), ("--cache-dir", cfg.cache_dir)]
        option, folder = min(folders, key=lambda f: free_bytes(f[1]) if free_bytes(f[1]) is not None else float("inf"))
        where = f"{no_space_message(folder, full, under=True)} ({option})"
    return (f"run {run_id} stopped: {where}; free some space there (or use a folder on a larger disk), then "
            f"`python -m pipeline submit --resume {run_id} --competition {cfg.competition} --runs-dir {cfg.runs_dir}` "
            "finishes it, reusing every model it cached")


def check_shift(cfg: RunConfig, items: Items, run_dir: Path) -> ShiftReport | None:
    """Train vs public vs private images, before any pseudo-label is chosen; --on-shift decides what a shift does."""
    if cfg.on_shift == "ignore":
        return None
    from pipeline.cache.shift import get_or_assess_shift

    test = items.test
    sets = {"train": items.stores["train"].paths}
    sets.update({g: test.loc[test["group"] == g, "path"].tolist() for g in GROUPS})
    tables = {"train": items.stores["train"].property_table()}
    tables.update({g: items.stores["test"].property_table(paths) for g, paths in sets.items() if g != "train"})
    shift = get_or_assess_shift(cfg, sets, items.fingerprint, run_dir, ShiftSettings(), tables=tables)
    print(shift.table(), flush=True)
    shifted = shift.shifted_groups()
    if shifted and cfg.on_shift == "fail":
        reasons = "; ".join(f"{g}: {shift.pairs[f'train_vs_{g}'].reason}" for g in shifted)
        raise UserError(f"distribution shift between train and {', '.join(shifted)} ({reasons}); see "
                        f"{run_dir / SHIFT}; rerun with --on-shift warn to pseudo-label anyway")
    if shifted:
        print(f"WARNING: test group(s) {', '.join(shifted)} differ from train (see {run_dir / SHIFT}); "
              "pseudo-labeling them is where the student can adapt, and where the public score says least",
              file=sys.stderr, flush=True)
    return shift


def train_and_submit(cfg: RunConfig, competition: Competition, data_dir: Path, items: Items, run_id: str, run_dir: Path,
                     started: float, shift: ShiftReport | None, resumed: dict | None = None) -> None:
    """Train the teacher, and the students and control; then the decision stage on what they leave in the run folder
    (the one `runs rescore` calls), and the run's record: every output of the run folder."""
    from pipeline.method import selftrain
    from pipeline.cache import teachers as teacher_cache
    from pipeline.model.spec import ModelSpec, TrainSettings

    folder = RunFolder(run_dir)
    spec = ModelSpec(TrainSettings.of(cfg), len(items.classes), competition.multi_label, getattr(competition, "flips", "horizontal"),
                     feature_dim=None if items.train_x.dtype == np.uint8 else int(items.train_x.shape[1]))
    teacher = teacher_cache.get_or_train(cfg, spec, items)
    scored = {"teacher": teacher.scored_probs}
    test = {"teacher": teacher.mean_test_probs}
    training = None
    if cfg.pseudo_ratio > 0:
        training = selftrain.fit_students(cfg, spec, competition, items, teacher)
        scored["student"], test["student"] = training.student.scored_probs, training.student.test_probs
        if training.control is not None:
            scored["control"], test["control"] = training.control.scored_probs, training.control.test_probs
    probs = outputs.run_probabilities(competition, data_dir, items, {name: p[items.fold >= 0] for name, p in scored.items()}, test)
    probs = dataclasses.replace(probs, **outputs.shift_evidence(items, cfg.seed))
    learned = training.summary.get("by_group") if training else None  # per group: what the student learned from
    outcome = decide(competition, probs, cfg.guard_confidence, cfg.seed, cfg.solution, cfg.calibrate,
                     unmeasured=Unmeasured.of(cfg), learned=learned,
                     guard_compares=cfg.guard_compares)
    chosen = outcome.verdict.submitted
    print(("" if chosen == "student" else "WARNING: ") + outcome.verdict.reason,
          file=sys.stderr if chosen != "student" else sys.stdout, flush=True)
    submission = folder.write_submissions(outcome.tables, outcome.submitted, cfg.output)
    if training:
        provenance, pseudo_summary = training.provenance, training.summary
    else:
        provenance, pseudo_summary = _teacher_only_selection(cfg, items, teacher)
    folder.write_recomputables(probs, provenance)
    student, control = (training.student if training else None), (training.control if training else None)
    metrics = RunMetrics(
        run_id=run_id, competition=cfg.competition, metric=competition.metric_name,
        greater_is_better=competition.greater_is_better, data_fingerprint=items.fingerprint, seed=cfg.seed,
        holdout=outcome.holdout, verdict=outcome.verdict, decision=outcome.decisions, leaderboard=outcome.leaderboard,
        pseudo={**pseudo_summary, "shifted_groups": [] if shift is None else shift.shifted_groups()},
        shift=None if shift is None else shift.summary(), items=outputs.item_counts(items),
        teacher_cache=teacher.cache_status, teacher_training=teacher.info,
        student_training=student.info if student else [], control_training=control.info if control else [],
        timings=Timings(round(teacher.seconds, 2), round(student.seconds if student else 0.0, 2),
                        round(control.seconds if control else 0.0, 2)),
        submission=submission, versions=library_versions(), resumed=resumed)
    metrics.timings.total_s = round(time.perf_counter() - started, 2)
    outputs.write_metrics(folder, metrics, probs, competition.multi_label, "" if shift is None else shift.html_fragment())
    outputs.print_summary(metrics, folder)


def _teacher_only_selection(cfg: RunConfig, items: Items, teacher) -> tuple:
    """The provenance and summary of --pseudo-ratio 0 (nothing selected), in the same shape as a real selection's."""
    from pipeline.method import pseudo
    from pipeline.method import selftrain

    nothing = pseudo.select_pseudo_labels(teacher.mean_test_probs, items.test_groups, np.ones(len(items.test_rows), bool),
                                          len(items.y), items.y.mean(axis=0), pseudo.PseudoSettings.of(cfg))
    provenance = selftrain.provenance_rows(items.test_ids, items.test_groups, nothing, 0, 0, items.classes)
    return provenance, {**nothing.summary(items.classes), "rounds": 0, "selected_per_round": {}}


def _run_id(cfg: RunConfig) -> str:
    if cfg.run_name:
        if not RUN_NAME.match(cfg.run_name):
            raise UserError(f"--run-name {cfg.run_name!r} must be letters, digits, '.', '_' or '-' (it names a folder)")
        return cfg.run_name
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")[:-3]
    return f"{stamp}-r{cfg.pseudo_ratio:g}-{'+'.join(cfg.pseudo_groups)}-s{cfg.seed}"


def _open_ledger(cfg: RunConfig):
    from pipeline.ledger.store import open_ledger

    return open_ledger(cfg.ledger_path)
