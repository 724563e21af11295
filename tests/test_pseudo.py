"""Pseudo-label selection: pure numpy invariants (ratio, quotas per group, threshold, class caps, folds)."""
from __future__ import annotations

import subprocess
import sys

import dataclasses

import numpy as np
import pytest

from pipeline.method.pseudo import PseudoSettings, assign_folds, confidence_and_classes, select_pseudo_labels, target_count
from pipeline.method.trust import certain_tag_band
from pipeline.run.config import RunConfig


def random_probs(n: int, k: int, seed: int = 0) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(0, 2, (n, k))
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def settings(**changes) -> PseudoSettings:
    """The run's default selection options as one round (tests of rounds set theirs), with `changes`."""
    return dataclasses.replace(PseudoSettings.of(RunConfig()), **{"rounds": 1, **changes})


def select(probs, test_groups, n_train=300, share=None, eligible=None, **changes):
    share = np.full(probs.shape[1], 1 / probs.shape[1]) if share is None else share
    eligible = np.ones(len(probs), bool) if eligible is None else eligible
    return select_pseudo_labels(probs, test_groups, eligible, n_train, share, settings(**changes))


def test_selection_options_are_the_runs_and_have_no_defaults_of_their_own():
    cfg = RunConfig(pseudo_ratio=0.5, pseudo_threshold=0.2, pseudo_class_cap=3.0, pseudo_groups=("private",),
                    pseudo_labels="soft", pseudo_balance="train", pseudo_rounds=4)
    assert PseudoSettings.of(cfg) == PseudoSettings(ratio=0.5, threshold=0.2, class_cap=3.0, groups=("private",),
                                                    labels="soft", balance="train", rounds=4)
    with pytest.raises(TypeError):
        PseudoSettings(ratio=0.5)  # a default here could disagree with the run's (it did: 0.9 and 1 round)


def test_target_count_gives_the_requested_share_of_the_combined_set():
    for n_train, ratio in ((300, 0.25), (3000, 1 / 3), (10, 0.5)):
        n = target_count(n_train, ratio)
        assert abs(n / (n_train + n) - ratio) < 1 / n_train
    assert target_count(300, 0.0) == 0


def test_ratio_zero_selects_nothing_and_says_so():
    probs = random_probs(100, 4)
    selection = select(probs, np.array(["public"] * 100), ratio=0.0)
    assert len(selection) == 0
    assert "teacher only" in selection.stop_reason


def test_quotas_are_proportional_to_group_sizes():
    probs = random_probs(400, 4)
    groups = np.array(["public"] * 100 + ["private"] * 300)
    selection = select(probs, groups, n_train=300, ratio=0.25, class_cap=100)
    assert len(selection) == 100
    assert (selection.group == "public").sum() == 25 and (selection.group == "private").sum() == 75
    assert selection.stop_reason == "target reached"


def test_only_the_chosen_groups_are_pseudo_labeled():
    probs = random_probs(200, 3)
    groups = np.array(["public", "private"] * 100)
    selection = select(probs, groups, n_train=150, ratio=0.25, groups=("private",), class_cap=100)
    assert len(selection) == 50 and set(selection.group) == {"private"}


def test_most_confident_items_are_taken_and_threshold_is_respected():
    probs = random_probs(200, 5, seed=1)
    groups = np.array(["public"] * 200)
    confidence = probs.max(axis=1)
    selection = select(probs, groups, n_train=90, ratio=0.25, class_cap=100)
    cut = np.sort(confidence)[::-1][len(selection) - 1]
    assert (confidence[selection.index] >= cut).all()
    strict = select(probs, groups, n_train=300, ratio=0.25, threshold=0.9, class_cap=100)
    assert (strict.confidence >= 0.9).all() and len(strict) == (confidence >= 0.9).sum()
    assert "threshold" in strict.stop_reason


def test_class_cap_keeps_the_favourite_class_from_flooding():
    probs = np.full((300, 2), 0.1)
    probs[:, 0] = 0.9  # the teacher calls everything class 0
    probs[250:] = [0.2, 0.8]
    share = np.array([0.5, 0.5])
    selection = select(probs, np.array(["public"] * 300), n_train=300, share=share, ratio=0.25, class_cap=1.0, balance="train")
    counts = np.bincount([c[0] for c in selection.classes], minlength=2)
    assert counts[0] <= np.ceil(0.5 * 100) and counts[1] == 50
    assert selection.per_group["public"]["skipped_by_class_cap"] > 0


