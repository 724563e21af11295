"""The run ledger on real SQLite files: records, migration, corruption, concurrency, crashes, CLI."""
from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from pipeline.__main__ import main
from pipeline.files import sha256_of
from pipeline.ledger.schema import SCHEMA_VERSION
from pipeline.ledger.store import Ledger

REPO = Path(__file__).resolve().parent.parent


def metrics_for(run_id: str, student_public: float = 0.9) -> dict:
    return {
        "run_id": run_id, "competition": "fisheries", "metric": "logloss", "greater_is_better": False,
        "holdout": {"teacher": 1.2, "student": 1.1},
        "leaderboard": {"teacher": {"public": 1.0, "private": 1.05},
                        "student": {"public": student_public, "private": 0.95}},
        "pseudo": {"target": 40, "selected": 37, "stop_reason": "ratio reached",
                   "by_group": {"public": 20, "private": 17}, "by_class": {"ALB": 30, "NoF": 7},
                   "by_group_class": {"public": {"ALB": 16, "NoF": 4}, "private": {"ALB": 14, "NoF": 3}},
                   "mean_confidence": {"public": 0.81, "private": 0.78}},
        "versions": {"python": "3.11", "tensorflow": "2.21.0"},
    }


def finished_run(ledger: Ledger, tmp_path: Path, run_id: str, ratio: float = 0.25, public: float = 0.9) -> Path:
    submission = tmp_path / run_id / "submission.csv"
    submission.parent.mkdir(parents=True, exist_ok=True)
    submission.write_text(f"image,ALB\n{run_id}.jpg,{ratio}\n")
    ledger.start_run(run_id, "fisheries", {"pseudo_ratio": ratio, "pseudo_groups": ["public", "private"]}, "fp1", 3)
    ledger.finish_run(run_id, metrics_for(run_id, public), submission, wall_time_s=12.5)
    return submission


