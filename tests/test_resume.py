"""`submit --resume RUN` (issue 11, item 7): a run killed with SIGKILL continues from its cached teacher, students and
controls to the very submission an uninterrupted run writes; every student and control is cached for later runs."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.__main__ import main
from pipeline.errors import UserError
from pipeline.ledger.store import Ledger
from tests.conftest import tiny_config

tensorflow = pytest.mark.xdist_group("resume")  # its own group: its session-scoped kill-and-resume runs stay on one worker
REPO = Path(__file__).resolve().parent.parent
# tiny_config's training settings, as command-line options too (the killed run is a real `python -m pipeline submit`)
SETTINGS = dict(image_size=32, epochs=3, batch_size=32, min_steps=10, width=8, folds=1, student_epochs=1, pseudo_rounds=2,
                student_batch="pooled", on_shift="ignore", pseudo_weight="none", adapt_bn="none")


def cli_options(settings: dict) -> list[str]:
    return [arg for name, value in settings.items() for arg in (f"--{name.replace('_', '-')}", str(value))]


def model_infos(metrics: dict) -> list[dict]:
    return [info for info in metrics["student_training"] + metrics["control_training"] if "key" in info]


def entries(cache: Path) -> set[str]:
    """Complete student and control entries (not a staging folder `.KEY.pidN.*.tmp` whose manifest is written)."""
    return {p.parent.name for kind in ("students", "controls") for p in (cache / "fisheries" / kind).glob("*/manifest.json")
            if not p.parent.name.startswith(".")}


@pytest.fixture(scope="session")
def reference(tiny_fisheries, tmp_path_factory):
    """An uninterrupted run, with its own caches."""
    from pipeline.run.stages import run_pipeline

    tmp = tmp_path_factory.mktemp("reference")
    cfg = tiny_config(tiny_fisheries / "data", tmp, run_name="whole", **SETTINGS)
    return cfg, run_pipeline(cfg)


@pytest.fixture(scope="session")
def resumed(reference, tiny_fisheries, tmp_path_factory):
    """The same config in a subprocess killed with SIGKILL once the teacher and a first model are cached (the control,
    which labels round 1 and so is trained before the students), then resumed.

    Its cache starts with the reference run's images and teacher (one fit less), none of its students or controls.
    Returns (runs dir, cache dir, models cached before the resume, the ledger row before it, resume's stdout)."""
    tmp = tmp_path_factory.mktemp("killed")
    runs, cache = tmp / "runs", tmp / "cache"
    for stage in ("images", "teachers"):
        shutil.copytree(Path(reference[0].cache_dir) / "fisheries" / stage, cache / "fisheries" / stage)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "submit", "--competition", "fisheries", "--data",
                             str(tiny_fisheries / "data"), "--runs-dir", str(runs), "--cache-dir", str(cache),
                             "--run-name", "cut", *cli_options(SETTINGS)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not entries(cache) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert entries(cache), proc.stderr.read() if proc.poll() is not None else "no model cached in 240 s"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    before = entries(cache)
    row = Ledger(runs / "ledger.sqlite").run("cut")
    assert row["status"] == "interrupted" and not (runs / "fisheries" / "cut" / "submission.csv").exists()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["submit", "--competition", "fisheries", "--resume", "cut", "--runs-dir", str(runs),
                       "--cache-dir", str(cache)])
    assert status == 0
    return runs, cache, before, row, out.getvalue()


@pytest.mark.slow
@tensorflow
def test_a_killed_run_resumes_from_its_cached_models_to_the_uninterrupted_runs_bytes(reference, resumed):
    from pipeline.run.folder import outputs as run_outputs

    _, whole = reference
    runs, cache, before, row, out = resumed
    run_dir = runs / "fisheries" / "cut"
    for name in ("submission.csv", "student_submission.csv", "control_submission.csv", "probabilities.npz"):
        assert (run_dir / name).read_bytes() == (whole.run_dir / name).read_bytes(), name
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(p.name for p in whole.run_dir.iterdir())
    assert {p.name for p in whole.run_dir.iterdir()} - {"config.json"} <= run_outputs()  # what a resume may remove

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["teacher_cache"] == "hit" and metrics["resumed"]["from_status"] == "interrupted"
    infos = model_infos(metrics)
    assert {info["key"] for info in infos} == {info["key"] for info in model_infos(whole.metrics)}
    for info in infos:  # no model whose entry existed was trained again, and each one that did not was trained
        assert info["cache"] == ("hit" if info["key"] in before else "miss"), info
    assert "control: cached in" in out and sum(info["cache"] == "miss" for info in infos) >= 1

    record = Ledger(runs / "ledger.sqlite").run("cut")
    assert record["status"] == "done" and record["started_at"] == row["started_at"] and record["error"] is None
    assert record["metrics"]["resumed"]["from_status"] == "interrupted"
    assert [p for folder in (runs, cache) for p in folder.rglob("*") if p.name.endswith(".tmp")] == []


