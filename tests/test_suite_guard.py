"""The suite fails, never hangs. A test that crashed its xdist worker (SIGSEGV in TensorFlow) once left `make test`
waiting with both workers idle until CI's 90-minute limit: xdist 3.8 replaces a lost worker and, when tests were
still queued, can then wait forever (the crash test below does, without --max-worker-restart=0). Each test here
runs a small suite in a child pytest with `make test`'s options (read from the Makefile) and this project's pytest
settings (a copy of pyproject.toml, so the child has its own rootdir and none of this project's conftest), and
checks that the child ends, non-zero, naming the test. Without the guard under test the child hangs, and the hang
guard below fails the test."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# A child run takes a few seconds (two workers start, one test is stopped after CHILD_TIMEOUT s); this only ends
# one that hangs, with room for a machine busy with the rest of the suite.
HANG_GUARD_S = 120
CHILD_TIMEOUT = 4  # the child's per-test timeout (pytest-timeout); this project's is in pyproject.toml
CHILD_DUMP_AFTER = 2  # the child's faulthandler_timeout: below CHILD_TIMEOUT, as pyproject's is below its timeout


def make_test_pytest_options() -> list[str]:
    """The options `make test` gives pytest: the Makefile's PYTEST_OPTIONS, which its test recipe must use."""
    makefile = (REPO / "Makefile").read_text()
    options = re.search(r"^PYTEST_OPTIONS\s*[:?]?=(.*)$", makefile, re.M)
    assert options, "the Makefile has no PYTEST_OPTIONS line"
    recipe = re.search(r"^test:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe and "-m pytest $(PYTEST_OPTIONS)" in recipe.group(1), "make test does not run pytest $(PYTEST_OPTIONS)"
    return shlex.split(options.group(1))


def run_child_suite(folder: Path, test_file: str, source: str, *options: str) -> tuple[int, str]:
    """Write `source` as folder/test_file beside a copy of pyproject.toml and run it as `make test` would, plus
    `options`: (exit status, stdout + stderr). Fails the calling test if the child is still running after
    HANG_GUARD_S, after killing the child and its xdist workers (their own process group)."""
    shutil.copy(REPO / "pyproject.toml", folder / "pyproject.toml")
    (folder / test_file).write_text(textwrap.dedent(source))
    command = [sys.executable, "-m", "pytest", *make_test_pytest_options(), "-p", "no:cacheprovider", *options, test_file]
    # without the caller's PYTEST_ADDOPTS (a --pdb, a --timeout 0) or PYTEST_TIMEOUT (it beats the ini's timeout)
    env = {name: value for name, value in os.environ.items() if name not in ("PYTEST_ADDOPTS", "PYTEST_TIMEOUT")}
    child = subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        output, _ = child.communicate(timeout=HANG_GUARD_S)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        output, _ = child.communicate()
        pytest.fail(f"the child suite hung: still running after {HANG_GUARD_S} s\n{output[-4000:]}")
    finally:
        if child.poll() is None:  # interrupted while waiting: leave no workers behind
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    return child.returncode, output


def test_a_test_that_kills_its_worker_fails_the_run_naming_it(tmp_path):
    # The crash comes while other tests are still queued: that is when xdist 3.8, allowed to restart workers,
    # hangs (tests that finished before the crash would let it end).
    status, output = run_child_suite(tmp_path, "test_crash.py", """
        import os
        import time

        import pytest

        @pytest.mark.parametrize("i", range(4))
        def test_before(i):
            time.sleep(0.3)

        def test_aborts():
            time.sleep(0.5)
            os.abort()  # as TensorFlow does on a corrupted heap

        @pytest.mark.parametrize("i", range(4))
        def test_after(i):
            time.sleep(0.3)
    """)
    assert status == 1, output[-4000:]  # 1: tests failed (not 2, interrupted, nor 3, an internal error)
    assert re.search(r"worker 'gw\d' crashed while running 'test_crash.py::test_aborts'", output), output[-4000:]
    assert "Fatal Python error: Aborted" in output, output[-4000:]  # faulthandler says where it crashed
    assert re.search(r'File ".*test_crash.py", line \d+ in test_aborts', output), output[-4000:]


STUCK = {
    # a Python loop: the signal method would stop it too
    "sleep": """
        import time

        def test_stuck():
            while True:
                time.sleep(0.1)
    """,
    # a native wait that retries when a signal interrupts it, like a TensorFlow op waiting for a peer: a SIGALRM
    # handler (pytest-timeout's signal method) never runs there. pthread_mutex_lock never returns EINTR; ctypes
    # releases the GIL around it, as TensorFlow does. (glibc: a zeroed mutex is an initialized one)
    "native": """
        import ctypes

        def test_stuck():
            libc = ctypes.CDLL(None)
            mutex = ctypes.create_string_buffer(64)  # zeroed: PTHREAD_MUTEX_INITIALIZER, a non-recursive mutex
            assert libc.pthread_mutex_lock(mutex) == 0
            libc.pthread_mutex_lock(mutex)  # locked already, by this thread: waits forever
    """,
}


@pytest.mark.parametrize("kind", sorted(STUCK))
def test_a_stuck_test_fails_by_its_timeout_with_a_stack_dump_and_the_run_ends(tmp_path, kind, pytestconfig):
    timeout, dump_after = (float(pytestconfig.getini(name) or 0) for name in ("timeout", "faulthandler_timeout"))
    assert timeout > 0, "pyproject.toml sets no per-test timeout"
    assert 0 < dump_after < timeout, "the stacks must be dumped before the timeout ends the worker (pyproject.toml)"

    # -o, an ini override, not --timeout: without pytest-timeout the child hangs (the hang guard fails this test)
    # instead of stopping at an unknown option
    status, output = run_child_suite(tmp_path, "test_stuck.py", STUCK[kind], "-o", f"timeout={CHILD_TIMEOUT}",
                                     "-o", f"faulthandler_timeout={CHILD_DUMP_AFTER}", "-ra")  # -ra: name each failure
    assert status == 1, output[-4000:]
    # failed, however it was stopped (the thread method: "worker 'gw0' crashed while running ...")
    assert re.search(r"^FAILED test_stuck\.py::test_stuck\b", output, re.M), output[-4000:]
    # faulthandler's dump of every thread, the stuck one at its line
    assert re.search(r"^Timeout \(\d+:\d\d:\d\d\)!$", output, re.M), output[-4000:]
    assert re.search(r'File ".*test_stuck.py", line \d+ in test_stuck', output), output[-4000:]
