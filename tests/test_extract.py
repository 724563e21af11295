"""Guarded extraction: hostile archives are refused before anything lands in (or outside) the target."""
from __future__ import annotations

import io
import os
import stat
import struct
import tarfile
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import py7zr
import py7zr.py7zr
import pytest
from PIL import Image

from pipeline.kaggle.extract import extract_archive
from pipeline.kaggle.extract_guard import Limits

FISHERIES_LAYOUT = ("train", "test_stg1", "test_stg2", "sample_submission_stg1.csv", "sample_submission_stg2.csv")
AMAZON_LAYOUT = ("train-jpg", "test-jpg", "test-jpg-additional", "train_v2.csv", "sample_submission_v2.csv")


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


def make_7z(path: Path, entries: dict, monkeypatch=None, filters=None) -> Path:
    """A real 7z from {name: bytes}. With `monkeypatch`, py7zr's own refusal to *write* hostile names
    (`../x`, `/x`) is lifted for the duration, so that the reader under test can be shown them."""
    if monkeypatch is not None:
        monkeypatch.setattr(py7zr.py7zr, "check_archive_path", lambda name: True)
    with py7zr.SevenZipFile(path, "w", filters=filters) as archive:
        for name, data in entries.items():
            archive.writestr(data, name)
    if monkeypatch is not None:
        monkeypatch.undo()
    return path


