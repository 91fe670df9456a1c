"""The gRPC load generator of `bench/compare.py`: h2load sending real gRPC unary calls, bounded in time.

wrk speaks only HTTP/1.1; h2load (Debian's ``nghttp2-client``, found or installed like wrk) is the
C load generator of the nghttp2 project, which speaks h2c with prior knowledge, as gRPC clients do.
Each request it sends is a gRPC unary call on the wire: ``POST`` to a method path
(`GRPC_PATH`), ``content-type: application/grpc``, ``te: trailers`` and a body of one
length-prefixed protobuf message (`grpc_frame`, a ``helloworld.HelloRequest``); each client keeps
one call in flight at a time (``-m 1``), like a wrk connection. h2load does not read
``grpc-status``: a call counts by its HTTP status, so a proxy's own gRPC error (HTTP 200,
trailers-only) looks like success to it -- which is why the routing check also holds its count
against the stub backends' own (`bench/runs.py`): an answer no stub gave is caught there.

h2load sends the same headers on every request of one process, while a subject's traffic is
gray and plain interleaved (`subjects.Target.requests`: one header set each). So one run is one
h2load process per header set, the clients split evenly between them: at 32 connections two
processes of 16 clients run side by side (one thread each: wrk's ``-t 2 -c 32``), and their
counts are summed; at 1 connection the processes run one after the other, so there is never more
than one connection: the first for its share of the time (``-D``), each next one for as many
calls as the first answered (``-n``), so the lanes still split evenly when one path is faster
than the other; the run's duration is then the sum of theirs. Latency percentiles are computed from
h2load's per-request log (``--log-file``: HTTP status and microseconds per call), since its
summary has no percentiles. The result has wrk's shape (`wrk.WrkResult`), so the table, JSON,
SVG and routing check treat a gRPC subject like any other.

``LANE_BENCH_H2LOAD`` names the h2load to use instead of the one on PATH (a newer build, say); a
value that is not an executable file makes h2load unavailable, as on a machine where it cannot be
installed (the benchmark then skips the gRPC subjects).

A run is bounded by ``-D`` and by a wall-clock timeout after which h2load is killed; a cancelled
run (Ctrl-C) kills it too.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from debian import InstallError, ensure_tool, run_bounded, version_line
from wrk import WrkResult

__all__ = ["GRPC_HEADERS", "GRPC_PATH", "REQUEST_MESSAGE", "H2loadError", "H2loadProcess", "combine",
           "ensure_h2load", "grpc_frame", "h2load_argv", "h2load_version", "parse_h2load", "run_h2load"]

GRPC_PATH: Final = "/helloworld.Greeter/SayHello"
REQUEST_MESSAGE: Final = b"\x0a\x04lane"  # helloworld.HelloRequest{name: "lane"} in protobuf's wire format
GRPC_HEADERS: Final = (("content-type", "application/grpc"), ("te", "trailers"))
_FINISHED: Final = re.compile(r"^finished in ([\d.]+)(us|ms|s),", re.MULTILINE)
_REQUESTS: Final = re.compile(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                              r"(\d+) errored, (\d+) timeout", re.MULTILINE)
_UNIT_US: Final = {"us": 1, "ms": 1_000, "s": 1_000_000}


class H2loadError(RuntimeError):
    """h2load is missing and cannot be installed, or a run did not produce its summary."""


def grpc_frame(message: bytes) -> bytes:
    """*message* as gRPC frames it on the wire: not compressed (0), 4-byte big-endian length, bytes."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def ensure_h2load() -> str:
    """The h2load executable: ``LANE_BENCH_H2LOAD``, else on PATH, else Debian's ``nghttp2-client``
    installed as root; H2loadError when none can be had."""
    chosen = os.environ.get("LANE_BENCH_H2LOAD")
    if chosen is not None:
        if not (os.path.isfile(chosen) and os.access(chosen, os.X_OK)):
            raise H2loadError(f"LANE_BENCH_H2LOAD={chosen!r} is not an executable file")
        return chosen
    try:
        return ensure_tool("h2load", "nghttp2-client")
    except InstallError as exc:
        raise H2loadError(str(exc)) from exc


def h2load_version(exe: str) -> str:
    """``h2load nghttp2/1.52.0``, from ``--version``."""
    return version_line(exe, "--version")


@dataclass(frozen=True, slots=True)
class H2loadProcess:
    """One h2load process's counts: its summary lines and its per-request log."""

    duration_us: int
    done: int  # streams closed, answered or not
    errored: int  # streams that ended without an answer (reset, connection lost)
    timeouts: int
    statuses: tuple[int, ...]  # HTTP status per answered request (from the log)
    latencies_us: tuple[int, ...]  # per answered request


