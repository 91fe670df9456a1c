"""What a lane proxy answers: the upstream's answer annotated with the hop record, or a short error.

Every proxied answer carries ``x-lane-path`` (the hop this proxy routed to, then what the upstream
reported), ``x-lane-served`` and, when the request fell back, ``x-lane-fallback``. Whatever the
upstream sent under those names, and the internal ``x-lane-unavailable`` marker, is replaced, so
an app can never forge the record. Errors are short plain text saying which service, lane and
instance failed and why: 503 when no instance may serve (strict lane, nothing left in the chain),
502 when the upstream failed, 504 when it timed out.
"""

from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from .dispatch import UNAVAILABLE_HEADER, path_after
from .errors import UpstreamUnavailable
from .hops import FALLBACK_HEADER, PATH_HEADER, SERVED_HEADER, Hop
from .proxy import UpstreamFailure, plain_error, strip_hop_by_hop

__all__ = ["LANE_RESPONSE_HEADERS", "answer_headers", "failure", "own_headers", "unavailable"]

LANE_RESPONSE_HEADERS = (PATH_HEADER, SERVED_HEADER, FALLBACK_HEADER, UNAVAILABLE_HEADER)


def _clean(upstream: CIMultiDictProxy[str] | CIMultiDict[str]) -> CIMultiDict[str]:
    headers = strip_hop_by_hop(upstream)
    for name in LANE_RESPONSE_HEADERS:
        headers.popall(name, None)
    return headers


def answer_headers(upstream: CIMultiDictProxy[str], hop: Hop) -> CIMultiDict[str]:
    """Headers for the answer of a routed request: *hop* first, then the upstream's reported path."""
    below = upstream.get(PATH_HEADER)
    headers = _clean(upstream)
    headers[PATH_HEADER] = path_after(hop, below)
    headers[SERVED_HEADER] = hop.lane
    if hop.fallback:
        headers[FALLBACK_HEADER] = hop.fallback
    return headers


def own_headers(upstream: CIMultiDictProxy[str], path: str, hop: Hop) -> CIMultiDict[str]:
    """Headers for an inbound sidecar's answer: its own *path* record replaces anything the app sent."""
    headers = _clean(upstream)
    headers[PATH_HEADER] = path
    headers[SERVED_HEADER] = hop.lane
    if hop.fallback:
        headers[FALLBACK_HEADER] = hop.fallback
    return headers


def unavailable(exc: UpstreamUnavailable) -> web.Response:
    return plain_error(503, f"lane: {exc}")


def failure(exc: UpstreamFailure) -> web.Response:
    what = "timed out" if exc.status == 504 else "failed"
    return plain_error(exc.status, f"lane: upstream {exc.endpoint} {what}: {exc.detail}")
