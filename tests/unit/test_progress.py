"""Backfill progress: the line ``status`` and ``run`` print, and when ``run`` prints it."""

from __future__ import annotations

import io

from cluster.progress import LINE_INTERVAL_S, BackfillProgress, progress_line

RUNNING = {"rows_done": 12_000, "rows_total": 40_000, "total_is_estimate": False, "percent": 30.0,
           "rows_per_second": 850.4, "eta_seconds": 32.9, "finished": False}


def test_the_line_says_done_of_total_rate_and_time_left():
    assert progress_line(RUNNING) == "12,000 of 40,000 rows (30.0 %), 850 rows/s, ETA 33 s"
    estimated = {**RUNNING, "rows_total": 2_000_000, "total_is_estimate": True, "percent": 0.6, "eta_seconds": 5000}
    assert progress_line(estimated) == "12,000 of about 2,000,000 rows (0.6 %), 850 rows/s, ETA 83 min 20 s"
    assert progress_line({**RUNNING, "rows_per_second": 0, "eta_seconds": None}).endswith("0 rows/s, ETA unknown")
    assert progress_line({**RUNNING, "eta_seconds": 4 * 3600 + 60}).endswith("ETA 4 h 01 min")
    assert progress_line({**RUNNING, "rows_done": 40_000, "finished": True}) == "done: 40,000 rows at 850 rows/s"


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_without_a_terminal_a_line_every_interval_then_one_when_done():
    out, clock = io.StringIO(), _Clock()
    shown = BackfillProgress(out, clock)
    shown.update({"backfill": None})  # a run that resumed the stream: nothing
    for step in range(5):  # a stats read every 2 s for 8 s: one line (the first)
        clock.t = 2.0 * step
        shown.update({"backfill": {**RUNNING, "rows_done": 1000 * step}})
    clock.t = LINE_INTERVAL_S
    shown.update({"backfill": RUNNING})
    shown.update({"backfill": {**RUNNING, "rows_done": 40_000, "finished": True}})
    shown.update({"backfill": {**RUNNING, "rows_done": 40_000, "finished": True}})  # said once
    assert out.getvalue().splitlines() == [
        "backfill: 0 of 40,000 rows (30.0 %), 850 rows/s, ETA 33 s",
        "backfill: 12,000 of 40,000 rows (30.0 %), 850 rows/s, ETA 33 s",
        "backfill done: 40,000 rows at 850 rows/s",
    ]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_a_bar_that_goes_away_when_done():
    out = _Tty()
    shown = BackfillProgress(out, _Clock())
    shown.update({"backfill": RUNNING})
    assert shown._bar is not None and shown._bar.tasks[0].completed == 12_000
    assert shown._bar.tasks[0].total == 40_000
    shown.update({"backfill": {**RUNNING, "rows_done": 40_000, "finished": True}})
    assert shown._bar is None
    assert out.getvalue().rstrip().endswith("backfill done: 40,000 rows at 850 rows/s")
