"""Hostile input around a run's outputs, case by case: each ends in one `error:` line (UserError: exit 2, no
traceback), or a correct result with a warning, and nothing finished is lost.

- names a CSV, JSON or the ledger cannot hold (not UTF-8) and a class named like the submission's id column:
  refused before training, per plugin where they apply.
- `runs rescore` after submission.csv was edited, for every plugin: the ids come from probabilities.npz, an edited
  copy is refused.
- a full disk under the run folder or the cache: one error line naming where, no partial file, earlier files kept.
- a ledger locked when a run finishes: the outputs stay, one warning line, `runs record` records the run later.

The full-disk cases write to a real tiny tmpfs (mounted for the test, unmounted after; skipped where mounting
is not allowed). The cases after training reuse the shared tiny runs (tests/conftest.py `tiny_plugin_run`) and
replay the fisheries one's outputs into a new run, in place of training; the cases before training train nothing.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import UserError
from pipeline.files import NoSpaceLeft, sha256_of, write_bytes_atomic, write_text_atomic
from pipeline.ledger.connection import BUSY_TIMEOUT_ENV
from pipeline.ledger.store import Ledger
from pipeline.plugin.registry import get_competition, list_competitions
from tests.test_hostile import REPO, assert_user_error, cli, copy_data, decide, edit_csv

RUN = "tiny-fisheries"


def trained(test):
    """Tests that read the shared tiny runs: each trains once per session (tests/test_rescore.py too)."""
    return pytest.mark.slow(pytest.mark.xdist_group("plugin-runs")(test))


def copy_run(tiny_plugin_run, name: str, tmp_path: Path) -> Path:
    """A writable copy of the plugin's shared tiny run folder."""
    target = tmp_path / "runs" / name / f"tiny-{name}"
    shutil.copytree(tiny_plugin_run(name).run_dir, target)
    return target


@pytest.fixture
def run_copy(tiny_plugin_run, tmp_path) -> Path:
    """A writable copy of the shared tiny fisheries run folder."""
    return copy_run(tiny_plugin_run, "fisheries", tmp_path)


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def temporaries(folder: Path) -> list[str]:
    return sorted(str(p) for p in Path(folder).rglob(".*") if p.name.endswith(".tmp"))


