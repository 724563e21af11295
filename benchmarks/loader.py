"""Test-set prediction memory: peak RSS while predicting 1,000 vs 10,000 images (must stay flat).

`python -m benchmarks loader [--counts 1000 10000]`. Each count runs in a fresh process, so the peak is
its own; images are small generated JPEGs in a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

CHILD = """
import json, resource, sys, time
import numpy as np
from pipeline import models, train
from pipeline.config import RunConfig
paths = np.array(open(sys.argv[1]).read().split("\\n"), dtype=str)  # a file: 10,000 paths overflow a command line
cfg = RunConfig(competition="fisheries", data=".", ledger=None)
model = models.image_classifier(models.small_cnn(cfg.image_size), 8, multi_label=False)
train.predict(model, paths[:64], cfg)  # warm up: graph tracing is not part of the streaming cost
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
probs = train.predict(model, paths, cfg)
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"n": len(paths), "rows": len(probs), "seconds": seconds, "peak_mib": peak / 1024, "growth_mib": (peak - before) / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks loader")
    parser.add_argument("--counts", type=int, nargs="+", default=[1000, 10000])
    args = parser.parse_args()
    repo = Path(__file__).resolve().parent.parent
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(max(args.counts)):
            path = Path(tmp) / f"img_{i:05d}.jpg"
            Image.fromarray(rng.integers(0, 255, (80, 128, 3), dtype=np.uint8)).save(path, quality=80)
            paths.append(str(path))
        print(f"wrote {len(paths)} JPEGs (128x80)", flush=True)
        results = []
        for n in args.counts:
            listing = Path(tmp) / f"paths_{n}.txt"
            listing.write_text("\n".join(paths[:n]))
            out = subprocess.run([sys.executable, "-c", CHILD, str(listing)], cwd=repo, capture_output=True, text=True, check=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'images':>7} {'seconds':>8} {'images/s':>9} {'peak RSS MiB':>13} {'growth while predicting MiB':>28}")
    for r in results:
        print(f"{r['n']:>7} {r['seconds']:8.1f} {r['n'] / r['seconds']:9.0f} {r['peak_mib']:13.0f} {r['growth_mib']:28.1f}")
    if len(results) > 1:
        first, last = results[0], results[-1]
        extra = (last["peak_mib"] - first["peak_mib"]) * 2**20 / (last["n"] - first["n"])
        print(f"peak RSS grows {extra:.0f} bytes per extra image (the prediction array itself is 32 bytes per image)")
