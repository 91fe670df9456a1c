"""Answers to an `lane.engine.exchange.Exchange`: an upstream's answer streamed through, or a short one of our own.

A complete upstream answer that arrived with its head leaves in one write (head, body, end);
a longer one streams chunk by chunk at the pace the client reads, and ends with the upstream's
trailers (gRPC's status) when it had any. If the upstream breaks mid-body the client's exchange is
cut (the connection on HTTP/1.1, the stream on HTTP/2), so the client sees a cut answer rather than
a complete-looking short one; if the request is cancelled (its client reset the stream) the
upstream answer is closed, which resets it upstream in turn. A gRPC request gets the proxy's own
answers in gRPC's error form (`lane.dataplane.grpc_status`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from multidict import CIMultiDict

from lane.dataplane.failures import UpstreamFailure
from lane.dataplane.grpc_status import grpc_error_headers, is_grpc
from lane.dataplane.responses import PlainAnswer
from lane.engine.exchange import ClientGone, Exchange

if TYPE_CHECKING:
    from lane.engine.exchange import Answer

__all__ = ["relay", "respond_plain"]

log = logging.getLogger(__name__)


async def relay(request: Exchange, answer: Answer, headers: CIMultiDict[str]) -> None:
    """Stream *answer* to the client with *headers* (already filtered and annotated)."""
    first = answer.read_nowait()
    if answer.at_eof:
        trailers = answer.trailers
        request.start(answer.status, answer.reason, headers, answer.length, first, end=trailers is None)
        if trailers is not None:
            request.end(trailers)
        answer.release()
        return
    request.start(answer.status, answer.reason, headers, answer.length, first, end=False)
    try:
        async for chunk in answer.chunks():
            await request.write(chunk)
    except BaseException as exc:
        if not isinstance(exc, UpstreamFailure | ClientGone):
            answer.close()  # cancelled: the upstream stream is reset too
            raise
        _cut(request, answer, exc)
        return
    request.end(answer.trailers)
    answer.release()


def _cut(request: Exchange, answer: Answer, exc: UpstreamFailure | ClientGone) -> None:
    if isinstance(exc, UpstreamFailure):
        log.warning("upstream broke while streaming the answer of %s %s: %s", request.method, request.path, exc)
    else:
        log.debug("client went away during %s %s", request.method, request.path)
    answer.close()
    request.abort()


def respond_plain(request: Exchange, answer: PlainAnswer) -> None:
    """The proxy's own short answer: plain text, or for a gRPC request its gRPC error form."""
    if is_grpc(request.headers):
        request.respond(200, grpc_error_headers(answer.status, answer.text, answer.headers))
        return
    headers = answer.headers.copy()
    headers["Content-Type"] = "text/plain; charset=utf-8"
    request.respond(answer.status, headers, (answer.text.rstrip("\n") + "\n").encode())
