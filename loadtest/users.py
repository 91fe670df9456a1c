"""The locust user: cycles through the personas and judges every answer's hop record.

Each request is sent exactly as its persona describes (the session's default headers and cookie
jar are cleared, so what the rules see is what the persona says), and its ``x-lane-path`` is
checked against the expected path. A wrong lane is a locust failure named after what went wrong
(``misroute b: expected gray, served base``); the lane counters are updated in the same greenlet
step as locust's own, so the two always agree.

A gRPC persona (``--grpc``) is one unary call with real grpcio (`loadtest.grpc_client`), its lane
read from the response metadata (or a trailers-only error's trailers), reported to locust as a
``gRPC`` request and judged and counted exactly like an HTTP one; a non-OK status is a failure named
after it (``gRPC UNAVAILABLE: ...``).

Imports locust: load it only inside a locust process (the locustfile does).
"""

from __future__ import annotations

import random
import time
from typing import Any
from urllib.parse import urlsplit

import gevent
from locust import HttpUser, task

from lane.core.hops import PATH_HEADER, parse_path

from .expected import RequestVerdict
from .grpc_client import GrpcCaller
from .personas import Persona
from .plugin import poller_of, session_of

__all__ = ["LaneUser"]


class LaneUser(HttpUser):
    """Sends every persona in turn (each user starts at a random one) and verifies its lane."""

    def wait_time(self) -> float:
        return session_of(self.environment).options.pace

    def on_start(self) -> None:
        self.client.headers.clear()
        self._next = random.randrange(len(session_of(self.environment).personas))
        self._grpc: GrpcCaller | None = None

    def on_stop(self) -> None:
        if self._grpc is not None:
            self._grpc.close()
            self._grpc = None

    @task
    def lane_request(self) -> None:
        session = session_of(self.environment)
        persona = session.personas[self._next % len(session.personas)]
        self._next += 1
        if persona.grpc_method is not None:
            self._grpc_request(persona)
            return
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

    def _grpc_request(self, persona: Persona) -> None:
        assert persona.grpc_method is not None
        session = session_of(self.environment)
        if self._grpc is None:
            self._grpc = GrpcCaller(urlsplit(self.host or "").netloc)
        start = time.time()
        answer = self._grpc.call(persona.grpc_method, persona.user_agent, persona.metadata)
        end = time.time()
        hops = parse_path(answer.path)
        if not answer.ok and not hops:
            verdict = RequestVerdict(None, (), ())  # a gRPC failure, judged by the error rate
        else:
            poller = poller_of(self.environment)
            refresh = poller.refresh if poller else (lambda: None)
            verdict = session.verify_settled(persona, hops, start, end, refresh=refresh, sleep=gevent.sleep)
        # As for HTTP: the lane counters and locust's request event in the same greenlet step.
        session.record(persona, verdict, answer.ok, end)
        exception: Exception | None = None
        if verdict.findings:
            exception = _GrpcFailure(verdict.findings[0].message)
        elif not answer.ok:
            exception = _GrpcFailure(f"gRPC {answer.status}: {answer.details}")
        meta: dict[str, Any] = {
            "request_type": "gRPC", "name": persona.name, "response_time": (end - start) * 1000,
            "response_length": answer.length, "response": None, "context": {}, "exception": exception,
            "start_time": start, "url": persona.grpc_method,
        }
        self.environment.events.request.fire(**meta)


class _GrpcFailure(Exception):
    """A failed gRPC persona call, named as locust's failures table shows it."""
