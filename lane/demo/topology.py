"""The plan of `lane demo`: which processes, on which free loopback ports, calling whom.

Every instance in the config (service, lane, one per listed address) becomes a demo app plus its
sidecar on fresh 127.0.0.1 ports. The *effective config* is the given one with each instance
address replaced by its sidecar's inbound address (what callers reach), written as YAML from the
parsed document, so the gateway and the sidecars route to the processes that really run.

The classic call graph is ``a -> b -> c`` and ``a -> d -> c`` where ``d`` forwards only
``x-request-id``; for another config, calls are kept only between services it has.
"""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from lane.core.config import LaneConfig

__all__ = ["DEMO_CALLS", "DEMO_FORWARD_ONLY", "Instance", "Plan", "effective_config_text", "free_port", "plan"]

DEMO_CALLS: Final = {"a": ("b", "d"), "b": ("c",), "d": ("c",)}
DEMO_FORWARD_ONLY: Final = {"d": ("x-request-id",)}


_handed: set[int] = set()  # ports this process handed out already: one plan never gets a port twice


def _ephemeral_low() -> int:
    """The lowest port the kernel hands to outgoing connections (Linux: ip_local_port_range)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on now, for a child process to bind a moment later.

    Picked below the kernel's ephemeral range: a port from bind(0) lies in that range, and until the
    child binds it any outgoing connection on the machine may take it as its local port (the demo's
    sidecar then fails with "address already in use"). Falls back to bind(0) when no such port is free.
    """
    low = _ephemeral_low()
    if low > 12000:
        for _ in range(200):
            port = random.randrange(10000, low)
            if port in _handed:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _handed.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    _handed.add(port)
    return port


@dataclass(frozen=True, slots=True)
class Instance:
    service: str
    lane: str
    index: int  # position among the service's instances of that lane
    app_port: int
    inbound_port: int
    outbound_port: int
    admin_port: int
    calls: tuple[str, ...]
    forward_only: tuple[str, ...] | None

    @property
    def key(self) -> str:
        return f"{self.service}-{self.lane}-{self.index}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.inbound_port}"


@dataclass(frozen=True, slots=True)
class Plan:
    instances: tuple[Instance, ...]
    gateway_admin_port: int

    def find(self, service: str, lane: str) -> list[Instance]:
        return [i for i in self.instances if i.service == service and i.lane == lane]

    def addresses(self) -> dict[str, dict[str, list[str]]]:
        out: dict[str, dict[str, list[str]]] = {}
        for inst in self.instances:
            out.setdefault(inst.service, {}).setdefault(inst.lane, []).append(inst.address)
        return out


def plan(config: LaneConfig) -> Plan:
    instances = []
    for svc in config.services.values():
        calls = tuple(c for c in DEMO_CALLS.get(svc.name, ()) if c in config.services)
        for lane, endpoints in svc.instances.items():
            for index, _ in enumerate(endpoints):
                instances.append(Instance(
                    service=svc.name, lane=lane, index=index, app_port=free_port(), inbound_port=free_port(),
                    outbound_port=free_port(), admin_port=free_port(), calls=calls,
                    forward_only=DEMO_FORWARD_ONLY.get(svc.name),
                ))
    return Plan(tuple(instances), free_port())


def effective_config_text(original_text: str, the_plan: Plan) -> str:
    """The original config document with every instance address replaced by its sidecar's."""
    document: dict[str, Any] = yaml.safe_load(original_text)
    addresses = the_plan.addresses()
    for name, spec in document["services"].items():
        if isinstance(spec, dict) and isinstance(spec.get("instances"), dict):
            spec["instances"] = {lane: addresses.get(name, {}).get(lane, []) for lane in spec["instances"]}
    header = "# Effective config of `lane demo`: instance addresses are the sidecars' inbound ports.\n"
    return header + str(yaml.safe_dump(document, sort_keys=False))
