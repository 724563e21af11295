"""A student's batches: the control's own batch of labeled items, with pseudo-labeled items on top."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.parametrize("n_train, n_pseudo, expected", [
    (640, 600, 30),  # about one pseudo-labeled item per labeled one
    (80, 1520, 32),  # few labels, a large pool: capped at the batch size
    (300, 100, 11),  # a quarter of the combined set: a third of a batch on top
    (1000, 1, 1),  # never rounded away
    (10, 0, 0),
])
def test_pseudo_items_per_batch_follow_their_share_of_the_pool(n_train, n_pseudo, expected):
    from pipeline.model.spec import pseudo_batch_size

    assert pseudo_batch_size(32, n_train, n_pseudo) == expected


def test_the_labeled_part_of_each_batch_is_what_a_fit_without_pseudo_labels_sees():
    from pipeline.model.batches import training_batches

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 255, (50, 4, 4, 3), dtype=np.uint8), rng.random((50, 3)).astype(np.float32)
    x_pseudo = np.full((20, 4, 4, 3), 7, dtype=np.uint8)  # recognisable: no labeled image is constant 7
    x[x == 7] = 8
    y_pseudo = np.full((20, 3), np.nan, dtype=np.float32)
    alone, none_added = training_batches(x, y, 8, seed=3)
    mixed, added = training_batches(x, y, 8, seed=3, pseudo=(x_pseudo, y_pseudo))
    assert none_added == 0 and added == 3  # round(8 * 20 / 50)
    for (xa, ya, wa), (xm, ym, wm) in zip(alone.take(12), mixed.take(12)):  # past one pass over both pools
        assert xm.shape[0] == 11 and ym.shape == (11, 3)
        assert np.array_equal(xm[:8], xa) and np.array_equal(ym[:8], ya)
        assert (xm.numpy()[8:] == 7).all() and np.isnan(ym.numpy()[8:]).all()
        assert (wa.numpy() == 1).all() and (wm.numpy() == 1).all()  # no weights given: every item weighs 1


def test_pseudo_labeled_items_carry_their_own_loss_weights_and_real_ones_weigh_1():
    from pipeline.model.batches import training_batches

    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 255, (40, 4, 4, 3), dtype=np.uint8), rng.random((40, 3)).astype(np.float32)
    x_pseudo = np.arange(10, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)  # image i is all i
    weights = np.linspace(0.1, 1.0, 10).astype(np.float32)
    mixed, added = training_batches(x, y, 8, seed=3, pseudo=(x_pseudo, np.zeros((10, 3), np.float32)),
                                    pseudo_weights=weights)
    assert added == 2  # round(8 * 10 / 40)
    for xm, _, wm in mixed.take(10):
        assert (wm.numpy()[:8] == 1).all()
        which = xm.numpy()[8:, 0, 0, 0]
        np.testing.assert_allclose(wm.numpy()[8:], weights[which])  # each item with its own weight


@pytest.mark.parametrize("foreign", [None, np.ones(40, bool)], ids=["one batch", "foreign apart"])
def test_pseudo_labeled_items_can_get_noise_of_their_own_and_the_labeled_items_keep_the_controls(foreign):
    """--pseudo-augment strong: the labeled part of each step is the control's (here no augmentation), and only the
    pseudo-labeled items are warped (FixMatch's strong view of an item labeled from its plain view)."""
    from pipeline.model.batches import fit_batches, training_batches
    from pipeline.model.spec import ModelSpec, TrainSettings

    rng = np.random.default_rng(4)
    x, y = rng.integers(0, 255, (40, 16, 16, 3), dtype=np.uint8), np.eye(3, dtype=np.float32)[np.arange(40) % 3]
    x_pseudo = rng.integers(0, 255, (40, 16, 16, 3), dtype=np.uint8)
    spec = ModelSpec(TrainSettings.defaults(image_size=16, batch_size=8), n_classes=3, multi_label=False)
    control, _ = training_batches(x, y, 8, seed=3)
    batches, added = fit_batches(spec, x, y, 3, "none", (x_pseudo, y), None, None, None, foreign, "strong")
    assert added == 8  # as many as the labeled items (all in a pass of their own when foreign)
    for (xc, _, _), batch in zip(control.take(6), batches.take(6)):
        if foreign is None:
            mixed, apart = batch[0], np.zeros((0, 16, 16, 3))
        else:
            (mixed, _, _), (apart, _, _) = batch
        mixed, apart = np.asarray(mixed), np.asarray(apart)
        np.testing.assert_array_equal(mixed[:8], xc.numpy())  # the control's items, untouched
        pseudo = np.concatenate([mixed[8:], apart])
        assert len(pseudo) == 8
        assert not any(np.allclose(p, raw) for p in pseudo for raw in x_pseudo)  # every pseudo-labeled item is warped


def test_pseudo_augment_needs_a_students_labeled_batch_with_items_on_top():
    from pipeline.errors import UserError
    from pipeline.run.config import RunConfig

    assert RunConfig(pseudo_augment="strong").pseudo_augment == "strong"
    for other in (dict(student_batch="pooled"), dict(pseudo_labels="online")):
        with pytest.raises(UserError, match="--pseudo-augment .* --student-batch real\\+pseudo"):
            RunConfig(pseudo_augment="strong", **other)
    with pytest.raises(UserError, match="--pseudo-augment"):
        RunConfig(pseudo_augment="wild")


def test_calibrated_weights_follow_how_often_the_labeler_is_right_at_each_confidence():
    from pipeline.method.trust import correctness_weights

    # scored rows: right when confident (>= 0.8), wrong otherwise
    probs = np.array([[0.9, 0.1], [0.85, 0.15], [0.95, 0.05], [0.6, 0.4], [0.55, 0.45], [0.4, 0.6]])
    y = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1], [1, 0]], dtype=np.float32)
    weights = correctness_weights(probs, y, np.array([0.99, 0.9, 0.58, 0.5]))
    assert weights[0] == weights[1] == 1.0 and weights[2] == weights[3] == 0.0
    assert correctness_weights(probs[:0], y[:0], np.array([0.7])).tolist() == [1.0]  # nothing scored: full weight


