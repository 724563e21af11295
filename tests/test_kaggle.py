"""Kaggle integration against a real HTTP server on 127.0.0.1 (tests/kaggle_server.py).

The unchanged `kaggle` package runs in a subprocess, pointed at the server by KAGGLE_API_ENVIRONMENT=LOCALHOST
and HTTP_PROXY, with HOME and KAGGLE_CONFIG_DIR in tmp_path; a guard fails any non-loopback connection.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kaggle_server import KEY, PYTHON, REPO_ROOT, FakeKaggle, client_env, write_kaggle_json
from pipeline.files import sha256_of
from pipeline.ledger import Ledger

SLUG = "the-nature-conservancy-fisheries-monitoring"
CLASSES = ["ALB", "BET", "DOL", "LAG", "NoF", "OTHER", "SHARK", "YFT"]
TEST_IDS = ["img_00001.jpg", "img_00002.jpg", "test_stg2/image_00001.jpg"]

SUBMIT_SCRIPT = """
import json, sys
from pathlib import Path
from pipeline.kaggle_client import upload_run_submission
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


def fisheries_archive(with_test: bool = True) -> bytes:
    """Shaped like Kaggle's download: zips inside the competition zip, stage 2 as a 7z left for the user."""
    train = zip_bytes({f"train/{c}/img_{i:05d}.jpg": jpeg(i) for i, c in enumerate(CLASSES)})
    header = "image," + ",".join(CLASSES) + "\n"
    entries = {"train.zip": train, "test_stg2.7z": b"7z\xbc\xaf\x27\x1c",
               "sample_submission_stg1.csv.zip": zip_bytes({"sample_submission_stg1.csv": header})}
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
    assert (data / "sample_submission_stg1.csv").is_file() and not list(data.glob("*.zip"))
    assert "layout of fisheries complete" in proc.stdout and "test_stg2.7z" in proc.stdout
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
    assert "layout is incomplete" in proc.stderr and "test_stg1/" in proc.stderr
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
    from pipeline.kaggle_client import download_competition

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
