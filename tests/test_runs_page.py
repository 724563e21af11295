"""runs.html, the page of all runs that `compare` writes: one row per done run with its recorded numbers, links
that resolve to each run's report.html, escaped values, and columns that sort in the browser."""
from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

from pipeline.__main__ import main
from pipeline.files import write_csv_atomic, write_text_atomic
from tests.test_compare import CLASSES, FISHERIES, N_PRIVATE, N_PUBLIC, probabilities, public_logloss, world  # noqa: F401

HOSTILE = 'x<img src=y onerror="alert(1)">&amp;#?%\'z'  # no "/": a run name names a folder


class Page(HTMLParser):
    """The runs table as data: header cells with their attributes, and per body row its cells' text, sort key and links."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.headers: list[dict] = []
        self.rows: list[list[dict]] = []
        self.scripts: list[str] = []
        self._cell: dict | None = None
        self._in = {"tbody": False, "script": False, "th": False}
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        if tag in self._in:
            self._in[tag] = True
        if tag == "th":
            self.headers.append({**attrs, "text": ""})
        elif tag == "tr" and self._in["tbody"]:
            self.rows.append([])
        elif tag == "td" and self._in["tbody"]:
            self._cell = {**attrs, "text": "", "links": [], "titles": []}
            self.rows[-1].append(self._cell)
        elif self._cell is not None and tag == "a":
            self._cell["links"].append(attrs["href"])
        elif self._cell is not None and "title" in attrs:
            self._cell["titles"].append(attrs["title"])

    def handle_endtag(self, tag: str) -> None:
        if tag in self._in:
            self._in[tag] = False
        if tag == "td":
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._in["script"]:
            self.scripts.append(data)
        elif self._cell is not None:
            self._cell["text"] += data
        elif self._in["th"]:
            self.headers[-1]["text"] += data

    def table(self) -> list[dict[str, dict]]:
        """Body rows as {column name: cell}, the name "<board> <model>" under a board's header."""
        # the second header row's cells sit, in order, under the first row's boards (each spanning its colspan)
        boards = [h["text"] for h in self.headers if h.get("class") == "group" for _ in range(int(h["colspan"]))]
        names = {}
        for header in self.headers:
            if "data-col" in header:
                board = boards.pop(0) if header.get("rowspan") != "2" else ""
                names[int(header["data-col"])] = f"{board} {header['text']}".strip()
        return [{names[i]: cell for i, cell in enumerate(row)} for row in self.rows]


def add_full_run(world: dict, run_id: str, student_q: float, holdout: tuple[float, float, float], p_better: float,
                 submitted: str, by_group: dict, shift: dict | None, report: bool = True) -> Path:
    """A done run as a real run records it: the three models' holdout scores, the verdict, the pseudo-label counts
    per group, the shift summary, its submissions and (with `report`) a report.html in its folder."""
    n = N_PUBLIC + N_PRIVATE
    run_dir = world["runs"] / run_id
    for name, q in (("teacher_submission.csv", 0.4), ("submission.csv", student_q)):
        write_csv_atomic(run_dir / name, FISHERIES.to_submission(world["ids"], probabilities(world["labels"], np.full(n, q)), CLASSES))
    if report:
        write_text_atomic(run_dir / "report.html", f"<p>{run_id}</p>")
    verdict = {"scores": dict(zip(("teacher", "control", "student"), holdout)), "rows": 50, "kind": "holdout",
               "submitted": submitted, "reason": f'the student beats the "control" in {p_better:.0%} <of> resamples',
               "student_vs_control": {"gain": 0.01, "p_better": p_better, "interval": [-0.01, 0.03]}}
    metrics = {"competition": "fisheries", "metric": "logloss", "greater_is_better": False,
               "holdout": dict(zip(("teacher", "control", "student"), holdout)), "verdict": verdict,
               "submission": {"model": submitted}, "pseudo": {"selected": sum(by_group.values()), "by_group": by_group}}
    config = {"pseudo_ratio": 0.25, "pseudo_groups": ["public", "private"], "solution": str(world["solution"]), "data": "unused"}
    world["ledger"].start_run(run_id, "fisheries", config, "fp", 0)
    if shift is not None:
        world["ledger"].record_shift(run_id, shift)
    world["ledger"].finish_run(run_id, metrics, run_dir / "submission.csv", 12.0)
    return run_dir


