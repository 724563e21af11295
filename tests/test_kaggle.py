"""Kaggle integration against a real HTTP server on 127.0.0.1 (tests/kaggle_server.py).

The unchanged `kaggle` package runs in a subprocess, pointed at the server by KAGGLE_API_ENVIRONMENT=LOCALHOST
and HTTP_PROXY, with HOME and KAGGLE_CONFIG_DIR in tmp_path; a guard fails any non-loopback connection.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import py7zr
import py7zr.py7zr
import pytest
from PIL import Image

from kaggle_server import KEY, PYTHON, REPO_ROOT, FakeKaggle, client_env, write_kaggle_json
from pipeline.files import sha256_of
from pipeline.ledger.store import Ledger

SLUG = "the-nature-conservancy-fisheries-monitoring"
CLASSES = ["ALB", "BET", "DOL", "LAG", "NoF", "OTHER", "SHARK", "YFT"]
TEST_IDS = ["img_00001.jpg", "img_00002.jpg", "test_stg2/image_00001.jpg"]

SUBMIT_SCRIPT = """
import json, sys
from pathlib import Path
from pipeline.kaggle.submit import upload_run_submission
a = json.loads(sys.argv[1])
try:
    result = upload_run_submission("fisheries", Path(a["csv"]), Path(a["data"]), a["run_id"], a["message"],
                                   Path(a["ledger"]), poll_timeout_s=a["timeout"], poll_start_s=0.05)
except ValueError as error:  # what python -m pipeline does with a ValueError
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
print("RESULT " + json.dumps(result))
"""


# ---- helpers ----------------------------------------------------------------------------------------
def zip_bytes(entries: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (12, 20, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()


def sevenzip_bytes(entries: dict, hostile: bool = False) -> bytes:
    """A real 7z from {name: bytes}; `hostile` lifts py7zr's refusal to *write* names like `../x`."""
    check = py7zr.py7zr.check_archive_path
    if hostile:
        py7zr.py7zr.check_archive_path = lambda name: True
    try:
        buffer = io.BytesIO()
        with py7zr.SevenZipFile(buffer, "w") as archive:
            for name, data in entries.items():
                archive.writestr(data, name)
        return buffer.getvalue()
    finally:
        py7zr.py7zr.check_archive_path = check


def tar_bytes(entries: dict) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def sample_csv(ids: list[str]) -> str:
    return pd.DataFrame({"image": ids, **{c: 0.125 for c in CLASSES}}).to_csv(index=False)


def fisheries_archive(with_test: bool = True, stage2: dict | None = None, sample_ids: list[str] = TEST_IDS) -> bytes:
    """Shaped like Kaggle's download: zips and a 7z (the whole private set) inside the competition zip."""
    train = zip_bytes({f"train/{c}/img_{i:05d}.jpg": jpeg(i) for i, c in enumerate(CLASSES)})
    stage2 = stage2 if stage2 is not None else {"test_stg2/image_00001.jpg": jpeg(200)}
    entries = {"train.zip": train, "test_stg2.7z": sevenzip_bytes(stage2, hostile=True),
               "sample_submission_stg1.csv.zip": zip_bytes({"sample_submission_stg1.csv": sample_csv(TEST_IDS[:2])}),
               "sample_submission_stg2.csv.zip": zip_bytes({"sample_submission_stg2.csv": sample_csv(sample_ids)})}
    if with_test:
        entries["test_stg1.zip"] = zip_bytes({f"test_stg1/img_{i:05d}.jpg": jpeg(100 + i) for i in (1, 2)})
    return zip_bytes(entries)


def run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180)


def assert_nothing_leaked(proc: subprocess.CompletedProcess, tmp_path: Path, *secrets: str) -> None:
    guard_log = tmp_path / "netguard.log"
    assert not guard_log.exists(), f"non-loopback connections attempted: {guard_log.read_text()}"
    for secret in (KEY, *secrets):
        assert secret not in proc.stdout + proc.stderr


def fisheries_data(folder: Path) -> Path:
    """Just what submission validation reads: the stage 2 sample submission (its ids, in order)."""
    folder.mkdir(parents=True)
    sample = pd.DataFrame({"image": TEST_IDS, **{c: 0.125 for c in CLASSES}})
    sample.to_csv(folder / "sample_submission_stg2.csv", index=False)
    return folder


