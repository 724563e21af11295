"""The Nature Conservancy Fisheries Monitoring: 8 classes, multi-class log loss, stage 1 public / stage 2 private."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from competitions.single_label import ProbabilityTableCompetition, list_class_folder_items, visible_files
from pipeline.errors import UserError
from pipeline.plugin.registry import register

CLASSES = ["ALB", "BET", "DOL", "LAG", "NoF", "OTHER", "SHARK", "YFT"]
GET_DATA_HINT = "download it with `make data COMP=fisheries` or make the bundled sample with `make demo`"


@register
class Fisheries(ProbabilityTableCompetition):
    name = "fisheries"
    kaggle_slug = "the-nature-conservancy-fisheries-monitoring"
    kaggle_layout = ("train", "test_stg1", "test_stg2", "sample_submission_stg1.csv", "sample_submission_stg2.csv")
    id_column = "image"

    def check_layout(self, data_dir: Path) -> None:
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise UserError(f"data folder {data_dir} does not exist; {GET_DATA_HINT}")
        missing = [name for name in ("train", "test_stg1") if not (data_dir / name).is_dir()]
        if missing:
            raise UserError(f"{data_dir} lacks {', '.join(f'{m}/' for m in missing)} (Kaggle's fisheries layout); {GET_DATA_HINT}")

    def class_names(self, data_dir: Path) -> list[str]:
        return list(CLASSES)

    def train_items(self, data_dir: Path) -> pd.DataFrame:
        return list_class_folder_items(Path(data_dir) / "train", CLASSES)

    def test_items(self, data_dir: Path) -> pd.DataFrame:
        """Stage 1 images are the public leaderboard; stage 2 (named `test_stg2/<file>` on Kaggle) the private one."""
        data_dir = Path(data_dir)
        rows = [(str(p.resolve()), p.name, "public") for p in visible_files(data_dir / "test_stg1")]
        if (data_dir / "test_stg2").is_dir():
            rows += [(str(p.resolve()), f"test_stg2/{p.name}", "private") for p in visible_files(data_dir / "test_stg2")]
        return pd.DataFrame(rows, columns=["path", "id", "group"])

    def expected_ids(self, data_dir: Path) -> list[str] | None:
        path = self.sample_submission(data_dir)
        if path is None:
            return None
        try:
            table = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
            raise UserError(f"{path} is not a readable CSV ({error}); expected Kaggle's sample submission with "
                            f"columns {self.id_column},{','.join(CLASSES)}") from error
        if self.id_column not in table.columns:
            raise UserError(f"{path} has no {self.id_column!r} column; is it Kaggle's sample submission?")
        return table[self.id_column].tolist()

    def sample_submission(self, data_dir: Path) -> Path | None:
        """Stage 2's sample submission (public and private ids) when present, else stage 1's."""
        for name in ("sample_submission_stg2.csv", "sample_submission_stg1.csv"):
            if (Path(data_dir) / name).is_file():
                return Path(data_dir) / name
        return None

    def make_sample(self, out_dir: Path, seed: int = 0, small: bool = False) -> None:
        from competitions.samples.fisheries import SMALL, SampleSize, write_fisheries_sample

        write_fisheries_sample(Path(out_dir), seed=seed, size=SMALL if small else SampleSize())