def test_hard_and_soft_targets():
    probs = random_probs(50, 3)
    groups = np.array(["public"] * 50)
    hard = select(probs, groups, n_train=60, ratio=0.25, labels="hard", class_cap=100)
    soft = select(probs, groups, n_train=60, ratio=0.25, labels="soft", class_cap=100)
    np.testing.assert_array_equal(hard.index, soft.index)
    assert set(np.unique(hard.targets)) == {0.0, 1.0}
    np.testing.assert_allclose(soft.targets, probs[soft.index], rtol=1e-6)


def test_ineligible_items_are_never_selected():
    probs = random_probs(100, 3)
    eligible = np.arange(100) % 2 == 0
    selection = select(probs, np.array(["public"] * 100), n_train=3000, eligible=eligible, ratio=0.25, class_cap=100)
    assert eligible[selection.index].all() and len(selection) == 50
    assert "whole eligible pool" in selection.stop_reason


def test_summary_counts_add_up():
    probs = random_probs(120, 4)
    groups = np.array(["public"] * 40 + ["private"] * 80)
    selection = select(probs, groups, n_train=150, ratio=0.25)
    summary = selection.summary(["a", "b", "c", "d"])
    assert summary["selected"] == len(selection) == sum(summary["by_group"].values()) == sum(summary["by_class"].values())
    assert selection.round == 1
    assert summary["by_status"]["selected"] == len(selection)
    assert sum(summary["by_status"].values()) == len(probs)  # one status per test item


def test_predicted_balance_follows_the_teachers_class_distribution_on_the_group():
    # the teacher calls 80% of this group class 0 (a group unlike train, whose share is 50/50)
    probs = np.tile([0.1, 0.9], (100, 1)).astype(float)
    probs[:80] = [0.9, 0.1]
    probs[:, :] += np.linspace(0, 0.05, 100)[:, None] * [1, -1]  # distinct confidences
    selection = select(probs, np.array(["private"] * 100), n_train=50, share=np.array([0.5, 0.5]), ratio=0.5, class_cap=1.0)
    counts = np.bincount([c[0] for c in selection.classes], minlength=2)
    assert len(selection) == 50 and counts[0] == 40 and counts[1] == 10  # the group's own 80/20, not train's 50/50
    trained = select(probs, np.array(["private"] * 100), n_train=50, share=np.array([0.5, 0.5]), ratio=0.5, class_cap=1.0, balance="train")
    assert np.bincount([c[0] for c in trained.classes], minlength=2)[0] == 25


def test_rounds_ask_for_a_growing_share_and_the_last_round_for_all_of_it():
    probs = random_probs(1000, 4)
    groups = np.array(["public"] * 500 + ["private"] * 500)
    sizes = [len(select_pseudo_labels(probs, groups, np.ones(1000, bool), 100, np.full(4, 0.25),
                                      settings(ratio=0.8, rounds=3, class_cap=100), round=r)) for r in (1, 2, 3)]
    wanted = [target_count(100, 0.8, r, 3) for r in (1, 2, 3)]
    assert all(abs(got - want) <= 1 for got, want in zip(sizes, wanted))  # each group's quota is rounded
    assert wanted[-1] == target_count(100, 0.8) == 400
    assert sizes[0] < sizes[1] < sizes[2]


def test_every_item_gets_a_status_that_says_why():
    probs = random_probs(60, 3)
    groups = np.array(["public"] * 30 + ["private"] * 30)
    eligible = np.arange(60) % 3 != 0
    selection = select(probs, groups, n_train=20, eligible=eligible, ratio=0.5, threshold=0.5, groups=("public",))
    assert set(selection.status[groups == "private"]) == {"group not pseudo-labeled"}
    public = np.flatnonzero(groups == "public")
    assert set(selection.status[public[~eligible[public]]]) == {"not eligible"}
    low = public[eligible[public] & (selection.item_confidence[public] < 0.5)]
    assert set(selection.status[low]) <= {"below threshold", "over quota"}
    assert (selection.status[selection.index] == "selected").all()


def test_multi_label_confidence_needs_every_tag_clear_of_its_threshold():
    probs = np.array([[0.97, 0.02], [0.97, 0.45], [0.5, 0.5]])
    confidence, hard = confidence_and_classes(probs, multi_label=True, thresholds=np.array([0.5, 0.5]))
    assert confidence[0] > 0.9 > confidence[1] and confidence[2] == 0
    np.testing.assert_array_equal(hard, [[1, 0], [1, 0], [1, 1]])


