"""The plugin contract, enforced: tests generated for every registered plugin, and broken plugins refused.

Per plugin (from the registry, so a new plugin is tested for free): its sample's tables pass the schema
check; a perfect submission scores perfectly; each metric's declared direction is right (perfect beats the
class prior, which beats shuffled predictions); decide/fit_decision shapes and the Decision JSON round trip;
one tiny end-to-end run. Then plugins that break the contract, refused with a UserError naming them.
"""
from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest

import pipeline.plugin.registry as registry
from competitions.fisheries import Fisheries
from pipeline.plugin.api import FLIPS, GROUPS, Decision, Metric, target_matrix
from pipeline.plugin.contract import check_items
from pipeline.errors import UserError
from pipeline.kaggle.download import verify_data
from pipeline.run.preflight import check_before_training
from pipeline.plugin.registry import get_competition, list_competitions
from pipeline.submission import load_submission, read_solution, score_against_solution, validate_submission
from tests.conftest import tiny_config

PLUGINS = list_competitions()


def better(metric: Metric, a: float, b: float) -> bool:
    return a > b if metric.higher_is_better else a < b


# ---- generated per plugin ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PLUGINS)
def test_the_class_declares_what_the_engine_reads(name):
    cls = type(get_competition(name))
    assert cls.name == name and cls.flips in FLIPS and isinstance(cls.multi_label, bool)
    assert cls.metrics and all(isinstance(m, Metric) for m in cls.metrics)
    for metric in cls.metrics:
        assert get_competition(name, metric.name).greater_is_better is metric.higher_is_better


@pytest.mark.parametrize("name", PLUGINS)
def test_sample_tables_pass_the_contract_and_a_perfect_submission_scores_perfectly(name, plugin_sample):
    competition = get_competition(name)
    sample = plugin_sample(name, small=True)
    data = sample / "data"
    competition.check_layout(data)
    classes = competition.class_names(data)
    train, test = competition.train_items(data), competition.test_items(data)
    check_items(competition, data, train, test)  # the schema: columns, groups, unique ids, labels
    assert len(train) >= 100 and set(test["group"]) == set(GROUPS)
    y = target_matrix(train["labels"], classes)
    assert (y.sum(axis=0) > 0).all(), "every class has a train image in the small sample"

    solution = read_solution(sample / "solution.csv")
    ids, truth, usage = competition.from_solution(solution, classes)
    expected = competition.expected_ids(data) or test["id"].tolist()
    assert sorted(ids) == sorted(expected)
    perfect = competition.to_submission(ids, truth, classes)
    validate_submission(perfect, competition, classes, expected)
    round_trip_ids, values = competition.from_submission(perfect, classes)
    assert round_trip_ids == ids and np.allclose(values, truth)
    scores = score_against_solution(competition, perfect, solution, classes)
    best = 1.0 if competition.greater_is_better else 0.0
    assert scores["public"] == pytest.approx(best, abs=1e-6) and scores["private"] == pytest.approx(best, abs=1e-6)


@pytest.mark.parametrize("name", PLUGINS)
def test_each_metric_direction_ranks_perfect_over_the_prior_over_shuffled(name, plugin_sample):
    """The declared direction is what the guard and every ranking trust: a wrong one would submit the worse model."""
    sample = plugin_sample(name, small=True)
    competition = get_competition(name)
    _, y, _ = competition.from_solution(read_solution(sample / "solution.csv"), competition.class_names(sample / "data"))
    prior = np.tile(y.mean(axis=0), (len(y), 1))  # the class prior of these labels: right on average, never sure
    rng = np.random.default_rng(0)
    shuffles = [y[rng.permutation(len(y))] for _ in range(20)]  # confident and wrong as often as chance allows
    for metric in competition.metrics:
        plugin = get_competition(name, metric.name)

        def score(p: np.ndarray) -> float:
            return plugin.metric(y, plugin.decide(p, Decision()))

        perfect, at_prior, shuffled = score(y), score(prior), float(np.mean([score(p) for p in shuffles]))
        assert better(metric, perfect, at_prior) and better(metric, at_prior, shuffled), (metric, perfect, at_prior, shuffled)


@pytest.mark.parametrize("name", PLUGINS)
def test_fit_decision_and_decide_keep_shapes_and_the_decision_survives_json(name, plugin_sample):
    competition = get_competition(name)
    data = plugin_sample(name, small=True) / "data"
    classes = competition.class_names(data)
    y = target_matrix(competition.train_items(data)["labels"], classes)
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(len(classes)), len(y)) if not competition.multi_label else rng.random(y.shape)
    decision = competition.fit_decision(y, p)
    assert isinstance(decision, Decision)
    if decision.thresholds is not None:
        assert decision.threshold_array.shape == (len(classes),) and np.isfinite(decision.threshold_array).all()
    submitted = competition.decide(p, decision)
    assert submitted.shape == y.shape and np.isfinite(submitted).all() and ((submitted >= 0) & (submitted <= 1)).all()
    assert np.isfinite(competition.metric(y, submitted))
    again = Decision.from_dict(json.loads(json.dumps(decision.to_dict())), "metrics.json decision")
    assert again == decision
    assert np.array_equal(competition.decide(p, again), submitted)


