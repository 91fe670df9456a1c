"""``--explain-json``: show the hop record inside small JSON answers (what `lane demo` turns on).

The path a human sees in the demo must be the data plane's truth, not what the apps say about
themselves, so the gateway copies its own ``x-lane-path`` into the answer: ``"path"`` is the list
of ``service@served-lane`` in call order, ``"hops"`` the full entries (requested lane, fallback
reason, instance). Only JSON objects of at most `MAX_EXPLAIN_BYTES` are touched, and only when the
body is not content-encoded; everything else streams through unchanged. An upstream that breaks
or goes silent while its JSON body is read gets the relay's answers: 502, or 504 on a timeout.
Served by the one forwarding core (`lane.engine`), like everything a user deploys.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import TYPE_CHECKING, Any, Final

from multidict import CIMultiDict

from lane.core.hops import PATH_HEADER, Hop, parse_path
from lane.dataplane import responses
from lane.dataplane.failures import UpstreamFailure
from lane.dataplane.relay import relay, respond_plain

if TYPE_CHECKING:
    from lane.engine.exchange import Answer, Exchange

__all__ = ["MAX_EXPLAIN_BYTES", "explained", "hop_json", "relay_explained"]

log = logging.getLogger(__name__)

MAX_EXPLAIN_BYTES: Final = 1024 * 1024


def hop_json(hop: Hop) -> dict[str, Any]:
    return {"service": hop.service, "lane": hop.lane, "requested": hop.requested,
            "fallback": hop.fallback, "instance": hop.instance}


def explained(raw: bytes, path: str | None) -> bytes:
    """*raw* with ``"path"`` and ``"hops"`` from the hop record *path* added, when it is a JSON object."""
    try:
        document = json.loads(raw)
    except ValueError:
        return raw
    if not isinstance(document, dict):
        return raw
    hops = parse_path(path)
    document["path"] = [hop.label() for hop in hops]
    document["hops"] = [hop_json(hop) for hop in hops]
    return json.dumps(document, indent=2).encode() + b"\n"


def _explainable(request: Exchange, answer: Answer) -> bool:
    media = answer.headers.get("Content-Type", "").partition(";")[0].strip().lower()
    return (media == "application/json" and "Content-Encoding" not in answer.headers
            and answer.length is not None and answer.length <= MAX_EXPLAIN_BYTES and request.method != "HEAD")


async def relay_explained(request: Exchange, answer: Answer, headers: CIMultiDict[str]) -> None:
    """Relay *answer* with *headers*, its JSON object body explained when it is small enough."""
    if not _explainable(request, answer):
        await relay(request, answer, headers)
        return
    parts = [answer.read_nowait()]
    try:
        async for chunk in answer.chunks():
            parts.append(chunk)
    except UpstreamFailure as exc:
        answer.close()
        log.warning("upstream broke while sending the answer of %s %s: %s", request.method, request.path, exc)
        failed = list(parse_path(headers.get(PATH_HEADER)))
        if failed:
            failed[0] = dataclasses.replace(failed[0], error=str(exc.status))
        what = "timed out" if exc.status == 504 else "failed"
        respond_plain(request, responses.PlainAnswer(
            exc.status, f"lane: upstream {what} while sending its answer: {type(exc).__name__}",
            responses.error_headers(failed)))
        return
    answer.release()
    headers.popall("Content-Length", None)
    request.respond(answer.status, headers, explained(b"".join(parts), headers.get(PATH_HEADER)), answer.reason)