def test_folds_spread_each_group_evenly():
    groups = np.array(["public"] * 10 + ["private"] * 21)
    fold = assign_folds(groups, 3, seed=0)
    for g in ("public", "private"):
        counts = np.bincount(fold[groups == g], minlength=3)
        assert counts.max() - counts.min() <= 1
    np.testing.assert_array_equal(fold, assign_folds(groups, 3, seed=0))


def test_mismatched_lengths_are_a_value_error():
    with pytest.raises(ValueError, match="one row per test item"):
        select(random_probs(5, 2), np.array(["public"] * 4))


def test_selection_module_does_not_import_tensorflow():
    code = "import sys, pipeline.method.pseudo; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_pool_smaller_than_the_target_is_still_taken_as_a_curriculum():
    probs = random_probs(200, 4)
    groups = np.array(["public"] * 100 + ["private"] * 100)
    options = settings(ratio=0.95, rounds=2, class_cap=100)  # wants 19x train = 1900, only 200 exist
    first, last = (select_pseudo_labels(probs, groups, np.ones(200, bool), 100, np.full(4, 0.25), options, round=r)
                   for r in (1, 2))
    assert len(first) == 100 and len(last) == 200  # half the pool, then all of it
    assert set(first.index) <= set(last.index)  # the most confident first
    assert "whole eligible pool" in last.stop_reason


def test_precision_threshold_keeps_the_largest_confident_slice_that_is_right_often_enough():
    from pipeline.method.trust import precision_threshold

    # by falling confidence: right, right, right, wrong, right -> running precision 1, 1, 1, 0.75, 0.8
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.55, 0.45]])
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [1, 0]], dtype=float)
    assert precision_threshold(probs, y, 0.75) == 0.55  # the whole slice is 80% right
    assert precision_threshold(probs, y, 0.9) == 0.7  # the top three are all right, the fourth is not
    assert precision_threshold(probs, y, 0.0) == 0.0  # off
    assert np.isinf(precision_threshold(probs[[3]], y[[3]], 0.5))  # not even the most confident is right


def test_precision_threshold_multi_label_counts_the_share_of_tags_decided_right():
    from pipeline.method.trust import precision_threshold

    probs = np.array([[0.95, 0.05, 0.9], [0.9, 0.2, 0.1]])  # confidences (smallest margin from 0.5): 0.8, 0.6
    y = np.array([[1, 0, 1], [1, 1, 0]], dtype=float)  # the second row gets one tag of three wrong
    assert precision_threshold(probs, y, 1.0, multi_label=True) == pytest.approx(0.8)
    assert precision_threshold(probs, y, 5 / 6, multi_label=True) == pytest.approx(0.6)


def test_a_precision_threshold_only_ever_removes_the_least_confident_items():
    from pipeline.method.trust import precision_threshold

    rng = np.random.default_rng(0)
    test_probs, scored_probs = rng.dirichlet(np.ones(4), 300), rng.dirichlet(np.ones(4) * 0.3, 100)
    y = np.eye(4)[[rng.choice(4, p=p) for p in scored_probs]]  # calibrated: confident rows are right more often
    groups = np.array(["public", "private"] * 150)
    loose = select_pseudo_labels(test_probs, groups, np.ones(300, bool), 100, np.full(4, 0.25), settings(ratio=0.7))
    cutoff = precision_threshold(scored_probs, y, 0.9)
    assert 0 < cutoff < 1
    strict = select_pseudo_labels(test_probs, groups, np.ones(300, bool), 100, np.full(4, 0.25),
                                  settings(ratio=0.7, threshold=cutoff))
    assert set(strict.index) <= set(loose.index) and strict.confidence.min() >= cutoff
    assert (strict.status == "below threshold").sum() > 0


def test_a_threshold_that_stops_a_whole_pool_selection_is_named_as_the_reason():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.55, 0.45], [0.5, 0.5]])
    groups = np.array(["public", "public", "private", "private"])
    everything = select_pseudo_labels(probs, groups, np.ones(4, bool), 2, np.full(2, 0.5), settings(ratio=0.95))
    assert len(everything) == 4 and everything.stop_reason.startswith("the whole eligible pool")
    confident = select_pseudo_labels(probs, groups, np.ones(4, bool), 2, np.full(2, 0.5), settings(ratio=0.95, threshold=0.7))
    assert len(confident) == 2 and confident.stop_reason == "private: stopped by threshold"  # public took both of its own


