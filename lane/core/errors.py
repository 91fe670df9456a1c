"""The exceptions `lane` raises on purpose.

One small hierarchy so callers can catch "anything lane refused" (`LaneError`) or one intent
(`ConfigError` for a file a human must fix, `UpstreamUnavailable` for a data-plane decision).
"""

from __future__ import annotations

__all__ = ["ConfigError", "LaneError", "UpstreamUnavailable"]


class LaneError(Exception):
    """Base class of every error `lane` raises deliberately."""


class ConfigError(LaneError):
    """A lane config that cannot be used; the message names the file, the path in it and what was expected."""

    def __init__(self, source: str, path: str, problem: str) -> None:
        self.source = source
        self.path = path
        self.problem = problem
        where = f"{source}: {path}" if path else source
        super().__init__(f"{where}: {problem}")


class UpstreamUnavailable(LaneError):
    """No instance may serve this request (strict lane, or nothing healthy anywhere in the chain)."""

    def __init__(self, service: str, lane: str, reason: str) -> None:
        self.service = service
        self.lane = lane
        self.reason = reason
        super().__init__(f"no instance of {service} may serve lane {lane}: {reason}")
