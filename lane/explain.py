"""``--explain-json``: show the hop record inside small JSON answers (what `lane demo` turns on).

The path a human sees in the demo must be the data plane's truth, not what the apps say about
themselves, so the gateway copies its own ``x-lane-path`` into the answer: ``"path"`` is the list
of ``service@served-lane`` in call order, ``"hops"`` the full entries (requested lane, fallback
reason, instance). Only JSON objects of at most `MAX_EXPLAIN_BYTES` are touched, and only when the
body is not content-encoded; everything else streams through unchanged. An upstream that breaks
or goes silent while its JSON body is read gets the relay's answers: 502, or 504 on a timeout.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from . import responses
from .hops import PATH_HEADER, Hop, parse_path
from .proxy import plain_error, relay

__all__ = ["MAX_EXPLAIN_BYTES", "hop_json", "relay_explained"]

log = logging.getLogger(__name__)

MAX_EXPLAIN_BYTES: Final = 1024 * 1024


def hop_json(hop: Hop) -> dict[str, Any]:
    return {"service": hop.service, "lane": hop.lane, "requested": hop.requested,
            "fallback": hop.fallback, "instance": hop.instance}


async def relay_explained(
    request: web.BaseRequest, upstream: aiohttp.ClientResponse, headers: CIMultiDict[str]
) -> web.StreamResponse:
    length = upstream.content_length
    if (
        upstream.content_type != "application/json"
        or "Content-Encoding" in upstream.headers
        or length is None
        or length > MAX_EXPLAIN_BYTES
        or request.method == "HEAD"
    ):
        return await relay(request, upstream, headers)
    try:
        raw = await upstream.read()
    except (TimeoutError, aiohttp.ClientError) as exc:
        upstream.close()
        status = 504 if isinstance(exc, TimeoutError) else 502
        log.warning("upstream broke while sending the answer of %s %s: %s", request.method, request.path, exc)
        failed = list(parse_path(headers.get(PATH_HEADER)))
        if failed:
            failed[0] = dataclasses.replace(failed[0], error=str(status))
        what = "timed out" if status == 504 else "failed"
        return plain_error(status, f"lane: upstream {what} while sending its answer: {type(exc).__name__}",
                           responses.error_headers(failed))
    upstream.release()
    try:
        document = json.loads(raw)
    except ValueError:
        document = None
    if isinstance(document, dict):
        hops = parse_path(headers.get(PATH_HEADER))
        document["path"] = [hop.label() for hop in hops]
        document["hops"] = [hop_json(hop) for hop in hops]
        raw = json.dumps(document, indent=2).encode() + b"\n"
    headers.popall("Content-Length", None)
    return web.Response(status=upstream.status, reason=upstream.reason, body=raw, headers=headers)