def test_certain_tag_band_follows_the_calibration_the_holdout_shows():
    rng = np.random.default_rng(0)
    truth_rate = rng.random((4000, 17))  # how often each tag is really on
    on = rng.random(truth_rate.shape) < truth_rate
    # a calibrated model, then one that label smoothing squeezed towards 0.5: the band moves with the outputs
    for probs, low, high in ((truth_rate, 0.1, 0.9), (0.05 + 0.9 * truth_rate, 0.14, 0.86)):
        band = certain_tag_band(probs, on, 0.9)
        assert band[0] == pytest.approx(low, abs=0.02) and band[1] == pytest.approx(high, abs=0.02)
    assert certain_tag_band(truth_rate, on, 0.0) is None  # off: every tag labeled
    assert certain_tag_band(np.full((10, 3), 0.5), np.zeros((10, 3)), 0.9)[1] == np.inf  # never right often enough to be 1


def test_multi_label_tags_inside_the_band_are_left_unlabeled():
    probs = np.array([[0.95, 0.05, 0.40], [0.80, 0.30, 0.10], [0.60, 0.02, 0.99]])
    groups = np.array(["public"] * 3)
    kwargs = dict(eligible=np.ones(3, bool), n_train=10, train_share=np.full(3, 1 / 3), settings=settings(ratio=0.9),
                  multi_label=True, thresholds=np.full(3, 0.5))
    every_tag = select_pseudo_labels(probs, groups, **kwargs)
    banded = select_pseudo_labels(probs, groups, **kwargs, tag_band=(0.1, 0.9))
    assert np.array_equal(banded.index, every_tag.index)  # the band changes targets, not which items are chosen
    assert not np.isnan(every_tag.targets).any()
    expected = np.array([[1, 0, np.nan], [np.nan, np.nan, 0], [np.nan, 0, 1]], dtype=np.float32)
    assert np.array_equal(banded.targets, expected[banded.index], equal_nan=True)
    # single-label selection never masks
    single = select_pseudo_labels(probs / probs.sum(1, keepdims=True), groups, **{**kwargs, "multi_label": False},
                                  tag_band=(0.1, 0.9))
    assert not np.isnan(single.targets).any()


def test_alignment_rescales_a_biased_labeler_until_its_predicted_classes_match_the_train_share():
    """A teacher that favours class 0 (--pseudo-balance aligned): its aligned probabilities average to the train share,
    so the items it ranks most class-1-like become 1s, and a row's ranking within its class is kept."""
    from pipeline.method.pseudo import align_to_prior, aligned

    rng = np.random.default_rng(0)
    truth = np.arange(400) % 2
    p1 = np.clip(0.3 * truth + rng.uniform(0.0, 0.35, 400), 0.01, 0.99)  # the 1s are likelier 1, yet mostly below 0.5
    probs = np.stack([1 - p1, p1], axis=1)
    assert (probs.argmax(axis=1) == 1).mean() < 0.3  # biased: far fewer than half called 1
    weights = align_to_prior(probs, np.array([0.5, 0.5]))
    fixed = aligned(probs, weights)
    np.testing.assert_allclose(fixed.mean(axis=0), [0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(fixed.sum(axis=1), 1.0)
    assert (fixed.argmax(axis=1) == truth).mean() > (probs.argmax(axis=1) == truth).mean() + 0.1
    assert np.array_equal(np.argsort(fixed[:, 1], kind="stable"), np.argsort(probs[:, 1], kind="stable"))
    assert weights.max() == 1.0 and weights[1] == 1.0 and weights[0] < 1.0  # class 0 scaled down
    np.testing.assert_allclose(align_to_prior(np.full((3, 2), 0.5), np.array([0.5, 0.5])), [1.0, 1.0])  # nothing to fix
    assert align_to_prior(np.zeros((0, 3)), np.full(3, 1 / 3)).tolist() == [1.0, 1.0, 1.0]


def test_aligned_balance_caps_classes_by_their_train_share():
    probs = np.tile([[0.9, 0.1]], (100, 1))  # every item called class 0
    selection = select(probs, np.array(["private"] * 100), n_train=50, share=np.array([0.5, 0.5]), ratio=0.5,
                       class_cap=1.0, balance="aligned")
    assert len(selection) == 25  # half of the 50 asked for: class 0's train share; the aligning itself is the round's


def test_an_aligned_round_rescales_each_group_on_its_own_and_the_scored_rows_as_the_pooled_groups(capsys):
    from types import SimpleNamespace

    from pipeline.method.pseudo import align_to_prior, aligned
    from pipeline.method.rounds import Chain, _aligned

    rng = np.random.default_rng(3)
    test = random_probs(60, 3, seed=4) * np.array([1.0, 1.0, 0.2])  # a labeler that rarely says class 2
    test = (test / test.sum(axis=1, keepdims=True)).astype(np.float32)
    groups = np.array(["public"] * 20 + ["private"] * 40)
    scored = random_probs(10, 3, seed=5).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 30)]
    chain = Chain(model=0, n_models=1, fit_rows=np.arange(20), scored_rows=np.arange(20, 30), thresholds=np.zeros(3),
                  test_probs=test, scored_probs=scored, init=[], init_key="k")
    inputs = SimpleNamespace(items=SimpleNamespace(test_groups=groups, y=y))
    out = _aligned(inputs, chain, 1, ("public", "private"))
    prior = y[:20].mean(axis=0)
    for g in ("public", "private"):
        rows = groups == g
        np.testing.assert_allclose(out.test_probs[rows], aligned(test[rows], align_to_prior(test[rows], prior)), rtol=1e-5)
        np.testing.assert_allclose(out.test_probs[rows].mean(axis=0), prior, atol=1e-4)
    np.testing.assert_allclose(out.scored_probs, aligned(scored, align_to_prior(test, prior)), rtol=1e-5)
    assert out.fit_rows is chain.fit_rows and out.init_key == "k"  # only the probabilities change
    assert "rescaled to the train share" in capsys.readouterr().out


