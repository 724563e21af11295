"""`compare` on hand-made fisheries submissions and a solution file: order, gains, Spearman, noise, outputs."""
from __future__ import annotations

import io
import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from competitions.single_label import kaggle_log_loss
from pipeline.__main__ import main
from pipeline.ledger.compare import compare_runs, public_gain_interval
from pipeline.ledger.compare_output import render, write_plot
from pipeline.files import write_csv_atomic
from pipeline.ledger.store import Ledger
from pipeline.plugin.registry import get_competition
from pipeline.submission import read_solution, score_against_solution

FISHERIES = get_competition("fisheries")
CLASSES = FISHERIES.class_names(Path("."))
N_PUBLIC, N_PRIVATE = 120, 120
RESAMPLES = 200


@pytest.fixture
def world(tmp_path: Path) -> dict:
    """A solution file and a ledger next to a runs folder, like submissions/ledger.sqlite."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(CLASSES), N_PUBLIC + N_PRIVATE)
    ids = [f"img_{i:05d}.jpg" for i in range(N_PUBLIC)] + [f"test_stg2/image_{i:05d}.jpg" for i in range(N_PRIVATE)]
    solution = pd.DataFrame(np.eye(len(CLASSES))[labels].astype(int), columns=CLASSES)
    solution.insert(0, "image", ids)
    solution["Usage"] = ["Public"] * N_PUBLIC + ["Private"] * N_PRIVATE
    solution_path = tmp_path / "solution.csv"
    write_csv_atomic(solution_path, solution)
    return {"ids": ids, "labels": labels, "solution": solution_path, "ledger": Ledger(tmp_path / "subs" / "ledger.sqlite"),
            "runs": tmp_path / "subs" / "fisheries"}


def probabilities(labels: np.ndarray, q_true: np.ndarray) -> np.ndarray:
    """Rows giving q_true to the true class and the rest spread evenly."""
    q_true = np.broadcast_to(np.asarray(q_true, dtype=float), labels.shape)
    rows = np.repeat(((1 - q_true) / (len(CLASSES) - 1))[:, None], len(CLASSES), axis=1)
    rows[np.arange(len(labels)), labels] = q_true
    return rows


def add_run(world: dict, run_id: str, ratio: float, teacher_q, student_q, holdout: tuple[float, float],
            with_leaderboard: bool = False) -> Path:
    """A done run: folder with submission.csv and teacher_submission.csv, recorded in the ledger."""
    run_dir = world["runs"] / run_id
    tables = {}
    for name, q in (("teacher_submission.csv", teacher_q), ("submission.csv", student_q)):
        tables[name] = FISHERIES.to_submission(world["ids"], probabilities(world["labels"], q), CLASSES)
        write_csv_atomic(run_dir / name, tables[name])
    metrics = {"competition": "fisheries", "metric": "logloss", "greater_is_better": False,
               "holdout": {"teacher": holdout[0], "student": holdout[1]}, "pseudo": {"selected": int(ratio * 100)}}
    if with_leaderboard:
        solution = read_solution(world["solution"])
        metrics["leaderboard"] = {
            who: score_against_solution(FISHERIES, pd.read_csv(run_dir / name, dtype=str, keep_default_na=False), solution, CLASSES)
            for who, name in (("teacher", "teacher_submission.csv"), ("student", "submission.csv"))}
    config = {"pseudo_ratio": ratio, "pseudo_groups": ["public", "private"], "solution": str(world["solution"]), "data": "unused"}
    world["ledger"].start_run(run_id, "fisheries", config, "fp", 0)
    world["ledger"].finish_run(run_id, metrics, run_dir / "submission.csv", 10.0)
    return run_dir


def public_logloss(world: dict, q_true) -> float:
    public = slice(0, N_PUBLIC)
    labels = world["labels"][public]
    return kaggle_log_loss(np.eye(len(CLASSES))[labels], probabilities(labels, np.broadcast_to(q_true, world["labels"].shape)[public]))


def test_bootstrap_tells_noise_from_a_real_gain(world: dict) -> None:
    n = N_PUBLIC + N_PRIVATE
    teacher = np.full(n, 0.4)
    noisy = teacher.copy()  # 8 public rows better, 6 worse: a small public "gain" that is luck
    noisy[:8], noisy[8:14] = 0.6, 0.27
    real = np.clip(teacher + np.random.default_rng(1).normal(0.25, 0.05, n), 0.05, 0.95)
    for name, student in (("noise", noisy), ("real", real)):
        add_run(world, name, 0.25, teacher, student, (1.0, 0.9))
    comparison = compare_runs(world["ledger"], "fisheries", resamples=RESAMPLES, record=True)
    assert dict(zip(comparison.table["run_id"], comparison.table["verdict"])) == {"noise": "noise", "real": "real gain"}
    results = {name: world["ledger"].run(name)["public_gain"] for name in ("noise", "real")}
    for name, student in (("noise", noisy), ("real", real)):
        expected_gain = public_logloss(world, teacher) - public_logloss(world, student)  # lower log loss is better
        assert results[name]["gain"] == pytest.approx(expected_gain, abs=1e-6)  # the CSV keeps 6 digits
        assert results[name]["low"] <= results[name]["gain"] <= results[name]["high"]
        assert results[name]["rows"] == N_PUBLIC and results[name]["key"]["resamples"] == RESAMPLES
    assert results["noise"]["gain"] > 0 and results["noise"]["verdict"] == "noise"
    assert results["noise"]["low"] < 0 < results["noise"]["high"]
    assert results["real"]["verdict"] == "real gain" and results["real"]["low"] > 0
    # the same rows resampled for both submissions: the paired interval is far narrower than the scores' spread
    assert results["real"]["high"] - results["real"]["low"] < results["real"]["gain"]

    # the same interval from the function itself, with another seed: the verdicts do not hang on the seed
    solution = read_solution(world["solution"])
    for name in ("noise", "real"):
        tables = [pd.read_csv(world["runs"] / name / f, dtype=str, keep_default_na=False)
                  for f in ("submission.csv", "teacher_submission.csv")]
        again = public_gain_interval(FISHERIES, *tables, solution, CLASSES, RESAMPLES, seed=1)
        assert again["verdict"] == results[name]["verdict"] and again["gain"] == results[name]["gain"]
        # per-row values resampled all at once give the interval that a metric call per resample gives
        one_by_one = public_gain_interval(MetricOnly(), *tables, solution, CLASSES, RESAMPLES, seed=1)
        assert one_by_one["low"] == pytest.approx(again["low"], abs=1e-9)
        assert one_by_one["high"] == pytest.approx(again["high"], abs=1e-9)


class MetricOnly(type(FISHERIES)):
    """The fisheries plugin as a plugin without per-row metric values (the slow, general path)."""

    def metric_rows(self, y_true, y_submitted):
        return None


def test_table_order_gains_and_local_leaderboard(world: dict) -> None:
    n = N_PUBLIC + N_PRIVATE
    teacher = np.full(n, 0.4)
    add_run(world, "r0", 0.0, teacher, teacher, (1.10, 1.10), with_leaderboard=True)
    add_run(world, "r1", 0.1, teacher, np.full(n, 0.45), (1.10, 1.05), with_leaderboard=True)
    add_run(world, "r3", 0.33, teacher, np.full(n, 0.6), (1.10, 1.12))  # leaderboard filled in by compare
    add_run(world, "r2", 0.25, teacher, np.full(n, 0.5), (1.10, 0.95))
    world["ledger"].start_run("crashed", "fisheries", {}, "fp", 0)
    world["ledger"].fail_run("crashed", "RuntimeError: boom")

    by_public = compare_runs(world["ledger"], "fisheries", sort="public", resamples=0, record=True)
    table = by_public.table.set_index("run_id")
    assert list(by_public.table["run_id"]) == ["r3", "r2", "r1", "r0"]  # log loss: lowest first
    for run_id, q in (("r0", 0.4), ("r1", 0.45), ("r2", 0.5), ("r3", 0.6)):
        # (the submission CSVs keep 6 significant digits)
        assert table.loc[run_id, "public"] == pytest.approx(public_logloss(world, q), abs=1e-6)
        assert table.loc[run_id, "public_gain"] == pytest.approx(public_logloss(world, 0.4) - public_logloss(world, q), abs=1e-6)
        assert table.loc[run_id, "teacher_public"] == pytest.approx(public_logloss(world, 0.4), abs=1e-6)
    assert table.loc["r2", "holdout_gain"] == pytest.approx(1.10 - 0.95)
    assert table.loc["r3", "holdout_gain"] == pytest.approx(1.10 - 1.12)  # worse on the holdout: negative gain
    assert table.loc["r0", "verdict"] == "same as teacher"
    assert table.loc["r1", "verdict"] == "n/a: noise check off (--resamples 0)"
    assert set(table["board_source"]) == {"local"}
    assert any("1 failed run(s) left out" in note for note in by_public.notes)
    recorded = world["ledger"].runs().set_index("run_id")
    assert recorded.loc["r3", "lb_student_public"] == pytest.approx(table.loc["r3", "public"])  # stored back

    by_holdout = compare_runs(world["ledger"], "fisheries", sort="holdout", resamples=0)
    assert list(by_holdout.table["run_id"]) == ["r2", "r1", "r0", "r3"]


def test_spearman_across_runs(world: dict) -> None:
    n = N_PUBLIC + N_PRIVATE
    teacher = np.full(n, 0.4)
    for i, q in enumerate((0.45, 0.5, 0.55, 0.6)):
        student = np.full(n, q)
        student[N_PUBLIC:] = 0.6 - (q - 0.45)  # private scores in the reverse order of the public ones
        add_run(world, f"r{i}", 0.1 * (i + 1), teacher, student, (1.0, 1.0 - 0.01 * i))
    correlations = compare_runs(world["ledger"], "fisheries", resamples=0).correlations
    assert correlations["holdout_vs_public"]["rho"] == pytest.approx(1.0)
    assert correlations["public_vs_private"]["rho"] == pytest.approx(-1.0)
    assert correlations["public_vs_private"]["n"] == 4
    # exact permutation test: 2 of the 4! orders are as extreme as a perfect (anti-)correlation
    assert correlations["public_vs_private"]["p"] == pytest.approx(2 / math.factorial(4))


def test_spearman_needs_three_runs_and_kaggle_scores_fill_in(world: dict) -> None:
    teacher = np.full(N_PUBLIC + N_PRIVATE, 0.4)
    add_run(world, "a", 0.1, teacher, teacher + 0.1, (1.0, 0.9))
    world["ledger"].add_submission("a", "0" * 64, "ref-1", "m", "complete", 0.77, 0.79)
    comparison = compare_runs(world["ledger"], "fisheries", solution=world["solution"].with_name("nope.csv"),
                              resamples=0)
    row = comparison.table.iloc[0]
    assert row["verdict"].startswith("n/a: solution") and row["board_source"] == "kaggle"
    assert (row["public"], row["private"]) == (0.77, 0.79)  # the run's Kaggle scores as there is no local one
    assert comparison.correlations["holdout_vs_public"]["rho"] is None
    assert "at least 3 runs" in comparison.correlations["holdout_vs_public"]["note"]


def test_formats_plot_and_cache(world: dict, capsys: pytest.CaptureFixture) -> None:
    n = N_PUBLIC + N_PRIVATE
    teacher = np.full(n, 0.4)
    for i, q in enumerate((0.4, 0.5, 0.6)):
        add_run(world, f"run-{i}", 0.1 * i, teacher, np.full(n, q), (1.0, 1.0 - 0.05 * i))
    ledger_path = str(world["ledger"].path)
    args = ["compare", "--competition", "fisheries", "--ledger", ledger_path, "--resamples", "100"]
    assert main([*args, "--format", "json", "--record"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("bootstrap of the public gain") == 2  # run-0 equals its teacher: nothing to resample
    report = json.loads(captured.out)
    assert [r["run_id"] for r in report["runs"]] == ["run-2", "run-1", "run-0"]
    assert report["spearman"]["holdout_vs_public"]["rho"] == pytest.approx(1.0)
    png = Path(report["plot"])
    assert png == world["runs"] / "compare.png"
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] >= 600

    assert main([*args, "--format", "csv"]) == 0  # the intervals are cached in the ledger now
    captured = capsys.readouterr()
    assert "bootstrap of" not in captured.err
    table = pd.read_csv(io.StringIO(captured.out))
    assert list(table["run_id"]) == ["run-2", "run-1", "run-0"]
    assert table.loc[0, "public_gain_low"] == pytest.approx(report["runs"][0]["public_gain_low"])

    assert main([*args, "--format", "markdown", "--sort", "holdout"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.startswith("|")]
    assert len(rows) == 2 + 3 and rows[1].startswith("|---")
    assert "Spearman holdout vs public: rho +1.00" in "\n".join(lines)

    assert main([*args]) == 0
    text = capsys.readouterr().out
    assert "logloss (lower is better)" in text and "real gain" in text and f"plot: {png}" in text

    # a changed submission file invalidates its cached interval
    add_run(world, "later", 0.2, teacher, np.full(n, 0.5), (1.0, 0.97))
    write_csv_atomic(world["runs"] / "run-1" / "submission.csv",
                     FISHERIES.to_submission(world["ids"], probabilities(world["labels"], np.full(n, 0.45)), CLASSES))
    assert main([*args, "--format", "csv"]) == 0
    assert capsys.readouterr().err.count("bootstrap of the public gain") == 2  # run-1 again and the new run


def test_compare_only_reads_the_ledger_unless_record(world: dict, capsys: pytest.CaptureFixture) -> None:
    """Without --record the ledger file keeps every byte (scores, intervals and stale rows are not written);
    with it the computed scores and intervals are stored, and later read-only comparisons reuse them."""
    n = N_PUBLIC + N_PRIVATE
    teacher = np.full(n, 0.4)
    for i, q in enumerate((0.45, 0.5)):  # no leaderboard scores recorded: compare computes them
        add_run(world, f"run-{i}", 0.1 * (i + 1), teacher, np.full(n, q), (1.0, 0.95))
    path = world["ledger"].path
    world["ledger"].start_run("dead", "fisheries", {}, "fp", 0)
    with sqlite3.connect(path) as db:  # our pid with another start time: a process that is gone
        db.execute("UPDATE runs SET process_start = '1' WHERE run_id = 'dead'")
    before, files = path.read_bytes(), sorted(p.name for p in path.parent.iterdir())
    args = ["compare", "--competition", "fisheries", "--ledger", str(path), "--resamples", "100", "--format", "json"]

    assert main(args) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert captured.err.count("bootstrap of the public gain") == 2
    assert [r["public"] is not None and r["public_gain_low"] is not None for r in report["runs"]] == [True, True]
    assert "run-0: scored against " + str(world["solution"]) + " and not stored (--record stores it)" in report["notes"]
    assert path.read_bytes() == before  # nothing written: no scores, no intervals, the dead run still `running`
    assert sorted(p.name for p in path.parent.iterdir()) == files  # no journal left, nothing created

    assert main([*args, "--record"]) == 0
    recorded = json.loads(capsys.readouterr().out)
    assert path.read_bytes() != before
    runs = Ledger(path).runs().set_index("run_id")
    assert runs.loc["dead", "status"] == "interrupted"  # a writable open marks it
    for row in recorded["runs"]:
        assert runs.loc[row["run_id"], "lb_student_public"] == pytest.approx(row["public"])
        assert Ledger(path).run(row["run_id"])["public_gain"]["low"] == pytest.approx(row["public_gain_low"])
    assert recorded["runs"] == report["runs"]  # storing changes nothing in the comparison itself

    after = path.read_bytes()
    assert main(args) == 0  # read-only again: the stored intervals are reused, nothing is recomputed or written
    assert "bootstrap of" not in capsys.readouterr().err and path.read_bytes() == after


def test_compare_without_record_needs_an_existing_current_ledger(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "runs" / "ledger.sqlite"
    assert main(["compare", "--competition", "fisheries", "--ledger", str(missing)]) == 2
    assert f"ledger {missing} does not exist" in capsys.readouterr().err
    assert not missing.parent.exists()  # a read-only open creates nothing
    with pytest.raises(RuntimeError, match="opened read-only"):  # a write through a read-only ledger is a bug
        compare_runs(Ledger(Ledger(tmp_path / "l.sqlite").path, read_only=True), "fisheries", record=True)


def test_bad_inputs_are_clear_errors(world: dict, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ValueError, match="no finished runs of 'fisheries'"):
        compare_runs(world["ledger"], "fisheries")
    teacher = np.full(N_PUBLIC + N_PRIVATE, 0.4)
    run_dir = add_run(world, "short", 0.1, teacher, teacher + 0.1, (1.0, 0.9))
    table = pd.read_csv(run_dir / "submission.csv")
    write_csv_atomic(run_dir / "submission.csv", table.iloc[5:])  # five public rows lost
    with pytest.raises(ValueError, match=r"run short .*no row for 5 .*img_00000\.jpg"):
        compare_runs(world["ledger"], "fisheries", resamples=0)
    (run_dir / "submission.csv").unlink()
    write_csv_atomic(run_dir / "submission.csv", table)
    world["ledger"].start_run("acc", "fisheries", {"pseudo_ratio": 0.1}, "fp", 0)
    world["ledger"].finish_run("acc", {"metric": "accuracy", "greater_is_better": True}, run_dir / "submission.csv", 1.0)
    with pytest.raises(ValueError, match=r"different metrics \(accuracy, logloss\); choose one with --metric"):
        compare_runs(world["ledger"], "fisheries", resamples=0)
    only_logloss = compare_runs(world["ledger"], "fisheries", metric="logloss", resamples=0)
    assert list(only_logloss.table["run_id"]) == ["short"]
    assert "1 run(s) scored with another metric than logloss left out" in only_logloss.notes
    with pytest.raises(ValueError, match="--sort must be one of"):
        compare_runs(world["ledger"], "fisheries", sort="best")
    assert main(["compare", "--competition", "fisheries", "--ledger", str(world["ledger"].path),
                 "--resamples", "10"]) == 2
    assert "--resamples must be 0 (no noise check) or at least 100" in capsys.readouterr().err


def test_render_and_plot_with_missing_scores(world: dict, tmp_path: Path) -> None:
    """Runs without any leaderboard score still render and plot (their cells show '-')."""
    teacher = np.full(N_PUBLIC + N_PRIVATE, 0.4)
    run_dir = add_run(world, "lonely", 0.1, teacher, teacher + 0.1, (1.0, 0.9))
    (run_dir / "teacher_submission.csv").unlink()
    comparison = compare_runs(world["ledger"], "fisheries", resamples=0)
    assert comparison.table.loc[0, "verdict"] == "n/a: teacher_submission.csv missing in " + str(run_dir)
    assert "| lonely | 0.1 |" in render(comparison, "markdown")
    path = write_plot(comparison, tmp_path / "plot.png")
    with Image.open(path) as image:
        assert image.format == "PNG"


def test_sweep_settings_run_ratio_zero_once_and_check_groups() -> None:
    from pipeline.run.metrics import Timings
    from pipeline.run.sweep import SweepResult, summary, sweep_settings

    settings = sweep_settings([0, 0.1, 0.25, 0.1], ["public", "private", "public,private", "private,public"])
    assert settings == [(0, ("public", "private")), (0.1, ("public",)), (0.1, ("private",)),
                        (0.1, ("public", "private")), (0.25, ("public",)), (0.25, ("private",)),
                        (0.25, ("public", "private"))]
    with pytest.raises(ValueError, match="'public,stage2' must be a comma-separated subset of public,private"):
        sweep_settings([0.1], ["public,stage2"])
    text = summary([SweepResult(0.1, ("public",), 30.0, "a", "miss", Timings(20.0, 8.0)),
                    SweepResult(0.25, ("public",), 5.0, "b", "hit", Timings(0.0, 4.0, 1.5)),
                    SweepResult(0.33, ("public",), 7.0, "c", "hit", Timings(0.0, 6.0))])
    assert "first/later wall time: 30.0s / 6.0s (mean of 2) = 5.0x" in text
    assert "teacher hit    0.0s, control    1.5s, students    4.0s  b" in text
    assert "teacher miss   20.0s, control    nan" in text  # a run older than the control


@pytest.mark.slow
@pytest.mark.xdist_group("tensorflow")
def test_sweep_end_to_end_reuses_the_teacher_and_ends_with_the_table(
        tiny_fisheries: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ledger_path = tmp_path / "subs" / "ledger.sqlite"
    code = main(["sweep", "--competition", "fisheries", "--data", str(tiny_fisheries / "data"),
                 "--solution", str(tiny_fisheries / "solution.csv"), "--ratios", "0.25", "0",
                 "--groups", "public", "public,private", "--epochs", "2", "--image-size", "32", "--min-steps", "10",
                 "--width", "8", "--folds", "1", "--student-epochs", "1", "--pseudo-rounds", "1", "--on-shift", "ignore",
                 "--runs-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"),
                 "--ledger", str(ledger_path), "--resamples", "100"])
    out = capsys.readouterr().out
    assert code == 0
    ledger = Ledger(ledger_path)
    runs = ledger.runs("fisheries")
    assert list(zip(runs["pseudo_ratio"], runs["pseudo_groups"], runs["status"])) == [
        (0.25, "public", "done"), (0.25, "public,private", "done"), (0.0, "public,private", "done")]
    caches = [ledger.run(run_id)["metrics"]["teacher_cache"] for run_id in runs["run_id"]]
    assert caches == ["miss", "hit", "hit"]
    # the control never sees pseudo-labels: the second setting (same student budget) reuses the first one's
    controls = [[info.get("cache") for info in ledger.run(run_id)["metrics"]["control_training"]] for run_id in runs["run_id"]]
    assert controls[:2] == [["miss"], ["hit"]]
    assert runs[["lb_teacher_public", "lb_student_public", "lb_student_private"]].notna().all().all()
    assert "first/later wall time" in out and "fisheries: 3 runs, logloss" in out
    table = out[out.index("fisheries: 3 runs"):]
    for run_id in runs["run_id"]:
        assert run_id in table
    assert "same as teacher" in table  # ratio 0 submits the teacher's predictions
    with Image.open(ledger_path.parent / "fisheries" / "sweep.png") as image:
        assert image.format == "PNG"
