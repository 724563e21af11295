"""What a run records about where it came from: the code (git commit, dirty tree), the libraries, and the
process that runs it (pid, its start time, host), with credential-like values redacted before storing.

Kept apart from the SQLite storage (pipeline/ledger/store.py): these are facts about this process and this
checkout, gathered without importing TensorFlow or any other recorded library.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import socket
import subprocess
from pathlib import Path
from typing import Mapping

from pipeline.files import pid_is_alive, process_start_token

# Distributions whose versions are recorded with every run (read from package metadata: nothing is imported).
DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "keras", "numpy", "pandas", "scikit-learn", "scipy",
                 "pillow", "matplotlib", "kaggle")
_SECRET_KEY = re.compile(r"(^|[_\-.])(key|token|secret|password|credentials?)($|[_\-.])", re.IGNORECASE)


def git_state(repo: Path) -> tuple[str | None, bool | None]:
    """(HEAD commit, whether tracked files differ from it); (None, None) without git or without a commit."""
    def git(*args: str) -> subprocess.CompletedProcess | None:
        try:
            return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None

    head = git("rev-parse", "--verify", "HEAD")
    if head is None or head.returncode != 0:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    dirty = None if status is None or status.returncode != 0 else bool(status.stdout.strip())
    return head.stdout.strip(), dirty


def library_versions() -> dict:
    """Python and installed library versions, from package metadata (TensorFlow is not imported)."""
    versions = {"python": platform.python_version()}
    for name in DISTRIBUTIONS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def redact(value: object) -> object:
    """A copy with the values of credential-like keys (…_key, token, password…) replaced: never store secrets."""
    if isinstance(value, dict):
        return {k: "<redacted>" if isinstance(k, str) and _SECRET_KEY.search(k) else redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def this_process() -> tuple[int, str | None, str]:
    """(pid, its start time token, host name): what tells this run's process from a later one with the same pid."""
    pid = os.getpid()
    return pid, process_start_token(pid), socket.gethostname()


def process_gone(row: Mapping) -> bool:
    """Whether the process that ran a `running` row has certainly ended (same host, pid dead or reused)."""
    if row["status"] != "running" or row["pid"] is None or row["hostname"] != socket.gethostname():
        return False
    if not pid_is_alive(row["pid"]):
        return True
    token = process_start_token(row["pid"])
    return row["process_start"] is not None and token is not None and token != row["process_start"]
