"""Polling the data plane's admin endpoints for live instance state.

Each ``--admin URL`` is asked for ``GET /lane/instances`` (every lane proxy's view) and, once, for
``GET /demo/topology`` (only `lane demo` has it; a 404 is remembered so we stop asking). One poll
round gives one combined view that `HealthHistory` records with its timestamp. Unreachable admins
are logged once per outage and skipped: a missing observation never invents health data.

Standard library only (``urllib``): inside locust the sockets are gevent's, so polling does not
block the users; outside locust it is plain blocking I/O with short timeouts.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any, Final

from .health import HealthHistory, LaneKey, combine, parse_instances, parse_topology

__all__ = ["AdminPoller", "fetch_json", "post"]

log = logging.getLogger(__name__)
_TIMEOUT: Final = 2.0


def fetch_json(url: str, timeout: float = _TIMEOUT) -> Any:
    """GET *url* and decode its JSON body; raises OSError / ValueError on failure."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read(1 << 22).decode("utf-8"))


def post(url: str, timeout: float = 10.0) -> int:
    """POST an empty body to *url*; returns the status (HTTP errors included, never raises on 4xx/5xx)."""
    request = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


class AdminPoller:
    """Polls admin URLs into a `HealthHistory`; `poll_once` is safe to call at any time."""

    def __init__(
        self,
        admins: Sequence[str],
        history: HealthHistory,
        fetch: Callable[[str], Any] = fetch_json,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.admins = tuple(a.rstrip("/") for a in admins)
        self.history = history
        self._fetch = fetch
        self._clock = clock
        self._no_topology: set[str] = set()
        self._down: set[str] = set()
        self.polls = 0
        self._last = float("-inf")

    def _one(self, admin: str) -> list[dict[LaneKey, bool]]:
        views = []
        try:
            views.append(parse_instances(self._fetch(admin + "/lane/instances")))
            if admin in self._down:
                log.info("admin %s reachable again", admin)
                self._down.discard(admin)
        except (OSError, ValueError) as exc:
            if admin not in self._down:
                log.warning("cannot read %s/lane/instances: %s", admin, exc)
                self._down.add(admin)
        if admin not in self._no_topology:
            try:
                views.append(parse_topology(self._fetch(admin + "/demo/topology")))
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    self._no_topology.add(admin)
            except (OSError, ValueError):
                pass  # not the demo, or momentarily unreachable: /lane/instances is the main source
        return views

    def poll_once(self) -> dict[LaneKey, bool]:
        """Ask every admin now and record the combined view; returns it (empty if none answered)."""
        views: list[dict[LaneKey, bool]] = []
        for admin in self.admins:
            views.extend(self._one(admin))
        view = combine(views)
        if views:
            self.history.observe("admin", self._clock(), view)
        self.polls += 1
        self._last = self._clock()
        return view

    def refresh(self, min_age: float = 0.1) -> None:
        """Poll now unless a poll finished less than *min_age* seconds ago.

        Many users may want fresh health data at once (the first fallbacks of an outage); this
        keeps them from flooding the admin endpoints.
        """
        if self._clock() - self._last >= min_age:
            self.poll_once()

    def run(self, interval: float, should_stop: Callable[[], bool], sleep: Callable[[float], None]) -> None:
        """Poll every *interval* seconds until *should_stop*; never raises (a poll loop must not die)."""
        while not should_stop():
            try:
                self.poll_once()
            except Exception:
                log.exception("admin poll failed")
            sleep(interval)
