"""Import TensorFlow without its C++ log lines: a CPU user's run shows the pipeline's own output only.

On a machine without a GPU, TensorFlow 2.21 writes lines such as `I0000 ... oneDNN custom operations are on`,
`... Could not find cuda drivers` and `E0000 ... failed call to cuInit: ... UNKNOWN ERROR (303)` to the process's
stderr, and later `E0000 ... NodeDef mentions attribute use_unbounded_threadpool`. A user reads an `E` line as an
error; none of them is one. The lines at import are written before absl's logging is set up, so
TF_CPP_MIN_LOG_LEVEL cannot hide them: they are captured from file descriptor 2 while TensorFlow loads, and
everything else written there meanwhile is passed on. TF_CPP_MIN_LOG_LEVEL=3 hides the later ones (a real error
still reaches the user as a Python exception). PIPELINE_TF_LOGS=1 keeps every line, for debugging TensorFlow.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile

# absl's prefix: severity letter, MMDD, time (here "00:00:" and the epoch seconds), thread id, file:line]
CPP_LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [\w.\-/]+:\d+\] ")
ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def is_tensorflow_log_line(line: str) -> bool:
    return line == ABSL_PREAMBLE or bool(CPP_LOG_LINE.match(line))


def import_tensorflow_quietly() -> None:
    """Import TensorFlow (and Keras) now, dropping its C++ log lines; a no-op once it is imported."""
    if "tensorflow" in sys.modules or os.environ.get("PIPELINE_TF_LOGS"):
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:  # a file, not a pipe: nothing blocks however much is written
        os.dup2(captured.fileno(), 2)
        try:
            import keras  # noqa: F401  (loads TensorFlow, and Keras's own start-up)
            import tensorflow as tf

            tf.config.list_physical_devices()  # the CUDA probe, whose cuInit line comes here
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode("utf-8", "replace").splitlines():
                if not is_tensorflow_log_line(line):
                    print(line, file=sys.stderr)
            sys.stderr.flush()
