"""pipeline/run/preflight.py on real files: every problem that would otherwise stop a run only after training is a
UserError before it (issue 11, item 5), and a clean data set passes. No model is trained here."""
from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.errors import UserError
from pipeline.run.preflight import check_before_training, label_problems, submission_problems
from pipeline.plugin.registry import get_competition
from tests.conftest import tiny_config


def check(cfg, data: Path) -> None:
    competition = get_competition(cfg.competition)
    check_before_training(cfg, competition, data, competition.train_items(data), competition.test_items(data))


@pytest.fixture()
def fisheries(tiny_fisheries, tmp_path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(tiny_fisheries / "data", data)
    return data


def folders(root: Path, layout: dict[str, int]) -> Path:
    for folder, count in layout.items():
        (root / folder).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (12, 10), (30 * i % 256, 90, 200)).save(root / folder / f"{i}.png")
    return root


def keras_like_weights(path: Path) -> Path:
    with h5py.File(path, "w") as handle:
        handle.create_group("layers").create_dataset("conv/vars/0", data=np.ones((3, 3), np.float32))
    return path


def test_a_clean_sample_passes(fisheries, tmp_path):
    check(tiny_config(fisheries, tmp_path, output=str(tmp_path / "copy.csv")), fisheries)


def test_a_sample_submission_id_with_no_image_is_named_with_its_csv(fisheries, tmp_path):
    """The fisheries case of the issue: the run used to fail when writing the submission, after training."""
    table = pd.read_csv(fisheries / "sample_submission_stg2.csv", dtype=str)
    table.loc[len(table)] = ["test_stg2/image_99999.jpg", *["0.125"] * 8]
    table.to_csv(fisheries / "sample_submission_stg2.csv", index=False)
    (fisheries / "test_stg1" / table["image"][0]).unlink()
    with pytest.raises(UserError) as error:
        check(tiny_config(fisheries, tmp_path), fisheries)
    message = str(error.value)
    assert "sample_submission_stg2.csv lists 2 id(s) with no test image" in message
    assert "test_stg2/image_99999.jpg" in message and table["image"][0] in message


def test_a_sample_submission_listing_an_id_twice_is_refused(fisheries, tmp_path):
    table = pd.read_csv(fisheries / "sample_submission_stg2.csv", dtype=str)
    pd.concat([table, table.iloc[[3]]]).to_csv(fisheries / "sample_submission_stg2.csv", index=False)
    with pytest.raises(UserError, match=rf"more than once, e.g. \['{table['image'][3]}'\]"):
        check(tiny_config(fisheries, tmp_path), fisheries)


def test_test_images_missing_from_the_sample_submission_are_a_warning(fisheries, tmp_path, capsys):
    Image.new("RGB", (20, 20)).save(fisheries / "test_stg1" / "img_extra.jpg")
    check(tiny_config(fisheries, tmp_path), fisheries)
    err = capsys.readouterr().err
    assert "1 test image(s) are not in" in err and "sample_submission_stg2.csv" in err and "img_extra.jpg" in err


@pytest.mark.parametrize("case, fragment", [
    ("output-folder", "--output {tmp}/out is a folder"),
    ("output-no-parent", "its folder {tmp}/nowhere does not exist"),
    ("output-parent-file", "its folder {tmp}/afile is a file"),
    ("runs-dir-file", "--runs-dir {tmp}/afile is a file, not a folder"),
    ("cache-dir-file", "--cache-dir {tmp}/afile is a file, not a folder"),
    ("cache-dir-below-file", "--cache-dir {tmp}/afile/cache cannot be created: {tmp}/afile is a file"),
])
def test_paths_that_cannot_be_written_are_refused_before_training(fisheries, tmp_path, case, fragment):
    (tmp_path / "out").mkdir()
    (tmp_path / "afile").write_text("x")
    changes = {"output-folder": {"output": str(tmp_path / "out")},
               "output-no-parent": {"output": str(tmp_path / "nowhere" / "s.csv")},
               "output-parent-file": {"output": str(tmp_path / "afile" / "s.csv")},
               "runs-dir-file": {"runs_dir": str(tmp_path / "afile")},
               "cache-dir-file": {"cache_dir": str(tmp_path / "afile")},
               "cache-dir-below-file": {"cache_dir": str(tmp_path / "afile" / "cache")}}[case]
    with pytest.raises(UserError) as error:
        check(tiny_config(fisheries, tmp_path, **changes), fisheries)
    assert fragment.format(tmp=tmp_path) in str(error.value)


