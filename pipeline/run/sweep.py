"""A grid of pseudo-label settings (ratio x groups), one run each, in this process.

The teacher (and the decoded images, and the features of a frozen backbone) and the control are cached on disk
and keyed by everything that determines them, so only the first setting trains them; later settings train only
their students (the control's budget does not depend on the pseudo-labels: pipeline/method/rounds.round_steps).
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass

from pipeline.run.config import RunConfig
from pipeline.errors import UserError
from pipeline.plugin.api import GROUPS
from pipeline.run.metrics import Timings


@dataclass
class SweepResult:
    ratio: float
    groups: tuple[str, ...]
    wall_s: float
    run_id: str | None = None
    teacher_cache: str | None = None  # "hit" | "miss"
    timings: Timings | None = None  # the run's
    error: str | None = None

    @property
    def label(self) -> str:
        return "ratio 0 (teacher only)" if self.ratio == 0 else f"ratio {self.ratio:g} on {','.join(self.groups)}"


def sweep_settings(ratios: list[float], groups: list[str]) -> list[tuple[float, tuple[str, ...]]]:
    """(ratio, groups) pairs in the order given; ratio 0 once (it pseudo-labels nothing), duplicates dropped."""
    group_sets = []
    for text in groups:
        chosen = tuple(g for g in GROUPS if g in {part.strip() for part in text.split(",") if part.strip()})
        unknown = sorted({part.strip() for part in text.split(",") if part.strip()} - set(GROUPS))
        if unknown or not chosen:
            raise UserError(f"--groups entry {text!r} must be a comma-separated subset of {','.join(GROUPS)}")
        if chosen not in group_sets:
            group_sets.append(chosen)
    settings: list[tuple[float, tuple[str, ...]]] = []
    for ratio in ratios:
        for chosen in ([GROUPS] if ratio == 0 else group_sets):
            if (ratio, chosen) not in settings:
                settings.append((ratio, chosen))
    return settings


def run_sweep(base: RunConfig, settings: list[tuple[float, tuple[str, ...]]]) -> list[SweepResult]:
    """One run_pipeline per setting, in this process. The first setting's failure stops the sweep (every
    later one would fail the same way); a later failure is reported and the sweep goes on."""
    from pipeline.run.stages import run_pipeline

    configs = [base.replace(pseudo_ratio=ratio, pseudo_groups=groups, run_name=None) for ratio, groups in settings]
    results = []
    for number, cfg in enumerate(configs, start=1):
        result = SweepResult(cfg.pseudo_ratio, cfg.pseudo_groups, 0.0)
        print(f"\n=== sweep {number}/{len(configs)}: {result.label}", flush=True)
        started = time.perf_counter()
        try:
            outcome = run_pipeline(cfg)
        except Exception as error:
            if number == 1:
                raise
            result.error = f"{type(error).__name__}: {error}"
            traceback.print_exc()
        else:
            result.run_id, result.teacher_cache, result.timings = outcome.run_id, outcome.record.teacher_cache, outcome.record.timings
        result.wall_s = time.perf_counter() - started
        print(f"=== sweep {number}/{len(configs)}: {result.label} took {result.wall_s:.1f}s"
              + (f" (FAILED: {result.error})" if result.error else f", teacher cache {result.teacher_cache}"), flush=True)
        results.append(result)
    return results


def summary(results: list[SweepResult]) -> str:
    """Per-setting wall time and how much cheaper the later settings were than the first."""
    lines = [f"sweep: {len(results)} settings in {sum(r.wall_s for r in results):.1f}s"]
    width = max(len(r.label) for r in results)
    for r in results:
        if r.error:
            outcome = f"FAILED {r.error}"
        else:
            t = r.timings or Timings()
            outcome = (f"teacher {r.teacher_cache or '?'} {_seconds(t.teacher_s):6.1f}s, "
                       f"control {_seconds(t.control_s):6.1f}s, students {_seconds(t.student_s):6.1f}s  {r.run_id}")
        lines.append(f"  {r.label:<{width}}  {r.wall_s:7.1f}s  {outcome}")
    later = [r.wall_s for r in results[1:] if not r.error]
    if later and not results[0].error:
        mean_later = sum(later) / len(later)
        lines.append(f"first/later wall time: {results[0].wall_s:.1f}s / {mean_later:.1f}s "
                     f"(mean of {len(later)}) = {results[0].wall_s / mean_later:.1f}x")
    else:
        lines.append("first/later wall time: n/a (needs a successful first and a later setting)")
    misses = [r.label for r in results[1:] if r.teacher_cache == "miss"]
    if misses:
        lines.append(f"note: the teacher was retrained for {', '.join(misses)}: is the cache folder writable?")
    return "\n".join(lines)


def _seconds(value: float | None) -> float:
    return float("nan") if value is None else value
