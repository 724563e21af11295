"""Distribution-shift checks on real image files made with PIL: statistics, verdicts, outputs, CLI."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats
from scipy.stats.contingency import association

from pipeline.__main__ import main
from pipeline.data.decode import decode_image, measure_images
from pipeline.data.image_store import build_store
from pipeline.plugin.api import GROUPS
from pipeline.plugin.registry import get_competition, list_competitions
from pipeline.shift.assess import assess_shift
from pipeline.shift.report import FAIL, OK, TOO_FEW, WARN, ShiftSettings
from pipeline.shift.plots import PLOT_NAMES
from pipeline.shift.stats import adversarial_validation, compare_numeric, cramers_v

# Fewer permutations and trees than the defaults keep the file fast; p can still reach 0.05.
FAST = ShiftSettings(n_permutations=19, n_trees=30, progress_every=0)


def make_images(folder: Path, n: int, seed: int, brightness: float = 1.0, green: float = 0.0) -> list[str]:
    """n small JPEGs of varied size, colour and noise; `brightness` < 1 darkens, `green` tints."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        height, width = rng.integers(24, 40), rng.integers(24, 48)
        base = rng.uniform(60, 200, 3) * brightness + np.array([0.0, green, 0.0])
        pixels = base + rng.normal(0, rng.uniform(5, 30), (height, width, 3))
        path = folder / f"img_{i:04d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="session")
def image_sets(tmp_path_factory) -> dict[str, list[str]]:
    root = tmp_path_factory.mktemp("shift_images")
    return {
        "train": make_images(root / "train", 120, seed=1),
        "public": make_images(root / "public", 60, seed=2),
        "private": make_images(root / "private", 60, seed=3, brightness=0.6, green=25),  # darker and greener
    }


@pytest.fixture(scope="session")
def report_and_dir(image_sets, tmp_path_factory):
    out = tmp_path_factory.mktemp("shift_out")
    return assess_shift(image_sets, out, FAST, seed=0), out


# ---- statistics ---------------------------------------------------------------------------------------

def test_numeric_statistics_on_a_hand_case_match_scipy():
    a, b = np.array([0.0, 1, 2, 3]), np.array([2.0, 3, 4, 5])
    c = compare_numeric(a, b)
    # by hand: the CDFs differ most at x=1 (2/4 vs 0); every point moves by 2; pooled sd of the 8 values is 1.5
    assert c.ks_d == pytest.approx(0.5)
    assert c.emd == pytest.approx(2.0)
    assert c.emd_norm == pytest.approx(2.0 / 1.5)
    assert c.ks_p == pytest.approx(stats.ks_2samp(a, b).pvalue)
    assert c.emd == pytest.approx(stats.wasserstein_distance(a, b))
    assert compare_numeric(np.full(5, 7.0), np.full(9, 7.0)).emd_norm == 0.0  # same constant: no shift, no 0/0



def test_a_property_with_two_values_gives_the_asymptotic_p_value_without_a_warning():
    # Seen on the hand photos: file sizes of 981 public and 981 private images, two values each. scipy's exact
    # two-sided p-value overflows there, it warns and falls back to the asymptotic one; the user saw the warning.
    a, b = np.zeros(981), np.zeros(981)
    a[:2], b[:1] = 1.0, 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = compare_numeric(a, b)
    assert c.ks_d == pytest.approx(1 / 981)
    assert c.ks_p == pytest.approx(stats.ks_2samp(a, b, method="asymp").pvalue)
def test_cramers_v_matches_scipy_and_the_extremes():
    a, b = ["JPEG"] * 30 + ["PNG"] * 10, ["JPEG"] * 10 + ["PNG"] * 30
    v, p = cramers_v(a, b)
    table = np.array([[30, 10], [10, 30]])
    assert v == pytest.approx(association(table, method="cramer"))
    assert p == pytest.approx(stats.chi2_contingency(table).pvalue)
    assert cramers_v(["JPEG"] * 5, ["PNG"] * 5)[0] == pytest.approx(1.0)
    assert cramers_v(["JPEG"] * 5, ["JPEG"] * 8) == (0.0, 1.0)


def test_image_properties_of_a_known_image(tmp_path):
    path = tmp_path / "red.png"
    Image.new("RGB", (40, 20), (200, 0, 0)).save(path)
    _, props = decode_image(str(path), 64)
    assert props["red_mean"] == pytest.approx(200) and props["green_mean"] == 0 and props["blue_mean"] == 0
    assert props["mean_intensity"] == pytest.approx(0.299 * 200, abs=0.5)  # ITU-R 601 luma, rounded per pixel
    assert props["contrast"] == pytest.approx(0.0, abs=1e-3)
    assert props["red_rel"] == pytest.approx(1.0)
    assert (props["width"], props["height"], props["aspect_ratio"], props["area"]) == (40, 20, 2.0, 800)
    assert props["file_size"] == path.stat().st_size
    assert (props["format"], props["mode"]) == ("PNG", "RGB")


