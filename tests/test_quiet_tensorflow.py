"""A user's output holds no TensorFlow C++ log line (`I0000 ...`, `E0000 ... cuInit`), whatever TF_CPP_MIN_LOG_LEVEL."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline.quiet_tensorflow import is_tensorflow_log_line

REPO = Path(__file__).resolve().parent.parent
SEEN = [  # lines TensorFlow 2.21 printed on this CPU machine
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796190003.654634   17495 port.cc:153] oneDNN custom operations are on. You may see slightly different",
    "I0000 00:00:1796190003.654935   17495 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not",
    "E0000 00:00:1796186160.237317    2176 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call",
    "E0000 00:00:1796186160.912262    2176 node_def_util.cc:682] NodeDef mentions attribute use_unbounded_threadpool",
    "W1202 05:38:24.123456 140234 some/dir/file_name.cc:77] a dated warning",
]


def test_the_filter_drops_tensorflow_log_lines_and_keeps_the_pipelines_own():
    assert all(is_tensorflow_log_line(line) for line in SEEN)
    for ours in ("error: data folder /x does not exist", "WARNING: test group(s) private differ from train",
                 "  teacher: step 10/100, loss 1.2 (3s)", "I0000 is not a log line without its time"):
        assert not is_tensorflow_log_line(ours), ours


def _env(**changes: str) -> dict:
    return {**{k: v for k, v in os.environ.items() if k not in ("PIPELINE_TF_LOGS",)}, "TF_CPP_MIN_LOG_LEVEL": "0",
            "PYTHONPATH": str(REPO), **changes}


def test_a_command_that_trains_prints_no_tensorflow_line_even_at_log_level_0(plugin_sample, tmp_path):
    """`submit --mixed-precision` on a CPU machine asks TensorFlow for GPUs (its CUDA probe logs `E0000 ... cuInit`)
    and stops with one error line: the user sees that line and nothing of TensorFlow's."""
    data = plugin_sample("fisheries", small=True) / "data"
    proc = subprocess.run([sys.executable, "-m", "pipeline", "submit", "--competition", "fisheries", "--data", str(data),
                           "--mixed-precision", "--no-ledger", "--runs-dir", str(tmp_path / "runs"), "--cache-dir",
                           str(tmp_path / "cache")], cwd=REPO, capture_output=True, text=True, env=_env(), timeout=180)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.splitlines() == [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert "--mixed-precision needs a GPU" in proc.stderr


def test_tensorflow_at_work_after_the_quiet_import_prints_nothing_and_other_stderr_output_still_shows():
    code = """
import sys
from pipeline.quiet_tensorflow import import_tensorflow_quietly
import_tensorflow_quietly()
import tensorflow as tf
print(int(sum(tf.data.Dataset.range(10).map(lambda x: x + 1, num_parallel_calls=2))))
print("ours", file=sys.stderr)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=_env(), timeout=180)
    assert proc.returncode == 0 and proc.stdout.split() == ["55"], proc.stderr[-2000:]
    assert proc.stderr.splitlines() == ["ours"], proc.stderr[-2000:]
    loud = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env=_env(PIPELINE_TF_LOGS="1"), timeout=180)
    assert any(is_tensorflow_log_line(line) for line in loud.stderr.splitlines()), "PIPELINE_TF_LOGS=1 keeps them"
