"""Passive health checking: instances that keep failing are ejected for a while, then tried again.

No probes: the proxy only learns from the traffic it forwards, like Envoy's outlier detection
with ``consecutive_gateway_failure``. A *failure* is a transport failure (connection refused or
timed out, connection reset before a response); any HTTP response, even a 5xx, is a success at
this level because the instance did answer. After ``eject_after`` consecutive failures the
instance is ejected for ``eject_seconds``; when that time is up it is tried again, on probation:
one more failure ejects it again at once, one success clears it. That is what makes gray traffic
return to a gray instance that came back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from lane.core.endpoint import Endpoint

__all__ = ["InstanceHealth", "PassiveHealth"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _State:
    failures: int = 0
    ejected_until: float = 0.0
    probation: bool = False  # ejected before and not yet confirmed healthy again


@dataclass(frozen=True, slots=True)
class InstanceHealth:
    """A snapshot of one instance for `/lane/instances` and logs."""

    healthy: bool
    consecutive_failures: int
    ejected_for: float  # seconds left, 0 when not ejected


class PassiveHealth:
    """Per-instance failure counters and ejections, keyed by address.

    Single event loop, no locks needed. *on_eject(endpoint)* is called once per ejection (metrics,
    logs); it must not raise, and if it does the error is swallowed rather than failing a request.
    """

    def __init__(
        self,
        eject_after: int,
        eject_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_eject: Callable[[Endpoint], None] | None = None,
    ) -> None:
        if eject_after < 1 or eject_seconds <= 0:
            raise ValueError("eject_after must be >= 1 and eject_seconds > 0")
        self.eject_after = eject_after
        self.eject_seconds = eject_seconds
        self._clock = clock
        self._on_eject = on_eject
        self._states: dict[Endpoint, _State] = {}

    def configure(self, eject_after: int, eject_seconds: float) -> None:
        """Adopt new thresholds (config reload) and keep what was learnt so far."""
        self.eject_after = eject_after
        self.eject_seconds = eject_seconds

    def is_available(self, endpoint: Endpoint) -> bool:
        state = self._states.get(endpoint)
        return state is None or state.ejected_until <= self._clock()

    def any_ejected(self) -> bool:
        """Whether some instance is ejected right now (False, the common case, costs one check)."""
        if not self._states:
            return False
        now = self._clock()
        return any(state.ejected_until > now for state in self._states.values())

    def record_success(self, endpoint: Endpoint) -> None:
        if endpoint in self._states:
            del self._states[endpoint]

    def record_failure(self, endpoint: Endpoint) -> bool:
        """Count one failure; True when it ejected the instance just now."""
        state = self._states.setdefault(endpoint, _State())
        now = self._clock()
        if state.ejected_until > now:
            return False  # already out; a request that raced the ejection does not extend it
        state.failures += 1
        if state.failures >= self.eject_after or state.probation:
            state.ejected_until = now + self.eject_seconds
            state.failures = 0
            state.probation = True
            if self._on_eject is not None:
                try:
                    self._on_eject(endpoint)
                except Exception:  # a metrics hook never fails a request
                    log.exception("on_eject hook failed for %s", endpoint)
            return True
        return False

    def snapshot(self, endpoint: Endpoint) -> InstanceHealth:
        state = self._states.get(endpoint)
        if state is None:
            return InstanceHealth(True, 0, 0.0)
        left = max(0.0, state.ejected_until - self._clock())
        return InstanceHealth(left == 0.0, state.failures, round(left, 3))

    def forget_except(self, keep: set[Endpoint]) -> None:
        """Drop state of instances no longer in the config, so the table stays bounded."""
        for endpoint in [e for e in self._states if e not in keep]:
            del self._states[endpoint]
