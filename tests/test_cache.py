"""Cache entries on real files: written whole with a manifest, checked on load, damaged ones warned about,
removed and recomputed; nothing is ever unpickled (issue 11, item 1). No model is trained here."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from pipeline.cache import entries as cache
from pipeline.files import sha256_of
from pipeline.shift.report import ShiftSettings
from pipeline.cache.shift import SHIFT_FILES, get_or_assess_shift
from pipeline.cache.teachers import TEACHER_FILES, load_teacher, weights_name
from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parent.parent


def write_text(text: str):
    return lambda path: path.write_text(text)


def fake_weights(path: Path) -> None:
    """A small HDF5 file laid out like a Keras .weights.h5 (written with h5py: no TensorFlow needed)."""
    with h5py.File(path, "w") as handle:
        handle.create_group("layers").create_dataset("dense/vars/0", data=np.ones((3, 2), dtype=np.float32))
        handle.create_group("vars")


def teacher_entry(folder: Path, n_holdout: int = 5, n_test: int = 7, n_classes: int = 3) -> Path:
    rng = np.random.default_rng(0)
    return cache.write_entry(folder, {
        "scored_probs.npy": lambda p: np.save(p, rng.random((n_holdout, n_classes), dtype=np.float32)),
        "test_probs.npy": lambda p: np.save(p, rng.random((1, n_test, n_classes), dtype=np.float32)),
        weights_name(0): fake_weights,
        "info.json": write_text(json.dumps({"epochs_run": 3})),
    })


def test_an_entry_round_trips_with_a_manifest_of_sha256s(tmp_path):
    folder = cache.write_entry(tmp_path / "k1", {"a.json": write_text("{}"), "b.npy": lambda p: np.save(p, np.arange(4))})
    assert cache.load_entry(folder, ["a.json", "b.npy"]) == folder
    manifest = json.loads((folder / cache.MANIFEST).read_text())
    assert set(manifest["files"]) == {"a.json", "b.npy"} and len(manifest["files"]["a.json"]["sha256"]) == 64
    assert [p.name for p in tmp_path.iterdir()] == ["k1"]  # no staging folder left behind
    assert cache.load_entry(tmp_path / "missing", ["a.json"]) is None


def test_a_writer_that_fails_leaves_no_entry_and_no_temporary(tmp_path):
    def boom(path: Path) -> None:
        path.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        cache.write_entry(tmp_path / "k", {"a.json": write_text("{}"), "b.json": boom})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage, problem", [
    ("truncate", "truncated or replaced"),
    ("flip", "does not match its sha256"),
    ("delete", "b.npy is missing"),
    ("manifest", "manifest.json is unreadable"),
    ("no-manifest", "no manifest.json"),
    ("symlink", "not a regular file"),
    ("not-listed", "c.json is not in manifest.json"),
])
def test_a_damaged_entry_is_warned_about_removed_and_reported_as_a_miss(tmp_path, capsys, damage, problem):
    folder = cache.write_entry(tmp_path / "k", {"a.json": write_text('{"x": 1}'),
                                                "b.npy": lambda p: np.save(p, np.arange(1000))})
    expected = ["a.json", "b.npy"]
    target = folder / "b.npy"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:100])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[-1] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "delete":
        target.unlink()
    elif damage == "manifest":
        (folder / cache.MANIFEST).write_text('{"files": {"a.js')
    elif damage == "no-manifest":
        (folder / cache.MANIFEST).unlink()
    elif damage == "symlink":  # a crafted entry pointing at an endless file must not hang the check
        target.unlink()
        os.symlink("/dev/zero", target)
    elif damage == "not-listed":
        expected = ["a.json", "c.json"]
    assert cache.load_entry(folder, expected) is None
    err = capsys.readouterr().err
    assert f"WARNING: cache entry {folder} is unusable" in err and problem in err and "recomputing" in err
    assert not os.path.lexists(folder)


def test_a_teacher_entry_is_a_hit_and_a_truncated_one_a_warned_miss(tmp_path, capsys):
    folder = teacher_entry(tmp_path / "teachers" / "key")
    teacher = load_teacher(folder, 1, 5, 7, 3)
    assert teacher.cache_status == "hit" and teacher.test_probs.shape == (1, 7, 3) and teacher.info == {"epochs_run": 3}
    assert teacher.weights == [folder / weights_name(0)]
    for name in (*TEACHER_FILES, weights_name(0)):  # the cases: truncated weights, test_probs.npy, info.json
        teacher_entry(folder)
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
        assert load_teacher(folder, 1, 5, 7, 3) is None
        assert f"{name} has {len(data) // 2} bytes" in capsys.readouterr().err and not folder.exists()


def test_a_teacher_entry_whose_files_match_the_manifest_but_not_the_run_is_discarded(tmp_path, capsys):
    """A manifest can be forged along with its files: the loader still checks shapes and the HDF5 weights."""
    folder = teacher_entry(tmp_path / "key", n_test=6)
    assert load_teacher(folder, 1, 5, 7, 3) is None
    assert "test_probs.npy has shape (1, 6, 3), expected (1, 7, 3)" in capsys.readouterr().err
    cache.write_entry(folder, {
        "scored_probs.npy": lambda p: np.save(p, np.zeros((5, 3), np.float32)),
        "test_probs.npy": lambda p: np.save(p, np.zeros((1, 7, 3), np.float32)),
        weights_name(0): write_text("not weights"),
        "info.json": write_text("{}"),
    })
    assert load_teacher(folder, 1, 5, 7, 3) is None
    assert "lacks the HDF5 signature" in capsys.readouterr().err
    cache.write_entry(folder, {  # an object array would need pickle to load: refused, never unpickled
        "scored_probs.npy": lambda p: np.save(p, np.array([{"a": 1}] * 5, dtype=object), allow_pickle=True),
        "test_probs.npy": lambda p: np.save(p, np.zeros((1, 7, 3), np.float32)),
        weights_name(0): fake_weights,
        "info.json": write_text("{}"),
    })
    assert load_teacher(folder, 1, 5, 7, 3) is None
    assert "allow_pickle" in capsys.readouterr().err


def shift_images(root: Path) -> dict[str, list[str]]:
    sets = {}
    for name, shade in (("train", 60), ("public", 70), ("private", 200)):
        (root / name).mkdir(parents=True)
        sets[name] = []
        for i in range(8):
            path = root / name / f"{i}.png"
            Image.new("RGB", (16 + i, 16), (shade, (shade + 40 * i) % 256, 90)).save(path)
            sets[name].append(str(path))
    return sets


CHEAP_SHIFT = ShiftSettings(n_permutations=1, n_trees=20, min_images=4, workers=1, progress_every=0, n_examples=2)


def test_the_shift_cache_is_json_and_npz_and_a_damaged_one_is_measured_again(tmp_path, capsys):
    cfg = tiny_config(tmp_path / "data", tmp_path)
    sets = shift_images(tmp_path / "images")
    first = get_or_assess_shift(cfg, sets, "fp", tmp_path / "run1", CHEAP_SHIFT)
    (folder,) = (Path(cfg.cache_dir) / "fisheries" / "shift").iterdir()
    plots = sorted(p.name for p in first.plots)
    assert plots and all(name.endswith(".png") for name in plots)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*SHIFT_FILES, cache.MANIFEST, *plots])
    json.loads((folder / "report.json").read_text())  # plain JSON

    again = get_or_assess_shift(cfg, sets, "fp", tmp_path / "run2", CHEAP_SHIFT)
    assert "shift: cached in" in capsys.readouterr().out
    assert again.to_dict() == first.to_dict() and again.table() == first.table()  # to_dict lists the plots too
    assert (tmp_path / "run2" / "shift.json").is_file()
    for name in plots:  # copied from the cache, not drawn again
        assert (tmp_path / "run2" / name).read_bytes() == (tmp_path / "run1" / name).read_bytes()

    (folder / plots[0]).write_bytes(b"not a png")  # a damaged plot: the run still gets every plot, drawn again
    redrawn = get_or_assess_shift(cfg, sets, "fp", tmp_path / "run2b", CHEAP_SHIFT)
    assert f"{plots[0]} has 9 bytes" in capsys.readouterr().err
    assert sorted(p.name for p in redrawn.plots) == plots and all((tmp_path / "run2b" / name).stat().st_size > 1000 for name in plots)
    get_or_assess_shift(cfg, sets, "fp", tmp_path / "run2c", CHEAP_SHIFT)  # the entry was removed: measured and cached again
    assert "shift: cached" not in capsys.readouterr().out and load_entry_ok(folder)

    (folder / "tables.npz").write_bytes((folder / "tables.npz").read_bytes()[:64])
    third = get_or_assess_shift(cfg, sets, "fp", tmp_path / "run3", CHEAP_SHIFT)
    captured = capsys.readouterr()
    assert "tables.npz has 64 bytes" in captured.err and "shift: cached" not in captured.out
    assert third.to_dict()["pairs"] == first.to_dict()["pairs"]
    assert load_entry_ok(folder)  # written again, whole


def load_entry_ok(folder: Path) -> bool:
    return cache.load_entry(folder, SHIFT_FILES) == folder


class _Payload:
    """Unpickling this runs a shell command: what a crafted cache file could do with the old pickle cache."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_pickle_in_the_shift_cache_never_runs(tmp_path, capsys):
    """The old cache was report.pickle: a planted one is removed unread; bytes forged into report.json fail as JSON."""
    marker = tmp_path / "pwned"
    crafted = pickle.dumps(_Payload(marker))
    cfg = tiny_config(tmp_path / "data", tmp_path)
    sets = shift_images(tmp_path / "images")
    get_or_assess_shift(cfg, sets, "fp", tmp_path / "run1", CHEAP_SHIFT)
    (folder,) = (Path(cfg.cache_dir) / "fisheries" / "shift").iterdir()

    for name in os.listdir(folder):  # the old layout: one pickle, no manifest
        (folder / name).unlink()
    (folder / "report.pickle").write_bytes(crafted)
    get_or_assess_shift(cfg, sets, "fp", tmp_path / "run2", CHEAP_SHIFT)
    assert "no manifest.json" in capsys.readouterr().err
    assert not (folder / "report.pickle").exists() and load_entry_ok(folder)

    (folder / "report.json").write_bytes(crafted)  # in place of the JSON, with a manifest forged to match
    manifest = json.loads((folder / cache.MANIFEST).read_text())
    manifest["files"]["report.json"] = {"sha256": sha256_of(folder / "report.json"), "bytes": len(crafted)}
    (folder / cache.MANIFEST).write_text(json.dumps(manifest))
    report = get_or_assess_shift(cfg, sets, "fp", tmp_path / "run3", CHEAP_SHIFT)
    assert f"cache entry {folder} is unusable" in capsys.readouterr().err and report.worst
    assert not marker.exists()