def compare_page(world: dict, capsys: pytest.CaptureFixture) -> tuple[Path, str, dict]:
    assert main(["compare", "--competition", "fisheries", "--ledger", str(world["ledger"].path), "--resamples", "0",
                 "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    page = Path(report["page"])
    return page, page.read_text(encoding="utf-8"), report


def test_one_row_per_run_with_its_numbers_and_links_to_the_reports(world: dict, capsys: pytest.CaptureFixture) -> None:
    shifted = {"worst": "WARN", "shifted_groups": ["private"], "pairs": {}}
    dirs = {
        "good": add_full_run(world, "good", 0.6, (1.10, 1.05, 0.90), 0.97, "student", {"public": 30, "private": 12}, shifted),
        "guarded": add_full_run(world, "guarded", 0.45, (1.10, 1.00, 1.02), 0.31, "control", {"public": 7, "private": 0},
                                {"worst": "OK", "shifted_groups": []}),
        "no-report": add_full_run(world, "no-report", 0.5, (1.2, 1.2, 1.1), 0.5, "control", {"public": 1}, None, report=False),
    }
    world["ledger"].start_run("crashed", "fisheries", {}, "fp", 0)
    world["ledger"].fail_run("crashed", "RuntimeError: boom")
    page, text, report = compare_page(world, capsys)

    assert page == world["runs"] / "runs.html" and page.parent == Path(report["plot"]).parent  # beside compare.png
    rows = {row["run"]["text"]: row for row in Page(text).table()}
    assert sorted(rows) == ["good", "guarded", "no-report"]  # done runs only, each once
    good, guarded = rows["good"], rows["guarded"]
    assert [good[f"holdout {m}"]["text"] for m in ("teacher", "control", "student")] == ["1.1000", "1.0500", "0.9000"]
    assert good["public student"]["text"] == f"{public_logloss(world, 0.6):.4f}"  # scored by compare from the CSVs
    assert good["public teacher"]["text"] == f"{public_logloss(world, 0.4):.4f}"
    assert float(good["public student"]["data-sort"]) == pytest.approx(public_logloss(world, 0.6), abs=1e-6)
    assert good["public control"]["text"] == "-" and good["public control"]["data-sort"] == ""  # never scored
    assert (good["submitted"]["text"], good["student better in"]["text"]) == ("student", "97.0%")
    assert (guarded["submitted"]["text"], guarded["student better in"]["text"]) == ("control", "31.0%")
    assert guarded["submitted"]["titles"] == ['the student beats the "control" in 31% <of> resamples']
    assert good["pseudo-labels"]["text"] == "42 (public 30, private 12)" and good["pseudo-labels"]["data-sort"] == "42.0"
    assert (good["shift"]["text"], guarded["shift"]["text"], rows["no-report"]["shift"]["text"]) == ("WARN (private)", "OK", "-")
    assert good["public gain over teacher"]["text"] == "n/a: noise check off (--resamples 0)"

    for name in ("good", "guarded"):
        (link,) = rows[name]["run"]["links"]
        assert not link.startswith(("/", "file:"))  # relative: the folder can move
        assert (page.parent / unquote(link)).resolve() == (dirs[name] / "report.html").resolve()
    assert rows["no-report"]["run"]["links"] == []  # no link to a file that is not there

    assert main(["compare", "--competition", "fisheries", "--ledger", str(world["ledger"].path), "--resamples", "0"]) == 0
    assert f"page of all runs: {page}" in capsys.readouterr().out  # the table's footer names the page


def test_a_hostile_run_name_is_escaped_and_its_link_still_resolves(world: dict, capsys: pytest.CaptureFixture) -> None:
    run_dir = add_full_run(world, HOSTILE, 0.5, (1.1, 1.0, 0.9), 0.9, "student", {"public": 3}, None)
    page, text, _ = compare_page(world, capsys)
    assert "<img src=y" not in text and 'onerror="alert' not in text
    assert "&lt;img src=y onerror=&quot;alert(1)&quot;&gt;&amp;amp;#?%&#x27;z" in text
    (row,) = Page(text).table()
    assert row["run"]["text"] == HOSTILE  # shown as the text it is
    (link,) = row["run"]["links"]
    assert "#" not in link and "?" not in link  # percent-encoded, or the browser would cut the path there
    assert (page.parent / unquote(link)).resolve() == (run_dir / "report.html").resolve()


def test_every_column_sorts_and_numbers_sort_as_numbers(world: dict, capsys: pytest.CaptureFixture) -> None:
    for name, q, selected in (("a", 0.6, 9), ("b", 0.5, 10), ("c", 0.45, 100)):
        add_full_run(world, name, q, (1.1, 1.0, 0.9), 0.9, "student", {"public": selected}, None)
    _, text, _ = compare_page(world, capsys)
    parsed = Page(text)
    sortable = [h for h in parsed.headers if "data-col" in h]
    assert sorted(int(h["data-col"]) for h in sortable) == list(range(len(parsed.rows[0])))  # one per column
    assert all(len(row) == len(sortable) for row in parsed.rows)
    types = {h["text"]: h["data-type"] for h in sortable}
    assert types["run"] == "text" and types["time (s)"] == "number" and types["pseudo-labels"] == "number"
    for header in sortable:
        if header["data-type"] == "number":
            cells = [row[int(header["data-col"])] for row in parsed.rows]
            assert all(c["data-sort"] == "" or c["data-sort"] == repr(float(c["data-sort"])) for c in cells), header
    # 9 < 10 < 100 as numbers (as text "10" < "100" < "9"): the keys are the numbers themselves
    keys = sorted((float(r["pseudo-labels"]["data-sort"]), r["run"]["text"]) for r in parsed.table())
    assert [run for _, run in keys] == ["a", "b", "c"]
    (script,) = parsed.scripts
    assert 'querySelectorAll("table.runs th[data-col]")' in script and "Number(x) - Number(y)" in script
    assert "<script src" not in text and "<link" not in text  # self-contained: opens without a server or network
