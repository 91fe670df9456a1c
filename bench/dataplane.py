"""Benchmark of the lane data plane on 127.0.0.1: what a gateway and a sidecar cost, side by side.

In one run, against one trivial aiohttp app (`bench/trivial_app.py`, its own process):

1. ``direct``: the app's ``GET /``;
2. ``gateway``: the same through ``lane gateway``;
3. ``direct, 2 app hops``: ``GET /call``, where the app calls itself once (the baseline of 4);
4. ``gateway + sidecar``: ``GET /call-proxied`` through a second gateway, the sidecar's inbound
   side, the app, its call out through the sidecar's outbound side, the app again;

each with the same bounded number of requests at a fixed concurrency (after a warm-up), reporting
requests/s, p50/p99 latency and the ratios to the baseline. Then it streams a large upload (256
MiB by default) through a fresh gateway into the app and reports the gateway's peak RSS growth
as a ratio to the body size: the proof that bodies stream rather than sit in memory.

The proxies are real ``python -m lane gateway|sidecar`` processes, stopped at the end whatever
happens (`lane.process.supervisor.Child`: SIGTERM, then SIGKILL; they also die with this process). The
load generator shares the machine with them, so the numbers are relative, not absolute.

    python bench/dataplane.py [--requests 2000] [--concurrency 16] [--upload-mib 256] [--svg FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil
from svg_chart import Bar, render_svg

from lane.demo.topology import free_port
from lane.process.supervisor import Child, lane_argv

HERE = Path(__file__).resolve().parent
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Phase:
    key: str  # short label for the chart
    name: str  # what the request goes through
    url: str
    baseline: str | None  # the key of the phase it is compared with


@dataclass(frozen=True, slots=True)
class Result:
    phase: Phase
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


@dataclass(frozen=True, slots=True)
class Upload:
    body_bytes: int
    rss_before: int
    rss_peak: int
    seconds: float
    direct_seconds: float

    @property
    def growth(self) -> int:
        return max(0, self.rss_peak - self.rss_before)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


async def load(session: aiohttp.ClientSession, url: str, requests: int, concurrency: int) -> tuple[list[float], int, float]:
    """*requests* GETs of *url*, *concurrency* at a time; (latencies, errors, wall seconds)."""
    todo = iter(range(requests))  # shared by the workers: the loop is bounded by construction
    latencies: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        for _ in todo:
            started = time.perf_counter()
            try:
                async with session.get(url) as resp:
                    await resp.read()
                    errors += resp.status != 200
            except (TimeoutError, aiohttp.ClientError):
                errors += 1
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - started


async def measure(session: aiohttp.ClientSession, phase: Phase, args: argparse.Namespace) -> Result:
    await load(session, phase.url, args.warmup, args.concurrency)
    latencies, errors, seconds = await load(session, phase.url, args.requests, args.concurrency)
    latencies.sort()
    return Result(phase, args.requests, errors, seconds, percentile(latencies, 0.50) * 1000,
                  percentile(latencies, 0.99) * 1000)


def peak_rss(pid: int) -> int | None:
    """The kernel's high-water mark of the process's RSS (Linux), in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


async def stream_upload(session: aiohttp.ClientSession, url: str, size: int) -> float:
    chunk = b"\x5a" * MIB  # one buffer sent again and again: the client holds 1 MiB, not the body

    async def body() -> AsyncIterator[bytes]:
        for offset in range(0, size, MIB):
            yield chunk[: min(MIB, size - offset)]

    started = time.perf_counter()
    async with session.post(url, data=body(), timeout=aiohttp.ClientTimeout(total=600)) as resp:
        text = await resp.text()
    if resp.status != 200 or int(text) != size:
        raise RuntimeError(f"upload through {url} answered {resp.status} {text[:100]!r}, expected {size}")
    return time.perf_counter() - started


