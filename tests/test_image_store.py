"""The image store on real files in tmp_path: one decode, cached; the one definition of readable."""
from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageStat

from pipeline.data.image_properties import CATEGORICAL_PROPERTIES, NUMERIC_PROPERTIES
from pipeline.data.decode import decode_image
from pipeline.data.image_store import StaleCacheWarning, build_store

SIZE = 16


def smooth_image(height: int, width: int, seed: int) -> Image.Image:
    """Photo-like: a few random colours blown up smoothly, plus mild noise."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    pixels = np.asarray(coarse).astype(np.int16) + rng.integers(-8, 8, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_images(folder: Path, n: int, seed: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img_{i:03d}.{'jpg' if i % 2 else 'png'}"
        smooth_image(20 + 3 * i, 30 + 2 * i, seed + i).save(path)
        paths.append(str(path))
    return paths


def bmp(path: Path, width: int, height: int, bits: int, compression: int, pixel_rows: list[bytes],
        masks: tuple[int, ...] = ()) -> None:
    """A BMP written byte by byte (Pillow cannot write 16-bit or BI_JPEG ones); rows bottom-up, padded to 4 bytes."""
    body = b"".join(row + bytes(-len(row) % 4) for row in reversed(pixel_rows))
    header = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, compression, len(body), 2835, 2835, 0, 0)
    extra = b"".join(struct.pack("<I", m) for m in masks)
    offset = 14 + len(header) + len(extra)
    path.write_bytes(b"BM" + struct.pack("<IHHI", offset + len(body), 0, 0, offset) + header + extra + body)


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that claims width x height pixels (a decompression bomb's header) and holds none."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def expected_pixels(path: str, size: int = SIZE) -> np.ndarray:
    """What the store should hold: Pillow's reduced JPEG decode, then an antialiased resize to a square."""
    with Image.open(path) as image:
        image.draft("RGB", (size, size))
        return np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))


# ---- caching -------------------------------------------------------------------------------------------

def test_a_second_build_reads_the_cache_without_decoding_any_file(tmp_path, capsys, monkeypatch):
    from pipeline.data import decode

    paths = write_images(tmp_path / "images", 6)
    first = build_store(paths, SIZE, tmp_path / "cache", "train")
    assert first.cache_status == "miss" and first.pixels.shape == (6, SIZE, SIZE, 3) and first.readable.all()
    assert "cached 6/6 train images, 0 unreadable" in capsys.readouterr().out
    for i, path in enumerate(paths):
        assert np.array_equal(first.pixels[i], expected_pixels(path))
    # the key holds each file's sha256 (any other bytes are a new entry), so the decoder itself is taken away
    monkeypatch.setattr(decode, "decode_image", lambda *args: pytest.fail(f"decoded {args[0]} on a cache hit"))
    again = build_store(paths, SIZE, tmp_path / "cache", "train")
    assert again.cache_status == "hit" and again.readable.all() and again.problems == {}
    assert isinstance(again.pixels, np.memmap) and not again.pixels.flags.writeable
    assert np.array_equal(np.asarray(again.pixels), np.asarray(first.pixels))
    assert again.properties.equals(first.properties)
    assert f"images: cached in {again.folder}" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "cache" / "images").iterdir()] == [again.folder.name]  # no staging left


def test_a_changed_or_added_file_or_another_size_is_a_new_entry(tmp_path):
    paths = write_images(tmp_path / "images", 4)
    first = build_store(paths, SIZE, tmp_path / "cache", "test")
    smooth_image(40, 40, seed=99).save(paths[1])  # rewritten: new size and mtime
    changed = build_store(paths, SIZE, tmp_path / "cache", "test")
    assert changed.cache_status == "miss" and changed.folder != first.folder
    assert np.array_equal(changed.pixels[1], expected_pixels(paths[1]))
    assert not np.array_equal(changed.pixels[1], first.pixels[1])
    assert np.array_equal(changed.pixels[[0, 2, 3]], first.pixels[[0, 2, 3]])
    added = build_store(paths + write_images(tmp_path / "more", 1, seed=50), SIZE, tmp_path / "cache", "test")
    assert added.cache_status == "miss" and len(added.paths) == 5 and added.folder not in (first.folder, changed.folder)
    bigger = build_store(paths, 2 * SIZE, tmp_path / "cache", "test")
    assert bigger.cache_status == "miss" and bigger.pixels.shape == (4, 2 * SIZE, 2 * SIZE, 3)
    assert build_store(paths, SIZE, tmp_path / "cache", "test").cache_status == "hit"


