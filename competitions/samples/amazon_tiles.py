"""Drawing one 64x64 tile of the Amazon sample from its tags: one painter per tag, then the weather and, for
the private set, its shift. What each tag looks like is described in competitions/samples/amazon.py, which
draws the tags; deterministic given the generator.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

TILE = 64
PRIVATE_VEIL = (0.05, 0.12)  # extra haze on every private tile
PRIVATE_BRIGHTEN = 10.0  # and a brighter sensor


def render_tile(rng: np.random.Generator, tags: tuple[str, ...], shifted: bool = False) -> Image.Image:
    """A TILE x TILE RGB image showing `tags`; `shifted` adds the private set's haze and brightness."""
    tags = set(tags)
    if "primary" in tags:
        img = _texture(rng, (34, 68, 36), 14, 6) + _texture(rng, (0, 0, 0), 8, 24)
    else:
        img = _texture(rng, (118, 112, 78), 16, 5)
    painters = (("bare_ground", _bare_ground), ("agriculture", _agriculture), ("cultivation", _cultivation),
                ("conventional_mine", _conventional_mine), ("water", _water), ("artisinal_mine", _artisinal_mine),
                ("road", _road), ("habitation", _habitation), ("selective_logging", _selective_logging),
                ("blow_down", _blow_down), ("slash_burn", _slash_burn), ("blooming", _blooming))
    for tag, paint in painters:
        if tag in tags:
            img = paint(rng, img)
    if "haze" in tags:
        img = _veil(img, rng.uniform(0.35, 0.55), (196, 198, 206))
    if "partly_cloudy" in tags:
        img = _clouds(rng, img, cover=rng.uniform(0.15, 0.45))
    if "cloudy" in tags:
        img = _clouds(rng, img, cover=rng.uniform(0.88, 1.0))
    if shifted:
        img = _veil(img, rng.uniform(*PRIVATE_VEIL), (205, 205, 212)) + PRIVATE_BRIGHTEN
    img = img * rng.uniform(0.9, 1.1) + rng.normal(0, 3.5, img.shape)
    img = np.rot90(img, k=int(rng.integers(4)))
    if rng.random() < 0.5:
        img = img[:, ::-1]
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


# ---- painters: each takes and returns a float (TILE, TILE, 3) image ----------------------------------
def _texture(rng: np.random.Generator, colour: tuple[int, int, int], amplitude: float, cells: int) -> np.ndarray:
    """Colour plus smooth noise with about `cells` blobs across the tile."""
    noise = _smooth_noise(rng, cells) - 0.5
    return np.asarray(colour, dtype=np.float32) + amplitude * 2 * noise[..., None] * rng.uniform(0.7, 1.3, 3)


def _smooth_noise(rng: np.random.Generator, cells: int) -> np.ndarray:
    small = Image.fromarray(rng.random((cells, cells)).astype(np.float32), mode="F")
    return np.asarray(small.resize((TILE, TILE), Image.BICUBIC), dtype=np.float32).clip(0, 1)


def _mask(draw_fn, blur: float = 0.0) -> np.ndarray:
    """A [0, 1] mask drawn with PIL (deterministic), optionally softened."""
    canvas = Image.new("L", (TILE, TILE), 0)
    draw_fn(ImageDraw.Draw(canvas))
    if blur:
        canvas = canvas.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(canvas, dtype=np.float32)[..., None] / 255.0


def _paint(img: np.ndarray, mask: np.ndarray, colour, jitter: float = 8.0, rng: np.random.Generator | None = None) -> np.ndarray:
    colour = np.asarray(colour, dtype=np.float32)
    if rng is not None:
        colour = colour + rng.normal(0, jitter, 3)
    return img * (1 - mask) + colour * mask


def _point(rng: np.random.Generator, margin: int = 8) -> tuple[int, int]:
    return int(rng.integers(margin, TILE - margin)), int(rng.integers(margin, TILE - margin))