async def measure_upload(session: aiohttp.ClientSession, gateway: Child, gateway_url: str, app_url: str,
                         size: int) -> Upload:
    assert gateway.pid is not None
    process = psutil.Process(gateway.pid)
    await stream_upload(session, gateway_url + "/upload", MIB)  # warm: connections, buffers, code paths
    rss_before = process.memory_info().rss
    peak = rss_before
    done = asyncio.Event()

    async def sample() -> None:  # a fallback where /proc has no VmHWM
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    try:
        seconds = await stream_upload(session, gateway_url + "/upload", size)
    finally:
        done.set()
        await sampler
    peak = max(peak, peak_rss(gateway.pid) or 0)
    direct = await stream_upload(session, app_url + "/upload", size)
    return Upload(size, rss_before, peak, seconds, direct)


def config_text(entry: str, services: dict[str, str]) -> str:
    lines = [f"entry: {entry}", "services:"]
    lines += [f"  {name}: {{instances: {{base: ['{address}']}}}}" for name, address in services.items()]
    return "\n".join(lines) + "\n"


class Bench:
    """The processes of one run, in a temporary directory; `stop` stops every one of them."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: list[Child] = []
        self.app_port, self.inbound_port, self.outbound_port = free_port(), free_port(), free_port()

    def child(self, name: str, argv: list[str]) -> Child:
        ready = self.workdir / f"{name}.ready.json"
        child = Child(name, [*argv, "--ready-file", str(ready)], ready_file=ready,
                      log_file=self.workdir / f"{name}.log")
        self.children.append(child)
        return child

    def gateway(self, name: str, entry: str, services: dict[str, str]) -> Child:
        config = self.workdir / f"{name}.yaml"
        config.write_text(config_text(entry, services))
        return self.child(name, lane_argv("gateway", "--config", str(config), "--listen", "127.0.0.1:0",
                                          "--admin", "127.0.0.1:0", "--drain-seconds", "1"))

    async def start(self, child: Child, listener: str) -> str:
        await child.start()
        return f"http://{(await child.wait_ready(60))['listeners'][listener]}"

    async def stop(self) -> None:
        await asyncio.gather(*(child.stop(10) for child in self.children))


async def run(args: argparse.Namespace) -> tuple[list[Result], Upload | None]:
    with tempfile.TemporaryDirectory(prefix="lane-bench-") as tmp:
        bench = Bench(Path(tmp))
        app_address = f"127.0.0.1:{bench.app_port}"
        sidecar_in, sidecar_out = f"127.0.0.1:{bench.inbound_port}", f"http://127.0.0.1:{bench.outbound_port}"
        try:
            say("[1/4] starting the app, two gateways and a sidecar (real processes) ...")
            app = bench.child("app", [sys.executable, str(HERE / "trivial_app.py"), "--port", str(bench.app_port),
                                      "--back", app_address, "--proxy", sidecar_out])
            mesh = {"front": sidecar_in, "back": app_address}
            sidecar_config = bench.workdir / "sidecar.yaml"
            sidecar_config.write_text(config_text("front", mesh))
            sidecar = bench.child("sidecar", lane_argv(
                "sidecar", "--config", str(sidecar_config), "--service", "front", "--lane", "base",
                "--app", app_address, "--listen", sidecar_in, "--outbound", sidecar_out.removeprefix("http://"),
                "--admin", "127.0.0.1:0", "--drain-seconds", "1"))
            app_url = await bench.start(app, "app")
            await bench.start(sidecar, "inbound")
            gw_url = await bench.start(bench.gateway("gateway", "app", {"app": app_address}), "gateway")
            mesh_url = await bench.start(bench.gateway("gateway-mesh", "front", mesh), "gateway")
            phases = [
                Phase("direct", "direct: client -> app", app_url + "/", None),
                Phase("gateway", "client -> gateway -> app", gw_url + "/", "direct"),
                Phase("direct 2 hops", "direct: client -> app -> app", app_url + "/call", None),
                Phase("gw + sidecar", "client -> gateway -> sidecar -> app -> sidecar -> app",
                      mesh_url + "/call-proxied", "direct 2 hops"),
            ]
            connector = aiohttp.TCPConnector(limit=args.concurrency, force_close=False)
            async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
                results = []
                for phase in phases:
                    say(f"[2/4] {phase.name}: {args.warmup} warm-up + {args.requests} requests, "
                        f"{args.concurrency} concurrent ...")
                    results.append(await measure(session, phase, args))
                    r = results[-1]
                    say(f"      {r.rps:,.0f} req/s, p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms, {r.errors} errors")
                upload = None
                if args.upload_mib > 0:
                    say(f"[3/4] streaming a {args.upload_mib} MiB upload through a fresh gateway ...")
                    fresh = bench.gateway("gateway-upload", "app", {"app": app_address})
                    fresh_url = await bench.start(fresh, "gateway")
                    upload = await measure_upload(session, fresh, fresh_url, app_url, args.upload_mib * MIB)
        finally:
            say("[4/4] stopping every process ...")
            await bench.stop()
    return results, upload


def table(results: list[Result], upload: Upload | None, args: argparse.Namespace) -> str:
    by_key = {r.phase.key: r for r in results}
    rows = [(f"{'through':<54} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}  "
            f"{'req/s ratio':>11} {'p50 ratio':>9}  baseline")]
    for r in results:
        base = by_key.get(r.phase.baseline or "")
        ratio = f"{r.rps / base.rps:>10.2f}x {r.p50_ms / base.p50_ms:>8.2f}x  {base.phase.key}" if base else \
            f"{'1.00x':>11} {'1.00x':>9}  (baseline)"
        rows.append(f"{r.phase.name:<54} {r.rps:>8,.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.errors:>6}  {ratio}")
    head = (f"lane data plane on 127.0.0.1: {args.requests} requests per row, {args.concurrency} concurrent, "
            f"Python {platform.python_version()}, {os.cpu_count()} CPUs (shared with the load generator)")
    out = [head, "", *rows]
    if upload is not None:
        out += ["", *upload_lines(upload)]
    return "\n".join(out)


def upload_lines(upload: Upload) -> list[str]:
    size_mib = upload.body_bytes / MIB
    return [
        (f"{size_mib:.0f} MiB upload through the gateway: peak RSS growth {upload.growth / MIB:.1f} MiB "
        f"= {upload.growth / upload.body_bytes:.3f} of the body (RSS before {upload.rss_before / MIB:.1f} MiB)"),
        (f"upload rate: {size_mib / upload.seconds:,.0f} MiB/s through the gateway, "
        f"{size_mib / upload.direct_seconds:,.0f} MiB/s direct"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per row (default 2000)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured requests before each row (default 200)")
    parser.add_argument("--upload-mib", type=int, default=256, help="size of the streamed upload, 0 to skip (default 256)")
    parser.add_argument("--svg", help="also draw the results as an SVG bar chart into this file")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.warmup < 0 or args.upload_mib < 0:
        parser.error("--requests and --concurrency must be at least 1, --warmup and --upload-mib at least 0")
    results, upload = run_loop_result(args)
    print(table(results, upload, args), flush=True)
    if args.svg:
        notes = upload_lines(upload) if upload is not None else []
        bars = [Bar(r.phase.key, r.rps, r.p50_ms, r.p99_ms) for r in results]
        title = f"lane data plane: {args.requests} requests per bar, {args.concurrency} concurrent, 127.0.0.1"
        Path(args.svg).write_text(render_svg(title, bars, notes), encoding="utf-8")
        say(f"chart written to {args.svg}")
    return 1 if any(r.errors for r in results) else 0


def run_loop_result(args: argparse.Namespace) -> tuple[list[Result], Upload | None]:
    """`run` on uvloop when installed (like the proxies), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(run(args))
    return uvloop.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
