"""`runs rescore`: a run's scores, verdict, blends and submissions recomputed from its folder alone."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from pipeline.__main__ import main
from pipeline.errors import UserError
from pipeline.files import write_csv_atomic
from pipeline.plugin.api import Decision
from pipeline.plugin.registry import get_competition, list_competitions
from pipeline.run.decision import submission_table
from pipeline.method import calibration
from pipeline.method.verdict import BY_GROUP, compare
from pipeline.run.folder import RunFolder, RunProbabilities, model_submission
from pipeline.run.metrics import RunMetrics
from pipeline.run.rescore import rescore


def trained(test):
    """Tests that read the shared tiny runs (tests/conftest.py `tiny_plugin_run`): they train once per session."""
    return pytest.mark.slow(pytest.mark.xdist_group("plugin-runs")(test))


@pytest.fixture
def run_copy(tiny_plugin_run, tmp_path):
    """A writable copy of the shared tiny fisheries run folder."""
    target = tmp_path / "runs" / "fisheries" / "tiny-fisheries"
    shutil.copytree(tiny_plugin_run("fisheries").run_dir, target)
    return target


@pytest.mark.parametrize("name", list_competitions())
@trained
def test_rescore_reproduces_the_run_byte_for_byte(name, tiny_plugin_run, plugin_sample, tmp_path):
    run_dir = tiny_plugin_run(name).run_dir
    metrics = json.loads((run_dir / "metrics.json").read_text())
    result = rescore(run_dir, solution=plugin_sample(name, small=True) / "solution.csv")
    assert result.outcome.holdout == metrics["holdout"]  # exact: same probabilities, same refit decision, same metric
    assert result.verdict.to_dict() == metrics["verdict"]  # the bootstrap too (same seed from config.json)
    assert {m: d.to_dict() for m, d in result.outcome.decisions.items()} == metrics["decision"]
    assert result.outcome.leaderboard == metrics["leaderboard"]
    if get_competition(name).multi_label:  # tags: thresholds fit on the scored rows, refit the same
        assert all(d.thresholds is not None for d in result.outcome.decisions.values())
    for model, table in result.outcome.tables.items():  # every submission, as the run wrote it
        write_csv_atomic(tmp_path / model, table)
        assert (tmp_path / model).read_bytes() == (run_dir / model_submission(model)).read_bytes(), model
    assert (tmp_path / result.outcome.submitted).read_bytes() == (run_dir / "submission.csv").read_bytes()


@pytest.mark.parametrize("name", list_competitions())
@trained
def test_metrics_json_reads_back_to_the_same_bytes(name, tiny_plugin_run):
    path = tiny_plugin_run(name).run_dir / "metrics.json"
    metrics = RunFolder(path.parent).read_metrics()
    assert metrics.submission.model == (BY_GROUP if metrics.verdict.by_group else metrics.verdict.submitted)
    assert metrics.timings.total_s > 0
    assert json.dumps(metrics.to_dict(), indent=2) + "\n" == path.read_text()


def test_metrics_json_of_an_older_version_reads_with_defaults():
    """The oldest form: no verdict, control, shift or submitted model; a teacher and a student only."""
    old = {"run_id": "r", "competition": "fisheries", "metric": "logloss", "greater_is_better": False,
           "data_fingerprint": "fp", "seed": 0, "holdout": {"teacher": 1.2, "student": 1.1},
           "pseudo": {"selected": 3}, "decision": {"teacher": {"thresholds": None}, "student": {"thresholds": None}},
           "items": {"train": 10}, "teacher_cache": "miss", "teacher_training": {}, "student_training": [],
           "timings": {"teacher_s": 1.0, "student_s": 2.0}, "submission": {"path": "s.csv", "sha256": "ab", "rows": 4},
           "versions": {}}
    metrics = RunMetrics.from_dict(old)
    assert metrics.verdict is None and metrics.shift is None and metrics.control_training == []
    assert metrics.submission.model is None and metrics.timings.control_s is None and metrics.timings.total_s is None
    assert metrics.models == ["teacher", "student"] and metrics.decision["student"] == Decision()
    with pytest.raises(UserError, match="m.json is not a metrics.json this pipeline wrote"):
        RunMetrics.from_dict({**old, "submission": {"rows": 4}}, "m.json")


@trained
def test_a_run_folder_written_before_this_version_still_rescores(run_copy):
    """What older runs lack: the submission ids and test groups in probabilities.npz, the newer metrics.json keys."""
    with np.load(run_copy / "probabilities.npz") as npz:
        arrays = {key: npz[key] for key in npz.files if key not in ("submission_ids", "test_groups")}
    np.savez_compressed(run_copy / "probabilities.npz", **arrays)
    metrics = json.loads((run_copy / "metrics.json").read_text())
    for key in ("verdict", "shift", "control_training", "leaderboard", "resumed"):
        metrics.pop(key, None)
    (run_copy / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")  # submission.csv keeps its sha256
    result = rescore(run_copy, write="control")
    assert result.written.read_bytes() == (run_copy / "control_submission.csv").read_bytes()
    assert result.outcome.holdout == metrics["holdout"] and "the run recorded" not in result.table()


@trained
def test_a_run_decided_before_calibration_and_group_verdicts_rescores_as_it_was_decided(run_copy):
    """A config.json without --calibrate is an older run's: rescored uncalibrated, and without the importance weights
    it did not keep, with no verdict per group."""
    config = json.loads((run_copy / "config.json").read_text())
    assert config.pop("calibrate") == "temperature"
    (run_copy / "config.json").write_text(json.dumps(config))
    with np.load(run_copy / "probabilities.npz") as npz:
        assert {"weight_public", "weight_private", "test_foreign", "test_unvouched"} <= set(npz.files)
        arrays = {key: npz[key] for key in npz.files if not key.startswith(("weight_", "test_foreign", "test_unvouched"))}
    np.savez_compressed(run_copy / "probabilities.npz", **arrays)
    result = rescore(run_copy, write="teacher")
    assert result.verdict.temperatures == {} and result.verdict.groups == {} and result.verdict.prior is None
    run = RunFolder(run_copy).read_probabilities()
    written = pd.read_csv(result.written).set_index("image").loc[run.test_ids].to_numpy()
    assert np.allclose(written, run.test["teacher"], atol=1e-6)  # the teacher's probabilities as they were


@trained
def test_a_run_calibrated_before_the_temperature_prior_rescores_with_the_fit_it_had(run_copy):
    """A verdict with temperatures but no temperature_prior_sd was fit without the prior: rescored so, and a run of
    this version records the prior it used."""
    metrics = json.loads((run_copy / "metrics.json").read_text())
    assert metrics["verdict"]["temperature_prior_sd"] == calibration.PRIOR_SD
    del metrics["verdict"]["temperature_prior_sd"]
    (run_copy / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    result = rescore(run_copy)
    run = RunFolder(run_copy).read_probabilities()
    for model, t in result.verdict.temperatures.items():
        assert t == pytest.approx(round(calibration.fit_temperature(run.y_scored, run.scored[model], prior_sd=None), 4))
    assert result.verdict.temperatures != metrics["verdict"]["temperatures"]  # the prior moved them in the run
    assert result.verdict.temperature_prior_sd is None


@trained
def test_write_makes_a_new_validated_submission_and_never_overwrites(run_copy):
    before = (run_copy / "submission.csv").read_bytes()
    result = rescore(run_copy, write="teacher")
    assert result.written == run_copy / "rescored_teacher_submission.csv"
    assert result.written.read_bytes() == (run_copy / "teacher_submission.csv").read_bytes()  # same rows, same bytes
    assert (run_copy / "submission.csv").read_bytes() == before
    with pytest.raises(UserError, match="rescored_teacher_submission.csv already exists; remove it first"):
        rescore(run_copy, write="teacher")


@trained
def test_a_blend_is_the_weighted_mean_of_the_models_probabilities(run_copy, plugin_sample, capsys):
    code = main(["runs", "rescore", "tiny-fisheries", "--runs-dir", str(run_copy.parent.parent), "--blend",
                 "student=3,control=1", "--write", "blend", "--solution", str(plugin_sample("fisheries", small=True) / "solution.csv")])
    assert code == 0
    out = capsys.readouterr().out
    assert "blend 0.75 student + 0.25 control" in out and "blend vs " in out and "recorded" in out
    fisheries = get_competition("fisheries")
    run, cfg = RunFolder(run_copy).read_probabilities(), RunFolder(run_copy).read_config()
    assert cfg.calibrate == "temperature"  # the blend is calibrated like every model: as one more model
    mixed = 0.75 * run.scored["student"] + 0.25 * run.scored["control"]
    result = rescore(run_copy, blend="student=3,control=1")
    expected = fisheries.metric(run.y_scored, calibration.cross_fitted(run.y_scored, mixed, cfg.seed))
    assert result.outcome.scores["blend"] == pytest.approx(expected, rel=1e-9)
    assert result.outcome.decisions["blend"] == Decision() and "blend" not in result.verdict.scores
    written = pd.read_csv(run_copy / "rescored_blend_submission.csv").set_index("image")
    test = pd.DataFrame(calibration.scale(0.75 * run.test["student"] + 0.25 * run.test["control"],
                                          calibration.fit_temperature(run.y_scored, mixed)), index=run.test_ids)
    assert np.allclose(written.loc[run.test_ids].to_numpy(), test.to_numpy(), atol=1e-6)


@trained
def test_another_metric_of_the_plugin_can_be_scored(run_copy):
    result = rescore(run_copy, metric="accuracy")
    assert result.metric == "accuracy" and result.greater_is_better
    run = RunFolder(run_copy).read_probabilities()
    hits = {m: float((p.argmax(axis=1) == run.y_scored.argmax(axis=1)).mean()) for m, p in run.scored.items()}
    assert result.outcome.scores == pytest.approx(hits, abs=1e-12)


@pytest.mark.parametrize("blend, message", [
    ("student=0.5,kontrol=0.5", r"'kontrol=0.5' must be MODEL=WEIGHT with MODEL one of teacher, control, student"),
    ("student=-1", r"'student=-1' must be MODEL=WEIGHT"),
    ("student", r"'student' must be MODEL=WEIGHT"),
])
@trained
def test_a_bad_blend_is_named(blend, message, run_copy):
    with pytest.raises(UserError, match=message):
        rescore(run_copy, blend=blend)


@trained
def test_a_damaged_run_folder_is_named(run_copy, tmp_path):
    split = run_copy / "split.csv"
    split.write_text(split.read_text().replace(",0,holdout", ",-1,train", 1))
    with pytest.raises(UserError, match="split.csv and probabilities.npz disagree"):
        rescore(run_copy)
    (run_copy / "probabilities.npz").unlink()
    with pytest.raises(UserError, match=r"lacks probabilities.npz; rescoring needs"):
        rescore(run_copy)
    assert main(["runs", "rescore", "no-such-run", "--runs-dir", str(tmp_path)]) == 2


def test_an_id_with_no_readable_image_gets_the_class_prior_as_in_the_run():
    """No training: hand-made probabilities whose submission lists an id they lack (an unreadable image)."""
    fisheries = get_competition("fisheries")
    y = np.eye(8, dtype=np.float32)[[0, 0, 0, 1]]
    probs = RunProbabilities(["ALB", "BET", "DOL", "LAG", "NoF", "OTHER", "SHARK", "YFT"], np.array(["1", "2", "3", "4"]),
                             y, np.array([-1, -1, 0, 0]), np.array(["b.jpg", "a.jpg"]), None,
                             ["a.jpg", "broken.jpg", "b.jpg"], {}, {})
    test = np.full((2, 8), 0.125, dtype=np.float32)
    test[1, 2] = 0.3  # a.jpg
    table = submission_table(fisheries, probs, test, Decision())
    assert table["image"].tolist() == ["a.jpg", "broken.jpg", "b.jpg"]
    assert table.iloc[0, 1:].to_numpy(dtype=float)[2] == pytest.approx(0.3)
    assert np.allclose(table.iloc[1, 1:].to_numpy(dtype=float), [0.75, 0.25, 0, 0, 0, 0, 0, 0])  # the train prior
    assert np.allclose(table.iloc[2, 1:].to_numpy(dtype=float), 0.125)
    assert probs.kind == "holdout" and dataclasses.replace(probs, fold=np.array([0, 1, 0, 1])).kind == "out-of-fold"


@trained
def test_a_run_whose_guard_compared_calibrated_models_rescores_so_and_a_run_of_this_version_records_uncalibrated(run_copy):
    """A config.json without --guard-compares is an older run's: its guard compared the calibrated models, and its
    rescore does too; this version's run compared them as they predicted, and says so in its verdict."""
    metrics = json.loads((run_copy / "metrics.json").read_text())
    assert metrics["verdict"]["compared"] == "uncalibrated"
    config = json.loads((run_copy / "config.json").read_text())
    assert config.pop("guard_compares") == "uncalibrated"
    (run_copy / "config.json").write_text(json.dumps(config))
    older = rescore(run_copy)
    assert older.verdict.compared is None and "compared" not in older.verdict.to_dict()
    y, scored, decisions = older.probs.y_scored, older.outcome.scored, older.outcome.decisions
    calibrated = compare(get_competition("fisheries"), y, scored["student"], scored["control"],
                         (decisions["student"], decisions["control"]), ("student", "control"), 0)
    assert older.verdict.comparisons["student_vs_control"] == calibrated


def test_a_run_made_before_unmeasured_p_better_reads_the_gate_it_was_decided_with(tmp_path):
    """Before the option, an unmeasured group got the student when it had not lost beyond noise: better in at least
    1 - --guard-confidence of the resamples. An older config.json reads so; a newer one keeps its own value."""
    (tmp_path / "config.json").write_text(json.dumps({"competition": "fisheries", "guard_confidence": 0.7}))
    assert RunFolder(tmp_path).read_config().unmeasured_p_better == pytest.approx(0.3)
    (tmp_path / "config.json").write_text(json.dumps({"competition": "fisheries", "unmeasured_p_better": 0.6}))
    assert RunFolder(tmp_path).read_config().unmeasured_p_better == 0.6
    (tmp_path / "config.json").write_text(json.dumps({"competition": "fisheries"}))
    assert RunFolder(tmp_path).read_config().unmeasured_p_better == pytest.approx(0.2)  # the guard's default, 0.8