def tar_bytes(entries: dict, mode: str = "w") -> bytes:
    """A real tar (mode "w:gz" for tar.gz) from {name: bytes or tarfile.TarInfo with its data}."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for name, data in entries.items():
            if isinstance(data, tarfile.TarInfo):
                archive.addfile(data)
            else:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_extracts_nested_zips_into_place(tmp_path):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as archive:
        archive.writestr("train/ALB/img_00001.jpg", jpeg_bytes(1))
        archive.writestr("train/NoF/img_00002.jpg", jpeg_bytes(2))
    stage2 = make_7z(tmp_path / "test_stg2.7z", {"test_stg2/image_00001.jpg": jpeg_bytes(3)})
    outer = make_zip(tmp_path / "comp.zip", {"train.zip": inner.getvalue(), "sample_submission_stg1.csv": "image,ALB\n",
                                             "test_stg2.7z": stage2.read_bytes()})
    stage2.unlink()
    summary = extract_archive(outer, tmp_path / "data")
    data = tmp_path / "data"
    assert files_under(data) == ["sample_submission_stg1.csv", "test_stg2/image_00001.jpg", "train/ALB/img_00001.jpg",
                                 "train/NoF/img_00002.jpg"]
    assert Image.open(data / "train" / "ALB" / "img_00001.jpg").size == (16, 16)
    assert (data / "test_stg2" / "image_00001.jpg").read_bytes() == jpeg_bytes(3)
    assert summary.files == 4 and summary.archives == ["comp.zip", "test_stg2.7z", "train.zip"]
    assert summary.not_extracted == []
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


# ---- bombs made of many small files, and the free disk space (issue 11 item 8) -------------------------
def test_refuses_a_bomb_of_many_small_files(tmp_path):
    """150 x 1 MB of zeros: each entry is under the per-entry ratio floor, the archive as a whole is ~900x."""
    outer = make_zip(tmp_path / "bomb.zip", {f"part_{i:03d}.bin": bytes(1 << 20) for i in range(150)})
    assert outer.stat().st_size < 200_000  # 157 MB squeezed into under 200 KB
    with pytest.raises(ValueError, match=r"bomb.zip declares 157286400 bytes .* for a whole archive.*zip bomb"):
        extract_archive(outer, tmp_path / "data")  # the default limits
    assert leftovers(tmp_path) == ["bomb.zip"]


def test_refuses_a_tar_gz_of_many_small_zero_files_while_streaming(tmp_path):
    """A tar.gz declares nothing up front: the bytes written are what trips the whole-archive ratio."""
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(tar_bytes({f"zeros/{i:03d}.bin": bytes(1 << 20) for i in range(60)}, "w:gz"))
    with pytest.raises(ValueError, match=r"bomb.tar.gz expanded to \d+ bytes .*for a whole archive"):
        extract_archive(archive, tmp_path / "data")
    assert leftovers(tmp_path) == ["bomb.tar.gz"]


def test_total_size_is_bounded_by_the_free_disk_space(tmp_path):
    outer = make_zip(tmp_path / "comp.zip", {"a.bin": np.random.default_rng(1).bytes(50_000)}, zipfile.ZIP_STORED)
    with pytest.raises(ValueError, match=r"more than 0% of the \d+ bytes free on the disk of .*free some space"):
        extract_archive(outer, tmp_path / "data", Limits(disk_share=1e-12))  # a real measurement, a tiny share
    assert leftovers(tmp_path) == ["comp.zip"]
    extract_archive(outer, tmp_path / "data")  # the default share of the same disk: fine
    assert files_under(tmp_path / "data") == ["a.bin"]


# ---- 7z -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, message", [("../evil.txt", "outside the target folder"),
                                           ("data/../../evil.txt", "outside the target folder"),
                                           ("/tmp/abs-evil-7z.txt", "absolute path")])
def test_7z_refuses_hostile_names(tmp_path, monkeypatch, name, message):
    archive = make_7z(tmp_path / "bad.7z", {"test_stg2/ok.jpg": b"fine", name: b"pwned"}, monkeypatch)
    assert name in py7zr.SevenZipFile(archive).getnames()  # the hostile name really is in the archive
    with pytest.raises(ValueError, match=message):
        extract_archive(archive, tmp_path / "target" / "data")
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/abs-evil-7z.txt").exists()
    assert not (tmp_path / "target").exists() or leftovers(tmp_path / "target") == []


def test_7z_refuses_symlinks(tmp_path):
    os.symlink("/etc/passwd", tmp_path / "link")
    (tmp_path / "ok.jpg").write_bytes(b"fine")
    with py7zr.SevenZipFile(tmp_path / "bad.7z", "w", dereference=False) as archive:
        archive.write(tmp_path / "ok.jpg", "test_stg2/ok.jpg")
        archive.write(tmp_path / "link", "test_stg2/link.jpg")
    with pytest.raises(ValueError, match=r"'test_stg2/link.jpg' is a link or special file"):
        extract_archive(tmp_path / "bad.7z", tmp_path / "data")
    assert leftovers(tmp_path) == ["bad.7z", "link", "ok.jpg"]


def test_7z_bomb_is_refused(tmp_path):
    archive = make_7z(tmp_path / "bomb.7z", {"test_stg2/zeros.bin": bytes(40 << 20)})
    assert archive.stat().st_size < 100_000
    with pytest.raises(ValueError, match="possible zip bomb"):
        extract_archive(archive, tmp_path / "data")
    assert leftovers(tmp_path) == ["bomb.7z"]


def test_a_broken_7z_is_a_clear_error(tmp_path):
    (tmp_path / "test_stg2.7z").write_bytes(b"7z\xbc\xaf\x27\x1c" + b"\x00" * 40)
    with pytest.raises(ValueError, match="test_stg2.7z is not a readable 7z archive"):
        extract_archive(tmp_path / "test_stg2.7z", tmp_path / "data")


def test_7z_and_tar_stream_instead_of_reading_whole_entries(tmp_path):
    """A 64 MB entry extracts with far less Python memory than its size: Amazon's archives are GBs."""
    payload = bytes(range(256)) * (64 << 12)  # 64 MiB; LZMA squeezes it, so the ratio guard is relaxed here
    make_7z(tmp_path / "big.7z", {"test-jpg/big.bin": payload})
    (tmp_path / "big.tar").write_bytes(tar_bytes({"train-jpg/big.bin": payload}))
    for name in ("big.7z", "big.tar"):
        tracemalloc.start()
        try:
            extract_archive(tmp_path / name, tmp_path / f"out-{name}", Limits(max_ratio=1e6))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < len(payload) // 2, f"{name}: {peak / 1e6:.0f} MB of Python memory for a 64 MiB entry"
    assert (tmp_path / "out-big.7z" / "test-jpg" / "big.bin").read_bytes() == payload
    assert (tmp_path / "out-big.tar" / "train-jpg" / "big.bin").read_bytes() == payload


# ---- tar ----------------------------------------------------------------------------------------------
def _special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


@pytest.mark.parametrize("entry, message", [
    ({"../evil.txt": b"pwned"}, "outside the target folder"),
    ({"/tmp/abs-evil-tar.txt": b"pwned"}, "absolute path"),
    ({"train-jpg/link.jpg": _special("train-jpg/link.jpg", tarfile.SYMTYPE, "/etc/passwd")}, "link or special"),
    ({"train-jpg/hard.jpg": _special("train-jpg/hard.jpg", tarfile.LNKTYPE, "/etc/passwd")}, "link or special"),
    ({"train-jpg/dev": _special("train-jpg/dev", tarfile.CHRTYPE)}, "link or special"),
    ({"train-jpg/fifo": _special("train-jpg/fifo", tarfile.FIFOTYPE)}, "link or special"),
], ids=["dotdot", "absolute", "symlink", "hardlink", "device", "fifo"])
def test_tar_refuses_hostile_entries(tmp_path, entry, message):
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(tar_bytes({"train-jpg/ok.jpg": b"fine", **entry}, "w:gz"))
    with pytest.raises(ValueError, match=message):
        extract_archive(archive, tmp_path / "target" / "data")
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/abs-evil-tar.txt").exists()
    assert leftovers(tmp_path / "target") == []  # the entry before the hostile one was staged, never placed


