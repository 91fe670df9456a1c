"""What a subject's processes cost: CPU seconds over a run and peak resident memory.

A subject is one or more top-level processes (``lane gateway --workers 2`` is a supervisor with
two worker children; Envoy is one process with threads). Their trees are snapshotted when a run
starts; CPU is user + system time of every process in the tree (psutil), as a delta over the
run, so it counts exactly the work done while the load generator ran. Peak memory is the
kernel's high-water mark (``VmHWM`` in ``/proc/PID/status``) of each process since it started:
summed for the subject, and the largest single process (the "sidecar RSS" of the targets).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

__all__ = ["CpuSnapshot", "ProcessTree", "peak_rss"]


def peak_rss(pid: int) -> int | None:
    """VmHWM of *pid* in bytes (Linux), None when the process is gone or the field missing."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _cpu(process: psutil.Process) -> float | None:
    try:
        times = process.cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return float(times.user + times.system)


@dataclass(frozen=True, slots=True)
class CpuSnapshot:
    seconds: Mapping[int, float]  # pid -> user+system CPU seconds at the snapshot

    def until(self, later: CpuSnapshot) -> float:
        """CPU seconds spent between this snapshot and *later* by the processes both saw."""
        return sum(max(0.0, later.seconds[pid] - spent) for pid, spent in self.seconds.items() if pid in later.seconds)


class ProcessTree:
    """The processes of one subject, by role (``gateway``, ``sidecar-a-gray``...), children included."""

    def __init__(self, roles: Mapping[str, int]) -> None:
        self.roles = dict(roles)

    def processes(self) -> dict[str, psutil.Process]:
        """Every live process, named ``role`` or ``role/child-N`` (e.g. the gateway's workers)."""
        out: dict[str, psutil.Process] = {}
        for role, pid in self.roles.items():
            with contextlib.suppress(psutil.NoSuchProcess):
                top = psutil.Process(pid)
                out[role] = top
                for index, child in enumerate(sorted(top.children(recursive=True), key=lambda p: p.pid)):
                    out[f"{role}/child-{index + 1}"] = child
        return out

    def cpu(self) -> CpuSnapshot:
        seconds = {}
        for process in self.processes().values():
            spent = _cpu(process)
            if spent is not None:
                seconds[process.pid] = spent
        return CpuSnapshot(seconds)

    def peak_rss(self) -> dict[str, int]:
        """VmHWM per process name (bytes)."""
        out = {}
        for name, process in self.processes().items():
            peak = peak_rss(process.pid)
            if peak is not None:
                out[name] = peak
        return out
