"""--adapt-bn foreign: which test images get batch-norm statistics of their own (pipeline/method/adaptation.py)."""
import numpy as np
import pandas as pd
import pytest

from pipeline.data.image_properties import NUMERIC_PROPERTIES
from pipeline.method import adaptation


def table(n: int, seed: int, night: bool = False, prefix: str = "img") -> pd.DataFrame:
    """Property rows like the image store's: colour photos of varied brightness, or night-vision frames (grey,
    brightened and green)."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(60, 200, n)
    rgb = np.column_stack([base * 0.25, base, base * 0.3]) if night else np.column_stack([base * 1.05, base, base * 0.9])
    rgb *= rng.normal(1, 0.03, (n, 3))
    values = {name: rng.normal(50, 10, n) for name in NUMERIC_PROPERTIES}
    values.update(mean_intensity=rgb @ [0.299, 0.587, 0.114], contrast=rng.uniform(20, 60, n),
                  red_mean=rgb[:, 0], green_mean=rgb[:, 1], blue_mean=rgb[:, 2],
                  **{f"{c}_rel": rgb[:, i] / rgb.sum(axis=1) for i, c in enumerate(("red", "green", "blue"))})
    frame = pd.DataFrame(values)
    frame.insert(0, "path", [f"{prefix}{i}.png" for i in range(n)])
    return frame


def test_a_group_drawn_like_train_gets_no_adaptation_set_even_when_re_encoded():
    train, group = table(400, 0), table(300, 1, prefix="test")
    group["file_size"] *= 3  # saved in another format: no pixel moved, nothing for batch norm to adapt to
    group["width"] *= 2
    groups = np.full(300, "private")
    out = adaptation.domains("foreign", groups, group["path"].to_numpy(), {"train": train, "private": group}, [])
    foreign = adaptation.foreign_images(train, group)
    assert foreign.mean() < adaptation.MIN_SHARE  # only chance look-alikes, under the share that means a shift
    assert (out == "").all()


def test_in_a_mixed_group_only_the_night_images_are_adapted_and_together():
    train = table(400, 0)
    day, night = table(150, 1, prefix="day"), table(150, 2, night=True, prefix="night")
    group = pd.concat([day, night], ignore_index=True)
    paths = group["path"].to_numpy()
    groups = np.full(len(group), "private")
    out = adaptation.domains("foreign", groups, paths, {"train": train, "private": group}, [])
    is_night = np.char.startswith(paths.astype(str), "night")
    assert (out[is_night] != "").all()
    assert (out[~is_night] != "").mean() < 0.05  # a day image is foreign only by chance
    names = set(out[out != ""])
    assert len(names) == 1 and next(iter(names)).startswith("private foreign (")


def test_group_modes_adapt_whole_groups_and_unknown_modes_are_refused():
    groups = np.array(["public", "private", "private"])
    paths = np.array(["a", "b", "c"])
    assert list(adaptation.domains("all", groups, paths, None, [])) == ["public", "private", "private"]
    assert list(adaptation.domains("shifted", groups, paths, None, ["private"])) == ["", "private", "private"]
    assert list(adaptation.domains("none", groups, paths, None, ["private"])) == ["", "", ""]
    with pytest.raises(ValueError, match="--adapt-bn 'some'"):
        adaptation.domains("some", groups, paths, None, [])
