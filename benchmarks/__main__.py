"""`python -m benchmarks [NAME [OPTIONS]]`: every benchmark module's main(), or the named one with its options."""
from __future__ import annotations

import importlib
import pkgutil
import sys

import benchmarks

TRAIN_NOTHING = {"suite_compare"}  # benchmarks that only read CSVs: no TensorFlow to load


def main() -> None:
    names = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__))
    wanted = sys.argv[1:2] if len(sys.argv) > 1 else names
    if wanted[0] not in names:
        raise SystemExit(f"unknown benchmark {wanted[0]!r}; available: {', '.join(names)}")
    options = sys.argv[2:]
    for name in wanted:
        print(f"\n=== benchmark: {name}", flush=True)
        if name not in TRAIN_NOTHING:  # as `python -m pipeline` does: no TensorFlow C++ log line in the output
            from pipeline.quiet_tensorflow import import_tensorflow_quietly

            import_tensorflow_quietly()
        module = importlib.import_module(f"benchmarks.{name}")
        needs = getattr(module, "NEEDS", None)  # e.g. real: photos that are not in this repository
        if needs and len(wanted) > 1:
            print(f"skipped: it needs {needs} (make bench ARGS=\"{name} {needs} ...\")", flush=True)
            continue
        sys.argv = [f"python -m benchmarks {name}", *options]  # a benchmark's main() parses its own options
        module.main()


if __name__ == "__main__":
    main()
