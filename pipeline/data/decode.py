"""The one decode of an image file: readability, shift properties and resized uint8 pixels from a single read.

A JPEG is decoded at the largest DCT scale (1/2, 1/4, 1/8) that still gives at least S pixels a side
(`Image.draft`), turned upright by its EXIF orientation, then resized with an antialiasing filter.
DCT scaling skips the inverse DCT, upsampling and colour conversion of the full image, not the Huffman
decoding of every coefficient, which grows with the file's size: on noisy 240 KiB 1280x720 frames that is
most of the cost (`python -m benchmarks loader --profile` prints each stage).

This is the one definition of "readable": a file is readable when this decoder reads it, and the model only
ever sees what this decoder produced (through the image store, pipeline/data/image_store.py), so a scan and
the loader cannot disagree.
"""
from __future__ import annotations

import collections
import os
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import ExifTags, Image

from pipeline.data.image_properties import MAX_SIDE, PropertyRows, PropertyTable, describe

# What Pillow raises for a missing, truncated, corrupt, unsupported or oversized file (struct.error: a header
# shorter than its fields; the bomb warning when warnings are errors). Anything else is a bug: its traceback shows.
UNREADABLE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError,
                     Image.DecompressionBombWarning)

class UnmappableImageError(ValueError):
    """An image whose pixel values have no fixed mapping to 8 bits (negative, above 16 bits, or float outside 0..1)."""


# PIL.ImageOps.exif_transpose's table: EXIF orientation -> the transposition that makes the image upright.
# Applied here by hand because exif_transpose also rewrites the EXIF bytes, which the store does not keep and
# which could fail on a damaged EXIF block after the pixels had decoded fine.
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}
_SIDEWAYS = (5, 6, 7, 8)  # orientations that swap width and height
_UNSIGNED_16 = ("I;16", "I;16L", "I;16B", "I;16N")


def decode_image(path: str, image_size: int, max_side: int = MAX_SIDE) -> tuple[np.ndarray, dict]:
    """The one decode of an image file: (S x S x 3 uint8 pixels, shift properties) from a single read.

    Raises one of UNREADABLE_ERRORS when the pipeline cannot use the file. The image is turned upright by its
    EXIF orientation, then squashed to a square (no crop), like `tf.image.resize` to (S, S); the properties
    (width and height those of the upright image) are measured on the same decoded copy.
    """
    file_size = os.stat(path).st_size
    with Image.open(path) as image:
        fmt, mode = image.format or "unknown", image.mode
        width, height = image.size
        limit = Image.MAX_IMAGE_PIXELS
        if limit and width * height > limit:  # Pillow only warns between 1x and 2x its limit
            raise Image.DecompressionBombError(
                f"{width}x{height} = {width * height} pixels is over Pillow's limit of {limit} "
                "(PIL.Image.MAX_IMAGE_PIXELS): a decompression bomb or a huge scan; shrink the file")
        image.draft("RGB", (image_size, image_size))  # JPEG only: smallest DCT scale >= image_size a side
        image.load()  # reads every byte: truncated files fail here
        # Orientation after the decode: the drafted (DCT-scaled) copy is turned, never a full-size one. The
        # draft asked for at least S x S, which holds either way round.
        orientation = _exif_orientation(image)
        upright = image.transpose(_UPRIGHT[orientation]) if orientation in _UPRIGHT else image
        if orientation in _SIDEWAYS:
            width, height = height, width
        rgb = _eight_bit_rgb(upright, path)
        props = describe(rgb, width=width, height=height, file_size=file_size, fmt=fmt, mode=mode, max_side=max_side)
        # BILINEAR in Pillow widens its support when shrinking: antialiased, like tf.image.resize(antialias=True)
        pixels = np.asarray(rgb.resize((image_size, image_size), Image.Resampling.BILINEAR), dtype=np.uint8)
    return pixels, props


def _exif_orientation(image: Image.Image) -> int:
    """The EXIF (or XMP) orientation, 1 (as stored) when there is none or it cannot be read.

    A damaged EXIF block leaves the pixels readable: they are used as stored, as before orientation was read,
    rather than refusing an image whose only fault is its metadata.
    """
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except (*UNREADABLE_ERRORS, KeyError, IndexError, TypeError):
        return 1
    return value if isinstance(value, int) and value in _UPRIGHT else 1


