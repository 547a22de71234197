"""Shared helpers for the benchmarks: machine description, trials, output.

* :func:`machine_info` describes the host without naming it (no hostname, no
  user, no IP): CPU model, cores, RAM, Python / torch versions, CUDA device.
* :class:`Trials` runs a warm-up (excluded) and N timed trials of a callable and
  summarises them (median, min, max, stdev).
* :func:`write_json`, :func:`print_table` and :func:`plot_bars` write the
  results; the plot degrades to a message when matplotlib is not installed.
* :func:`init_ray` starts a private, loopback-only Ray (the product's ``start_ray``).
* :func:`result_header` is how every result JSON begins.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import cluster  # noqa: E402,F401 - before Ray is imported anywhere: keeps Ray on loopback (cluster/__init__.py)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# -- machine -----------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _ram_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def usable_cores() -> int:
    """CPUs this process may run on (affinity / cgroup-aware where possible)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        n = os.cpu_count() or 1
    # a CPU quota (containers) can be below the affinity mask
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            n = max(1, min(n, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


#: CPU features that change these figures two-fold between machines (vector width, native bf16)
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


def _cpu_flags() -> list[str]:
    """Which of :data:`CPU_FLAGS` this CPU has (from /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [f for f in CPU_FLAGS if f in have]
    except OSError:
        pass
    return []


def machine_info() -> dict[str, Any]:
    """Hostname-free description of the machine and the software stack."""
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cores": usable_cores(),
        "logical_cpus": os.cpu_count(),
        "ram_gib": _ram_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "arch": platform.machine(),
        "python": platform.python_version(),
        "load_average_at_start": load_average(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads_default"] = torch.get_num_threads()
        info["cuda_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        info["torch"] = None
        info["cuda_device"] = None
    for mod in ("transformers", "sentence_transformers", "ray", "psycopg", "numpy"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional
            info[mod] = None
    return info


# -- CPU accounting ----------------------------------------------------------
#
# Wall-clock rates on a shared machine are only meaningful together with how
# busy the machine was.  A CpuMeter snapshot reads /proc: the machine's busy
# and steal time, and the CPU time of named process groups (by default this
# process and all its descendants, e.g. Ray workers).  ``other`` = busy time
# not spent in any group = load from processes that are not ours.

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, utime+stime jiffies) for every live process."""
    table: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                raw = fh.read()
        except OSError:
            continue
        fields = raw[raw.rfind(b")") + 2 :].split()
        # fields[0] is state (field 3); ppid is field 4, utime 14, stime 15
        table[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return table


def _machine_jiffies() -> tuple[int, int]:
    with open("/proc/stat", encoding="ascii") as fh:
        parts = [int(x) for x in fh.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (parts + [0] * 8)[:8]
    return user + nice + system + irq + softirq, steal


class CpuMeter:
    """CPU seconds used by process groups and by everything else, between snapshots.

    ``groups`` maps a name to root pids; a group counts its roots and all their
    descendants (``descendants=False`` per group via ``flat``).  The group
    ``own`` (this process and its children) is always present.
    """

    def __init__(self, groups: dict[str, list[int]] | None = None, flat: set[str] | None = None) -> None:
        self.groups = {"own": [os.getpid()], **(groups or {})}
        self.flat = flat or set()
        self.available = os.path.exists("/proc/stat")

    def snapshot(self) -> dict[str, float]:
        if not self.available:
            return {"t": time.perf_counter()}
        t = time.perf_counter()
        table = _proc_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        snap: dict[str, float] = {"t": t}
        counted: set[int] = set()
        for name, roots in self.groups.items():
            pids: set[int] = set()
            stack = [r for r in roots if r in table]
            while stack:
                pid = stack.pop()
                if pid in pids:
                    continue
                pids.add(pid)
                if name not in self.flat:
                    stack.extend(children.get(pid, []))
            pids -= counted  # a process counts once, in the first group that has it
            counted |= pids
            snap[name] = sum(table[p][1] for p in pids) / _CLK_TCK
        busy, steal = _machine_jiffies()
        snap["_busy"] = busy / _CLK_TCK
        snap["_steal"] = steal / _CLK_TCK
        return snap

    def delta(self, a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
        wall = b["t"] - a["t"]
        out = {"wall_s": round(wall, 6)}
        if not self.available or "_busy" not in a:
            return out
        groups_total = 0.0
        for name in self.groups:
            used = max(0.0, b[name] - a[name])
            groups_total += used
            out[f"{name}_cpu_s"] = round(used, 3)
        other = max(0.0, (b["_busy"] - a["_busy"]) - groups_total)
        out["other_cpu_s"] = round(other, 3)
        out["other_cores"] = round(other / wall, 3) if wall > 0 else 0.0
        out["steal_cores"] = round((b["_steal"] - a["_steal"]) / wall, 3) if wall > 0 else 0.0
        return out


# -- trials ------------------------------------------------------------------

#: a trial is "clean" when processes outside the benchmark used at most this
#: many cores on average while it ran (measured by CpuMeter)
CLEAN_MAX_OTHER_CORES = 0.2


@dataclass
class TrialResult:
    """Timings (seconds) of N trials of one measurement, plus derived rates."""

    name: str
    seconds: list[float]
    work: float = 0.0  # units of work per trial (sentences, changes, ...)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rates(self) -> list[float]:
        return [self.work / s if s > 0 else float("inf") for s in self.seconds]

    @property
    def median_rate(self) -> float:
        return statistics.median(self.rates)

    def clean_rates(self, max_other_cores: float = CLEAN_MAX_OTHER_CORES) -> list[float]:
        """Rates of the trials during which other processes used at most ``max_other_cores``."""
        cpu = self.extra.get("cpu") or []
        if len(cpu) != len(self.seconds):
            return self.rates
        return [r for r, c in zip(self.rates, cpu) if c.get("other_cores", 0.0) <= max_other_cores]

    @property
    def headline_rate(self) -> float:
        """Median of the clean trials; the best trial when none was clean (see ``contaminated``)."""
        clean = self.clean_rates()
        return statistics.median(clean) if clean else max(self.rates)

    @property
    def contaminated(self) -> bool:
        return not self.clean_rates()

    def cpu_median(self, key: str) -> float | None:
        vals = [c[key] for c in self.extra.get("cpu", []) if key in c]
        return statistics.median(vals) if vals else None

    def summary(self) -> dict[str, Any]:
        rates = self.rates
        return {
            "name": self.name,
            "trials": len(self.seconds),
            "seconds": [round(s, 6) for s in self.seconds],
            "median_s": round(self.median_s, 6),
            "min_s": round(min(self.seconds), 6),
            "max_s": round(max(self.seconds), 6),
            "stdev_s": round(statistics.stdev(self.seconds), 6) if len(self.seconds) > 1 else 0.0,
            "work_per_trial": self.work,
            "rates": [round(r, 3) for r in rates],
            "median_rate": round(statistics.median(rates), 3),
            "min_rate": round(min(rates), 3),
            "max_rate": round(max(rates), 3),
            "stdev_rate": round(statistics.stdev(rates), 3) if len(rates) > 1 else 0.0,
            "median_other_cores": self.cpu_median("other_cores"),
            "clean_trials": len(self.clean_rates()),
            "headline_rate": round(self.headline_rate, 3),
            "headline": "median of clean trials" if not self.contaminated else "best trial (no clean trial)",
            "median_own_cpu_s": self.cpu_median("own_cpu_s"),
            **self.extra,
        }


class Trials:
    """Run ``warmup`` untimed calls, then ``trials`` timed calls.

    ``fn`` does one trial's work.  ``setup`` (optional, untimed) runs before
    every call, e.g. to insert fresh rows; whatever it returns is passed to
    ``fn``.  ``warmup_fn`` replaces ``fn`` for the warm-up calls (a smaller
    input warms caches and kernels just as well and saves time).
    """

    def __init__(self, trials: int = 3, warmup: int = 1, clock: Callable[[], float] = time.perf_counter,
                 meter: CpuMeter | None = None) -> None:
        if trials < 1:
            raise ValueError("trials must be >= 1")
        self.trials = trials
        self.warmup = warmup
        self.clock = clock
        self.meter = meter if meter is not None else CpuMeter()

    def run(
        self,
        name: str,
        fn: Callable[..., Any],
        work: float = 0.0,
        setup: Callable[[], Any] | None = None,
        warmup_fn: Callable[..., Any] | None = None,
    ) -> TrialResult:
        for _ in range(self.warmup):
            arg = setup() if setup else None
            w = warmup_fn or fn
            w(arg) if setup else w()
        seconds = []
        cpu = []
        for _ in range(self.trials):
            arg = setup() if setup else None
            before = self.meter.snapshot()
            started = self.clock()
            fn(arg) if setup else fn()
            seconds.append(self.clock() - started)
            cpu.append(self.meter.delta(before, self.meter.snapshot()))
        return TrialResult(name, seconds, work, {"cpu": cpu})

    def run_interleaved(self, cases: Sequence["Case"]) -> dict[str, TrialResult]:
        """Like :meth:`run` for several cases, but round-robin.

        Round ``i`` runs every case once, so slow drifts of a shared machine
        (other processes, thermal state) hit every contender alike instead of
        whichever happened to run during the busy minute.
        """
        for _ in range(self.warmup):
            for case in cases:
                (case.warmup_fn or case.fn)()
        seconds: dict[str, list[float]] = {c.name: [] for c in cases}
        cpu: dict[str, list[dict[str, float]]] = {c.name: [] for c in cases}
        for _ in range(self.trials):
            for case in cases:
                before = self.meter.snapshot()
                started = self.clock()
                case.fn()
                seconds[case.name].append(self.clock() - started)
                cpu[case.name].append(self.meter.delta(before, self.meter.snapshot()))
        return {
            c.name: TrialResult(c.name, seconds[c.name], c.work, {**c.extra, "cpu": cpu[c.name]}) for c in cases
        }


@dataclass
class Case:
    """One contender for :meth:`Trials.run_interleaved`."""

    name: str
    fn: Callable[[], Any]
    work: float
    warmup_fn: Callable[[], Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# -- output ------------------------------------------------------------------


def write_json(path: str | os.PathLike[str], data: dict[str, Any]) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    print(f"wrote {p}")
    return p


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if value is None:
        return "-"
    return str(value)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Print rows as a table (``rich`` when installed, plain text otherwise); return the plain text."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]

    def line(parts: Sequence[str]) -> str:
        return "  ".join(p.ljust(w) if i == 0 else p.rjust(w) for i, (p, w) in enumerate(zip(parts, widths)))

    plain = "\n".join([title, line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)])
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(plain)
        print()
        return plain
    table = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for r in cells:
        table.add_row(*r)
    Console(width=max(100, sum(widths) + 3 * len(widths) + 4)).print(table)
    print()
    return plain


def plot_bars(
    path: str | os.PathLike[str],
    title: str,
    groups: Sequence[str],
    series: dict[str, Sequence[float | None]],
    ylabel: str,
    errors: dict[str, Sequence[tuple[float, float] | None]] | None = None,
    log_scale: bool = False,
) -> Path | None:
    """Grouped bar chart: one group per entry of ``groups``, one bar per series.

    ``errors`` maps a series to (low, high) values drawn as min/max whiskers.
    Returns the PNG path, or None (with a message) when matplotlib is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib not installed: skipping plot {path} (pip install matplotlib)")
        return None
    import numpy as np

    names = list(series)
    n = max(1, len(names))
    x = np.arange(len(groups))
    width = 0.8 / n
    import textwrap

    fig, ax = plt.subplots(figsize=(max(9, 1.2 * len(groups) * max(1, n / 3) + 3), 5.5))
    for i, name in enumerate(names):
        vals = [v if v is not None else 0.0 for v in series[name]]
        yerr = None
        if errors and errors.get(name):
            lo = [max(0.0, v - e[0]) if e else 0.0 for v, e in zip(vals, errors[name])]
            hi = [max(0.0, e[1] - v) if e else 0.0 for v, e in zip(vals, errors[name])]
            yerr = [lo, hi]
        ax.bar(x - 0.4 + width * (i + 0.5), vals, width, label=name, yerr=yerr, capsize=2)
    ax.set_xticks(x)
    ax.set_xticklabels(groups)
    ax.set_ylabel(ylabel)
    ax.set_title("\n".join(textwrap.wrap(title, 90)), fontsize=10)
    if log_scale:
        ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110)
    plt.close(fig)
    print(f"wrote {p}")
    return p


# -- ray ---------------------------------------------------------------------


def init_ray(num_cpus: int, env_vars: dict[str, str] | None = None) -> None:
    """A private single-node Ray on 127.0.0.1 (no dashboard): the product's own start-up, quiet."""
    from cluster.runtime import start_ray

    start_ray(num_cpus=num_cpus, env_vars=env_vars, quiet=True)


def command_line(module: str) -> str:
    """The command that produced a result file, for the JSON."""
    return " ".join(["python", "-m", module, *sys.argv[1:]])


def result_header(benchmark: str, module: str, machine: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fields every result JSON starts with: what ran, the command that
    reproduces it, when, and on what machine (``machine_info()`` unless given,
    plus the load average at the end, which tells whether the run had the
    machine to itself)."""
    return {
        "benchmark": benchmark,
        "command": command_line(module),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {**(machine if machine is not None else machine_info()), "load_average_at_end": load_average()},
    }


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0-1) of ``values``, interpolated between the two nearest ranks (NaN if empty)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)
