"""Answers to an `lane.engine.exchange.Exchange`: an upstream's answer streamed through, or a short one of our own.

A complete upstream answer that arrived with its head leaves in one write (head, body, end);
a longer one streams chunk by chunk at the pace the client reads. If the upstream breaks
mid-body the client connection is cut, so the client sees a cut answer rather than a
complete-looking short one.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from multidict import CIMultiDict

from lane.dataplane.failures import UpstreamFailure
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
        request.start(answer.status, answer.reason, headers, answer.length, first, end=True)
        answer.release()
        return
    request.start(answer.status, answer.reason, headers, answer.length, first, end=False)
    try:
        async for chunk in answer.chunks():
            await request.write(chunk)
    except UpstreamFailure as exc:
        log.warning("upstream broke while streaming the answer of %s %s: %s", request.method, request.path, exc)
        answer.close()
        request.abort()
        return
    except ClientGone:
        log.debug("client went away during %s %s", request.method, request.path)
        answer.close()
        request.abort()
        return
    request.end()
    answer.release()


def respond_plain(request: Exchange, answer: PlainAnswer) -> None:
    headers = answer.headers.copy()
    headers["Content-Type"] = "text/plain; charset=utf-8"
    request.respond(answer.status, headers, (answer.text.rstrip("\n") + "\n").encode())
