"""Failures as the data plane sees them: the engine's (`lane.engine.failures`), the spent budget, and
the hop each failure belongs to.

`DeadlineSpent` (504): the request's time budget (`lane.core.deadline`) ran out before it could be
sent; ``counts`` is False (a spent budget is the caller's, never the instance's, so it does not count
toward ejection, `lane.dataplane.health`). `note_hop`/`failed_hop`: dispatch notes on the failure which
hop failed (service, lane tried, instance, status), for the answer's hop record. The engine knows no
lanes, so the note lives here.
"""

from __future__ import annotations

from lane.core.hops import Hop
from lane.engine.failures import ConnectFailed, UpstreamBroken, UpstreamFailure, UpstreamTimeout

__all__ = ["CallerDeadline", "ConnectFailed", "DeadlineSpent", "UpstreamBroken", "UpstreamFailure", "UpstreamTimeout", "failed_hop",
           "note_hop"]

_HOP = "_lane_hop"


class DeadlineSpent(UpstreamTimeout):
    """The request's budget was used up before this attempt could be sent: nothing was sent, nobody is to blame."""

    counts = False


class CallerDeadline(UpstreamTimeout):
    """The call's own deadline (``grpc-timeout``, the caller's choice) ran out while waiting: nobody is to blame.

    A client outside the mesh may send any deadline; counting its expiry against the instance would let
    it eject healthy instances at will (the gateway drops lane's own budget header from such clients
    for the same reason).
    """

    counts = False


def note_hop(exc: UpstreamFailure, hop: Hop) -> None:
    """Remember that *exc* is the failure of *hop* (set by `lane.dataplane.dispatch`)."""
    setattr(exc, _HOP, hop)


def failed_hop(exc: UpstreamFailure) -> Hop | None:
    """The hop *exc* failed on, when dispatch noted one."""
    hop = getattr(exc, _HOP, None)
    return hop if isinstance(hop, Hop) else None
