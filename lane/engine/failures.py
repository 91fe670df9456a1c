"""Why an upstream gave no answer, typed so the caller can decide what to do next.

`ConnectFailed`: nothing was sent, always safe to try another instance; `UpstreamTimeout` (a proxy
answers 504) and `UpstreamBroken` (502): the request or part of it reached the upstream. ``counts``
says whether the failure is the instance's fault (counts toward ejecting it). The data plane adds
its own (`lane.dataplane.failures`) and notes on each failure the hop it belongs to.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Address", "ConnectFailed", "UpstreamBroken", "UpstreamFailure", "UpstreamTimeout"]


class Address(Protocol):
    """Where an upstream listens (the config's `Endpoint` is one); hashable, printed as ``host:port``."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    def __hash__(self) -> int: ...


class UpstreamFailure(Exception):
    """The upstream could not give an answer; `status` is what the proxy answers instead."""

    status = 502
    counts = True  # a failure of the instance itself: counts toward its ejection

    def __init__(self, endpoint: Address, detail: str) -> None:
        self.endpoint = endpoint
        self.detail = detail
        super().__init__(f"{endpoint}: {detail}")


class ConnectFailed(UpstreamFailure):
    """No connection could be made: nothing was sent, so trying another instance is always safe."""


class UpstreamTimeout(UpstreamFailure):
    status = 504


class UpstreamBroken(UpstreamFailure):
    """The connection broke or the answer was not HTTP, after (part of) the request was sent."""