def _eight_bit_rgb(image: Image.Image, path: str) -> Image.Image:
    """The decoded image as 8-bit RGB.

    Pillow's convert() clips deeper greys to 0..255 instead of scaling them: a 16-bit greyscale PNG came out
    white nearly everywhere, a float image in 0..1 black. Those modes are scaled here by a fixed range, never by
    each image's own minimum and maximum, so one grey level means the same in every image of a data set
    (stretching each image would make a dark scan as bright as a light one):
    - 16-bit (I;16, I;16B, ...): 0..65535 onto 0..255 by the high byte, as image viewers show it, as Pillow
      reduces 16-bit RGB PNGs and as tf.image.convert_image_dtype(uint16 -> uint8) does. Data of 12 bits or
      fewer stored in 16 (raw scanner values) therefore decodes dark, with up to 16 grey levels.
    - 32-bit int (I): Pillow's mode for 16-bit PGMs (already scaled by it to 0..65535) and integer TIFFs: the
      same 16-bit scale; values below 0 or above 65535 (signed data such as CT Hounsfield units) have no fixed
      mapping and are refused, naming the range.
    - 32-bit float (F): 0..1 onto 0..255 (the convention of tf.image.convert_image_dtype and scikit-image);
      values outside 0..1, NaN or infinite are refused.
    Every other mode (1, L, P, LA, PA, RGBA, CMYK, YCbCr, ...) is converted by Pillow, which maps it correctly.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode not in (*_UNSIGNED_16, "I", "F"):
        return image.convert("RGB")
    values = np.asarray(image)
    if values.size == 0:
        raise ValueError("image has no pixels")
    if mode == "F":
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if finite.size < values.size or low < 0 or high > 1:
            found = (f"values from {low:g} to {high:g}" if finite.size else "no finite values") + (
                " and NaN or infinity" if 0 < finite.size < values.size else "")
            raise UnmappableImageError(
                f"{path} is a 32-bit float image (mode F) with {found}; only floats from 0 to 1 have a fixed 8-bit "
                "scale: save it as an 8- or 16-bit image, or as floats scaled to 0..1")
        grey = np.rint(values * 255).astype(np.uint8)
    else:
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:  # only mode I can hold these
            raise UnmappableImageError(
                f"{path} is a 32-bit integer image (mode {mode}) with values from {low} to {high}; only 0..65535 "
                "has a fixed 8-bit scale (16-bit): window or rescale it into an 8- or 16-bit image first")
        grey = (values.astype(np.uint16) >> 8).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB")


def image_problem(path: str, image_size: int = 64) -> str | None:
    """Why the pipeline cannot use an image file, or None when it decodes."""
    try:
        decode_image(path, image_size)
    except UNREADABLE_ERRORS as error:
        return f"{type(error).__name__}: {error}"
    return None


def _decode_or_problem(path: str, image_size: int, max_side: int) -> tuple[np.ndarray | None, dict | None, str | None]:
    try:
        pixels, props = decode_image(path, image_size, max_side)
    except UNREADABLE_ERRORS as error:
        return None, None, f"{type(error).__name__}: {error}"
    return pixels, props, None


def decode_all(paths: Sequence[str], image_size: int, max_side: int = MAX_SIDE,
               workers: int | None = None) -> Iterator[tuple[np.ndarray | None, dict | None, str | None]]:
    """(pixels, properties, problem) for every path, in order, decoded by a pool of threads.

    At most a few batches are in flight, so a million paths never become a million pending results.
    """
    # default: ThreadPoolExecutor's, a few more threads than cores, which keeps the cores busy while files are read
    workers = min(32, (os.cpu_count() or 1) + 4) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    window = 16 * workers
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: collections.deque = collections.deque()
        for path in paths:
            pending.append(pool.submit(_decode_or_problem, path, image_size, max_side))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def measure_images(paths: Sequence[str], *, workers: int = 2, max_side: int = MAX_SIDE, label: str = "images",
                   progress_every: int = 500, log: Callable[[str], None] = print) -> PropertyTable:
    """Shift properties of image files without caching pixels (the shift check on bare paths).

    Decoded by the same function as the store, at max_side, so the properties equal the store's for
    images no bigger than the store's size and agree closely for larger JPEGs (a coarser DCT scale).
    """
    paths = [str(p) for p in paths]
    total = len(paths)
    rows = PropertyRows(total)
    unreadable: list[tuple[str, str]] = []
    started = time.perf_counter()
    for index, (_, props, problem) in enumerate(decode_all(paths, max_side, max_side, workers)):
        if problem is None:
            rows.add(index, props)
        else:
            unreadable.append((paths[index], problem))
        done = index + 1
        if progress_every and total >= progress_every and (done % progress_every == 0 or done == total):
            rate = done / max(time.perf_counter() - started, 1e-9)
            log(f"shift: {label}: {done}/{total} images measured ({rate:.0f}/s, {len(unreadable)} unreadable)")
    return PropertyTable(table=rows.frame(paths), unreadable=unreadable)