def _agriculture(rng, img):
    """Straight-edged fields in a few flat colours covering a large part of the tile."""
    x0, y0 = int(rng.integers(-10, 20)), int(rng.integers(-10, 20))
    w, h = int(rng.integers(8, 16)), int(rng.integers(8, 16))
    palette = [(128, 160, 84), (170, 152, 102), (150, 172, 92), (186, 170, 120)]
    for gx in range(int(rng.integers(2, 5))):
        for gy in range(int(rng.integers(2, 5))):
            if rng.random() < 0.8:
                box = (x0 + gx * (w + 1), y0 + gy * (h + 1), x0 + gx * (w + 1) + w, y0 + gy * (h + 1) + h)
                mask = _mask(lambda d, b=box: d.rectangle(b, fill=255))
                img = _paint(img, mask, palette[int(rng.integers(len(palette)))], rng=rng)
    return img


def _cultivation(rng, img):
    """Two to four small, ragged clearings."""
    for _ in range(int(rng.integers(2, 5))):
        cx, cy = _point(rng, 6)
        rx, ry = int(rng.integers(3, 6)), int(rng.integers(2, 5))
        mask = _mask(lambda d: d.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=255), blur=0.8)
        img = _paint(img, mask, (140, 118, 72), rng=rng)
    return img


def _water(rng, img):
    """A dark meandering river or a lake."""
    if rng.random() < 0.7:
        amp, phase, freq = rng.uniform(3, 12), rng.uniform(0, 6.3), rng.uniform(0.05, 0.15)
        y0, width = rng.uniform(12, 52), int(rng.integers(3, 7))
        xs = np.arange(-2, TILE + 3, 2)
        pts = [(float(x), float(y0 + amp * np.sin(freq * x + phase))) for x in xs]
        mask = _mask(lambda d: d.line(pts, fill=255, width=width), blur=0.6)
    else:
        cx, cy = _point(rng, 14)
        rx, ry = int(rng.integers(7, 14)), int(rng.integers(5, 11))
        mask = _mask(lambda d: d.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=255), blur=1.0)
    return _paint(img, mask, (26, 44, 72), rng=rng)


def _road(rng, img):
    """One or two thin pale lines crossing the tile."""
    for _ in range(int(rng.integers(1, 3))):
        a = (float(rng.uniform(0, TILE)), -2.0)
        b = (float(rng.uniform(0, TILE)), TILE + 2.0)
        if rng.random() < 0.5:
            a, b = a[::-1], b[::-1]
        mask = _mask(lambda d: d.line([a, b], fill=255, width=int(rng.integers(1, 3))))
        img = _paint(img, mask * rng.uniform(0.75, 0.95), (196, 176, 144), rng=rng)
    return img


def _habitation(rng, img):
    """A cluster of small bright roofs."""
    cx, cy = _point(rng, 10)
    for _ in range(int(rng.integers(8, 20))):
        x, y = cx + int(rng.normal(0, 5)), cy + int(rng.normal(0, 5))
        s = int(rng.integers(1, 3))
        roof = (228, 226, 220) if rng.random() < 0.6 else (196, 98, 74)
        img = _paint(img, _mask(lambda d: d.rectangle((x, y, x + s, y + s), fill=255)), roof, rng=rng)
    return img


def _bare_ground(rng, img):
    cx, cy = _point(rng, 12)
    rx, ry = int(rng.integers(8, 14)), int(rng.integers(6, 12))
    mask = _mask(lambda d: d.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=255), blur=2.0)
    return _paint(img, mask, (190, 152, 110), rng=rng)


def _selective_logging(rng, img):
    """Short, thin, branching tracks inside the forest."""
    x, y = _point(rng, 16)
    for _ in range(int(rng.integers(4, 8))):
        angle = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(5, 12)
        end = (x + length * np.cos(angle), y + length * np.sin(angle))
        mask = _mask(lambda d: d.line([(x, y), end], fill=255, width=1))
        img = _paint(img, mask * 0.8, (128, 132, 84), rng=rng)
        if rng.random() < 0.6:
            x, y = end
    return img


