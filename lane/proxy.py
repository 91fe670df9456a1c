"""The streaming forward core shared by the gateway and the sidecar.

One pooled keep-alive `aiohttp.ClientSession` per process (owned by the app's cleanup context,
see `session_ctx`). Bodies stream both ways in bounded chunks, so a 1 GiB upload never sits in
memory. Method, path, query, status and end-to-end headers are preserved; hop-by-hop headers
(RFC 9110 §7.6.1: the fixed list plus every name listed in ``Connection``) are stripped both ways;
``X-Forwarded-For/Proto/Host`` are set; redirects are never followed; bodies are never
decompressed. Failures are typed so the caller can decide: `ConnectFailed` (nothing was sent,
always safe to try elsewhere), `UpstreamTimeout` (504) and `UpstreamBroken` (502).

``proxy.request_timeout`` is the longest the proxy waits *without progress*, never a cap on a
whole exchange (a 1 GiB upload or a long stream must not be cut because it is big or slow): the
deadline is pushed back by every request body chunk that flows, the wait for the answer's head
starts once the body is sent, and while the answer streams it is an idle (``sock_read``) timeout.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from .config import Endpoint, ProxySpec
from .failures import ConnectFailed, UpstreamBroken, UpstreamFailure, UpstreamTimeout
from .headers import HOP_BY_HOP, is_idempotent, strip_hop_by_hop, upstream_headers
from .headers import is_websocket as headers_are_websocket

if TYPE_CHECKING:
    from .h1.listen import FastPath

__all__ = [
    "CHUNK_SIZE",
    "FAST_PATH",
    "HOP_BY_HOP",
    "SESSION",
    "Body",
    "ConnectFailed",
    "UpstreamBroken",
    "UpstreamFailure",
    "UpstreamTimeout",
    "is_idempotent",
    "is_websocket",
    "make_session",
    "plain_error",
    "relay",
    "request_target",
    "send",
    "session_ctx",
    "strip_hop_by_hop",
    "upstream_headers",
]

log = logging.getLogger(__name__)

CHUNK_SIZE: Final = 64 * 1024
SESSION: Final = web.AppKey("lane_session", aiohttp.ClientSession)
# The fast-core handler of an app (`lane.h1`): when set, the listener serves the app's requests
# with it and hands only upgrades to the app itself.
FAST_PATH: Final[web.AppKey[FastPath]] = web.AppKey("lane_fast_path")


def make_session() -> aiohttp.ClientSession:
    """The proxy's client session: pooled, no cookies, no redirects, no decompression, no auto headers."""
    connector = aiohttp.TCPConnector(limit=1000, limit_per_host=0, enable_cleanup_closed=False)
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
        trust_env=False,
        timeout=aiohttp.ClientTimeout(total=None),
    )


async def session_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: one session for the app's lifetime, closed after in-flight requests drained."""
    app[SESSION] = make_session()
    try:
        yield
    finally:
        await app[SESSION].close()


def request_target(request: web.BaseRequest) -> str:
    """The origin-form target (path and query, as sent) of *request*, also for absolute-form requests."""
    raw = request.raw_path
    if raw.startswith("/"):
        return raw
    return URL(raw, encoded=True).raw_path_qs or "/"


def is_websocket(request: web.BaseRequest) -> bool:
    return headers_are_websocket(request.headers)


class Body:
    """The request body as an async stream, remembering whether any of it was consumed.

    A body that was never read can be sent again (another instance, another lane); one that was
    read cannot, because it is streamed and not kept.
    """

    def __init__(self, request: web.BaseRequest) -> None:
        self._request = request
        self.started = False

    @property
    def present(self) -> bool:
        return self._request.body_exists

    @property
    def length(self) -> int | None:
        return self._request.content_length

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self._request.content.iter_chunked(CHUNK_SIZE):
            self.started = True
            yield chunk


@functools.lru_cache(maxsize=16)
def _timeout(idle: float, connect: float) -> aiohttp.ClientTimeout:
    """One (immutable) timeout object per config value, not one per request.

    No ``total``: only silence times out. aiohttp starts ``sock_read`` once the request body is
    sent and restarts it on every read, so it bounds the wait for the head and every pause of
    the answer's body. Waiting for a free pooled connection is waiting without progress too.
    """
    return aiohttp.ClientTimeout(total=None, connect=idle, sock_connect=connect, sock_read=idle)


