"""The path one vector took through Envoy and the stubs, hop by hop, checked against Python.

The entry stub's JSON reply nests the replies of every call it made (see `mesh_config.backends`),
so `chain_from_reply` turns one reply into a tree of `ChainHop`s. Every hop carries the lane the
Python data plane would serve it from -- `LaneConfig.lane_for` of the lane the gateway set, which
the whole request keeps, whichever instance serves a hop -- and what really answered.

`chain_problems` holds each hop to three promises: the instance that answered is
``service@expected`` (or the mesh answered 503 where no instance may serve the lane); the
instance received the gateway's lane in the tag header (set by the caller or, for a caller
forwarding only baggage, by the sidecar Lua); and its baggage still carries that lane.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from lane.core.baggage import get_member

__all__ = ["ChainHop", "chain_from_reply", "chain_paths", "chain_problems"]


@dataclass(frozen=True, slots=True)
class ChainHop:
    service: str  # the service called
    expected: str | None  # the lane lane_for says serves it; None: 503
    status: int  # 0: no answer at all
    served_by: tuple[str, str] | None = None  # (service, lane) of the stub that answered
    tag: str | None = None  # the tag header that stub received
    baggage_lane: str | None = None  # the lane member of the baggage it received
    forward: str = "tag"  # what its app forwarded to its calls
    calls: tuple[ChainHop, ...] = ()
    detail: str = ""  # the body of a non-200 answer (grpc-message of a gRPC call), or why there was none
    code: str | None = None  # the gRPC status of a gRPC call (its status is 200, 503 or 500: `grpc_wire`)

    @property
    def routed_ok(self) -> bool:
        if self.expected is None:
            return self.status == 503 and self.served_by is None
        return self.status == 200 and self.served_by == (self.service, self.expected)

    @property
    def label(self) -> str:
        """``b@base``; ``b@503`` (``b@UNAVAILABLE`` over gRPC) for a refusal, ``b@no-answer``, or
        ``b@(x@gray)`` if x answered."""
        if self.served_by is None:
            return f"{self.service}@{self.code or self.status or 'no-answer'}"
        service, lane = self.served_by
        return f"{self.service}@{lane}" if service == self.service else f"{self.service}@({service}@{lane})"

    def walk(self, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], ChainHop]]:
        """Every hop with the services leading to it (itself included), depth first."""
        here = (*path, self.service)
        yield here, self
        for call in self.calls:
            yield from call.walk(here)


def chain_from_reply(service: str, status: int, body: Any, baggage_key: str,
                     expected: Callable[[str], str | None], code: str | None = None) -> ChainHop:
    """The hop tree of a call to *service* answered with *status* and *body* (the JSON reply of a
    200, else its text) -- with gRPC status *code* if it was a gRPC call; *expected* gives each
    service's lane_for."""
    if status != 200 or not isinstance(body, Mapping):
        detail = body if isinstance(body, str) else ""
        return ChainHop(service, expected(service), status, detail=detail.strip()[:200], code=code)
    calls = []
    for call in body.get("calls") or []:
        reply = call.get("reply")
        text = call.get("error") or call.get("body") or ""
        calls.append(chain_from_reply(str(call.get("to")), int(call.get("status", 0)),
                                      reply if reply is not None else text, baggage_key, expected, call.get("grpc")))
    baggage = body.get("baggage")
    return ChainHop(
        service=service,
        expected=expected(service),
        status=status,
        served_by=(str(body.get("service")), str(body.get("lane"))),
        tag=body.get("tag"),
        baggage_lane=get_member([baggage], baggage_key) if isinstance(baggage, str) else None,
        forward=str(body.get("forward", "tag")),
        calls=tuple(calls),
        code=code,
    )


def chain_problems(root: ChainHop, lane: str | None) -> list[str]:
    """What each hop of *root* got wrong, against the lane *lane* the gateway set (None: unknown)."""
    out = []
    for path, hop in root.walk():
        where = " → ".join(path)
        if not hop.routed_ok:
            got = hop.label.partition("@")[2]
            why = f" ({hop.detail})" if hop.detail and hop.served_by is None else ""
            out.append(f"{where}: expected {hop.service}@{hop.expected or '503'}, got {hop.service}@{got}{why}")
        if hop.served_by is None or lane is None:
            continue
        if hop.tag != lane:
            out.append(f"{where}: received tag header {hop.tag!r}, the gateway set {lane!r}")
        if hop.baggage_lane != lane:
            out.append(f"{where}: baggage carries lane {hop.baggage_lane!r}, the gateway set {lane!r}")
    return out


def chain_paths(root: ChainHop) -> list[str]:
    """Every root-to-leaf path as ``a@gray → b@base → c@gray``."""
    if not root.calls:
        return [root.label]
    return [f"{root.label} → {rest}" for call in root.calls for rest in chain_paths(call)]
