"""Any single-label image competition laid out as folders (State Farm, dogs vs cats, ...).

DATA/train/<class>/*.{jpg,jpeg,png}; DATA/test/public/* and DATA/test/private/* (files directly in
DATA/test/ count as public). Any other folder there (test/stage2/, test/Private/, test/public/ALB/) is
refused, never skipped: its images would be missing from the submission. Submission
`id,<classes in sorted order>`; the id is the path relative to DATA/test with forward slashes. Metric:
--metric logloss (default) or accuracy.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from competitions.single_label import (ProbabilityTableCompetition, folder_entries, list_class_folder_items,
                                       visible_files)
from pipeline.errors import UserError
from pipeline.plugin.api import FLIPS, GROUPS
from pipeline.plugin.registry import register

HINT = "expected DATA/train/<class>/<images> and DATA/test/[public|private]/<images>; `make demo COMP=imagefolder` makes an example"


@register
class ImageFolder(ProbabilityTableCompetition):
    name = "imagefolder"
    id_column = "id"

    def __init__(self, metric: str | None = None, flips: str = "horizontal") -> None:
        super().__init__(metric)
        if flips not in FLIPS:
            raise UserError(f"--option flips={flips!r} must be one of {', '.join(FLIPS)} "
                            "(which mirror images of your photos keep their label)")
        self.flips = flips

    def check_layout(self, data_dir: Path) -> None:
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise UserError(f"data folder {data_dir} does not exist; {HINT}")
        for name in ("train", "test"):
            if not (data_dir / name).is_dir():
                raise UserError(f"{data_dir} has no {name}/ folder; {HINT}")

    def class_names(self, data_dir: Path) -> list[str]:
        """The class folders' names, sorted; a folder named like the submission's id column is refused (the
        submission `id,<classes>` would have two id columns)."""
        train = Path(data_dir) / "train"
        names = sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
        if self.id_column in names:
            raise UserError(f"class folder {train / self.id_column} has the name of the submission's id column "
                            f"({self.id_column},<classes>...), so the submission would have two {self.id_column!r} "
                            f"columns; rename the folder (e.g. mv {train / self.id_column} {train / (self.id_column + '_')})")
        return names

    def train_items(self, data_dir: Path) -> pd.DataFrame:
        return list_class_folder_items(Path(data_dir) / "train", known_classes=None)

    def test_items(self, data_dir: Path) -> pd.DataFrame:
        """Files directly in test/ (public), in test/public/ and in test/private/; any other folder is refused."""
        test = Path(data_dir) / "test"
        files, folders = folder_entries(test)
        unexpected = [p for p in folders if p.name not in GROUPS]
        if unexpected:
            renames = [f"{p.name}/ to {p.name.lower()}/" for p in unexpected if p.name.lower() in GROUPS]
            raise UserError(
                f"{test} has folder(s) {', '.join(p.name + '/' for p in unexpected)} that the imagefolder layout does "
                f"not read, so their images would be left out of the submission; test images go directly in test/ "
                f"(public), in test/public/ or in test/private/: move them there"
                + (f" (folder names are case-sensitive: rename {', '.join(renames)})" if renames else ""))
        rows = [(str(p.resolve()), p.name, "public") for p in files]
        for group in GROUPS:
            if (test / group).is_dir():
                rows += [(str(p.resolve()), f"{group}/{p.name}", group) for p in visible_files(test / group)]
        return pd.DataFrame(rows, columns=["path", "id", "group"])

    def make_sample(self, out_dir: Path, seed: int = 0, small: bool = False) -> None:
        from competitions.samples.imagefolder import write_imagefolder_sample

        sizes = {"per_class": 30, "test_per_group": 30} if small else {}
        write_imagefolder_sample(Path(out_dir), seed=seed, **sizes)
