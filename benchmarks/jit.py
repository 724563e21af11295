"""XLA or not (--jit): step time and whole-fit time of real-photo fits, with and without, alternating in one process.

`make bench ARGS="jit --data DIR [--steps 100 300 800] [--repeats 1] [--k 50] [--feature-steps 300]
                      [--chunks 4 --chunk-steps 25]"`

DIR holds one sub-folder of photos per class (e.g. ../shared/data/sign-language-digits/Dataset). K photos per class
become the train set and as many others the pseudo-labeled set, decoded at the default 64 px: every fit is a
real+pseudo student fit of the default model (resnet, 32 train items a step plus pseudo-labeled ones on top,
--augment standard), `train.fit` as a run calls it, with --jit off and on. Printed per fit: seconds to the first
step's end (building, tracing, and with XLA compiling), ms per step after it, and the whole fit; then per length
the medians and the time XLA saved (negative: it cost). The machine may be shared: compare the ratios of fits
run side by side, not absolute seconds across runs.

`--chunks C` times steps instead of whole fits, robust to a load that comes and goes: each setting compiled once,
then C chunks of --chunk-steps steps taking turns; fits of each --steps length are projected from that (`interleaved`).

`--feature-steps N` also times a frozen-backbone fit (feature-cache mode: the small classifier on 1,280 cached
embedding values an item, random: the time does not depend on them) of N steps each way (with --chunks: in chunks).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks import step_stamps
from benchmarks.real import list_photos, split

NEEDS = "--data DIR"
SETTINGS = ("off", "on")


def decoded(paths: list[str], rows: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros((len(rows), size, size, 3), dtype=np.uint8)
    for i, row in enumerate(rows):
        with Image.open(paths[row]) as image:
            out[i] = np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
    return out


def timed_fit(spec, x, y, pseudo, steps: int, seed: int) -> tuple[dict[str, float], object]:
    """`train.fit` as a student's (real+pseudo, --augment standard), timed; and the fitted model."""
    from pipeline.model import train

    stamps: list[float] = []
    started = time.perf_counter()
    with step_stamps(stamps), contextlib.redirect_stdout(io.StringIO()):  # the fit's progress lines
        model, info = train.fit(spec, "bench", x, y, steps, seed, "standard", pseudo=pseudo)
    ended = time.perf_counter()
    after_first = (stamps[-1] - stamps[0]) / (len(stamps) - 1) * 1000 if len(stamps) > 1 else float("nan")
    return {"first_step_s": stamps[0] - started, "ms_per_step": after_first, "total_s": ended - started,
            "xla": info["xla"], "final_loss": info["final_loss"]}, model


def compare(label: str, specs: dict, x, y, pseudo, lengths: list[int], repeats: int) -> None:
    from benchmarks import alternating

    for steps in lengths:
        runs: dict[str, list[dict]] = {name: [] for name in specs}
        for repeat, name in alternating(specs, repeats):
            run, _ = timed_fit(specs[name], x, y, pseudo, steps, repeat)
            if run["xla"] != (name == "on"):
                raise SystemExit(f"--jit {name} fitted with xla={run['xla']}: the option did not reach the fit")
            runs[name].append(run)
            print(f"  {label} {steps:4d} steps, --jit {name:3s}: first step {run['first_step_s']:5.1f} s, "
                  f"{run['ms_per_step']:5.0f} ms/step, fit {run['total_s']:6.1f} s, final loss {run['final_loss']:.3f}",
                  flush=True)
        med = {name: {k: statistics.median(r[k] for r in fits) for k in ("first_step_s", "ms_per_step", "total_s")}
               for name, fits in runs.items()}
        off, on = med["off"], med["on"]
        print(f"  => {label} {steps} steps (medians of {repeats}): step {off['ms_per_step']:.0f} -> {on['ms_per_step']:.0f} ms "
              f"(x{on['ms_per_step'] / off['ms_per_step']:.2f}), first step {off['first_step_s']:.1f} -> "
              f"{on['first_step_s']:.1f} s, fit {off['total_s']:.1f} -> {on['total_s']:.1f} s "
              f"(x{on['total_s'] / off['total_s']:.2f}, XLA saved {off['total_s'] - on['total_s']:+.1f} s)", flush=True)


