"""`submit`'s options, generated from the option table (pipeline/run/config.py), so a new option is tested for free:
every option parses its default into the table's default, every constraint refuses a value outside it with one
`error:` line naming the flag (and accepts its own bounds and choices), and every option is in `submit --help` with
its help text and default. Nothing here trains a model: a refused option stops before any work starts."""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest

from pipeline.__main__ import build_parser, main
from pipeline.run.config import Bounds, RunConfig, config_from_args, flag_of

OPTIONS = [f for f in dataclasses.fields(RunConfig) if f.metadata.get("cli")]
CHECKED = [f for f in OPTIONS if f.metadata.get("check")]
BOUNDED = [f for f in CHECKED if isinstance(f.metadata["check"], Bounds)]
REQUIRED = ("competition", "data")  # given in every command line below: their table default "" is no setting
BASE = ["--competition", "fisheries", "--data", "DATA"]
TABLE = RunConfig(competition="fisheries", data="DATA")


def submit_parser():
    return next(a for a in build_parser()._actions if a.dest == "command").choices["submit"]


def parsed(*args: str) -> RunConfig:
    """The RunConfig of `submit --competition fisheries --data DATA ARGS`, as the command builds it."""
    return config_from_args(build_parser().parse_args(["submit", *BASE, *args]))


def typed(f: dataclasses.Field, value) -> list[str]:
    """`value` as typed on the command line: [] where the option cannot say it (its absence is its default)."""
    flag = flag_of(f)
    if value is None or f.name in ("record", "plugin_options"):  # --no-ledger and --option only add
        return []
    if isinstance(value, bool):
        return [flag if value else "--no-" + flag[2:]]
    if isinstance(value, tuple):
        return [flag, ",".join(value)]
    return [flag, repr(value) if isinstance(value, float) else str(value)]


def refused(tmp_path, capsys, f: dataclasses.Field, text: str) -> str:
    """`submit FLAG TEXT` ends in exit 2 and one `error:` line naming the flag; that line, and no run folder."""
    runs = tmp_path / "runs"
    assert main(["submit", "--competition", "fisheries", "--data", str(tmp_path), "--no-ledger", "--runs-dir",
                 str(runs), f"{flag_of(f)}={text}"]) == 2  # FLAG=TEXT: argparse reads -5e-324 as a flag
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert lines[0].startswith(f"error: {flag_of(f)} must be "), lines[0]
    assert not runs.exists()
    return lines[0]


# ---- defaults ---------------------------------------------------------------------------------------------

def test_with_no_option_given_the_command_line_builds_the_tables_defaults():
    assert parsed() == TABLE


@pytest.mark.parametrize("f", [f for f in OPTIONS if f.name not in REQUIRED], ids=flag_of)
def test_every_option_given_its_default_parses_to_the_tables_default(f):
    value = getattr(parsed(*typed(f, getattr(TABLE, f.name))), f.name)
    assert value == getattr(TABLE, f.name) and type(value) is type(getattr(TABLE, f.name)), value


def test_the_default_run_and_cache_folders_are_the_repositorys_submissions_and_cache():
    """Where README, Makefile and .gitignore say a run goes (submissions/ and cache/ beside pipeline/)."""
    repo = Path(__file__).resolve().parent.parent
    assert (TABLE.runs_dir, TABLE.cache_dir) == (str(repo / "submissions"), str(repo / "cache"))


# ---- constraints ------------------------------------------------------------------------------------------

def test_every_numeric_option_has_a_finite_range_that_holds_its_default():
    numeric = {f.name for f in OPTIONS if f.type in ("int", "float", "int | str")}  # int | str: a number or auto
    assert numeric and numeric == {f.name for f in BOUNDED}, numeric ^ {f.name for f in BOUNDED}
    for f in BOUNDED:
        b, default = f.metadata["check"], getattr(TABLE, f.name)
        assert math.isfinite(b.high) and b(default) is None, f.name
        assert (b.auto and default == "auto") or b.low <= default <= b.high, f.name


