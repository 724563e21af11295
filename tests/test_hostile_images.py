"""Hostile image files and caches, case by case: each decodes correctly, is refused with a reason naming the file,
or makes the store rebuild with a warning; never a silently wrong picture and never a stale cache entry.

Every case writes its own files to tmp_path: 16- and 32-bit greys and floats that Pillow's convert() clips (white
or black images), JPEGs stored sideways with an EXIF orientation, cache files rewritten at the same size, and
source images replaced by others of the same size with their modification time put back.
"""
from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageOps

from pipeline.data.decode import decode_image
from pipeline.data.image_store import StaleCacheWarning, build_store
from tests.test_image_store import smooth_image

SIZE = 32


def resized(image: Image.Image, size: int = SIZE) -> np.ndarray:
    """What the store holds for a losslessly stored picture: 8-bit RGB, squashed to size x size."""
    return np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))


def opened(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image


def store_of(tmp_path: Path, paths: list[Path], what: str = "train"):
    return build_store([str(p) for p in paths], SIZE, tmp_path / "cache", what)


# ---- greys deeper than 8 bits ------------------------------------------------------------------------------

# The picture every deep-grey case holds: left to right 0..255 in the top half, 255..0 in the bottom half (so an
# image turned upside down or mirrored does not pass), in each format's own levels.
LEVELS = np.concatenate([np.tile(np.arange(256), (16, 1)), np.tile(np.arange(255, -1, -1), (16, 1))])


def pgm(path: Path, values: np.ndarray, maxval: int) -> None:
    """A binary PGM (P5) with 16-bit samples, written by hand to choose its maxval."""
    height, width = values.shape
    path.write_bytes(f"P5\n{width} {height}\n{maxval}\n".encode() + values.astype(">u2").tobytes())


def png16_rgb(path: Path, rgb: np.ndarray) -> None:
    """A 48-bit RGB PNG written by hand (Pillow writes none): big-endian samples, no filter, one IDAT."""
    height, width, _ = rgb.shape
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in rgb)
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


DEEP_GREYS = {  # case -> (write LEVELS to this path in that format, the mode Pillow opens it in)
    "16-bit PNG": (lambda p: Image.fromarray((LEVELS * 257).astype(np.uint16)).save(p.with_suffix(".png")), "I;16"),
    "big-endian 16-bit TIFF": (lambda p: Image.fromarray((LEVELS * 257).astype(">u2")).save(p.with_suffix(".tif")),
                               "I;16B"),
    "16-bit PGM": (lambda p: pgm(p.with_suffix(".pgm"), LEVELS * 257, 65535), "I"),
    "12-bit PGM": (lambda p: pgm(p.with_suffix(".pgm"), LEVELS * 16, 4095), "I"),  # Pillow scales maxval to 65535
    "32-bit integer TIFF": (lambda p: Image.fromarray((LEVELS * 257).astype(np.int32)).save(p.with_suffix(".tif")), "I"),
    "32-bit float TIFF": (lambda p: Image.fromarray((LEVELS / 255).astype(np.float32)).save(p.with_suffix(".tif")), "F"),
}


def written(folder: Path, name: str, write) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write(folder / name)
    (path,) = folder.glob(f"{name}.*")
    return path


