"""--jit: XLA for the train step. A fit with it trains (real+pseudo batches, loss weights, cached embeddings) and
predicts, reruns bit for bit, and rounds differently from a fit without it; a run records what --jit resolved to,
and a model trained with XLA never shares a cache entry with one trained without."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pipeline.model import train
from pipeline.model.spec import ModelSpec, TrainSettings
from tests.conftest import tiny_config

STEPS = 4
REPO = Path(__file__).resolve().parent.parent


def tiny_fit(jit: str, feature_dim: int | None = None):
    """A 4-step student-like fit at 32 px: 40 train items (loss weights 1 and 2) plus pseudo-labeled ones at 0.5."""
    spec = ModelSpec(TrainSettings.defaults(min_steps=1, image_size=32, width=8, jit=jit), n_classes=3,
                     multi_label=False, feature_dim=feature_dim)
    rng = np.random.default_rng(0)
    shape = (feature_dim,) if feature_dim else (32, 32, 3)

    def items(n: int) -> np.ndarray:
        return rng.standard_normal((n, *shape)).astype(np.float32) if feature_dim else rng.integers(0, 256, (n, *shape), dtype=np.uint8)

    x, x_pseudo = items(40), items(20)
    y, y_pseudo = (np.eye(3, dtype=np.float32)[rng.integers(0, 3, n)] for n in (40, 20))
    model, info = train.fit(spec, "jit test", x, y, STEPS, 0, "standard", pseudo=(x_pseudo, y_pseudo),
                            weights=np.where(np.arange(40) % 2, 2.0, 1.0).astype(np.float32),
                            pseudo_weights=np.full(20, 0.5, np.float32))
    return model, info, train.predict(model, x, None, spec)


@pytest.mark.parametrize("feature_dim", [None, 16], ids=["images", "cached embeddings"])
def test_a_fit_with_jit_on_trains_with_xla_and_predicts_close_to_but_not_as_a_fit_without(feature_dim):
    model, info, probs = tiny_fit("on", feature_dim)
    assert info["xla"] is True and info["steps"] == STEPS and np.isfinite(info["final_loss"])
    assert probs.shape == (40, 3) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # the same fit without XLA: close (the same training), not equal (XLA fuses and rounds otherwise), which shows
    # the train step really was compiled by XLA and not left to TensorFlow as Keras leaves it under determinism
    plain, plain_info, plain_probs = tiny_fit("off", feature_dim)
    assert plain_info["xla"] is False
    assert not all(np.array_equal(a, b) for a, b in zip(model.get_weights(), plain.get_weights()))
    assert np.abs(probs - plain_probs).max() < 0.05


def test_a_fit_with_jit_on_reruns_bit_for_bit():
    """Same seed, same machine, same bytes, as without XLA (on cached embeddings: the cheapest XLA compile; the
    image model's rerun was identical too, by hand: 3 XLA compiles are too long for a test)."""
    first, _, probs = tiny_fit("on", 16)
    again, _, probs_again = tiny_fit("on", 16)
    assert all(np.array_equal(a, b) for a, b in zip(first.get_weights(), again.get_weights()))
    assert np.array_equal(probs, probs_again)


def test_auto_stays_off_on_a_cpu_at_every_length_as_measured_and_on_and_off_are_taken_as_given():
    """XLA repaid its compile at no fit length measured on a CPU (benchmarks/RESULTS.md, "--jit"), so auto is off."""
    assert train.xla_enabled(TrainSettings.defaults(jit="on")) is True
    assert train.xla_enabled(TrainSettings.defaults(jit="off")) is False
    for steps in (1, 800, 10**6):
        assert train.xla_enabled(TrainSettings.defaults(jit="auto", min_steps=steps)) is False, steps


def test_a_run_records_what_jit_resolved_to_and_an_xla_teacher_is_not_shared_with_one_without(tiny_fisheries, tmp_path):
    """Teacher-only runs on one cache: --jit on trains its own teacher; --jit off trains another (no hit on the XLA
    one); --jit auto, which resolves off at this length, finds the one trained without XLA."""
    from pipeline.run.stages import run_pipeline

    cfg = tiny_config(tiny_fisheries / "data", tmp_path, pseudo_ratio=0.0)
    with_xla = run_pipeline(cfg.replace(jit="on", run_name="on"))
    assert json.loads((with_xla.run_dir / "config.json").read_text())["jit"] == "on"
    fits = json.loads((with_xla.run_dir / "metrics.json").read_text())["teacher_training"]["models"]
    assert fits and all(fit["xla"] is True for fit in fits)
    without = run_pipeline(cfg.replace(jit="off", run_name="off"))
    assert (with_xla.metrics["teacher_cache"], without.metrics["teacher_cache"]) == ("miss", "miss")
    assert all(fit["xla"] is False for fit in without.metrics["teacher_training"]["models"])
    auto = run_pipeline(cfg.replace(jit="auto", run_name="auto"))
    assert auto.metrics["teacher_cache"] == "hit"
    assert (auto.run_dir / "submission.csv").read_bytes() == (without.run_dir / "submission.csv").read_bytes()
    assert len(list((tmp_path / "cache" / "fisheries" / "teachers").iterdir())) == 2


MIRRORED_JIT_ON = textwrap.dedent("""
    import json, sys
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from pipeline.__main__ import main
    from pipeline.model import train
    from pipeline.model.spec import TrainSettings

    code = main(["submit", *sys.argv[1:], "--distribute", "mirrored", "--jit", "on"])
    auto = train.xla_enabled(TrainSettings.defaults(jit="auto", min_steps=10**6))
    print("CHECK " + json.dumps({"code": code, "auto": auto}))
""")


def test_jit_on_under_mirrored_replicas_stops_before_training_with_one_error_line(tiny_fisheries, tmp_path):
    """Measured on two logical CPU devices: XLA's train step fails reading a variable mirrored on the other device
    (InvalidArgumentError). So `on` stops before any fit, naming the fix, and `auto` stays off there. A fresh
    process: logical devices must be set before TensorFlow starts."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    environment.pop("TF_CONFIG", None)
    done = subprocess.run([sys.executable, "-c", MIRRORED_JIT_ON, "--competition", "fisheries", "--data",
                           str(tiny_fisheries / "data"), "--image-size", "32", "--width", "8", "--pseudo-ratio", "0",
                           "--on-shift", "ignore", "--no-ledger", "--runs-dir", str(tmp_path / "runs"), "--cache-dir",
                           str(tmp_path / "cache")], capture_output=True, text=True, env=environment, timeout=200)
    checks = [line for line in done.stdout.splitlines() if line.startswith("CHECK ")]
    assert checks, done.stdout[-2000:] + done.stderr[-2000:]
    assert json.loads(checks[0][6:]) == {"code": 2, "auto": False}
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "--jit on needs one device" in errors[0] and "2 replica(s) on MirroredStrategy" in errors[0], errors[0]
    assert "teacher:" not in done.stdout and not (tmp_path / "cache" / "fisheries" / "teachers").exists()
