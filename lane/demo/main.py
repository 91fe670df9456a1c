"""``lane demo``: the whole classic topology on 127.0.0.1 with one command.

Starts, as child processes, a demo app and a sidecar per instance of the config (by default
a@base, a@gray, b@base, c@base, c@gray, d@base; d forwards only ``x-request-id``) and the gateway
on ``--port``, prints the gateway URL and two curl lines, and serves a small admin API for tests
and chaos on ``--admin-port``:

* ``GET /demo/topology``: the ready-file document plus ``up`` flags per instance;
* ``POST /demo/instances/{service}/{lane}/stop`` and ``.../start``: stop or start that instance
  (app and sidecar together, like a pod);
* ``GET /lane/instances``: the union of the gateway's and every sidecar's health view (an
  instance is healthy only if no proxy has it ejected);
* ``GET /lane/carriers``: what each service's app forwards of the lane's carriers, one entry per
  service summed over its sidecars (`lane.sidecar.carriers.sum_views`; the gateway has no app);
* ``GET /lane/admins`` and ``GET /lane/graph``: its proxies' admin URLs (what ``lane graph --admin``
  reads) and the live lane graph as a page that refreshes itself (`lane.graph.page`).

``--fault c@gray:error=0.2`` (or ``latency=200ms``, or both) starts that instance's app faulty
(`lane.demo.app.fault`), so a `lane rollout` of the lane can be shown rolling back.

With grpcio installed every demo app also serves the same call graph over gRPC on its one port
(`lane.demo.grpc_app`), and the banner prints the one-line ``lane demo-grpc`` call; without it the
demo runs HTTP only and says how to get gRPC.

Ctrl-C or SIGTERM stops every child; children also die with the demo if it is killed.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from lane.core.config_load import DEMO_SOURCE, demo_config_text, parse_config
from lane.core.endpoint import Endpoint
from lane.core.errors import ConfigError
from lane.demo.app import Fault, fault
from lane.demo.topology import Instance, Plan, effective_config_text, plan
from lane.graph.page import graph_routes
from lane.process.options import log_level, port
from lane.process.port_probe import bind_problem
from lane.process.readiness import write_json_atomically
from lane.process.server import Listener, run_loop, serve
from lane.process.supervisor import Child, lane_argv
from lane.sidecar.carriers import sum_views

__all__ = ["Demo", "add_arguments", "run"]

log = logging.getLogger(__name__)

READY_TIMEOUT = 60.0
GRPC_MISSING = "gRPC: not shown, grpcio is not installed (pip install 'lane[grpc]', then restart the demo)"


def grpc_installed() -> bool:
    """Whether grpcio imports here (the apps' children share this interpreter and its packages)."""
    try:
        importlib.import_module("grpc")
    except ImportError:
        return False
    return True


class Demo:
    def __init__(self, config_text: str, source: str, workdir: Path, port: int, log_level: str,
                 faults: dict[tuple[str, str], Fault] | None = None, *, grpc: bool = False) -> None:
        self.grpc = grpc  # the apps serve gRPC too
        self.original = parse_config(config_text, source)
        self.plan: Plan = plan(self.original)
        self.faults = dict(faults or {})  # (service, lane) -> how its apps misbehave
        for service, lane in self.faults:
            if not self.plan.find(service, lane):
                raise ConfigError(source, "", f"--fault {service}@{lane}: the config has no such instance")
        self.workdir = workdir
        self.port = port
        self.log_level = log_level
        self.config_path = workdir / "effective-config.yaml"
        self.config_path.write_text(effective_config_text(config_text, self.plan), encoding="utf-8")
        parse_config(self.config_path.read_text(encoding="utf-8"), str(self.config_path))  # must still be valid
        self.pairs: dict[str, tuple[Child, Child]] = {inst.key: self._pair(inst) for inst in self.plan.instances}
        self.gateway = self._child("gateway", [
            "gateway", "--config", str(self.config_path), "--listen", f"127.0.0.1:{port}",
            "--admin", f"127.0.0.1:{self.plan.gateway_admin_port}", "--explain-json", "--drain-seconds", "3",
        ])
        self.admin_url = ""
        self.gateway_url = f"http://127.0.0.1:{port}"  # the bound port once the gateway is ready (--port 0)

    def _child(self, name: str, args: list[str]) -> Child:
        ready = self.workdir / f"{name}.ready.json"
        return Child(name, lane_argv(*args, "--ready-file", str(ready), log_level=self.log_level),
                     ready_file=ready, log_file=self.workdir / f"{name}.log")

    def _pair(self, inst: Instance) -> tuple[Child, Child]:
        app_args = ["demo-app", "--service", inst.service, "--lane", inst.lane,
                    "--listen", f"127.0.0.1:{inst.app_port}", "--drain-seconds", "3"]
        if inst.calls:
            app_args += ["--calls", ",".join(inst.calls)]
        if inst.forward_only:
            app_args += ["--forward-only", ",".join(inst.forward_only)]
        if self.grpc:
            app_args.append("--grpc")
        if (inst.service, inst.lane) in self.faults:
            app_args += ["--fault", str(self.faults[inst.service, inst.lane])]
        app = self._child(f"app-{inst.key}", app_args)
        app.env = {"HTTP_PROXY": f"http://127.0.0.1:{inst.outbound_port}", "NO_PROXY": "", "no_proxy": ""}
        sidecar = self._child(f"sidecar-{inst.key}", [
            "sidecar", "--config", str(self.config_path), "--service", inst.service, "--lane", inst.lane,
            "--app", f"127.0.0.1:{inst.app_port}", "--listen", inst.address,
            "--outbound", f"127.0.0.1:{inst.outbound_port}", "--admin", f"127.0.0.1:{inst.admin_port}",
            "--drain-seconds", "3",
        ])
        return app, sidecar

    def children(self) -> list[Child]:
        return [c for pair in self.pairs.values() for c in pair] + [self.gateway]

    async def start_instance(self, key: str) -> None:
        app, sidecar = self.pairs[key]
        await asyncio.gather(app.start(), sidecar.start())
        await asyncio.gather(app.wait_ready(READY_TIMEOUT), sidecar.wait_ready(READY_TIMEOUT))

    async def stop_instance(self, key: str) -> None:
        app, sidecar = self.pairs[key]
        await asyncio.gather(sidecar.stop(), app.stop())

    async def start_all(self) -> None:
        await asyncio.gather(*(self.start_instance(key) for key in self.pairs))
        await self.gateway.start()
        ready = await self.gateway.wait_ready(READY_TIMEOUT)
        self.gateway_url = f"http://{ready['listeners']['gateway']}"

    async def stop_all(self) -> None:
        await self.gateway.stop()
        await asyncio.gather(*(self.stop_instance(key) for key in self.pairs))

    def topology(self, *, with_up: bool = False) -> dict[str, Any]:
        instances: dict[str, dict[str, list[Any]]] = {}
        for inst in self.plan.instances:
            app, sidecar = self.pairs[inst.key]
            entry: Any = inst.address
            if with_up:
                entry = {"instance": inst.address, "app": f"127.0.0.1:{inst.app_port}",
                         "admin": f"127.0.0.1:{inst.admin_port}", "up": app.alive and sidecar.alive,
                         "pids": {"app": app.pid, "sidecar": sidecar.pid}}
            instances.setdefault(inst.service, {}).setdefault(inst.lane, []).append(entry)
        document: dict[str, Any] = {
            "gateway": self.gateway_url, "admin": self.admin_url,
            "gateway_admin": f"http://127.0.0.1:{self.plan.gateway_admin_port}",
            "config": str(self.config_path), "instances": instances,
        }
        if with_up:
            document["gateway_up"] = self.gateway.alive
        return document

    async def union_view(self) -> dict[str, Any]:
        """Every proxy's `/lane/instances`, merged: unhealthy anywhere means unhealthy."""
        admins = [f"127.0.0.1:{self.plan.gateway_admin_port}"] + [f"127.0.0.1:{i.admin_port}" for i in self.plan.instances]
        merged: dict[str, dict[str, dict[str, bool]]] = {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            for admin in admins:
                try:
                    async with session.get(f"http://{admin}/lane/instances") as resp:
                        view = await resp.json()
                except (TimeoutError, aiohttp.ClientError, ValueError):
                    continue  # that proxy is stopped right now
                for svc, lanes in view.get("services", {}).items():
                    for lane, rows in lanes.items():
                        slot = merged.setdefault(svc, {}).setdefault(lane, {})
                        for row in rows:
                            slot[row["instance"]] = slot.get(row["instance"], True) and bool(row["healthy"])
        return {"services": {svc: {lane: [{"instance": i, "healthy": h} for i, h in rows.items()]
                                   for lane, rows in lanes.items()} for svc, lanes in merged.items()}}

    def admin_urls(self) -> list[str]:
        """The admin URLs of the gateway and every sidecar (a stopped one too: the graph says it did not answer)."""
        return [f"http://127.0.0.1:{self.plan.gateway_admin_port}"] + [
            f"http://127.0.0.1:{inst.admin_port}" for inst in self.plan.instances]

    async def carriers_view(self) -> list[dict[str, Any]]:
        """Every running sidecar's `/lane/carriers`, summed per service; a stopped one is skipped."""
        views = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            for inst in self.plan.instances:
                try:
                    async with session.get(f"http://127.0.0.1:{inst.admin_port}/lane/carriers") as resp:
                        if resp.status == 200:
                            views.append(await resp.json())
                except (TimeoutError, aiohttp.ClientError, ValueError):
                    continue  # that sidecar is stopped right now
        return sum_views(views)


DEMO = web.AppKey("lane_demo", Demo)


async def _topology(request: web.Request) -> web.Response:
    return web.json_response(request.app[DEMO].topology(with_up=True))


async def _instance_action(request: web.Request) -> web.Response:
    demo = request.app[DEMO]
    service, lane, action = request.match_info["service"], request.match_info["lane"], request.match_info["action"]
    targets = demo.plan.find(service, lane)
    if not targets:
        return web.json_response({"error": f"no instance {service}@{lane} in the demo"}, status=404)
    for inst in targets:
        await (demo.stop_instance(inst.key) if action == "stop" else demo.start_instance(inst.key))
    return web.json_response(demo.topology(with_up=True))


async def _union(request: web.Request) -> web.Response:
    return web.json_response(await request.app[DEMO].union_view())


async def _carriers(request: web.Request) -> web.Response:
    return web.json_response(await request.app[DEMO].carriers_view())


def build_demo_admin(demo: Demo) -> web.Application:
    app = web.Application()
    app[DEMO] = demo
    app.router.add_get("/demo/topology", _topology)
    app.router.add_post("/demo/instances/{service}/{lane}/{action:stop|start}", _instance_action)
    app.router.add_get("/lane/instances", _union)
    app.router.add_get("/lane/carriers", _carriers)
    app.router.add_routes(graph_routes(demo.admin_urls))
    return app


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="lane config YAML (default: the embedded examples/demo.yaml)")
    parser.add_argument("--port", type=port, default=8080, help="gateway port on 127.0.0.1 (default 8080; 0 picks a free one)")
    parser.add_argument("--admin-port", type=port, default=0, help="demo admin port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--ready-file", help="write the topology as JSON here once everything is ready")
    parser.add_argument("--child-log-level", type=log_level, default="WARNING", help="log level of the child processes")
    parser.add_argument("--fault", type=_instance_fault, action="append", default=[], metavar="SERVICE@LANE:FAULT",
                        help="start that instance's app faulty, e.g. c@gray:error=0.2 or c@gray:latency=200ms "
                        "(both: c@gray:error=0.2,latency=200ms); repeatable")


def _instance_fault(text: str) -> tuple[tuple[str, str], Fault]:
    """``SERVICE@LANE:FAULT`` for ``--fault`` (the instance is checked against the config later)."""
    where, colon, spec = text.partition(":")
    service, at, lane = where.partition("@")
    if not (colon and at and service and lane):
        raise argparse.ArgumentTypeError(f"expected SERVICE@LANE:FAULT (e.g. c@gray:error=0.2), got {text!r}")
    return (service.strip(), lane.strip()), fault(spec)


def _refusal(args: argparse.Namespace) -> str | None:
    """What makes the demo fail only after it started its twelve children: a port it cannot listen on,
    a ready file it cannot write."""
    for option, number in (("--port", args.port), ("--admin-port", args.admin_port)):
        problem = bind_problem("127.0.0.1", number)
        if problem:
            return f"{option} {number}: cannot listen on 127.0.0.1:{number}: {problem}"
    if args.ready_file and not Path(args.ready_file).resolve().parent.is_dir():
        return f"--ready-file {args.ready_file}: no such directory to write it in"
    return None


def _banner(demo: Demo) -> str:
    """What a person needs next: where to send requests and where each proxy's admin answers."""
    url = f"{demo.gateway_url}/"
    sidecars = ", ".join(f"{inst.service}@{inst.lane} http://127.0.0.1:{inst.admin_port}"
                         for inst in demo.plan.instances)
    gateway_admin = f"http://127.0.0.1:{demo.plan.gateway_admin_port}"
    every = "/lane/graph, /demo/topology, /lane/instances and /lane/carriers of every proxy"
    gateway = demo.gateway_url.removeprefix("http://")
    grpc = ([f"  lane demo-grpc --gateway {gateway} -A xiaoming   # the same call over gRPC, the same path"]
            if demo.grpc else [GRPC_MISSING])
    return "\n".join([
        f"lane demo is up: gateway {url}  (logs in {demo.workdir})",
        f"  gateway admin  {gateway_admin}  (/metrics, /lane/instances, /lane/coloring)",
        f"  sidecar admins {sidecars}  (/metrics, /lane/instances, /lane/carriers)",
        f"  demo pages     {demo.admin_url}  ({every})",
        "try:",
        f"  curl -s -A xiaoming {url}    # colored gray: a@gray -> b@base (fallback) -> c@gray, d@base -> c@gray",
        f"  curl -s {url}                # everyone else stays on base",
        *grpc,
        "Ctrl-C stops everything.",
    ])


def run(args: argparse.Namespace) -> int:
    refusal = _refusal(args)
    if refusal:
        log.error("%s", refusal)
        return 2
    if args.config:
        try:
            text = Path(args.config).read_text(encoding="utf-8")
        except OSError as exc:
            log.error("cannot read %s: %s", args.config, exc.strerror or exc)
            return 2
        except UnicodeDecodeError as exc:  # as `lane check` says it (lane.core.config_load.load_config)
            log.error("%s: not UTF-8 text (byte %d: %s)", args.config, exc.start, exc.reason)
            return 2
        source = args.config
    else:
        text, source = demo_config_text(), DEMO_SOURCE
    with tempfile.TemporaryDirectory(prefix="lane-demo-") as tmp:
        try:
            demo = Demo(text, source, Path(tmp), args.port, args.child_log_level, dict(args.fault),
                        grpc=grpc_installed())
        except ConfigError as exc:
            log.error("%s", exc)
            return 2
        return run_loop(_main(demo, args))


async def _main(demo: Demo, args: argparse.Namespace) -> int:
    async def build() -> tuple[list[Listener], None]:
        try:
            await demo.start_all()
        except BaseException:
            await demo.stop_all()
            raise
        return [Listener("admin", Endpoint("127.0.0.1", args.admin_port), build_demo_admin(demo), reuse_port=False)], None

    def ready(bound: dict[str, Endpoint]) -> None:
        demo.admin_url = f"http://{bound['admin']}"
        print(_banner(demo), flush=True)
        if args.ready_file:
            write_json_atomically(args.ready_file, demo.topology())

    try:
        return await serve(build, drain_seconds=2.0, on_ready=ready)
    except RuntimeError as exc:
        log.error("the demo could not start: %s", exc)
        return 1
    finally:
        await demo.stop_all()