def test_no_module_of_the_project_uses_pickle():
    sources = [*REPO.glob("pipeline/**/*.py"), *REPO.glob("competitions/**/*.py")]
    offenders = [str(p) for p in sources if "import pickle" in p.read_text() or "pickle.load" in p.read_text()]
    assert offenders == []


def test_the_teacher_key_changes_with_the_labels_the_split_and_every_teacher_option():
    """Issue 11 item 3: relabeled train data must not reuse a teacher trained on the old labels."""
    from types import SimpleNamespace

    from pipeline.run.config import RunConfig, teacher_settings
    from pipeline.cache.teachers import teacher_key

    cfg = RunConfig(competition="fisheries", data="d", folds=5)  # a run settles --folds auto before any key
    spec = SimpleNamespace(n_classes=3, multi_label=False, flips="horizontal")
    y = np.eye(3, dtype=np.float32)[np.arange(30) % 3]
    items = SimpleNamespace(fingerprint="f", y=y, fold=np.arange(30) % 5, adapted=())
    base = teacher_key(cfg, spec, items)
    relabeled = SimpleNamespace(fingerprint="f", y=y[::-1].copy(), fold=items.fold, adapted=())
    resplit = SimpleNamespace(fingerprint="f", y=y, fold=(np.arange(30) + 1) % 5, adapted=())
    adapted = SimpleNamespace(fingerprint="f", y=y, fold=items.fold, adapted=("private",))  # --adapt-bn's groups
    keys = {teacher_key(cfg, spec, x) for x in (items, relabeled, resplit, adapted)}
    assert len(keys) == 4
    for name in teacher_settings(cfg):  # every option marked `teacher` in the table keys the cache
        value = getattr(cfg, name)
        changed = {bool: lambda v: not v, int: lambda v: v + 1, float: lambda v: v / 2,
                   str: lambda v: {"standard": "strong", "resnet": "small-cnn", "none": "all", "foreign": "none"}.get(v, v + "x")}[type(value)](value)
        if name == "weights":
            continue  # must name an existing file; a weights file's sha256 keys the cache (see _weights_identity)
        assert teacher_key(cfg.replace(**{name: changed}), spec, items) != base, name
    assert teacher_key(cfg.replace(pseudo_ratio=0.5, pseudo_rounds=3), spec, items) == base  # students only


