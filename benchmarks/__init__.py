"""Benchmarks: printed figures and ratios (`make bench`), never timed assertions."""


def submit_config(argv: list[str]):
    """The RunConfig that `python -m pipeline submit ARGV` would run: benchmarks take the CLI's defaults and checks."""
    import argparse

    from pipeline.commands.submit import register
    from pipeline.config import config_from_args

    cli = argparse.ArgumentParser()
    register(cli.add_subparsers())
    return config_from_args(cli.parse_args(["submit", *argv]))
