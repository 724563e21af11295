"""Hostile options: the reported ones are refused before any work starts, no output goes into the data folder,
`shift --out` is a folder, `--resume` removes only what the run wrote, and a failed download of ImageNet weights is
a named error. Each case ends in one `error:` line (exit 2, no traceback) or a correct result.

What applies to every option of the table (its bounds, choices and --help) is generated in tests/test_options.py.
Nothing here trains a model: where a case is decided before training, the function that decides it (or the command
line, which stops before training) is tested.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from PIL import Image

from pipeline.run import preflight
from pipeline.__main__ import main
from pipeline.run.config import MAX_FOLDS, MAX_PSEUDO_FOLDS, MAX_PSEUDO_ROUNDS, MAX_SEED, RunConfig
from pipeline.run.folds import AUTO_FOLDS, folds_for, settle
from pipeline.run.seeds import SEED_LIMIT, largest_derived_seed
from pipeline.errors import UserError
from pipeline.plugin.registry import get_competition
from tests.conftest import tiny_config
from tests.test_hostile import REPO, assert_user_error, cli


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


def images(root: Path, *paths: str) -> Path:
    for path in paths:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (10, 10), (len(path) * 9 % 256, 40, 90)).save(root / path)
    return root


def imagefolder(root: Path, train: int = 6, public: int = 3, private: int = 2) -> Path:
    """An imagefolder data set: `train` images of each of two classes, and the test groups' images."""
    return images(root, *(f"train/{c}/{i}.png" for c in ("cat", "dog") for i in range(train)),
                  *(f"test/public/{i}.png" for i in range(public)), *(f"test/private/{i}.png" for i in range(private)))


def check(cfg, data: Path) -> None:
    competition = get_competition(cfg.competition)
    preflight.check_before_training(cfg, competition, data, competition.train_items(data), competition.test_items(data))


# ---- reported options, refused before work starts (every option: tests/test_options.py) ------------------

def test_the_reported_seed_is_refused_before_training_naming_the_seed_limit(tmp_path):
    """--seed 4294967295 used to train the teacher, then crash in the first student (seed + 1000 >= 2**32)."""
    proc = cli("submit", "--competition", "fisheries", "--data", str(tmp_path), "--no-ledger", "--runs-dir",
               str(tmp_path / "runs"), "--seed", "4294967295")
    assert_user_error(proc, "--seed must be an integer >= 0 and <= 4294956374", "below 2**32", "--seed + 10921")
    assert not (tmp_path / "runs").exists()


def test_every_seed_a_run_derives_from_the_largest_seed_is_accepted_by_keras():
    import keras

    largest = largest_derived_seed(MAX_SEED, MAX_FOLDS, MAX_PSEUDO_ROUNDS, MAX_PSEUDO_FOLDS)
    assert largest == SEED_LIMIT - 1
    keras.utils.set_random_seed(largest)  # what train.seed_everything calls for each fit
    with pytest.raises(ValueError):  # numpy's seed, the first it sets
        keras.utils.set_random_seed(largest + 1)
    # the run's formulas at the largest options (teacher_cache, selftrain, pipeline/model/batches.py: + 1 and + 2)
    m, r, k = MAX_FOLDS - 1, MAX_PSEUDO_ROUNDS, MAX_PSEUDO_FOLDS - 1
    assert max(MAX_SEED + m, MAX_SEED + 7 + m, MAX_SEED + 1000 * r + 100 * k + m + 2) == largest


def test_the_reported_batch_size_is_refused_naming_the_allowed_range(tmp_path):
    proc = cli("submit", "--competition", "fisheries", "--data", str(tmp_path), "--no-ledger", "--runs-dir",
               str(tmp_path / "runs"), "--batch-size", "100000")
    assert_user_error(proc, "--batch-size must be an integer >= 1 and <= 4096, got 100000")


@pytest.mark.parametrize("changes", [dict(image_size=1024), dict(image_size=1024, width=256), dict(width=256),
                                     dict(image_size=1024, backbone="MobileNetV2"),
                                     dict(image_size=512, backbone="small-cnn")])
def test_a_batch_too_large_for_its_image_size_names_the_largest_batch_that_fits_and_that_one_is_accepted(changes):
    with pytest.raises(UserError) as error:
        RunConfig(competition="fisheries", data="d", batch_size=4096, **changes)
    message = str(error.value)
    largest = int(re.search(r"--batch-size must be between 1 and (\d+)$", message).group(1))
    assert message.startswith("--batch-size 4096 is too large at --image-size") and "GiB) in one tensor" in message
    RunConfig(competition="fisheries", data="d", batch_size=largest, **changes)
    with pytest.raises(UserError):
        RunConfig(competition="fisheries", data="d", batch_size=largest + 1, **changes)


