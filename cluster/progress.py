"""Backfill progress on the terminal of ``embedcluster run``: a progress bar on a terminal,
a line every few seconds otherwise (a log file, a CI job), and one line when it is done.

The figures are the coordinator's (``/stats`` -> ``backfill``): rows written of the snapshot's
total, rows/s over the last seconds, and the time left at that rate.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

#: seconds between two progress lines when the output is not a terminal
LINE_INTERVAL_S = 10.0


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 90:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def progress_line(backfill: dict[str, Any]) -> str:
    """One line for ``status`` and logs: ``12,000 of 40,000 rows (30.0 %), 850 rows/s, ETA 33 s``
    (``of about N`` when the total is the planner's estimate)."""
    about = "about " if backfill.get("total_is_estimate") else ""
    done, total = backfill.get("rows_done", 0), backfill.get("rows_total", 0)
    if backfill.get("finished"):
        return f"done: {done:,} rows at {backfill.get('rows_per_second', 0):,.0f} rows/s"
    return (f"{done:,} of {about}{total:,} rows ({backfill.get('percent', 0.0):.1f} %), "
            f"{backfill.get('rows_per_second', 0):,.0f} rows/s, ETA {_duration(backfill.get('eta_seconds'))}")


class BackfillProgress:
    """Shows the backfill of ``/stats`` as it advances: :meth:`update` with each stats read.

    On a terminal (``stream.isatty()``) a rich progress bar; otherwise a line at most every
    :data:`LINE_INTERVAL_S` seconds.  Either way one last line when the backfill is written.
    """

    def __init__(self, stream: TextIO | None = None, clock: Any = time.monotonic) -> None:
        self.stream = stream or sys.stderr
        self.clock = clock
        self._bar: Any = None
        self._task: Any = None
        self._last_line = float("-inf")
        self._done = False

    def update(self, stats: dict[str, Any]) -> None:
        backfill = stats.get("backfill")
        if not backfill or self._done:
            return
        if backfill.get("finished"):
            self._done = True
            self.close()
            print(f"backfill {progress_line(backfill)}", file=self.stream, flush=True)
            return
        if self.stream.isatty():
            self._show_bar(backfill)
        elif self.clock() - self._last_line >= LINE_INTERVAL_S:
            self._last_line = self.clock()
            print(f"backfill: {progress_line(backfill)}", file=self.stream, flush=True)

    def _show_bar(self, backfill: dict[str, Any]) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        if self._bar is None:
            self._bar = Progress(
                TextColumn("backfill"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                TextColumn("{task.fields[rate]} rows/s, ETA {task.fields[eta]}"),
                console=Console(file=self.stream), transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task("backfill", total=backfill.get("rows_total") or None, rate="-", eta="-")
        self._bar.update(self._task, completed=backfill.get("rows_done", 0), total=backfill.get("rows_total") or None,
                         rate=f"{backfill.get('rows_per_second', 0):,.0f}", eta=_duration(backfill.get("eta_seconds")))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
