"""Benchmarks: printed figures and ratios (`make bench`), never timed assertions."""
import contextlib
import time


def submit_config(argv: list[str]):
    """The RunConfig that `python -m pipeline submit ARGV` would run: benchmarks take the CLI's defaults and checks."""
    import argparse

    from pipeline.cli.submit import register
    from pipeline.run.config import config_from_args

    cli = argparse.ArgumentParser()
    register(cli.add_subparsers())
    return config_from_args(cli.parse_args(["submit", *argv]))


def default_model_spec(n_classes: int = 8):
    """The default model's ModelSpec (64 px, 32 items a step); --min-steps 1, so a fit takes exactly the steps asked."""
    from pipeline.model.spec import ModelSpec, TrainSettings

    return ModelSpec(TrainSettings.defaults(min_steps=1), n_classes=n_classes, multi_label=False)


def alternating(names, repeats: int):
    """(repeat, name) for timed runs of each name, `repeats` times, who goes first alternating between repeats."""
    names = list(names)
    for repeat in range(repeats):
        for name in (names if repeat % 2 == 0 else names[::-1]):
            yield repeat, name


@contextlib.contextmanager
def step_stamps(stamps: list[float], cpu_at_last_step: list[float] | None = None):
    """Append perf_counter() at the end of every optimizer step of the fits run inside (and keep the process's CPU
    time at the last step in cpu_at_last_step[0], when given)."""
    import keras

    class Stamps(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None) -> None:
            stamps.append(time.perf_counter())
            if cpu_at_last_step is not None:
                cpu_at_last_step[0] = time.process_time()

    fit = keras.Model.fit

    def fit_with_stamps(model, *args, **kwargs):
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), Stamps()]
        return fit(model, *args, **kwargs)

    keras.Model.fit = fit_with_stamps
    try:
        yield
    finally:
        keras.Model.fit = fit
