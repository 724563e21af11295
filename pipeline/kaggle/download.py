"""Download a competition's data from Kaggle into the plugin's layout, extracted with guards and checked
(layout, test ids against the sample submission) before the folder is moved into place."""
from __future__ import annotations

import tempfile
from pathlib import Path

from pipeline.errors import UserError
from pipeline.kaggle.archive_formats import is_archive
from pipeline.kaggle.client import DEFAULT_HTTP_TIMEOUT_S, KaggleError, competition_slug, kaggle_api, kaggle_call
from pipeline.kaggle.extract import extract_archive
from pipeline.kaggle.extract_guard import ExtractSummary, Limits
from pipeline.plugin.api import Competition
from pipeline.plugin.registry import get_competition


def verify_data(competition: Competition, data_dir: Path, layout: tuple[str, ...] = ()) -> None:
    """The folder is runnable: the plugin's layout, every name of `layout`, and test images matching the sample
    submission's ids one to one (checked here, before any training, not after an hour of it)."""
    data_dir = Path(data_dir)
    competition.check_layout(data_dir)
    missing = [name for name in layout if not (data_dir / name).exists()]
    if missing:
        raise UserError(f"{data_dir} lacks {', '.join(missing)} (the {competition.name} layout is "
                         f"{', '.join(layout)})")
    expected = competition.expected_ids(data_dir)
    if expected is None:
        return
    have = set(competition.test_items(data_dir)["id"])
    want = set(expected)
    no_image, not_expected = [i for i in expected if i not in have], sorted(have - want)
    if no_image or not_expected:
        raise UserError(
            f"{data_dir}: the test images and the sample submission disagree: {len(no_image)} ids the sample "
            f"submission expects have no test image (first: {[str(i) for i in no_image[:3]]}), {len(not_expected)} "
            f"test images are not in it (first: {not_expected[:3]}); the download is incomplete or a test archive "
            "was not extracted: download the data again")


def download_competition(name: str, data_dir: Path, limits: Limits = Limits(),
                         http_timeout_s: float = DEFAULT_HTTP_TIMEOUT_S) -> ExtractSummary | None:
    """Download the competition's files, extract them with guards into `data_dir` in the plugin's layout, and
    check it (layout, test ids against the sample submission) before the folder is moved into place.

    Returns None when `data_dir` already holds a complete layout (nothing downloaded).
    """
    competition = get_competition(name)
    slug = competition_slug(competition)
    data_dir = Path(data_dir)
    layout = competition.kaggle_layout
    if data_dir.is_dir() and any(data_dir.iterdir()):
        try:
            competition.check_layout(data_dir)
        except ValueError as error:
            raise UserError(f"{data_dir} already has files but not a complete layout ({error}); "
                             f"move it away and run the download again") from None
        verify_data(competition, data_dir)
        print(f"{data_dir} already holds the {name} data; nothing to download")
        return None
    api, credentials = kaggle_api(http_timeout_s)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=data_dir.parent) as tmp:
        print(f"downloading {slug} from Kaggle ...", flush=True)
        with kaggle_call(credentials, f"downloading {slug}", competition, timeout_s=http_timeout_s):
            api.competition_download_files(slug, path=tmp, force=True, quiet=False)
        archives = sorted(Path(tmp).iterdir())
        if len(archives) != 1 or not is_archive(archives[0].name):
            raise KaggleError(f"expected one archive from Kaggle, got {[p.name for p in archives]}")
        print(f"downloaded {archives[0].name} ({archives[0].stat().st_size / 1e6:.1f} MB)", flush=True)

        def check(staged: Path) -> None:
            try:
                verify_data(competition, staged, layout)
            except ValueError as error:
                raise UserError(f"downloaded and extracted {archives[0].name}, but the data is not usable, so "
                                 f"{data_dir} was not created: {str(error).replace(str(staged), str(data_dir))}") \
                    from None

        summary = extract_archive(archives[0], data_dir, limits, layout=layout or None, verify=check)
    print(f"{data_dir}: layout of {name} complete ({', '.join(layout) or 'checked by the plugin'}); "
          "test ids match the sample submission")
    return summary
