"""Real photos: does pseudo-labeling help? Teacher / control / student / submitted vs scikit-learn baselines.

`python -m benchmarks real --data ../shared/data/sign-language-digits/Dataset [--k 10 50] [--seeds 0 1 2] [-- RUN OPTIONS]`

The data folder holds one sub-folder of photos per class. For each K and seed, K photos per class become the
labeled train set and the rest the unlabeled test set, split into public and private halves; the pipeline
runs on that (an imagefolder competition, files copied to a temporary folder, never into the repository)
and is scored on the hidden labels. The same split feeds scikit-learn on 32x32 grey pixels:
LogisticRegression, SelfTrainingClassifier (its semi-supervised wrapper) and LabelSpreading, and
LogisticRegression with every other label as the ceiling of that family.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.metrics import accuracy_score, log_loss

NEEDS = "--data DIR"  # real photos, never shipped here: `make bench` without ARGS skips this one
MODELS = ("teacher", "control", "student", "submitted")
SUFFIXES = {".jpg", ".jpeg", ".png"}


def list_photos(data: Path) -> tuple[list[str], np.ndarray, list[str]]:
    classes = sorted(p.name for p in data.iterdir() if p.is_dir())
    if not classes:
        raise SystemExit(f"{data} has no class folders; expected {data}/<class>/<photos>")
    paths, labels = [], []
    for c, name in enumerate(classes):
        for f in sorted((data / name).iterdir()):
            if f.suffix.lower() in SUFFIXES:
                paths.append(str(f))
                labels.append(c)
    return paths, np.array(labels), classes


def split(labels: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """K labeled per class; the rest shuffled and halved into public and private."""
    rng = np.random.default_rng(seed)
    labeled = np.concatenate([rng.choice(np.flatnonzero(labels == c), k, replace=False) for c in np.unique(labels)])
    rest = rng.permutation(np.setdiff1d(np.arange(len(labels)), labeled))
    return labeled, rest[: len(rest) // 2], rest[len(rest) // 2:]


def write_competition(folder: Path, paths: list[str], labels: np.ndarray, classes: list[str], labeled, public, private) -> None:
    """An imagefolder layout (train/<class>/, test/public/, test/private/) and its solution.csv."""
    for i in labeled:
        target = folder / "data" / "train" / classes[labels[i]] / f"{i:05d}{Path(paths[i]).suffix.lower()}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(paths[i], target)
    rows = []
    for group, index in (("public", public), ("private", private)):
        (folder / "data" / "test" / group).mkdir(parents=True, exist_ok=True)
        for i in index:
            name = f"{i:05d}{Path(paths[i]).suffix.lower()}"
            shutil.copyfile(paths[i], folder / "data" / "test" / group / name)
            rows.append({"id": f"{group}/{name}", **{c: float(labels[i] == j) for j, c in enumerate(classes)},
                         "Usage": group.capitalize()})
    pd.DataFrame(rows).to_csv(folder / "solution.csv", index=False)


def grey_pixels(paths: list[str], size: int = 32) -> np.ndarray:
    out = np.zeros((len(paths), size * size), dtype=np.float32)
    for row, path in enumerate(paths):
        with Image.open(path) as image:
            out[row] = np.asarray(image.convert("L").resize((size, size), Image.BILINEAR), dtype=np.float32).ravel() / 255
    return out


def sklearn_baselines(x: np.ndarray, labels: np.ndarray, labeled: np.ndarray, test: np.ndarray) -> dict[str, np.ndarray]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.semi_supervised import LabelSpreading, SelfTrainingClassifier

    def logreg():
        return LogisticRegression(max_iter=2000)

    semi = np.full(len(labels), -1)
    semi[labeled] = labels[labeled]
    out = {"LogReg": logreg().fit(x[labeled], labels[labeled]).predict_proba(x[test])}
    out["SelfTraining"] = SelfTrainingClassifier(logreg()).fit(x, semi).predict_proba(x[test])
    out["LabelSpreading"] = LabelSpreading(kernel="knn", n_neighbors=10).fit(x, semi).predict_proba(x[test])
    return out


def scores(y: np.ndarray, probs: np.ndarray, n_classes: int) -> tuple[float, float]:
    probs = np.clip(probs / probs.sum(axis=1, keepdims=True), 1e-15, 1)
    return accuracy_score(y, probs.argmax(axis=1)), log_loss(y, probs, labels=list(range(n_classes)))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks real", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder of class sub-folders of photos")
    parser.add_argument("--k", type=int, nargs="+", default=[10, 50], help="labeled photos per class")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, help="keep the competitions, caches and runs here (default: temporary)")
    parser.add_argument("--no-sklearn", action="store_true")
    parser.add_argument("run_options", nargs=argparse.REMAINDER, help="after --: options of `python -m pipeline submit`")
    args = parser.parse_args()
    from benchmarks import submit_config
    from pipeline.run.stages import run_pipeline

    paths, labels, classes = list_photos(args.data)
    extra = [o for o in args.run_options if o != "--"]
    print(f"{len(paths)} photos, {len(classes)} classes; K {args.k}, seeds {args.seeds}; run options {extra or 'defaults'}", flush=True)
    grey = None if args.no_sklearn else grey_pixels(paths)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for k in args.k:
            for seed in args.seeds:
                labeled, public, private = split(labels, k, seed)
                folder = work / f"k{k}-s{seed}"
                if not (folder / "solution.csv").exists():
                    write_competition(folder, paths, labels, classes, labeled, public, private)
                cfg = submit_config(["--competition", "imagefolder", "--data", str(folder / "data"),
                                     "--solution", str(folder / "solution.csv"), "--seed", str(seed), "--runs-dir",
                                     str(work / "runs"), "--cache-dir", str(work / "cache"), "--no-ledger",
                                     "--run-name", f"k{k}-s{seed}-{time.strftime('%H%M%S')}", *extra])
                started = time.perf_counter()
                result = run_pipeline(cfg)
                wall = time.perf_counter() - started
                saved = np.load(result.run_dir / "probabilities.npz")
                truth = {f"{g}/{i:05d}{Path(paths[i]).suffix.lower()}": labels[i] for g, rows in (("public", public), ("private", private)) for i in rows}
                ids, groups = saved["test_ids"], saved["test_groups"]
                y = np.array([truth[i] for i in ids])
                probs = {m: saved[f"test_{m}"] for m in ("teacher", "control", "student") if f"test_{m}" in saved.files}
                probs["submitted"] = probs[result.metrics["submission"]["model"]]
                if grey is not None:
                    order = np.array([int(Path(i).stem) for i in ids])
                    for name, p in sklearn_baselines(grey, labels, labeled, order).items():
                        probs[name] = p
                    ceiling_rows = np.setdiff1d(np.arange(len(labels)), order)
                    from sklearn.linear_model import LogisticRegression

                    for g, rows in (("public", public), ("private", private)):
                        others = np.setdiff1d(np.arange(len(labels)), rows)
                        ceiling = LogisticRegression(max_iter=2000).fit(grey[others], labels[others])
                        acc = accuracy_score(labels[rows], ceiling.predict(grey[rows]))
                        results.append({"k": k, "seed": seed, "model": "LogReg all other labels", "group": g, "acc": acc, "logloss": np.nan})
                    del ceiling_rows
                for model, p in probs.items():
                    for g in ("public", "private"):
                        rows = groups == g
                        acc, ll = scores(y[rows], p[rows], len(classes))
                        results.append({"k": k, "seed": seed, "model": model, "group": g, "acc": acc, "logloss": ll})
                v = result.metrics["verdict"]
                print(f"\nK={k} seed={seed}: submitted {result.metrics['submission']['model']} ({v['reason']}); "
                      f"wall {wall:.0f}s", flush=True)
                results.append({"k": k, "seed": seed, "model": "_wall_s", "group": "-", "acc": wall, "logloss": np.nan})
    table = pd.DataFrame(results)
    print_table(table)


def print_table(table: pd.DataFrame) -> None:
    wall = table[table["model"] == "_wall_s"]
    table = table[table["model"] != "_wall_s"]
    for k, part in table.groupby("k"):
        print(f"\n### K={k} labeled photos per class, seeds {sorted(part['seed'].unique())} (accuracy / log loss per seed)")
        print("| model | public acc | private acc | public log loss | private log loss |")
        print("|---|---|---|---|---|")
        order = [m for m in (*MODELS, "LogReg", "SelfTraining", "LabelSpreading", "LogReg all other labels") if m in set(part["model"])]
        for model in order:
            rows = part[part["model"] == model]
            cell = {}
            for g in ("public", "private"):
                r = rows[rows["group"] == g].sort_values("seed")
                cell[f"{g}_acc"] = " / ".join(f"{v:.3f}" for v in r["acc"])
                cell[f"{g}_ll"] = " / ".join("-" if np.isnan(v) else f"{v:.3f}" for v in r["logloss"])
            print(f"| {model} | {cell['public_acc']} | {cell['private_acc']} | {cell['public_ll']} | {cell['private_ll']} |")
        w = wall[wall["k"] == k]["acc"]
        print(f"wall time per run: {' / '.join(f'{v:.0f}s' for v in w)}")


if __name__ == "__main__":
    main()
