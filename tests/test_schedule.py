"""The learning-rate schedule: Keras's warm-up + cosine decay values, computed without a graph branch."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.parametrize("steps, warmup", [(800, 80), (10, 1), (10, 0), (1, 0)])
def test_warmup_cosine_gives_kerass_values_at_every_step(steps, warmup):
    import keras

    from pipeline.train import WarmupCosineDecay

    args = (2e-4, max(1, steps - warmup))
    options = dict(alpha=0.0, warmup_target=2e-3, warmup_steps=warmup)
    ours, theirs = WarmupCosineDecay(*args, **options), keras.optimizers.schedules.CosineDecay(*args, **options)
    at = np.arange(steps + 3)  # past the end too: it stays at the last value
    values = np.array([float(ours(int(s))) for s in at])
    assert np.array_equal(values, np.array([float(theirs(int(s))) for s in at]))
    assert np.isfinite(values).all() and values[0] == pytest.approx(2e-4 if warmup else 2e-3)