def disk(free: int):
    return lambda path: SimpleNamespace(total=free, used=0, free=free)


def test_the_image_cache_is_refused_with_its_size_when_the_disk_cannot_hold_it(tiny_fisheries, tmp_path, monkeypatch):
    data = tiny_fisheries / "data"
    n = sum(len(t) for t in (get_competition("fisheries").train_items(data), get_competition("fisheries").test_items(data)))
    monkeypatch.setattr(preflight.shutil, "disk_usage", disk(2 ** 28))
    monkeypatch.setattr(preflight, "_memory_available", lambda: 2 ** 40)
    cfg = tiny_config(data, tmp_path, image_size=1024)
    with pytest.raises(UserError) as error:
        check(cfg, data)
    message = str(error.value)
    assert message.startswith("--image-size 1024: the image cache would take")
    assert "more than 90% of the 0.25 GiB free" in message
    assert f"{n} images x 1024 x 1024 x 3 bytes = {n * 3 * 2 ** 20 / 2 ** 30:.2f} GiB" in message
    fits = int(re.search(r"at most (\d+) fits", message).group(1))
    assert n * fits * fits * 3 <= 0.9 * 2 ** 28 < n * (fits + 1) ** 2 * 3
    check(tiny_config(data, tmp_path, image_size=fits), data)  # the size it suggests passes


def test_a_cached_image_store_needs_no_room_and_a_large_new_one_is_announced(tmp_path, monkeypatch, capsys):
    train = pd.DataFrame({"path": [f"/data/train/{i}.jpg" for i in range(400)]})
    test = pd.DataFrame({"path": [f"/data/test/{i}.jpg" for i in range(300)]})
    monkeypatch.setattr(preflight.shutil, "disk_usage", disk(2 ** 40))
    monkeypatch.setattr(preflight, "_memory_available", lambda: 2 ** 40)
    assert preflight.image_cache_problems(1024, tmp_path, train, test) == []
    assert "images: caching them at 1024 px takes 700 images x 1024 x 1024 x 3 bytes = 2.05 GiB" in capsys.readouterr().out
    for what, table in (("train", train), ("test", test)):  # both stores complete in the cache: nothing to write
        entry = tmp_path / "images" / f"{what}-1024px-0123456789abcdef0123"
        entry.mkdir(parents=True)
        (entry / "manifest.json").write_text(pd.Series({"paths": table["path"].tolist()}).to_json())
    monkeypatch.setattr(preflight.shutil, "disk_usage", disk(2 ** 20))
    assert preflight.image_cache_problems(1024, tmp_path, train, test) == []
    assert capsys.readouterr().out == ""


def test_train_images_that_cannot_fit_in_memory_are_refused_with_their_size(tmp_path, monkeypatch):
    train = pd.DataFrame({"path": [f"/data/train/{i}.jpg" for i in range(1000)]})
    monkeypatch.setattr(preflight, "_memory_available", lambda: 2 ** 30)
    (problem,) = preflight.image_cache_problems(1024, tmp_path, train, train.iloc[:0])
    assert problem.startswith("--image-size 1024: a run holds its 1000 train images in memory, 1000 x 1024 x 1024 x 3 "
                              "bytes = 2.93 GiB, more than the 1.00 GiB of memory available")


def test_folds_and_pseudo_folds_the_images_cannot_fill_are_refused_before_training(tmp_path):
    data = imagefolder(tmp_path / "data")  # 12 train images; test: public 3, private 2
    cfg = tiny_config(data, tmp_path, competition="imagefolder")
    check(cfg.replace(folds=6, pseudo_folds=3), data)
    with pytest.raises(UserError) as error:
        check(cfg.replace(folds=7, pseudo_folds=4), data)
    message = str(error.value)
    assert "(1) --folds 7 leaves fewer than 2 of the 12 train images per fold; use at most 6" in message
    assert "(2) --pseudo-folds 4: the largest test group (public) has 3 image(s)" in message and "use at most 3" in message
    check(cfg.replace(pseudo_folds=4, pseudo_ratio=0.0), data)  # no students: no pseudo-folds to fill


def test_folds_auto_is_five_folds_for_few_labels_and_one_holdout_for_many():
    assert folds_for(100, 0.2) == AUTO_FOLDS == 5  # 10 labels a class: a holdout of 20
    assert folds_for(245, 0.2) == 5 and folds_for(246, 0.2) == 1  # a holdout of 49, then 50 (ceil, as sklearn)
    assert folds_for(640, 0.2) == 1  # the fisheries sample: 128 held out
    assert folds_for(90, 0.5) == 5 and folds_for(100, 0.5) == 1  # --val-fraction counts
    assert folds_for(10, 0.2) == 5 and folds_for(9, 0.2) == 1  # 5 folds need 2 images each