def interleaved(label: str, specs: dict, x, y, pseudo, chunks: int, chunk_steps: int, lengths: list[int]) -> None:
    """Step time with and without XLA on a shared machine: each setting's model built and compiled by a 1-step
    `train.fit` (its first step: building, tracing, compiling), then trained on in chunks of `chunk_steps` steps,
    the settings taking turns chunk by chunk, so that a load that comes and goes falls on both. Whole fits of each
    length are then projected as first step + (steps - 1) x the median step time."""
    import tensorflow as tf

    from pipeline.data import augment
    from pipeline.model import train
    from pipeline.model.batches import training_batches

    models, first, per_step = {}, {}, {name: [] for name in specs}
    for name, spec in specs.items():
        run, models[name] = timed_fit(spec, x, y, pseudo, 1, 0)
        first[name] = run["first_step_s"]
    for chunk in range(chunks):
        for name in (list(specs) if chunk % 2 == 0 else list(specs)[::-1]):
            # the stream train.fit trains on; the model keeps the train step it compiled (with XLA for "on"); its
            # learning rate is past the 1-step fit's schedule, which changes no step's work
            batches, _ = training_batches(x, y, specs[name].settings.batch_size, chunk, pseudo)
            noise = augment.augmenter(train.applied_augmentation(specs[name], "standard"), specs[name].flips)
            if noise is not None:
                batches = batches.map(lambda i, t, w: (noise(tf.cast(i, tf.float32), training=True), t, w),
                                      num_parallel_calls=tf.data.AUTOTUNE)
            stamps: list[float] = []
            with step_stamps(stamps):
                models[name].fit(batches.prefetch(2), epochs=1, steps_per_epoch=chunk_steps, verbose=0)
            per_step[name].append((stamps[-1] - stamps[0]) / (len(stamps) - 1) * 1000)
    med = {name: statistics.median(times) for name, times in per_step.items()}
    for name in specs:
        print(f"  {label} --jit {name:3s}: first step (build, trace{', XLA compile' if name == 'on' else ''}) "
              f"{first[name]:5.1f} s; ms/step by chunk: {', '.join(f'{t:.0f}' for t in per_step[name])}", flush=True)
    ratios = [on / off for off, on in zip(per_step["off"], per_step["on"])]
    print(f"  => {label}: median step {med['off']:.0f} -> {med['on']:.0f} ms (x{med['on'] / med['off']:.2f}; per chunk pair "
          f"x{min(ratios):.2f} to x{max(ratios):.2f}), first step {first['off']:.1f} -> {first['on']:.1f} s", flush=True)
    for steps in lengths:
        off, on = (first[n] + (steps - 1) * med[n] / 1000 for n in ("off", "on"))
        print(f"  => {label} {steps} steps, projected: fit {off:.0f} -> {on:.0f} s (x{on / off:.2f}, XLA saves "
              f"{off - on:+.0f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks jit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder of class sub-folders of photos")
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 300, 800])
    parser.add_argument("--repeats", type=int, default=1, help="fits of each length per setting, alternating")
    parser.add_argument("--k", type=int, default=50, help="train photos per class (as many pseudo-labeled)")
    parser.add_argument("--feature-steps", type=int, default=0, help="also time a frozen-backbone fit this long (0: skip)")
    parser.add_argument("--chunks", type=int, default=0,
                        help="instead of whole fits: this many chunks of --chunk-steps steps per setting, taking turns")
    parser.add_argument("--chunk-steps", type=int, default=20)
    args = parser.parse_args()
    from pipeline.model.spec import ModelSpec, TrainSettings

    paths, labels, classes = list_photos(args.data)
    train_rows, pseudo_rows, _ = split(labels, args.k, 0)
    pseudo_rows = pseudo_rows[: len(train_rows)]
    n = len(classes)
    x, x_pseudo = decoded(paths, train_rows, 64), decoded(paths, pseudo_rows, 64)
    y, y_pseudo = (np.eye(n, dtype=np.float32)[labels[rows]] for rows in (train_rows, pseudo_rows))
    specs = {name: ModelSpec(TrainSettings.defaults(min_steps=1, jit=name), n, False) for name in SETTINGS}
    how = f"{args.chunks} chunks of {args.chunk_steps} steps" if args.chunks else f"{args.repeats} fit(s) per length"
    print(f"{args.data}: {len(x)} train + {len(x_pseudo)} pseudo-labeled photos at 64 px, {n} classes; default model, "
          f"{specs['off'].settings.batch_size} train items a step plus pseudo-labeled on top; {how} per setting, "
          f"alternating", flush=True)

    def measure(label: str, specs: dict, x, x_pseudo, lengths: list[int]) -> None:
        if args.chunks:
            interleaved(label, specs, x, y, (x_pseudo, y_pseudo), args.chunks, args.chunk_steps, args.steps)
        else:
            compare(label, specs, x, y, (x_pseudo, y_pseudo), lengths, args.repeats)

    measure("images", specs, x, x_pseudo, args.steps)
    if args.feature_steps:
        rng = np.random.default_rng(0)
        features = {name: ModelSpec(TrainSettings.defaults(min_steps=1, jit=name), n, False, feature_dim=1280)
                    for name in SETTINGS}
        f, f_pseudo = (rng.standard_normal((len(a), 1280)).astype(np.float32) for a in (x, x_pseudo))
        measure("features", features, f, f_pseudo, [args.feature_steps])