def run_python(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_finished_run_records_everything(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.start_run("r1", "fisheries", {"pseudo_ratio": 0.25, "pseudo_groups": ["public"],
                                         "extra": {"kaggle_key": "s3cret", "tile": 2}}, "fp1", 7)
    assert ledger.runs().loc[0, "status"] == "running"
    submission = tmp_path / "submission.csv"
    submission.write_text("image,ALB\na.jpg,0.5\n")
    ledger.finish_run("r1", {**metrics_for("r1"), "config": {"api_token": "tok3n"}}, submission, wall_time_s=12.5)

    row = ledger.runs("fisheries").iloc[0]
    assert (row["status"], row["seed"], row["data_fingerprint"]) == ("done", 7, "fp1")
    assert (row["holdout_teacher"], row["holdout_student"]) == (1.2, 1.1)
    assert (row["lb_teacher_public"], row["lb_student_public"], row["lb_student_private"]) == (1.0, 0.9, 0.95)
    assert (row["pseudo_ratio"], row["pseudo_groups"], row["pseudo_selected"]) == (0.25, "public", 37)
    assert row["submission_sha256"] == sha256_of(submission) and row["wall_time_s"] == 12.5
    assert ledger.runs("amazon").empty

    record = ledger.run("r1")
    assert record["pseudo"]["by_group_class"]["private"] == {"ALB": 14, "NoF": 3}
    assert record["pseudo"]["mean_confidence"]["public"] == 0.81
    assert record["config"]["extra"] == {"kaggle_key": "<redacted>", "tile": 2}
    stored = (tmp_path / "ledger.sqlite").read_bytes().decode("latin-1")
    assert "s3cret" not in stored and "tok3n" not in stored and record["metrics"]["config"]["api_token"] == "<redacted>"
    assert record["versions"]["numpy"] and record["versions"]["tensorflow"] == "2.21.0"
    assert record["started_at"] <= record["finished_at"]

    ledger.record_shift("r1", {"adversarial_auc": 0.71, "verdict": "shift"})
    assert ledger.run("r1")["shift"]["adversarial_auc"] == 0.71


def test_start_before_the_fingerprint_is_known(tmp_path: Path) -> None:
    """start_run comes before anything can fail; the fingerprint arrives with the metrics."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.start_run("early", "fisheries", {}, None, 0)
    submission = tmp_path / "submission.csv"
    submission.write_text("image,ALB\na.jpg,1\n")
    ledger.finish_run("early", {**metrics_for("early"), "data_fingerprint": "abc123"}, submission, 1.0)
    assert ledger.run("early")["data_fingerprint"] == "abc123"


def test_failed_and_invalid_runs(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.start_run("bad", "fisheries", {}, "fp", 0)
    ledger.fail_run("bad", "Traceback ...\nRuntimeError: out of memory")
    record = ledger.run("bad")
    assert record["status"] == "failed" and record["error"].endswith("out of memory")
    assert record["wall_time_s"] >= 0 and record["finished_at"]
    with pytest.raises(ValueError, match="already recorded"):
        ledger.start_run("bad", "fisheries", {}, "fp", 0)
    with pytest.raises(ValueError, match="never started"):
        ledger.fail_run("ghost", "x")
    ledger.start_run("r2", "fisheries", {}, "fp", 0)
    with pytest.raises(ValueError, match="does not exist"):
        ledger.finish_run("r2", metrics_for("r2"), tmp_path / "missing.csv", 1.0)
    with pytest.raises(ValueError, match="no single run"):
        ledger.run("zzz")


def test_submissions_scores_and_lookup(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    submission = finished_run(ledger, tmp_path, "r1")
    sha = sha256_of(submission)
    assert ledger.run_for_sha256(sha) == "r1" and ledger.run_for_sha256("0" * 64) is None

    ledger.add_submission(None, sha, "ref-1", "first try", "pending", None, None)
    assert ledger.runs().loc[0, "kaggle_public"] != ledger.runs().loc[0, "kaggle_public"]  # NaN: not scored yet
    assert ledger.update_submission("ref-1", "complete", 0.91, 0.93) is True
    assert ledger.update_submission("ref-unknown", "complete", 0.5, 0.5) is False
    row = ledger.runs().iloc[0]  # found through the sha256 although run_id was not given
    assert (row["kaggle_public"], row["kaggle_private"]) == (0.91, 0.93)

    ledger.add_submission("r1", sha, "ref-1", "first try", "complete", 0.92, None)  # same ref: updated, not added
    subs = ledger.run("r1")["submissions"]
    assert len(subs) == 1 and subs[0]["public_score"] == 0.92 and subs[0]["run_id"] == "r1"


def test_migrates_a_v1_file_built_by_hand(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL);
        INSERT INTO schema_version VALUES (1, '2026-01-01T00:00:00+00:00');
        CREATE TABLE runs (run_id TEXT PRIMARY KEY, competition TEXT NOT NULL, status TEXT NOT NULL,
            started_at TEXT NOT NULL, finished_at TEXT, git_commit TEXT, git_dirty INTEGER, data_fingerprint TEXT,
            config_json TEXT NOT NULL, seed INTEGER, versions_json TEXT, metric TEXT, greater_is_better INTEGER,
            holdout_teacher REAL, holdout_student REAL, pseudo_json TEXT, submission_path TEXT,
            submission_sha256 TEXT, wall_time_s REAL, error TEXT, metrics_json TEXT);
        CREATE TABLE submissions (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT, sha256 TEXT NOT NULL,
            ref TEXT UNIQUE, message TEXT, status TEXT, public_score REAL, private_score REAL,
            submitted_at TEXT NOT NULL, synced_at TEXT);
    """)
    old_metrics = {"leaderboard": {"teacher": {"public": 0.7, "private": 0.71}, "student": {"public": 0.6, "private": 0.65}}}
    db.execute("INSERT INTO runs (run_id, competition, status, started_at, config_json, seed, holdout_student,"
               " metrics_json) VALUES ('old', 'fisheries', 'done', '2026-01-01T00:00:00+00:00', '{\"pseudo_ratio\": 0.1}',"
               " 1, 0.8, ?)", (json.dumps(old_metrics),))
    db.commit()
    db.close()

    ledger = Ledger(path)
    assert ledger.schema_version() == SCHEMA_VERSION == 6
    row = ledger.runs().iloc[0]
    assert (row["run_id"], row["holdout_student"], row["pseudo_ratio"]) == ("old", 0.8, 0.1)
    assert (row["lb_teacher_public"], row["lb_student_public"], row["lb_student_private"]) == (0.7, 0.6, 0.65)
    finished_run(ledger, tmp_path, "new")
    assert list(Ledger(path).runs()["run_id"]) == ["old", "new"]


def test_corrupt_file_is_a_clear_error_and_never_overwritten(tmp_path: Path) -> None:
    noise = tmp_path / "noise.sqlite"
    noise.write_bytes(random.Random(0).randbytes(8192))
    # A file with the SQLite header whose other bytes are garbage: SQLite itself must refuse it.
    broken = tmp_path / "broken.sqlite"
    finished_run(Ledger(broken), tmp_path, "r1")
    broken.write_bytes(broken.read_bytes()[:16] + random.Random(1).randbytes(broken.stat().st_size - 16))
    for path in (noise, broken):
        before = path.read_bytes()
        with pytest.raises(ValueError) as error:
            Ledger(path)
        assert str(path) in str(error.value) and "mv " in str(error.value)
        assert path.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(path.name)) == [path.name]


