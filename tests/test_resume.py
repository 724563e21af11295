"""`submit --resume RUN` (issue 11, item 7): a run killed with SIGKILL continues from its cached teacher, students and
controls to the very submission an uninterrupted run writes; every student and control is cached for later runs."""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.__main__ import main
from pipeline.ledger import Ledger
from tests.conftest import tiny_config

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("tensorflow")]
REPO = Path(__file__).resolve().parent.parent
# tiny_config's training settings, as command-line options too (the killed run is a real `python -m pipeline submit`)
SETTINGS = dict(image_size=32, epochs=3, batch_size=32, min_steps=10, width=8, student_epochs=1, on_shift="ignore")


def cli_options(settings: dict) -> list[str]:
    return [arg for name, value in settings.items() for arg in (f"--{name.replace('_', '-')}", str(value))]


def model_infos(metrics: dict) -> list[dict]:
    return [info for info in metrics["student_training"] + metrics["control_training"] if "key" in info]


def entries(cache: Path) -> set[str]:
    return {p.parent.name for kind in ("students", "controls") for p in (cache / "fisheries" / kind).glob("*/manifest.json")}


@pytest.fixture(scope="module")
def reference(tiny_fisheries, tmp_path_factory):
    """An uninterrupted run, with its own caches."""
    from pipeline.run import run_pipeline

    tmp = tmp_path_factory.mktemp("reference")
    cfg = tiny_config(tiny_fisheries / "data", tmp, run_name="whole", **SETTINGS)
    return cfg, run_pipeline(cfg)


@pytest.fixture(scope="module")
def resumed(tiny_fisheries, tmp_path_factory):
    """The same config in a subprocess killed with SIGKILL once the teacher and a student are cached, then resumed.

    Returns (runs dir, cache dir, models cached before the resume, the ledger row before it, resume's stdout)."""
    tmp = tmp_path_factory.mktemp("killed")
    runs, cache = tmp / "runs", tmp / "cache"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "submit", "--competition", "fisheries", "--data",
                             str(tiny_fisheries / "data"), "--runs-dir", str(runs), "--cache-dir", str(cache),
                             "--run-name", "cut", *cli_options(SETTINGS)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not entries(cache) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert entries(cache), proc.stderr.read() if proc.poll() is not None else "no student cached in 240 s"
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


def test_a_killed_run_resumes_from_its_cached_models_to_the_uninterrupted_runs_bytes(reference, resumed):
    _, whole = reference
    runs, cache, before, row, out = resumed
    run_dir = runs / "fisheries" / "cut"
    for name in ("submission.csv", "student_submission.csv", "control_submission.csv", "probabilities.npz"):
        assert (run_dir / name).read_bytes() == (whole.run_dir / name).read_bytes(), name
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(p.name for p in whole.run_dir.iterdir())

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["teacher_cache"] == "hit" and metrics["resumed"]["from_status"] == "interrupted"
    infos = model_infos(metrics)
    assert {info["key"] for info in infos} == {info["key"] for info in model_infos(whole.metrics)}
    for info in infos:  # no model whose entry existed was trained again, and each one that did not was trained
        assert info["cache"] == ("hit" if info["key"] in before else "miss"), info
    assert "student round 1/2: cached in" in out and sum(info["cache"] == "miss" for info in infos) >= 1

    record = Ledger(runs / "ledger.sqlite").run("cut")
    assert record["status"] == "done" and record["started_at"] == row["started_at"] and record["error"] is None
    assert record["metrics"]["resumed"]["from_status"] == "interrupted"
    assert [p for folder in (runs, cache) for p in folder.rglob("*") if p.name.endswith(".tmp")] == []


def test_resume_refuses_a_finished_run_an_unknown_run_and_options_that_change_the_config(resumed, capsys):
    runs, cache, *_ = resumed
    base = ["submit", "--competition", "fisheries", "--runs-dir", str(runs), "--cache-dir", str(cache)]
    assert main([*base, "--resume", "cut"]) == 2
    assert "run cut already finished (status done" in capsys.readouterr().err
    assert main([*base, "--resume", "nowhere"]) == 2
    assert "no run 'nowhere' of fisheries" in capsys.readouterr().err
    assert main([*base, "--resume", "cut", "--seed", "3", "--pseudo-ratio", "0.5"]) == 2
    assert "--seed, --pseudo-ratio cannot be given with it" in capsys.readouterr().err


def test_a_second_run_reuses_every_cached_model_and_retrains_a_damaged_one_to_the_same_bytes(reference, capsys):
    from pipeline.run import run_pipeline

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
    assert captured.out.count(": cached in") == len(caches)  # the teacher's line and every model's but the damaged one