@pytest.mark.slow
@tensorflow
def test_resume_refuses_a_finished_run_an_unknown_run_and_options_that_change_the_config(resumed, capsys):
    runs, cache, *_ = resumed
    base = ["submit", "--competition", "fisheries", "--runs-dir", str(runs), "--cache-dir", str(cache)]
    assert main([*base, "--resume", "cut"]) == 2
    assert "run cut already finished (status done" in capsys.readouterr().err
    assert main([*base, "--resume", "nowhere"]) == 2
    assert "no run 'nowhere' of fisheries" in capsys.readouterr().err
    assert main([*base, "--resume", "cut", "--seed", "3", "--pseudo-ratio", "0.5"]) == 2
    assert "--seed, --pseudo-ratio cannot be given with it" in capsys.readouterr().err


@pytest.mark.slow
@tensorflow
def test_a_second_run_reuses_every_cached_model_and_retrains_a_damaged_one_to_the_same_bytes(reference, capsys):
    from pipeline.run.stages import run_pipeline

    cfg, whole = reference
    damaged = next(info["key"] for info in whole.metrics["student_training"] if info.get("round") == 2)
    weights = Path(cfg.cache_dir) / "fisheries" / "students" / damaged / "model.weights.h5"
    weights.write_bytes(weights.read_bytes()[:100])
    capsys.readouterr()
    again = run_pipeline(cfg.replace(run_name="again"))
    captured = capsys.readouterr()
    for name in ("submission.csv", "student_submission.csv", "control_submission.csv", "probabilities.npz"):
        assert (again.run_dir / name).read_bytes() == (whole.run_dir / name).read_bytes(), name
    caches = {info["key"]: info["cache"] for info in model_infos(again.metrics)}
    assert caches == {info["key"]: ("miss" if info["key"] == damaged else "hit") for info in model_infos(whole.metrics)}
    assert f"cache entry {weights.parent} is unusable" in captured.err
    reused = re.findall(r"^(teacher|student round \d/\d|control): cached in", captured.out, flags=re.MULTILINE)
    assert reused == ["teacher", "control", "student round 1/2"]  # the control labels round 1: trained first