def past(b: Bounds) -> list[int | float]:
    """The nearest values outside a range: one below and one above (a whole step for integers)."""
    if b.integer:
        return [int(b.low) - 1, int(b.high) + 1]
    return [math.nextafter(b.low, -math.inf), math.nextafter(b.high, math.inf)]


@pytest.mark.parametrize("f", BOUNDED, ids=flag_of)
def test_a_bounded_option_accepts_its_bounds_and_refuses_the_nearest_values_past_them(f, tmp_path, capsys):
    b = f.metadata["check"]
    for bound in (b.low, b.high):
        value = int(bound) if b.integer else bound
        assert getattr(parsed(*typed(f, value)), f.name) == value
    for value in past(b) + ([] if b.integer else [math.nan]):
        line = refused(tmp_path, capsys, f, repr(value))
        assert line == f"error: {flag_of(f)} {b(value)}, got {value!r}", line
        assert str(b.high) in line


@pytest.mark.parametrize("f", BOUNDED, ids=flag_of)
def test_a_value_that_is_not_a_number_is_an_argparse_error_naming_the_flag(f, capsys):
    texts = ["many"] + (["1.5"] if f.metadata["check"].integer else [])
    for text in texts:
        with pytest.raises(SystemExit) as stop:
            parsed(flag_of(f), text)
        assert stop.value.code == 2
        assert f"error: argument {flag_of(f)}: invalid" in capsys.readouterr().err


@pytest.mark.parametrize("f", [f for f in CHECKED if f not in BOUNDED], ids=flag_of)
def test_a_choice_outside_the_list_is_refused_naming_the_choices_and_each_named_choice_is_accepted(f, tmp_path, capsys):
    line = refused(tmp_path, capsys, f, "no-such-value")
    choices = re.fullmatch(r"error: \S+ must be (?:one of |a comma-separated subset of )(.+), got .*'no-such-value'.*", line)
    assert choices, line
    for choice in re.split(r",\s*", choices.group(1)):  # "warn, fail, ignore"; groups: "public,private"
        assert getattr(parsed(flag_of(f), choice), f.name) in (choice, (choice,)), (f.name, choice)


def test_folds_takes_a_number_or_auto():
    assert parsed().folds == "auto" and parsed("--folds", "auto").folds == "auto" and parsed("--folds", "3").folds == 3


# ---- --help -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def help_entries() -> dict[str, str]:
    """`submit --help`, one entry per option: its first flag -> its text, whitespace collapsed (a wide terminal,
    so that no word of a default is broken)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COLUMNS", "240")
        text = submit_parser().format_help()
    entries: dict[str, list[str]] = {}
    flag = None
    for line in text.split("options:", 1)[1].splitlines():
        start = re.match(r"^  (-[-\w]+)", line)
        if start:
            flag = start.group(1)
            entries[flag] = [re.sub(r"^  \S.*?(?:\s{2,}|$)", "", line, count=1)]
        elif flag and line.strip():
            entries[flag].append(line.strip())
    return {flag: " ".join(" ".join(parts).split()) for flag, parts in entries.items()}


@pytest.mark.parametrize("f", OPTIONS, ids=flag_of)
def test_every_option_is_in_submit_help_with_its_help_text_and_default(f, help_entries):
    entry = help_entries.get(flag_of(f))
    assert entry is not None, f"{flag_of(f)} is not in submit --help"
    words = " ".join(f.metadata["help"].split())
    if f.name == "record":  # its flag, --no-ledger, says the opposite: "do not record the run in the ledger"
        words = words.removeprefix("record ")
    assert words in entry, entry
    default = submit_parser().get_default(f.name)
    assert entry.endswith(f"(default: {default})"), entry
    if isinstance(f.metadata.get("check"), Bounds):
        b = f.metadata["check"]
        assert f"[{b.low} to {b.high}]" in entry, entry
