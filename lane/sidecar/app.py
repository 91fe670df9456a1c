"""What a sidecar's inbound side tells its app and answers for it: the time budget, the app's failures.

Budget: the app gets what this sidecar waits for it, less the margin, in ``x-lane-deadline-ms``
(`lane.core.deadline`), so an app that honours it answers before the sidecar gives up; the sidecar's
outbound side caps the app's calls by the same deadline (`lane.core.deadline.tighten`), whether the app
forwards the header or not.

Failures: when the app cannot be reached, breaks the exchange or goes silent, the answer carries
``x-lane-unavailable`` (`lane.dataplane.dispatch.UNAVAILABLE_HEADER`) saying how, and the hop record with this
instance's hop marked ``error=``, then the hops of the app's calls. Why the marker, and why it blames the right instance: only the
sidecar's *direct* caller ever sees it (every proxy strips it from answers it relays,
`lane.dataplane.responses`), and that caller dialed this sidecar as the instance (service, lane) whose app
failed, so it counts the failure against exactly that instance (`lane.dataplane.dispatch.marked_failure`):
``app-connect-failed`` is retried anywhere (nothing reached the app), ``app-broken`` only when the
request is idempotent and its body untouched (the app may have acted on it), ``app-timeout`` never
(the budget is spent). A failure deeper in the chain reaches the caller as the app's ordinary
answer, never with the marker, so it never counts against this instance; and a sidecar whose
app went silent while one of the app's own calls was still unanswered does not mark its 504 either
(the app was waiting on the chain below). When the request came with no budget left the answer
is a 504 without the marker: that is the caller's doing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Final

from multidict import CIMultiDict

from lane.core.config import ProxySpec
from lane.core.deadline import budget_of, stamp
from lane.core.endpoint import Endpoint
from lane.core.hops import Hop
from lane.dataplane.dispatch import UNAVAILABLE_HEADER
from lane.dataplane.failures import ConnectFailed, DeadlineSpent, UpstreamFailure, UpstreamTimeout
from lane.dataplane.responses import PlainAnswer, error_headers
from lane.sidecar.hop_collector import Collection

__all__ = ["MIN_WAIT", "app_budget", "app_failure_answer", "app_wait"]

MIN_WAIT: Final = 0.001  # below this the budget is spent: the app is not called at all


def app_budget(received: Mapping[str, str], headers: CIMultiDict[str], spec: ProxySpec) -> float:
    """Seconds to wait for the app (the caller's budget, at most ``request_timeout``); tells the app, in *headers*."""
    wait = budget_of(received, spec.request_timeout)
    stamp(headers, wait, spec.deadline_margin)
    return wait


def app_wait(wait: float, app: Endpoint) -> float:
    """*wait*, unless the budget is spent: then `DeadlineSpent` (answered 504, blaming nobody) and the app is not called."""
    if wait < MIN_WAIT:
        raise DeadlineSpent(app, "the request came with no time left; the app was not called")
    return wait


def app_failure_answer(service: str, lane: str, own: Hop, exc: UpstreamFailure, calls: Collection) -> PlainAnswer:
    """The answer when the app of *service*@*lane* failed (*exc*), marked so the caller blames this instance.

    The record is this instance's hop (marked ``error=``) and the hops of the calls the app made
    meanwhile (*calls*). An app that went silent while one of its own calls through this sidecar
    was still unanswered is waiting on the chain below, not hung: that timeout is not marked.
    """
    if isinstance(exc, DeadlineSpent) or (isinstance(exc, UpstreamTimeout) and calls.waiting()):
        why = None
    elif isinstance(exc, ConnectFailed):
        why = "app-connect-failed"
    elif isinstance(exc, UpstreamTimeout):
        why = "app-timeout"
    else:
        why = "app-broken"
    hop = replace(own, error=str(exc.status))
    headers = error_headers([hop, *calls.hops()])
    if why is not None:
        headers[UNAVAILABLE_HEADER] = why
    what = "timed out" if exc.status == 504 else "is unavailable"
    return PlainAnswer(exc.status, f"lane sidecar: the app of {service}@{lane} {what}: {exc.detail}", headers)
