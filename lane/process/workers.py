"""``--workers N``: N proxy processes on one port (``SO_REUSEPORT``) under a small supervisor.

The supervisor runs the same command N times with ``--workers 1`` (each worker binds the data
ports with ``SO_REUSEPORT``; the kernel spreads connections), restarts a worker that dies, and
serves the admin listener itself:

* ``/metrics`` aggregates every worker through prometheus-client's multiprocess mode;
* ``/lane/instances`` merges the workers' views (unhealthy in any worker means unhealthy);
* ``POST /lane/reload`` and SIGHUP check the file, then have every worker reload it;
* ``GET /lane/coloring``: the rules of the config the workers were last told to load (`lane.dataplane.coloring_view`);
* SIGTERM/SIGINT stop the workers (each drains its in-flight requests) and exit 0.

Only the gateway runs under it: ``lane sidecar`` refuses ``--workers N > 1``, because its
trace-id cache and hop collections are per-process state that an app's outbound call must find
in the worker that saw the inbound request (see `lane.sidecar.main.WORKERS_REFUSED`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

from lane.core.config import LaneConfig
from lane.core.endpoint import Endpoint
from lane.dataplane.coloring_view import COLORING_PATH, coloring_view
from lane.dataplane.runtime import Runtime
from lane.process.admin import AdminViews, View, admin_path
from lane.process.admin_access import admin_access
from lane.process.port_probe import bind_problem
from lane.process.readiness import announce
from lane.process.server import REUSE_PORT_ENV, Listener, run_loop, serve
from lane.process.supervisor import Child

__all__ = ["supervise"]

log = logging.getLogger(__name__)

_DATA_LISTENERS = {"gateway": ("listen",)}


async def _merged_instances(runtime: Runtime, children: list[Child]) -> dict[str, Any]:
    """Every worker's passive-health view, merged: an instance is healthy only if every worker says so."""
    merged: dict[str, dict[str, dict[str, bool]]] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        for child in children:
            if not child.alive or not child.ready_file.exists():
                continue
            admin = (await child.wait_ready(1.0))["listeners"]["admin"]
            try:
                async with session.get(f"http://{admin}/lane/instances") as resp:
                    view = await resp.json()
            except (TimeoutError, aiohttp.ClientError, ValueError):
                continue
            for svc, lanes in view["services"].items():
                for lane, rows in lanes.items():
                    slot = merged.setdefault(svc, {}).setdefault(lane, {})
                    for row in rows:
                        slot[row["instance"]] = slot.get(row["instance"], True) and bool(row["healthy"])
    services = {svc: {lane: [{"instance": i, "healthy": h} for i, h in rows.items()] for lane, rows in lanes.items()}
                for svc, lanes in merged.items()}
    return {"config": runtime.config.source, "workers": len(children), "services": services}


def _admin_views(runtime: Runtime, children: list[Child], command: str) -> AdminViews:
    """The supervisor's admin: the workers' merged view and health; a reload checks the file and, on
    success, sends every worker SIGHUP (`Runtime.reload`'s subscribers)."""

    def health() -> tuple[int, str]:
        alive = sum(child.alive for child in children)
        return (200 if alive else 503), f"ok {alive}/{len(children)} workers\n"

    extra: dict[str, View] = {}
    if command == "gateway":  # the rules the workers were last told to load (lane rollout reads the share)
        extra[COLORING_PATH] = lambda: coloring_view(runtime.config)
    return AdminViews(extra=extra, instances=lambda: _merged_instances(runtime, children), health=health)


async def _watch(children: list[Child]) -> None:
    """Restart workers that die on their own, at most once a second each."""
    while True:
        await asyncio.sleep(1.0)
        for child in children:
            if child.process is not None and not child.alive:
                log.error("%s exited with status %s; restarting it", child.name, child.returncode())
                await child.start()


def supervise(args: argparse.Namespace, command: str, config: LaneConfig) -> int:
    for option in _DATA_LISTENERS[command]:
        if getattr(args, option).port == 0:
            log.error("--workers %d needs a fixed --%s port (workers share it)", args.workers, option)
            return 2
    # Before any worker starts: otherwise a busy port is each worker's failure, seconds later.
    for option, reuse in [*((o, True) for o in _DATA_LISTENERS[command]), ("admin", False)]:
        address = getattr(args, option)
        problem = bind_problem(address.host, address.port, reuse_port=reuse)
        if problem:
            log.error("--%s: cannot listen on %s: %s", option, address, problem)
            return 2
    workdir = Path(tempfile.mkdtemp(prefix=f"lane-{command}-workers-"))
    metrics_dir = workdir / "metrics"
    metrics_dir.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    children = []
    for index in range(args.workers):
        ready = workdir / f"worker-{index}.json"
        argv = [sys.executable, "-m", "lane", f"--log-level={level}", *_command_args(), "--workers", "1",
                "--admin", "127.0.0.1:0", "--ready-file", str(ready)]
        children.append(Child(f"{command} worker {index}", argv, ready_file=ready,
                              log_file=workdir / f"worker-{index}.log", env={REUSE_PORT_ENV: "1"}))
    runtime = Runtime(config, args.config)
    def fan_out(_config: LaneConfig) -> None:
        for child in children:
            child.signal(signal.SIGHUP)

    runtime.on_swap(fan_out)
    try:
        return run_loop(_main(args, command, runtime, children))
    except RuntimeError as exc:  # a worker that died or hung while starting: its last log line says why
        lines = str(exc).splitlines()
        log.error("%s%s", lines[0], f" {lines[-1].lstrip(' |')}" if len(lines) > 1 else "")
        return 2
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _command_args() -> list[str]:
    """The command line after the global options: the subcommand and its options (later ones win)."""
    argv = sys.argv[1:]
    out: list[str] = []
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg.startswith("--log-level"):
            skip = arg == "--log-level"
            continue
        out = argv[i:]
        break
    return out


async def _main(args: argparse.Namespace, command: str, runtime: Runtime, children: list[Child]) -> int:
    watcher: asyncio.Task[None] | None = None

    async def build() -> tuple[list[Listener], Runtime]:
        nonlocal watcher
        await asyncio.gather(*(child.start() for child in children))
        await asyncio.gather(*(child.wait_ready(60.0) for child in children))
        watcher = asyncio.create_task(_watch(children))
        admin = admin_path(runtime, _admin_views(runtime, children, command), admin_access(args))
        return [Listener("admin", args.admin, None, reuse_port=False, fast=admin)], runtime

    def ready(bound: dict[str, Endpoint]) -> None:
        first: dict[str, Any] = {}
        if children and children[0].ready_file.exists():
            first = dict(json.loads(children[0].ready_file.read_text())["listeners"])
        first["admin"] = str(bound["admin"])
        announce(command, first, args.ready_file)

    try:
        return await serve(build, drain_seconds=args.drain_seconds, on_ready=ready)
    finally:
        if watcher is not None:
            watcher.cancel()
        await asyncio.gather(*(child.stop(args.drain_seconds + 5) for child in children))