def test_large_jpeg_is_measured_from_a_reduced_decode(tmp_path):
    path = tmp_path / "big.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (1200, 1600, 3), dtype=np.uint8)).save(path)
    _, props = decode_image(str(path), 64, max_side=64)
    assert (props["width"], props["height"]) == (1600, 1200)  # the stored size, not the decoded one
    assert props["mean_intensity"] == pytest.approx(np.asarray(Image.open(path).convert("L")).mean(), abs=2.0)


# ---- verdicts -----------------------------------------------------------------------------------------

def test_shifted_private_set_is_flagged_and_public_is_not(report_and_dir):
    report, _ = report_and_dir
    assert report.status("train_vs_public") == OK
    assert report.status("train_vs_private") in (WARN, FAIL)
    assert report.status("public_vs_private") in (WARN, FAIL)
    assert report.shifted_groups() == ["private"]
    assert report.worst in (WARN, FAIL)
    private = {p.name: p for p in report.pairs["train_vs_private"].properties}
    assert private["mean_intensity"].status in (WARN, FAIL)
    adversarial = report.pairs["train_vs_private"].adversarial
    assert adversarial["auc"] > 0.8 and adversarial["p_value"] <= 0.05
    assert report.pairs["train_vs_public"].adversarial["auc"] < FAST.warn_auc
    with pytest.raises(ValueError, match="train_vs_public"):
        report.status("train_vs_test")


def test_report_statistics_are_scipy_on_the_measured_columns(report_and_dir):
    report, _ = report_and_dir
    train, private = report.sets["train"].table, report.sets["private"].table
    rows = {p.name: p for p in report.pairs["train_vs_private"].properties}
    m = len(rows)
    for name in ("mean_intensity", "width", "file_size"):
        ks = stats.ks_2samp(train[name], private[name])
        assert rows[name].statistic == pytest.approx(ks.statistic)
        assert rows[name].p_adjusted == pytest.approx(min(1.0, ks.pvalue * m))  # Bonferroni over the pair's properties


def test_outputs_json_plots_and_html(report_and_dir):
    report, out = report_and_dir
    saved = json.loads((out / "shift.json").read_text())
    assert saved == json.loads(json.dumps(report.to_dict()))
    assert saved["pairs"]["train_vs_private"]["status"] == report.status("train_vs_private")
    assert set(saved["sets"]) == {"train", "public", "private"}
    assert {p.name for p in report.plots} == set(PLOT_NAMES.values())  # a shift: every plot, properties included
    for plot in report.plots:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000
    fragment = report.html_fragment()
    for plot in report.plots:
        assert f'src="{plot.name}"' in fragment
    assert str(out) not in fragment  # relative links only: the report folder can move
    test_like = saved["pairs"]["train_vs_private"]["adversarial"]["a_most_like_b"]
    assert len(test_like) == FAST.n_examples and all(Path(r["path"]).parent.name == "train" for r in test_like)
    assert [r["prob"] for r in test_like] == sorted((r["prob"] for r in test_like), reverse=True)
    summary = report.summary()
    assert summary["pairs"]["train_vs_private"]["status"] == report.status("train_vs_private")
    assert len(json.dumps(summary)) < 2000
    table = report.table()
    assert "train (n=120) vs private (n=60)" in table and "mean_intensity" in table


def test_adversarial_validation_is_seeded_and_sees_a_shift():
    rng = np.random.default_rng(0)
    xa, xb = rng.normal(size=(80, 4)), rng.normal(size=(60, 4))
    xb[:, 2] += 1.5  # only the third property differs
    first = adversarial_validation(xa, xb, ["p0", "p1", "p2", "p3"], n_permutations=9, n_trees=30, seed=3)
    again = adversarial_validation(xa, xb, ["p0", "p1", "p2", "p3"], n_permutations=9, n_trees=30, seed=3)
    assert first.auc == again.auc and first.p_value == again.p_value
    assert np.array_equal(first.prob_b, again.prob_b)
    assert first.auc > 0.75 and first.p_value == pytest.approx(0.1)  # beats all 9 shuffles: 1 / (9 + 1)
    assert max(first.importances, key=first.importances.get) == "p2"
    assert len(first.prob_b) == 140 and np.all((first.prob_b >= 0) & (first.prob_b <= 1))


def test_unreadable_images_are_counted_and_named(image_sets, tmp_path):
    text = tmp_path / "not_an_image.jpg"
    text.write_text("hello")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(Path(image_sets["train"][0]).read_bytes()[:200])
    missing = tmp_path / "missing.png"
    paths = image_sets["train"][:40] + [str(text), str(truncated), str(missing)]
    table = measure_images(paths, progress_every=0)
    assert len(table.table) == 40 and table.n_items == 43
    assert [p for p, _ in table.unreadable] == [str(text), str(truncated), str(missing)]
    assert all(why for _, why in table.unreadable)
    report = assess_shift({"train": paths, "public": image_sets["public"]}, None, FAST)
    assert report.to_dict()["sets"]["train"]["n_readable"] == 40
    named = {u["path"] for u in report.to_dict()["sets"]["train"]["unreadable"]}
    assert named == {str(text), str(truncated), str(missing)}
    assert "not_an_image.jpg" in report.table()