def test_cache_keys_are_the_ones_existing_entries_were_written_under():
    """Every cache finds its entries by these strings: pinned from the code before the four caches shared one key
    function (ff373dc), so a change to what goes into a key, or to how it is written, cannot slip in unnoticed.
    Changed on purpose since: students and controls at model-cache version 5 (a first-round student shares its
    control's seed), a student's key with the augmentation it trained with. Added: the keys of a teacher and a
    control trained with XLA (--jit on); without XLA (--jit off, or auto resolved off) every key is as before. --folds
    auto settles to a number before any key is made, so its keys are those of that number given explicitly."""
    from types import SimpleNamespace

    from pipeline.cache.features import features_key
    from pipeline.cache.models import control_key, selection_digest, student_key
    from pipeline.cache.shift import shift_key
    from pipeline.cache.teachers import teacher_key
    from pipeline.run.config import RunConfig

    # the options' values of the pinned runs (the defaults then: what older entries were written under)
    cfg = RunConfig(competition="fisheries", data="d", adapt_bn="none", pseudo_weight="none", jit="off",
                    pseudo_labeler="teacher", folds=1)
    other = RunConfig(competition="amazon", data="d2", folds=3, seed=5, pseudo_groups=("public",), plugin_options={"a": "b"},
                      backbone="MobileNetV2", image_size=32, adapt_bn="all", pseudo_weight="none", jit="off",
                      pseudo_labeler="teacher")
    y = np.eye(3, dtype=np.float32)[np.arange(30) % 3]
    items = SimpleNamespace(fingerprint="f", y=y, fold=np.arange(30) % 5, adapted=())
    other_items = SimpleNamespace(fingerprint="g", y=y[::-1].copy(), fold=np.arange(30) % 3, adapted=("private",))
    teacher = teacher_key(other, SimpleNamespace(n_classes=3, multi_label=True, flips="both"), other_items)
    paths = ["a/1.png", "b/2.jpg", "c/3.png"]
    sets = {"train": paths[:1], "public": paths[1:2], "private": paths[2:]}
    keys = {
        "teacher": teacher_key(cfg, SimpleNamespace(n_classes=3, multi_label=False, flips="horizontal"), items),
        "teacher2": teacher,
        "student": student_key("teacher", cfg, 0, 1, 0, "selection", "init", 30, "standard"),
        "student2": student_key(teacher, other, 2, 2, 1, selection_digest(np.arange(4), y[:4]), "scratch", 123,
                                    "strong"),
        "control": control_key("teacher", cfg, 0, 20),
        "control2": control_key(teacher, other, 2, 123),
        "features": features_key(cfg, paths, "fp"),
        "features2": features_key(other, paths, "fp"),
        "shift": shift_key(cfg, sets, "fp", ShiftSettings()),
        "shift2": shift_key(other, sets, "fp", CHEAP_SHIFT),
        # trained with XLA (--jit on): the teacher's key, and through it its students' and controls'
        "teacher_xla": teacher_key(cfg.replace(jit="on"), SimpleNamespace(n_classes=3, multi_label=False, flips="horizontal"), items),
        "control_xla": control_key(teacher_key(other.replace(jit="on"), SimpleNamespace(n_classes=3, multi_label=True, flips="both"),
                                               other_items), other.replace(jit="on"), 2, 123),
    }
    assert keys == {
        "teacher": "8920f19baa1d37f89b8c", "teacher2": "b52dde6ec964f80a8c00",
        "student": "7501d15f42e744caa1ca", "student2": "6d852b0732103d1015a8",
        "control": "ecee62caad2dd78b9764", "control2": "e6e72ef812fd4db7f76e",
        "features": "2b32fb73f3863c274259", "features2": "cf8394f56475f18e1703",
        "shift": "37cf8e9c7ece2f0db4a5", "shift2": "a96adfa2cc70183a4abe",
        "teacher_xla": "e99a8208c817abeabcf0", "control_xla": "808b293bce3b9f7d433e",
    }


