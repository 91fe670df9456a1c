"""A gRPC lane chain as real processes on 127.0.0.1: ``lane gateway`` -> a -> b -> c, each app a real
``grpcio`` server (tests/apps/grpc_chain_app.py) behind its own ``lane sidecar``.

a and c have a base and a gray instance, b only a base one, so a gray call travels
``a@gray, b@base, c@gray``. Beside them ``h``, a plain HTTP/1.1 app (tests/apps/forwarding_app.py)
behind its sidecar: an app reaches it through the same outbound port its gRPC calls use. The lane
``vip`` is strict and no service has it: a call colored vip is refused by the gateway itself.
Apps dial their sidecar's outbound port with ``grpc.default_authority`` set to the callee.
Everything started is stopped when the block ends (SIGTERM, then SIGKILL), also on failure.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from tests.support.processes import REPO, _wait_file, free_port, started_process, stop_process

APPS: Final = REPO / "tests" / "apps"
READY_TIMEOUT: Final = 60.0
GRAY_USER: Final = "xiaoming"  # colored gray by the config's rule on the x-user metadata
VIP_USER: Final = "vip"  # colored into the strict lane nobody has
INSTANCES: Final = (("a", "base"), ("a", "gray"), ("b", "base"), ("c", "base"), ("c", "gray"), ("h", "base"))
NEXT: Final = {"a": "b", "b": "c", "c": "", "h": ""}

Instance = tuple[str, str]


@dataclass
class GrpcChain:
    gateway: str  # host:port, what a gRPC client dials
    inbound: dict[Instance, str]
    outbound: dict[Instance, str]
    events: dict[Instance, Path]  # what each app appends to APP_EVENTS
    logs: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)  # "app-a-gray", "sidecar-a-gray", ...

    def kill(self, name: str) -> None:
        """Kill one process of the chain at once (SIGKILL), as a crashed pod."""
        stop_process(self.procs[name], sig=9, timeout=10)

    def pause(self, name: str, paused: bool) -> None:
        """Freeze (SIGSTOP) or thaw (SIGCONT) one process: a hung app keeps its sockets open and answers nothing."""
        self.procs[name].send_signal(signal.SIGSTOP if paused else signal.SIGCONT)

    def tail(self) -> str:
        """The end of every child's log, for a failure message."""
        parts = []
        for log in sorted(self.logs.glob("*.log")):
            text = log.read_text(errors="replace").strip()
            if text:
                parts.append(f"--- {log.name}\n{text[-1200:]}")
        return "\n".join(parts)[-8000:]


def _config(inbound: dict[Instance, str]) -> dict[str, Any]:
    services: dict[str, Any] = {}
    for service, lane in INSTANCES:
        services.setdefault(service, {"instances": {}})["instances"][lane] = [inbound[service, lane]]
    return {
        "tag": {"header": "x-mse-tag", "baggage_key": "x-mse-tag", "default_lane": "base"},
        "lanes": {"gray": {"fallback": "base"}, "vip": {"strict": True}},
        "entry": "a",
        "coloring": [
            {"name": "xiaoming", "lane": "gray", "match": {"headers": [{"name": "x-user", "exact": GRAY_USER}]}},
            {"name": "vip", "lane": "vip", "match": {"headers": [{"name": "x-user", "exact": VIP_USER}]}},
        ],
        "services": services,
        "proxy": {"request_timeout": 3},  # an instance that does not answer is given up on in seconds
    }


def _env() -> dict[str, str]:
    """This environment minus tracing and proxy settings; the worktree first on the path (apps import lane)."""
    drop = {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "GRPC_DNS_RESOLVER"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k.upper() not in drop}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["OTEL_SDK_DISABLED"] = "true"
    return env


@contextlib.contextmanager
def grpc_chain(workdir: Path) -> Iterator[GrpcChain]:
    """Apps, sidecars and gateway as processes on 127.0.0.1, all stopped on the way out."""
    inbound = {key: f"127.0.0.1:{free_port()}" for key in INSTANCES}
    outbound = {key: f"127.0.0.1:{free_port()}" for key in INSTANCES}
    config = workdir / "lane.yaml"
    config.write_text(yaml.safe_dump(_config(inbound), sort_keys=False), encoding="utf-8")
    env = _env()
    events = {key: workdir / f"events-{key[0]}-{key[1]}.txt" for key in INSTANCES}
    chain = GrpcChain("", inbound, outbound, events, workdir)
    with contextlib.ExitStack() as stack:
        apps = {}
        for service, lane in INSTANCES:
            name = f"app-{service}-{lane}"
            ready, log = workdir / f"{name}.ready.json", workdir / f"{name}.log"
            app_env = {**env, "APP_SERVICE": service, "APP_LANE": lane, "APP_PORT": "0", "APP_READY_FILE": str(ready),
                       "APP_NEXT": NEXT[service], "APP_CALL_VIA": "host", "APP_OUTBOUND": outbound[service, lane],
                       "APP_EVENTS": str(events[service, lane])}
            argv = ([sys.executable, str(APPS / "forwarding_app.py"), "--forward", "none"] if service == "h"
                    else [sys.executable, str(APPS / "grpc_chain_app.py")])
            popen = stack.enter_context(started_process(argv, log, cwd=REPO, env=app_env))
            chain.procs[name] = popen
            apps[service, lane] = popen, ready, log
        sidecars = []
        for (service, lane), (popen, ready, log) in apps.items():
            port = _wait_file(ready, popen, READY_TIMEOUT, log)["port"]
            name = f"sidecar-{service}-{lane}"
            s_ready, s_log = workdir / f"{name}.ready.json", workdir / f"{name}.log"
            argv = [sys.executable, "-m", "lane", "--log-level=WARNING", "sidecar", "--config", str(config),
                    "--service", service, "--lane", lane, "--app", f"127.0.0.1:{port}",
                    "--listen", inbound[service, lane], "--outbound", outbound[service, lane],
                    "--admin", "127.0.0.1:0", "--drain-seconds", "1", "--ready-file", str(s_ready)]
            s_popen = stack.enter_context(started_process(argv, s_log, cwd=REPO, env=env))
            chain.procs[name] = s_popen
            sidecars.append((s_popen, s_ready, s_log))
        for s_popen, s_ready, s_log in sidecars:
            _wait_file(s_ready, s_popen, READY_TIMEOUT, s_log)
        g_ready, g_log = workdir / "gateway.ready.json", workdir / "gateway.log"
        argv = [sys.executable, "-m", "lane", "--log-level=WARNING", "gateway", "--config", str(config),
                "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--drain-seconds", "1",
                "--ready-file", str(g_ready)]
        g_popen = stack.enter_context(started_process(argv, g_log, cwd=REPO, env=env))
        chain.procs["gateway"] = g_popen
        chain.gateway = str(_wait_file(g_ready, g_popen, READY_TIMEOUT, g_log)["listeners"]["gateway"])
        yield chain