@pytest.mark.parametrize("damage", ["manifest", "pixels", "properties"])
def test_a_corrupt_entry_is_rebuilt_with_a_warning(tmp_path, damage):
    paths = write_images(tmp_path / "images", 5)
    first = build_store(paths, SIZE, tmp_path / "cache", "train")
    reference = np.array(first.pixels)
    folder = first.folder
    del first
    if damage == "manifest":
        (folder / "manifest.json").write_text('{"version": 1, "paths": [')  # cut short
    elif damage == "pixels":
        with open(folder / "pixels.npy", "r+b") as handle:  # truncated: the array no longer fits the file
            handle.truncate(os.path.getsize(folder / "pixels.npy") // 2)
    else:
        (folder / "properties.npz").unlink()
    with pytest.warns(StaleCacheWarning, match="incomplete or corrupt.*rebuilding"):
        rebuilt = build_store(paths, SIZE, tmp_path / "cache", "train")
    assert rebuilt.cache_status == "miss" and rebuilt.folder == folder
    assert np.array_equal(np.asarray(rebuilt.pixels), reference)
    assert json.loads((folder / "manifest.json").read_text())["paths"] == paths
    assert build_store(paths, SIZE, tmp_path / "cache", "train").cache_status == "hit"


def test_an_empty_list_is_an_empty_store(tmp_path):
    store = build_store([], SIZE, tmp_path / "cache", "test")
    assert store.pixels.shape == (0, SIZE, SIZE, 3) and len(store.properties) == 0 and store.rows([]).size == 0
    assert build_store([], SIZE, tmp_path / "cache", "test").cache_status == "hit"


def test_bad_arguments_name_the_value(tmp_path):
    paths = write_images(tmp_path / "images", 2)
    with pytest.raises(ValueError, match="image_size must be a positive integer.*0"):
        build_store(paths, 0, tmp_path / "cache", "train")
    with pytest.raises(ValueError, match="img_000.png is listed twice"):
        build_store(paths + paths[:1], SIZE, tmp_path / "cache", "train")
    with pytest.raises(ValueError, match="what must be a short name.*'../x'"):
        build_store(paths, SIZE, tmp_path / "cache", "../x")
    store = build_store(paths, SIZE, tmp_path / "cache", "train")
    assert store.rows(paths[::-1]).tolist() == [1, 0]
    with pytest.raises(ValueError, match="nope.jpg is not in the train image store"):
        store.rows([paths[0], str(tmp_path / "nope.jpg")])


# ---- readable: one definition -------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's, for big.png
def test_unreadable_files_are_counted_with_reasons_and_rows_stay_aligned(tmp_path):
    good = write_images(tmp_path / "good", 4)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "text.jpg").write_text("not an image")
    (bad / "truncated.jpg").write_bytes(Path(good[1]).read_bytes()[:300])
    png_header_only(bad / "bomb.png", 30000, 30000)
    png_header_only(bad / "big.png", 10000, 10000)
    bmp(bad / "jpeg_in.bmp", 2, 2, 24, 4, [bytes(6), bytes(6)])  # BI_JPEG compression: Pillow cannot decode it
    paths = [good[0], str(bad / "text.jpg"), good[1], str(bad / "truncated.jpg"), str(bad / "bomb.png"),
             good[2], str(bad / "missing.png"), str(bad / "jpeg_in.bmp"), str(bad / "big.png"), good[3]]
    store = build_store(paths, SIZE, tmp_path / "cache", "test")
    assert store.readable.tolist() == [p in good for p in paths]
    assert set(store.problems) == set(paths) - set(good)
    reasons = {Path(p).name: why for p, why in store.problems.items()}
    assert reasons["text.jpg"].startswith("UnidentifiedImageError")
    assert "truncated" in reasons["truncated.jpg"].lower()
    assert reasons["bomb.png"].startswith("DecompressionBombError") and "900000000 pixels" in reasons["bomb.png"]
    # between 1x and 2x its limit Pillow only warns; the store refuses it all the same
    assert reasons["big.png"].startswith("DecompressionBombError") and "10000x10000" in reasons["big.png"]
    assert reasons["missing.png"].startswith("FileNotFoundError")
    assert "compression" in reasons["jpeg_in.bmp"].lower()
    for path in good:  # each readable image sits in its own row, whatever failed around it
        assert np.array_equal(store.pixels[store.rows([path])[0]], expected_pixels(path))
    assert not store.pixels[~store.readable].any()
    assert store.properties["path"].tolist() == good
    subset = store.property_table(paths[::-1])  # what the shift check gets for a group, in the group's order
    assert subset.table["path"].tolist() == good[::-1]
    assert [p for p, _ in subset.unreadable] == [p for p in paths[::-1] if p not in good]
    assert subset.table.iloc[0].equals(store.properties.iloc[-1])
    again = build_store(paths, SIZE, tmp_path / "cache", "test")
    assert again.cache_status == "hit" and again.problems == store.problems