def test_a_models_key_changes_with_every_option_but_those_declared_not_to_change_a_model(tmp_path):
    from pipeline.run.config import RunConfig
    from pipeline.cache.models import NOT_CONTROL_SETTINGS, NOT_MODEL_SETTINGS, control_key, student_key

    cfg = tiny_config(tmp_path / "data", tmp_path).replace(student_batch="real+pseudo")  # --pseudo-augment needs it
    # a renamed option is not silently keyed
    assert NOT_MODEL_SETTINGS <= NOT_CONTROL_SETTINGS <= {f.name for f in dataclasses.fields(RunConfig)}
    key = student_key("teacher", cfg, 0, 1, 0, "selection", "init", 30, "standard")
    unchanged = cfg.replace(run_name="other", runs_dir="elsewhere", cache_dir="elsewhere", guard_confidence=0.5,
                            on_shift="fail", solution="s.csv", output="o.csv", record=True, ledger="l.sqlite")
    assert student_key("teacher", unchanged, 0, 1, 0, "selection", "init", 30, "standard") == key
    changes = [dict(pseudo_ratio=0.5), dict(pseudo_groups=("private",)), dict(student_epochs=2), dict(seed=1),
               dict(student_augment="light"), dict(augment="light"), dict(plugin_options={"a": "b"}), dict(metric="x"),
               dict(pseudo_augment="strong")]
    keys = {student_key("teacher", cfg.replace(**change), 0, 1, 0, "selection", "init", 30, "standard") for change in changes}
    keys |= {student_key(*args) for args in [("teacher2", cfg, 0, 1, 0, "selection", "init", 30, "standard"),
                                             ("teacher", cfg, 1, 1, 0, "selection", "init", 30, "standard"),
                                             ("teacher", cfg, 0, 2, 0, "selection", "init", 30, "standard"),
                                             ("teacher", cfg, 0, 1, 1, "selection", "init", 30, "standard"),
                                             ("teacher", cfg, 0, 1, 0, "selection2", "init", 30, "standard"),
                                             ("teacher", cfg, 0, 1, 0, "selection", "scratch", 30, "standard"),
                                             ("teacher", cfg, 0, 1, 0, "selection", "init", 31, "standard"),
                                             ("teacher", cfg, 0, 1, 0, "selection", "init", 30, "strong")]}
    assert len(keys) == len(changes) + 8 and key not in keys
    assert control_key("teacher", cfg, 0, 20) != control_key("teacher", cfg, 0, 21) != control_key("teacher", cfg, 1, 21)
    # a control never sees the pseudo-labels: a sweep over them reuses it; what it trains with still keys it
    control = control_key("teacher", cfg, 0, 20)
    assert control_key("teacher", cfg.replace(**{k: v for change in changes[:3] for k, v in change.items()},
                                              student_augment="light", pseudo_precision=0.9, pseudo_augment="strong"),
                                   0, 20) == control
    kept = [dict(seed=1), dict(augment="light"), dict(plugin_options={"a": "b"}), dict(label_smoothing=0.2)]
    assert len({control_key("teacher", cfg.replace(**change), 0, 20) for change in kept} | {control}) == len(kept) + 1


def test_the_ledger_resumes_an_interrupted_or_failed_run_on_its_own_row_and_nothing_else(tmp_path):
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    for run_id in ("failed", "done", "live"):
        ledger.start_run(run_id, "fisheries", {"seed": 0}, "fp", 0)
    ledger.fail_run("failed", "RuntimeError: boom")
    ledger.finish_run("done", {"competition": "fisheries"}, _written(tmp_path / "s.csv"), 1.0)
    started = ledger.run("failed")["started_at"]
    ledger.resume_run("failed")
    row = ledger.run("failed")
    assert (row["status"], row["started_at"], row["error"], row["finished_at"]) == ("running", started, None, None)
    assert row["pid"] == os.getpid() and row["config"] == {"seed": 0}
    for run_id, status in (("done", "done"), ("live", "running")):
        with pytest.raises(UserError, match=f"run '{run_id}' has status {status}"):
            ledger.resume_run(run_id)


def _written(path: Path) -> Path:
    path.write_text("id\n")
    return path


def test_a_run_folder_with_its_outputs_is_finished_without_a_ledger_and_options_are_checked_first(tmp_path, capsys):
    runs = tmp_path / "runs"
    cfg = tiny_config(tmp_path / "data", tmp_path, run_name="quiet")  # record=False: no ledger row to ask
    run_dir = runs / "fisheries" / "quiet"
    run_dir.mkdir(parents=True)
    cfg.save(run_dir / "config.json")
    for name in ("metrics.json", "submission.csv"):
        (run_dir / name).write_text("{}")
    base = ["submit", "--competition", "fisheries", "--runs-dir", str(runs)]
    assert main([*base, "--resume", "quiet"]) == 2
    assert f"run quiet already finished (status finished: {run_dir} holds its metrics.json" in capsys.readouterr().err
    assert main([*base, "--resume", "quiet", "--data", str(tmp_path)]) == 2
    assert "--data cannot be given with it" in capsys.readouterr().err
    assert main([*base, "--resume", "../quiet"]) == 2
    assert "--resume '../quiet' is not a run name" in capsys.readouterr().err
    assert main(base) == 2
    assert "submit needs --data DIR" in capsys.readouterr().err
    (run_dir / "config.json").write_text('{"competition": "fisheries", "no_such_option": 1}')
    (run_dir / "metrics.json").unlink()
    assert main([*base, "--resume", "quiet"]) == 2
    assert "config.json holds no_such_option, which are not options of this version" in capsys.readouterr().err
