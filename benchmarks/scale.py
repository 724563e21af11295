"""Amazon scale: list a synthetic Amazon-size competition, build the image stores, predict the test set once.

`python -m benchmarks scale [--n-train 40479] [--n-test 61191] [--size 64]`

Writes the Planet Amazon layout (train_v2.csv, train-jpg/, test-jpg/, test-jpg-additional/,
sample_submission_v2.csv) with 256x256 JPEGs copied from a few generated templates (generation takes
seconds; decoding cost is the same as for distinct files). Then, in a fresh process for half the test set
and again for all of it (ru_maxrss is a high-water mark, so each size needs its own process): list the items
with the amazon plugin, build the train and test stores cold (one decode per image: readability, shift
properties, 64 px copy), predict the test set with the small CNN over `prediction_batches`, and rebuild
the test store (a cache hit, as a rerun or a sweep sees it). Prints images/s and peak RSS per phase; peak
RSS should not grow with the test set beyond the output rows and a small per-image record (path, properties).
Use --n-train/--n-test to shrink it for a quick check.
"""
from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

PUBLIC_SHARE = 40669 / 61191  # test-jpg vs test-jpg-additional on Kaggle
TAGS = ("clear primary", "clear primary agriculture road", "partly_cloudy primary", "haze primary", "cloudy")


def write_competition(root: Path, n_train: int, n_test: int, seed: int = 0, templates: int = 12) -> None:
    """The Amazon layout with n_train + n_test JPEGs, each a copy of one of a few encoded templates."""
    rng = np.random.default_rng(seed)
    encoded = []
    for _ in range(templates):
        coarse = Image.fromarray(rng.integers(30, 200, (8, 8, 3), dtype=np.uint8)).resize((256, 256), Image.BICUBIC)
        tile = np.asarray(coarse).astype(np.int16) + rng.integers(-10, 10, (256, 256, 3))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(tile, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=85)
        encoded.append(buffer.getvalue())
    n_public = round(n_test * PUBLIC_SHARE)
    folders = {"train-jpg": [f"train_{i}" for i in range(n_train)],
               "test-jpg": [f"test_{i}" for i in range(n_public)],
               "test-jpg-additional": [f"file_{i}" for i in range(n_test - n_public)]}
    for folder, names in folders.items():
        (root / folder).mkdir(parents=True)
        for i, name in enumerate(names):
            (root / folder / f"{name}.jpg").write_bytes(encoded[i % templates])
    train_tags = [TAGS[i % len(TAGS)] for i in range(n_train)]
    (root / "train_v2.csv").write_text("image_name,tags\n" + "".join(
        f"{name},{tags}\n" for name, tags in zip(folders["train-jpg"], train_tags)))
    test_names = folders["test-jpg"] + folders["test-jpg-additional"]
    (root / "sample_submission_v2.csv").write_text(
        "image_name,tags\n" + "".join(f"{name},clear primary\n" for name in test_names))


def run_once(data_dir: str, cache_dir: str, n_test: int, size: int, batch_size: int) -> dict:
    """In a fresh process: list, build both stores cold, predict the test set, rebuild (hit); figures per phase."""
    import resource

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import competitions.amazon  # noqa: F401  (registers the plugin)
    from pipeline.data import streams as data
    from pipeline.model import backbones as models
    from pipeline.data.image_store import build_store
    from pipeline.plugin.registry import get_competition

    def peak_mib() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    figures = {"n_test": n_test, "base_mib": peak_mib()}
    started = time.perf_counter()
    amazon = get_competition("amazon")
    amazon.check_layout(Path(data_dir))
    train = amazon.train_items(Path(data_dir))
    test = amazon.test_items(Path(data_dir)).iloc[:n_test]
    figures.update(n_train=len(train), list_s=time.perf_counter() - started, list_mib=peak_mib())
    started = time.perf_counter()
    train_store = build_store(train["path"].tolist(), size, Path(cache_dir), "train")
    test_store = build_store(test["path"].tolist(), size, Path(cache_dir), "test")
    figures.update(cache_s=time.perf_counter() - started, cache_mib=peak_mib(),
                   unreadable=len(train_store.problems) + len(test_store.problems))
    model = models.image_classifier(models.small_cnn(size), 17, multi_label=True)
    rows = np.flatnonzero(test_store.readable)
    model.predict(data.prediction_batches(test_store.pixels, rows[:batch_size], batch_size), verbose=0)  # tracing
    figures["model_mib"] = peak_mib()
    started = time.perf_counter()
    probs = model.predict(data.prediction_batches(test_store.pixels, rows, batch_size), verbose=0)
    figures.update(predict_s=time.perf_counter() - started, predict_mib=peak_mib(), output_mib=probs.nbytes / 2**20)
    started = time.perf_counter()
    again = build_store(test["path"].tolist(), size, Path(cache_dir), "test")
    figures.update(hit_s=time.perf_counter() - started, hit=again.cache_status)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks scale")
    parser.add_argument("--n-train", type=int, default=40479, help="train images (Kaggle: 40,479)")
    parser.add_argument("--n-test", type=int, default=61191, help="test images (Kaggle: 61,191)")
    parser.add_argument("--size", type=int, default=64, help="image size of the stores and the model")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        write_competition(root / "data", args.n_train, args.n_test)
        print(f"wrote {args.n_train} train and {args.n_test} test 256x256 JPEGs in the Amazon layout in "
              f"{time.perf_counter() - started:.0f}s", flush=True)
        results = []
        for k, n_test in enumerate((args.n_test // 2, args.n_test)):
            with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
                results.append(pool.submit(run_once, str(root / "data"), str(root / f"cache-{k}"), n_test,
                                           args.size, args.batch_size).result())
    print(f"\n{'test':>6} {'list s':>7} {'scan+cache img/s':>17} {'predict img/s':>14} {'rerun (hit) s':>14} "
          f"{'peak RSS MiB: imports':>22} {'listed':>7} {'cached':>7} {'model':>6} {'predicted':>10}")
    for r in results:
        cached = r["n_train"] + r["n_test"]
        print(f"{r['n_test']:>6} {r['list_s']:7.1f} {cached / r['cache_s']:17.0f} {r['n_test'] / r['predict_s']:14.0f} "
              f"{r['hit_s']:14.2f} {r['base_mib']:22.0f} {r['list_mib']:7.0f} {r['cache_mib']:7.0f} "
              f"{r['model_mib']:6.0f} {r['predict_mib']:10.0f}")
    half, full = results
    extra = full["n_test"] - half["n_test"]
    grown = full["predict_mib"] - half["predict_mib"]
    print(f"\n{full['n_test']} vs {half['n_test']} test images: peak RSS {grown:+.0f} MiB "
          f"({grown * 2**20 / extra:.0f} bytes per extra test image; its output row is {17 * 4} bytes, "
          f"the cached pixels {args.size * args.size * 3} bytes, which stay on disk); "
          f"{full['unreadable']} unreadable")
