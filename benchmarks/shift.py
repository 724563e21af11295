"""Shift check cost and calibration: image properties per second, peak memory, false-alarm rate.

`python -m benchmarks shift [--counts 1000 10000] [--splits 40] [--workers 2]`

1. Measures the properties of 1,000 and 10,000 generated 96x96 JPEGs with 2 threads, each count in a fresh
   process so that its peak memory is its own: images per second, peak RSS above the process's baseline
   (imports) and the peak of Python-traced memory. Flat memory means the 10,000 figure is close to the
   1,000 one: only a small row per image is kept.
   Also 200 1280x720 JPEGs with 1 and 2 threads: large JPEGs are decoded at reduced scale (Image.draft).
2. The false-alarm rate: two random halves of 1,000 images from one distribution, compared with the
   default ShiftSettings, 40 seeded splits; anything but OK is a false alarm (target: at most 5%).
The images are written to a temporary folder and deleted afterwards.
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
import tracemalloc
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data.decode import measure_images


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks shift")
    parser.add_argument("--counts", type=int, nargs="+", default=[1000, 10000], help="numbers of images to measure")
    parser.add_argument("--splits", type=int, default=40,
                        help="random half/half splits for the false-alarm rate (0 = skip)")
    parser.add_argument("--workers", type=int, default=2, help="threads measuring images")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-shift-") as tmp:
        started = time.perf_counter()
        paths = write_images(Path(tmp), max(args.counts), seed=0)
        print(f"generated {len(paths)} 96x96 JPEGs in {time.perf_counter() - started:.1f}s", flush=True)
        figures = {}
        for count in args.counts:
            # a fresh process per count: ru_maxrss is a high-water mark that never comes down
            with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
                figures[count] = pool.submit(measure_in_fresh_process, paths[:count], args.workers).result()
            f = figures[count]
            print(f"{count:>6} images, {args.workers} threads: {f['rate']:7.0f} images/s ({f['seconds']:.1f}s), "
                  f"peak RSS {f['base_mib'] + f['rss_mib']:.1f} MiB ({f['base_mib']:.1f} MiB after imports), "
                  f"traced Python peak {f['traced_mib']:.1f} MiB, {f['unreadable']} unreadable", flush=True)
        low, high = min(args.counts), max(args.counts)
        if low != high:
            lo, hi = figures[low], figures[high]
            grown = hi["rss_mib"] - lo["rss_mib"]
            print(f"{high} vs {low} images: time x{hi['seconds'] / lo['seconds']:.1f}, peak RSS "
                  f"x{(hi['base_mib'] + hi['rss_mib']) / (lo['base_mib'] + lo['rss_mib']):.2f} "
                  f"(+{grown:.1f} MiB, {grown * 2**20 / (high - low):.0f} bytes per extra image)", flush=True)
        large = write_images(Path(tmp), 200, seed=1, size=(720, 1280), prefix="large")
        for workers in (1, args.workers):
            started = time.perf_counter()
            measure_images(large, workers=workers, progress_every=0)
            print(f"   200 1280x720 JPEGs (fisheries-sized), {workers} threads: "
                  f"{200 / (time.perf_counter() - started):.0f} images/s", flush=True)
        if args.splits > 0:
            false_alarms(paths[:1000], args.splits, args.workers)


def write_images(folder: Path, n: int, seed: int, size: tuple[int, int] = (96, 96), prefix: str = "img") -> list[str]:
    """n varied JPEGs (height, width = size) from one distribution: random base colour, brightness and noise."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        base = rng.uniform(40, 210, 3)
        pixels = base + rng.normal(0, rng.uniform(5, 40), (*size, 3))
        path = folder / f"{prefix}_{i:05d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def measure_in_fresh_process(paths: list[str], workers: int) -> dict:
    """Run in a new process: time and peak RSS of measuring `paths`, then a second, traced pass for the
    peak of Python allocations (tracemalloc slows allocation down, so it stays out of the timed pass)."""
    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # after the imports
    started = time.perf_counter()
    table = measure_images(paths, workers=workers, progress_every=0)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    del table
    tracemalloc.start()
    table = measure_images(paths, workers=workers, progress_every=0)
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {
        "seconds": seconds, "rate": len(paths) / seconds, "unreadable": len(table.unreadable),
        "base_mib": base_kib / 1024, "rss_mib": (peak_kib - base_kib) / 1024, "traced_mib": traced_peak / 2**20,
    }


def false_alarms(paths: list[str], splits: int, workers: int) -> None:
    from pipeline.data.image_properties import PropertyTable
    from pipeline.shift.assess import compare_sets
    from pipeline.shift.report import OK, ShiftSettings

    table = measure_images(paths, workers=workers, progress_every=0).table
    settings = ShiftSettings(workers=workers, progress_every=0)
    half = len(table) // 2
    statuses, started = [], time.perf_counter()
    for seed in range(splits):
        order = np.random.default_rng(seed).permutation(len(table))
        halves = {"train": PropertyTable(table.iloc[order[:half]].reset_index(drop=True)),
                  "public": PropertyTable(table.iloc[order[half:]].reset_index(drop=True))}
        pair = compare_sets(halves, settings, seed=seed).pairs["train_vs_public"]
        statuses.append(pair.status)
        if pair.status != OK:
            print(f"  split {seed}: {pair.status} - {pair.reason}", flush=True)
    alarms = sum(s != OK for s in statuses)
    seconds = time.perf_counter() - started
    print(f"false alarms: {alarms} of {splits} random {half}/{len(table) - half} splits of one set "
          f"({100 * alarms / splits:.1f}%; target <= 5%); {seconds / splits:.1f}s per comparison with default settings")
