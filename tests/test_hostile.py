"""Careless or hostile input, case by case: each ends in a named error (UserError: exit 2, one `error:` line,
no traceback), a warning and a recompute, or a counted skip; never a traceback, a hang or a silent drop.

Cases are generated from the plugin registry where they apply to every plugin. Nothing here trains a model:
where a case is decided before training, the function that decides it is tested directly.
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from pipeline.errors import UserError
from pipeline.run.preflight import check_before_training
from pipeline.plugin.registry import get_competition, list_competitions
from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.xdist_group("hostile")  # one worker builds the plugin samples, once


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m pipeline ARGS` in a real subprocess."""
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit 2, one `error: ...` line naming every fragment, and no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# ---- errors vs bugs (issue 11, item 6) ---------------------------------------------------------------------

def test_user_error_is_a_value_error_so_existing_handlers_still_catch_it():
    assert issubclass(UserError, ValueError)


def test_a_user_error_is_one_line_and_exit_2(tmp_path):
    proc = cli("runs", "show", "no-such-run", "--ledger", str(tmp_path / "ledger.sqlite"))
    assert_user_error(proc, "no single run 'no-such-run'", "runs list")


def test_a_library_bug_keeps_its_traceback_and_is_not_dressed_as_a_user_error(tmp_path):
    """A plain ValueError from inside the code (here: a broken ledger read) is a bug: traceback, exit 1."""
    proc = python("""
        import sys
        import pipeline.ledger.store
        def broken(self, competition=None):
            raise ValueError("internal: columns do not line up")
        pipeline.ledger.store.Ledger.runs = broken
        from pipeline.__main__ import main
        sys.exit(main(["runs", "list", "--ledger", sys.argv[1]]))
    """, str(tmp_path / "ledger.sqlite"))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" in proc.stderr and "ValueError: internal: columns do not line up" in proc.stderr
    assert "error: internal" not in proc.stderr


# ---- the plugins' samples, damaged case by case ------------------------------------------------------------

@pytest.fixture(scope="session")
def samples(tmp_path_factory) -> dict[str, Path]:
    """Each registered plugin's bundled sample (read-only: copy it with `copy_data` before damaging it)."""
    made = {}
    for name in list_competitions():
        out = tmp_path_factory.mktemp(f"sample-{name}")
        get_competition(name).make_sample(out, seed=2)
        made[name] = out / "data"
    return made


def copy_data(source: Path, dest: Path) -> Path:
    """A copy of a sample: images hard-linked (cheap; damage them only through `put`), CSVs copied."""
    def link_or_copy(src: str, dst: str) -> None:
        if src.endswith(".csv"):
            shutil.copy2(src, dst)
        else:
            os.link(src, dst)

    shutil.copytree(source, dest, copy_function=link_or_copy)
    return dest


