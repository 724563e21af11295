"""Runs killed with SIGKILL (issue 11, item 7): their ledger row becomes `interrupted` instead of `running`
forever, their id can be started again, and the temporaries their atomic writers left behind are removed."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline.__main__ import main
from pipeline.files import remove_stale_temporaries, write_text_atomic
from pipeline.ledger.store import Ledger
from pipeline.ledger.schema import MIGRATIONS

REPO = Path(__file__).resolve().parent.parent

START_AND_SLEEP = """
    import sys, time
    from pipeline.ledger.store import Ledger
    Ledger(sys.argv[1]).start_run(sys.argv[2], "fisheries", {"pseudo_ratio": 0.25}, "fp", 0)
    print("started", flush=True)
    time.sleep(600)
"""


def start_and_sleep(ledger: Path, run_id: str) -> subprocess.Popen:
    """A real process that starts a run in the ledger, then hangs (until the test kills it)."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(START_AND_SLEEP), str(ledger), run_id], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line == "started\n", proc.stderr.read() if proc.poll() is not None else line
    return proc


def kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_a_run_killed_with_sigkill_is_marked_interrupted_when_the_ledger_is_next_opened(tmp_path, capsys):
    path = tmp_path / "ledger.sqlite"
    proc = start_and_sleep(path, "r-killed")
    try:
        assert Ledger(path).run("r-killed")["status"] == "running"  # alive: left alone
    finally:
        kill9(proc)
    record = Ledger(path).run("r-killed")
    assert record["status"] == "interrupted"
    assert f"process {proc.pid}" in record["error"] and record["finished_at"] and record["wall_time_s"] >= 0
    assert main(["runs", "list", "--ledger", str(path)]) == 0
    assert "r-killed interrupted: interrupted: process" in capsys.readouterr().out


def test_an_interrupted_run_id_can_be_started_again_but_a_live_or_finished_one_cannot(tmp_path):
    path = tmp_path / "ledger.sqlite"
    proc = start_and_sleep(path, "r1")
    try:
        with pytest.raises(ValueError, match="already recorded"):  # its process is alive
            Ledger(path).start_run("r1", "fisheries", {}, "fp", 0)
    finally:
        kill9(proc)
    ledger = Ledger(path)
    ledger.start_run("r1", "fisheries", {"pseudo_ratio": 0.5}, "fp", 0)
    record = ledger.run("r1")
    assert record["status"] == "running" and record["pid"] == os.getpid() and record["config"]["pseudo_ratio"] == 0.5
    ledger.fail_run("r1", "RuntimeError: boom")
    with pytest.raises(ValueError, match="already recorded"):
        ledger.start_run("r1", "fisheries", {}, "fp", 0)


def test_rows_of_other_hosts_stay_running_and_a_reused_pid_is_not_taken_for_the_run(tmp_path):
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    for run_id in ("elsewhere", "reused", "mine"):
        ledger.start_run(run_id, "fisheries", {}, "fp", 0)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE runs SET hostname = 'another-machine', pid = 999999999 WHERE run_id = 'elsewhere'")
        # our own pid, but recorded with another start time: a dead run whose pid this process reused
        db.execute("UPDATE runs SET process_start = '1' WHERE run_id = 'reused'")
    assert Ledger(path).mark_interrupted() == []  # already marked on open
    statuses = dict(zip(*Ledger(path).runs()[["run_id", "status"]].to_dict("list").values()))
    assert statuses == {"elsewhere": "running", "reused": "interrupted", "mine": "running"}


def test_a_v3_ledger_migrates_keeping_every_column_and_leaves_rows_without_a_pid_running(tmp_path):
    """Rows written before pids were recorded cannot be judged: they are left as they are."""
    path = tmp_path / "ledger.sqlite"
    with sqlite3.connect(path) as db:  # a v3 ledger, built by the released migration steps
        db.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
        for version, steps in enumerate(MIGRATIONS[:3]):
            for statement in steps:
                db.execute(statement)
            db.execute("INSERT INTO schema_version VALUES (?, 'then')", (version + 1,))
        db.execute("INSERT INTO runs (run_id, competition, status, started_at, config_json)"
                   " VALUES ('old-running', 'fisheries', 'running', '2026-01-01T00:00:00+00:00', '{}')")
        db.execute("INSERT INTO runs (run_id, competition, status, started_at, config_json, lb_student_private,"
                   " public_gain_json, shift_json) VALUES ('old-done', 'fisheries', 'done', '2026-01-02T00:00:00+00:00',"
                   " '{}', 0.61, '{\"gain\": 0.1}', '{\"worst\": \"OK\"}')")
    ledger = Ledger(path)
    assert ledger.schema_version() == 6 and ledger.run("old-running")["status"] == "running"
    done = ledger.run("old-done")
    assert (done["lb_student_private"], done["public_gain"], done["shift"]) == (0.61, {"gain": 0.1}, {"worst": "OK"})
    ledger.start_run("new", "fisheries", {}, "fp", 0)
    assert list(ledger.runs()["run_id"]) == ["old-running", "old-done", "new"]


KILLED_WRITER = """
    import sys
    from pathlib import Path
    from pipeline.cache import entries as cache
    from pipeline.files import write_text_atomic

    def hang(path):
        path.write_text("half")
        print("writing", flush=True)
        import time; time.sleep(600)

    folder = Path(sys.argv[1])
    if sys.argv[2] == "file":  # killed between writing the temporary and renaming it into place
        import os

        def stop_before_rename(src, dst):
            print("writing", flush=True)
            import time; time.sleep(600)
        os.replace = stop_before_rename
        write_text_atomic(folder / "submission.csv", "id,a\\n")
    else:
        cache.write_entry(folder / "key", {"a.json": hang})
"""


@pytest.mark.parametrize("kind", ["file", "cache"])
def test_temporaries_of_a_killed_writer_are_removed_and_a_live_writers_are_kept(tmp_path, kind):
    folder = tmp_path / "run"
    folder.mkdir()
    killed = subprocess.Popen([sys.executable, "-c", textwrap.dedent(KILLED_WRITER), str(folder), kind], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    live = subprocess.Popen([sys.executable, "-c", textwrap.dedent(KILLED_WRITER), str(folder), kind], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for proc in (killed, live):
            assert proc.stdout.readline() == "writing\n", proc.stderr.read()
        kill9(killed)
        leftovers = sorted(p.name for p in folder.iterdir())
        assert len(leftovers) == 2 and all(name.endswith(".tmp") for name in leftovers)
        removed = remove_stale_temporaries(folder)
        assert [p.name for p in removed] == [n for n in leftovers if f".pid{killed.pid}." in n]
        assert [p.name for p in folder.iterdir()] == [n for n in leftovers if f".pid{live.pid}." in n]
    finally:
        live.kill()
        live.wait(timeout=30)
    remove_stale_temporaries(folder)
    assert list(folder.iterdir()) == []


def test_old_temporaries_without_a_pid_are_removed_only_when_old(tmp_path):
    old, new, kept = tmp_path / ".x.csv.abc.tmp", tmp_path / ".y.csv.def.tmp", tmp_path / "notes.tmp"
    for path in (old, new, kept):
        path.write_text("x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    write_text_atomic(tmp_path / "done.csv", "id\n")
    assert remove_stale_temporaries(tmp_path) == [old]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([new.name, kept.name, "done.csv"])
