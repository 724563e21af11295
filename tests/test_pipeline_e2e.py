"""End to end on a tiny fisheries sample: real images on disk, real (small) Keras training."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from competitions.samples.fisheries import write_fisheries_sample
from pipeline.method import calibration
from pipeline.errors import UserError
from pipeline.plugin.registry import get_competition
from pipeline.run.config import RunConfig
from pipeline.submission import load_submission, read_solution, score_against_solution
from tests.conftest import TINY, tiny_config

# its own xdist group: the session-scoped base run is made once, on one worker, while the other runs other groups
# (session, not module: a worker may run other modules between these tests, which tears module fixtures down)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("e2e")]


@pytest.fixture(scope="session")
def night_private(tmp_path_factory) -> Path:
    """The tiny sample (DIR/data, DIR/solution.csv) with every private image taken at night: a shift between train
    and private by construction (the default 40% at night is not flagged at every size); train and public are the
    tiny sample's own, public drawn like train."""
    out = tmp_path_factory.mktemp("night_private")
    write_fisheries_sample(out, seed=3, size=dataclasses.replace(TINY, night_share_private=1.0))
    return out


@pytest.fixture(scope="session")
def data_with_bad_images(night_private, tmp_path_factory) -> Path:
    """That sample plus one corrupt train image, one text file in train and one truncated test image."""
    data = tmp_path_factory.mktemp("bad") / "data"
    shutil.copytree(night_private / "data", data)
    (data / "train" / "ALB" / "corrupt.jpg").write_bytes(b"not a jpeg at all")
    (data / "train" / "BET" / "notes.txt").write_text("a stray file")
    victim = sorted((data / "test_stg1").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated JPEG
    return data


@pytest.fixture(scope="session")
def base_run(data_with_bad_images, night_private, tmp_path_factory):
    from pipeline.run.stages import run_pipeline

    tmp = tmp_path_factory.mktemp("run")
    # two rounds and the shift check: the run the tests of both read
    cfg = tiny_config(data_with_bad_images, tmp, solution=str(night_private / "solution.csv"), output=str(tmp / "copy.csv"),
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
    page = (result.run_dir / "report.html").read_text()
    assert "per round: round 1: " in page and "{'" not in page and "{&#x27;" not in page  # words, not a dict's repr


def test_metrics_record_scores_counts_and_unreadable_images(base_run, night_private):
    _, result = base_run
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    fisheries = get_competition("fisheries")
    solution = read_solution(night_private / "solution.csv")
    with np.load(result.run_dir / "probabilities.npz") as saved:
        classes, y = saved["classes"].tolist(), saved["y"][saved["fold"] >= 0]
        for model in ("teacher", "control", "student"):  # each score is the metric of the model's kept predictions
            kept = calibration.cross_fitted(y, saved[f"scored_{model}"], metrics["seed"])  # --calibrate temperature
            assert metrics["holdout"][model] == pytest.approx(fisheries.metric(y, kept), rel=1e-9)
            # and each leaderboard score that of the file written (to its 6 significant digits: the run scores the
            # table before it is written)
            submitted = pd.read_csv(result.run_dir / f"{model}_submission.csv")
            assert metrics["leaderboard"][model] == pytest.approx(score_against_solution(fisheries, submitted, solution, classes),
                                                                  rel=1e-5)
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
    with np.load(result.run_dir / "probabilities.npz") as saved:
        assert np.allclose(row, saved["y"].mean(axis=0), atol=1e-6)  # the readable train rows' class shares
    assert row.argmax() == 0  # ALB, the majority class of the train prior


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
    second = run_pipeline(cfg.replace(pseudo_ratio=0.0))  # the teacher alone: its cached features and weights
    assert second.metrics["teacher_cache"] == "hit" and first.metrics["teacher_cache"] == "miss"
    assert (second.run_dir / "submission.csv").read_bytes() == (first.run_dir / "teacher_submission.csv").read_bytes()


def test_the_shifted_private_group_is_flagged_before_pseudo_labeling_and_on_shift_fail_stops_before_training(
        base_run, tmp_path):
    from pipeline.run.stages import run_pipeline

    cfg, result = base_run
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    pairs = metrics["shift"]["pairs"]
    assert (pairs["train_vs_private"]["status"], pairs["train_vs_public"]["status"]) == ("FAIL", "OK")
    assert metrics["shift"]["shifted_groups"] == metrics["pseudo"]["shifted_groups"] == ["private"]
    assert (result.run_dir / "shift.json").is_file() and "shift_mean_intensity.png" in (result.run_dir / "report.html").read_text()
    # the same images and cache: the check comes from the cache and stops the run before its teacher
    runs = tmp_path / "runs"
    with pytest.raises(UserError, match=r"distribution shift between train and private \(private: adversarial AUC"):
        run_pipeline(cfg.replace(on_shift="fail", runs_dir=str(runs), output=None))
    (stopped,) = (runs / "fisheries").iterdir()
    written = {p.name for p in stopped.iterdir()}
    assert {"config.json", "shift.json"} <= written and not written & {"split.csv", "teacher_submission.csv", "metrics.json"}


def test_the_verdict_compares_the_models_on_the_same_rows_and_the_guard_picks_the_submission(base_run):
    cfg, result = base_run
    verdict, holdout = result.metrics["verdict"], result.metrics["holdout"]
    assert verdict["kind"] == "holdout" and verdict["rows"] == result.metrics["items"]["holdout"]
    sign = 1 if result.metrics["greater_is_better"] else -1
    # what the guard compared: the models' probabilities as they predicted the holdout (--guard-compares
    # uncalibrated, the default), while the holdout scores are those of the calibrated submissions
    assert verdict["compared"] == "uncalibrated" and verdict["temperatures"]
    competition = get_competition(cfg.competition)
    with np.load(result.run_dir / "probabilities.npz") as saved:
        y = saved["y"][saved["fold"] >= 0]
        raw = {m: saved[f"scored_{m}"] for m in ("teacher", "control", "student")}
    compared = {m: competition.metric(y, competition.decide(p, competition.fit_decision(y, p))) for m, p in raw.items()}
    assert compared != pytest.approx(holdout)  # calibration moved the scores: the test tells the two apart
    for pair in ("student_vs_control", "control_vs_teacher", "student_vs_teacher"):
        better, worse = pair.split("_vs_")
        low, high = verdict[pair]["interval"]
        # the gain is the score difference on the whole holdout, signed so that > 0 means `better` won
        assert verdict[pair]["gain"] == pytest.approx(sign * (compared[better] - compared[worse]), abs=1e-9)
        assert low <= verdict[pair]["gain"] <= high
    # the student only where it beat the control in --guard-confidence of the resamples, else the better fallback
    fallback = "control" if verdict["control_vs_teacher"]["gain"] >= 0 else "teacher"
    won = verdict["student_vs_control"]["p_better"] >= cfg.guard_confidence
    assert verdict["submitted"] == ("student" if won else fallback) and f"{cfg.guard_confidence:.0%}" in verdict["reason"]
    # the control trained as many steps as the students, on train only
    control_steps = sum(i["steps"] for i in result.metrics["control_training"])
    student_steps = sum(i["steps"] for i in result.metrics["student_training"])
    assert control_steps == student_steps > 0
    chosen = result.metrics["submission"]["model"]
    assert chosen == verdict["submitted"]
    assert (result.run_dir / "submission.csv").read_bytes() == (result.run_dir / f"{chosen}_submission.csv").read_bytes()


def test_a_stricter_guard_decides_again_from_the_cached_models_on_the_same_numbers(base_run, tmp_path):
    from pipeline.run.stages import run_pipeline

    # The guard does not key a model: this run takes the base run's teacher, students and control from its cache and
    # only decides again, on the same scores and resamples. Which model a guard of 1.0 submits on a sample this
    # small is the data's to say; tests/test_verdict.py builds a student that wins and one that cannot.
    cfg, base = base_run
    result = run_pipeline(cfg.replace(guard_confidence=1.0, runs_dir=str(tmp_path / "runs"), output=None))
    assert {info["cache"] for info in result.metrics["student_training"] + result.metrics["control_training"]} == {"hit"}
    verdict, before = result.metrics["verdict"], base.metrics["verdict"]
    def numbers(record: dict) -> dict:  # what the guard's threshold cannot change (the groups' scores and ESS)
        groups = {g: {k: v for k, v in group.items() if k not in ("submitted", "reason")}
                  for g, group in record.get("groups", {}).items()}
        return {**{k: v for k, v in record.items() if k not in ("submitted", "reason", "groups")}, "groups": groups}

    assert numbers(verdict) == numbers(before) and verdict["groups"]
    fallback = "control" if verdict["control_vs_teacher"]["gain"] >= 0 else "teacher"
    won = verdict["student_vs_control"]["p_better"] == 1.0
    assert verdict["submitted"] == ("student" if won else fallback) and "100%" in verdict["reason"]
    assert verdict["reason"].startswith("GUARD") == (not won)
    chosen = result.run_dir / f"{verdict['submitted']}_submission.csv"
    assert (result.run_dir / "submission.csv").read_bytes() == chosen.read_bytes()


@pytest.fixture(scope="session")
def cross_validated_run(tiny_fisheries, tmp_path_factory):
    """Two cross-validated teachers, each with two out-of-fold students that pseudo-label the private group only:
    one run serves the tests of both (it used to be two runs, 108 s of the suite's CPU)."""
    from pipeline.run.stages import run_pipeline

    tmp = tmp_path_factory.mktemp("cross_validated")
    return run_pipeline(tiny_config(tiny_fisheries / "data", tmp, epochs=2, folds=2, pseudo_folds=2,
                                    pseudo_groups=("private",)))


def test_cross_validated_teachers_score_every_labeled_image_out_of_fold(cross_validated_run):
    result = cross_validated_run
    metrics = result.metrics
    assert metrics["verdict"]["kind"] == "out-of-fold" and metrics["verdict"]["rows"] == metrics["items"]["labeled"]
    assert len(metrics["teacher_training"]["models"]) == 2
    split = pd.read_csv(result.run_dir / "split.csv")
    assert sorted(split["fold"].unique()) == [0, 1] and len(split) == metrics["items"]["labeled"]
    saved = np.load(result.run_dir / "probabilities.npz")
    for model in ("teacher", "control", "student"):  # every labeled row scored by a model that never trained on it
        assert np.isfinite(saved[f"scored_{model}"]).all() and len(saved[f"scored_{model}"]) == len(split)
        assert saved[f"test_{model}"].shape == (len(saved["test_ids"]), 8)


def test_out_of_fold_students_pseudo_label_only_the_private_group_and_never_the_fold_they_predict(cross_validated_run):
    result = cross_validated_run
    provenance = pd.read_csv(result.run_dir / "pseudo_labels.csv")
    selected = provenance[provenance["status"] == "selected"]
    assert set(selected["group"]) == {"private"} and set(selected["pseudo_fold"]) == {1, 2}
    assert set(provenance.loc[provenance["group"] == "public", "status"]) == {"group not pseudo-labeled"}
    assert result.metrics["pseudo"]["by_group"]["public"] == 0
    private = set(provenance.loc[provenance["group"] == "private", "id"])
    for _, chain in provenance.groupby(["model", "round"]):
        # the pseudo-folds split the private items: each is held out of exactly one (the one whose student predicts
        # it) and can be pseudo-labeled only for the other's student
        held_out = {k: set(chain.loc[(chain["pseudo_fold"] == k) & (chain["status"] == "not eligible"), "id"]) for k in (1, 2)}
        assert held_out[1] | held_out[2] == private and not held_out[1] & held_out[2] and held_out[1] and held_out[2]
        for k, other in ((1, 2), (2, 1)):
            assert set(chain.loc[(chain["pseudo_fold"] == k) & (chain["status"] == "selected"), "id"]) <= held_out[other]