def test_the_scan_and_the_loader_agree_on_bmps_and_bombs(tmp_path):
    """1-bit and RGB565 BMPs passed the old scan and then failed tf.io.decode_image after the teacher had
    trained; a bomb header raised out of the scan. Now the scan is the store's decoder and the model reads
    the store: what the scan passes is exactly what the loader has pixels for."""
    from pipeline.data import streams as data

    one_bit = tmp_path / "one_bit.bmp"
    image = Image.new("1", (16, 8), 0)
    image.paste(1, (0, 0, 8, 8))  # left half white
    image.save(one_bit)
    rgb565 = tmp_path / "rgb565.bmp"
    bmp(rgb565, 4, 2, 16, 3, [struct.pack("<4H", *[0xF800] * 4)] * 2, masks=(0xF800, 0x07E0, 0x001F))  # pure red
    bomb = tmp_path / "bomb.png"
    png_header_only(bomb, 30000, 30000)
    paths = [str(one_bit), str(rgb565), str(bomb)]
    problems = data.scan_images(paths, "train")  # the old scan raised DecompressionBombError here
    assert list(problems) == [str(bomb)]
    store = build_store(paths, SIZE, tmp_path / "cache", "train")
    assert store.problems == problems and store.readable.tolist() == [True, True, False]
    bits = store.pixels[0]
    assert bits[:, :5].min() == 255 and bits[:, -5:].max() == 0  # white left, black right
    red = store.pixels[1].reshape(-1, 3)
    assert red[:, 0].min() >= 248 and red[:, 1:].max() == 0
    assert store.properties["mode"].tolist() == ["1", "RGB"] and store.properties["format"].tolist() == ["BMP", "BMP"]
    rows = np.flatnonzero(store.readable)
    stream = data.training_stream(store.read(rows), np.eye(2, dtype=np.float32), seed=0)
    seen = {int(np.argmax(y)): x for x, y, _ in stream.take(2).as_numpy_iterator()}
    assert np.array_equal(seen[0], store.pixels[0]) and np.array_equal(seen[1], store.pixels[1])


# ---- pixels and properties ----------------------------------------------------------------------------

def test_a_dct_scaled_decode_matches_a_full_decode_and_resize(tmp_path):
    import tensorflow as tf

    path = tmp_path / "frame.jpg"
    smooth_image(720, 1280, seed=4).save(path, quality=90)
    with Image.open(path) as image:
        image.draft("RGB", (64, 64))
        assert image.size == (160, 90)  # 1/8 scale: the largest ratio that still gives >= 64 a side
    pixels, _ = decode_image(str(path), 64)
    full = tf.io.decode_jpeg(path.read_bytes(), channels=3)
    reference = tf.image.resize(full, (64, 64), antialias=True).numpy()  # what the old loader computed
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
    assert np.abs(pixels.astype(np.float64) - reference).mean() < 2.0


def old_image_properties(path: str, max_side: int = 128) -> dict:
    """The shift check's measurement before the store (a copy of the previous image_properties)."""
    file_size = os.stat(path).st_size
    with Image.open(path) as image:
        fmt, mode = image.format or "unknown", image.mode
        width, height = image.size
        if fmt == "JPEG":
            image.draft("RGB", (max_side, max_side))
        rgb = image.convert("RGB")
    if max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.BOX)
    colour, grey = ImageStat.Stat(rgb), ImageStat.Stat(rgb.convert("L"))
    total = sum(colour.mean)
    return {"mean_intensity": grey.mean[0], "contrast": grey.stddev[0],
            "red_mean": colour.mean[0], "green_mean": colour.mean[1], "blue_mean": colour.mean[2],
            "red_rel": colour.mean[0] / total, "green_rel": colour.mean[1] / total, "blue_rel": colour.mean[2] / total,
            "height": height, "width": width, "aspect_ratio": width / height, "area": width * height,
            "file_size": file_size, "format": fmt, "mode": mode}


