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
* ``direct-chain``  wrk -> app a@base -> stub b@base: the same app calling directly;
* ``sidecar-hop``   wrk (as app a, tag header forwarded) -> sidecar a@base (outbound) -> sidecar
                    b@L (inbound) -> stub b@L: one call between two apps, both sidecar hops;
* ``envoy-hop``     the same call through an Envoy pair (`bench/hop_envoy.py`): the rendered mesh
                    routes in a's outbound Envoy -> b@L's inbound Envoy -> stub b@L;
* ``engine-hop``    the same call through lane's engine with next to no request logic
                    (`bench/engine_hop.py`: route by the tag as received, relay): what the engine
                    costs, so ``sidecar-hop`` minus it is what lane's per-request logic costs;
* ``grpc-gateway``  h2load (gRPC unary calls over h2c, `bench/h2load.py`) -> ``lane gateway
                    --workers 2`` -> HTTP/2 -> gRPC stub a@gray / a@base (service a is
                    ``protocol: grpc`` in the config);
* ``grpc-envoy``    the same calls through Envoy (``--concurrency 2``) with the same rendered gateway
                    Lua and routes, a's subset clusters HTTP/2 as istiod makes them for a gRPC port
                    (`mesh_config.bootstrap`).

The load of every subject with sidecars behind it (the hop pairs, ``chain`` and its baseline
``direct-chain``, whose app forwards them) carries fresh trace headers on every request
(``traceparent``, ``x-request-id`` and B3 when the config's ``proxy.trace_headers`` lists it), as
all traffic behind a gateway does, so the sidecars pay for their per-trace work. Each subject names its ``peer``, the
Envoy doing the same job (``envoy`` for the gateways and the chain, ``envoy-hop`` for
``sidecar-hop``): the ratios and targets compare a subject with its peer from the same run.

The stub backends are nginx when it is there or can be installed (`bench/nginx_stub.py`), else
Envoy (`bench/stub_backend.py`); ``Lab(stubs=...)`` forces one kind.

Gray traffic is ``User-Agent: xiaoming`` (the demo rule), plain traffic anything else; the two
interleave request by request in one wrk run, so each run must split about 50/50 between the
gray and base instances, and a request that lands on the wrong instance or with the wrong tag
is a 421. The ``chain`` apps check their own lane too (``--expect-tag``), so a gateway that sends
gray to a@base is caught even though a@base's sidecar would still send it on to b@gray.

The gRPC subjects' gray calls carry the user agent grpcio sends for xiaoming (``xiaoming
grpc-python/...``: the demo's ``xiaoming-grpc`` rule), their plain calls grpcio's own. h2load
sends one header set per process, so gray and plain are two h2load processes rather than one
interleaved stream (side by side at 32 connections, one after the other with as many calls at 1:
`bench/h2load.py`); the demo's rules color on headers only, and a gRPC call has no query to
color on, so a rule both the gateway and Envoy could apply per request of one process would
have to be a bench-only rule -- two processes keep the demo's rules as they are. The gRPC stubs
are nginx's (`bench/nginx_stub.py`): Envoy's ``direct_response`` cannot answer a gRPC call with
OK (it turns every local reply to a gRPC request into a trailers-only error, ``grpc-status: 2``
for a 200), so with the Envoy stubs the gRPC subjects are skipped, the reason in `Lab.skipped`.

`Lab` owns every process: lane processes are `lane.process.supervisor.Child` (SIGTERM then SIGKILL, and
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
from envoy_proc import envoy_version, start_envoy
from h2load import GRPC_PATH
from hop_envoy import ENVOY_HOP_CONCURRENCY, INBOUND_LISTENER, inbound_bootstrap
from nginx_stub import NginxError, ensure_nginx, start_nginx_stubs
from stub_backend import EnvoyStubs, Instance, Stubs, stub_bootstrap
from wrk import TRACE_HEADERS

from lane.core.config_load import demo_config_text, parse_config
from lane.demo.topology import free_port
from lane.process.supervisor import Child, lane_argv
from mesh_config.backends import Backend
from mesh_config.bootstrap import GATEWAY_LISTENER, MESH_LISTENER, envoy_bootstrap
from mesh_config.render import render_objects

__all__ = ["ALL_SUBJECTS", "GRAY", "GRPC_GRAY", "GRPC_PLAIN", "GRPC_SUBJECTS", "PLAIN", "QUICK_SUBJECTS", "STUB_KINDS",
           "Lab", "Target", "has_core_option"]

HERE: Final = Path(__file__).resolve().parent
TAG: Final = "x-mse-tag"
Headers = tuple[tuple[str, str], ...]
GRAY: Final[Headers] = (("User-Agent", "xiaoming"),)  # the demo rule colors it gray
PLAIN: Final[Headers] = (("User-Agent", "lane-bench"),)  # no rule matches: the default lane
DIRECT_BASE: Final[Headers] = (*PLAIN, (TAG, "base"))  # what a proxy would have added
# What app a sends to its sidecar's outbound side when calling service b: the lane it forwards.
HOP_GRAY: Final[Headers] = (("Host", "b"), (TAG, "gray"))
HOP_BASE: Final[Headers] = (("Host", "b"), (TAG, "base"))
# gRPC calls: the user agent grpcio sends with grpc.primary_user_agent=xiaoming (the demo's xiaoming-grpc rule)
GRPC_GRAY: Final[Headers] = (("user-agent", "xiaoming grpc-python/1.85.3 grpc-c/51.0.0 (linux; chttp2)"),)
GRPC_PLAIN: Final[Headers] = (("user-agent", "grpc-python/1.85.3 grpc-c/51.0.0 (linux; chttp2)"),)

GRPC_SUBJECTS: Final = ("grpc-envoy", "grpc-gateway")  # loaded by h2load, served by the nginx gRPC stubs
ALL_SUBJECTS: Final = ("direct", "envoy", "gateway", "gateway-1w", "gateway-aiohttp", "chain", "direct-chain",
                        "envoy-hop", "sidecar-hop", "engine-hop", *GRPC_SUBJECTS)
QUICK_SUBJECTS: Final = ("direct", "envoy", "gateway", "chain", "direct-chain", "envoy-hop", "sidecar-hop",
                         *GRPC_SUBJECTS)
STUB_KINDS: Final = ("auto", "nginx", "envoy")  # auto: nginx, else Envoy

A_BASE, A_GRAY = Instance("a", "base"), Instance("a", "gray")
B_BASE, B_GRAY = Instance("b", "base"), Instance("b", "gray")
A_BASE_GRPC, A_GRAY_GRPC = Instance("a", "base", grpc=True), Instance("a", "gray", grpc=True)
STUBS: Final = (A_BASE, A_GRAY, B_BASE, B_GRAY)
GRPC_STUBS: Final = (A_BASE_GRPC, A_GRAY_GRPC)  # started only for the gRPC subjects
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
    trace: tuple[str, ...] = ()  # trace headers made fresh per request (`wrk.TRACE_HEADERS` names)
    peer: str | None = None  # the Envoy subject doing the same job: ratios are taken against it
    load: str = "wrk"  # the load generator: wrk (HTTP/1.1) or h2load (gRPC unary calls, `bench/h2load.py`)


def has_core_option() -> bool:
    """Whether ``lane gateway`` has ``--core`` (the aiohttp core then becomes a subject of its own)."""
    done = subprocess.run(lane_argv("gateway", "--help"), capture_output=True, text=True, timeout=60, check=False)
    return "--core" in done.stdout


def trace_load() -> tuple[str, ...]:
    """The trace headers of the load behind a gateway: traceparent and x-request-id, plus B3 when the
    config every subject runs (the demo's proxy section) lists it in ``proxy.trace_headers``."""
    configured = parse_config(demo_config_text(), "<demo config>").proxy.trace_headers
    wanted = ("traceparent", "x-request-id", *(("b3",) if "x-b3-traceid" in configured else ()))
    return tuple(t for t in TRACE_HEADERS if t in wanted)


def _config_text(services: Mapping[str, Mapping[str, str]], grpc: bool = False) -> str:
    """The demo config (tag, lanes, coloring rules) with *services* (name -> lane -> address), entry a;
    with *grpc*, every service is ``protocol: grpc``."""
    data: dict[str, Any] = yaml.safe_load(demo_config_text())
    data["entry"] = "a"
    data["services"] = {name: {**({"protocol": "grpc"} if grpc else {}),
                               "instances": {lane: [address] for lane, address in lanes.items()}}
                        for name, lanes in services.items()}
    text: str = yaml.safe_dump(data, sort_keys=False)
    parse_config(text, "<bench config>")  # fail here, with the config's own error, not in a child
    return text


class Lab:
    """Starts what the chosen subjects need, once, under *workdir*; stops everything on exit."""

    def __init__(self, workdir: Path, subjects: Sequence[str], stubs: str = "auto") -> None:
        if stubs not in STUB_KINDS:
            raise ValueError(f"unknown stub kind {stubs!r}; choose from {', '.join(STUB_KINDS)}")
        self.workdir = workdir
        self.subjects = tuple(subjects)
        self.stub_kind = stubs
        self.children: list[Child] = []
        self.stack = contextlib.AsyncExitStack()
        self.targets: dict[str, Target] = {}
        self.stubs: Stubs | None = None
        self.stub_note: str | None = None  # why the Envoy stubs were used under "auto"
        self.skipped: dict[str, str] = {}  # subject -> why it was not started
        self.instances = STUBS + (GRPC_STUBS if any(s in GRPC_SUBJECTS for s in self.subjects) else ())
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
        return self.stubs.address(instance)

    async def _start_stubs(self) -> Stubs:
        """nginx (installed when missing and possible), else -- under "auto" -- the Envoy stubs."""
        if self.stub_kind != "envoy":
            try:
                exe = ensure_nginx()
            except NginxError as exc:
                if self.stub_kind == "nginx":
                    raise
                self.stub_note = f"nginx unavailable, Envoy stubs used instead: {str(exc).splitlines()[0]}"
            else:
                return await self.stack.enter_async_context(
                    start_nginx_stubs(exe, self.instances, TAG, self.workdir / "nginx-stubs"))
        envoy = await self.stack.enter_async_context(
            start_envoy("stubs", stub_bootstrap(STUBS, TAG), self.workdir, concurrency=2))
        return EnvoyStubs(envoy, STUBS, envoy_version())

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
                       core: str | None = None, grpc: bool = False) -> tuple[int, str]:
        config = self.workdir / f"{name}.yaml"
        config.write_text(_config_text(services, grpc), encoding="utf-8")
        listen = f"127.0.0.1:{free_port()}"  # --workers N > 1 shares one fixed port (SO_REUSEPORT)
        argv = lane_argv("gateway", "--config", str(config), "--listen", listen, "--admin", "127.0.0.1:0",
                         "--workers", str(workers), "--drain-seconds", "1", "--otlp-endpoint", "none")
        if core is not None:
            argv += ["--core", core]
        pid, listeners = await self._child(name, argv)
        return pid, listeners["gateway"]

    async def start(self, say: Callable[[str], None]) -> dict[str, Target]:
        """Start the stubs and every selected subject; returns the targets by subject name (without
        the subjects that cannot run on these stubs: `skipped`)."""
        say(f"starting stub backends ({self.stub_kind}: {', '.join(map(str, self.instances))}) ...")
        (self.workdir / "nginx-stubs").mkdir(exist_ok=True)
        stubs = self.stubs = await self._start_stubs()
        say(f"stub backends: {stubs.kind}" + (f" ({self.stub_note})" if self.stub_note else ""))
        if isinstance(stubs, EnvoyStubs):
            for name in self.subjects:
                if name in GRPC_SUBJECTS:
                    self.skipped[name] = ("skipped: the gRPC stubs need nginx (Envoy's direct_response answers a "
                                          "gRPC call only with an error status)")
                    say(f"{name} {self.skipped[name]}")
        gateway_services = {"a": {lane: self.stub_address(Instance("a", lane)) for lane in LANES}}
        both_a = {A_GRAY: 0.5, A_BASE: 0.5}
        core = None  # the default core of `lane gateway`; gateway-aiohttp names the old one
        for name in self.subjects:
            if name in self.skipped:
                continue
            say(f"starting {name} ...")
            if name == "direct":
                self.targets[name] = Target(
                    name, f"http://{self.stub_address(A_BASE)}/", (DIRECT_BASE,), {A_BASE: 1.0},
                    {"stub-backends": stubs.pid}, 0, None, "wrk -> stub a@base (the backend alone)",
                    (f"its CPU and RSS are the stub backends' ({stubs.kind}); the other subjects' exclude them",))
            elif name == "envoy":
                self.targets[name] = await self._envoy()
            elif name in ("gateway", "gateway-1w", "gateway-aiohttp"):
                workers = 1 if name == "gateway-1w" else 2
                pid, address = await self._gateway(name, gateway_services, workers,
                                                   "aiohttp" if name == "gateway-aiohttp" else core)
                self.targets[name] = Target(
                    name, f"http://{address}/", (GRAY, PLAIN), both_a, {name: pid}, 1, "direct",
                    f"wrk -> lane gateway --workers {workers}"
                    + (" --core aiohttp" if name == "gateway-aiohttp" else "") + " -> stub a@gray|a@base",
                    peer="envoy")
            elif name == "chain":
                self.targets[name] = await self._chain(core)
            elif name == "sidecar-hop":
                self.targets[name] = await self._sidecar_hop()
            elif name == "envoy-hop":
                self.targets[name] = await self._envoy_hop()
            elif name == "engine-hop":
                self.targets[name] = await self._engine_hop()
            elif name == "grpc-envoy":
                self.targets[name] = await self._grpc_envoy()
            elif name == "grpc-gateway":
                pid, address = await self._gateway(name, self._grpc_services(), 2, core, grpc=True)
                self.targets[name] = Target(
                    name, f"http://{address}{GRPC_PATH}", (GRPC_GRAY, GRPC_PLAIN),
                    {A_GRAY_GRPC: 0.5, A_BASE_GRPC: 0.5}, {name: pid}, 1, None,
                    "h2load (gRPC unary, h2c) -> lane gateway --workers 2 -> HTTP/2 -> gRPC stub a@gray|a@base",
                    peer="grpc-envoy", load="h2load")
            elif name == "direct-chain":
                apps = await self._apps()
                self.targets[name] = Target(
                    name, f"http://{apps['base'][1]}/direct", (DIRECT_BASE,), {B_BASE: 1.0},
                    {"app-a-base": apps["base"][0]}, 0, None, "wrk -> app a@base -> stub b@base (no proxies)",
                    ("the app is bench/chain_app.py (raw asyncio + httptools), as in chain",),
                    trace=trace_load())
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
                      "wrk -> Envoy --concurrency 2 + rendered gateway Lua and routes -> stub a@gray|a@base",
                      peer="envoy")

    def _grpc_services(self) -> dict[str, dict[str, str]]:
        return {"a": {lane: self.stub_address(Instance("a", lane, grpc=True)) for lane in LANES}}

    async def _grpc_envoy(self) -> Target:
        """Envoy as ``envoy``, for gRPC: service a is ``protocol: grpc``, so its subset clusters speak HTTP/2;
        the gateway listener takes h2c per connection (codec AUTO, as istiod configures a gateway)."""
        services = self._grpc_services()
        config = parse_config(_config_text(services, grpc=True), "<bench config>")
        backends = {("a", lane): Backend("a", lane, int(address.rpartition(":")[2]))
                    for lane, address in services["a"].items()}
        bootstrap = envoy_bootstrap(config, render_objects(config), backends)
        envoy = await self.stack.enter_async_context(start_envoy("grpc-envoy", bootstrap, self.workdir, concurrency=2))
        return Target("grpc-envoy", f"http://127.0.0.1:{envoy.listeners[GATEWAY_LISTENER]}{GRPC_PATH}",
                      (GRPC_GRAY, GRPC_PLAIN), {A_GRAY_GRPC: 0.5, A_BASE_GRPC: 0.5}, {"envoy": envoy.pid}, 1, None,
                      "h2load (gRPC unary, h2c) -> Envoy --concurrency 2 + rendered gateway Lua and routes -> "
                      "HTTP/2 -> gRPC stub a@gray|a@base", peer="grpc-envoy", load="h2load")

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
                      ("hops = 4 proxy traversals: gateway, a inbound, a outbound, b inbound",),
                      trace=trace_load(), peer="envoy")

    def _hop_config(self, a_inbound: Mapping[str, str], b_inbound: Mapping[str, str]) -> str:
        """The demo config with services a and b at these addresses (lane -> address)."""
        return _config_text({"a": dict(a_inbound), "b": dict(b_inbound)})


    async def _sidecar_hop(self) -> Target:
        inbound = {lane: f"127.0.0.1:{free_port()}" for lane in LANES}
        a_inbound = {lane: f"127.0.0.1:{free_port()}" for lane in LANES}  # a@gray's is never started
        config_text = self._hop_config(a_inbound, inbound)
        config = self.workdir / "hop.yaml"
        config.write_text(config_text, encoding="utf-8")
        roles: dict[str, int] = {}
        for lane in LANES:  # the callee's sidecars first, so a's sidecar finds them listening
            roles[f"sidecar-b-{lane}"], _ = await self._child(f"hop-sidecar-b-{lane}", lane_argv(
                "sidecar", "--config", str(config), "--service", "b", "--lane", lane,
                "--app", self.stub_address(Instance("b", lane)), "--listen", inbound[lane],
                "--outbound", f"127.0.0.1:{free_port()}", "--admin", "127.0.0.1:0", "--drain-seconds", "1",
                "--otlp-endpoint", "none"))
        roles["sidecar-a-base"], listeners = await self._child("hop-sidecar-a-base", lane_argv(
            "sidecar", "--config", str(config), "--service", "a", "--lane", "base",
            "--app", self.stub_address(A_BASE), "--listen", a_inbound["base"],
            "--outbound", f"127.0.0.1:{free_port()}", "--admin", "127.0.0.1:0", "--drain-seconds", "1",
            "--otlp-endpoint", "none"))
        return Target("sidecar-hop", f"http://{listeners['outbound']}/", (HOP_GRAY, HOP_BASE),
                      {B_GRAY: 0.5, B_BASE: 0.5}, roles, 2, "direct",
                      "wrk (as app a) -> sidecar a@base (outbound) -> sidecar b@gray|b@base (inbound) -> stub b",
                      ("hops = 2 proxy traversals: a outbound, b inbound; CPU and RSS: all three sidecars",),
                      trace=trace_load(), peer="envoy-hop")

    async def _engine_hop(self) -> Target:
        engine = [sys.executable, str(HERE / "engine_hop.py"), "--listen", "127.0.0.1:0"]
        roles: dict[str, int] = {}
        inbound: dict[str, str] = {}
        for lane in LANES:
            roles[f"engine-b-{lane}"], listeners = await self._child(
                f"engine-hop-b-{lane}", [*engine, "--to", self.stub_address(Instance("b", lane))])
            inbound[lane] = listeners["hop"]
        roles["engine-a-out"], listeners = await self._child(
            "engine-hop-a-out", [*engine, "--to", inbound["base"], *(f"--route={k}={v}" for k, v in inbound.items())])
        return Target("engine-hop", f"http://{listeners['hop']}/", (HOP_GRAY, HOP_BASE),
                      {B_GRAY: 0.5, B_BASE: 0.5}, roles, 2, "direct",
                      "wrk (as app a) -> lane engine a (outbound: by tag) -> lane engine b@gray|b@base -> stub b",
                      ("lane's engine without lane's request logic (bench/engine_hop.py); CPU and RSS: all three",),
                      trace=trace_load(), peer="envoy-hop")

    async def _envoy_hop(self) -> Target:
        inbound = {}
        for lane in LANES:
            port = int(self.stub_address(Instance("b", lane)).rpartition(":")[2])
            inbound[lane] = await self.stack.enter_async_context(start_envoy(
                f"hop-envoy-b-{lane}", inbound_bootstrap(port), self.workdir, concurrency=ENVOY_HOP_CONCURRENCY))
        config_text = self._hop_config({lane: self.stub_address(Instance("a", lane)) for lane in LANES},
                                       {lane: f"127.0.0.1:{e.listeners[INBOUND_LISTENER]}"
                                        for lane, e in inbound.items()})
        config = parse_config(config_text, "<bench config>")
        backends = {("b", lane): Backend("b", lane, e.listeners[INBOUND_LISTENER]) for lane, e in inbound.items()}
        backends |= {("a", lane): Backend("a", lane, int(self.stub_address(Instance("a", lane)).rpartition(":")[2]))
                     for lane in LANES}
        outbound = await self.stack.enter_async_context(start_envoy(
            "hop-envoy-a-out", envoy_bootstrap(config, render_objects(config), backends), self.workdir,
            concurrency=ENVOY_HOP_CONCURRENCY))
        roles = {"envoy-a-out": outbound.pid, **{f"envoy-b-{lane}": e.pid for lane, e in inbound.items()}}
        return Target("envoy-hop", f"http://127.0.0.1:{outbound.listeners[MESH_LISTENER]}/", (HOP_GRAY, HOP_BASE),
                      {B_GRAY: 0.5, B_BASE: 0.5}, roles, 2, "direct",
                      f"wrk (as app a) -> Envoy a (outbound: rendered mesh routes) -> Envoy b@gray|b@base "
                      f"(inbound) -> stub b; --concurrency {ENVOY_HOP_CONCURRENCY} each",
                      ("hops = 2 proxy traversals; CPU and RSS: all three Envoys",),
                      trace=trace_load(), peer="envoy-hop")
