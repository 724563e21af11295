"""A small, procedural data set in the exact Kaggle fisheries layout, with answers.

Fish species differ in body shape, size, colour and fins (the three tunas look alike on purpose); scenes
are decks of several boats seen by fixed cameras, by day and (15%) at night through a green night-vision
camera; classes are as imbalanced as on Kaggle. The public test set (stage 1) is drawn like train; the
private one (stage 2) is half from boats never seen in training and 40% at night: the shift that
pseudo-labeling the test set can adapt to, and that the shift check should flag.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from pipeline.files import write_csv_atomic

CLASSES = ["ALB", "BET", "DOL", "LAG", "NoF", "OTHER", "SHARK", "YFT"]
# Kaggle's train counts (3777 images), used as class proportions for every split.
KAGGLE_COUNTS = {"ALB": 1719, "BET": 200, "DOL": 117, "LAG": 67, "NoF": 465, "OTHER": 299, "SHARK": 176, "YFT": 734}
WIDTH, HEIGHT = 128, 80


@dataclass(frozen=True)
class SampleSize:
    train: int = 640
    public: int = 240
    private: int = 400
    train_boats: int = 6
    new_boats: int = 3
    night_share_train: float = 0.15
    night_share_private: float = 0.4
    new_boat_share_private: float = 0.5


SMALL = SampleSize(train=160, public=48, private=64, train_boats=3, new_boats=2)  # for tests: a few dozen per group


@dataclass(frozen=True)
class Boat:
    deck: tuple[int, int, int]
    plank_angle: float
    plank_gap: int
    fixtures: tuple[tuple[int, int, int, int, tuple[int, int, int]], ...]  # x0, y0, x1, y1, colour


def write_fisheries_sample(out_dir: Path, seed: int = 0, size: SampleSize = SampleSize()) -> None:
    """Write out_dir/data (train/<CLASS>/, test_stg1/, test_stg2/, sample submissions) and out_dir/solution.csv."""
    rng = np.random.default_rng(seed)
    data = out_dir / "data"
    boats = [_make_boat(rng) for _ in range(size.train_boats + size.new_boats)]
    train_boats, new_boats = boats[: size.train_boats], boats[size.train_boats:]

    labels = _class_draw(rng, size.train, minimum=8)
    for number, label in enumerate(labels):
        night = rng.random() < size.night_share_train
        image = render_scene(rng, label, train_boats[rng.integers(len(train_boats))], night)
        _save(image, data / "train" / label / f"img_{number:05d}.jpg")

    solution = []
    for number, label in enumerate(_class_draw(rng, size.public, minimum=2)):
        night = rng.random() < size.night_share_train
        image = render_scene(rng, label, train_boats[rng.integers(len(train_boats))], night)
        name = f"img_{size.train + number:05d}.jpg"
        _save(image, data / "test_stg1" / name)
        solution.append((name, label, "Public"))
    for number, label in enumerate(_class_draw(rng, size.private, minimum=2)):
        pool = new_boats if rng.random() < size.new_boat_share_private else train_boats
        night = rng.random() < size.night_share_private
        image = render_scene(rng, label, pool[rng.integers(len(pool))], night)
        name = f"image_{number + 1:05d}.jpg"
        _save(image, data / "test_stg2" / name)
        solution.append((f"test_stg2/{name}", label, "Private"))

    ids = [row[0] for row in solution]
    uniform = np.full((len(ids), len(CLASSES)), 1 / len(CLASSES))
    stage1 = [i for i in ids if not i.startswith("test_stg2/")]
    write_csv_atomic(data / "sample_submission_stg1.csv", _table(stage1, uniform[: len(stage1)]))
    write_csv_atomic(data / "sample_submission_stg2.csv", _table(ids, uniform))
    one_hot = np.array([[float(label == c) for c in CLASSES] for _, label, _ in solution])
    answers = _table(ids, one_hot)
    answers["Usage"] = [usage for _, _, usage in solution]
    write_csv_atomic(out_dir / "solution.csv", answers)


def render_scene(rng: np.random.Generator, label: str, boat: Boat, night: bool) -> Image.Image:
    """One camera frame: the boat's deck, clutter, maybe a fish of class `label`, day or night lighting."""
    image = _deck(rng, boat)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(0, 3)):  # buckets, ropes, gloves
        x, y = rng.integers(0, WIDTH), rng.integers(0, HEIGHT)
        r = int(rng.integers(4, 10))
        colour = tuple(int(v) for v in rng.integers(30, 230, 3))
        if rng.random() < 0.5:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
        else:
            draw.line([x, y, x + rng.integers(-30, 30), y + rng.integers(-20, 20)], fill=colour, width=2)
    if label != "NoF":
        fish = _fish(rng, label)
        angle = float(rng.uniform(0, 360))
        fish = fish.rotate(angle, resample=Image.BILINEAR, expand=True)
        x = int(rng.integers(-fish.width // 6, max(1, WIDTH - fish.width * 5 // 6)))
        y = int(rng.integers(-fish.height // 6, max(1, HEIGHT - fish.height * 5 // 6)))
        image.paste(fish, (x, y), fish)
        if rng.random() < 0.3:  # a fisherman's arm over part of the catch
            arm = tuple(int(v) for v in rng.integers(60, 255, 3))
            ax, ay = x + fish.width // 2, y + fish.height // 2
            draw.rectangle([ax, ay, ax + rng.integers(8, 20), ay + rng.integers(20, 50)], fill=arm)
    return _night_vision(rng, image) if night else _daylight(rng, image)


def _make_boat(rng: np.random.Generator) -> Boat:
    deck = tuple(int(v) for v in rng.integers(70, 220, 3))
    fixtures = []
    for _ in range(rng.integers(2, 5)):
        x0, y0 = int(rng.integers(0, WIDTH - 10)), int(rng.integers(0, HEIGHT - 10))
        fixtures.append((x0, y0, x0 + int(rng.integers(8, 50)), y0 + int(rng.integers(5, 30)),
                         tuple(int(v) for v in rng.integers(20, 240, 3))))
    return Boat(deck, float(rng.uniform(0, 180)), int(rng.integers(5, 14)), tuple(fixtures))


def _deck(rng: np.random.Generator, boat: Boat) -> Image.Image:
    deck = np.clip(np.array(boat.deck) + rng.normal(0, 8, 3), 0, 255)
    image = Image.new("RGB", (WIDTH, HEIGHT), tuple(int(v) for v in deck))
    draw = ImageDraw.Draw(image)
    direction = np.deg2rad(boat.plank_angle)
    dx, dy = np.cos(direction), np.sin(direction)
    plank = tuple(int(v) for v in deck * 0.75)
    offset = rng.integers(0, boat.plank_gap)
    for k in range(-20, 40):  # parallel plank seams across the frame
        cx, cy = WIDTH / 2 - dy * (k * boat.plank_gap + offset - 100), HEIGHT / 2 + dx * (k * boat.plank_gap + offset - 100)
        draw.line([cx - dx * 200, cy - dy * 200, cx + dx * 200, cy + dy * 200], fill=plank, width=1)
    shift = rng.integers(-4, 5, 2)  # the camera is fixed, but not rigidly
    for x0, y0, x1, y1, colour in boat.fixtures:
        draw.rectangle([x0 + shift[0], y0 + shift[1], x1 + shift[0], y1 + shift[1]], fill=colour)
    return image


def _jitter(rng: np.random.Generator, colour: tuple[int, int, int], spread: float = 18) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(np.array(colour) + rng.normal(0, spread, 3), 0, 255))


def _fish(rng: np.random.Generator, label: str) -> Image.Image:
    """A fish drawn head-right on a transparent canvas; shape, size and colour depend on the species."""
    spec = {  # length as a share of the frame width, height/length, body colour, accent colour
        "ALB": (0.50, 0.26, (70, 85, 110), (190, 195, 205)),
        "BET": (0.46, 0.36, (45, 55, 95), (160, 150, 90)),
        "YFT": (0.50, 0.28, (65, 80, 105), (225, 200, 40)),
        "DOL": (0.44, 0.30, (80, 170, 70), (40, 90, 200)),
        "LAG": (0.36, 0.62, (200, 70, 60), (240, 235, 230)),
        "SHARK": (0.62, 0.17, (120, 125, 130), (95, 100, 105)),
        "OTHER": (0.26, float(rng.uniform(0.2, 0.5)), tuple(int(v) for v in rng.integers(40, 230, 3)), tuple(int(v) for v in rng.integers(40, 230, 3))),
    }[label]
    share, aspect, body, accent = spec
    length = int(WIDTH * share * rng.uniform(0.8, 1.2))
    height = max(4, int(length * aspect * rng.uniform(0.9, 1.1)))
    body, accent = _jitter(rng, body), _jitter(rng, accent)
    canvas = Image.new("RGBA", (length * 2, length * 2), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    cx, cy = length, length
    left, right, top, bottom = cx - length // 2, cx + length // 2, cy - height // 2, cy + height // 2
    tail = max(4, length // 5)
    draw.polygon([(left + 2, cy), (left - tail, cy - height // 2 - tail // 3), (left - tail, cy + height // 2 + tail // 3)], fill=body)
    if label == "SHARK":  # tall triangular dorsal fin
        draw.polygon([(cx - length // 8, top + 1), (cx + length // 10, top - height), (cx + length // 6, top + 1)], fill=body)
    if label == "DOL":  # a dorsal fin running the length of the back, blunt head
        draw.rectangle([left + length // 8, top - height // 4, right - length // 6, top + 1], fill=accent)
    if label == "YFT":  # long yellow sickle fins
        draw.polygon([(cx, top + 1), (cx + length // 6, top - height // 1.2), (cx + length // 5, top + 1)], fill=accent)
        draw.polygon([(cx, bottom - 1), (cx + length // 6, bottom + height // 1.2), (cx + length // 5, bottom - 1)], fill=accent)
    draw.ellipse([left, top, right, bottom], fill=body)
    if label == "DOL":
        draw.rectangle([right - length // 6, top + height // 8, right, bottom - height // 8], fill=body)
    if label in ("ALB", "BET", "YFT"):  # silver belly / stripe
        draw.ellipse([left + length // 8, cy, right - length // 8, bottom - 1], fill=accent if label != "YFT" else (200, 205, 210))
    if label == "YFT":
        draw.line([left + length // 6, cy - height // 8, right - length // 6, cy - height // 8], fill=accent, width=max(1, height // 8))
    if label == "ALB":  # the albacore's very long pectoral fin
        draw.polygon([(cx - length // 10, cy), (cx + length // 2.5, cy + height // 6), (cx - length // 10, cy + height // 5)], fill=(40, 50, 70))
    if label in ("LAG", "DOL"):
        for _ in range(6):
            sx, sy = rng.integers(left + 3, right - 3), rng.integers(top + 3, bottom - 3)
            draw.ellipse([sx - 2, sy - 2, sx + 2, sy + 2], fill=accent)
    eye = max(2, height // (3 if label == "BET" else 6))
    ex = right - length // 8
    draw.ellipse([ex - eye, cy - height // 5 - eye, ex + eye, cy - height // 5 + eye], fill=(15, 15, 15))
    return canvas.crop(canvas.getbbox())


def _daylight(rng: np.random.Generator, image: Image.Image) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32) * rng.uniform(0.85, 1.15)
    pixels += rng.normal(0, 4, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _night_vision(rng: np.random.Generator, image: Image.Image) -> Image.Image:
    """Green monochrome, dim and grainy: colour cues are gone, shapes remain."""
    grey = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    grey = grey ** rng.uniform(1.3, 1.8) * rng.uniform(0.5, 0.8)
    pixels = np.stack([grey * 0.35, grey, grey * 0.4], axis=-1) * 255
    pixels += rng.normal(0, 10, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))


def _class_draw(rng: np.random.Generator, count: int, minimum: int) -> list[str]:
    total = sum(KAGGLE_COUNTS.values())
    counts = {c: max(minimum, round(count * KAGGLE_COUNTS[c] / total)) for c in CLASSES}
    counts["ALB"] += count - sum(counts.values())  # the majority class absorbs rounding
    labels = [c for c in CLASSES for _ in range(counts[c])]
    return [labels[i] for i in rng.permutation(len(labels))]


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=90)


def _table(ids: list[str], values: np.ndarray) -> pd.DataFrame:
    table = pd.DataFrame(values, columns=CLASSES)
    table.insert(0, "image", ids)
    return table
