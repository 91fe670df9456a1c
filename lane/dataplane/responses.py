"""What a lane proxy answers: the upstream's answer annotated with the hop record, or a short error.

Every proxied answer carries ``x-lane-path`` (the hop this proxy routed to, then what the upstream
reported), ``x-lane-served`` and, when the request fell back, ``x-lane-fallback``. Whatever the
upstream sent under those names, and the internal ``x-lane-unavailable`` marker, is replaced, so
an app can never forge the record. Errors are short plain text saying which service, lane and
instance failed and why: 503 when no instance may serve (strict lane, nothing left in the chain),
502 when the upstream failed, 504 when it timed out. Error answers carry the record too, with the
failed hop marked (`Hop.error`) and ``x-lane-served: none``: nothing served the request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from multidict import CIMultiDict, CIMultiDictProxy

from lane.core.errors import UpstreamUnavailable
from lane.core.headers import strip_hop_by_hop
from lane.core.hops import FALLBACK_HEADER, PATH_HEADER, SERVED_HEADER, Hop, encode_path
from lane.dataplane.dispatch import UNAVAILABLE_HEADER, path_after
from lane.dataplane.failures import UpstreamFailure, failed_hop

if TYPE_CHECKING:  # the aiohttp core's answers; the fast core uses `PlainAnswer` and never loads aiohttp
    from aiohttp import web

__all__ = ["LANE_RESPONSE_HEADERS", "NOT_SERVED", "PlainAnswer", "answer_headers", "error_headers", "failure",
           "failure_answer", "own_headers", "unavailable", "unavailable_answer"]

LANE_RESPONSE_HEADERS = (PATH_HEADER, SERVED_HEADER, FALLBACK_HEADER, UNAVAILABLE_HEADER)
NOT_SERVED = "none"  # the lane of a hop no lane could serve, and x-lane-served of an error answer


def _clean(upstream: CIMultiDictProxy[str] | CIMultiDict[str]) -> CIMultiDict[str]:
    headers = strip_hop_by_hop(upstream)
    for name in LANE_RESPONSE_HEADERS:
        headers.popall(name, None)
    return headers


def answer_headers(upstream: CIMultiDictProxy[str] | CIMultiDict[str], hop: Hop) -> CIMultiDict[str]:
    """Headers for the answer of a routed request: *hop* first, then the upstream's reported path."""
    below = upstream.get(PATH_HEADER)
    headers = _clean(upstream)
    headers[PATH_HEADER] = path_after(hop, below)
    headers[SERVED_HEADER] = hop.lane
    if hop.fallback:
        headers[FALLBACK_HEADER] = hop.fallback
    return headers


def own_headers(upstream: CIMultiDictProxy[str] | CIMultiDict[str], path: str, hop: Hop) -> CIMultiDict[str]:
    """Headers for an inbound sidecar's answer: its own *path* record replaces anything the app sent."""
    headers = _clean(upstream)
    headers[PATH_HEADER] = path
    headers[SERVED_HEADER] = hop.lane
    if hop.fallback:
        headers[FALLBACK_HEADER] = hop.fallback
    return headers


def error_headers(path: list[Hop]) -> CIMultiDict[str]:
    """Headers of an error answer: the hop record *path* (failed hop marked) and nothing served."""
    headers: CIMultiDict[str] = CIMultiDict()
    if path:
        headers[PATH_HEADER] = encode_path(path)
        headers[SERVED_HEADER] = NOT_SERVED
        if path[0].fallback:
            headers[FALLBACK_HEADER] = path[0].fallback
    return headers


@dataclass(frozen=True, slots=True)
class PlainAnswer:
    """A short plain-text answer of the proxy's own, before either core writes it."""

    status: int
    text: str
    headers: CIMultiDict[str]

    def as_response(self) -> web.Response:
        from lane.dataplane.upgrades import plain_error  # aiohttp core only

        return plain_error(self.status, self.text, self.headers)


def unavailable_answer(exc: UpstreamUnavailable, service: str | None = None, lane: str | None = None) -> PlainAnswer:
    """503: no lane may serve *service* for *lane* (named in the record when given)."""
    path = [Hop(service, NOT_SERVED, lane, error="503")] if service and lane else []
    return PlainAnswer(503, f"lane: {exc}", error_headers(path))


def failure_answer(exc: UpstreamFailure, path: list[Hop] | None = None) -> PlainAnswer:
    """502/504 for *exc*; the record is *path*, else the failed hop `lane.dataplane.dispatch` set on *exc*."""
    what = "timed out" if exc.status == 504 else "failed"
    hop = failed_hop(exc)
    hops = path if path is not None else [hop] if hop is not None else []
    return PlainAnswer(exc.status, f"lane: upstream {exc.endpoint} {what}: {exc.detail}", error_headers(hops))


def unavailable(exc: UpstreamUnavailable, service: str | None = None, lane: str | None = None) -> web.Response:
    return unavailable_answer(exc, service, lane).as_response()


def failure(exc: UpstreamFailure, path: list[Hop] | None = None) -> web.Response:
    return failure_answer(exc, path).as_response()
