"""RunConfig: every option of one run, validated once, saved beside the submission as config.json."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.registry import GROUPS

REPO_ROOT = Path(__file__).resolve().parent.parent
SUBMISSIONS_DIR = REPO_ROOT / "submissions"
CACHE_DIR = REPO_ROOT / "cache"
LEDGER_PATH = SUBMISSIONS_DIR / "ledger.sqlite"


@dataclass(frozen=True)
class RunConfig:
    competition: str
    data: str
    output: str | None = None  # also write the CSV here
    solution: str | None = None  # Kaggle-format solution.csv: score like the public/private leaderboards
    metric: str | None = None  # None = the competition's default
    backbone: str = "small-cnn"  # or any keras.applications name, e.g. MobileNetV2
    weights: str = "none"  # imagenet | none | PATH to a .weights.h5 file (pretrained backbones only)
    fine_tune: bool = False  # pretrained backbone: train it too instead of caching its features
    image_size: int = 64
    epochs: int = 25
    batch_size: int = 32
    learning_rate: float = 1e-3
    seed: int = 0
    val_fraction: float = 0.2
    run_name: str | None = None
    pseudo_ratio: float = 0.25  # target share of pseudo-labeled items in the combined training set
    pseudo_threshold: float = 0.0  # minimum confidence of a pseudo-label
    pseudo_class_cap: float = 2.0  # a class gets at most this multiple of its train share of the pseudo-labels
    pseudo_groups: tuple[str, ...] = GROUPS
    pseudo_labels: str = "soft"  # hard | soft
    pseudo_folds: int = 1  # K > 1: out-of-fold students, each predicting the fold it did not train on
    student_init: str = "teacher"  # teacher: fine-tune the teacher's weights | scratch: a fresh model (Noisy Student)
    student_epochs: int = 8  # maximum student epochs when it starts from the teacher (scratch uses --epochs)
    on_shift: str = "warn"  # warn | fail | ignore
    runs_dir: str = str(SUBMISSIONS_DIR)
    cache_dir: str = str(CACHE_DIR)
    ledger: str | None = str(LEDGER_PATH)  # None = do not record
    plugin_options: dict = field(default_factory=dict)  # plugin-specific settings (--option KEY=VALUE)

    def __post_init__(self) -> None:
        _in_range("--pseudo-ratio", self.pseudo_ratio, 0.0, 0.9, "0 means teacher only; 0.25-0.33 is the usual share")
        _in_range("--pseudo-threshold", self.pseudo_threshold, 0.0, 1.0)
        _in_range("--val-fraction", self.val_fraction, 0.05, 0.5, "the holdout needs items to score on and train needs the rest")
        _in_range("--pseudo-class-cap", self.pseudo_class_cap, 0.0, 100.0, "use a large value (e.g. 100) for no cap")
        if self.pseudo_class_cap <= 0:
            raise ValueError("--pseudo-class-cap must be > 0 (a multiple of each class's train share)")
        for name, value, low in (("--image-size", self.image_size, 16), ("--epochs", self.epochs, 1),
                                 ("--batch-size", self.batch_size, 1), ("--pseudo-folds", self.pseudo_folds, 1),
                                 ("--student-epochs", self.student_epochs, 1)):
            if int(value) != value or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"--learning-rate must be > 0, got {self.learning_rate!r}")
        if self.pseudo_labels not in ("hard", "soft"):
            raise ValueError(f"--pseudo-labels must be 'hard' or 'soft', got {self.pseudo_labels!r}")
        if self.student_init not in ("teacher", "scratch"):
            raise ValueError(f"--student-init must be 'teacher' or 'scratch', got {self.student_init!r}")
        if self.on_shift not in ("warn", "fail", "ignore"):
            raise ValueError(f"--on-shift must be warn, fail or ignore, got {self.on_shift!r}")
        if not self.pseudo_groups or any(g not in GROUPS for g in self.pseudo_groups):
            raise ValueError(f"--pseudo-groups must be a comma-separated subset of {','.join(GROUPS)}, got {','.join(self.pseudo_groups)!r}")
        if self.weights not in ("imagenet", "none") and not Path(self.weights).is_file():
            raise ValueError(f"--weights must be imagenet, none or an existing weights file; {self.weights!r} is none of these")
        if self.backbone == "small-cnn" and self.weights != "none":
            raise ValueError("--weights applies to keras.applications backbones; small-cnn always trains from scratch")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        from pipeline.files import write_text_atomic

        write_text_atomic(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)


def _in_range(name: str, value: float, low: float, high: float, hint: str = "") -> None:
    if not (low <= value <= high):  # also rejects NaN
        raise ValueError(f"{name} must be between {low} and {high}, got {value!r}" + (f" ({hint})" if hint else ""))
