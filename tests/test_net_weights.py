"""--pseudo-weight net: a pseudo-label weighs its expected net pull, 2q - 1 (pipeline/method/pseudo.py)."""
import numpy as np
import pytest

from pipeline.method import trust
from tests.conftest import tiny_config


def scored(n: int, accuracy_at: callable, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Single-label scored rows whose top class is right with probability accuracy_at(confidence)."""
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(0.2, 1.0, n)
    probs = np.full((n, 4), 0.0)
    probs[:, 0] = confidence
    probs[:, 1:] = ((1 - confidence) / 3)[:, None]
    right = rng.random(n) < accuracy_at(confidence)
    y = np.zeros((n, 4))
    y[np.arange(n), np.where(right, 0, 1 + rng.integers(0, 3, n))] = 1
    return probs, y


def test_a_teacher_right_less_often_than_wrong_hands_over_nothing():
    probs, y = scored(400, lambda c: np.full_like(c, 0.3))
    assert trust.net_threshold(probs, y) == float("inf")
    assert (trust.net_weights(probs, y, np.array([0.3, 0.6, 0.99])) == 0).all()


def test_a_teacher_right_when_confident_hands_over_its_confident_labels_at_weights_that_rise_with_confidence():
    probs, y = scored(2000, lambda c: c)  # calibrated: right as often as it is confident
    cut = trust.net_threshold(probs, y)
    assert 0.4 < cut < 0.65  # labels become likelier right than wrong around confidence 0.5
    w = trust.net_weights(probs, y, np.array([0.3, cut, 0.75, 0.98]))
    assert w[0] == 0 and w[1] > 0
    assert w[1] < w[2] < w[3]
    assert abs(w[3] - (2 * 0.98 - 1)) < 0.15  # 2q - 1


def test_no_scored_rows_means_no_cut_and_the_calibrated_weight_is_one():
    empty = np.zeros((0, 3))
    assert trust.net_threshold(empty, empty) == 0.0
    assert (trust.net_weights(empty, empty, np.array([0.5, 0.9])) == 1).all()


@pytest.mark.slow
def test_a_student_without_any_pseudo_label_that_passed_the_cut_is_the_control(tiny_fisheries, tmp_path):
    """Asked for pseudo-labels, none passed (a cut no softmax reaches): self-training is then the teacher continued
    on its train rows, which is the control, trained for a student's budget; not the teacher left as it was."""
    from pipeline.run.stages import run_pipeline

    cfg = tiny_config(tiny_fisheries / "data", tmp_path, run_name="no-pseudo-labels", pseudo_threshold=1.0,
                      pseudo_weight="net", epochs=1, min_steps=8, tta=False)
    result = run_pipeline(cfg)
    with np.load(result.run_dir / "probabilities.npz") as saved:
        assert np.array_equal(saved["test_student"], saved["test_control"])
        scored = ~np.isnan(saved["scored_control"]).any(axis=1)
        assert np.array_equal(saved["scored_student"][scored], saved["scored_control"][scored])
        assert not np.allclose(saved["test_control"], saved["test_teacher"])  # the control trained on
