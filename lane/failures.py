"""Why an upstream gave no answer, typed so the caller can decide what to do next.

`ConnectFailed`: nothing was sent, always safe to try another instance; `UpstreamTimeout` (the
proxy answers 504) and `UpstreamBroken` (502): the request or part of it reached the upstream.
Free of aiohttp: both forwarding cores raise these.
"""

from __future__ import annotations

from .config import Endpoint
from .hops import Hop

__all__ = ["ConnectFailed", "UpstreamBroken", "UpstreamFailure", "UpstreamTimeout"]


class UpstreamFailure(Exception):
    """The upstream could not give an answer; `status` is what the proxy answers instead."""

    status = 502

    def __init__(self, endpoint: Endpoint, detail: str) -> None:
        self.endpoint = endpoint
        self.detail = detail
        # The failed hop (service, lane tried, instance, error status), set by `lane.dispatch`.
        self.hop: Hop | None = None
        super().__init__(f"{endpoint}: {detail}")


class ConnectFailed(UpstreamFailure):
    """No connection could be made: nothing was sent, so trying another instance is always safe."""


class UpstreamTimeout(UpstreamFailure):
    status = 504


class UpstreamBroken(UpstreamFailure):
    """The connection broke or the answer was not HTTP, after (part of) the request was sent."""