def test_a_fits_steps_count_passes_over_its_labeled_items_whatever_rides_on_top():
    """A student round's budget is --student-epochs passes over the train rows in --batch-size batches: the
    pseudo-labels ride on top of each step, so the control (no pseudo-label) gets the same steps."""
    from pipeline.model.spec import ModelSpec, TrainSettings

    spec = ModelSpec(TrainSettings.defaults(batch_size=32, min_steps=1), n_classes=3, multi_label=False)
    assert spec.steps(640, 3) == 60  # 20 batches of 32 a pass
    assert spec.steps(641, 3) == 63  # a last, short batch counts as one
    assert spec.steps(80, 6) == 6 * 3
    floor = ModelSpec(TrainSettings.defaults(batch_size=32, min_steps=100), n_classes=3, multi_label=False)
    assert floor.steps(640, 3) == 100


def test_auto_student_augmentation_follows_the_passes_over_the_labels():
    """`auto`: Noisy Student's strong noise for a long fit over few labels, none for a short fine-tune."""
    from pipeline.run.config import STRONG_NOISE_PASSES
    from pipeline.model.train import labeled_passes, student_augment_level

    assert labeled_passes(800, 32, 80, 1520, pooled=False) == 320  # 10 labels a class: 32 of 80 labeled items a step
    assert labeled_passes(100, 32, 640, 600, pooled=False) == 5  # the amazon sample at the demo budget
    assert labeled_passes(100, 32, 640, 640, pooled=True) == 2.5  # half of each pooled batch is labeled
    assert student_augment_level("auto", 320, "standard") == "strong"
    assert student_augment_level("auto", 5, "standard") == "standard"  # short fits: the control's augmentation
    assert student_augment_level("auto", 5, "none") == "none"
    assert student_augment_level("auto", STRONG_NOISE_PASSES, "light") == "light"
    assert student_augment_level("auto", STRONG_NOISE_PASSES + 0.1, "light") == "strong"
    assert student_augment_level("light", 320, "standard") == student_augment_level("light", 5, "none") == "light"
