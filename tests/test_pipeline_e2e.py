"""End to end on a tiny fisheries sample: real images on disk, real (small) Keras training."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.run.config import RunConfig
from pipeline.plugin.registry import get_competition
from pipeline.submission import load_submission
from tests.conftest import tiny_config

# its own xdist group: the session-scoped base run is made once, on one worker, while the other runs other groups
# (session, not module: a worker may run other modules between these tests, which tears module fixtures down)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("e2e")]
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def data_with_bad_images(tiny_fisheries, tmp_path_factory) -> Path:
    """The tiny sample plus one corrupt train image, one text file in train and one truncated test image."""
    data = tmp_path_factory.mktemp("bad") / "data"
    shutil.copytree(tiny_fisheries / "data", data)
    (data / "train" / "ALB" / "corrupt.jpg").write_bytes(b"not a jpeg at all")
    (data / "train" / "BET" / "notes.txt").write_text("a stray file")
    victim = sorted((data / "test_stg1").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated JPEG
    return data


@pytest.fixture(scope="session")
def base_run(data_with_bad_images, tiny_fisheries, tmp_path_factory):
    from pipeline.run.stages import run_pipeline

    tmp = tmp_path_factory.mktemp("run")
    # two rounds and the shift check: the run the tests of both read
    cfg = tiny_config(data_with_bad_images, tmp, solution=str(tiny_fisheries / "solution.csv"), output=str(tmp / "copy.csv"),
                      pseudo_rounds=2, on_shift="warn")
    return cfg, run_pipeline(cfg)


def test_run_writes_a_valid_submission_with_every_expected_id(base_run, data_with_bad_images):
    cfg, result = base_run
    fisheries = get_competition("fisheries")
    table = load_submission(result.run_dir / "submission.csv", fisheries, data_with_bad_images)
    expected = fisheries.expected_ids(data_with_bad_images)
    assert table["image"].tolist() == expected
    assert (Path(cfg.output).read_bytes() == (result.run_dir / "submission.csv").read_bytes())
    for name in ("config.json", "metrics.json", "report.html", "confidence.png", "teacher_submission.csv", "control_submission.csv",
                 "student_submission.csv", "pseudo_labels.csv", "split.csv", "probabilities.npz"):
        assert (result.run_dir / name).is_file(), name
    assert (result.run_dir / "confidence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metrics_record_scores_counts_and_unreadable_images(base_run):
    _, result = base_run
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert set(metrics["holdout"]) == {"teacher", "control", "student"}
    assert all(np.isfinite(v) for v in metrics["holdout"].values())
    assert set(metrics["leaderboard"]["student"]) == {"public", "private"}
    assert sorted(Path(p).name for p in metrics["items"]["unreadable_train"]) == ["corrupt.jpg", "notes.txt"]
    assert len(metrics["items"]["unreadable_test"]) == 1
    pseudo = metrics["pseudo"]
    assert pseudo["selected"] == sum(pseudo["by_group"].values()) > 0
    ratio = RunConfig().pseudo_ratio
    assert pseudo["target"] == round(metrics["items"]["train"] * ratio / (1 - ratio))
    assert pseudo["selected_per_round"]["1"] < pseudo["selected_per_round"]["2"]  # the curriculum grows


def test_unreadable_test_image_still_gets_a_row_from_the_class_prior(base_run):
    _, result = base_run
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    bad_name = Path(metrics["items"]["unreadable_test"][0]).name
    table = pd.read_csv(result.run_dir / "submission.csv")
    row = table[table["image"] == bad_name].iloc[0, 1:].to_numpy(dtype=float)
    teacher = pd.read_csv(result.run_dir / "teacher_submission.csv")
    assert np.allclose(row, teacher[teacher["image"] == bad_name].iloc[0, 1:].to_numpy(dtype=float), atol=1e-5)
    assert row.argmax() == 0  # ALB, the majority class of the train prior
    assert abs(row.sum() - 1) < 1e-4


def test_only_test_items_are_pseudo_labeled_never_the_holdout(base_run):
    _, result = base_run
    provenance = pd.read_csv(result.run_dir / "pseudo_labels.csv")
    test_ids = set(pd.read_csv(result.run_dir / "submission.csv")["image"])
    holdout = pd.read_csv(result.run_dir / "split.csv").query("role == 'holdout'")["path"].map(lambda p: Path(p).name)
    assert set(provenance["id"]) <= test_ids and not set(holdout) & set(provenance["id"])
    for _, one in provenance.groupby(["model", "round", "pseudo_fold"]):  # one row per readable test item and selection
        assert one["id"].is_unique and len(one) == len(test_ids) - 1  # the unreadable test image is not among them
    selected = provenance[provenance["status"] == "selected"]
    assert len(selected) > 0 and set(selected["group"]) <= {"public", "private"} and (selected["pseudo_label"].str.len() > 0).all()


def test_same_seed_gives_the_same_submission_and_teacher_is_reused(base_run, data_with_bad_images, tmp_path):
    from pipeline.run.stages import run_pipeline

    cfg, first = base_run
    again = run_pipeline(cfg.replace(runs_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"), output=None))
    assert again.metrics["teacher_cache"] == "miss"
    assert (again.run_dir / "submission.csv").read_bytes() == (first.run_dir / "submission.csv").read_bytes()
    teacher_only = run_pipeline(cfg.replace(runs_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"), output=None, pseudo_ratio=0.0))
    assert teacher_only.metrics["teacher_cache"] == "hit"
    assert teacher_only.metrics["pseudo"]["selected"] == 0
    # its provenance says what its selection says: every readable test item is over the (zero) quota
    statuses = pd.read_csv(teacher_only.run_dir / "pseudo_labels.csv")["status"]
    counts = teacher_only.metrics["items"]
    assert set(statuses) == {"over quota"}
    assert len(statuses) == sum(counts["test"].values()) - len(counts["unreadable_test"])
    # the shift check depends on the images only: the second run takes it from the cache, plots redrawn
    assert teacher_only.metrics["shift"] == again.metrics["shift"]
    assert (teacher_only.run_dir / "shift_mean_intensity.png").is_file()
    # ratio 0 is plain supervised training: the submission is the teacher's
    assert (teacher_only.run_dir / "submission.csv").read_bytes() == (first.run_dir / "teacher_submission.csv").read_bytes()


def test_out_of_fold_students_and_private_only_pseudo_labels(tiny_fisheries, tmp_path):
    from pipeline.run.stages import run_pipeline

    cfg = tiny_config(tiny_fisheries / "data", tmp_path, epochs=2, pseudo_folds=2, pseudo_groups=("private",), pseudo_labels="hard")
    result = run_pipeline(cfg)
    provenance = pd.read_csv(result.run_dir / "pseudo_labels.csv")
    selected = provenance[provenance["status"] == "selected"]
    assert set(selected["group"]) == {"private"} and set(selected["pseudo_fold"]) == {1, 2}
    assert set(provenance.loc[provenance["group"] == "public", "status"]) == {"group not pseudo-labeled"}
    for (_, fold), one in selected.groupby(["round", "pseudo_fold"]):  # fold k's student never trains on fold k's items
        other = provenance[(provenance["pseudo_fold"] == fold) & (provenance["status"] == "not eligible")]
        assert not set(one["id"]) & set(other["id"])
    assert result.metrics["pseudo"]["by_group"]["public"] == 0


def test_imagefolder_with_accuracy(tmp_path):
    from pipeline.run.stages import run_pipeline

    get_competition("imagefolder").make_sample(tmp_path / "s", seed=0)
    cfg = tiny_config(tmp_path / "s" / "data", tmp_path, competition="imagefolder", metric="accuracy",
                      epochs=2, solution=str(tmp_path / "s" / "solution.csv"))
    result = run_pipeline(cfg)
    assert 0.0 <= result.metrics["leaderboard"]["student"]["private"] <= 1.0 and result.metrics["greater_is_better"]
    header = pd.read_csv(result.run_dir / "submission.csv", nrows=0).columns.tolist()
    assert header == ["id", "ALB", "LAG", "NoF", "SHARK"]


def test_frozen_pretrained_backbone_runs_in_feature_cache_mode_from_a_weights_file(tiny_fisheries, tmp_path):
    import keras

    from pipeline.run.stages import run_pipeline

    weights = tmp_path / "mobilenet.weights.h5"
    keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg", alpha=1.0).save_weights(weights)
    cfg = tiny_config(tiny_fisheries / "data", tmp_path, backbone="MobileNetV2", weights=str(weights), epochs=2)
    first = run_pipeline(cfg)
    assert list((tmp_path / "cache" / "fisheries" / "features").iterdir())
    # cached embeddings have no images to warp, and the record says so (it said the option's level)
    fits = [*first.metrics["teacher_training"]["models"], *first.metrics["student_training"],
            *first.metrics["control_training"]]
    assert len(fits) >= 3 and {fit["augment"] for fit in fits} == {"none"}
    second = run_pipeline(cfg.replace(pseudo_ratio=0.1))
    assert second.metrics["teacher_cache"] == "hit" and first.metrics["teacher_cache"] == "miss"


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_cli_rejects_out_of_range_options_and_missing_data(tiny_fisheries, tmp_path):
    out = run_cli("submit", "--competition", "fisheries", "--data", str(tiny_fisheries / "data"), "--pseudo-ratio", "1.5", "--no-ledger")
    assert out.returncode == 2 and "--pseudo-ratio must be between 0.0 and 0.99, got 1.5" in out.stderr
    out = run_cli("submit", "--competition", "fisheries", "--data", str(tmp_path / "missing"), "--no-ledger", "--runs-dir", str(tmp_path))
    assert out.returncode == 2 and "missing" in out.stderr and "make demo" in out.stderr
    out = run_cli("submit", "--competition", "kaggle-titanic", "--data", ".", "--no-ledger")
    assert out.returncode == 2 and "fisheries" in out.stderr


def test_cli_help_lists_every_option_with_defaults():
    out = run_cli("submit", "--help")
    for option in ("--pseudo-ratio", "--pseudo-groups", "--pseudo-folds", "--pseudo-labels", "--backbone", "--weights",
                   "--image-size", "--val-fraction", "--run-name", "--output", "--solution", "--seed"):
        assert option in out.stdout
    assert f"default: {RunConfig().pseudo_ratio}" in out.stdout and "--folds" in out.stdout and "--pseudo-rounds" in out.stdout


def test_shift_check_runs_before_pseudo_labeling_and_can_stop_the_run(base_run, tiny_fisheries, tmp_path):
    from pipeline.run.stages import run_pipeline

    _, result = base_run
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["shift"]["pairs"]["train_vs_public"]["status"] in ("OK", "WARN", "FAIL")
    assert (result.run_dir / "shift.json").is_file() and "shift_mean_intensity.png" in (result.run_dir / "report.html").read_text()
    assert metrics["pseudo"]["shifted_groups"] == metrics["shift"]["shifted_groups"]
    if "private" not in metrics["shift"]["shifted_groups"]:
        pytest.skip("the tiny sample's private shift was not detected at this size; the full-size check is in test_shift.py")
    with pytest.raises(ValueError, match="distribution shift between train and .*private"):
        run_pipeline(tiny_config(tiny_fisheries / "data", tmp_path, on_shift="fail"))


def test_verdict_compares_student_control_and_teacher_on_the_same_rows(base_run):
    _, result = base_run
    verdict = result.metrics["verdict"]
    assert verdict["kind"] == "holdout" and verdict["rows"] == result.metrics["items"]["holdout"]
    for pair in ("student_vs_control", "control_vs_teacher", "student_vs_teacher"):
        low, high = verdict[pair]["interval"]
        assert low <= verdict[pair]["gain"] <= high and 0 <= verdict[pair]["p_better"] <= 1
    # the control trained as many steps as the students, on train only
    control_steps = sum(i["steps"] for i in result.metrics["control_training"])
    student_steps = sum(i["steps"] for i in result.metrics["student_training"])
    assert control_steps == student_steps > 0
    chosen = result.metrics["submission"]["model"]
    assert (result.run_dir / "submission.csv").read_bytes() == (result.run_dir / f"{chosen}_submission.csv").read_bytes()


def test_guard_submits_the_control_or_teacher_when_the_student_does_not_clearly_win(base_run, tmp_path):
    from pipeline.run.stages import run_pipeline

    # guard 1.0: the student must win in every bootstrap resample of the holdout. The guard does not key a model,
    # so this run takes the base run's teacher, students and control from its cache and only decides again.
    cfg, _ = base_run
    result = run_pipeline(cfg.replace(guard_confidence=1.0, runs_dir=str(tmp_path / "runs"), output=None))
    assert {info["cache"] for info in result.metrics["student_training"] + result.metrics["control_training"]} == {"hit"}
    verdict = result.metrics["verdict"]
    if verdict["student_vs_control"]["p_better"] == 1.0:
        pytest.skip("the student won every resample at this size; the guard had nothing to catch")
    assert verdict["submitted"] in ("control", "teacher") and verdict["reason"].startswith("GUARD")
    chosen = result.run_dir / f"{verdict['submitted']}_submission.csv"
    assert (result.run_dir / "submission.csv").read_bytes() == chosen.read_bytes()


def test_cross_validated_teachers_score_every_labeled_image_out_of_fold(tiny_fisheries, tmp_path):
    from pipeline.run.stages import run_pipeline

    result = run_pipeline(tiny_config(tiny_fisheries / "data", tmp_path, folds=2))
    metrics = result.metrics
    assert metrics["verdict"]["kind"] == "out-of-fold" and metrics["verdict"]["rows"] == metrics["items"]["labeled"]
    assert len(metrics["teacher_training"]["models"]) == 2
    split = pd.read_csv(result.run_dir / "split.csv")
    assert sorted(split["fold"].unique()) == [0, 1] and len(split) == metrics["items"]["labeled"]
    saved = np.load(result.run_dir / "probabilities.npz")
    for model in ("teacher", "control", "student"):  # every labeled row scored by a model that never trained on it
        assert np.isfinite(saved[f"scored_{model}"]).all() and len(saved[f"scored_{model}"]) == len(split)
        assert saved[f"test_{model}"].shape == (len(saved["test_ids"]), 8)
