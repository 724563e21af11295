"""The learning-rate schedule: Keras's warm-up + cosine decay values, computed without a graph branch."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.parametrize("steps, warmup", [(800, 80), (10, 1), (10, 0), (1, 0)])
def test_warmup_cosine_gives_kerass_values_at_every_step(steps, warmup):
    import keras

    from pipeline.model.train import WarmupCosineDecay

    args = (2e-4, max(1, steps - warmup))
    options = dict(alpha=0.0, warmup_target=2e-3, warmup_steps=warmup)
    ours, theirs = WarmupCosineDecay(*args, **options), keras.optimizers.schedules.CosineDecay(*args, **options)
    at = np.arange(steps + 3)  # past the end too: it stays at the last value
    values = np.array([float(ours(int(s))) for s in at])
    assert np.array_equal(values, np.array([float(theirs(int(s))) for s in at]))
    assert np.isfinite(values).all() and values[0] == pytest.approx(2e-4 if warmup else 2e-3)


def test_adamw_with_the_schedule_updates_as_with_kerass():
    """Traced steps of AdamW with weight decay: the schedule built once per graph (see WarmupCosineDecay) gives
    the same weights as Keras's CosineDecay, evaluated for every variable."""
    import keras
    import tensorflow as tf

    from pipeline.model.train import WarmupCosineDecay

    def train(schedule) -> list[np.ndarray]:
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=0.05)
        weights = [keras.Variable(np.linspace(-1, 1, n, dtype=np.float32)) for n in (3, 4, 5)]
        optimizer.build(weights)

        @tf.function
        def step():
            optimizer.apply_gradients([(tf.sin(w * 3.0), w) for w in weights])

        for _ in range(6):
            step()
        return [w.numpy() for w in weights]

    args, options = (1e-2, 4), dict(alpha=0.0, warmup_target=1e-1, warmup_steps=2)
    ours, theirs = train(WarmupCosineDecay(*args, **options)), train(keras.optimizers.schedules.CosineDecay(*args, **options))
    for mine, kerass in zip(ours, theirs):
        assert np.array_equal(mine, kerass)
    assert not np.array_equal(ours[0], np.linspace(-1, 1, 3, dtype=np.float32))  # the steps did update the weights
