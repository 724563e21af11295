"""Cache of the shift check: the report's numbers (report.json), the sets' property tables (tables.npz) and its PNG
plots, per images and settings, so that a run whose images did not change does not measure them again."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np

from pipeline.cache import entries as cache
from pipeline.cache.stage import cache_key, folder_of, get_or_compute, lines_digest
from pipeline.files import json_plain, write_bytes_atomic
from pipeline.run.config import RunConfig

# bump when the shift check changes what a cached report would contain
# (8: the teacher cache's version, which keyed these entries too before the caches were split)
CACHE_VERSION = 8
SHIFT_FILES = ("report.json", "tables.npz")


def shift_key(cfg: RunConfig, sets: dict[str, list[str]], fingerprint: str, settings) -> str:
    from pipeline.data.image_store import FORMAT_VERSION  # the properties come from the store: its format keys them too

    return cache_key({"version": CACHE_VERSION, "store": FORMAT_VERSION, "data": fingerprint,
                      "sets": {k: lines_digest(v) for k, v in sets.items()},
                      "settings": dataclasses.asdict(settings), "seed": cfg.seed})


def get_or_assess_shift(cfg: RunConfig, sets: dict[str, list[str]], fingerprint: str, out_dir: Path, settings,
                        tables: dict | None = None):
    """The shift report for these images and settings, from the cache when they have not changed.

    The cached PNG plots are copied into out_dir: drawing them was most of a cached run's shift step (about 4 s
    of a sweep setting's 18). `tables` are the sets' properties already measured by the image store (else
    measured here)."""
    from pipeline.shift.assess import assess_shift, write_outputs, write_report_json

    folder = folder_of(cfg, "shift", shift_key(cfg, sets, fingerprint, settings))

    def assess():
        report = assess_shift(tables or sets, out_dir, settings, seed=cfg.seed)
        return report, shift_files(report)

    report, hit = get_or_compute(folder, SHIFT_FILES, load_shift_report, assess, f"shift: cached in {folder}")
    if hit:
        plots = _cached_plot_names(folder)
        if plots is None:  # an entry from before plots were cached: draw them
            write_outputs(report, out_dir)
        else:
            out_dir.mkdir(parents=True, exist_ok=True)
            for name in plots:
                write_bytes_atomic(out_dir / name, (folder / name).read_bytes())
            report.plots = [out_dir / name for name in plots]
            write_report_json(report, out_dir)
    return report


def shift_files(report) -> dict:
    """The entry of a ShiftReport: report.json (settings, verdicts, statistics), tables.npz (property tables), plots."""
    state = {
        "settings": dataclasses.asdict(report.settings),
        "pairs": {key: dataclasses.asdict(pair) for key, pair in report.pairs.items()},
        "sets": {name: {"columns": [[column, "number" if table.table[column].dtype.kind in "fiu" else "text"]
                                    for column in table.table.columns],
                        "unreadable": [list(row) for row in table.unreadable]}
                 for name, table in report.sets.items()},
    }
    arrays = {f"{name}/{column}": (table.table[column].to_numpy(dtype=np.float64) if kind == "number"
                                   else np.array(table.table[column].astype(str).tolist(), dtype=str))
              for name, table in report.sets.items() for column, kind in state["sets"][name]["columns"]}
    state["plots"] = [Path(plot).name for plot in report.plots]
    plots = {Path(plot).name: lambda path, plot=plot: shutil.copyfile(plot, path) for plot in report.plots}
    return {
        "report.json": lambda path: path.write_text(json.dumps(state, default=json_plain)),
        "tables.npz": lambda path: _save_npz(path, arrays),
        **plots,
    }


def _cached_plot_names(folder: Path) -> list[str] | None:
    """The PNGs the entry holds (checked against its manifest), or None when it holds none or one is damaged."""
    names = json.loads((Path(folder) / "report.json").read_text()).get("plots")
    if not isinstance(names, list) or not names or any(not isinstance(n, str) or n != Path(n).name for n in names):
        return None
    return names if cache.load_entry(folder, names) is not None else None


def load_shift_report(folder: Path):
    """The ShiftReport of shift_files (plots empty: write_outputs draws them again)."""
    import pandas as pd

    from pipeline.data.image_properties import PropertyTable
    from pipeline.shift.report import PairResult, PropertyResult, ShiftReport, ShiftSettings

    state = json.loads((Path(folder) / "report.json").read_text())
    with np.load(Path(folder) / "tables.npz", allow_pickle=False) as arrays:
        sets = {}
        for name, described in state["sets"].items():
            columns = {column: (arrays[f"{name}/{column}"] if kind == "number"
                                else pd.array(arrays[f"{name}/{column}"].tolist(), dtype="str"))
                       for column, kind in described["columns"]}
            sets[name] = PropertyTable(pd.DataFrame(columns, columns=list(columns)),
                                       [(str(path), str(why)) for path, why in described["unreadable"]])
    pairs = {key: PairResult(**{**pair, "properties": [PropertyResult(**p) for p in pair["properties"]]})
             for key, pair in state["pairs"].items()}
    return ShiftReport(settings=ShiftSettings(**state["settings"]), sets=sets, pairs=pairs)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as handle:  # a file object: np.savez would add ".npz" to a name it does not end with
        np.savez(handle, **arrays)
