"""Careless or hostile input, case by case: each ends in a named error (UserError: exit 2, one `error:` line,
no traceback), a warning and a recompute, or a counted skip; never a traceback, a hang or a silent drop.

Cases are generated from the plugin registry where they apply to every plugin. Nothing here trains a model:
where a case is decided before training, the function that decides it is tested directly.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.errors import UserError

REPO = Path(__file__).resolve().parent.parent


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
        import pipeline.ledger
        def broken(self, competition=None):
            raise ValueError("internal: columns do not line up")
        pipeline.ledger.Ledger.runs = broken
        from pipeline.__main__ import main
        sys.exit(main(["runs", "list", "--ledger", sys.argv[1]]))
    """, str(tmp_path / "ledger.sqlite"))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" in proc.stderr and "ValueError: internal: columns do not line up" in proc.stderr
    assert "error: internal" not in proc.stderr
