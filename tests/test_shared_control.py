"""One control for every pseudo-label setting (issue 26, item 5): a student round's budget is counted in passes over
the labeled rows, so the control (the teacher continued on its train rows for --pseudo-rounds of those budgets) has
the same cache key, and the same predictions, whatever the pseudo-label count or the model that labels round 1 (the
control by default: trained before the students). Real tiny runs, real cache."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.conftest import tiny_config


def probabilities(result) -> dict[str, np.ndarray]:
    with np.load(result.run_dir / "probabilities.npz") as saved:
        return {name: saved[name] for name in saved.files}


def round_one_labels(run) -> dict[str, str]:
    """Test id -> the pseudo-label round 1 selected for it (pseudo_labels.csv)."""
    table = pd.read_csv(run.run_dir / "pseudo_labels.csv", dtype={"id": str, "pseudo_label": str})
    selected = table[(table["status"] == "selected") & (table["round"] == 1)]
    assert len(selected) > 0
    return dict(zip(selected["id"], selected["pseudo_label"]))


def round_one_argmax(run, model: str) -> dict[str, str]:
    """The same test ids -> the class `model` predicts for each (probabilities.npz)."""
    saved = probabilities(run)
    classes, ids = list(saved["classes"]), list(saved["test_ids"])
    return {i: classes[int(saved[f"test_{model}"][ids.index(i)].argmax())] for i in round_one_labels(run)}


def steps_per_chain(infos: list[dict]) -> dict[int, int]:
    """The optimizer steps each chain's (or control's) fits took, summed over its rounds."""
    totals: dict[int, int] = {}
    for info in infos:
        if "steps" in info:
            totals[info["model"]] = totals.get(info["model"], 0) + info["steps"]
    return totals


@pytest.mark.slow
def test_two_pseudo_ratios_share_one_cached_control_with_identical_predictions(tiny_fisheries, tmp_path, capsys):
    from pipeline.run.stages import run_pipeline

    # no --min-steps floor: the budget follows the train rows, the one way the pseudo-label count could reach it
    cfg = tiny_config(tiny_fisheries / "data", tmp_path, epochs=1, min_steps=1, student_epochs=2, tta=False,
                      pseudo_rounds=2, pseudo_ratio=0.2)
    first = run_pipeline(cfg.replace(run_name="ratio-0.2"))
    assert "control: cached in" not in capsys.readouterr().out
    # another ratio, the other batch layout and the other labeler: other pseudo-label counts, other student batches,
    # other labels, the same control
    second = run_pipeline(cfg.replace(run_name="ratio-0.5", pseudo_ratio=0.5, student_batch="real+pseudo",
                                      pseudo_labeler="teacher"))
    out = capsys.readouterr().out
    assert first.metrics["pseudo"]["selected"] != second.metrics["pseudo"]["selected"]
    assert second.metrics["teacher_cache"] == "hit"
    assert "control: cached in" in out
    controls = [run.metrics["control_training"] for run in (first, second)]
    assert [info["cache"] for info in controls[0]] == ["miss"] and [info["cache"] for info in controls[1]] == ["hit"]
    assert controls[0][0]["key"] == controls[1][0]["key"]
    saved = [probabilities(run) for run in (first, second)]
    for name in ("test_control", "scored_control"):
        assert np.array_equal(saved[0][name], saved[1][name], equal_nan=True), name
    assert not np.array_equal(saved[0]["test_student"], saved[1]["test_student"])  # the students did differ
    # the same budget: every chain's students, round by round, took the steps its control took
    for run in (first, second):
        students = run.metrics["student_training"]
        assert sorted({info["round"] for info in students}) == [1, 2]
        assert steps_per_chain(students) == steps_per_chain(run.metrics["control_training"])
    # round 1's labels: the control's (trained first, --pseudo-labeler control, the default), or the teacher's
    for run, labeler in ((first, "control"), (second, "teacher")):
        assert round_one_labels(run) == round_one_argmax(run, labeler), labeler
        assert run.metrics["pseudo"]["labeler"] == labeler
        assert f"Round 1 labeled by the {labeler} (--pseudo-labeler)." in (run.run_dir / "report.html").read_text()
    assert round_one_argmax(first, "control") != round_one_argmax(first, "teacher")  # the two disagree: it can fail


@pytest.mark.slow
def test_an_empty_round_still_trains_and_a_chain_with_no_pseudo_label_has_the_control_as_student(
        tiny_fisheries, tmp_path, capsys):
    """Round 1 selects nothing (a cut no softmax reaches): its model is the teacher continued on the train rows for
    the round's steps, and it labels round 2. Round 2 selects nothing either: the chain never saw a pseudo-label, so
    its student is the control (the teacher continued for both rounds' steps), not two fits one after the other."""
    from pipeline.run.stages import run_pipeline

    cfg = tiny_config(tiny_fisheries / "data", tmp_path, run_name="empty-rounds", epochs=1, min_steps=8, tta=False,
                      pseudo_rounds=2, pseudo_threshold=1.0)
    result = run_pipeline(cfg)
    out = capsys.readouterr().out
    assert "student round 1/2: 8 steps" in out and "no pseudo-label: the model it starts from" in out
    assert "no pseudo-label passed the cut: the student is the control (16 steps on the train rows)" in out
    students = result.metrics["student_training"]
    first, last = [info for info in students if info.get("round") == 1], [info for info in students if info.get("round") == 2]
    assert len(first) == 1 and first[0]["steps"] == 8 and first[0]["cache"] == "miss" and "reason" in first[0]
    assert len(last) == 1 and last[0]["trained"] is False
    assert [info["steps"] for info in result.metrics["control_training"]] == [16]
    saved = probabilities(result)
    assert np.array_equal(saved["test_student"], saved["test_control"])
    assert not np.allclose(saved["test_control"], saved["test_teacher"])