def submission_csv(path: Path, ids: list[str] = TEST_IDS) -> Path:
    probabilities = np.random.default_rng(len(ids)).dirichlet(np.ones(len(CLASSES)), size=len(ids))
    table = pd.DataFrame(probabilities, columns=CLASSES)
    table.insert(0, "image", ids)
    table.to_csv(path, index=False)
    return path


def ledger_with_run(tmp_path: Path, run_id: str, csv: Path) -> Path:
    """A real SQLite ledger holding one finished run whose submission is `csv`."""
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    ledger.start_run(run_id, "fisheries", {"competition": "fisheries"}, "fingerprint", 0)
    ledger.finish_run(run_id, {"competition": "fisheries", "metric": "logloss", "greater_is_better": False}, csv, 1.0)
    return path


def submit(fake: FakeKaggle, tmp_path: Path, csv: Path, run_id: str, timeout: float = 30) -> subprocess.CompletedProcess:
    env = client_env(tmp_path / "home", fake.proxy_url, tmp_path / "netguard.log")
    args = {"csv": str(csv), "data": str(tmp_path / "data"), "run_id": run_id, "message": "pseudo 0.25",
            "ledger": str(tmp_path / "ledger.sqlite"), "timeout": timeout}
    return run(["-c", SUBMIT_SCRIPT, json.dumps(args)], env)


def result_of(proc: subprocess.CompletedProcess) -> dict:
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stdout + proc.stderr
    return json.loads(lines[-1][len("RESULT "):])