def test_other_sqlite_files_and_newer_schemas_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE photos (id INTEGER)")
    with pytest.raises(ValueError, match="not a run ledger"):
        Ledger(other)
    newer = tmp_path / "newer.sqlite"
    Ledger(newer)
    with sqlite3.connect(newer) as db:
        db.execute("INSERT INTO schema_version VALUES (99, 'future')")
    with pytest.raises(ValueError, match="newer than this code"):
        Ledger(newer)
    with pytest.raises(ValueError, match="is a folder"):
        Ledger(tmp_path)


def test_a_read_only_ledger_reads_and_never_writes(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    finished_run(Ledger(path), tmp_path, "r1")
    before = path.read_bytes()
    ledger = Ledger(path, read_only=True)
    assert list(ledger.runs()["run_id"]) == ["r1"] and ledger.run("r1")["status"] == "done"
    assert ledger.schema_version() == SCHEMA_VERSION
    with pytest.raises(RuntimeError, match="opened read-only"):
        ledger.start_run("r2", "fisheries", {}, "fp", 0)
    assert path.read_bytes() == before

    empty = tmp_path / "empty.sqlite"
    empty.touch()
    with pytest.raises(ValueError, match=f"ledger {empty} is empty"):
        Ledger(empty, read_only=True)
    assert empty.read_bytes() == b""
    with pytest.raises(ValueError, match="does not exist"):
        Ledger(tmp_path / "new" / "ledger.sqlite", read_only=True)
    assert not (tmp_path / "new").exists()
    with sqlite3.connect(path) as db:  # an older schema: reading it would need a migration, which writes
        db.execute("DELETE FROM schema_version WHERE version = ?", (SCHEMA_VERSION,))
    older = path.read_bytes()
    with pytest.raises(ValueError, match=f"schema version {SCHEMA_VERSION - 1}, older .* opened read-only"):
        Ledger(path, read_only=True)
    assert path.read_bytes() == older


WRITER = """
    import sys, time
    from pathlib import Path
    from pipeline.ledger.store import Ledger
    path, name, go, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
    ledger = Ledger(path)
    while not go.exists():
        time.sleep(0.01)
    for i in range(25):
        run_id = f"{name}-{i}"
        csv = out / f"{run_id}.csv"
        csv.write_text(run_id)
        ledger.start_run(run_id, "fisheries", {"writer": name}, "fp", i)
        ledger.finish_run(run_id, {"holdout": {"student": i}}, csv, 0.1)
"""


def test_two_processes_writing_at_once_both_land(tmp_path: Path) -> None:
    path, go = tmp_path / "ledger.sqlite", tmp_path / "go"
    writers = [run_python(WRITER, str(path), name, str(go), str(tmp_path)) for name in ("a", "b")]
    time.sleep(1.0)  # both have opened (and raced to create) the ledger; now release them together
    go.touch()
    for writer in writers:
        _, stderr = writer.communicate(timeout=120)
        assert writer.returncode == 0, stderr
    runs = Ledger(path).runs()
    assert len(runs) == 50 and set(runs["status"]) == {"done"}
    assert sorted(runs["run_id"]) == sorted(f"{n}-{i}" for n in "ab" for i in range(25))


def test_a_busy_ledger_makes_writers_wait_not_fail(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    Ledger(path)
    holder = run_python("""
        import sqlite3, sys, time
        db = sqlite3.connect(sys.argv[1], isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        print("locked", flush=True)
        time.sleep(1.5)
        db.execute("COMMIT")
    """, str(path))
    assert holder.stdout.readline().strip() == "locked"
    started = time.monotonic()
    Ledger(path).start_run("waited", "fisheries", {}, "fp", 0)
    assert time.monotonic() - started > 0.5  # it really waited for the other writer's lock
    holder.communicate(timeout=30)
    assert Ledger(path).run("waited")["status"] == "running"


def test_a_crashing_run_is_recorded_as_failed_and_the_ledger_stays_readable(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    finished_run(Ledger(path), tmp_path, "good")
    crash = run_python("""
        import sys, traceback
        from pipeline.ledger.store import Ledger
        ledger = Ledger(sys.argv[1])
        ledger.start_run("crash", "fisheries", {}, "fp", 0)
        try:
            raise RuntimeError("student training diverged: loss is NaN")
        except Exception:
            ledger.fail_run("crash", traceback.format_exc())
            raise
    """, str(path))
    _, stderr = crash.communicate(timeout=60)
    assert crash.returncode == 1 and "loss is NaN" in stderr
    # A process killed in the middle of a big write transaction (enough to spill pages into the file, leaving
    # a hot journal): SQLite rolls it back on the next open and nothing committed is lost.
    killed = run_python("""
        import os, sys
        from pipeline.ledger.store import Ledger
        ledger = Ledger(sys.argv[1])
        with ledger._transaction() as db:
            db.execute("UPDATE runs SET status = 'failed', error = 'half-written'")
            for i in range(300):
                db.execute("INSERT INTO runs (run_id, competition, status, started_at, config_json)"
                           " VALUES (?, 'x', 'running', 'now', ?)", (f"junk{i}", "x" * 65536))
            os._exit(9)
    """, str(path))
    killed.communicate(timeout=60)
    assert killed.returncode == 9 and Path(f"{path}-journal").stat().st_size > 0
    ledger = Ledger(path)
    runs = ledger.runs().set_index("run_id")
    assert list(runs.index) == ["good", "crash"]
    assert runs.loc["good", "status"] == "done" and pd.isna(runs.loc["good", "error"])
    assert runs.loc["crash", "status"] == "failed"
    assert "RuntimeError: student training diverged" in ledger.run("crash")["error"]


def test_runs_cli_list_show_score(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    finished_run(ledger, tmp_path, "2026-run-a")
    ledger.start_run("2026-run-b", "fisheries", {}, "fp", 0)
    ledger.fail_run("2026-run-b", "Traceback\nValueError: bad image")
    assert main(["runs", "list", "--ledger", str(path)]) == 0
    out = capsys.readouterr().out
    assert "2026-run-a" in out and "2026-run-b failed: ValueError: bad image" in out

    assert main(["runs", "score", "2026-run-a", "--public", "0.88", "--private", "0.9", "--ledger", str(path)]) == 0
    capsys.readouterr()
    assert main(["runs", "show", "2026-run-a", "--ledger", str(path)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["submissions"][0]["public_score"] == 0.88 and shown["pseudo"]["selected"] == 37
    assert Ledger(path).runs().set_index("run_id").loc["2026-run-a", "kaggle_private"] == 0.9

    assert main(["runs", "score", "2026-run-b", "--public", "0.5", "--ledger", str(path)]) == 2
    assert "no submission recorded" in capsys.readouterr().err
    assert main(["runs", "show", "2026-run", "--ledger", str(path)]) == 2  # ambiguous prefix
    assert "2026-run-a, 2026-run-b" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.xdist_group("tensorflow")
def test_the_pipeline_records_a_run_that_fails_on_bad_data(tmp_path: Path) -> None:
    """run_pipeline on data it rejects: the run is in the ledger as failed, with the real error."""
    from pipeline.run.config import RunConfig
    from pipeline.run.stages import run_pipeline

    from PIL import Image

    data = tmp_path / "data"
    for folder, count in (("train/ALB", 3), ("train/BET", 3), ("test_stg1", 2)):  # passes preflight, too few to split
        (data / folder).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (40, 30), (i * 40, 90, 200)).save(data / folder / f"img_{folder[:4]}{i}.jpg")
    cfg = RunConfig(competition="fisheries", data=str(data), runs_dir=str(tmp_path / "runs"),
                    cache_dir=str(tmp_path / "cache"), ledger=str(tmp_path / "ledger.sqlite"), epochs=1)
    with pytest.raises(ValueError) as error:
        run_pipeline(cfg)
    runs = Ledger(tmp_path / "ledger.sqlite").runs()
    assert len(runs) == 1 and runs.loc[0, "status"] == "failed"
    assert str(error.value) in runs.loc[0, "error"]  # the data problem, not a ledger complaint
