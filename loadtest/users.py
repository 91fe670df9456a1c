"""The locust user: cycles through the personas and judges every answer's hop record.

Each request is sent exactly as its persona describes (the session's default headers and cookie
jar are cleared, so what the rules see is what the persona says), and its ``x-lane-path`` is
checked against the expected path. A wrong lane is a locust failure named after what went wrong
(``misroute b: expected gray, served base``); the lane counters are updated in the same greenlet
step as locust's own, so the two always agree.

Imports locust: load it only inside a locust process (the locustfile does).
"""

from __future__ import annotations

import random
import time

import gevent
from locust import HttpUser, task

from lane.core.hops import PATH_HEADER, parse_path

from .expected import RequestVerdict
from .plugin import poller_of, session_of

__all__ = ["LaneUser"]


class LaneUser(HttpUser):
    """Sends every persona in turn (each user starts at a random one) and verifies its lane."""

    def wait_time(self) -> float:
        return session_of(self.environment).options.pace

    def on_start(self) -> None:
        self.client.headers.clear()
        self._next = random.randrange(len(session_of(self.environment).personas))

    @task
    def lane_request(self) -> None:
        session = session_of(self.environment)
        persona = session.personas[self._next % len(session.personas)]
        self._next += 1
        self.client.cookies.clear()
        start = time.time()
        with self.client.get(
            persona.path, headers=dict(persona.headers), name=persona.name, catch_response=True,
            allow_redirects=False,
        ) as response:
            end = time.time()
            status = int(response.status_code or 0)
            hops = parse_path(response.headers.get(PATH_HEADER)) if response.headers is not None else ()
            http_ok = 200 <= status < 400
            if not http_ok and not hops:
                verdict = RequestVerdict(None, (), ())  # an HTTP failure, judged by the error rate
            else:
                poller = poller_of(self.environment)
                refresh = poller.refresh if poller else (lambda: None)
                verdict = session.verify_settled(persona, hops, start, end, refresh=refresh, sleep=gevent.sleep)
            # No greenlet switch between here and the end of the `with`: lane and locust counts agree.
            session.record(persona, verdict, http_ok, end)
            if verdict.findings:
                response.failure(verdict.findings[0].message)
            elif not http_ok:
                response.failure(f"HTTP {status}" if status else f"no response: {response.error}")
            else:
                response.success()
