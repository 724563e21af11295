"""One control for every pseudo-label setting (issue 26, item 5): a student round's budget is counted in passes over
the labeled rows, so the control (the teacher continued on its train rows for --pseudo-rounds of those budgets) has
the same cache key, and the same predictions, whatever the pseudo-label count. Real tiny runs, real cache."""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import tiny_config


def probabilities(result) -> dict[str, np.ndarray]:
    with np.load(result.run_dir / "probabilities.npz") as saved:
        return {name: saved[name] for name in saved.files}


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
    # another ratio and the other batch layout: other pseudo-label counts, other student batches, the same control
    second = run_pipeline(cfg.replace(run_name="ratio-0.5", pseudo_ratio=0.5, student_batch="real+pseudo"))
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


@pytest.mark.slow
def test_round_one_is_labeled_by_the_control_and_with_pseudo_labeler_teacher_by_the_teacher(tiny_fisheries, tmp_path, capsys):
    """The control is trained before the students (its budget is theirs, known up front) and its predictions label
    round 1; the student still starts from the teacher and trains as long as the control. One cached control serves
    both labelers."""
    import pandas as pd

    from pipeline.run.stages import run_pipeline

    cfg = tiny_config(tiny_fisheries / "data", tmp_path, epochs=1, min_steps=6, tta=False, pseudo_ratio=0.5)
    runs = {labeler: run_pipeline(cfg.replace(run_name=labeler, pseudo_labeler=labeler)) for labeler in ("control", "teacher")}
    out = capsys.readouterr().out
    assert out.count("round 1 is labeled by the control (--pseudo-labeler control)") == 1
    assert [info["cache"] for info in runs["teacher"].metrics["control_training"]] == ["hit"]
    for labeler, run in runs.items():
        saved = probabilities(run)
        classes = list(saved["classes"])
        table = pd.read_csv(run.run_dir / "pseudo_labels.csv", dtype={"id": str, "pseudo_label": str})
        selected = table[table["status"] == "selected"]
        assert len(selected) > 0
        rows = [list(saved["test_ids"]).index(i) for i in selected["id"]]
        labeling = saved[f"test_{labeler}"][rows]
        assert selected["pseudo_label"].tolist() == [classes[c] for c in labeling.argmax(axis=1)], labeler
        assert steps_per_chain(run.metrics["student_training"]) == steps_per_chain(run.metrics["control_training"])
        assert run.metrics["pseudo"]["labeler"] == labeler
        assert f"Round 1 labeled by the {labeler} (--pseudo-labeler)." in (run.run_dir / "report.html").read_text()
    teacher_labels, control_labels = (probabilities(runs[k])[f"test_{k}"].argmax(axis=1) for k in ("teacher", "control"))
    assert not np.array_equal(teacher_labels, control_labels)  # the two labelers disagree somewhere: the test can fail