@pytest.mark.parametrize("make, fragment", [
    (lambda p: p.write_text("these are not weights"), "is not an HDF5 file"),
    (lambda p: p.write_bytes(b""), "is not an HDF5 file"),
    (lambda p: p.write_bytes(keras_like_weights(p).read_bytes()[:600]), "is a damaged HDF5 file"),
])
def test_weights_that_are_not_a_keras_weights_file_are_refused(fisheries, tmp_path, make, fragment):
    weights = tmp_path / "backbone.weights.h5"
    make(weights)
    cfg = tiny_config(fisheries, tmp_path, backbone="MobileNetV2", weights=str(weights))
    with pytest.raises(UserError) as error:
        check(cfg, fisheries)
    assert f"--weights {weights} {fragment}" in str(error.value) and "model.save_weights" in str(error.value)


def test_real_hdf5_weights_pass_and_a_wrong_suffix_is_named(fisheries, tmp_path):
    good = keras_like_weights(tmp_path / "backbone.weights.h5")
    check(tiny_config(fisheries, tmp_path, backbone="MobileNetV2", weights=str(good)), fisheries)
    odd = tmp_path / "backbone.bin"
    shutil.copy(good, odd)
    with pytest.raises(UserError, match="is not named .h5 or .weights.h5"):
        check(tiny_config(fisheries, tmp_path, backbone="MobileNetV2", weights=str(odd)), fisheries)


def test_a_single_class_in_train_is_refused_and_names_the_class(tmp_path):
    data = folders(tmp_path / "data", {"train/cat": 6, "test": 2})
    with pytest.raises(UserError, match=r"one class only: cat \(6 images\); a classifier needs at least two"):
        check(tiny_config(data, tmp_path, competition="imagefolder"), data)
    folders(data, {"train/dog": 3})
    check(tiny_config(data, tmp_path, competition="imagefolder"), data)


def test_a_fisheries_class_without_images_is_a_warning(fisheries, tmp_path, capsys):
    shutil.rmtree(fisheries / "train" / "LAG")
    check(tiny_config(fisheries, tmp_path), fisheries)
    assert "LAG have no train image" in capsys.readouterr().err


def test_multi_label_tags_that_never_vary_warn_and_nothing_to_learn_is_refused(tmp_path, capsys):
    amazon = get_competition("amazon")
    varied = pd.DataFrame({"path": ["a", "b", "c"], "labels": [("clear", "primary"), ("clear", "primary", "water"),
                                                               ("haze", "primary")]})
    assert label_problems(amazon, tmp_path, varied) == []
    err = capsys.readouterr().err
    assert "in every train image" in err and "primary" in err and "blow_down" in err and "not learnable" in err
    constant = pd.DataFrame({"path": ["a", "b"], "labels": [("clear",), ("clear",)]})
    (problem,) = label_problems(amazon, tmp_path, constant)
    assert "no tag of train" in problem and "nothing can be learned" in problem
    no_test = pd.DataFrame(columns=["path", "id", "group"])
    assert submission_problems(amazon, tmp_path, no_test) == [f"no test images found under {tmp_path}; the submission needs them"]


def test_several_problems_are_reported_together(fisheries, tmp_path):
    (tmp_path / "afile").write_text("x")
    cfg = tiny_config(fisheries, tmp_path, output=str(tmp_path), runs_dir=str(tmp_path / "afile"))
    with pytest.raises(UserError) as error:
        check(cfg, fisheries)
    assert str(error.value).startswith("2 problems, found before training: (1) --output") and "(2) --runs-dir" in str(error.value)