def test_properties_equal_what_the_shift_check_measured_before(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    smooth_image(720, 1280, seed=1).save(folder / "frame.jpg", quality=90)
    smooth_image(256, 256, seed=2).save(folder / "tile.jpg", quality=80)
    smooth_image(50, 70, seed=3).convert("L").save(folder / "grey.jpg")
    smooth_image(90, 60, seed=5).save(folder / "photo.png")
    smooth_image(40, 40, seed=6).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.gif")
    paths = sorted(str(p) for p in folder.iterdir())
    store = build_store(paths, 64, tmp_path / "cache", "train")
    assert store.properties.columns.tolist() == ["path", *NUMERIC_PROPERTIES, *CATEGORICAL_PROPERTIES]
    for row in store.properties.itertuples(index=False):
        old = old_image_properties(row.path)
        for name in NUMERIC_PROPERTIES:
            tolerance = 0.05 * old[name] + 0.5 if name == "contrast" else 1e-3 * abs(old[name]) + 0.3
            assert getattr(row, name) == pytest.approx(old[name], abs=tolerance), (row.path, name)
        assert (row.format, row.mode) == (old["format"], old["mode"])


def test_a_large_jpeg_is_measured_on_its_draft_averaged_in_whole_blocks(tmp_path):
    """A 1280x720 frame decoded for 64 px is a 160x90 draft; its properties are those of the draft's 2x2
    block means (80x45, at most MAX_SIDE a side), recomputed here with numpy from the draft's pixels."""
    path = tmp_path / "frame.jpg"
    smooth_image(720, 1280, seed=7).save(path, quality=90)
    _, props = decode_image(str(path), 64)
    with Image.open(path) as image:
        image.draft("RGB", (64, 64))
        draft = np.asarray(image.convert("RGB"), dtype=np.int64)
    assert draft.shape == (90, 160, 3)
    blocks = (draft.reshape(45, 2, 80, 2, 3).sum(axis=(1, 3)) + 2) // 4  # Pillow's reduce: rounded block means
    grey = (blocks @ np.array([19595, 38470, 7471]) + 0x8000) >> 16  # Pillow's RGB -> L (ITU-R 601, fixed point)
    means = blocks.reshape(-1, 3).mean(axis=0)
    assert [props["red_mean"], props["green_mean"], props["blue_mean"]] == pytest.approx(means, abs=1e-9)
    assert props["mean_intensity"] == pytest.approx(grey.mean(), abs=1e-9)
    assert props["contrast"] == pytest.approx(grey.std(), abs=1e-6)
    assert props["red_rel"] == pytest.approx(means[0] / means.sum(), abs=1e-12)
    assert np.abs(means - draft.reshape(-1, 3).mean(axis=0)).max() < 0.5  # block means keep the image's means
    assert (props["width"], props["height"], props["file_size"]) == (1280, 720, path.stat().st_size)


def test_prediction_batches_stream_rows_in_order_from_the_file(tmp_path):
    import keras

    from pipeline.data import streams as data

    paths = write_images(tmp_path / "images", 11)
    store = build_store(paths, SIZE, tmp_path / "cache", "test")
    rows = np.array([10, 3, 4, 5, 0, 9, 8, 1])  # out of order, with a run of consecutive rows
    dataset = data.prediction_batches(store.pixels, rows, batch_size=3)
    assert int(dataset.cardinality()) == 3  # a known length: Keras's predict stops without warning
    batches = list(dataset.as_numpy_iterator())
    assert [len(b) for b in batches] == [3, 3, 2]
    assert np.array_equal(np.concatenate(batches), np.asarray(store.pixels)[rows])
    assert np.array_equal(store.read(rows), np.asarray(store.pixels)[rows])
    inputs = keras.Input((SIZE, SIZE, 3))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))))
    streamed = model.predict(data.prediction_batches(store.pixels, rows, batch_size=4), verbose=0)
    assert np.allclose(streamed, model.predict(np.asarray(store.pixels)[rows], verbose=0), atol=1e-5)
    assert len(list(data.prediction_batches(store.pixels, np.array([], dtype=int), 4))) == 0
    with pytest.raises(ValueError, match=r"rows must lie in 0\.\.10.*got 0\.\.11"):
        data.prediction_batches(store.pixels, np.array([0, 11]), 4)


def test_training_stream_shuffles_whole_epochs_with_targets_attached():
    from pipeline.data import streams as data

    pixels = np.repeat(np.arange(10, dtype=np.uint8), 4 * 4 * 3).reshape(10, 4, 4, 3)  # row i is all i
    y = np.eye(10, dtype=np.float32)
    stream = data.training_stream(pixels, y, seed=1)
    items = list(stream.take(20).as_numpy_iterator())
    for x, target, weight in items:
        assert np.all(x == x.flat[0]) and np.argmax(target) == x.flat[0] and weight == 1
    first, second = [int(x.flat[0]) for x, _, _ in items[:10]], [int(x.flat[0]) for x, _, _ in items[10:]]
    assert sorted(first) == sorted(second) == list(range(10)) and first != list(range(10))
    again = [int(x.flat[0]) for x, _, _ in data.training_stream(pixels, y, seed=1).take(10).as_numpy_iterator()]
    assert again == first
    with pytest.raises(ValueError, match="10 items but 9 targets"):
        data.training_stream(pixels, y[:9], seed=0)