# ---- the guard itself -------------------------------------------------------------------------------
def test_guard_refuses_and_logs_non_loopback_connections(tmp_path):
    """Without this, 'nothing left the machine' would be an assertion that cannot fail."""
    env = client_env(tmp_path / "home", "http://127.0.0.1:9", tmp_path / "netguard.log")
    probe = ("import socket\n"
             "for target in (lambda: socket.socket().connect(('10.255.255.1', 80)),\n"
             "               lambda: socket.getaddrinfo('www.kaggle.com', 443)):\n"
             "    try:\n        target()\n    except ConnectionRefusedError as error:\n        print(error)\n")
    proc = run(["-c", probe], env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("netguard: refused") == 2
    assert (tmp_path / "netguard.log").read_text().splitlines() == [
        "connect ('10.255.255.1', 80)", "lookup 'www.kaggle.com'"]


# ---- download ---------------------------------------------------------------------------------------
def test_data_downloads_extracts_and_checks_layout(tmp_path):
    home = tmp_path / "home"
    config = write_kaggle_json(home, mode=0o644)  # readable by others: must warn
    with FakeKaggle(slug=SLUG, archive=fisheries_archive()) as fake:
        proc = run(["-m", "pipeline", "data", "--competition", "fisheries", "--data", str(tmp_path / "data")],
                   client_env(home, fake.proxy_url, tmp_path / "netguard.log"))
    assert proc.returncode == 0, proc.stderr
    data = tmp_path / "data"
    assert sorted(p.name for p in (data / "train").iterdir()) == sorted(CLASSES)
    assert Image.open(data / "train" / "ALB" / "img_00000.jpg").size == (20, 12)
    assert sorted(p.name for p in (data / "test_stg1").iterdir()) == ["img_00001.jpg", "img_00002.jpg"]
    assert sorted(p.name for p in data.iterdir()) == ["sample_submission_stg1.csv", "sample_submission_stg2.csv",
                                                      "test_stg1", "test_stg2", "train"]  # exactly the layout
    assert (data / "test_stg2" / "image_00001.jpg").read_bytes() == jpeg(200)  # the 7z was extracted
    assert "layout of fisheries complete" in proc.stdout and "test ids match the sample submission" in proc.stdout
    assert f"warning: {config} is readable by other users" in proc.stderr and f"chmod 600 {config}" in proc.stderr
    # the package really went through the proxy (absolute URLs) and followed the redirect to the blob
    assert [m for m, _ in fake.log] == ["POST", "GET"]
    assert all(target.startswith("http://localhost/") for _, target in fake.log)
    assert fake.paths() == [f"/api/v1/competitions.CompetitionApiService/DownloadDataFiles", f"/blobs/{SLUG}.zip"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "home", "netguard"]  # no temp folders left
    assert_nothing_leaked(proc, tmp_path)


def test_data_says_what_is_missing_from_the_layout(tmp_path):
    write_kaggle_json(tmp_path / "home")
    with FakeKaggle(slug=SLUG, archive=fisheries_archive(with_test=False)) as fake:
        proc = run(["-m", "pipeline", "data", "--competition", "fisheries", "--data", str(tmp_path / "data")],
                   client_env(tmp_path / "home", fake.proxy_url, tmp_path / "netguard.log"))
    assert proc.returncode == 2
    assert "the data is not usable" in proc.stderr and "lacks test_stg1/" in proc.stderr
    assert not (tmp_path / "data").exists()  # checked before it was moved into place
    assert_nothing_leaked(proc, tmp_path)


def test_wrong_key_gives_a_clear_401_without_echoing_it(tmp_path):
    wrong = "wr0ng-k3y-aaaabbbbccccdddd"
    write_kaggle_json(tmp_path / "home", key=wrong)
    with FakeKaggle(slug=SLUG, archive=fisheries_archive()) as fake:
        proc = run(["-m", "pipeline", "data", "--competition", "fisheries", "--data", str(tmp_path / "data")],
                   client_env(tmp_path / "home", fake.proxy_url, tmp_path / "netguard.log"))
    assert proc.returncode == 2
    assert "HTTP 401" in proc.stderr and "https://www.kaggle.com/settings/api" in proc.stderr
    assert "rejected pipeline-tester:***" in proc.stderr  # the server quoted the key; it was blanked out
    assert "Traceback" not in proc.stderr
    assert fake.paths() == ["/api/v1/competitions.CompetitionApiService/DownloadDataFiles"]  # the key was really sent
    assert not (tmp_path / "data").exists()
    assert_nothing_leaked(proc, tmp_path, wrong)


def test_missing_credentials_give_the_setup_steps(tmp_path):
    with FakeKaggle(slug=SLUG, archive=fisheries_archive()) as fake:
        proc = run(["-m", "pipeline", "data", "--competition", "fisheries", "--data", str(tmp_path / "data")],
                   client_env(tmp_path / "home", fake.proxy_url, tmp_path / "netguard.log"))
    assert proc.returncode == 2
    for step in ("no Kaggle credentials found", "https://www.kaggle.com/settings/api", "~/.kaggle/access_token",
                 "KAGGLE_API_TOKEN", "chmod 600 ~/.kaggle/kaggle.json"):
        assert step in proc.stderr
    assert fake.log == []
    assert_nothing_leaked(proc, tmp_path)


# ---- submit -----------------------------------------------------------------------------------------
def test_submit_uploads_polls_until_scored_and_records_it(tmp_path):
    write_kaggle_json(tmp_path / "home")
    fisheries_data(tmp_path / "data")
    csv = submission_csv(tmp_path / "submission.csv")
    sha = sha256_of(csv)
    ledger_path = ledger_with_run(tmp_path, "run-7", csv)
    with FakeKaggle(slug=SLUG, pending_polls=2) as fake:
        proc = submit(fake, tmp_path, csv, "run-7")
    assert proc.returncode == 0, proc.stderr
    result = result_of(proc)
    assert list(fake.uploads.values()) == [csv.read_bytes()]  # the PUT carried the file itself
    [made] = fake.submissions
    assert made.description == f"run=run-7 sha256={sha} pseudo 0.25"
    assert result == {"ref": str(made.ref), "status": "COMPLETE", "public_score": 0.91, "private_score": 0.87,
                      "run_id": "run-7", "sha256": sha, "message": made.description}
    assert proc.stdout.count("status PENDING") == 2  # two listings said PENDING, the third COMPLETE
    assert fake.paths().count("/api/v1/competitions.CompetitionApiService/ListSubmissions") == 3
    [recorded] = Ledger(ledger_path).run("run-7")["submissions"]
    assert (recorded["ref"], recorded["sha256"], recorded["status"]) == (str(made.ref), sha, "COMPLETE")
    assert (recorded["public_score"], recorded["private_score"]) == (0.91, 0.87)
    assert Ledger(ledger_path).runs()["kaggle_public"].tolist() == [0.91]
    assert_nothing_leaked(proc, tmp_path)


def test_failed_upload_is_an_error_and_nothing_is_submitted(tmp_path):
    write_kaggle_json(tmp_path / "home")
    fisheries_data(tmp_path / "data")
    csv = submission_csv(tmp_path / "submission.csv")
    ledger_path = ledger_with_run(tmp_path, "run-8", csv)
    with FakeKaggle(slug=SLUG, fail_upload=True) as fake:
        proc = submit(fake, tmp_path, csv, "run-8")
    assert proc.returncode == 2
    assert "failed: Could not submit to competition" in proc.stderr
    assert "RESULT" not in proc.stdout
    assert fake.paths()[-1].startswith("/uploads/") and fake.uploads == {} and fake.submissions == []
    assert Ledger(ledger_path).run("run-8")["submissions"] == []
    assert_nothing_leaked(proc, tmp_path)


def test_invalid_csv_is_never_uploaded(tmp_path):
    write_kaggle_json(tmp_path / "home")
    fisheries_data(tmp_path / "data")
    csv = submission_csv(tmp_path / "submission.csv", ids=TEST_IDS[:-1])  # one expected id missing
    ledger_with_run(tmp_path, "run-9", csv)
    with FakeKaggle(slug=SLUG) as fake:
        proc = submit(fake, tmp_path, csv, "run-9")
    assert proc.returncode == 2
    assert f"error: {csv}" in proc.stderr and "1 missing" in proc.stderr
    assert fake.log == []  # Kaggle was never contacted, let alone sent the file
    assert_nothing_leaked(proc, tmp_path)


def test_submit_past_the_time_limit_is_recorded_pending_and_scores_syncs_it(tmp_path):
    """Also: access-token credentials (KAGGLE_API_TOKEN, checked by IntrospectToken) and a foreign submission."""
    fisheries_data(tmp_path / "data")
    csv = submission_csv(tmp_path / "submission.csv")
    sha = sha256_of(csv)
    ledger_path = ledger_with_run(tmp_path, "run-10", csv)
    with FakeKaggle(slug=SLUG, pending_polls=3) as fake:
        for number in range(100):  # more than one page of 100
            fake.add_submission(f"uploaded by hand, try {number}", public_score="0.700", private_score="0.710")
        env = client_env(tmp_path / "home", fake.proxy_url, tmp_path / "netguard.log")
        env["KAGGLE_API_TOKEN"] = fake.token
        args = {"csv": str(csv), "data": str(tmp_path / "data"), "run_id": "run-10", "message": "",
                "ledger": str(ledger_path), "timeout": 0.0}
        proc = run(["-c", SUBMIT_SCRIPT, json.dumps(args)], env)
        assert proc.returncode == 0, proc.stderr
        assert result_of(proc)["status"] == "PENDING" and "`make scores` fetches the score later" in proc.stdout
        assert [s["status"] for s in Ledger(ledger_path).run("run-10")["submissions"]] == ["PENDING"]
        fake.submissions[-1].pending_polls = 0  # Kaggle has scored it meanwhile
        synced = run(["-m", "pipeline", "scores", "--competition", "fisheries", "--ledger", str(ledger_path)], env)
    assert synced.returncode == 0, synced.stderr
    ours = fake.submissions[-1]
    assert ours.description == f"run=run-10 sha256={sha}"
    [recorded] = Ledger(ledger_path).run("run-10")["submissions"]
    assert (recorded["ref"], recorded["status"], recorded["public_score"], recorded["private_score"]) == (
        str(ours.ref), "COMPLETE", 0.91, 0.87)
    assert Ledger(ledger_path).runs()["kaggle_private"].tolist() == [0.87]
    assert str(fake.submissions[0].ref) in synced.stdout and "run-10" in synced.stdout
    assert "100 submissions carry no sha256" in synced.stdout  # the hand-made ones: shown, not stored
    assert fake.paths().count("/api/v1/competitions.CompetitionApiService/ListSubmissions") == 1 + 2  # submit + 2 pages
    assert "security.OAuthService/IntrospectToken" in " ".join(fake.paths())
    for step in (proc, synced):
        assert_nothing_leaked(step, tmp_path, fake.token)


def test_a_submission_kaggle_cannot_score_is_an_error(tmp_path):
    write_kaggle_json(tmp_path / "home")
    fisheries_data(tmp_path / "data")
    csv = submission_csv(tmp_path / "submission.csv")
    ledger_path = ledger_with_run(tmp_path, "run-11", csv)
    with FakeKaggle(slug=SLUG, pending_polls=1, score_error="Submission file has 2 rows, expected 3") as fake:
        proc = submit(fake, tmp_path, csv, "run-11")
    assert proc.returncode == 2
    assert f"could not score submission {fake.submissions[0].ref}: Submission file has 2 rows" in proc.stderr
    assert [s["status"] for s in Ledger(ledger_path).run("run-11")["submissions"]] == ["ERROR"]
    assert_nothing_leaked(proc, tmp_path)


def test_data_leaves_an_existing_folder_alone(tmp_path, monkeypatch, capsys):
    """In-process (no credentials anywhere, so `kaggle` could not even be imported): nothing is downloaded."""
    from pipeline.kaggle.download import download_competition

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in [k for k in os.environ if k.startswith("KAGGLE_")]:
        monkeypatch.delenv(name)
    data = tmp_path / "data"
    (data / "train" / "ALB").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"already has files but not a complete layout .*test_stg1/.*move it away"):
        download_competition("fisheries", data)
    (data / "test_stg1").mkdir()
    assert download_competition("fisheries", data) is None
    assert "already holds the fisheries data; nothing to download" in capsys.readouterr().out
    assert sorted(p.name for p in data.iterdir()) == ["test_stg1", "train"]