def put(path: Path, data: bytes) -> None:
    """Replace a file's content without touching the sample it may be hard-linked to."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def decide(name: str, data: Path, tmp: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Everything a run decides about its data before training: layout, listing, preflight."""
    competition = get_competition(name)
    competition.check_layout(data)
    train, test = competition.train_items(data), competition.test_items(data)
    check_before_training(tiny_config(data, tmp, competition=name), competition, data, train, test)
    return train, test


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 18), (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


BAD_IMAGES = {  # name -> (make the bytes from the original JPEG, is it still readable?)
    "truncated JPEG": (lambda jpg: jpg[: len(jpg) * 2 // 5], False),
    "zero bytes": (lambda jpg: b"", False),
    "text named .jpg": (lambda jpg: b"this is not an image\n" * 20, False),
    "PNG named .jpg": (lambda jpg: png_bytes(), True),
}


@pytest.mark.parametrize("name", list_competitions())
def test_bad_images_in_train_and_test_are_counted_skips_and_every_test_id_stays(name, samples, tmp_path, capsys):
    from pipeline.data.streams import scan_images

    data = copy_data(samples[name], tmp_path / "data")
    train, test = decide(name, data, tmp_path)
    ids_before = test["id"].tolist()
    broken = {}
    for table in (train, test):
        for path, (kind, (make, readable)) in zip(table["path"][:: max(1, len(table) // 5)], BAD_IMAGES.items()):
            put(Path(path), make(Path(path).read_bytes()))
            broken[path] = (kind, readable)
    train_after, test_after = decide(name, data, tmp_path)  # listing and preflight: nothing refused
    assert test_after["id"].tolist() == ids_before  # every test id keeps its row (the class prior when unreadable)
    expected = get_competition(name).expected_ids(data) or ids_before
    assert set(expected) <= set(test_after["id"])
    for table, what in ((train_after, "train"), (test_after, "test")):
        listed = [p for p in table["path"] if p in broken] + table["path"][1:40:3].tolist()  # damaged and intact ones
        unreadable = {p for p in listed if p in broken and not broken[p][1]}
        bad = scan_images(listed, what)
        assert set(bad) == unreadable, {broken.get(p, ("intact",))[0]: why for p, why in bad.items()}
        assert len(unreadable) == 3


OPTIONAL_ENTRIES = {  # top-level entries a plugin's layout can do without (anything else is required)
    "fisheries": {"sample_submission_stg1.csv", "sample_submission_stg2.csv"},  # stage 1's ids, or the test folders
}


@pytest.mark.parametrize("name", list_competitions())
def test_each_missing_part_of_the_layout_is_a_named_error_or_optional(name, samples, tmp_path, capsys):
    entries = sorted(p.name for p in samples[name].iterdir())
    optional = OPTIONAL_ENTRIES.get(name, set())
    for entry in entries:
        data = copy_data(samples[name], tmp_path / entry / "data")
        target = data / entry
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        if entry in optional:
            decide(name, data, tmp_path)
            continue
        with pytest.raises(UserError) as error:
            decide(name, data, tmp_path)
        assert entry in str(error.value), (entry, str(error.value))


# ---- test images in folders the layout does not read (issue 11, item 4) ------------------------------------

def images(root: Path, *paths: str) -> None:
    for path in paths:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (10, 10), (len(path) * 9 % 256, 40, 90)).save(root / path)


def test_imagefolder_refuses_test_folders_it_does_not_read_instead_of_dropping_their_images(tmp_path):
    """The issue's case: 7 of 17 test images were in test/stage2/, test/Private/ and test/public/ALB/."""
    data = tmp_path / "data"
    images(data, "train/ALB/a.png", "train/NoF/b.png", *(f"test/public/{i}.png" for i in range(6)),
           *(f"test/private/{i}.png" for i in range(4)), "test/loose.png")
    imagefolder = get_competition("imagefolder")
    assert len(imagefolder.test_items(data)) == 11
    images(data, "test/stage2/a.png", "test/stage2/b.png", "test/Private/c.png", "test/Private/d.png")
    with pytest.raises(UserError) as error:
        imagefolder.test_items(data)
    message = str(error.value)
    assert "Private/, stage2/" in message and "test/public/ or in test/private/" in message
    assert "rename Private/ to private/" in message
    for folder in ("stage2", "Private"):
        shutil.rmtree(data / "test" / folder)
    images(data, "test/public/ALB/e.png", "test/public/ALB/f.png", "test/public/ALB/g.png")
    with pytest.raises(UserError, match=r"public holds folder\(s\) ALB/ whose images would be left out"):
        imagefolder.test_items(data)


@pytest.mark.parametrize("where", ["test_stg1/extra", "test_stg2/extra", "train/ALB/more"])
def test_fisheries_refuses_folders_nested_in_its_image_folders(tiny_fisheries, tmp_path, where):
    data = copy_data(tiny_fisheries / "data", tmp_path / "data")
    images(data, f"{where}/img_1.jpg")
    fisheries = get_competition("fisheries")
    with pytest.raises(UserError) as error:
        fisheries.train_items(data) if where.startswith("train") else fisheries.test_items(data)
    assert f"holds folder(s) {Path(where).name}/" in str(error.value) and "left out" in str(error.value)


def test_a_train_image_outside_any_class_folder_is_refused(tmp_path):
    data = tmp_path / "data"
    images(data, "train/cat/1.png", "train/dog/1.png", "train/stray.png", "test/1.png")
    with pytest.raises(UserError, match=r"holds stray.png directly, outside any class folder"):
        get_competition("imagefolder").train_items(data)


def test_a_pipe_among_the_test_images_is_refused_not_waited_on(tmp_path):
    data = tmp_path / "data"
    images(data, "train/cat/1.png", "train/dog/1.png", "test/1.png")
    os.mkfifo(data / "test" / "2.png")
    with pytest.raises(UserError, match=r"holds 2.png, which are neither image files nor folders"):
        get_competition("imagefolder").test_items(data)


# ---- bad CSVs, for the plugins that read CSVs --------------------------------------------------------------

def edit_csv(path: Path, change) -> None:
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table = change(table)
    put(path, table.to_csv(index=False).encode())


CSV_CASES = [  # (plugin, file, damage, fragments of the error)
    ("amazon", "train_v2.csv", lambda t: t.drop(columns=["tags"]), ["train_v2.csv lacks column(s) ['tags']"]),
    ("amazon", "train_v2.csv", lambda t: t.assign(tags=t["tags"].where(t.index != 4, "primary jungle")),
     ["train_v2.csv line 6", "tag 'jungle' is not one of the 17 Amazon tags"]),
    ("amazon", "train_v2.csv", lambda t: pd.concat([t, t.iloc[[7]]]), ["appears more than once"]),
    ("amazon", "train_v2.csv", lambda t: t.assign(image_name=t["image_name"].where(t.index != 2, "../train_2")),
     ["train_v2.csv line 4", "'../train_2' is not a plain file name"]),
    ("amazon", "sample_submission_v2.csv", lambda t: t.assign(image_name=t["image_name"].where(t.index != 0, "../../etc/passwd")),
     ["sample_submission_v2.csv line 2", "is not a plain file name"]),
    ("amazon", "sample_submission_v2.csv", lambda t: t.iloc[1:], ["sample_submission_v2.csv and the test folders disagree"]),
    ("amazon", "train_v2.csv", b"\x00\xff\xfe garbage \x89PNG\r\n" * 50, ["train_v2.csv"]),
    ("amazon", "train_v2.csv", b"", ["train_v2.csv is not a readable CSV"]),
    ("fisheries", "sample_submission_stg2.csv", lambda t: t.rename(columns={"image": "img"}),
     ["sample_submission_stg2.csv has no 'image' column"]),
    ("fisheries", "sample_submission_stg2.csv", lambda t: pd.concat([t, t.iloc[[5]]]), ["more than once"]),
    ("fisheries", "sample_submission_stg2.csv",
     lambda t: pd.concat([t, pd.DataFrame([{**t.iloc[0].to_dict(), "image": "../test_stg1/../../x.jpg"}])]),
     ["sample_submission_stg2.csv lists 1 id(s) with no test image", "../test_stg1/../../x.jpg"]),
    ("fisheries", "sample_submission_stg2.csv", b"", ["sample_submission_stg2.csv is not a readable CSV"]),
]


@pytest.mark.parametrize("name, csv, damage, fragments", CSV_CASES,
                         ids=[f"{c[0]}-{c[1]}-{k}" for k, c in enumerate(CSV_CASES)])
def test_a_bad_csv_is_a_named_error_before_training(samples, tmp_path, name, csv, damage, fragments):
    data = copy_data(samples[name], tmp_path / "data")
    if isinstance(damage, bytes):
        put(data / csv, damage)
    else:
        edit_csv(data / csv, damage)
    with pytest.raises(UserError) as error:
        decide(name, data, tmp_path)
    for fragment in fragments:
        assert fragment in str(error.value), (fragment, str(error.value))


def test_every_plugin_that_reads_a_csv_has_bad_csv_cases():
    readers = {name for name in list_competitions() if "expected_ids" in vars(type(get_competition(name)))}
    assert readers <= {case[0] for case in CSV_CASES}


# ---- bad options and a corrupt ledger, through the command line ---------------------------------------------

def test_an_unknown_competition_on_the_command_line_is_exit_2_without_traceback(tmp_path):
    proc = cli("submit", "--competition", "titanic", "--data", str(tmp_path), "--no-ledger",
               "--runs-dir", str(tmp_path / "runs"))
    assert_user_error(proc, "unknown competition 'titanic'", "fisheries")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, fragment", [
    (["submit", "--competition", "fisheries", "--data", "{tmp}/nowhere"], "data folder {tmp}/nowhere does not exist"),
    (["submit", "--competition", "amazon", "--data", "{tmp}", "--option", "public_folders=x"], "amazon has no option public_folders"),
    (["submit", "--competition", "amazon", "--data", "{tmp}", "--option", "public_folder=test"], "public_folder must be one of"),
    (["submit", "--competition", "fisheries", "--data", "{tmp}", "--metric", "auc"], "--metric 'auc' is not available"),
    (["sample", "nope", "{tmp}/s"], "unknown competition 'nope'"),
    (["runs", "list", "--ledger", "{tmp}"], "is a folder"),
    (["runs", "score", "r1", "--ledger", "{tmp}/l.sqlite"], "needs --public and/or --private"),
    (["compare", "--competition", "fisheries", "--ledger", "{tmp}/l.sqlite"], "does not exist: no run was recorded there"),
])
def test_bad_options_are_one_error_line_and_exit_2(tmp_path, capsys, args, fragment):
    from pipeline.__main__ import main

    argv = [a.format(tmp=tmp_path) for a in args] + (["--no-ledger", "--runs-dir", str(tmp_path / "runs")]
                                                    if args[0] == "submit" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment.format(tmp=tmp_path) in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("damage", ["random bytes", "sqlite header then garbage", "truncated"])
def test_a_corrupt_ledger_is_a_named_error_and_left_untouched(tmp_path, capsys, damage):
    import random

    from pipeline.__main__ import main
    from pipeline.ledger.store import Ledger

    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    for k in range(40):
        ledger.start_run(f"run-{k}", "fisheries", {"pseudo_ratio": 0.25, "pad": "x" * 2000}, "fp", k)
    good = path.read_bytes()
    noise = random.Random(3).randbytes(len(good))
    put(path, {"random bytes": noise, "sqlite header then garbage": good[:100] + noise[100:],
               "truncated": good[: len(good) // 3]}[damage])
    before = path.read_bytes()
    if damage == "random bytes":  # once through a real process: exit status and stderr as a user sees them
        proc = cli("runs", "list", "--ledger", str(path))
    else:
        code = main(["runs", "list", "--ledger", str(path)])
        proc = subprocess.CompletedProcess([], code, "", capsys.readouterr().err)
    assert_user_error(proc, f"ledger {path} is not a readable run ledger", f"mv {path} {path}.broken")
    assert path.read_bytes() == before
