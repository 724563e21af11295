"""Benchmarks: printed figures and ratios (`make bench`), never timed assertions."""


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
