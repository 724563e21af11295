"""The suite's own plumbing: `make test` runs on two xdist workers with `--dist loadgroup`, and the tests that
share an expensive session fixture (a trained run) carry one `xdist_group` so that it is trained once. pytest 9.2
with xdist 3.8 silently ignored the groups (pytest-dev/pytest-xdist#1386): each worker trained its own copy and
the suite took minutes longer. This checks that a group still lands on one worker."""
from __future__ import annotations

import subprocess
import sys
import textwrap


def test_tests_of_one_xdist_group_run_on_one_worker(tmp_path):
    (tmp_path / "test_grouped.py").write_text(textwrap.dedent("""
        import os, time
        import pytest

        pytestmark = pytest.mark.xdist_group("together")

        @pytest.mark.parametrize("i", range(6))
        def test_one(i):
            time.sleep(0.2)  # long enough that an idle second worker would take some
            with open(f"worker-{i}.txt", "w") as out:
                out.write(os.environ["PYTEST_XDIST_WORKER"])
    """))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider",
                           "test_grouped.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    workers = {(tmp_path / f"worker-{i}.txt").read_text() for i in range(6)}
    assert len(workers) == 1, f"one xdist group ran on workers {sorted(workers)}: --dist loadgroup is not grouping"