def parse_h2load(output: str, log: str) -> H2loadProcess:
    """h2load's summary in *output* plus its ``--log-file`` text; H2loadError when the summary is missing."""
    finished, requests = _FINISHED.search(output), _REQUESTS.search(output)
    if finished is None or requests is None:
        raise H2loadError(f"h2load printed no summary:\n{output[-2000:]}")
    statuses, latencies = [], []
    for line in log.splitlines():
        fields = line.split("\t")
        if len(fields) >= 3 and fields[1] != "-1":  # -1: a stream that failed without an answer
            statuses.append(int(fields[1]))
            latencies.append(int(fields[2]))
    done, errored, timeouts = int(requests.group(3)), int(requests.group(6)), int(requests.group(7))
    return H2loadProcess(round(float(finished.group(1)) * _UNIT_US[finished.group(2)]), done, errored, timeouts,
                         tuple(statuses), tuple(latencies))


def _percentile(ordered: Sequence[int], q: float) -> int:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else 0


def combine(processes: Sequence[H2loadProcess], side_by_side: bool) -> WrkResult:
    """One WrkResult of *processes* that ran side by side (the longest duration) or one after another (summed)."""
    durations = [p.duration_us for p in processes]
    latencies = sorted(v for p in processes for v in p.latencies_us)
    statuses = [s for p in processes for s in p.statuses]
    return WrkResult(
        requests=len(statuses), duration_us=max(durations, default=0) if side_by_side else sum(durations),
        connect_errors=0, read_errors=sum(p.errored for p in processes), write_errors=0,
        status_errors=sum(1 for s in statuses if s > 399), timeouts=sum(p.timeouts for p in processes),
        p50_us=_percentile(latencies, 0.50), p90_us=_percentile(latencies, 0.90), p99_us=_percentile(latencies, 0.99),
        mean_us=sum(latencies) / len(latencies) if latencies else 0.0,
        shares=tuple(len(p.statuses) / len(statuses) for p in processes) if side_by_side and statuses else ())


def h2load_argv(exe: str, url: str, clients: int, headers: Sequence[tuple[str, str]], body: Path, log: Path, *,
                milliseconds: int | None = None, calls: int | None = None) -> list[str]:
    """One h2load process: *clients* h2c connections, one gRPC call in flight on each, for *milliseconds*
    or for *calls* calls in all."""
    if (milliseconds is None) == (calls is None):
        raise ValueError("give either milliseconds or calls")
    bound = ["-D", f"{milliseconds}ms"] if milliseconds is not None else ["-n", str(calls)]
    extra = [arg for name, value in (*GRPC_HEADERS, *headers) for arg in ("-H", f"{name}: {value}")]
    return [exe, "-c", str(clients), "-t", "1", "-m", "1", *bound, "-d", str(body), "--log-file", str(log),
            *extra, url]


async def _one(argv: list[str], log: Path, seconds: float) -> H2loadProcess:
    log.unlink(missing_ok=True)
    status, text = await run_bounded(argv, seconds)
    if status != 0:
        raise H2loadError(f"h2load exited with {status}:\n{text[-2000:]}")
    try:
        return parse_h2load(text, log.read_text(encoding="ascii", errors="replace") if log.exists() else "")
    finally:
        log.unlink(missing_ok=True)


async def run_h2load(exe: str, url: str, *, connections: int, seconds: int,
                     requests: Sequence[Sequence[tuple[str, str]]], workdir: Path) -> WrkResult:
    """One bounded run of gRPC unary calls to *url*: one h2load process per header set in *requests*
    (see the module docstring), files under *workdir*."""
    if connections < 1 or seconds < 1 or not requests:
        raise ValueError("h2load needs at least 1 connection, 1 second and 1 header set")
    body = workdir / "h2load-request.bin"
    body.write_bytes(grpc_frame(REQUEST_MESSAGE))
    logs = [workdir / f"h2load-{index}.log" for index in range(len(requests))]
    if connections >= len(requests):
        clients = [connections // len(requests) + (i < connections % len(requests)) for i in range(len(requests))]
        async with asyncio.TaskGroup() as group:  # one failing cancels (and so kills) the others
            runs = [group.create_task(_one(h2load_argv(exe, url, c, h, body, log, milliseconds=seconds * 1000),
                                           log, seconds))
                    for c, h, log in zip(clients, requests, logs, strict=True)]
        return combine([run.result() for run in runs], side_by_side=True)
    share = seconds * 1000 // len(requests)
    first = await _one(h2load_argv(exe, url, connections, requests[0], body, logs[0], milliseconds=share), logs[0],
                       share / 1000)
    done = [first]
    for headers, log in zip(requests[1:], logs[1:], strict=True):  # as many calls, however long they take
        if first.statuses:
            done.append(await _one(h2load_argv(exe, url, connections, headers, body, log,
                                               calls=len(first.statuses)), log, seconds * 4))
    return combine(done, side_by_side=False)