def test_with_k_folds_a_rounds_labels_are_weighed_on_every_folds_scored_rows(capsys):
    """Five folds of 20 scored rows: one fold's handful cannot vouch for a label (the net weight's Wilson bound on
    3 right of 3 is low), every fold's 100 rows pooled can. The cut follows the pooled rows once the chain has them."""
    from types import SimpleNamespace

    from pipeline.method.rounds import Chain, fit_round, pooled_evidence
    from pipeline.run.config import RunConfig

    n_classes, y = 3, np.eye(3, dtype=np.float32)[np.arange(100) % 3]
    right = (0.9 * y + 0.05).astype(np.float32)  # sure and right on every labeled row
    chains = [Chain(model=m, n_models=5, fit_rows=np.flatnonzero(np.arange(100) % 5 != m),
                    scored_rows=np.flatnonzero(np.arange(100) % 5 == m), thresholds=np.zeros(n_classes),
                    test_probs=np.tile([[0.9, 0.05, 0.05]], (30, 1)).astype(np.float32),
                    scored_probs=right[np.arange(100) % 5 == m], init=[], init_key="k") for m in range(5)]
    chains[0] = dataclasses.replace(chains[0], scored_probs=np.roll(chains[0].scored_probs, 1, axis=1))  # fold 0's rows: all wrong
    evidence = pooled_evidence(chains, y)
    assert evidence.probs.shape == (100, 3) and evidence.where == "the 100 out-of-fold rows of the 5 folds' labeling models"
    np.testing.assert_array_equal(evidence.y, np.concatenate([y[c.scored_rows] for c in chains]))
    assert chains[0].trust(y).where == "the 20 scored rows"  # without pooled evidence: its own rows

    cfg = RunConfig(competition="fisheries", data="d", folds=5, pseudo_ratio=0.0, pseudo_weight="net")
    inputs = SimpleNamespace(cfg=cfg, items=SimpleNamespace(y=y, test_groups=np.array(["public"] * 30)),
                             competition=SimpleNamespace(multi_label=False), pseudo_fold=np.zeros(30, dtype=int))
    alone, pooled = fit_round(inputs, chains[0], 1), fit_round(inputs, dataclasses.replace(chains[0], evidence=evidence), 1)
    assert np.isinf(alone.cutoff)  # its own 20 rows are all wrong: no label is likelier right than wrong
    assert pooled.cutoff == pytest.approx(0.95)  # 80 of the 100 pooled rows are right at that confidence: they pass
