"""Which service an app's outbound call is for, and the refusal when it is none in the config.

One reading for both ways a call reaches the outbound side (a plain request served by
`lane.sidecar.handler`, a WebSocket upgrade handed to `lane.sidecar.outbound`): the authority of an
absolute-form target (``GET http://b:8080/x``, what an ``HTTP_PROXY`` client sends), else the Host
header (an app that calls the outbound port directly with ``Host: b``).
"""

from __future__ import annotations

from collections.abc import Mapping

from lane.core.config import LaneConfig, Service

__all__ = ["destination", "not_a_service", "target_authority"]


def target_authority(target: str, headers: Mapping[str, str]) -> str | None:
    """The host (and port, if given) a request is for, lower-case; never a userinfo part."""
    if not target.startswith("/") and target != "*":
        start = target.find("://")
        if start >= 0:
            rest = target[start + 3:]
            end = len(rest)
            for stop in "/?#":
                at = rest.find(stop)
                if 0 <= at < end:
                    end = at
            authority = rest[:end].rpartition("@")[2]
            if authority:
                return authority.lower()
    return headers.get("Host")


def destination(config: LaneConfig, target: str, headers: Mapping[str, str]) -> tuple[Service | None, str | None]:
    """The service the call is for (None when it is not one of the config's) and the host it named."""
    host = target_authority(target, headers)
    return (config.service_by_host(host) if host else None), host


def not_a_service(config: LaneConfig, host: str | None) -> str:
    """The 403 text for a call to a host outside the config: what was asked and what would be forwarded."""
    shown = repr(host[:100]) if host else "(no host)"
    return (f"lane sidecar: {shown} is not a service in the lane config {config.source}; "
            f"the sidecar only forwards to: {', '.join(sorted(config.services))}")