def in_process(capsys, *args: str) -> subprocess.CompletedProcess:
    """`python -m pipeline ARGS` in this process (cheaper than `cli` once TensorFlow is imported here)."""
    from pipeline.__main__ import main

    code = main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def one_line(stderr: str, prefix: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def submit_args(data: Path, tmp: Path, *more: str) -> list[str]:
    """A run of the tiny fisheries sample; its training is replaced by `replay_training` in these tests."""
    return ["submit", "--competition", "fisheries", "--data", str(data), "--run-name", RUN, "--image-size", "32",
            "--folds", "1", "--on-shift", "ignore", "--runs-dir", str(tmp / "runs"), "--cache-dir", str(tmp / "cache"),
            "--ledger", str(tmp / "ledger.sqlite"), *more]


def replay_training(monkeypatch, finished: Path, after_outputs=None) -> None:
    """Make `train_and_submit` write the shared tiny run's finished outputs into the new run folder (what training
    would write), call `after_outputs(run_dir)`, then write metrics.json as outputs.write_metrics does."""
    import pipeline.run.stages

    def train_and_submit(cfg, competition, data_dir, items, run_id, run_dir, *args, **kwargs):
        for path in finished.iterdir():
            if path.name not in ("config.json", "metrics.json"):
                shutil.copy2(path, run_dir / path.name)
        metrics = json.loads((finished / "metrics.json").read_text())
        metrics["submission"]["path"] = str(run_dir / "submission.csv")
        if after_outputs:
            after_outputs(run_dir)
        write_text_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        return metrics

    monkeypatch.setattr(pipeline.run.stages, "train_and_submit", train_and_submit)


# ---- names a submission, JSON or the ledger cannot hold, refused before training ------------------------------

NOT_UTF8 = os.fsdecode(b"img_\xff\xfe.jpg")  # a Linux file name of bytes that are not UTF-8, as Python lists it
SHOWN = "img_\\xff\\xfe.jpg"  # how a message shows it


PLACES = ("train image", "class folder", "test image", "data folder")  # where a name can become data


def labels_are_folders(train: pd.DataFrame) -> bool:
    """Whether a plugin takes a train item's label from its folder's name (else from a table, as amazon's CSV)."""
    return Path(train["path"].iloc[0]).parent.name in train["labels"].iloc[0]


def add_not_utf8(name: str, data: Path, where: str) -> None:
    """Copy an image of the sample under a name that is not valid UTF-8, at `where` in the plugin's layout: beside
    its first train or test item, or as a folder beside that train item's folder."""
    competition = get_competition(name)
    image = Path(competition.train_items(data)["path"].iloc[0])
    if where == "class folder":
        (image.parent.parent / NOT_UTF8).mkdir()
        shutil.copy(image, image.parent.parent / NOT_UTF8 / image.name)
    else:
        beside = image if where == "train image" else Path(competition.test_items(data)["path"].iloc[0])
        shutil.copy(image, beside.parent / NOT_UTF8)


@pytest.mark.parametrize("where", PLACES, ids=[w.replace(" ", "_") for w in PLACES])
@pytest.mark.parametrize("name", list_competitions())
def test_a_name_that_is_not_utf8_is_refused_before_training_showing_its_bytes_or_is_never_read(name, where, plugin_sample,
                                                                                               tmp_path):
    """Every test name is an id and every folder-labeled train folder a class, so such a name is refused; a train
    folder a plugin lists from its own table (amazon's CSV) is never read for names, so it is no item."""
    sample = plugin_sample(name, small=True) / "data"
    if where == "data folder":
        data = copy_data(sample, tmp_path / os.fsdecode(b"caf\xe9") / "data")
    else:
        data = copy_data(sample, tmp_path / "data")
        add_not_utf8(name, data, where)
    if where in ("train image", "class folder") and not labels_are_folders(get_competition(name).train_items(sample)):
        train, _ = decide(name, data, tmp_path)
        assert not any(NOT_UTF8 in p for p in train["path"])
        return
    with pytest.raises(UserError) as error:
        decide(name, data, tmp_path)
    message = str(error.value)
    message.encode("utf-8")  # printable and writable as it is
    shown = "caf\\xe9" if where == "data folder" else SHOWN.split(".")[0] if where == "class folder" else SHOWN
    assert shown in message and ("rename" in message or "not classes of this competition" in message), message


def test_a_test_file_name_that_is_not_utf8_is_one_error_line_before_any_run_folder(plugin_sample, tmp_path, capsys):
    data = copy_data(plugin_sample("imagefolder", small=True) / "data", tmp_path / "data")
    add_not_utf8("imagefolder", data, "test image")
    proc = in_process(capsys, "submit", "--competition", "imagefolder", "--data", str(data), "--runs-dir", str(tmp_path / "runs"),
               "--no-ledger")
    assert_user_error(proc, f"path '{data.resolve() / 'test' / 'public' / SHOWN}'", "is not valid UTF-8", "rename the file")
    assert not (tmp_path / "runs").exists()


# ---- a class named like the submission's id column ----------------------------------------------------------

def add_id_class(name: str, data: Path) -> None:
    """A class called `id`: a class folder where classes are folders, a tag where they are tags."""
    if name == "amazon":
        edit_csv(data / "train_v2.csv", lambda t: t.assign(tags=t["tags"].where(t.index != 0, t["tags"] + " id")))
        return
    image = next(p for p in sorted((data / "train").rglob("*")) if p.is_file())
    (data / "train" / "id").mkdir()
    for k in range(3):
        shutil.copy(image, data / "train" / "id" / f"copy{k}{image.suffix}")


ID_CLASS_ERRORS = {"fisheries": "class folders ['id'] that are not classes of this competition",
                   "imagefolder": "has the name of the submission's id column",
                   "amazon": "tag 'id' is not one of the 17 Amazon tags"}


@pytest.mark.parametrize("name", list_competitions())
def test_a_class_named_id_is_refused_before_training(name, plugin_sample, tmp_path):
    data = copy_data(plugin_sample(name, small=True) / "data", tmp_path / "data")
    add_id_class(name, data)
    with pytest.raises(UserError, match=re.escape(ID_CLASS_ERRORS[name])):
        decide(name, data, tmp_path)


def test_the_contract_refuses_class_names_a_submission_cannot_hold():
    """Checked for every plugin whose classes come from the data, before training (preflight calls the contract)."""
    from pipeline.plugin.contract import check_class_names

    imagefolder = get_competition("imagefolder")
    check_class_names(imagefolder, ["cat", "dog", "café"])
    for classes, message in ((["cat", "id"], "class 'id' has the name of the submission's id column"),
                             (["cat", NOT_UTF8], f"class '{SHOWN}' is not valid UTF-8"),
                             (["cat", "cat"], "repeats a class name")):
        with pytest.raises(UserError, match=re.escape(message)):
            check_class_names(imagefolder, classes)


# ---- runs rescore after submission.csv was edited (issue: rescore validated against the edited file's ids) ----

def submission_ids(run: Path) -> list[str]:
    table = pd.read_csv(run / "control_submission.csv", dtype=str, keep_default_na=False)
    return table[table.columns[0]].tolist()  # every plugin's submission starts with its id column


@trained
@pytest.mark.parametrize("name", list_competitions())
def test_rescore_refuses_a_submission_csv_that_lost_rows_naming_it_and_the_counts(name, tiny_plugin_run, tmp_path, capsys):
    run = copy_run(tiny_plugin_run, name, tmp_path)
    table = pd.read_csv(run / "submission.csv", dtype=str, keep_default_na=False)
    table.drop(index=range(3, 9)).to_csv(run / "submission.csv", index=False)  # six rows deleted by hand
    proc = in_process(capsys, "runs", "rescore", str(run), "--write", "control")
    assert_user_error(proc, f"{run / 'submission.csv'} does not hold the run's submission ids",
                      f"6 of its {len(table)} ids are missing", "0 are not the run's", "_submission.csv")
    assert not (run / "rescored_control_submission.csv").exists()

    id_column = table.columns[0]
    table.assign(**{id_column: table[id_column].where(table.index != 0, "stray.jpg")}).to_csv(run / "submission.csv", index=False)
    proc = in_process(capsys, "runs", "rescore", str(run), "--write", "control")
    assert_user_error(proc, f"1 of its {len(table)} ids are missing", "1 are not the run's (e.g. ['stray.jpg'])")


@trained
@pytest.mark.parametrize("name", list_competitions())
def test_rescore_writes_every_id_of_the_run_from_probabilities_npz_even_without_submission_csv(name, tiny_plugin_run,
                                                                                               tmp_path):
    from pipeline.run.rescore import rescore

    run = copy_run(tiny_plugin_run, name, tmp_path)
    with np.load(run / "probabilities.npz") as npz:
        assert npz["submission_ids"].tolist() == submission_ids(run)  # the run keeps its submission's ids, in order
    (run / "submission.csv").rename(run.parent / "my-edited-submission.csv")  # moved out, as the error says
    result = rescore(run, write="control")
    assert result.written.read_bytes() == (run / "control_submission.csv").read_bytes()


@trained
@pytest.mark.parametrize("name", list_competitions())
def test_a_run_older_than_the_kept_ids_is_rescored_only_with_the_submission_csv_it_wrote(name, tiny_plugin_run, tmp_path):
    from pipeline.run.rescore import rescore

    run = copy_run(tiny_plugin_run, name, tmp_path)
    with np.load(run / "probabilities.npz") as npz:
        arrays = {key: npz[key] for key in npz.files if key != "submission_ids"}
    np.savez_compressed(run / "probabilities.npz", **arrays)  # as runs wrote it before the ids were kept
    assert rescore(run, write="teacher").written.read_bytes() == (run / "teacher_submission.csv").read_bytes()
    lines = (run / "submission.csv").read_text().splitlines()
    (run / "submission.csv").write_text("\n".join(lines[:-5]) + "\n")
    with pytest.raises(UserError, match=r"submission.csv cannot be trusted .*its sha256 differs.*predates the ids"):
        rescore(run, write="student")
    assert not (run / "rescored_student_submission.csv").exists()


# ---- a full disk under --runs-dir or --cache-dir ------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """`small_disk(kib)`: a real tmpfs of that size (a full disk on demand), unmounted after the test."""
    mounted = []

    def mount(kib: int) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(folder)], capture_output=True,
                              text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> None:
    """Fill the file system of `folder` until no byte is left."""
    with open(folder / "filler", "wb", buffering=0) as handle:
        for size in (1 << 16, 4096, 512, 1):
            try:
                while True:
                    handle.write(b"\0" * size)
            except OSError:
                continue


