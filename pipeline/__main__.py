"""`python -m pipeline COMMAND ...`: one subcommand per module in pipeline/cli (no logic here)."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import pipeline.cli

from pipeline.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in sorted(m.name for m in pkgutil.iter_modules(pipeline.cli.__path__)):
        importlib.import_module(f"pipeline.cli.{module}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "trains", False):  # commands that train set this: TensorFlow loads now, without its log lines
        from pipeline.quiet_tensorflow import import_tensorflow_quietly

        import_tensorflow_quietly()
    try:
        return int(args.func(args) or 0)
    except UserError as error:  # bad user input: a clear message, no traceback; anything else is a bug and keeps it
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