@pytest.mark.parametrize("name", PLUGINS)
def test_the_sample_passes_the_check_a_kaggle_download_gets(name, plugin_sample):
    """`kaggle_layout` is what `make data` checks a download against (with the test ids against the sample
    submission); the bundled sample is in the downloaded layout, so it passes the same check."""
    competition = get_competition(name)
    verify_data(competition, plugin_sample(name, small=True) / "data", competition.kaggle_layout)


@pytest.mark.parametrize("name", PLUGINS)
def test_missing_data_folder_says_how_to_get_it(name, tmp_path):
    with pytest.raises(UserError) as error:
        get_competition(name).check_layout(tmp_path / "nowhere")
    assert "nowhere" in str(error.value) and "make" in str(error.value)


@pytest.mark.slow
@pytest.mark.xdist_group("plugin-runs")  # with test_rescore.py: they share the session-scoped tiny runs
@pytest.mark.parametrize("name", PLUGINS)
def test_a_tiny_end_to_end_run_writes_a_valid_submission_and_scores_every_model(name, tiny_plugin_run, plugin_sample):
    result = tiny_plugin_run(name)
    data = plugin_sample(name, small=True) / "data"
    competition = get_competition(name)
    table = load_submission(result.run_dir / "submission.csv", competition, data)  # validated against the layout
    assert len(table) == len(competition.expected_ids(data) or competition.test_items(data))
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert set(metrics["holdout"]) == {"teacher", "control", "student"}
    assert all(np.isfinite(v) for v in metrics["holdout"].values())
    assert metrics["greater_is_better"] is competition.greater_is_better
    assert all(metrics["leaderboard"][m]["public"] is not None and metrics["leaderboard"][m]["private"] is not None
               for m in metrics["holdout"])
    for record in metrics["decision"].values():
        thresholds = Decision.from_dict(record).thresholds
        assert thresholds is None or len(thresholds) == len(competition.class_names(data))


# ---- discovery -----------------------------------------------------------------------------------------

@pytest.fixture
def plugin_folder(tmp_path, monkeypatch):
    """An extra folder of the competitions package, and a registry copy, so tests can add plugin modules."""
    import competitions

    monkeypatch.setattr(competitions, "__path__", [*competitions.__path__, str(tmp_path)])
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    yield tmp_path
    for module in [m for m in sys.modules if m.startswith("competitions.toy")]:
        del sys.modules[module]


TOY = '''
from competitions.fisheries import Fisheries
from pipeline.plugin.registry import register


{decorator}
class Toy(Fisheries):
    name = "toy"
'''


def test_a_plugin_module_dropped_into_competitions_is_discovered(plugin_folder):
    (plugin_folder / "toy_plugin.py").write_text(TOY.format(decorator="@register"))
    assert "toy" in list_competitions() and set(PLUGINS) < set(list_competitions())
    assert get_competition("toy").metric_name == "logloss"
    with pytest.raises(UserError) as error:
        get_competition("titanic")
    assert "toy" in str(error.value) and "fisheries" in str(error.value)


def test_a_plugin_class_left_unregistered_is_named(plugin_folder):
    (plugin_folder / "toy_forgotten.py").write_text(TOY.format(decorator=""))
    with pytest.raises(UserError, match=r"competitions\.toy_forgotten\.Toy .*not registered.*@register"):
        list_competitions()


# ---- broken plugin classes are refused at registration --------------------------------------------------

def broken(**attributes) -> type:
    return type("Broken", (Fisheries,), {"name": "broken", **attributes})


@pytest.mark.parametrize("attributes, message", [
    ({"metrics": ("logloss",)}, r"plugin 'broken' .*metric 'logloss' has no direction; declare it as Metric\('logloss', higher_is_better"),
    ({"metrics": ()}, r"plugin 'broken' .*metrics = \(\) must be a non-empty tuple of Metric"),
    ({"metrics": (Metric("logloss", higher_is_better=None),)}, r"metric 'logloss' has higher_is_better=None"),
    ({"metrics": (Metric("f2", True), Metric("f2", True))}, r"metric names \['f2', 'f2'\] repeat"),
    ({"flips": "vertical"}, r"plugin 'broken' .*flips = 'vertical' must be one of none, horizontal"),
    ({"name": "Bad Name"}, r"name = 'Bad Name' must be lowercase letters"),
    ({"kaggle_layout": ["train"]}, r"kaggle_layout = \['train'\] must be a tuple of file or folder names"),
])
def test_a_plugin_class_that_breaks_the_contract_is_refused_and_not_listed(attributes, message):
    with pytest.raises(UserError, match=message):
        registry.register(broken(**attributes))
    assert "broken" not in list_competitions()