def test_the_cli_does_not_import_kaggle_until_asked(tmp_path):
    """Importing `kaggle` authenticates (and may contact the server): building the CLI must not do it."""
    probe = ("import sys\nfrom pipeline.__main__ import build_parser\nbuild_parser()\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kaggle', 'kagglesdk')))")
    proc = run(["-c", probe], client_env(tmp_path / "home", "http://127.0.0.1:9", tmp_path / "netguard.log"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# ---- real archives in the download (issue 12) --------------------------------------------------------
def data_command(fake: FakeKaggle, tmp_path: Path, competition: str = "fisheries", *extra: str):
    return run(["-m", "pipeline", "data", "--competition", competition, "--data", str(tmp_path / "data"), *extra],
               client_env(tmp_path / "home", fake.proxy_url, tmp_path / "netguard.log"))


def test_data_checks_test_ids_against_the_sample_submission(tmp_path):
    """The bug: a download whose stage 2 7z was not extracted only failed after training ("400 ids the sample
    submission expects have no test image"). Now `make data` itself says so, and creates nothing."""
    write_kaggle_json(tmp_path / "home")
    archive = fisheries_archive(sample_ids=[*TEST_IDS, "test_stg2/image_00002.jpg"])  # no image for the last id
    with FakeKaggle(slug=SLUG, archive=archive) as fake:
        proc = data_command(fake, tmp_path)
    assert proc.returncode == 2
    assert "1 ids the sample submission expects have no test image (first: ['test_stg2/image_00002.jpg'])" \
        in proc.stderr
    assert not (tmp_path / "data").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["home", "netguard"]
    assert_nothing_leaked(proc, tmp_path)


def test_data_refuses_a_hostile_7z_inside_the_download(tmp_path):
    write_kaggle_json(tmp_path / "home")
    archive = fisheries_archive(stage2={"test_stg2/image_00001.jpg": jpeg(1), "../../evil.txt": b"pwned"})
    with FakeKaggle(slug=SLUG, archive=archive) as fake:
        proc = data_command(fake, tmp_path)
    assert proc.returncode == 2
    assert "test_stg2.7z: entry '../../evil.txt' points outside the target folder" in proc.stderr
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path.parent / "evil.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "netguard"]  # no data, no partial folders
    assert_nothing_leaked(proc, tmp_path)


def amazon_archive() -> bytes:
    """Planet's download: images as `.tar.7z`, zipped CSVs (with macOS junk), tif archives the plugin does not use."""
    def image_7z(folder: str, names: list[str], seed: int) -> bytes:
        images = {f"{folder}/{name}.jpg": jpeg(seed + i) for i, name in enumerate(names)}
        return sevenzip_bytes({f"{folder}.tar": tar_bytes(images)})

    train = pd.DataFrame({"image_name": ["train_0", "train_1"], "tags": ["clear primary", "haze"]}).to_csv(index=False)
    sample = pd.DataFrame({"image_name": ["test_0", "test_1", "file_0"], "tags": "clear"}).to_csv(index=False)
    return zip_bytes({
        "train-jpg.tar.7z": image_7z("train-jpg", ["train_0", "train_1"], 0),
        "test-jpg.tar.7z": image_7z("test-jpg", ["test_0", "test_1"], 10),
        "test-jpg-additional.tar.7z": image_7z("test-jpg-additional", ["file_0"], 20),
        "train_v2.csv.zip": zip_bytes({"train_v2.csv": train, "__MACOSX/._train_v2.csv": "junk"}),
        "sample_submission_v2.csv.zip": zip_bytes({"sample_submission_v2.csv": sample}),
        "train-tif-v2.tar.7z": b"GBs of tif the amazon plugin never reads",
    })


def test_data_delivers_the_amazon_layout_from_tar_7z_archives(tmp_path):
    write_kaggle_json(tmp_path / "home")
    with FakeKaggle(slug="planet-understanding-the-amazon-from-space", archive=amazon_archive()) as fake:
        proc = data_command(fake, tmp_path, "amazon")
    assert proc.returncode == 0, proc.stderr
    data = tmp_path / "data"
    assert sorted(p.name for p in data.iterdir()) == ["sample_submission_v2.csv", "test-jpg", "test-jpg-additional",
                                                      "train-jpg", "train_v2.csv"]
    assert sorted(p.name for p in (data / "test-jpg").iterdir()) == ["test_0.jpg", "test_1.jpg"]
    assert (data / "test-jpg-additional" / "file_0.jpg").read_bytes() == jpeg(20)
    assert "skipped (not needed): train-tif-v2.tar.7z" in proc.stdout
    assert "extracting train-jpg.tar.7z" in proc.stdout and "extracting train-jpg.tar" in proc.stdout
    from pipeline.plugin.registry import get_competition  # the plugin reads it as it is: nothing left to do by hand

    assert len(get_competition("amazon").train_items(data)) == 2
    assert sorted(get_competition("amazon").test_items(data)["id"]) == ["file_0", "test_0", "test_1"]
    assert_nothing_leaked(proc, tmp_path)


# ---- timeouts ---------------------------------------------------------------------------------------
def test_a_hanging_status_check_ends_with_the_poll_timeout(tmp_path):
    """The bug: a ListSubmissions call that took 60 s ignored --poll-timeout 5 (the package sets no HTTP
    timeout). The server here answers after 30 s; a 1 s poll timeout must end the wait long before."""
    write_kaggle_json(tmp_path / "home")
    fisheries_data(tmp_path / "data")
    csv = submission_csv(tmp_path / "submission.csv")
    ledger_path = ledger_with_run(tmp_path, "run-20", csv)
    with FakeKaggle(slug=SLUG, delays={"ListSubmissions": 30}) as fake:
        started = time.monotonic()
        proc = submit(fake, tmp_path, csv, "run-20", timeout=1)
        took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert took < 20, f"the wait took {took:.0f}s with a 1s poll timeout"
    assert "did not answer within 1s" in proc.stdout and "treating it as not scored yet" in proc.stdout
    assert result_of(proc)["status"] == "PENDING" and len(fake.submissions) == 1
    [recorded] = Ledger(ledger_path).run("run-20")["submissions"]
    assert (recorded["ref"], recorded["status"]) == (str(fake.submissions[0].ref), "PENDING")
    assert_nothing_leaked(proc, tmp_path)


def test_scores_gives_up_on_a_server_that_never_answers(tmp_path):
    write_kaggle_json(tmp_path / "home")
    with FakeKaggle(slug=SLUG, delays={"ListSubmissions": 30}) as fake:
        started = time.monotonic()
        proc = run(["-m", "pipeline", "scores", "--competition", "fisheries", "--runs-dir", str(tmp_path / "runs"),
                    "--http-timeout", "1"], client_env(tmp_path / "home", fake.proxy_url, tmp_path / "netguard.log"))
        took = time.monotonic() - started
    assert proc.returncode == 2
    assert took < 20, f"scores took {took:.0f}s with a 1s HTTP timeout"
    assert "listing submissions of the-nature-conservancy-fisheries-monitoring: Kaggle did not answer within 1s" \
        in proc.stderr and "Traceback" not in proc.stderr
    assert_nothing_leaked(proc, tmp_path)


# ---- upload RUN, ledger identity, --ledger / --runs-dir ---------------------------------------------
def run_folder(tmp_path: Path, run_id: str, data: Path, runs_dir: Path) -> Path:
    """A finished run as `submit` leaves it: runs_dir/fisheries/RUN with config.json and submission.csv,
    recorded in the ledger beside runs_dir."""
    folder = runs_dir / "fisheries" / run_id
    folder.mkdir(parents=True)
    csv = submission_csv(folder / "submission.csv")
    ledger = Ledger(runs_dir / "ledger.sqlite")
    ledger.start_run(run_id, "fisheries", {"competition": "fisheries"}, "fingerprint", 0)
    ledger.finish_run(run_id, {"competition": "fisheries", "metric": "logloss", "greater_is_better": False}, csv, 1.0)
    (folder / "config.json").write_text(json.dumps({"competition": "fisheries", "data": str(data),
                                                    "runs_dir": str(runs_dir), "ledger": None}))
    return folder


def test_upload_retries_a_failed_upload_without_rerunning(tmp_path):
    """The bug: after a failed upload the only way to retry was a full rerun. `upload RUN` sends the run's CSV;
    the ledger defaults to the one beside --runs-dir."""
    write_kaggle_json(tmp_path / "home")
    data = fisheries_data(tmp_path / "data")
    runs_dir = tmp_path / "runs"
    folder = run_folder(tmp_path, "run-30", data, runs_dir)
    with FakeKaggle(slug=SLUG, fail_upload=True) as fake:
        env = client_env(tmp_path / "home", fake.proxy_url, tmp_path / "netguard.log")
        failed = run(["-m", "pipeline", "upload", "run-30", "--runs-dir", str(runs_dir), "--poll-timeout", "5"], env)
        assert failed.returncode == 2 and "try again later with `python -m pipeline upload run-30`" in failed.stderr
        fake.fail_upload = False  # Kaggle is back
        proc = run(["-m", "pipeline", "upload", "run-30", "--runs-dir", str(runs_dir), "--poll-timeout", "30"], env)
    assert proc.returncode == 0, proc.stderr
    [made] = fake.submissions
    sha = sha256_of(folder / "submission.csv")
    assert made.description == f"run=run-30 sha256={sha}"
    assert list(fake.uploads.values()) == [(folder / "submission.csv").read_bytes()]
    [recorded] = Ledger(runs_dir / "ledger.sqlite").run("run-30")["submissions"]
    assert (recorded["status"], recorded["public_score"], recorded["private_score"]) == ("COMPLETE", 0.91, 0.87)
    for step in (failed, proc):
        assert_nothing_leaked(step, tmp_path)


def test_upload_refuses_a_csv_changed_since_the_run(tmp_path):
    write_kaggle_json(tmp_path / "home")
    data = fisheries_data(tmp_path / "data")
    folder = run_folder(tmp_path, "run-31", data, tmp_path / "runs")
    submission_csv(folder / "submission.csv", ids=TEST_IDS[::-1])  # still valid, but not what the run wrote
    with FakeKaggle(slug=SLUG) as fake:
        proc = run(["-m", "pipeline", "upload", str(folder), "--ledger", str(tmp_path / "runs" / "ledger.sqlite")],
                   client_env(tmp_path / "home", fake.proxy_url, tmp_path / "netguard.log"))
    assert proc.returncode == 2
    assert f"{folder / 'submission.csv'} changed since run run-31 wrote it" in proc.stderr
    assert fake.log == []


def test_a_repeated_ref_never_overwrites_another_runs_row(tmp_path):
    """The bug: the upsert trusted the ref alone, so another submission with the same ref turned run A's
    COMPLETE row into run B's PENDING one. Rows are now matched on (ref, sha256)."""
    write_kaggle_json(tmp_path / "home")
    data = fisheries_data(tmp_path / "data")
    runs_dir = tmp_path / "runs"
    run_folder(tmp_path, "run-a", data, runs_dir)
    folder_b = run_folder(tmp_path, "run-b", data, runs_dir)
    submission_csv(folder_b / "submission.csv", ids=TEST_IDS[::-1])  # another file: another sha256
    ledger = Ledger(runs_dir / "ledger.sqlite")
    ledger.finish_run("run-b", {"competition": "fisheries"}, folder_b / "submission.csv", 1.0)
    args = ["--runs-dir", str(runs_dir)]
    with FakeKaggle(slug=SLUG, pending_polls=0) as first:
        env = client_env(tmp_path / "home", first.proxy_url, tmp_path / "netguard.log")
        proc_a = run(["-m", "pipeline", "upload", "run-a", *args, "--poll-timeout", "30"], env)
    assert proc_a.returncode == 0, proc_a.stderr
    with FakeKaggle(slug=SLUG, pending_polls=5) as second:  # hands out the same ref again
        env = client_env(tmp_path / "home", second.proxy_url, tmp_path / "netguard.log")
        proc_b = run(["-m", "pipeline", "upload", "run-b", *args, "--poll-timeout", "0"], env)
        synced = run(["-m", "pipeline", "scores", "--competition", "fisheries", *args], env)
    assert proc_b.returncode == 0 and synced.returncode == 0, proc_b.stderr + synced.stderr
    assert first.submissions[0].ref == second.submissions[0].ref
    [a] = ledger.run("run-a")["submissions"]
    [b] = ledger.run("run-b")["submissions"]
    assert (a["run_id"], a["status"], a["public_score"]) == ("run-a", "COMPLETE", 0.91)
    assert (b["run_id"], b["status"], b["public_score"]) == ("run-b", "PENDING", None)
    assert a["ref"] == b["ref"] and a["sha256"] != b["sha256"]
    assert ledger.runs().set_index("run_id")["kaggle_public"].to_dict() == {"run-a": 0.91, "run-b": pytest.approx(
        float("nan"), nan_ok=True)}


def test_ledger_options_default_beside_runs_dir(tmp_path):
    """The bug: the ledger ignored --runs-dir. `runs`, `compare` and `scores` now read <runs-dir>/ledger.sqlite
    unless --ledger names another file; a corrupt ledger is refused and another path works."""
    runs_dir = tmp_path / "runs"
    run_folder(tmp_path, "run-40", tmp_path / "data", runs_dir)
    env = client_env(tmp_path / "home", "http://127.0.0.1:9", tmp_path / "netguard.log")
    listed = run(["-m", "pipeline", "runs", "list", "--runs-dir", str(runs_dir)], env)
    assert listed.returncode == 0 and "run-40" in listed.stdout, listed.stderr
    compared = run(["-m", "pipeline", "compare", "--competition", "fisheries", "--runs-dir", str(runs_dir),
                    "--resamples", "0"], env)
    assert compared.returncode == 0, compared.stderr
    broken = tmp_path / "broken.sqlite"
    broken.write_text("not a database")
    refused = run(["-m", "pipeline", "runs", "list", "--ledger", str(broken)], env)
    assert refused.returncode == 2 and f"ledger {broken} is not a readable run ledger" in refused.stderr
    other = run(["-m", "pipeline", "runs", "list", "--ledger", str(tmp_path / "other.sqlite")], env)
    assert other.returncode == 0 and "no runs recorded in" in other.stdout
    assert broken.read_text() == "not a database"  # left untouched
