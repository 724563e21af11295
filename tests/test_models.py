"""The from-scratch backbones: the resnet's strided shortcut avoids the oneDNN kernel that corrupts the heap."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_subsample_then_unit_stride_conv_equals_the_strided_1x1_conv():
    import keras

    from pipeline.model.backbones import pointwise

    rng = np.random.default_rng(0)
    for size in (8, 9):  # even and odd sides: "valid" with stride 2 keeps ceil(size / 2) pixels, as the slice does
        images = rng.normal(size=(3, size, size, 5)).astype(np.float32)
        inputs = keras.Input((size, size, 5))
        ours = keras.Model(inputs, pointwise(inputs, 4, 2))
        strided = keras.layers.Conv2D(4, 1, strides=2, use_bias=False)
        reference = keras.Model(inputs, strided(inputs))
        strided.set_weights(ours.get_weights())
        expected = reference.predict(images, verbose=0)
        assert ours.output_shape == reference.output_shape
        np.testing.assert_allclose(ours.predict(images, verbose=0), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("image_size, width", [(32, 8), (64, 4), (48, 16)])
def test_the_resnet_has_no_strided_1x1_convolution(image_size, width):
    import keras

    from pipeline.model.backbones import resnet

    convs = [layer for layer in resnet(image_size, width).layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs, "the resnet has convolutions"
    strided_pointwise = [c.name for c in convs if tuple(c.kernel_size) == (1, 1) and tuple(c.strides) != (1, 1)]
    assert strided_pointwise == []


@pytest.mark.slow
def test_training_the_narrow_resnet_on_odd_batches_does_not_corrupt_the_heap():
    """The shape that crashed (issue 24): 32 px, --width 8, a student's 32 + 7 batch. Run in a child process with
    glibc's heap checks, so that a crash fails this test instead of killing the test worker."""
    script = textwrap.dedent("""
        import numpy as np
        from pipeline.model import train
        from pipeline.model.spec import ModelSpec, TrainSettings

        settings = TrainSettings.defaults(image_size=32, width=8, min_steps=12, batch_size=32)
        spec = ModelSpec(settings, 5, multi_label=True, flips="both")
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (96, 32, 32, 3), dtype=np.uint8)
        y = (rng.random((96, 5)) > 0.5).astype(np.float32)
        pseudo = (rng.integers(0, 256, (21, 32, 32, 3), dtype=np.uint8), (rng.random((21, 5)) > 0.5).astype(np.float32))
        model, info = train.fit(spec, "student", x, y, 12, 0, "none", pseudo=pseudo)
        assert info["batch"] % 2 == 1, info
        print("trained", info["batch"])
    """)
    env = {"MALLOC_CHECK_": "3", "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    assert "trained 39" in done.stdout


def test_train_settings_are_the_runs_options_and_their_defaults_the_runs_defaults():
    from pipeline.model.spec import TrainSettings
    from pipeline.run.config import RunConfig

    cfg = RunConfig(competition="fisheries", data="d", backbone="small-cnn", image_size=48, batch_size=8, tta=False)
    assert TrainSettings.of(cfg) == TrainSettings.defaults(backbone="small-cnn", image_size=48, batch_size=8, tta=False)
    assert TrainSettings.of(RunConfig()) == TrainSettings.defaults()
    assert TrainSettings.defaults().batch_size == RunConfig().batch_size == 32


def test_a_family_scores_each_labeled_row_with_the_one_model_that_never_trained_on_it():
    from pipeline.data.split import TRAIN_ONLY
    from pipeline.model.family import FoldModel, fit_family, mean_over_models

    fold = np.array([0, 1, 2, 0, 1, 2, TRAIN_ONLY])
    calls = []

    def fit_one(m, label, fit_rows, scored_rows):
        calls.append((m, label))
        assert set(fit_rows).isdisjoint(scored_rows) and set(fit_rows) | set(scored_rows) == set(range(len(fold)))
        return FoldModel(np.full((len(scored_rows), 2), m, np.float32), np.full((4, 2), m, np.float32), {"model": m})

    scored, models = fit_family("control", fold, 2, fit_one)
    assert calls == [(0, "control 1/3"), (1, "control 2/3"), (2, "control 3/3")]
    assert np.array_equal(scored[:6, 0], fold[:6]) and np.isnan(scored[6]).all()  # a train-only row is scored by none
    assert np.allclose(mean_over_models([m.test_probs for m in models]), 1.0)
    assert fit_family("teacher", np.array([0, TRAIN_ONLY]), 2, lambda m, label, *rows: FoldModel(
        np.zeros((1, 2)), np.zeros((4, 2)), {"label": label}))[1][0].info == {"label": "teacher"}
