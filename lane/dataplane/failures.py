"""Why an upstream gave no answer, typed so the caller can decide what to do next.

`ConnectFailed`: nothing was sent, always safe to try another instance; `UpstreamTimeout` (the
proxy answers 504) and `UpstreamBroken` (502): the request or part of it reached the upstream;
`DeadlineSpent` (504): the request's time budget (`lane.core.deadline`) ran out before it could be sent.
``counts`` says whether the failure is the instance's fault, i.e. counts toward its ejection
(`lane.dataplane.health`): a spent budget is the caller's, never the instance's.
Free of aiohttp: both forwarding cores raise these.
"""

from __future__ import annotations

from lane.core.config import Endpoint
from lane.core.hops import Hop

__all__ = ["ConnectFailed", "DeadlineSpent", "UpstreamBroken", "UpstreamFailure", "UpstreamTimeout"]


class UpstreamFailure(Exception):
    """The upstream could not give an answer; `status` is what the proxy answers instead."""

    status = 502
    counts = True  # a failure of the instance itself: counts toward its ejection

    def __init__(self, endpoint: Endpoint, detail: str) -> None:
        self.endpoint = endpoint
        self.detail = detail
        # The failed hop (service, lane tried, instance, error status), set by `lane.dataplane.dispatch`.
        self.hop: Hop | None = None
        super().__init__(f"{endpoint}: {detail}")


class ConnectFailed(UpstreamFailure):
    """No connection could be made: nothing was sent, so trying another instance is always safe."""


class UpstreamTimeout(UpstreamFailure):
    status = 504


class UpstreamBroken(UpstreamFailure):
    """The connection broke or the answer was not HTTP, after (part of) the request was sent."""


class DeadlineSpent(UpstreamTimeout):
    """The request's budget was used up before this attempt could be sent: nothing was sent, nobody is to blame."""

    counts = False
