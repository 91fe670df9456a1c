"""What the stub apps of `lane mesh verify` do: whom each service calls, and what it forwards.

A lane only survives a hop if the app forwards it, so verify's stubs behave like apps: each one,
when called, calls its downstream services (the *call graph*) through the mesh, forwarding what
a real app forwards (`Forward`): the tag header and ``baggage`` (an app that propagates every
lane header), or ``baggage`` only (an app using stock OpenTelemetry propagation, which relies on
the sidecar filter copying the lane from baggage into the tag header).

The default call graph is the config's services as one chain, entry first, then every other
service in config order, so every service is on the path of every vector. ``--calls a=b,d``
states the real graph. A graph must be acyclic (a cycle would call forever) and every service
with calls of its own must be reachable from the entry (else its calls would never be made).
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Final

from lane.core.config import LaneConfig

__all__ = [
    "FORWARD_HEADER",
    "CallGraph",
    "Forward",
    "check_calls",
    "decode_forward",
    "default_calls",
    "encode_forward",
    "parse_calls",
    "parse_forward",
]

CallGraph = Mapping[str, tuple[str, ...]]  # service -> the services it calls, in call order

# verify's own control header: the stubs forward it unchanged (as apps forward x-request-id), so
# every hop of one vector knows how each app of that vector forwards.
FORWARD_HEADER: Final = "x-lane-verify-forward"


class Forward(enum.StrEnum):
    TAG = "tag"  # the tag header and baggage, as received
    BAGGAGE = "baggage"  # baggage only: the sidecar filter must restore the tag header


def _service(config: LaneConfig, name: str, where: str) -> str:
    name = name.strip()
    if name not in config.services:
        known = ", ".join(config.services)
        raise ValueError(f"{where}: no service {name!r} in the config (services: {known})")
    return name


def check_calls(config: LaneConfig, graph: Mapping[str, Sequence[str]]) -> CallGraph:
    """*graph* (frozen) if it names only config services, is acyclic and every caller is reachable
    from the entry; else a ValueError saying which rule it breaks."""
    for caller, callees in graph.items():
        for name in (caller, *callees):
            _service(config, name, f"--calls {caller}")
    reached: list[str] = []

    def visit(service: str, path: tuple[str, ...]) -> None:
        if service in path:
            cycle = " -> ".join((*path[path.index(service):], service))
            raise ValueError(f"--calls: the call graph has a cycle: {cycle}")
        if service not in reached:
            reached.append(service)
        for callee in graph.get(service, ()):
            visit(callee, (*path, service))

    visit(config.entry, ())
    unreached = [s for s in graph if graph[s] and s not in reached]
    if unreached:
        raise ValueError(f"--calls: {', '.join(unreached)} cannot be reached from the entry {config.entry}, "
                         "so its calls would never be made")
    return MappingProxyType({caller: tuple(callees) for caller, callees in graph.items()})


def default_calls(config: LaneConfig) -> CallGraph:
    """The entry, then every other service in config order, each calling the next."""
    order = [config.entry, *(s for s in config.services if s != config.entry)]
    return MappingProxyType({caller: (callee,) for caller, callee in itertools.pairwise(order)})


def parse_calls(config: LaneConfig, specs: Sequence[str]) -> CallGraph:
    """The call graph from ``SERVICE=CALLEE[,CALLEE...]`` items (``SERVICE=`` calls nobody);
    services not named call nobody. Unknown services, a service given twice, a self-call or
    cycle, and callers unreachable from the entry are errors."""
    graph: dict[str, tuple[str, ...]] = {}
    for spec in specs:
        caller, sep, callees = spec.partition("=")
        if not sep:
            raise ValueError(f"--calls {spec!r}: expected SERVICE=CALLEE[,CALLEE...]")
        where = f"--calls {spec!r}"
        caller = _service(config, caller, where)
        if caller in graph:
            raise ValueError(f"{where}: the calls of {caller} are given twice")
        names = [_service(config, c, where) for c in callees.split(",") if c.strip()]
        if len(set(names)) != len(names):
            raise ValueError(f"{where}: a callee is named twice")
        graph[caller] = tuple(names)
    return check_calls(config, graph)


def parse_forward(config: LaneConfig, specs: Iterable[str]) -> Mapping[str, Forward]:
    """Forwarding per service from ``MODE`` (every service) or ``SERVICE=MODE`` items, later items
    winning; services not named forward `Forward.TAG`."""
    out = dict.fromkeys(config.services, Forward.TAG)
    modes = ", ".join(m.value for m in Forward)
    for spec in specs:
        service, sep, mode = spec.rpartition("=")
        if mode.strip() not in {m.value for m in Forward}:
            raise ValueError(f"--forward {spec!r}: unknown mode {mode.strip()!r} (modes: {modes})")
        targets = [_service(config, service, f"--forward {spec!r}")] if sep else list(config.services)
        for target in targets:
            out[target] = Forward(mode.strip())
    return MappingProxyType(out)


def encode_forward(forward: Mapping[str, Forward]) -> str:
    """The `FORWARD_HEADER` value: ``a=tag,b=baggage``."""
    return ",".join(f"{service}={mode.value}" for service, mode in sorted(forward.items()))


def decode_forward(value: str | None) -> Mapping[str, Forward]:
    """The inverse of `encode_forward`; unknown items are ignored (the stub then forwards the tag)."""
    out: dict[str, Forward] = {}
    for item in (value or "").split(","):
        service, _, mode = item.strip().partition("=")
        if mode in {m.value for m in Forward}:
            out[service] = Forward(mode)
    return out
