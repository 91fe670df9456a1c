"""Lanes survive real third-party apps: real ``lane gateway`` and ``lane sidecar`` processes with
real apps behind them, tracing off (issue 12).

Each chain is gateway -> a -> b -> c, where a and c have a base and a gray instance and b only a
base one, so a gray request must travel ``a@gray, b@base, c@gray``: back to gray after b. The apps
are what teams really run, and each forwards only what its own stack forwards:

* ``otel``: Node.js with the official OpenTelemetry JS SDK (http instrumentation, W3C tracecontext +
  baggage): only ``traceparent`` and ``baggage`` reach the next hop (tests/apps/node_otel);
* ``b3``: Flask + ``requests`` like Istio bookinfo's productpage, forwarding only ``x-request-id``
  and B3 (tests/apps/flask_bookinfo.py);
* ``xrid``, ``traceparent``, ``baggage``: stdlib apps forwarding just that one header, and
  ``nothing``: one that forwards nothing (tests/apps/forwarding_app.py).

The config's instance addresses are the sidecars' inbound addresses; apps reach their sidecar both
through ``HTTP_PROXY`` (absolute-form requests) and through the outbound port with ``Host:``.
No OTLP endpoint is set anywhere: the hop record (``x-lane-path``) must be complete without tracing.
Where b's app forwards nothing, its call to c cannot be tied to any request: c must serve it in the
default lane (never another request's), and b's sidecar must count it as a lost lane.

The Node app's packages are installed with ``npm ci`` from the committed lockfile on first use
(skipped while node_modules matches it); without node/npm those chains skip and say why.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from lane.core.hops import PATH_HEADER, Hop, parse_path
from tests.support.processes import REPO, _wait_file, free_port, started_process

APPS: Final = REPO / "tests" / "apps"
NODE_APP: Final = APPS / "node_otel"
LOCK_STAMP: Final = NODE_APP / "node_modules" / ".lane-lockfile.sha256"  # scripts/ensure-test-tools writes it too
READY_TIMEOUT: Final = 60.0
REQUEST_TIMEOUT: Final = 30.0
GRAY_AGENT: Final = "xiaoming"  # colored gray by the config's rule
BASE_AGENT: Final = "curl/8.5"
CONCURRENT: Final = 50

pytestmark = pytest.mark.timeout(240)


# ---------------------------------------------------------------------------------------------
# The apps and the chains


@dataclass(frozen=True, slots=True)
class AppKind:
    name: str
    argv: tuple[str, ...]
    forwards: frozenset[str]  # what its outbound calls carry of what it was handed
    source: str  # how its sidecar finds the lane of those calls (`lane.sidecar.carriers.LaneSource`)
    needs_node: bool = False


def _forwarding(header: str, source: str) -> AppKind:
    return AppKind(f"forwards-{header}", (sys.executable, str(APPS / "forwarding_app.py"), "--forward", header),
                   frozenset() if header == "none" else frozenset({header}), source)


KINDS: Final = {
    "otel": AppKind("node-otel", ("node", str(NODE_APP / "app.js")),
                    frozenset({"traceparent", "tracestate", "baggage"}), "baggage", needs_node=True),
    "b3": AppKind("flask-bookinfo", (sys.executable, str(APPS / "flask_bookinfo.py")), frozenset({
        "x-request-id", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "b3",
    }), "recovered"),
    "xrid": _forwarding("x-request-id", "recovered"),
    "traceparent": _forwarding("traceparent", "recovered"),
    "baggage": _forwarding("baggage", "baggage"),
    "nothing": _forwarding("none", "lost"),
}


@dataclass(frozen=True, slots=True)
class Chain:
    """Which app kind serves a, b and c, and how a and b reach their sidecar ("proxy" or "host")."""

    kinds: tuple[str, str, str]
    via: tuple[str, str]

    @property
    def id(self) -> str:
        return "-".join(self.kinds)

    @property
    def needs_node(self) -> bool:
        return any(KINDS[k].needs_node for k in self.kinds)

    @property
    def carries_lane(self) -> bool:
        """False when b's app forwards nothing: its call to c cannot belong to any request."""
        return self.kinds[1] != "nothing"