def test_an_atomic_write_on_a_full_disk_is_named_and_leaves_the_earlier_file_as_it_was(small_disk):
    disk = small_disk(64)
    target = disk / "submission.csv"
    write_text_atomic(target, "image,ALB\na.jpg,0.5\n")
    fill(disk)
    with pytest.raises(NoSpaceLeft) as error:
        write_bytes_atomic(target, b"image,ALB\n" + b"b.jpg,0.25\n" * 5000)
    assert f"no space left on device writing {target}" in str(error.value) and "\n" not in str(error.value)
    assert target.read_text() == "image,ALB\na.jpg,0.5\n" and temporaries(disk) == []


@trained
def test_a_full_disk_under_the_run_folder_is_one_error_line_and_keeps_every_earlier_output(run_copy, small_disk):
    disk = small_disk(sum(p.stat().st_size for p in run_copy.iterdir()) // 1024 + 64)
    run_dir = disk / "runs" / "fisheries" / RUN
    shutil.copytree(run_copy, run_dir)
    before = contents(run_dir)
    fill(disk)
    proc = cli("runs", "rescore", str(run_dir), "--write", "teacher")
    assert_user_error(proc, f"no space left on device writing {run_dir / 'rescored_teacher_submission.csv'}",
                      "the write was undone")
    assert contents(run_dir) == before and temporaries(disk) == []


@trained
def test_a_run_that_fills_the_disk_after_training_is_one_error_line_and_keeps_its_submissions(
        tiny_plugin_run, plugin_sample, tmp_path, small_disk, monkeypatch, capsys):
    from pipeline.__main__ import main

    finished = tiny_plugin_run("fisheries").run_dir
    disk = small_disk(sum(p.stat().st_size for p in finished.iterdir()) // 1024 + 64)
    replay_training(monkeypatch, finished, after_outputs=lambda run_dir: fill(disk))
    args = submit_args(plugin_sample("fisheries", small=True) / "data", tmp_path)
    args[args.index("--runs-dir") + 1] = str(disk)
    assert main(args) == 2
    line = one_line(capsys.readouterr().err, "error: ")
    run_dir = disk / "fisheries" / RUN
    for fragment in (f"run {RUN} stopped: no space left on device writing {run_dir / 'metrics.json'}",
                     f"submit --resume {RUN} --competition fisheries --runs-dir {disk}"):
        assert fragment in line, (fragment, line)
    kept = contents(run_dir)
    assert "metrics.json" not in kept and temporaries(disk) == []
    for name in ("submission.csv", "control_submission.csv", "probabilities.npz"):
        assert kept[name] == (finished / name).read_bytes()
    record = Ledger(tmp_path / "ledger.sqlite").run(RUN)
    assert record["status"] == "failed" and "NoSpaceLeft" in record["error"]


@pytest.mark.slow
@pytest.mark.xdist_group("plugin-runs")
def test_a_full_cache_folder_stops_the_run_with_one_error_line_and_no_half_written_entry(plugin_sample, tmp_path,
                                                                                         small_disk, monkeypatch, capsys):
    from pipeline.data import image_store
    from pipeline.__main__ import main

    # Room for the image store when the run starts (a disk already too full is refused by the preflight's size
    # estimate, tests/test_hostile_options.py), filled by something else while the store is written.
    disk = small_disk(4096)
    decode_all = image_store.decode_all

    def filling_while_decoding(*args, **kwargs):
        fill(disk)
        yield from decode_all(*args, **kwargs)

    monkeypatch.setattr(image_store, "decode_all", filling_while_decoding)
    args = submit_args(plugin_sample("fisheries", small=True) / "data", tmp_path)
    args[args.index("--cache-dir") + 1] = str(disk)
    assert main(args) == 2
    line = one_line(capsys.readouterr().err, "error: ")
    assert f"run {RUN} stopped: no space left on device writing" in line and str(disk) in line, line
    assert f"submit --resume {RUN}" in line
    assert [p.name for p in disk.rglob("*") if p.name != "filler" and p.is_file()] == []  # no partial cache entry
    assert Ledger(tmp_path / "ledger.sqlite").run(RUN)["status"] == "failed"


# ---- a ledger locked when the run finishes ------------------------------------------------------------------

HOLD_LOCK = """
    import sqlite3, sys
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    sys.stdin.readline()
    db.execute("COMMIT")
"""


def hold_lock(ledger: Path) -> subprocess.Popen:
    """A second process holding the ledger's write lock (BEGIN EXCLUSIVE) until a line is written to its stdin."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLD_LOCK), str(ledger)], cwd=REPO, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert holder.stdout.readline().strip() == "locked", holder.stderr.read()
    return holder


def release(holder: subprocess.Popen) -> None:
    holder.communicate("\n", timeout=30)
    assert holder.returncode == 0


@trained
def test_a_ledger_locked_when_the_run_finishes_keeps_every_output_and_runs_record_records_it_later(
        tiny_plugin_run, plugin_sample, tmp_path, monkeypatch, capsys):
    from pipeline.__main__ import main

    finished = tiny_plugin_run("fisheries").run_dir
    ledger = tmp_path / "ledger.sqlite"
    holders = []
    monkeypatch.setenv(BUSY_TIMEOUT_ENV, "1")  # a second, not the minute a real run waits
    replay_training(monkeypatch, finished, after_outputs=lambda run_dir: holders.append(hold_lock(ledger)))
    try:
        code = main(submit_args(plugin_sample("fisheries", small=True) / "data", tmp_path))
    finally:
        for holder in holders:
            release(holder)
    assert code == 0  # the submission is valid and written: the run succeeded, only its ledger row waits
    warning = one_line(capsys.readouterr().err, "WARNING: run tiny-fisheries finished")
    run_dir = tmp_path / "runs" / "fisheries" / RUN
    for fragment in (f"wrote every output to {run_dir}", f"ledger {ledger} was locked by another process for more than 1 s",
                     f"`python -m pipeline runs record {run_dir} --ledger {ledger}`"):
        assert fragment in warning, (fragment, warning)
    kept = contents(run_dir)
    assert {name: data for name, data in kept.items() if name not in ("config.json", "metrics.json")} == {
        name: data for name, data in contents(finished).items() if name not in ("config.json", "metrics.json")}
    assert Ledger(ledger).run(RUN)["status"] == "running"

    # once the run's process has ended, the next open marks the row interrupted, pointing at `runs record`, not at
    # a rerun (here the row is handed to a process that has ended: this test's process is the run's)
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    with contextlib.closing(sqlite3.connect(ledger)) as db, db:
        db.execute("UPDATE runs SET pid = ? WHERE run_id = ?", (ended.pid, RUN))
    record = Ledger(ledger).run(RUN)
    assert record["status"] == "interrupted" and f"runs record {run_dir} --ledger {ledger}" in record["error"]

    proc = cli("runs", "record", str(run_dir), "--ledger", str(ledger))
    assert proc.returncode == 0 and f"recorded run {RUN} as done in {ledger}" in proc.stdout, proc.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    record = Ledger(ledger).run(RUN)
    assert record["status"] == "done" and record["error"] is None
    assert (record["holdout_teacher"], record["holdout_student"], record["holdout_control"]) == (
        metrics["holdout"]["teacher"], metrics["holdout"]["student"], metrics["holdout"]["control"])
    assert record["submission_sha256"] == metrics["submission"]["sha256"] == sha256_of(run_dir / "submission.csv")
    assert record["submitted_model"] == metrics["submission"]["model"]
    assert record["lb_student_public"] == metrics["leaderboard"]["student"]["public"]
    assert contents(run_dir) == kept
    again = in_process(capsys, "runs", "record", str(run_dir), "--ledger", str(ledger))
    assert again.returncode == 0 and "already recorded" in again.stdout


@trained
def test_runs_record_refuses_a_folder_whose_submission_changed_and_adds_a_run_the_ledger_never_saw(run_copy, tmp_path,
                                                                                                   capsys):
    ledger = tmp_path / "other.sqlite"
    proc = in_process(capsys, "runs", "record", RUN, "--runs-dir", str(run_copy.parent.parent), "--ledger", str(ledger))
    assert proc.returncode == 0 and "it had no row there" in proc.stdout, proc.stderr  # a --no-ledger run
    assert Ledger(ledger).run(RUN)["status"] == "done"
    with open(run_copy / "submission.csv", "a") as handle:
        handle.write("extra.jpg,1,0,0,0,0,0,0,0\n")
    assert_user_error(in_process(capsys, "runs", "record", str(run_copy), "--ledger", str(tmp_path / "third.sqlite")),
                      "submission.csv is not the file the run wrote", "cp ")
    (run_copy / "metrics.json").unlink()
    assert_user_error(in_process(capsys, "runs", "record", str(run_copy), "--ledger", str(ledger)),
                      "has no metrics.json", "submit --resume tiny-fisheries")


def test_a_ledger_locked_past_the_busy_timeout_is_one_error_line(tmp_path):
    ledger = tmp_path / "ledger.sqlite"
    Ledger(ledger)
    holder = hold_lock(ledger)
    try:
        proc = subprocess.run([sys.executable, "-m", "pipeline", "runs", "list", "--ledger", str(ledger)], cwd=REPO,
                              capture_output=True, text=True, timeout=60, env={**os.environ, BUSY_TIMEOUT_ENV: "0.5"})
    finally:
        release(holder)
    assert_user_error(proc, f"ledger {ledger} was locked by another process for more than 0.5 s", BUSY_TIMEOUT_ENV)