def _blooming(rng, img):
    """Scattered yellow or pink crowns."""
    colour = (232, 214, 110) if rng.random() < 0.6 else (222, 150, 190)
    for _ in range(int(rng.integers(14, 30))):
        x, y = int(rng.integers(0, TILE - 2)), int(rng.integers(0, TILE - 2))
        img = _paint(img, _mask(lambda d: d.rectangle((x, y, x + 1, y + 1), fill=255)), colour, rng=rng)
    return img


def _blow_down(rng, img):
    """A patch of light, flattened forest with parallel diagonal streaks."""
    x0, y0 = _point(rng, 14)
    w, h = int(rng.integers(10, 18)), int(rng.integers(10, 18))
    patch = _mask(lambda d: d.rectangle((x0 - w // 2, y0 - h // 2, x0 + w // 2, y0 + h // 2), fill=255), blur=1.0)
    img = _paint(img, patch, (92, 128, 62), rng=rng)

    def streaks(d):
        for k in range(-h, w, 3):
            d.line([(x0 - w // 2 + k, y0 - h // 2), (x0 - w // 2 + k + h, y0 + h // 2)], fill=255, width=1)

    return _paint(img, _mask(streaks) * patch * 0.7, (150, 160, 110))


def _slash_burn(rng, img):
    """A charred patch with a pale smoke plume."""
    cx, cy = _point(rng, 10)
    r = int(rng.integers(4, 8))
    img = _paint(img, _mask(lambda d: d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255), blur=1.0), (46, 40, 40), rng=rng)
    dx, dy = rng.uniform(-1, 1, 2) * 10
    smoke = _mask(lambda d: d.ellipse((cx + dx - r, cy + dy - r, cx + dx + r, cy + dy + r), fill=255), blur=3.0)
    return _paint(img, smoke * 0.6, (178, 172, 168))


def _artisinal_mine(rng, img):
    """Small orange and turquoise pools."""
    cx, cy = _point(rng, 10)
    for _ in range(int(rng.integers(3, 6))):
        x, y = cx + int(rng.normal(0, 4)), cy + int(rng.normal(0, 4))
        r = int(rng.integers(1, 3))
        colour = (206, 124, 62) if rng.random() < 0.6 else (92, 176, 164)
        img = _paint(img, _mask(lambda d: d.ellipse((x - r, y - r, x + r, y + r), fill=255)), colour, rng=rng)
    return img


def _conventional_mine(rng, img):
    """A large grey open pit with terraces."""
    cx, cy = _point(rng, 16)
    r = int(rng.integers(10, 15))
    img = _paint(img, _mask(lambda d: d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255), blur=1.0), (168, 166, 160), rng=rng)
    rings = _mask(lambda d: [d.ellipse((cx - k, cy - k, cx + k, cy + k), outline=255) for k in range(3, r, 3)])
    return _paint(img, rings * 0.6, (104, 100, 96))


def _veil(img: np.ndarray, alpha: float, colour) -> np.ndarray:
    return img * (1 - alpha) + np.asarray(colour, dtype=np.float32) * alpha


def _clouds(rng: np.random.Generator, img: np.ndarray, cover: float) -> np.ndarray:
    """Soft white clouds over about `cover` of the tile, with their shadows offset beside them."""
    noise = _smooth_noise(rng, int(rng.integers(3, 6)))
    cut = np.quantile(noise, 1 - cover)
    mask = np.clip((noise - cut) / 0.08, 0, 1)[..., None]
    shadow = np.roll(mask, (3, 3), axis=(0, 1))
    img = img * (1 - 0.35 * shadow)
    cloud = _texture(rng, (226, 226, 232), 10, 8)
    return img * (1 - mask) + cloud * mask