CHAINS: Final = (
    Chain(("otel", "b3", "otel"), via=("proxy", "host")),
    Chain(("b3", "otel", "b3"), via=("host", "proxy")),
    Chain(("otel", "xrid", "b3"), via=("proxy", "host")),
    Chain(("b3", "traceparent", "b3"), via=("proxy", "host")),
    Chain(("otel", "baggage", "b3"), via=("host", "proxy")),
    Chain(("otel", "nothing", "otel"), via=("proxy", "host")),
)
INSTANCES: Final = (("a", "base"), ("a", "gray"), ("b", "base"), ("c", "base"), ("c", "gray"))
NEXT: Final = {"a": "b", "b": "c", "c": ""}


# ---------------------------------------------------------------------------------------------
# Node and its packages


def _lock_digest() -> str:
    return hashlib.sha256((NODE_APP / "package-lock.json").read_bytes()).hexdigest()


def _node_major() -> int | None:
    try:
        out = subprocess.run(["node", "--version"], check=False, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.match(r"v(\d+)\.", out.strip())
    return int(match.group(1)) if match else None


@pytest.fixture(scope="session")
def node_app() -> Path:
    """The Node app with its locked packages installed (``npm ci``, skipped when already done)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed (Debian: apt-get install nodejs npm; "
                    "scripts/ensure-test-tools does it for `make test`): the Node OpenTelemetry app cannot run")
    major = _node_major()
    if major is None or major < 18:
        pytest.skip(f"node {major or '?'} is too old for the OpenTelemetry JS SDK 2.x (needs >= 18.19)")
    digest = _lock_digest()
    if not (LOCK_STAMP.exists() and LOCK_STAMP.read_text().strip() == digest):
        result = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_APP, check=False,
                                capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            pytest.fail(f"npm ci in {NODE_APP} failed ({result.returncode}):\n{(result.stdout + result.stderr)[-3000:]}")
        LOCK_STAMP.write_text(digest + "\n")
    return NODE_APP


# ---------------------------------------------------------------------------------------------
# The running topology


@dataclass(frozen=True, slots=True)
class Topology:
    chain: Chain
    gateway: str  # http://host:port
    inbound: dict[tuple[str, str], str]  # (service, lane) -> the sidecar's inbound address
    admin: dict[tuple[str, str], str]  # (service, lane) -> the sidecar's admin address
    logs: Path

    def tail(self) -> str:
        """The end of every child's log, for a failure message."""
        parts = []
        for log in sorted(self.logs.glob("*.log")):
            text = log.read_text(errors="replace").strip()
            if text:
                parts.append(f"--- {log.name}\n{text[-1500:]}")
        return "\n".join(parts)[-6000:]


def _config(inbound: dict[tuple[str, str], str]) -> dict[str, Any]:
    services: dict[str, Any] = {}
    for service, lane in INSTANCES:
        services.setdefault(service, {"instances": {}})["instances"][lane] = [inbound[service, lane]]
    return {
        "tag": {"header": "x-mse-tag", "baggage_key": "x-mse-tag", "default_lane": "base"},
        "lanes": {"gray": {"fallback": "base"}},
        "entry": "a",
        "coloring": [{"name": "xiaoming", "lane": "gray",
                      "match": {"headers": [{"name": "User-Agent", "exact": GRAY_AGENT}]}}],
        "services": services,
    }


def _clean_env() -> dict[str, str]:
    """This environment minus tracing and proxy settings, so nothing but the test decides them."""
    drop = {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "NODE_OPTIONS"}
    return {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k.upper() not in drop}


def _lane_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "lane", "--log-level=WARNING", *args]


