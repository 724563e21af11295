"""Where a short fit's wall time goes, with tf.data's autotuning on (TensorFlow's default) and off (the pipeline's).

`make bench ARGS="fit [--steps 100] [--repeats 3] [--augment none|standard] [--trace-repeats 6]"`

A student-sized `train.fit` of the default model (64 px, 32 train items a step plus pseudo-labeled ones on top),
run alternately with each setting: seconds to the first step's end (building the model, tracing the step), ms
per step after it, and the wall and CPU seconds between the last step and the fit's return (Keras then drops
the endless training stream; deleting its iterator waited for the autotuning thread), then a prediction of
2,000 rows (with the mirror image). Every fit is printed; the summary counts the teardowns over 0.5 s.

Then tracing: 1-step fits (building, tracing, one step) with the learning-rate schedule built for every
variable, as Keras's AdamW asks for it, and once per traced graph (`train.WarmupCosineDecay`), alternately.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time

import numpy as np

STALL_S = 0.5
PREDICT_ROWS = 2000


def timed_fit(steps: int, seed: int, augment_level: str) -> dict[str, float]:
    from benchmarks import default_model_spec, step_stamps
    from pipeline.model import train

    spec = default_model_spec()
    rng = np.random.default_rng(seed)
    x, x_pseudo = (rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8) for n in (480, 250))
    y, y_pseudo = (np.eye(8, dtype=np.float32)[rng.integers(0, 8, n)] for n in (480, 250))
    stamps: list[float] = []
    cpu_at_last_step = [0.0]
    with step_stamps(stamps, cpu_at_last_step):
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # the fit's progress lines
            model, _ = train.fit(spec, "bench", x, y, steps, seed, augment_level, pseudo=(x_pseudo, y_pseudo))
        ended, cpu_ended = time.perf_counter(), time.process_time()
    test = rng.integers(0, 256, (PREDICT_ROWS, 64, 64, 3), dtype=np.uint8)
    predict_started = time.perf_counter()
    train.predict(model, test, None, spec)
    predicted = time.perf_counter()
    return {"first_step_s": stamps[0] - started, "ms_per_step": (stamps[-1] - stamps[0]) / (len(stamps) - 1) * 1000,
            "teardown_s": ended - stamps[-1], "teardown_cpu_s": cpu_ended - cpu_at_last_step[0], "total_s": ended - started,
            "predict_s": predicted - predict_started}


def one_step_fits(repeats: int) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) seconds of 1-step fits, the schedule built for every variable vs once per traced graph."""
    from benchmarks import alternating, default_model_spec
    from pipeline.model import train

    spec = default_model_spec()
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (64, 64, 64, 3), dtype=np.uint8), np.eye(8, dtype=np.float32)[rng.integers(0, 8, 64)]
    once = train.WarmupCosineDecay.__call__
    variants = {"for every variable": train.WarmupCosineDecay._value, "once per traced graph": once}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    with contextlib.redirect_stdout(io.StringIO()):
        train.fit(spec, "warm-up", x, y, 1, 0, "none")  # the first fit of a process also builds TensorFlow's caches
    for repeat, name in alternating(variants, repeats):
        train.WarmupCosineDecay.__call__ = variants[name]
        try:
            wall, cpu = time.perf_counter(), time.process_time()
            with contextlib.redirect_stdout(io.StringIO()):
                train.fit(spec, "bench", x, y, 1, repeat, "none")
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
        finally:
            train.WarmupCosineDecay.__call__ = once
    return times


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks fit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--augment", default="none", choices=["none", "light", "standard", "strong"])
    parser.add_argument("--trace-repeats", type=int, default=6, help="1-step fits per schedule variant (0: skip)")
    args = parser.parse_args()
    from benchmarks import alternating
    from pipeline.data import streams as data

    without = data.without_autotuning
    settings = {"autotuning on (TensorFlow's default)": lambda dataset: dataset, "autotuning off (the pipeline)": without}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in settings}
    print(f"train.fit, default model, {args.steps} steps, augmentation {args.augment}, {args.repeats} fits each, alternating")
    for repeat, name in alternating(settings, args.repeats):
        data.without_autotuning = settings[name]  # what train.fit and data.prediction_batches apply to their datasets
        try:
            run = timed_fit(args.steps, repeat, args.augment)
        finally:
            data.without_autotuning = without
        runs[name].append(run)
        print(f"  {name:38s} first step {run['first_step_s']:5.2f} s, {run['ms_per_step']:4.0f} ms/step, "
              f"after the last step {run['teardown_s']:5.2f} s ({run['teardown_cpu_s']:.2f} s CPU), fit {run['total_s']:5.1f} s, "
              f"predict {PREDICT_ROWS} {run['predict_s']:4.1f} s", flush=True)
    print("summary (medians):")
    for name, fits in runs.items():
        stalls = sum(run["teardown_s"] > STALL_S for run in fits)
        print(f"  {name:38s} fit {statistics.median(r['total_s'] for r in fits):5.1f} s, "
              f"predict {statistics.median(r['predict_s'] for r in fits):4.1f} s, "
              f"{statistics.median(r['ms_per_step'] for r in fits):4.0f} ms/step, teardown over {STALL_S} s in "
              f"{stalls} of {len(fits)} fits (longest {max(r['teardown_s'] for r in fits):.2f} s)", flush=True)
    if args.trace_repeats:
        print(f"1-step fits (build, trace, one step), {args.trace_repeats} each, alternating; the learning-rate schedule built:")
        for name, seconds in one_step_fits(args.trace_repeats).items():
            print(f"  {name:22s} median {statistics.median(w for w, _ in seconds):5.2f} s wall, "
                  f"{statistics.median(c for _, c in seconds):5.2f} s CPU (wall of each: "
                  f"{', '.join(f'{w:.2f}' for w, _ in seconds)})", flush=True)
