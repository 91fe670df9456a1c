"""The load generator of `bench/compare.py`: wrk, found or installed, run for a bounded time.

wrk is a C load generator that does not share the subjects' weaknesses (it is not Python, so a
slow Python client cannot hide a slow proxy). Each run uses ``bench/wrk_report.lua``: it cycles
through pre-built requests (so gray and plain traffic interleave in one run) and prints one JSON
line from wrk's own ``done()`` summary, which is parsed here instead of wrk's human output.
With ``trace``, every request also carries trace headers with fresh random ids (traffic behind a
gateway always has them, and a sidecar's per-trace work must be paid for in the bench).

Threads follow the brief: ``-t 1`` for 1 connection, ``-t 2`` otherwise, the same for every
subject. A run is bounded by ``-d`` and, in case wrk hangs, by a wall-clock timeout after which
it is killed; a cancelled run (Ctrl-C) kills wrk too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from debian import InstallError, ensure_tool, run_bounded, version_line

__all__ = ["TRACE_HEADERS", "WrkError", "WrkResult", "ensure_wrk", "run_wrk", "wrk_version"]

SCRIPT: Final = Path(__file__).resolve().parent / "wrk_report.lua"
_MARK: Final = "WRK_JSON "
# The trace headers wrk_report.lua can make fresh per request: W3C traceparent, x-request-id (a
# random UUID, as Envoy makes one) and B3 multi-header (x-b3-traceid/-spanid/-sampled).
TRACE_HEADERS: Final = ("traceparent", "x-request-id", "b3")


class WrkError(RuntimeError):
    """wrk is missing and cannot be installed, or a run did not produce its summary."""


@dataclass(frozen=True, slots=True)
class WrkResult:
    """One wrk run's summary (wrk's own numbers; latencies in microseconds)."""

    requests: int
    duration_us: int
    connect_errors: int
    read_errors: int
    write_errors: int
    status_errors: int  # answers with a status > 399: a misrouted request here
    timeouts: int
    p50_us: int
    p90_us: int
    p99_us: int
    mean_us: float
    # Load processes that ran side by side (h2load, one per header set), each one's fraction of the
    # answered requests: they finish different numbers of calls, so each lane's share is its process's.
    # Empty for wrk, whose one script interleaves the header sets request by request.
    shares: tuple[float, ...] = ()

    @property
    def seconds(self) -> float:
        return self.duration_us / 1e6

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.duration_us else 0.0

    @property
    def socket_errors(self) -> int:
        return self.connect_errors + self.read_errors + self.write_errors + self.timeouts

    @property
    def errors(self) -> int:
        return self.socket_errors + self.status_errors


def ensure_wrk() -> str:
    """The wrk executable: on PATH, else installed from Debian's package when root, else WrkError."""
    try:
        return ensure_tool("wrk", "wrk")
    except InstallError as exc:
        raise WrkError(str(exc)) from exc


def wrk_version(exe: str) -> str:
    """wrk's first line of ``-v`` output (it exits 1 with its usage, which is expected)."""
    return version_line(exe, "-v")


def parse_summary(output: str) -> WrkResult:
    """The WrkResult of the script's JSON line in *output*; WrkError when there is none."""
    for line in output.splitlines():
        if line.startswith(_MARK):
            data = json.loads(line[len(_MARK):])
            return WrkResult(
                requests=int(data["requests"]), duration_us=int(data["duration_us"]),
                connect_errors=int(data["connect"]), read_errors=int(data["read"]),
                write_errors=int(data["write"]), status_errors=int(data["status"]),
                timeouts=int(data["timeout"]), p50_us=int(data["p50_us"]), p90_us=int(data["p90_us"]),
                p99_us=int(data["p99_us"]), mean_us=float(data["mean_us"]),
            )
    raise WrkError(f"wrk printed no summary line:\n{output[-2000:]}")


def wrk_argv(exe: str, url: str, connections: int, seconds: int, requests: Sequence[Sequence[tuple[str, str]]],
             trace: Sequence[str] = ()) -> list[str]:
    """wrk's command line; *trace* names the trace headers the script makes fresh for every request."""
    unknown = [name for name in trace if name not in TRACE_HEADERS]
    if unknown:
        raise ValueError(f"unknown trace header kind(s) {unknown}; choose from {', '.join(TRACE_HEADERS)}")
    threads = 1 if connections == 1 else 2
    specs = ["\n".join(f"{name}: {value}" for name, value in headers) for headers in requests]
    marker = [f"@trace={','.join(trace)}"] if trace else []
    return [exe, "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--timeout", "5s",
            "-s", str(SCRIPT), url, "--", *marker, *specs]


async def run_wrk(exe: str, url: str, *, connections: int, seconds: int,
                  requests: Sequence[Sequence[tuple[str, str]]], trace: Sequence[str] = ()) -> WrkResult:
    """One bounded wrk run against *url*, cycling through *requests* (each a list of extra headers),
    with fresh *trace* headers on every request."""
    if connections < 1 or seconds < 1:
        raise ValueError("wrk needs at least 1 connection and 1 second")
    status, text = await run_bounded(wrk_argv(exe, url, connections, seconds, requests, trace), seconds)
    if status != 0:
        raise WrkError(f"wrk exited with {status}:\n{text[-2000:]}")
    return parse_summary(text)