@contextlib.contextmanager
def running(chain: Chain, workdir: Path) -> Iterator[Topology]:
    """Apps, sidecars and gateway for *chain* as processes on 127.0.0.1, all stopped on the way out."""
    inbound = {key: f"127.0.0.1:{free_port()}" for key in INSTANCES}
    outbound = {key: f"127.0.0.1:{free_port()}" for key in INSTANCES}
    config = workdir / "lane.yaml"
    config.write_text(yaml.safe_dump(_config(inbound), sort_keys=False), encoding="utf-8")
    env = _clean_env()
    with contextlib.ExitStack() as stack:
        apps: dict[tuple[str, str], tuple[subprocess.Popen[bytes], Path, Path]] = {}
        for service, lane in INSTANCES:
            position = "abc".index(service)
            kind = KINDS[chain.kinds[position]]
            via = chain.via[position] if position < 2 else "proxy"
            name = f"app-{service}-{lane}"
            ready, log = workdir / f"{name}.ready.json", workdir / f"{name}.log"
            app_env = {**env, "APP_SERVICE": service, "APP_LANE": lane, "APP_PORT": "0",
                       "APP_READY_FILE": str(ready), "APP_NEXT": NEXT[service], "APP_CALL_VIA": via,
                       "APP_OUTBOUND": outbound[service, lane]}
            if via == "proxy":
                app_env["HTTP_PROXY"] = f"http://{outbound[service, lane]}"
            popen = stack.enter_context(started_process(list(kind.argv), log, cwd=REPO, env=app_env))
            apps[service, lane] = popen, ready, log
        sidecars = []
        for (service, lane), (popen, ready, log) in apps.items():
            port = _wait_file(ready, popen, READY_TIMEOUT, log)["port"]
            name = f"sidecar-{service}-{lane}"
            s_ready, s_log = workdir / f"{name}.ready.json", workdir / f"{name}.log"
            argv = _lane_argv("sidecar", "--config", str(config), "--service", service, "--lane", lane,
                              "--app", f"127.0.0.1:{port}", "--listen", inbound[service, lane],
                              "--outbound", outbound[service, lane], "--admin", "127.0.0.1:0",
                              "--drain-seconds", "1", "--ready-file", str(s_ready))
            s_popen = stack.enter_context(started_process(argv, s_log, cwd=REPO, env=env))
            sidecars.append(((service, lane), s_popen, s_ready, s_log))
        admin = {key: str(_wait_file(s_ready, s_popen, READY_TIMEOUT, s_log)["listeners"]["admin"])
                 for key, s_popen, s_ready, s_log in sidecars}
        g_ready, g_log = workdir / "gateway.ready.json", workdir / "gateway.log"
        argv = _lane_argv("gateway", "--config", str(config), "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
                          "--drain-seconds", "1", "--ready-file", str(g_ready))
        g_popen = stack.enter_context(started_process(argv, g_log, cwd=REPO, env=env))
        ready = _wait_file(g_ready, g_popen, READY_TIMEOUT, g_log)
        yield Topology(chain, f"http://{ready['listeners']['gateway']}", inbound, admin, workdir)


