"""runs.html: every compared run of a competition on one page, the way an experiment tracker's runs table shows
them: the scores of teacher, control and student on the holdout and the public and private leaderboards, which
model was submitted and how sure the verdict was, the pseudo-label counts, the shift check, and a link to each
run's report.html. One self-contained file that opens without a server; its columns sort on a click (numbers as
numbers, unknown values last).

Every value is escaped: run names, paths and the reasons in the ledger are not trusted to be HTML.
"""
from __future__ import annotations

import html
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import quote

import pandas as pd

from pipeline.files import write_text_atomic
from pipeline.ledger.compare import ComparedRuns
from pipeline.run.folder import REPORT

MODELS = ("teacher", "control", "student")
BOARDS = ("holdout", "public", "private")


@dataclass(frozen=True)
class Column:
    """One column of the page: its header, whether it sorts as numbers, and its cell for a row of the comparison."""

    header: str
    numeric: bool
    cell: Callable[[pd.Series, Path], tuple[str, str]]  # (row, page folder) -> (the cell's HTML, its sort key; "" = unknown)
    group: str = ""  # the header above it that it shares with its neighbours ("holdout" over teacher/control/student)


def runs_page_path(plot: Path) -> Path:
    """runs.html goes next to the comparison's PNG: submissions/<competition>/, beside the run folders."""
    return Path(plot).with_name("runs.html")


