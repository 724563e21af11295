"""`runs rescore`: a run's scores, verdict, blends and submissions recomputed from its folder alone."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pipeline.__main__ import main
from pipeline.plugin.api import Decision
from pipeline.errors import UserError
from pipeline.plugin.registry import get_competition
from pipeline.run.rescore import RunFolder, load_run_folder, rescore, submission_table


def trained(test):
    """Tests that read the shared tiny runs (tests/conftest.py `tiny_plugin_run`): they train once per session."""
    return pytest.mark.slow(pytest.mark.xdist_group("plugin-runs")(test))


@pytest.fixture
def run_copy(tiny_plugin_run, tmp_path):
    """A writable copy of the shared tiny fisheries run folder."""
    target = tmp_path / "runs" / "fisheries" / "tiny-fisheries"
    shutil.copytree(tiny_plugin_run("fisheries").run_dir, target)
    return target


@pytest.mark.parametrize("name", ["fisheries", "amazon"])
@trained
def test_rescore_reproduces_the_recorded_scores_verdict_decisions_and_leaderboard_exactly(name, tiny_plugin_run, plugin_sample):
    run_dir = tiny_plugin_run(name).run_dir
    metrics = json.loads((run_dir / "metrics.json").read_text())
    result = rescore(run_dir, solution=plugin_sample(name, small=True) / "solution.csv")
    assert result.scores == metrics["holdout"]  # exact: same probabilities, same refit decision, same metric
    assert result.verdict.to_dict() == metrics["verdict"]  # the bootstrap too (same seed from config.json)
    assert {m: d.to_dict() for m, d in result.decisions.items()} == metrics["decision"]
    assert result.leaderboard == metrics["leaderboard"]
    if name == "amazon":
        assert all(d.thresholds is not None for d in result.decisions.values())


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
    run = load_run_folder(run_copy, fisheries)
    mixed = 0.75 * run.scored["student"] + 0.25 * run.scored["control"]
    result = rescore(run_copy, blend="student=3,control=1")
    assert result.scores["blend"] == pytest.approx(fisheries.metric(run.y_scored, mixed), rel=1e-9)
    assert result.decisions["blend"] == Decision()
    written = np.loadtxt(run_copy / "rescored_blend_submission.csv", delimiter=",", skiprows=1, usecols=range(1, 9))
    student = np.loadtxt(run_copy / "student_submission.csv", delimiter=",", skiprows=1, usecols=range(1, 9))
    control = np.loadtxt(run_copy / "control_submission.csv", delimiter=",", skiprows=1, usecols=range(1, 9))
    assert np.allclose(written, 0.75 * student + 0.25 * control, atol=1e-6)


@trained
def test_another_metric_of_the_plugin_can_be_scored(run_copy):
    result = rescore(run_copy, metric="accuracy")
    assert result.metric == "accuracy" and result.greater_is_better
    assert all(0.0 <= s <= 1.0 for s in result.scores.values())


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


def test_an_id_with_no_readable_image_gets_the_class_prior_as_in_the_run(tmp_path):
    """No training: a hand-made RunFolder whose submission lists an id the probabilities lack (unreadable image)."""
    fisheries = get_competition("fisheries")
    y = np.eye(8, dtype=np.float32)[[0, 0, 0, 1]]
    run = RunFolder(tmp_path, {}, {}, ["ALB", "BET", "DOL", "LAG", "NoF", "OTHER", "SHARK", "YFT"], y, np.array([-1, -1, 0, 0]),
                    np.array(["b.jpg", "a.jpg"]), {}, {}, ["a.jpg", "broken.jpg", "b.jpg"])
    test = np.full((2, 8), 0.125, dtype=np.float32)
    test[1, 2] = 0.3  # a.jpg
    table = submission_table(fisheries, run, test, Decision())
    assert table["image"].tolist() == ["a.jpg", "broken.jpg", "b.jpg"]
    assert table.iloc[0, 1:].to_numpy(dtype=float)[2] == pytest.approx(0.3)
    assert np.allclose(table.iloc[1, 1:].to_numpy(dtype=float), [0.75, 0.25, 0, 0, 0, 0, 0, 0])  # the train prior
    assert np.allclose(table.iloc[2, 1:].to_numpy(dtype=float), 0.125)
