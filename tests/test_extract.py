"""Guarded extraction: hostile archives are refused before anything lands in (or outside) the target."""
from __future__ import annotations

import io
import stat
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.extract import Limits, extract_archive


def make_zip(path: Path, entries: dict, compression: int = zipfile.ZIP_DEFLATED) -> Path:
    """Write a zip from {name or zipfile.ZipInfo: bytes or str}."""
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def jpeg_bytes(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_extracts_nested_zips_into_place(tmp_path):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as archive:
        archive.writestr("train/ALB/img_00001.jpg", jpeg_bytes(1))
        archive.writestr("train/NoF/img_00002.jpg", jpeg_bytes(2))
    outer = make_zip(tmp_path / "comp.zip", {"train.zip": inner.getvalue(), "sample_submission_stg1.csv": "image,ALB\n",
                                             "test_stg2.7z": b"7z\xbc\xaf"})
    summary = extract_archive(outer, tmp_path / "data")
    data = tmp_path / "data"
    assert sorted(str(p.relative_to(data)) for p in data.rglob("*") if p.is_file()) == [
        "sample_submission_stg1.csv", "test_stg2.7z", "train/ALB/img_00001.jpg", "train/NoF/img_00002.jpg"]
    assert Image.open(data / "train" / "ALB" / "img_00001.jpg").size == (16, 16)
    assert summary.files == 4 and summary.archives == ["comp.zip", "train.zip"]
    assert summary.not_extracted == ["test_stg2.7z"]
    assert summary.bytes == sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
    assert leftovers(tmp_path) == ["comp.zip", "data"]  # no staging folder left behind


@pytest.mark.parametrize("name", ["../evil.txt", "data/../../evil.txt", "..\\evil.txt"])
def test_refuses_entries_escaping_the_target(tmp_path, name):
    outer = make_zip(tmp_path / "bad.zip", {"ok.txt": "fine", name: "pwned"})
    with pytest.raises(ValueError, match=r"outside the target folder"):
        extract_archive(outer, tmp_path / "target" / "data")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "target" / "evil.txt").exists()
    assert leftovers(tmp_path / "target") == []  # neither the data nor a partial folder


@pytest.mark.parametrize("name", ["/tmp/abs-evil.txt", "C:/evil.txt", "\\\\server\\share\\evil.txt"])
def test_refuses_absolute_paths(tmp_path, name):
    outer = make_zip(tmp_path / "bad.zip", {name: "pwned"})
    assert zipfile.ZipFile(outer).namelist() == [name]  # the hostile name really is in the archive
    with pytest.raises(ValueError, match="absolute path"):
        extract_archive(outer, tmp_path / "data")
    assert not Path("/tmp/abs-evil.txt").exists()
    assert leftovers(tmp_path) == ["bad.zip"]


def test_refuses_symlink_entries(tmp_path):
    link = zipfile.ZipInfo("train/link.jpg")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    outer = make_zip(tmp_path / "bad.zip", {link: "/etc/passwd"})
    with pytest.raises(ValueError, match="link or special file"):
        extract_archive(outer, tmp_path / "data")
    assert leftovers(tmp_path) == ["bad.zip"]


def test_refuses_a_zip_bomb_by_ratio(tmp_path):
    outer = make_zip(tmp_path / "bomb.zip", {"zeros.bin": bytes(30 << 20)})
    assert outer.stat().st_size < 100_000  # 30 MB of zeros squeezed into well under 100 KB
    with pytest.raises(ValueError, match="possible zip bomb"):
        extract_archive(outer, tmp_path / "data", Limits(max_ratio=200))
    assert leftovers(tmp_path) == ["bomb.zip"]


def test_refuses_archives_over_the_size_limit_including_nested_ones(tmp_path):
    rng = np.random.default_rng(0)
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as archive:
        archive.writestr("big.bin", rng.bytes(600_000))  # random: no compression, ratio ~1
    outer = make_zip(tmp_path / "comp.zip", {"a.bin": rng.bytes(600_000), "inner.zip": inner.getvalue()},
                     zipfile.ZIP_STORED)
    extract_archive(outer, tmp_path / "roomy", Limits(max_total_bytes=2_000_000))  # fits: the limit is what refuses
    with pytest.raises(ValueError, match="over the limit of 500000 bytes"):
        extract_archive(outer, tmp_path / "data", Limits(max_total_bytes=500_000))
    with pytest.raises(ValueError, match="inner.zip declares 600000 bytes"):  # outer fits, the nested one does not
        extract_archive(outer, tmp_path / "data", Limits(max_total_bytes=1_500_000))
    assert leftovers(tmp_path) == ["comp.zip", "roomy"]


def test_refuses_a_header_that_understates_the_size(tmp_path):
    outer = make_zip(tmp_path / "forged.zip", {"data.bin": bytes(3 << 20)})
    raw = bytearray(outer.read_bytes())
    central = raw.rindex(b"PK\x01\x02")  # central directory entry: uncompressed size at offset 24
    struct.pack_into("<I", raw, central + 24, 1000)
    outer.write_bytes(bytes(raw))
    assert zipfile.ZipFile(outer).infolist()[0].file_size == 1000
    with pytest.raises(ValueError, match="cannot be extracted"):
        extract_archive(outer, tmp_path / "data")
    assert leftovers(tmp_path) == ["forged.zip"]


def test_refuses_duplicate_entries_and_a_non_empty_target(tmp_path):
    with zipfile.ZipFile(tmp_path / "dup.zip", "w") as archive:
        archive.writestr("a.txt", "first")
        archive.writestr("A.txt", "second")
    with pytest.raises(ValueError, match="more than once"):
        extract_archive(tmp_path / "dup.zip", tmp_path / "data")
    good = make_zip(tmp_path / "good.zip", {"a.txt": "x"})
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an empty folder"):
        extract_archive(good, tmp_path / "full")
    assert leftovers(tmp_path / "full") == ["keep.txt"]


def test_not_a_zip_is_a_clear_error(tmp_path):
    (tmp_path / "comp.zip").write_bytes(b"<html>rate limited</html>")
    with pytest.raises(ValueError, match="comp.zip is not a readable zip archive"):
        extract_archive(tmp_path / "comp.zip", tmp_path / "data")