def test_a_cached_stage_computes_once_and_recomputes_an_entry_its_loader_rejects(tmp_path, capsys):
    from pipeline.cache.stage import get_or_compute

    computed = []

    def compute():
        computed.append(1)
        return len(computed), {"n.json": write_text(json.dumps(len(computed)))}

    def load(folder: Path) -> int:
        value = json.loads((folder / "n.json").read_text())
        if value > 1:
            raise ValueError("not for this run")
        return value

    folder = tmp_path / "stage" / "key"
    assert get_or_compute(folder, ["n.json"], load, compute, "stage: cached") == (1, False)
    assert get_or_compute(folder, ["n.json"], load, compute, "stage: cached") == (1, True)
    assert "stage: cached" in capsys.readouterr().out and len(computed) == 1
    assert get_or_compute(folder, ["n.json"], load, compute, "stage: cached", read=False) == (2, False)
    assert json.loads((folder / "n.json").read_text()) == 1  # same key, same content: the entry there is kept
    unfit = cache.write_entry(tmp_path / "stage" / "unfit", {"n.json": write_text("5")})
    assert get_or_compute(unfit, ["n.json"], load, compute, "stage: cached") == (3, False)
    assert "ValueError: not for this run" in capsys.readouterr().err and json.loads((unfit / "n.json").read_text()) == 3