class _UploadDeadline:
    """An `asyncio.timeout` pushed back while request body chunks flow to the upstream.

    aiohttp's ``sock_read`` only starts after the body is sent; this bounds the upload itself, so
    an upstream that stops reading (or a client that stops sending) cannot hold the request forever.
    """

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._loop = asyncio.get_running_loop()
        self.timeout = asyncio.timeout(seconds)
        self._open = True

    def close(self) -> None:
        """The head arrived (or the request failed): the rest of the body no longer moves the deadline."""
        self._open = False

    def _push(self) -> None:
        if self._open:
            self.timeout.reschedule(self._loop.time() + self._seconds)

    async def watch(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            self._push()  # read from the client
            yield chunk
            self._push()  # written to the upstream
        self._push()  # all sent: from here on the wait for the head


async def send(
    session: aiohttp.ClientSession,
    method: str,
    endpoint: Endpoint,
    target: str,
    headers: CIMultiDict[str],
    body: Body | None,
    spec: ProxySpec,
    wait: float | None = None,
) -> aiohttp.ClientResponse:
    """Send the request to *endpoint* and return the response once its head arrived.

    *wait* bounds silence (default ``spec.request_timeout``; a hop passes what is left of the
    request's budget, `lane.deadline`). The caller owns the response (release or close it). Raises `ConnectFailed`, `UpstreamTimeout`
    or `UpstreamBroken`.
    """
    url = URL(f"http://{endpoint}{target}", encoded=True)
    if wait is None:
        wait = spec.request_timeout
    timeout = _timeout(round(wait, 3), spec.connect_timeout)
    try:
        if body is None or not body.present:
            return await session.request(
                method, url, headers=headers, allow_redirects=False, timeout=timeout,
                compress=None, auto_decompress=False, proxy=None,
            )
        upload = _UploadDeadline(wait)
        try:
            async with upload.timeout:
                return await session.request(
                    method, url, headers=headers, data=upload.watch(body.chunks()), allow_redirects=False,
                    timeout=timeout, compress=None, auto_decompress=False, proxy=None,
                )
        finally:
            upload.close()
    except aiohttp.ClientConnectorError as exc:
        raise ConnectFailed(endpoint, f"connect failed: {exc.os_error.strerror or exc.os_error}") from None
    except aiohttp.ConnectionTimeoutError:
        raise ConnectFailed(endpoint, f"connect timed out after {spec.connect_timeout:g}s") from None
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise UpstreamTimeout(endpoint, f"no progress for {wait:.3g}s") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamBroken(endpoint, f"{type(exc).__name__}: {exc}"[:200]) from None


class _RelayResponse(web.StreamResponse):
    """A streamed answer whose head waits for its first body bytes, so both leave in one write.

    The mechanism is aiohttp's own (`web.Response` buffers its head the same way); on a proxy
    every write to a socket costs a system call and a wake-up of the reader, and most answers
    fit in the first read. `relay` flushes the head itself when no body is there yet.
    """

    _send_headers_immediately = False


async def relay(
    request: web.BaseRequest, upstream: aiohttp.ClientResponse, headers: CIMultiDict[str]
) -> web.StreamResponse:
    """Stream *upstream*'s body to the client with *headers* (already filtered and annotated).

    If the upstream breaks mid-body the client connection is closed, so the client sees a cut
    answer rather than a complete-looking short one.
    """
    response = _RelayResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    content = upstream.content
    try:
        await response.prepare(request)
        first = content.read_nowait()  # what arrived with the upstream's head
        if content.at_eof():
            await response.write_eof(first)  # a complete answer leaves in one write: head, body, end
        else:
            await response.write(first)  # the head leaves now (with what is here), even if the body is slow
            async for chunk in content.iter_any():
                await response.write(chunk)
            await response.write_eof()
    except (TimeoutError, aiohttp.ClientError) as exc:
        log.warning("upstream broke while streaming the answer of %s %s: %s", request.method, request.path, exc)
        upstream.close()
        if request.transport is not None:
            request.transport.close()
        return response
    except (ConnectionError, RuntimeError) as exc:  # the client went away
        log.debug("client went away during %s %s: %s", request.method, request.path, exc)
        upstream.close()
        return response
    upstream.release()
    return response


def plain_error(status: int, text: str, headers: CIMultiDict[str] | None = None) -> web.Response:
    """A short plain-text error answer, the way a proxy says what went wrong."""
    return web.Response(status=status, text=text.rstrip("\n") + "\n", headers=headers)
