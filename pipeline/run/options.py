"""The vocabulary of RunConfig's option table: each option's constraint (a function returning a problem sentence, or
None), its declaration (`option`) and its flag. config.py declares the options with these."""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from pipeline.errors import UserError
from pipeline.plugin.api import GROUPS

AUTO = "auto"  # the value of an option the run settles from its data (--folds: pipeline/run/folds.py)


@dataclass(frozen=True)
class Bounds:
    """A numeric option's range, low <= value <= high (whole numbers only when `integer`; also the word auto when
    `auto`, a value the run settles from its data): its constraint, with the bounds readable by tests and messages."""

    low: float
    high: float
    integer: bool = False
    hint: str = ""
    auto: bool = False

    def __call__(self, v) -> str | None:
        number = isinstance(v, int) if self.integer else isinstance(v, (int, float))
        if number and not isinstance(v, bool) and self.low <= v <= self.high:  # also rejects NaN
            return None
        if self.auto and v == AUTO:
            return None
        what = f"an integer >= {self.low} and <= {self.high}" if self.integer else f"between {self.low} and {self.high}"
        return f"must be {what}" + (f", or {AUTO}" if self.auto else "") + (f" ({self.hint})" if self.hint else "")


def integer(low: int, high: int, hint: str = "", auto: bool = False) -> Bounds:
    return Bounds(low, high, integer=True, hint=hint, auto=auto)


def between(low: float, high: float, hint: str = "") -> Bounds:
    return Bounds(low, high, hint=hint)


def one_of(*choices: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def parse_auto_or_int(text: str) -> int | str:
    if text.strip() == AUTO:
        return AUTO
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a whole number or {AUTO}") from None


def groups_subset(v) -> str | None:
    return None if v and all(g in GROUPS for g in v) else f"must be a comma-separated subset of {','.join(GROUPS)}"


def parse_groups(text: str) -> tuple[str, ...]:
    return tuple(g.strip() for g in text.split(",") if g.strip())


def option(default, help: str, *, check=None, teacher: bool = False, parse=None, cli: bool = True, flag: str | None = None):
    """A RunConfig field: default, --help text, constraint, and whether it changes the trained teacher."""
    meta = {"help": help, "check": check, "teacher": teacher, "parse": parse, "cli": cli, "flag": flag}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def parse_options(pairs: list[str]) -> dict[str, str]:
    """--option KEY=VALUE pairs (a plugin's settings) as a dict."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--option {pair!r} must look like KEY=VALUE")
        options[key.strip()] = value.strip()
    return options