def write_runs_page(comparison: ComparedRuns, path: Path) -> Path:
    """Write the page of the compared runs to `path` (atomically) and return it."""
    path = Path(path)
    columns = _columns(comparison)
    head = _header(columns)
    body = "".join("<tr>" + "".join(_cell(column, row, path.parent) for column in columns) + "</tr>\n"
                   for _, row in comparison.table.iterrows())
    better = "higher" if comparison.greater_is_better else "lower"
    notes = "".join(f"<li>{html.escape(note)}</li>" for note in comparison.notes)
    plot = ""
    if comparison.plot is not None and Path(comparison.plot).parent == path.parent:
        plot = f'<h2>Scores against each run\'s teacher</h2><img src="{_href(Path(comparison.plot), path.parent)}" alt="scores per run">'
    count = len(comparison.table)
    title = f"{comparison.competition}: {count} run{'' if count == 1 else 's'}"
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{html.escape(title)}</title>
<style>{_STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(comparison.metric)} ({better} is better). Holdout: the labeled rows each run held out (out of fold
with --folds); public and private: the leaderboard rows of the solution file (or Kaggle's scores). <i>Student better
in</i>: the verdict's confidence, the share of bootstrap resamples of those rows in which the student beat its
control (its teacher in runs without one); the guard submits the student only above --guard-confidence, and a hover
on the submitted model shows why. Click a column's name to sort by it.</p>
<table class="runs"><thead>{head}</thead><tbody>
{body}</tbody></table>
<ul>{notes}</ul>
{plot}
<script>{_SORT_SCRIPT}</script>
</body></html>
"""
    write_text_atomic(path, page)
    comparison.page = path
    return path


def _columns(comparison: ComparedRuns) -> list[Column]:
    columns = [Column("run", False, _run_cell), Column("ratio", True, _number_cell("ratio", "{:g}")),
               Column("groups", False, _groups_cell)]
    for board in BOARDS:
        for model in MODELS:
            key = board if model == "student" else f"{model}_{board}"  # the comparison's columns
            columns.append(Column(model, True, _number_cell(key, "{:.4f}"), group=board))
    columns += [
        Column("submitted", False, _submitted_cell),
        Column("student better in", True, _number_cell("submitted_p_better", "{:.1%}")),
        Column("public gain over teacher", False, _text_cell("verdict")),
        Column("pseudo-labels", True, _pseudo_cell),
        Column("shift", False, _text_cell("shift")),
        Column("time (s)", True, _number_cell("wall_time_s", "{:.0f}")),
    ]
    return columns


def _header(columns: list[Column]) -> str:
    """Two header rows: a column alone spans both; teacher/control/student sit under their board's name."""
    top, bottom = [], []
    for index, column in enumerate(columns):
        sortable = (f'<th data-col="{index}" data-type="{"number" if column.numeric else "text"}" tabindex="0"'
                    f' title="sort by {html.escape(" ".join(filter(None, (column.group, column.header))))}"')
        if not column.group:
            top.append(f'{sortable} rowspan="2">{html.escape(column.header)}</th>')
            continue
        if index == 0 or columns[index - 1].group != column.group:
            span = sum(1 for c in columns if c.group == column.group)
            top.append(f'<th colspan="{span}" class="group">{html.escape(column.group)}</th>')
        bottom.append(f"{sortable}>{html.escape(column.header)}</th>")
    return f"<tr>{''.join(top)}</tr><tr>{''.join(bottom)}</tr>"


def _cell(column: Column, row: pd.Series, page_dir: Path) -> str:
    content, key = column.cell(row, page_dir)
    align = ' class="num"' if column.numeric else ""
    return f'<td{align} data-sort="{html.escape(key)}">{content}</td>'


# ---- cells: each returns (HTML, sort key) -------------------------------------------------------------
def _run_cell(row: pd.Series, page_dir: Path) -> tuple[str, str]:
    """The run's name, a link to its report.html where that file exists."""
    name = html.escape(str(row["run_id"]))
    report = Path(str(row["run_dir"])) / REPORT
    content = f'<a href="{_href(report, page_dir)}">{name}</a>' if report.is_file() else name
    return content, str(row["run_id"])


def _number_cell(key: str, form: str) -> Callable[[pd.Series, Path], tuple[str, str]]:
    def cell(row: pd.Series, page_dir: Path) -> tuple[str, str]:
        value = row.get(key)
        if not _known(value):
            return "-", ""
        return html.escape(form.format(value)), repr(float(value))
    return cell


def _text_cell(key: str) -> Callable[[pd.Series, Path], tuple[str, str]]:
    def cell(row: pd.Series, page_dir: Path) -> tuple[str, str]:
        value = row.get(key)
        return (html.escape(str(value)), str(value)) if _known(value) else ("-", "")
    return cell


def _groups_cell(row: pd.Series, page_dir: Path) -> tuple[str, str]:
    """"public,private" as "public, private", so that the column can wrap."""
    groups = row.get("groups")
    return (html.escape(str(groups).replace(",", ", ")), str(groups)) if _known(groups) else ("-", "")


def _submitted_cell(row: pd.Series, page_dir: Path) -> tuple[str, str]:
    """The submitted model; the verdict's reason shows on hover."""
    model, reason = row.get("submitted"), row.get("submitted_reason")
    if not _known(model):
        return "-", ""
    title = f' title="{html.escape(str(reason))}"' if _known(reason) else ""
    return f"<span{title}>{html.escape(str(model))}</span>", str(model)


def _pseudo_cell(row: pd.Series, page_dir: Path) -> tuple[str, str]:
    """How many test images were pseudo-labeled, and how many of each test group."""
    total, by_group = row.get("pseudo_selected"), row.get("pseudo_by_group")
    if not _known(total):
        return "-", ""
    groups = f' <span class="detail">({html.escape(str(by_group))})</span>' if _known(by_group) else ""
    return f"{int(total)}{groups}", repr(float(total))


def _href(target: Path, page_dir: Path) -> str:
    """A link relative to the page's folder, percent-encoded (a run name may hold '#', '?' or '%') and escaped."""
    relative = os.path.relpath(Path(target).resolve(), Path(page_dir).resolve())
    return html.escape(quote(Path(relative).as_posix(), safe="/"))


def _known(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


# Fits a 1280 px window with a dozen runs' columns: compact cells, numbers never wrap, headers and text wrap
# between words; only the run's name may break anywhere (a name is one long word), never narrower than 9em.
_STYLE = """body{font-family:sans-serif;margin:1.5em;font-size:13px;overflow-wrap:break-word}
table.runs{border-collapse:collapse;max-width:100%}
th,td{padding:3px 5px;border-bottom:1px solid #ddd;vertical-align:top}
th{background:#f4f4f4}
th[data-col]{cursor:pointer}
th[aria-sort=ascending]::after{content:" \\25B2"}
th[aria-sort=descending]::after{content:" \\25BC"}
th.group{text-align:center;border-bottom:1px solid #bbb}
td.num{text-align:right;white-space:nowrap}
td:first-child{overflow-wrap:anywhere;min-width:9em}
.detail{color:#555}
p{max-width:70em}
img{max-width:100%;height:auto}"""

# Sorts the rows by the clicked column: numbers as numbers, text as text, unknown values ("") last either way;
# a second click reverses. Every cell carries its sort key in data-sort.
_SORT_SCRIPT = """
document.querySelectorAll("table.runs th[data-col]").forEach(function (th) {
  function sort() {
    var table = th.closest("table"), body = table.tBodies[0], col = Number(th.dataset.col);
    var numeric = th.dataset.type === "number";
    var direction = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    table.querySelectorAll("th[aria-sort]").forEach(function (other) { other.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", direction === 1 ? "ascending" : "descending");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.sort, y = b.cells[col].dataset.sort;
      if (x === "" || y === "") return (x === "") - (y === "");
      return direction * (numeric ? Number(x) - Number(y) : x.localeCompare(y));
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }
  th.addEventListener("click", sort);
  th.addEventListener("keydown", function (event) { if (event.key === "Enter") sort(); });
});
"""
