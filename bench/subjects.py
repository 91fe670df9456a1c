"""The subjects of the side-by-side benchmark, started on 127.0.0.1 and always stopped.

Every subject is something wrk is pointed at, with the traffic it gets, where that traffic must
land (checked on the stub backends' counters, `bench/stub_backend.py`) and the processes whose
CPU and memory are its cost:

* ``direct``        wrk -> stub a@base (the backend alone; traffic is tagged ``base`` by wrk);
* ``envoy``         wrk -> Envoy 1.40 (``--concurrency 2``) running the gateway Lua that
                    ``lane mesh render`` emits and the rendered routes (`mesh_config.bootstrap`)
                    -> stub a@gray / a@base;
* ``gateway``       wrk -> ``lane gateway --workers 2`` (demo coloring rules, metrics on, tag
                    header + baggage set) -> stub a@gray / a@base; ``gateway-1w``: ``--workers 1``;
                    ``gateway-aiohttp``: ``--core aiohttp`` (only when ``lane gateway`` has it);
* ``chain``         wrk -> lane gateway -> sidecar a@L (inbound) -> app a@L -> sidecar a@L
                    (outbound) -> sidecar b@L (inbound) -> stub b@L, for L in gray and base;
* ``direct-chain``  wrk -> app a@base -> stub b@base: the same app calling directly.

Gray traffic is ``User-Agent: xiaoming`` (the demo rule), plain traffic anything else; the two
interleave request by request in one wrk run, so each run must split about 50/50 between the
gray and base instances, and a request that lands on the wrong instance or with the wrong tag
is a 421. The ``chain`` apps check their own lane too (``--expect-tag``), so a gateway that sends
gray to a@base is caught even though a@base's sidecar would still send it on to b@gray.

`Lab` owns every process: lane processes are `lane.supervisor.Child` (SIGTERM then SIGKILL, and
they die with this process); Envoys are ``async with`` blocks. Leaving ``async with Lab(...)``
stops all of them, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import yaml
from envoy_proc import EnvoyProcess, start_envoy
from stub_backend import Instance, stub_bootstrap

from lane.config import demo_config_text, parse_config
from lane.demo_topology import free_port
from lane.supervisor import Child, lane_argv
from mesh_config.backends import Backend
from mesh_config.bootstrap import GATEWAY_LISTENER, envoy_bootstrap
from mesh_config.render import render_objects

__all__ = ["ALL_SUBJECTS", "GRAY", "PLAIN", "QUICK_SUBJECTS", "Lab", "Target", "has_core_option"]

HERE: Final = Path(__file__).resolve().parent
TAG: Final = "x-mse-tag"
Headers = tuple[tuple[str, str], ...]
GRAY: Final[Headers] = (("User-Agent", "xiaoming"),)  # the demo rule colors it gray
PLAIN: Final[Headers] = (("User-Agent", "lane-bench"),)  # no rule matches: the default lane
DIRECT_BASE: Final[Headers] = (*PLAIN, (TAG, "base"))  # what a proxy would have added

ALL_SUBJECTS: Final = ("direct", "envoy", "gateway", "gateway-1w", "gateway-aiohttp", "chain", "direct-chain")
QUICK_SUBJECTS: Final = ("direct", "envoy", "gateway", "chain", "direct-chain")

A_BASE, A_GRAY = Instance("a", "base"), Instance("a", "gray")
B_BASE, B_GRAY = Instance("b", "base"), Instance("b", "gray")
STUBS: Final = (A_BASE, A_GRAY, B_BASE, B_GRAY)
LANES: Final = ("base", "gray")


@dataclass(frozen=True, slots=True)
class Target:
    """What a subject is measured as."""

    name: str
    url: str
    requests: tuple[Headers, ...]  # cycled by wrk, request by request
    expect: Mapping[Instance, float]  # share of the answers each stub instance must give (sums to 1)
    processes: Mapping[str, int]  # role -> top-level pid (children are found at measuring time)
    hops: int  # proxy traversals added over `baseline`
    baseline: str | None
    description: str
    notes: tuple[str, ...] = field(default=())


def has_core_option() -> bool:
    """Whether ``lane gateway`` has ``--core`` (the aiohttp core then becomes a subject of its own)."""
    done = subprocess.run(lane_argv("gateway", "--help"), capture_output=True, text=True, timeout=60, check=False)
    return "--core" in done.stdout


def _config_text(services: Mapping[str, Mapping[str, str]]) -> str:
    """The demo config (tag, lanes, coloring rules) with *services* (name -> lane -> address), entry a."""
    data: dict[str, Any] = yaml.safe_load(demo_config_text())
    data["entry"] = "a"
    data["services"] = {name: {"instances": {lane: [address] for lane, address in lanes.items()}}
                        for name, lanes in services.items()}
    text: str = yaml.safe_dump(data, sort_keys=False)
    parse_config(text, "<bench config>")  # fail here, with the config's own error, not in a child
    return text


class Lab:
    """Starts what the chosen subjects need, once, under *workdir*; stops everything on exit."""

    def __init__(self, workdir: Path, subjects: Sequence[str]) -> None:
        self.workdir = workdir
        self.subjects = tuple(subjects)
        self.children: list[Child] = []
        self.stack = contextlib.AsyncExitStack()
        self.targets: dict[str, Target] = {}
        self.stubs: EnvoyProcess | None = None
        self._app_cache: dict[str, tuple[int, str]] | None = None
        self._outbound: dict[str, int] | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            await asyncio.shield(self._stop_children())
        finally:
            await self.stack.aclose()

    async def _stop_children(self) -> None:
        await asyncio.gather(*(child.stop(10) for child in reversed(self.children)), return_exceptions=True)

    def stub_address(self, instance: Instance) -> str:
        assert self.stubs is not None
        return f"127.0.0.1:{self.stubs.listeners[instance.listener]}"

    async def _child(self, name: str, argv: list[str]) -> tuple[int, dict[str, str]]:
        ready = self.workdir / f"{name}.ready.json"
        child = Child(name, [*argv, "--ready-file", str(ready)], ready_file=ready,
                      log_file=self.workdir / f"{name}.log")
        self.children.append(child)
        await child.start()
        document = await child.wait_ready(60)
        assert child.pid is not None
        return child.pid, dict(document["listeners"])

    async def _gateway(self, name: str, services: Mapping[str, Mapping[str, str]], workers: int,
                       core: str | None = None) -> tuple[int, str]:
        config = self.workdir / f"{name}.yaml"
        config.write_text(_config_text(services), encoding="utf-8")
        listen = f"127.0.0.1:{free_port()}"  # --workers N > 1 shares one fixed port (SO_REUSEPORT)
        argv = lane_argv("gateway", "--config", str(config), "--listen", listen, "--admin", "127.0.0.1:0",
                         "--workers", str(workers), "--drain-seconds", "1", "--otlp-endpoint", "none")
        if core is not None:
            argv += ["--core", core]
        pid, listeners = await self._child(name, argv)
        return pid, listeners["gateway"]

    async def start(self, say: Callable[[str], None]) -> dict[str, Target]:
        """Start the stubs and every selected subject; returns the targets by subject name."""
        say(f"starting stub backends (Envoy direct_response: {', '.join(map(str, STUBS))}) ...")
        stubs = await self.stack.enter_async_context(
            start_envoy("stubs", stub_bootstrap(STUBS, TAG), self.workdir, concurrency=2))
        self.stubs = stubs
        gateway_services = {"a": {lane: self.stub_address(Instance("a", lane)) for lane in LANES}}
        both_a = {A_GRAY: 0.5, A_BASE: 0.5}
        core = None  # the default core of `lane gateway`; gateway-aiohttp names the old one
        for name in self.subjects:
            say(f"starting {name} ...")
            if name == "direct":
                self.targets[name] = Target(
                    name, f"http://{self.stub_address(A_BASE)}/", (DIRECT_BASE,), {A_BASE: 1.0},
                    {"stub-backends": stubs.pid}, 0, None, "wrk -> stub a@base (the backend alone)",
                    ("its CPU and RSS are the stub backends' Envoy's (the other subjects' exclude it)",))
            elif name == "envoy":
                self.targets[name] = await self._envoy()
            elif name in ("gateway", "gateway-1w", "gateway-aiohttp"):
                workers = 1 if name == "gateway-1w" else 2
                pid, address = await self._gateway(name, gateway_services, workers,
                                                   "aiohttp" if name == "gateway-aiohttp" else core)
                self.targets[name] = Target(
                    name, f"http://{address}/", (GRAY, PLAIN), both_a, {name: pid}, 1, "direct",
                    f"wrk -> lane gateway --workers {workers}"
                    + (" --core aiohttp" if name == "gateway-aiohttp" else "") + " -> stub a@gray|a@base")
            elif name == "chain":
                self.targets[name] = await self._chain(core)
            elif name == "direct-chain":
                apps = await self._apps()
                self.targets[name] = Target(
                    name, f"http://{apps['base'][1]}/direct", (DIRECT_BASE,), {B_BASE: 1.0},
                    {"app-a-base": apps["base"][0]}, 0, None, "wrk -> app a@base -> stub b@base (no proxies)",
                    ("the app is bench/chain_app.py (raw asyncio + httptools), as in chain",))
            else:
                raise ValueError(f"unknown subject {name!r}")
        return self.targets

    async def _envoy(self) -> Target:
        config = parse_config(_config_text({"a": {lane: self.stub_address(Instance("a", lane)) for lane in LANES}}),
                              "<bench config>")
        backends = {("a", lane): Backend("a", lane, int(self.stub_address(Instance("a", lane)).rpartition(":")[2]))
                    for lane in LANES}
        bootstrap = envoy_bootstrap(config, render_objects(config), backends)
        envoy = await self.stack.enter_async_context(start_envoy("envoy", bootstrap, self.workdir, concurrency=2))
        return Target("envoy", f"http://127.0.0.1:{envoy.listeners[GATEWAY_LISTENER]}/", (GRAY, PLAIN),
                      {A_GRAY: 0.5, A_BASE: 0.5}, {"envoy": envoy.pid}, 1, "direct",
                      "wrk -> Envoy --concurrency 2 + rendered gateway Lua and routes -> stub a@gray|a@base")

    async def _apps(self) -> dict[str, tuple[int, str]]:
        """app a@base and app a@gray (pid, address); their sidecars' outbound ports are chosen now."""
        if self._app_cache is None:
            self._outbound = {lane: free_port() for lane in LANES}
            self._app_cache = {}
            for lane in LANES:
                pid, listeners = await self._child(f"app-a-{lane}", [
                    sys.executable, str(HERE / "chain_app.py"), "--next-host", "b",
                    "--proxy", f"127.0.0.1:{self._outbound[lane]}",
                    "--direct", self.stub_address(Instance("b", lane)), "--expect-tag", lane])
                self._app_cache[lane] = (pid, listeners["app"])
        return self._app_cache

    async def _chain(self, core: str | None) -> Target:
        apps = await self._apps()
        assert self._outbound is not None
        inbound = {(svc, lane): f"127.0.0.1:{free_port()}" for svc in ("a", "b") for lane in LANES}
        services = {svc: {lane: inbound[(svc, lane)] for lane in LANES} for svc in ("a", "b")}
        config = self.workdir / "chain.yaml"
        config.write_text(_config_text(services), encoding="utf-8")
        roles: dict[str, int] = {}
        for svc in ("b", "a"):  # the callee first, so a's sidecar finds b listening
            for lane in LANES:
                app = apps[lane][1] if svc == "a" else self.stub_address(Instance("b", lane))
                outbound = f"127.0.0.1:{self._outbound[lane]}" if svc == "a" else f"127.0.0.1:{free_port()}"
                name = f"sidecar-{svc}-{lane}"
                roles[name], _ = await self._child(name, lane_argv(
                    "sidecar", "--config", str(config), "--service", svc, "--lane", lane, "--app", app,
                    "--listen", inbound[(svc, lane)], "--outbound", outbound, "--admin", "127.0.0.1:0",
                    "--drain-seconds", "1", "--otlp-endpoint", "none"))
        for lane in LANES:
            roles[f"app-a-{lane}"] = apps[lane][0]
        pid, address = await self._gateway("gateway-chain", services, 2, core)
        roles["gateway-chain"] = pid
        return Target("chain", f"http://{address}/", (GRAY, PLAIN), {B_GRAY: 0.5, B_BASE: 0.5}, roles, 4,
                      "direct-chain",
                      "wrk -> gateway -> sidecar a (in) -> app a -> sidecar a (out) -> sidecar b (in) -> stub b",
                      ("hops = 4 proxy traversals: gateway, a inbound, a outbound, b inbound",))