@pytest.fixture(scope="module", params=CHAINS, ids=lambda chain: chain.id)
def topology(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    chain: Chain = request.param
    if chain.needs_node:
        request.getfixturevalue("node_app")
    with running(chain, tmp_path_factory.mktemp(chain.id)) as topo:
        yield topo


# ---------------------------------------------------------------------------------------------
# Asking and checking


_OPENER: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never the environment's proxy


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    hops: tuple[Hop, ...]
    body: Any

    def app_lanes(self) -> list[str]:
        """``service@lane`` as each app reported itself, following the first call at every level."""
        out, node = [], self.body
        while isinstance(node, dict) and "service" in node:
            out.append(f"{node['service']}@{node['lane']}")
            calls = node.get("calls") or []
            node = calls[0].get("answer") if calls else None
        return out


def admin_get(topo: Topology, instance: tuple[str, str], path: str) -> str:
    with _OPENER.open(f"http://{topo.admin[instance]}{path}", timeout=REQUEST_TIMEOUT) as resp:
        return str(resp.read().decode())


def ask(topo: Topology, agent: str) -> Answer:
    request = urllib.request.Request(topo.gateway + "/", headers={"User-Agent": agent})
    try:
        with _OPENER.open(request, timeout=REQUEST_TIMEOUT) as resp:
            status, headers, raw = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        status, headers, raw = exc.code, exc.headers, exc.read()
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = raw[:500].decode(errors="replace")
    return Answer(status, parse_path(headers.get_all(PATH_HEADER)), body)


def problems(topo: Topology, lane: str, answer: Answer) -> list[str]:
    """What is wrong with *answer* for a request colored *lane*; empty when it is fully right."""
    found = []
    labels = [hop.label() for hop in answer.hops]
    if answer.status != 200:
        found.append(f"status {answer.status}")
    if topo.chain.carries_lane:
        expected = [f"a@{lane}", "b@base", f"c@{lane}"]
        if labels != expected:
            found.append(f"hop record {labels}, expected {expected}")
        if answer.app_lanes() != expected:
            found.append(f"apps answered as {answer.app_lanes()}, expected {expected}")
    else:
        # b's app forwards nothing, so its call to c belongs to no request: c must serve it in the
        # default lane (never in the lane of some other request in flight), and a hop for it, if
        # any, must say so.
        if labels[:2] != [f"a@{lane}", "b@base"] or [h.encode() for h in answer.hops[2:]] not in (
                [], ["c@base;requested=base"]):
            found.append(f"hop record {labels}, expected [a@{lane}, b@base] and c, if present, as c@base "
                         f"requested base: {[h.encode() for h in answer.hops]}")
        if answer.app_lanes() != [f"a@{lane}", "b@base", "c@base"]:
            found.append(f"apps answered as {answer.app_lanes()}, expected [a@{lane}, b@base, c@base]")
    for hop in answer.hops:
        if hop.service == "b" and hop.requested != lane:
            found.append(f"b's hop says requested={hop.requested}, expected {lane}")
        if topo.chain.carries_lane and hop.service in ("a", "c") and (hop.requested, hop.fallback) != (lane, None):
            found.append(f"{hop.service}'s hop says requested={hop.requested} fallback={hop.fallback}")
        if hop.instance is not None and hop.instance != topo.inbound.get((hop.service, hop.lane)):
            found.append(f"{hop.label()} served by {hop.instance}, not {topo.inbound.get((hop.service, hop.lane))}")
    return found


def assert_right(topo: Topology, lane: str, answer: Answer) -> None:
    found = problems(topo, lane, answer)
    assert not found, (f"{topo.chain.id}, a {lane} request: " + "; ".join(found)
                       + f"\nanswer: {json.dumps(answer.body)[:3000]}\n{topo.tail()}")


# ---------------------------------------------------------------------------------------------
# The behaviour


def test_gray_request_returns_to_gray_after_the_base_only_service(topology: Topology) -> None:
    answer = ask(topology, GRAY_AGENT)
    assert_right(topology, "gray", answer)
    b_hop = answer.hops[1]
    assert (b_hop.requested, b_hop.fallback) == ("gray", "no-instance"), b_hop


def test_base_request_stays_base_everywhere(topology: Topology) -> None:
    answer = ask(topology, BASE_AGENT)
    assert_right(topology, "base", answer)
    assert all(hop.lane == "base" and hop.requested == "base" for hop in answer.hops), answer.hops


def _trace_ids(received: dict[str, str]) -> dict[str, int]:
    """The trace id each format in *received* carries (as a number: 64- vs 128-bit padding aside)."""
    parts = {
        "traceparent": lambda v: v.split("-")[1],
        "x-b3-traceid": lambda v: v,
        "b3": lambda v: v.split("-")[0],
        "uber-trace-id": lambda v: v.replace("%3A", ":").split(":")[0],
    }
    ids = {}
    for name, part in parts.items():
        if name in received:
            try:
                ids[name] = int(part(received[name]), 16)
            except (IndexError, ValueError):
                ids[name] = -1  # malformed: never equal to a real id
    return ids


def test_every_app_is_handed_one_trace_identity_in_every_format(topology: Topology) -> None:
    # Whatever single format an app forwards, the next sidecar can only tie the call to its request
    # if the app was handed that format, carrying the same trace as the others (as Envoy does).
    answer = ask(topology, GRAY_AGENT)
    assert answer.status == 200, f"{answer.body}\n{topology.tail()}"
    levels, node = [], answer.body
    while isinstance(node, dict) and "received" in node:
        levels.append((f"{node['service']}@{node['lane']}", node["received"]))
        node = (node.get("calls") or [{}])[0].get("answer")
    assert len(levels) == 3, levels
    wanted = {"traceparent", "x-request-id", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "b3", "uber-trace-id",
              "sw8"}
    traces = []
    for label, received in levels:
        assert wanted <= set(received), f"{label} was handed {sorted(received)}, missing {sorted(wanted - set(received))}"
        ids = _trace_ids(received)
        assert len(set(ids.values())) == 1, f"{label} was handed different trace ids: {received}"
        traces.append(ids["traceparent"])
    # One trace across the chain, except where an app forwarded nothing (c's call starts anew).
    same = traces if topology.chain.carries_lane else traces[:2]
    assert len(set(same)) == 1, f"the trace changed along the chain: {levels}"


def test_concurrent_mixed_requests_each_keep_their_own_lane_and_path(topology: Topology) -> None:
    # Gray and base interleaved, all in flight at once: a lane carried by a shared guess (the only
    # request in flight, the last trace seen) would leak into the other requests here.
    lanes = ["gray" if i % 3 != 1 else "base" for i in range(CONCURRENT)]
    with ThreadPoolExecutor(max_workers=CONCURRENT) as pool:
        answers = list(pool.map(lambda lane: ask(topology, GRAY_AGENT if lane == "gray" else BASE_AGENT), lanes))
    wrong = [f"#{i} ({lane}): " + "; ".join(found)
             for i, (lane, answer) in enumerate(zip(lanes, answers, strict=True))
             if (found := problems(topology, lane, answer))]
    assert not wrong, f"{topology.chain.id}: {len(wrong)} of {CONCURRENT} wrong:\n" + "\n".join(wrong[:15]) \
        + f"\n{topology.tail()}"


def test_each_sidecar_tells_which_lane_carriers_its_app_forwards(topology: Topology) -> None:
    # "Which app breaks our lanes?": every sidecar whose app made calls says which carriers came
    # back out (its /lane/carriers view), how each call's lane was found, and counts it for Prometheus.
    for agent in (GRAY_AGENT, BASE_AGENT):
        assert ask(topology, agent).status == 200
    for position, instance in ((0, ("a", "base")), (0, ("a", "gray")), (1, ("b", "base"))):
        kind = KINDS[topology.chain.kinds[position]]
        view = json.loads(admin_get(topology, instance, "/lane/carriers"))
        where = f"{topology.chain.id}: {instance[0]}@{instance[1]} ({kind.name}): {view}"
        carriers = set(view["carriers"])
        assert {"x-mse-tag", "baggage", "traceparent", "x-request-id"} <= carriers, where
        assert set(view["forwarded"]) == kind.forwards & carriers, where
        assert set(view["dropped"]) == carriers - kind.forwards and view["sometimes"] == [], where
        assert view["calls"] >= 1 and view["lane_sources"][kind.source] == view["calls"], where
        assert view["verdict"].startswith(f"service {instance[0]}'s app"), where
        counted = sum(
            sample.value
            for family in text_string_to_metric_families(admin_get(topology, instance, "/metrics"))
            for sample in family.samples
            if sample.name == "lane_outbound_lane_source_total"
            and sample.labels.get("service") == instance[0] and sample.labels.get("source") == kind.source)
        assert counted == view["calls"], where
