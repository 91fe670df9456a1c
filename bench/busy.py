"""How busy the machine was with work that is not the benchmark's, before and during a run.

Benchmarks on a shared machine are only honest with a note saying when something else competed
for the cores. Three measures: the load average when the benchmark starts (`machine_load`), the
other processes' CPU use over one second before anything is started (`sample_other_cores`), and,
around every measured wrk run, the CPU time *other* processes used: the machine's busy time
(``/proc/stat`` through psutil: everything but idle and iowait) minus the CPU time of this
benchmark's own process tree (itself, every live descendant, and the children it or they already
reaped, such as finished wrk runs), in cores (``0.5`` = half a core busy on average).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import psutil

__all__ = ["BUSY_CORES", "BusySnapshot", "busy_note", "machine_load", "other_cores", "sample_other_cores"]

BUSY_CORES: Final = 0.25  # other processes using more than this many cores on average make a run "busy"


def machine_load() -> tuple[float, float, float] | None:
    """The 1, 5 and 15-minute load averages (None where the platform has none)."""
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def _own_cpu() -> float:
    """CPU seconds of this process tree, including children already reaped."""
    total = 0.0
    try:
        me = psutil.Process()
        processes = [me, *me.children(recursive=True)]
    except psutil.Error:
        return total
    for process in processes:
        try:
            t = process.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def _machine_busy() -> float:
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


@dataclass(frozen=True, slots=True)
class BusySnapshot:
    wall: float
    machine_busy: float
    own: float

    @classmethod
    def take(cls) -> BusySnapshot:
        return cls(time.monotonic(), _machine_busy(), _own_cpu())


def other_cores(before: BusySnapshot, after: BusySnapshot) -> float | None:
    """Cores used on average by processes outside the benchmark between the two snapshots."""
    wall = after.wall - before.wall
    if wall <= 0:
        return None
    other = (after.machine_busy - before.machine_busy) - (after.own - before.own)
    return max(other, 0.0) / wall


def sample_other_cores(seconds: float = 1.0) -> float | None:
    """Cores other processes use, sampled over *seconds* (blocking: call before starting anything)."""
    before = BusySnapshot.take()
    time.sleep(seconds)
    return other_cores(before, BusySnapshot.take())


def busy_note(load_at_start: Iterable[float] | None, cores: int, other: Iterable[float | None],
              other_at_start: float | None = None) -> str | None:
    """One sentence when the machine was busy before (1-minute load above half the cores, or other
    processes above `BUSY_CORES` in the sample at the start) or during the runs (other processes
    above `BUSY_CORES` on average in any run), else None."""
    load = list(load_at_start or [])
    during = [o for o in other if o is not None]
    reasons = []
    if load and load[0] > cores / 2:
        reasons.append(f"load average {load[0]:.1f} on {cores} cores before the run")
    if other_at_start is not None and other_at_start > BUSY_CORES:
        reasons.append(f"other processes used {other_at_start:.2f} cores just before it")
    if during and max(during) > BUSY_CORES:
        reasons.append(f"other processes used {min(during):.2f}-{max(during):.2f} cores during the measured runs "
                       f"(median {sorted(during)[len(during) // 2]:.2f})")
    if not reasons:
        return None
    return ("note: the machine was busy (" + "; ".join(reasons) + "): absolute numbers are depressed; the ratios "
            "compare subjects measured alternately under the same load")