def test_a_plugin_missing_a_required_method_is_named():
    from pipeline.plugin.api import Competition

    half = type("Half", (Competition,), {"name": "half", "metrics": (Metric("accuracy", True),)})
    with pytest.raises(UserError, match=r"plugin 'half' .*does not define check_layout, class_names, from_solution"):
        registry.register(half)


# ---- broken item tables are refused on use, before training ---------------------------------------------

def _drop_labels(t):
    return t.drop(columns="labels")


def _labels_as_lists(t):
    return t.assign(labels=[list(v) for v in t["labels"]])


def _unknown_class(t):
    return t.assign(labels=[("TUNA",)] + list(t["labels"][1:]))


def _two_classes(t):
    return t.assign(labels=[("ALB", "BET")] + list(t["labels"][1:]))


def _duplicate_id(t):
    return t.assign(id=[t["id"].iloc[1]] + list(t["id"][1:]))


def _capital_group(t):
    return t.assign(group=["Public"] + list(t["group"][1:]))


def _empty_id(t):
    return t.assign(id=[""] + list(t["id"][1:]))


def _no_group(t):
    return t.drop(columns="group")


@pytest.mark.parametrize("table, change, message", [
    ("train", _drop_labels, r"plugin 'fisheries' train_items\(\) .* lacks column\(s\) labels .*must return columns path, labels"),
    ("train", _labels_as_lists, r"train_items\(\) .*row 0 .*labels \['ALB'\] is a list, not a tuple of class names"),
    ("train", _unknown_class, r"train_items\(\) .*row 0 .*holds 'TUNA', not a class of this competition; the classes are"),
    ("train", _two_classes, r"row 0 .*has 2 classes; a single-label competition needs exactly one"),
    ("test", _duplicate_id, r"plugin 'fisheries' test_items\(\) .*id '\S+' appears 2 times .*each id must be unique"),
    ("test", _capital_group, r"test_items\(\) .*group 'Public' \(row 0, id '\S+'\) is not one of public, private"),
    ("test", _empty_id, r"test_items\(\) .*id '' at row 0 is not a non-empty string"),
    ("test", _no_group, r"test_items\(\) .*lacks column\(s\) group"),
])
def test_a_plugin_table_that_breaks_the_contract_is_refused_before_training(table, change, message, plugin_sample, tmp_path):
    data = plugin_sample("fisheries", small=True) / "data"
    fisheries = get_competition("fisheries")
    train, test = fisheries.train_items(data), fisheries.test_items(data)
    if table == "train":
        train = change(train)
    else:
        test = change(test)
    with pytest.raises(UserError, match=message):
        check_before_training(tiny_config(data, tmp_path), fisheries, data, train, test)


def test_a_table_that_is_not_a_data_frame_is_named(plugin_sample):
    data = plugin_sample("fisheries", small=True) / "data"
    fisheries = get_competition("fisheries")
    with pytest.raises(UserError, match=r"test_items\(\) .*returned a list; it must return a pandas DataFrame"):
        check_items(fisheries, data, fisheries.train_items(data), [])  # type: ignore[arg-type]
    assert isinstance(fisheries.test_items(data), pd.DataFrame)


def test_decision_records_that_are_not_decisions_are_named():
    assert Decision.from_dict({}) == Decision()
    assert Decision.from_dict({"thresholds": [0.2, 0.3], "tuned_f2": 0.5}) == Decision((0.2, 0.3), {"tuned_f2": 0.5})
    with pytest.raises(UserError, match="run/metrics.json: thresholds must be null or a list of numbers"):
        Decision.from_dict({"thresholds": "0.2"}, "run/metrics.json")
    with pytest.raises(UserError, match="'tuned_f2' must be a number"):
        Decision.from_dict({"tuned_f2": "high"})


@pytest.mark.parametrize("name", PLUGINS)
def test_metric_rows_when_given_average_to_the_metric(name, plugin_sample):
    """The verdict's bootstrap resamples `metric_rows`: their mean must be the metric, or the guard misjudges."""
    sample = plugin_sample(name, small=True)
    competition = get_competition(name)
    _, y, _ = competition.from_solution(read_solution(sample / "solution.csv"), competition.class_names(sample / "data"))
    rng = np.random.default_rng(2)
    noisy = np.clip(y + rng.normal(0, 0.4, y.shape), 0.001, 1)
    for metric in competition.metrics:
        plugin = get_competition(name, metric.name)
        for p in (y, noisy, np.tile(y.mean(axis=0), (len(y), 1))):
            submitted = plugin.decide(p, plugin.fit_decision(y, p))
            rows = plugin.metric_rows(y, submitted)
            if rows is not None:
                assert rows.shape == (len(y),)
                assert rows.mean() == pytest.approx(plugin.metric(y, submitted), rel=1e-9, abs=1e-12), metric
