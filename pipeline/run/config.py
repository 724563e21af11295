"""RunConfig: every option of one run, declared once.

Each field carries its flag help, its constraint and whether it changes the teacher (scikit-learn's
`_parameter_constraints` is the model). argparse (`add_run_options`), validation (`__post_init__`),
config.json and the teacher's cache key (`teacher_settings`) are all generated from this one table, so a new
option cannot be left out of any of them.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import UserError
from pipeline.plugin.api import GROUPS
from pipeline.run.options import (AUTO, Bounds, between, flag_of, groups_subset, integer, one_of, option, parse_auto_or_int,
                                  parse_groups, parse_options)
from pipeline.run.folds import AUTO_FOLDS, FEW_SCORED_ROWS
from pipeline.run.seeds import SEED_LIMIT, largest_derived_seed

REPO_ROOT = Path(__file__).resolve().parents[2]  # pipeline/run/config.py -> the checkout
SUBMISSIONS_DIR = REPO_ROOT / "submissions"
CACHE_DIR = REPO_ROOT / "cache"
LEDGER_PATH = SUBMISSIONS_DIR / "ledger.sqlite"
AUGMENT_LEVELS = ("none", "light", "standard", "strong")
# --student-augment auto: above this many passes over each labeled item a student needs Noisy Student's strong noise
# (real photos, 10 and 50 labels a class: 64-320 passes, and without augmentation it overfits its few labels: public
# log loss 0.30 -> 0.65); at or below it the student is a short fine-tune of the teacher and gets the control's
# augmentation: strong noise then only blurs it (hand photos at the demo budget, 40 passes: private log loss 1.785
# with strong, 1.649 with standard, the control 1.627). benchmarks/RESULTS.md.
STRONG_NOISE_PASSES = 50
BALANCE_MODES = ("predicted", "train", "aligned", "none")
ADAPT_BN_MODES = ("none", "foreign", "shifted", "all")  # pipeline/method/adaptation.py
CALIBRATIONS = ("temperature", "none")  # pipeline/method/calibration.py
UNMEASURED_GROUP_CHOICES = ("student", "average", "verdict")  # pipeline/method/group_verdict.py
DISTRIBUTE_MODES = ("auto", "none", "mirrored", "multiworker")  # pipeline/model/distribute.py builds them


# ---- upper bounds: past them a value crashes, hangs or fills the disk instead of making a better run ------------
MAX_IMAGE_SIZE = 1024  # ImageNet backbones are trained at 224-600 px; 2048 px was 2.2 GB of image cache for 180 images
MAX_BATCH_SIZE = 4096  # --batch-size 100000 ended in a SIGSEGV
MAX_WIDTH = 256  # resnet stages of 256, 512 and 1024 channels: a ResNet-50's widths
MAX_EPOCHS = 1000
MAX_MIN_STEPS = 1_000_000
MAX_FOLDS = 20  # every fold is a teacher, a control and a chain of students
MAX_PSEUDO_ROUNDS = 10  # every round trains a student for every fold and pseudo-fold
MAX_PSEUDO_FOLDS = 10  # the student of pseudo-fold k is seeded seed + ... + 100 k: distinct from round r + 1's while k < 10
# One prediction batch (PREDICTION_BATCH x --batch-size images, train.predict) may hold at most this many float32
# values in its largest tensor (the images; for the resnet and small-cnn the first stage's activations, which are
# larger): 8 GiB in one tensor, more than a GPU holds beside its model, and the most a 32-bit element count addresses.
MAX_BATCH_VALUES = 2 ** 31 - 1
PREDICTION_BATCH = 4
# --seed's bound: a run derives seeds up to --seed + MAX_SEED_OFFSET (pipeline/run/seeds.py), all below SEED_LIMIT
MAX_SEED_OFFSET = largest_derived_seed(0, MAX_FOLDS, MAX_PSEUDO_ROUNDS, MAX_PSEUDO_FOLDS)
MAX_SEED = SEED_LIMIT - 1 - MAX_SEED_OFFSET


@dataclass(frozen=True)
class RunConfig:
    competition: str = option("", "plugin name: fisheries, amazon, imagefolder", teacher=True)
    data: str = option("", "the competition's data folder (Kaggle layout)")
    output: str | None = option(None, "also write the submission CSV here")
    solution: str | None = option(None, "Kaggle-format solution.csv (Usage column): score like the public/private leaderboards")
    metric: str | None = option(None, "the competition's metric when it has several (imagefolder: logloss|accuracy)")
    run_name: str | None = option(None, "the run folder's name (default: time, ratio, groups, seed)")
    # ---- the teacher: everything here keys its cache ----
    backbone: str = option("resnet", "resnet (a compact residual net trained from scratch), small-cnn, or a keras.applications "
                                     "name such as MobileNetV2", teacher=True)
    width: int = option(16, "channels of the first stage of the resnet backbone (doubling per stage)",
                        check=integer(4, MAX_WIDTH), teacher=True)
    weights: str = option("none", "imagenet | none | PATH to a .weights.h5 file (keras.applications backbones only)", teacher=True)
    fine_tune: bool = option(False, "train a pretrained backbone too, instead of caching its features", teacher=True)
    image_size: int = option(64, "square input size in pixels (the image cache holds SIZE x SIZE x 3 bytes an image)",
                             check=integer(16, MAX_IMAGE_SIZE), teacher=True)
    epochs: int = option(30, "passes over its training items for each teacher model", check=integer(1, MAX_EPOCHS),
                         teacher=True)
    min_steps: int = option(800, "at least this many optimizer steps per model fit (a few labels need many passes)",
                            check=integer(1, MAX_MIN_STEPS), teacher=True)
    batch_size: int = option(32, f"items per optimizer step ({PREDICTION_BATCH} times as many per prediction batch)",
                             check=integer(1, MAX_BATCH_SIZE), teacher=True)
    learning_rate: float = option(2e-3, "peak learning rate of AdamW (cosine decay to 0 over each fit)",
                                  check=between(1e-6, 1.0), teacher=True)
    weight_decay: float = option(5e-4, "AdamW decoupled weight decay", check=between(0.0, 1.0), teacher=True)
    label_smoothing: float = option(0.1, "label smoothing of the training loss", check=between(0.0, 0.5), teacher=True)
    augment: str = option("standard", "label-preserving augmentation of the teacher and control: " + "|".join(AUGMENT_LEVELS),
                          check=one_of(*AUGMENT_LEVELS), teacher=True)
    tta: bool = option(True, "average predictions over the image and its mirror (where the competition allows flips)", teacher=True)
    seed: int = option(0, "same seed, same machine: same submission", teacher=True,
                       check=integer(0, MAX_SEED, "numpy and TensorFlow seeds must be below 2**32, and a run derives "
                                                  f"seeds up to --seed + {MAX_SEED_OFFSET} from it"))
    # float16 activations change every prediction well beyond float noise: a different teacher, so it keys the cache
    mixed_precision: bool = option(False, "GPU only: mixed_float16 layers (float32 variables, loss scaling and output "
                                          "layer): faster where the GPU has float16 tensor cores", teacher=True)
    folds: int | str = option(AUTO, f"auto: {AUTO_FOLDS} when a holdout would hold under {FEW_SCORED_ROWS} labeled images "
                                    f"(pseudo-labels and verdict then rest on every labeled image; {AUTO_FOLDS}x the training), "
                                    "else 1; 1: one stratified holdout (--val-fraction); K > 1: K cross-validated teachers, out-of-fold "
                                    "predictions for the verdict, test predictions averaged", check=integer(1, MAX_FOLDS, auto=True),
                              parse=parse_auto_or_int, teacher=True)
    val_fraction: float = option(0.2, "with --folds 1: stratified holdout share, never trained on nor pseudo-labeled",
                                 check=between(0.05, 0.5), teacher=True)
    # ---- pseudo-labels and students ----
    adapt_bn: str = option("foreign", "re-estimate batch-norm statistics on a test group's own images before predicting it "
                                   "(AdaBN): none | foreign (in each group, the images unlike every train image, when there are enough) | "
                                   "shifted (the groups the shift check flags) | all",
                           check=one_of(*ADAPT_BN_MODES), teacher=True)
    pseudo_ratio: float = option(0.95, "pseudo-labeled share of the combined training set in the last round (0 = teacher only; "
                                      "0.25-0.33 is the fast.ai rule of thumb, more pays when labels are few)",
                                 check=between(0.0, 0.99))
    pseudo_rounds: int = option(2, "self-training rounds: round r's student relabels the test set and r/R of the share is used",
                                check=integer(1, MAX_PSEUDO_ROUNDS))
    pseudo_threshold: float = option(0.0, "minimum confidence of a pseudo-label", check=between(0.0, 1.0))
    pseudo_precision: float = option(0.0, "raise each round's confidence threshold until the labeling model's predictions "
                                          "that confident are right this often on the holdout/out-of-fold rows (0 = off)",
                                     check=between(0.0, 1.0))
    pseudo_tag_confidence: float = option(0.9, "multi-label: a pseudo-labeled tag is trained on only where the labeling model's "
                                               "holdout/out-of-fold rows say it is right this often (isotonic calibration); "
                                               "the other tags stay unlabeled (0 = every tag, at its decision threshold)",
                                          check=between(0.0, 1.0))
    pseudo_weight: str = option("net", "loss weight of a pseudo-labeled item: none (1, as a real label) | calibrated "
                                        "(how often the labeling model is right at its confidence on the "
                                        "holdout/out-of-fold rows) | net (2x that - 1, and only the items it keeps above 0: a "
                                        "label no likelier right than wrong is not handed over)",
                                check=one_of("none", "calibrated", "net"))
    pseudo_balance: str = option("predicted", "class quotas: the labeling model's class distribution on each group, the train share, that share "
                                              "with probabilities rescaled to it, or none: " + "|".join(BALANCE_MODES), check=one_of(*BALANCE_MODES))
    pseudo_class_cap: float = option(1.0, "a class gets at most this multiple of its (--pseudo-balance) share of a group's quota",
                                     check=between(0.01, 100.0, "use a large value (e.g. 100) for no cap"))
    pseudo_groups: tuple[str, ...] = option(GROUPS, "which leaderboard groups to pseudo-label: public,private | public | private",
                                            check=groups_subset, parse=parse_groups)
    pseudo_labels: str = option("hard", "hard|soft|online: 0/1 targets, probabilities, or the student's own at each step", check=one_of("hard", "soft", "online"))
    pseudo_labeler: str = option("control", "which model labels the test set in round 1: control (the teacher continued on "
                                           "the train rows for the students' budget: the better model, trained anyway for "
                                           "the verdict; the teacher with --no-control) | teacher",
                                 check=one_of("control", "teacher"))
    pseudo_folds: int = option(1, "K > 1: out-of-fold students (test fold k predicted by a student that never saw its pseudo-labels)",
                               check=integer(1, MAX_PSEUDO_FOLDS))
    student_init: str = option("teacher", "start each student from the previous model's weights, or from scratch: teacher|scratch",
                               check=one_of("teacher", "scratch"))
    student_epochs: int = option(6, "passes over the train items per student round (the pseudo-labels ride on top; the control trains as long)",
                                 check=integer(1, MAX_EPOCHS))
    student_batch: str = option("real+pseudo", "what a student's optimizer step sees: real+pseudo (--batch-size train items, "
                                               "the control's step, plus pseudo-labeled items on top: their share of the pool, "
                                               "at most as many) | pooled (--batch-size items from one shuffled pool of both)",
                                check=one_of("real+pseudo", "pooled"))
    student_augment: str = option("auto", "augmentation of the students: auto (strong, Noisy Student's noise, when a student "
                                          f"goes over each labeled item more than {STRONG_NOISE_PASSES} times; the control's "
                                          "--augment for a shorter fine-tune) | "
                                  + "|".join(AUGMENT_LEVELS), check=one_of("auto", *AUGMENT_LEVELS))
    pseudo_augment: str = option("same", "augmentation of a student's pseudo-labeled items: same (as its labeled items) | "
                                 + "|".join(AUGMENT_LEVELS), check=one_of("same", *AUGMENT_LEVELS))
    control: bool = option(True, "also train the control: the teacher continued on train only for the students' budget; "
                                 "the verdict compares the student with it")
    guard_confidence: float = option(0.8, "the student is submitted only if it beats the control in at least this share of "
                                          "bootstrap resamples of the holdout/out-of-fold rows (0 = always submit the student)",
                                     check=between(0.0, 1.0))
    guard_compares: str = option("uncalibrated", "what the guard's bootstrap compares: uncalibrated (the models' probabilities "
                                                 "as predicted: on a few scored rows a cross-fitted temperature adds noise of "
                                                 "its own, and one confident mistake sets it) | calibrated",
                                 check=one_of("uncalibrated", "calibrated"))
    calibrate: str = option("temperature", "temperature-scale each model's class probabilities on the scored rows before "
                                           "deciding and submitting (single-label; argmax unchanged): temperature | none",
                            check=one_of(*CALIBRATIONS))
    unmeasured_groups: str = option("student", "what a test group gets when no scored row can measure the models on it "
                                               "(mostly images unlike every train image), the verdict fell back to the "
                                               "control, and the student learned from the group and did not lose beyond "
                                               "noise: student | average (of the control's and the student's "
                                               "probabilities) | verdict (the control)",
                                    check=one_of(*UNMEASURED_GROUP_CHOICES))
    unmeasured_p_better: float = option(0.5, "a test group no scored row can measure gets the student (or the average, "
                                             "--unmeasured-groups) only if the student beat the control in at least "
                                             "this share of the guard's resamples of the scored rows, as the two "
                                             "predicted them (0.5: at least even)",
                                        check=between(0.0, 1.0))
    # Not a teacher key: the strategy changes how the same fit runs (same global batch, steps, schedule, data order
    # and seeds), not what it is asked to learn; what differs is float summation order and batch-norm batch statistics
    # taken per replica (their moving averages are averaged after each fit). On the tiny test sample two replicas moved
    # the holdout log loss by 0.005 (seed 0) and 0.042 (seed 1), where seeds 0 and 1 differ by 0.029 on one device:
    # a perturbation the size of a seed change, not a different teacher. So a teacher trained on 8 GPUs is reused on a
    # laptop (as good, not bit-identical; reruns are byte-identical on the same machine and strategy), and "auto"
    # resolves differently per machine, so the flag would be a wrong key anyway. metrics.json records the strategy
    # and replicas of every fit (teacher_training: those of the run that trained it).
    distribute: str = option("auto", "tf.distribute strategy: auto (mirrored when more than one GPU is visible, else one "
                                     "device) | none | mirrored (every GPU of this machine) | multiworker (the machines "
                                     "in TF_CONFIG); --batch-size stays the global batch", check=one_of(*DISTRIBUTE_MODES))
    jit: str = option("auto", "XLA for each fit's train step (rounds otherwise: keys the caches): auto (where measured to "
                              "pay: nowhere yet, see docs) | on | off", check=one_of("auto", "on", "off"))
    worker_wait: float = option(600.0, "--distribute multiworker: seconds to wait for every worker of TF_CONFIG to "
                                       "join before stopping with an error (TensorFlow itself waits without a limit)",
                                check=between(1, 86400))
    on_shift: str = option("warn", "what a shift between train and a test group does: warn|fail|ignore", check=one_of("warn", "fail", "ignore"))
    runs_dir: str = option(str(SUBMISSIONS_DIR), "where run folders go")
    cache_dir: str = option(str(CACHE_DIR), "image, teacher and feature caches")
    ledger: str | None = option(None, "the SQLite run ledger (default: ledger.sqlite in --runs-dir)")
    record: bool = option(True, "record the run in the ledger", flag="--no-ledger")
    plugin_options: dict = option({}, "a plugin setting, e.g. --option public_folder=test-jpg-additional (amazon)", flag="--option")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check = f.metadata.get("check")
            problem = check(getattr(self, f.name)) if check else None
            if problem:
                raise UserError(f"{flag_of(f)} {problem}, got {getattr(self, f.name)!r}")
        largest = PREDICTION_BATCH * self.batch_size * values_per_image(self.backbone, self.image_size, self.width)
        if largest > MAX_BATCH_VALUES:
            most = MAX_BATCH_VALUES // (PREDICTION_BATCH * values_per_image(self.backbone, self.image_size, self.width))
            sizes = f"--image-size {self.image_size}" + (f" and --width {self.width}" if self.backbone == "resnet" else "")
            raise UserError(f"--batch-size {self.batch_size} is too large at {sizes}: a prediction batch of "
                            f"{PREDICTION_BATCH * self.batch_size} images would hold {largest:,} float32 values "
                            f"({largest * 4 / 2 ** 30:.1f} GiB) in one tensor, over the {MAX_BATCH_VALUES:,} a batch may "
                            f"hold; at {sizes}, --batch-size must be between 1 and {most}")
        if self.weights not in ("imagenet", "none") and not Path(self.weights).is_file():
            raise UserError(f"--weights must be imagenet, none or an existing weights file; {self.weights!r} is none of these")
        if self.pseudo_augment != "same" and (self.student_batch == "pooled" or self.pseudo_labels == "online"):
            raise UserError("--pseudo-augment sets the noise of the pseudo-labeled items a student step adds to its labeled "
                            "batch: use it with --student-batch real+pseudo and --pseudo-labels hard or soft")
        if self.backbone in ("resnet", "small-cnn") and self.weights != "none":
            raise UserError(f"--weights applies to keras.applications backbones; {self.backbone} always trains from scratch")

    @property
    def ledger_path(self) -> Path | None:
        if not self.record:
            return None
        return Path(self.ledger) if self.ledger else Path(self.runs_dir) / "ledger.sqlite"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        from pipeline.files import write_text_atomic

        write_text_atomic(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)


def values_per_image(backbone: str, image_size: int, width: int) -> int:
    """The float32 values an image takes in the largest tensor of a batch that we know of: the image itself, or the
    first stage of the resnet (--width channels, at half resolution from 48 px) or of the small-cnn (16 channels)."""
    values = 3 * image_size ** 2
    if backbone == "resnet":
        side = -(-image_size // 2) if image_size >= 48 else image_size  # models.resnet's stem
        values = max(values, side * side * width)
    elif backbone == "small-cnn":
        values = 16 * image_size ** 2
    return values


def teacher_settings(cfg: RunConfig) -> dict:
    """The options that change the trained teacher: what its cache key is made of."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.metadata.get("teacher")}