def test_property_tables_from_a_store_give_the_same_report_as_paths(image_sets, tmp_path):
    train = build_store(image_sets["train"], 64, tmp_path / "cache", "train")
    test = build_store(image_sets["public"] + image_sets["private"], 64, tmp_path / "cache", "test")
    tables = {"train": train.property_table(), "public": test.property_table(image_sets["public"]),
              "private": test.property_table(image_sets["private"])}
    assert [len(t.table) for t in tables.values()] == [120, 60, 60]
    assert tables["private"].table["path"].tolist() == image_sets["private"]
    from_store = assess_shift(tables, None, FAST)
    from_paths = assess_shift(image_sets, None, FAST)
    assert from_store.summary() == from_paths.summary()
    with pytest.raises(ValueError, match="public property table lacks columns.*contrast"):
        assess_shift({"public": type(tables["public"])(tables["public"].table.drop(columns="contrast"))}, None, FAST)


def test_a_small_group_is_too_few_to_judge(image_sets):
    sets = {"train": image_sets["train"], "public": image_sets["public"][:10], "private": image_sets["private"]}
    report = assess_shift(sets, None, FAST)
    assert report.status("train_vs_public") == TOO_FEW
    assert report.status("public_vs_private") == TOO_FEW
    assert "public has 10 readable images" in report.pairs["train_vs_public"].reason
    assert report.pairs["train_vs_public"].properties == []
    assert report.status("train_vs_private") in (WARN, FAIL)  # the judged pair still gets its verdict
    assert report.shifted_groups() == ["private"]
    assert report.plots == []  # no out_dir: nothing written
    only_train = assess_shift({"train": image_sets["train"][:50]}, None, FAST)
    assert only_train.worst == TOO_FEW and only_train.shifted_groups() == []


def test_bad_input_is_a_value_error(image_sets):
    with pytest.raises(ValueError, match="warn_d <= fail_d"):
        ShiftSettings(warn_d=0.3, fail_d=0.2)
    with pytest.raises(ValueError, match="n_permutations"):
        ShiftSettings(n_permutations=0)
    with pytest.raises(ValueError, match="'test'.*train, public, private"):
        assess_shift({"train": image_sets["train"], "test": image_sets["public"]}, None, FAST)


# ---- command line -------------------------------------------------------------------------------------

def test_cli_on_an_imagefolder_layout(tmp_path, capsys):
    data = tmp_path / "data"
    make_images(data / "train" / "cat", 40, seed=11)
    make_images(data / "train" / "dog", 40, seed=12)
    make_images(data / "test" / "public", 40, seed=13)
    make_images(data / "test" / "private", 40, seed=14, brightness=0.55, green=30)
    out = tmp_path / "report"
    rc = main(["shift", "--competition", "imagefolder", "--data", str(data), "--out", str(out),
               "--cache-dir", str(tmp_path / "cache"), "--image-size", "32",
               "--permutations", "19", "--trees", "30", "--warn-d", "0.12"])
    printed = capsys.readouterr().out
    assert rc == 0
    saved = json.loads((out / "shift.json").read_text())
    assert saved["settings"]["warn_d"] == 0.12
    assert saved["pairs"]["train_vs_private"]["status"] in (WARN, FAIL)
    assert saved["pairs"]["train_vs_public"]["status"] == OK
    assert "train (n=80) vs private (n=40)" in printed and str(out / "shift.json") in printed
    # the properties came from the image stores a run at --image-size 32 reuses: train, and every test image
    stores = sorted(p.name.split("-")[:2] for p in (tmp_path / "cache" / "images").iterdir())
    assert stores == [["test", "32px"], ["train", "32px"]]
    assert main(["shift", "--competition", "nope", "--data", str(data)]) == 2
    assert main(["shift", "--competition", "imagefolder", "--data", str(data), "--warn-d", "0.5"]) == 2
    assert "warn_d <= fail_d" in capsys.readouterr().err


# ---- bundled samples with an injected private shift (default settings) ---------------------------------

def _competition_sets(name: str, root: Path) -> dict[str, list[str]]:
    competition = get_competition(name)
    competition.make_sample(root, seed=0)
    data = root / "data"
    competition.check_layout(data)
    test = competition.test_items(data)
    sets = {"train": competition.train_items(data)["path"].tolist()}
    sets.update({g: test.loc[test["group"] == g, "path"].tolist() for g in GROUPS})
    return sets


@pytest.mark.slow
@pytest.mark.parametrize("name", list_competitions())
def test_sample_private_shift_is_flagged_and_public_is_not(name, tmp_path):
    report = assess_shift(_competition_sets(name, tmp_path / "sample"), tmp_path / "out", ShiftSettings())
    assert report.status("train_vs_private") in (WARN, FAIL)
    assert report.status("train_vs_public") == OK
    assert report.shifted_groups() == ["private"]

