"""A request vector as a gRPC client really sends it, for a gRPC entry service.

A gRPC call is not any HTTP request: its ``:path`` is the method, so it has no query string; its
metadata names are lower-case ``[0-9a-z_.-]`` and its values printable ASCII, with no whitespace
around them in HTTP/2 (grpcio refuses anything else); and the client adds headers of its own:
``content-type: application/grpc``, ``te: trailers`` and a ``user-agent`` ending in grpcio's own
(grpcio ignores a ``user-agent`` given as metadata; the channel option ``grpc.primary_user_agent``
puts one in front of its own). Names gRPC or HTTP/2 reserve (``te``, ``content-type``, ``host``,
``grpc-*``, ``*-bin``, the hop-by-hop headers) are not metadata. grpcio also sends
``grpc-accept-encoding`` and ``grpc-timeout``, left out of the judged request: a coloring rule on
them would show as a disagreement, not be hidden.

`as_grpc` turns a vector into that request: the metadata and user-agent to give grpcio, the
vector the Python engine must judge (what Envoy's gateway Lua receives, so both color the same
request), and notes on whatever could not be sent. grpcio's own user-agent is learned from a stub
(`learn_user_agent`), not assumed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from lane.core.errors import LaneError

from . import grpc_wire
from .vectors import Vector

__all__ = ["GrpcVector", "UserAgent", "as_grpc", "learn_user_agent"]

_KEY: Final = re.compile(r"[0-9a-z_.-]+")
_VALUE: Final = re.compile(r"[\x20-\x7e]*")
_RESERVED: Final = frozenset({"te", "content-type", "host", "connection", "keep-alive", "proxy-connection",
                              "transfer-encoding", "upgrade"})
_PROBE_AGENT: Final = "lane-verify-probe"


@dataclass(frozen=True, slots=True)
class UserAgent:
    """The ``user-agent`` grpcio sends: its own, after the one given as metadata, if any."""

    own: str

    def sent(self, given: str | None) -> str:
        return f"{given} {self.own}" if given else self.own


@dataclass(frozen=True, slots=True)
class GrpcVector:
    metadata: tuple[tuple[str, str], ...]  # what grpcio is given
    user_agent: str | None  # the channel's primary user-agent
    judged: Vector  # what Envoy receives: the request the Python engine colors
    notes: tuple[str, ...] = ()  # what of the vector a gRPC client cannot send


def as_grpc(vector: Vector, agent: UserAgent) -> GrpcVector:
    """*vector* as the request a grpcio client sends (module docstring)."""
    metadata: list[tuple[str, str]] = []
    agents: list[str] = []
    notes = [f"query {vector.query!r} not sent (a gRPC path is the method)"] if vector.query else []
    for name, value in vector.parsed_headers():
        if name == "user-agent":
            agents.append(value)
        elif name in _RESERVED or name.startswith("grpc-") or name.endswith("-bin") or not _KEY.fullmatch(name):
            notes.append(f"header {name!r} not sent (not gRPC metadata)")
        elif not _VALUE.fullmatch(value):
            notes.append(f"header {name!r} not sent (value not printable ASCII)")
        else:
            metadata.append((name, value))
    given = ",".join(agents) or None
    if given is not None and not _VALUE.fullmatch(given):
        notes.append("user-agent not sent (value not printable ASCII)")
        given = None
    own = (("user-agent", agent.sent(given)), ("content-type", "application/grpc"), ("te", "trailers"))
    return GrpcVector(tuple(metadata), given, Vector(vector.name, (*own, *metadata), "", vector.forward), tuple(notes))


async def learn_user_agent(port: int, authority: str, probe: tuple[str, str]) -> UserAgent:
    """grpcio's own user-agent, from what the stub on *port* receives without and with one given
    (*probe* keeps the stub from calling anyone); a form other than ``GIVEN OWN`` is an error."""
    async with grpc_wire.channel(port, authority) as chan:
        bare = await grpc_wire.call(chan, (probe,))
    async with grpc_wire.channel(port, authority, _PROBE_AGENT) as chan:
        given = await grpc_wire.call(chan, (probe,))
    own = bare.body.get("user_agent") if isinstance(bare.body, dict) else None
    seen = given.body.get("user_agent") if isinstance(given.body, dict) else None
    if not isinstance(own, str) or seen != UserAgent(own).sent(_PROBE_AGENT):
        raise LaneError(f"grpcio sent user-agent {own!r}, and {seen!r} when given {_PROBE_AGENT!r}: "
                        "not the form verify models, so gRPC vectors cannot be judged")
    return UserAgent(own)