def add_run_options(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One argparse option per RunConfig field, with its default and help (shared by `submit` and `sweep`)."""
    defaults = RunConfig()
    for f in dataclasses.fields(RunConfig):
        if not f.metadata.get("cli") or f.name in skip:
            continue
        flag, default = flag_of(f), getattr(defaults, f.name)
        kwargs: dict = {"dest": f.name, "help": f.metadata["help"]}
        if isinstance(f.metadata.get("check"), Bounds):
            kwargs["help"] += f" [{f.metadata['check'].low} to {f.metadata['check'].high}]"
        if f.name in ("competition", "data"):
            kwargs["required"] = True
        elif f.name == "record":
            kwargs.update(action="store_false", default=True, help="do not record the run in the ledger")
        elif f.name == "plugin_options":
            kwargs.update(action="append", default=[], metavar="KEY=VALUE")
        elif isinstance(default, bool):
            kwargs.update(action=argparse.BooleanOptionalAction, default=default)
        else:
            parse = f.metadata.get("parse") or (type(default) if default is not None else str)
            kwargs.update(type=parse, default=default)
            if isinstance(default, tuple):
                kwargs["default"] = ",".join(default)
                kwargs["type"] = str
        parser.add_argument(flag, **kwargs)


def config_from_args(args: argparse.Namespace, **overrides) -> RunConfig:
    """The RunConfig of parsed `add_run_options` arguments; `overrides` win."""
    values = {}
    for f in dataclasses.fields(RunConfig):
        if f.name not in vars(args):
            continue
        value = getattr(args, f.name)
        if f.name == "plugin_options":
            value = parse_options(value)
        elif f.metadata.get("parse") and isinstance(value, str):
            value = f.metadata["parse"](value)
        values[f.name] = value
    values.update(overrides)
    return RunConfig(**values)

