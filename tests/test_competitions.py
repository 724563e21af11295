"""Plugin-specific behaviour: names, layouts, ids and options. The tests generated for every registered plugin
(schema, metric direction, decisions, a tiny run) are in tests/test_plugin_contract.py."""
from __future__ import annotations

import pandas as pd
import pytest

from pipeline.plugin.registry import get_competition, list_competitions


def test_unknown_competition_lists_the_valid_names():
    with pytest.raises(ValueError) as error:
        get_competition("titanic")
    for name in list_competitions():
        assert name in str(error.value)


def test_unknown_metric_is_refused():
    with pytest.raises(ValueError, match="logloss"):
        get_competition("fisheries", metric="auc")


@pytest.fixture(scope="session")
def samples(plugin_sample):
    return {name: plugin_sample(name, small=True) for name in ("fisheries", "amazon")}


def test_fisheries_layout_errors_name_the_folder(tmp_path, samples):
    import shutil

    fisheries = get_competition("fisheries")
    data = tmp_path / "data"
    shutil.copytree(samples["fisheries"] / "data", data)
    (data / "train" / "TUNA").mkdir()
    (data / "train" / "TUNA" / "x.jpg").write_bytes((data / "train" / "ALB").iterdir().__next__().read_bytes())
    with pytest.raises(ValueError, match="TUNA"):
        fisheries.train_items(data)
    shutil.rmtree(data / "train" / "TUNA")
    for image in (data / "train" / "LAG").iterdir():
        image.unlink()
    with pytest.raises(ValueError, match="LAG is empty"):
        fisheries.train_items(data)
    shutil.rmtree(data / "test_stg1")
    with pytest.raises(ValueError, match="test_stg1"):
        fisheries.check_layout(data)


def test_fisheries_ids_follow_kaggle_naming(samples):
    test = get_competition("fisheries").test_items(samples["fisheries"] / "data")
    private = test[test["group"] == "private"]["id"]
    public = test[test["group"] == "public"]["id"]
    assert private.str.match(r"^test_stg2/image_\d{5}\.jpg$").all()
    assert public.str.match(r"^img_\d{5}\.jpg$").all()
    header = pd.read_csv(samples["fisheries"] / "data" / "sample_submission_stg2.csv", nrows=0).columns.tolist()
    assert header == ["image", "ALB", "BET", "DOL", "LAG", "NoF", "OTHER", "SHARK", "YFT"]


def test_imagefolder_ids_are_paths_relative_to_test(tmp_path):
    from PIL import Image

    for path in ("train/cat/1.png", "train/dog/1.png", "test/loose.png", "test/private/2.png"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / path)
    folder = get_competition("imagefolder")
    test = folder.test_items(tmp_path)
    assert dict(zip(test["id"], test["group"])) == {"loose.png": "public", "private/2.png": "private"}
    assert folder.class_names(tmp_path) == ["cat", "dog"]


def test_plugin_options_reach_the_plugin_and_unknown_ones_are_named(samples):
    with pytest.raises(ValueError, match="public_folder"):
        get_competition("amazon", options={"public_folders": "test-jpg"})
    with pytest.raises(ValueError, match="none"):
        get_competition("fisheries", options={"stage": "2"})
    data = samples["amazon"] / "data"
    default = get_competition("amazon").test_items(data)
    swapped = get_competition("amazon", options={"public_folder": "test-jpg-additional"}).test_items(data)
    assert (default["group"] != swapped.set_index("id").loc[default["id"], "group"].to_numpy()).all()
