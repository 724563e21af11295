"""--pseudo-labels online: the student labels its test images from a weak view and learns them on a strong one."""
from __future__ import annotations

import numpy as np
import pytest


def test_a_test_image_is_labeled_only_when_surer_than_the_cut_relative_to_the_labeled_batch():
    import tensorflow as tf

    from pipeline.model.online import RELATIVE_THRESHOLD, online_targets

    labeled = tf.constant([[0.9, 0.1], [0.1, 0.9]])  # confidence 0.9 on average, classes balanced
    test = tf.constant([[0.95, 0.05], [0.2, 0.8], [0.55, 0.45], [0.05, 0.95]])  # balanced too: alignment is neutral
    targets, mask = online_targets(labeled, test)
    cut = RELATIVE_THRESHOLD * 0.9
    assert mask.numpy().tolist() == [1.0, 0.0, 0.0, 1.0]  # 0.95 and 0.95 clear 0.81; 0.8 and 0.55 do not
    assert cut == pytest.approx(0.81)
    assert targets.numpy().argmax(axis=1).tolist() == [0, 1, 0, 1]


def test_alignment_pulls_a_group_whose_predictions_collapse_onto_one_class_back_to_the_labeled_balance():
    import tensorflow as tf

    from pipeline.model.online import online_targets

    labeled = tf.constant([[0.95, 0.05], [0.05, 0.95]])
    # a darkened group: everything leans to class 0, the items truly of class 1 a little less
    test = tf.constant([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    targets, _ = online_targets(labeled, test)
    assert targets.numpy().argmax(axis=1).tolist() == [0, 0, 1, 1]  # without alignment all four would be class 0


def test_an_online_fit_trains_on_its_test_images_and_reports_the_share_it_labeled(capsys):
    from pipeline.model import train
    from pipeline.model.spec import ModelSpec, TrainSettings

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (24, 16, 16, 3), dtype=np.uint8)
    y = np.eye(3, dtype=np.float32)[np.arange(24) % 3]
    test = rng.integers(0, 255, (40, 16, 16, 3), dtype=np.uint8)
    spec = ModelSpec(TrainSettings.defaults(backbone="small-cnn", image_size=16, batch_size=8, min_steps=1),
                     n_classes=3, multi_label=False)
    model, info = train.fit(spec, "online student", x, y, 4, seed=1, augment_level="light", unlabeled=test)
    assert info["items"] == 64 and info["pseudo_per_batch"] == 8  # 40 test images for 24 labeled: a full batch on top
    assert 0.0 <= info["online_share"] <= 1.0
    assert "of the step's test images labeled" in capsys.readouterr().out
    before = model.get_weights()
    again, _ = train.fit(spec, "online student", x, y, 4, seed=1, augment_level="light", unlabeled=test)
    for a, b in zip(before, again.get_weights()):  # same seed, same machine: the same student
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("multi_label, student_batch, words", [
    (True, "real+pseudo", "multi-label: use --pseudo-labels hard or soft"),
    (False, "pooled", r"use --student-batch real\+pseudo"),
])
def test_online_labels_refuse_what_they_cannot_do_before_anything_trains(multi_label, student_batch, words):
    from types import SimpleNamespace

    from pipeline.errors import UserError
    from pipeline.method.rounds import Chain, fit_round
    from pipeline.run.config import RunConfig

    cfg = RunConfig(competition="amazon", pseudo_labels="online", student_batch=student_batch)
    chain = Chain(model=0, n_models=1, fit_rows=np.arange(4), scored_rows=np.arange(4, 6), thresholds=np.zeros(2),
                  test_probs=np.full((3, 2), 0.5, np.float32), scored_probs=np.full((2, 2), 0.5, np.float32), init=[],
                  init_key="k")
    inputs = SimpleNamespace(cfg=cfg, items=SimpleNamespace(y=np.zeros((6, 2), np.float32)),
                             competition=SimpleNamespace(multi_label=multi_label))
    with pytest.raises(UserError, match=words):
        fit_round(inputs, chain, 1)