def test_a_run_settles_folds_auto_before_its_checks_and_says_so(tmp_path, capsys):
    from pipeline.run.stages import run_pipeline

    data = imagefolder(tmp_path / "data")  # 12 train images; test: public 3, private 2
    cfg = tiny_config(data, tmp_path, competition="imagefolder", folds="auto", pseudo_folds=4)
    with pytest.raises(UserError, match="--pseudo-folds 4"):  # refused before any training, after the line below
        run_pipeline(cfg)
    assert ("--folds auto: 5 cross-validated folds, every labeled image scored out of fold: a holdout would hold 3 of "
            "the 12 (under 50)") in capsys.readouterr().out
    assert settle(640, 0.2) == (1, "--folds auto: one holdout of 128 of the 640 labeled images")


# ---- no output inside the data folder --------------------------------------------------------------------------

@pytest.fixture()
def fisheries(tiny_fisheries, tmp_path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(tiny_fisheries / "data", data)
    return data


INSIDE_CASES = {  # name -> (options, given the tmp folder and its data folder; the option named)
    "output replaces a CSV": (lambda t, d: dict(output=str(d / "sample_submission_stg2.csv")), "--output"),
    "output adds a test image": (lambda t, d: dict(output=str(d / "test_stg1" / "x.jpg")), "--output"),
    "output through ..": (lambda t, d: dict(output=str(t / "runs" / ".." / "data" / "copy.csv")), "--output"),
    "output through a symlink": (lambda t, d: dict(output=str(t / "link" / "copy.csv")), "--output"),
    "runs dir inside": (lambda t, d: dict(runs_dir=str(d / "runs")), "--runs-dir"),
    "runs dir is the data folder": (lambda t, d: dict(runs_dir=str(d)), "--runs-dir"),
    "cache dir inside": (lambda t, d: dict(cache_dir=str(d / "test_stg1")), "--cache-dir"),
    "ledger inside": (lambda t, d: dict(ledger=str(d / "ledger.sqlite"), record=True), "--ledger"),
}


@pytest.mark.parametrize("case", sorted(INSIDE_CASES))
def test_no_output_may_go_into_the_data_folder(fisheries, tmp_path, case):
    (tmp_path / "link").symlink_to(fisheries)
    options, option = INSIDE_CASES[case]
    cfg = tiny_config(fisheries, tmp_path, **options(tmp_path, fisheries))
    with pytest.raises(UserError) as error:
        check(cfg, fisheries)
    message = str(error.value)
    assert f"{option} " in message and f"is inside the data folder {fisheries}" in message, message
    assert f"pass a path outside {fisheries}" in message


def test_a_runs_or_cache_folder_that_would_put_the_competition_folder_into_the_data_is_refused(tmp_path):
    data = imagefolder(tmp_path / "imagefolder")  # --runs-dir TMP writes TMP/imagefolder/RUN: inside the data
    cfg = tiny_config(data, tmp_path, competition="imagefolder", runs_dir=str(tmp_path), cache_dir=str(tmp_path))
    with pytest.raises(UserError) as error:
        check(cfg, data)
    assert f"--runs-dir {tmp_path} puts its files in {data}, which is inside the data folder {data}" in str(error.value)
    assert f"--cache-dir {tmp_path} puts its files in {data}" in str(error.value)


def test_the_reported_output_over_the_labels_is_refused_and_the_labels_are_kept(fisheries, tmp_path):
    target = fisheries / "sample_submission_stg2.csv"
    before = target.read_bytes()
    proc = cli("submit", "--competition", "fisheries", "--data", str(fisheries), "--no-ledger", "--runs-dir",
               str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"), "--output", str(target))
    assert_user_error(proc, f"--output {target} is inside the data folder {fisheries}")
    assert target.read_bytes() == before and not (tmp_path / "runs").exists()


def test_resume_refuses_a_ledger_inside_the_data_folder_before_creating_it(tmp_path, capsys):
    data = imagefolder(tmp_path / "data")
    runs = tmp_path / "runs"
    cfg = tiny_config(data, tmp_path, competition="imagefolder", run_name="cut", record=True)
    (runs / "imagefolder" / "cut").mkdir(parents=True)
    cfg.save(runs / "imagefolder" / "cut" / "config.json")
    assert main(["submit", "--competition", "imagefolder", "--resume", "cut", "--runs-dir", str(runs),
                 "--ledger", str(data / "ledger.sqlite")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"--resume cut: --ledger {data / 'ledger.sqlite'} is inside the data folder {data}" in line
    assert not (data / "ledger.sqlite").exists()


# ---- shift --out --------------------------------------------------------------------------------------------

def test_shift_out_an_existing_file_says_out_is_a_folder_before_decoding_anything(tmp_path):
    data = imagefolder(tmp_path / "data")
    report = tmp_path / "report.txt"
    report.write_text("mine\n")
    proc = cli("shift", "--competition", "imagefolder", "--data", str(data), "--out", str(report),
               "--cache-dir", str(tmp_path / "cache"), "--image-size", "32")
    assert_user_error(proc, f"--out {report} is a file; --out is the folder that shift.json and the plots go into")
    assert report.read_text() == "mine\n" and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("option", ["--out", "--cache-dir"])
def test_shift_writes_nothing_into_the_data_folder(tmp_path, capsys, option):
    data = imagefolder(tmp_path / "data")
    paths = {"--out": tmp_path / "report", "--cache-dir": tmp_path / "cache", option: data / "test" / "public" / "x"}
    assert main(["shift", "--competition", "imagefolder", "--data", str(data), "--image-size", "32",
                 *(arg for flag, path in paths.items() for arg in (flag, str(path)))]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{option} {paths[option]} is inside the data folder {data}" in line
    assert not (data / "test" / "public" / "x").exists()


SHIFT_BOUNDS = [("--permutations", "10000"), ("--trees", "10001"), ("--workers", "257"), ("--image-size", "2048"),
                ("--seed", str(2 ** 32)), ("--seed", "-1")]


@pytest.mark.parametrize("flag, value", SHIFT_BOUNDS)
def test_shift_options_past_their_bounds_are_one_error_line(tmp_path, capsys, flag, value):
    data = imagefolder(tmp_path / "data")
    assert main(["shift", "--competition", "imagefolder", "--data", str(data), "--out", str(tmp_path / "r"),
                 "--cache-dir", str(tmp_path / "cache"), flag, value]) == 2
    assert one_error_line(capsys.readouterr().err).startswith(f"error: {flag} must be")
    assert not (tmp_path / "cache").exists()


def test_every_bounded_shift_option_is_tested():
    from pipeline.cli.shift import _SETTING_OPTIONS

    assert {flag for flag, *_, most in _SETTING_OPTIONS if most is not None} <= {flag for flag, _ in SHIFT_BOUNDS}


# ---- --resume removes only what the run wrote ---------------------------------------------------------------

def test_resume_removes_the_runs_partial_outputs_and_leaves_the_users_files(tmp_path, capsys):
    from pipeline.run.folder import outputs as run_outputs
    from pipeline.run.resume import clear_run_folder

    cfg = tiny_config(tmp_path / "data", tmp_path, run_name="cut")
    run_dir = tmp_path / "runs" / "fisheries" / "cut"
    run_dir.mkdir(parents=True)
    cfg.save(run_dir / "config.json")
    ours = ["split.csv", "probabilities.npz", "student_submission.csv", "shift.json", "confidence.png",
            ".submission.csv.pid999999999.x1y2.tmp"]  # what a killed writer of submission.csv left
    users = ["notes.txt", "my_plot.png", "submission-v2.csv", ".notes.txt.pid999999999.ab.tmp"]
    for name in ours + users:
        (run_dir / name).write_text("x")
    (run_dir / "plots").mkdir()
    (run_dir / "plots" / "loss.png").write_text("x")
    assert set(ours[:-1]) <= run_outputs()
    removed = clear_run_folder(cfg, run_dir)
    assert sorted(removed) == sorted(ours)
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(["config.json", "plots", *users])
    assert (run_dir / "plots" / "loss.png").is_file()
    out = capsys.readouterr().out
    assert f"resume: left 5 file(s) in {run_dir} that the run does not write: " in out and "plots/" in out


# ---- --weights imagenet with no network ---------------------------------------------------------------------

def test_imagenet_weights_that_cannot_be_downloaded_are_one_error_line_naming_the_backbone_and_the_fixes(
        tiny_fisheries, tmp_path):
    """A real download that really fails: an empty KERAS_HOME (no cached weights file can make it pass) and a proxy
    that refuses connections (so that it fails the same way on a machine with network access)."""
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "keras"), "https_proxy": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}
    proc = subprocess.run([sys.executable, "-m", "pipeline", "submit", "--competition", "fisheries", "--data",
                           str(tiny_fisheries / "data"), "--no-ledger", "--runs-dir", str(tmp_path / "runs"), "--cache-dir",
                           str(tmp_path / "cache"), "--backbone", "MobileNetV2", "--weights", "imagenet", "--image-size",
                           "32", "--on-shift", "ignore"], cwd=REPO, env=env, capture_output=True, text=True, timeout=200)
    assert_user_error(proc, "--backbone MobileNetV2 --weights imagenet: its ImageNet weights could not be downloaded",
                      "URL fetch failure on https://", "mobilenet_v2",
                      f"Keras caches them in {tmp_path / 'keras' / 'models'}", "--weights PATH")
    assert not list((tmp_path / "keras").rglob("*.h5"))