@pytest.mark.parametrize("case", DEEP_GREYS)
def test_a_deep_grey_image_decodes_like_the_same_picture_in_8_bits_not_white_or_black(tmp_path, case):
    write, mode = DEEP_GREYS[case]
    deep = written(tmp_path / "deep", "gradient", write)
    eight_bit = tmp_path / "gradient-8-bit.png"
    Image.fromarray(LEVELS.astype(np.uint8)).save(eight_bit)
    store = store_of(tmp_path, [deep, eight_bit])
    assert store.problems == {}
    grey = store.pixels[0]
    assert (grey[:, :, 0] == grey[:, :, 1]).all() and (grey[:, :, 0] == grey[:, :, 2]).all()
    top, bottom = grey[: SIZE // 2 - 1, :, 0].mean(axis=0), grey[SIZE // 2 + 1:, :, 0].mean(axis=0)
    assert top[0] < 10 and top[-1] > 245 and (np.diff(top) >= 0).all()  # dark to light, not all white
    assert bottom[0] > 245 and bottom[-1] < 10 and (np.diff(bottom) <= 0).all()
    assert np.array_equal(grey, store.pixels[1])  # the 0..65535 (or 0..1) scale: exactly the 8-bit levels
    assert store.properties["mode"].tolist() == [mode, "L"]  # the shift check still sees the file's own mode


REFUSED = {  # case -> (pixel values, the fragments the reason must hold)
    "signed CT values": (LEVELS.astype(np.int32) * 16 - 1024, ["mode I", "from -1024 to 3056", "8- or 16-bit"]),
    "integers above 16 bits": (LEVELS.astype(np.int32) * 4096, ["mode I", "from 0 to 1044480"]),
    "floats holding 0..255": (LEVELS.astype(np.float32), ["mode F", "from 0 to 255", "0 to 1"]),
    "floats with NaN": (np.where(LEVELS > 200, np.nan, LEVELS / 255).astype(np.float32), ["mode F", "NaN"]),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_deep_image_without_a_fixed_8_bit_scale_is_refused_naming_the_file_mode_and_range(tmp_path, case):
    values, fragments = REFUSED[case]
    path = tmp_path / "scan.tif"
    Image.fromarray(values).save(path)
    good = tmp_path / "good.png"
    smooth_image(20, 30, seed=1).save(good)
    store = store_of(tmp_path, [path, good])
    assert store.readable.tolist() == [False, True]
    reason = store.problems[str(path)]
    assert reason.startswith(f"UnmappableImageError: {path} is a 32-bit"), reason
    for fragment in fragments:
        assert fragment in reason, (fragment, reason)
    assert not store.pixels[0].any()  # an unreadable row stays zeros


def test_palette_alpha_one_bit_cmyk_and_48_bit_images_still_decode_to_the_colours_they_show(tmp_path):
    """Modes Pillow converts correctly by itself go on through convert(); checked against the source picture."""
    folder = tmp_path / "modes"
    folder.mkdir()
    photo = smooth_image(40, 56, seed=3)
    sources = {
        "palette.png": photo.convert("P", palette=Image.Palette.ADAPTIVE),
        "grey-alpha.png": Image.merge("LA", (photo.convert("L"), photo.getchannel("R"))),
        "rgba.png": Image.merge("RGBA", (*photo.split(), photo.getchannel("G"))),
        "one-bit.png": photo.convert("1"),
        "cmyk.tif": photo.convert("CMYK"),
    }
    for name, image in sources.items():
        image.save(folder / name)
    sources["transparent.gif"] = sources["palette.png"]  # a palette with a transparent colour (PA in Pillow)
    sources["palette.png"].save(folder / "transparent.gif", transparency=0)
    photo.convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    levels = np.asarray(photo).astype(np.uint16) * 256 + np.arange(3, dtype=np.uint16) * 50  # low bytes: noise
    png16_rgb(folder / "rgb-48-bit.png", levels)
    names = [*sources, "cmyk.jpg", "rgb-48-bit.png"]
    store = store_of(tmp_path, [folder / n for n in names])
    assert store.problems == {}
    for row, name in enumerate(names):
        if name == "cmyk.jpg":  # lossy: close to the source's own CMYK -> RGB
            error = np.abs(store.pixels[row].astype(int) - resized(sources["cmyk.tif"]).astype(int)).mean()
            assert error < 3, (name, error)
        elif name == "rgb-48-bit.png":  # the high byte of each 16-bit sample: the photo itself
            assert np.array_equal(store.pixels[row], resized(photo)), name
        else:
            assert np.array_equal(store.pixels[row], resized(sources[name])), name
    assert store.properties["mode"].tolist() == ["P", "LA", "RGBA", "1", "CMYK", "P", "CMYK", "RGB"]


# ---- EXIF orientation ------------------------------------------------------------------------------------

# What a camera stores for each EXIF orientation, from the upright picture (EXIF 2.3, tag 0x0112: where row 0 and
# column 0 of the stored image are); PIL's ROTATE_90 turns counter-clockwise.
STORED = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
          5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
          8: Image.Transpose.ROTATE_270}


def camera_jpeg(path: Path, upright: Image.Image, orientation: int) -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    upright.transpose(STORED[orientation]).save(path, quality=95, exif=exif.tobytes())


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_a_jpeg_with_an_exif_orientation_decodes_upright(tmp_path, orientation):
    upright = smooth_image(400, 640, seed=orientation)
    upright.save(tmp_path / "upright.jpg", quality=95)
    camera_jpeg(tmp_path / "camera.jpg", upright, orientation)
    store = store_of(tmp_path, [tmp_path / "camera.jpg", tmp_path / "upright.jpg"])
    camera, reference = store.pixels[0].astype(int), store.pixels[1].astype(int)
    as_stored = resized(opened(tmp_path / "camera.jpg")).astype(int)  # what was trained on before
    assert np.abs(camera - reference).mean() < 2.0  # JPEG noise only
    assert np.abs(as_stored - reference).mean() > 10 * np.abs(camera - reference).mean()  # the case is not trivial
    sizes = store.properties[["width", "height", "aspect_ratio"]].to_numpy().tolist()
    assert sizes == [[640, 400, 1.6], [640, 400, 1.6]]  # the upright picture's, not the stored 400 x 640


def test_a_sideways_jpeg_is_still_decoded_at_its_dct_scale_then_turned(tmp_path):
    """Orientation is applied to the 1/8-scale draft: the store's pixels are exactly Pillow's draft turned by
    PIL.ImageOps.exif_transpose, which a full-size decode turned and resized would not match."""
    path = tmp_path / "camera.jpg"
    camera_jpeg(path, smooth_image(400, 640, seed=11), orientation=6)
    with Image.open(path) as image:
        image.draft("RGB", (SIZE, SIZE))
        assert image.size == (50, 80)  # 400 x 640 stored, 1/8 scale
        expected = resized(ImageOps.exif_transpose(image))
    with Image.open(path) as image:
        full = resized(ImageOps.exif_transpose(image))
    pixels, props = decode_image(str(path), SIZE)
    assert np.array_equal(pixels, expected)
    assert not np.array_equal(pixels, full)
    assert (props["width"], props["height"]) == (640, 400)


DAMAGED_EXIF = {  # the APP1 block after "Exif\0\0": a little-endian TIFF header, then one IFD
    "IFD offset past the end": b"II*\0" + bytes(range(256)) * 3,
    "orientation stored as text": b"II*\0\x08\0\0\0\x01\0\x12\x01\x02\0\x04\0\0\0abc\0\0\0\0\0",
}


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")  # Pillow's, while opening the file
@pytest.mark.parametrize("case", DAMAGED_EXIF)
def test_a_damaged_exif_block_leaves_the_jpeg_readable_as_stored(tmp_path, case):
    """Reading the orientation must not make an image with garbage metadata unreadable (a guard for the above)."""
    picture = smooth_image(60, 90, seed=5)
    path = tmp_path / "odd-exif.jpg"
    picture.save(path, quality=95, exif=b"Exif\0\0" + DAMAGED_EXIF[case])
    plain = tmp_path / "plain.jpg"
    picture.save(plain, quality=95)
    store = store_of(tmp_path, [path, plain])
    assert store.problems == {} and np.array_equal(store.pixels[0], store.pixels[1])


# ---- cache entries checked by content -----------------------------------------------------------------------

def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """BMPs: uncompressed, so every picture of one width and height has the same byte size."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img_{i}.bmp" for i in range(n)]
    for i, path in enumerate(paths):
        smooth_image(24, 36, seed + i).save(path)
    return paths


def rewrite_pixels_npy(folder: Path) -> None:
    """Other pixels, same shape, same byte size: the rows in reverse order."""
    pixels = np.load(folder / "pixels.npy")
    np.save(folder / "pixels.npy", np.ascontiguousarray(pixels[::-1]))


def rewrite_properties_npz(folder: Path) -> None:
    """Other numbers, same arrays, same byte size (np.savez stores them uncompressed)."""
    with np.load(folder / "properties.npz") as saved:
        arrays = {name: saved[name] for name in saved.files}
    arrays["numbers"] = arrays["numbers"] + 1.0
    np.savez(folder / "properties.npz", **arrays)


@pytest.mark.parametrize("name, rewrite", [("pixels.npy", rewrite_pixels_npy),
                                           ("properties.npz", rewrite_properties_npz)])
def test_a_cache_file_rewritten_with_other_bytes_of_the_same_size_is_detected_and_rebuilt(tmp_path, name, rewrite):
    paths = make_images(tmp_path / "images", 4)
    first = store_of(tmp_path, paths)
    folder, pixels, properties = first.folder, np.array(first.pixels), first.properties.copy()
    del first
    size = (folder / name).stat().st_size
    rewrite(folder)
    assert (folder / name).stat().st_size == size  # the case is what it says
    with pytest.warns(StaleCacheWarning, match=rf"{name} does not match its sha256.*rebuilding"):
        rebuilt = store_of(tmp_path, paths)
    assert rebuilt.cache_status == "miss" and rebuilt.folder == folder
    assert np.array_equal(np.asarray(rebuilt.pixels), pixels) and rebuilt.properties.equals(properties)
    assert store_of(tmp_path, paths).cache_status == "hit"


def replace_in_place(path: Path, new: Path) -> None:
    path.write_bytes(new.read_bytes())  # same inode, like `cp -p` over an existing file


def replace_by_rename(path: Path, new: Path) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    shutil.copyfile(new, temporary)
    os.replace(temporary, path)  # a new inode, like `rsync -t` or re-extracting an archive


@pytest.mark.parametrize("replace", [replace_in_place, replace_by_rename])
def test_a_source_image_replaced_by_one_of_the_same_size_with_its_mtime_restored_makes_a_new_entry(tmp_path, replace):
    from pipeline.data import streams as data

    paths = make_images(tmp_path / "images", 3)
    other = make_images(tmp_path / "other", 1, seed=50)[0]
    first = store_of(tmp_path, paths)
    fingerprint = data.fingerprint([str(p) for p in paths])
    before = os.stat(paths[1])
    replace(paths[1], other)
    os.utime(paths[1], ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(paths[1])
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)  # the case is what it says
    changed = store_of(tmp_path, paths)
    assert changed.cache_status == "miss" and changed.folder != first.folder
    assert np.array_equal(changed.pixels[1], resized(opened(other)))
    assert not np.array_equal(changed.pixels[1], first.pixels[1])
    assert np.array_equal(changed.pixels[[0, 2]], first.pixels[[0, 2]])
    assert data.fingerprint([str(p) for p in paths]) != fingerprint  # so the teacher cache follows


def test_a_file_touched_or_chmodded_with_the_same_bytes_keeps_its_entry_and_fingerprint(tmp_path):
    """The other side of keying by content: metadata alone rebuilds nothing and retrains nothing."""
    from pipeline.data import streams as data

    paths = make_images(tmp_path / "images", 3)
    first = store_of(tmp_path, paths)
    fingerprint = data.fingerprint([str(p) for p in paths])
    os.utime(paths[0], ns=(1_000_000_000, 1_000_000_000))
    paths[2].chmod(0o600)
    again = store_of(tmp_path, paths)
    assert again.cache_status == "hit" and again.folder == first.folder
    assert data.fingerprint([str(p) for p in paths]) == fingerprint


def test_the_run_fingerprint_from_the_stores_digests_equals_hashing_the_files(tmp_path):
    """items.py passes the digests the stores computed, so a run reads each file once; the result must not differ."""
    from pipeline.data import streams as data
    from pipeline.data.image_store import build_store

    paths = []
    for i in range(4):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(path)
        paths.append(str(path))
    paths.append(str(tmp_path / "missing.png"))
    store = build_store(paths, 16, tmp_path / "cache", "train")
    assert data.fingerprint(store.paths, store.file_digests) == data.fingerprint(paths)