def test_tar_7z_extracts_to_the_amazon_layout_with_progress(tmp_path, capsys):
    """Amazon's download: `.tar.7z` image archives, zipped CSVs with macOS junk, tif archives it does not need."""
    images = {f"train-jpg/train_{i}.jpg": jpeg_bytes(i) for i in range(1200)}
    make_7z(tmp_path / "train-jpg.tar.7z", {"train-jpg.tar": tar_bytes(images)})
    make_7z(tmp_path / "test-jpg.tar.7z", {"test-jpg.tar": tar_bytes({"test-jpg/test_0.jpg": jpeg_bytes(5)})})
    make_7z(tmp_path / "test-jpg-additional.tar.7z",  # bare files: they belong in the folder named like the archive
            {"test-jpg-additional.tar": tar_bytes({"file_0.jpg": jpeg_bytes(6)})})
    csvs = {"train_v2.csv.zip": {"train_v2.csv": "image_name,tags\n", "__MACOSX/._train_v2.csv": "junk"},
            "sample_submission_v2.csv.zip": {"sample_submission_v2.csv": "image_name,tags\n"}}
    entries = {name: make_zip(tmp_path / name, content).read_bytes() for name, content in csvs.items()}
    for name in ("train-jpg.tar.7z", "test-jpg.tar.7z", "test-jpg-additional.tar.7z"):
        entries[name] = (tmp_path / name).read_bytes()
    entries["train-tif-v2.tar.7z"] = b"not needed, never written"
    entries["Kaggle-planet-test-tif.torrent"] = b"not needed"
    outer = make_zip(tmp_path / "planet.zip", entries, zipfile.ZIP_STORED)
    summary = extract_archive(outer, tmp_path / "data", layout=AMAZON_LAYOUT)
    data = tmp_path / "data"
    assert leftovers(data) == sorted(AMAZON_LAYOUT)
    assert len(list((data / "train-jpg").iterdir())) == 1200
    assert (data / "train-jpg" / "train_7.jpg").read_bytes() == jpeg_bytes(7)
    assert files_under(data / "test-jpg-additional") == ["file_0.jpg"]
    assert summary.skipped == ["Kaggle-planet-test-tif.torrent", "train-tif-v2.tar.7z"]
    assert summary.files == 1200 + 2 + 2
    out = capsys.readouterr().out
    assert "extracting train-jpg.tar.7z: 1 files" in out and "  train-jpg.tar: 1000 files" in out
    assert "skipped (not needed): Kaggle-planet-test-tif.torrent, train-tif-v2.tar.7z" in out


def test_redundant_top_folders_are_flattened_into_the_fisheries_layout(tmp_path):
    """The download wrapped in a folder named after the competition, `train/train/` in train.zip,
    stage 2 images bare in the 7z: the result is still exactly the plugin's layout."""
    train = make_zip(tmp_path / "train.zip", {"train/train/ALB/img_00001.jpg": jpeg_bytes(1)})
    stage1 = make_zip(tmp_path / "test_stg1.zip", {"test_stg1/img_00002.jpg": jpeg_bytes(2)})
    stage2 = make_7z(tmp_path / "test_stg2.7z", {"image_00001.jpg": jpeg_bytes(3)})
    slug = "the-nature-conservancy-fisheries-monitoring"
    entries = {f"{slug}/{p.name}": p.read_bytes() for p in (train, stage1, stage2)}
    entries.update({f"{slug}/sample_submission_stg1.csv.zip": make_zip(
        tmp_path / "s1.zip", {"sample_submission_stg1.csv": "image\n"}).read_bytes(),
        f"{slug}/sample_submission_stg2.csv": "image\n"})
    outer = make_zip(tmp_path / "comp.zip", entries)
    extract_archive(outer, tmp_path / "data", layout=FISHERIES_LAYOUT)
    assert files_under(tmp_path / "data") == [
        "sample_submission_stg1.csv", "sample_submission_stg2.csv", "test_stg1/img_00002.jpg",
        "test_stg2/image_00001.jpg", "train/ALB/img_00001.jpg"]


def test_a_failed_verification_leaves_no_target(tmp_path):
    outer = make_zip(tmp_path / "comp.zip", {"a.txt": "x"})

    def verify(staged: Path) -> None:
        assert (staged / "a.txt").is_file()  # it sees the complete extraction
        raise ValueError("ids do not match")

    with pytest.raises(ValueError, match="ids do not match"):
        extract_archive(outer, tmp_path / "data", verify=verify)
    assert leftovers(tmp_path) == ["comp.zip"]
