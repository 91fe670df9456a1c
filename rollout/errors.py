"""What `lane rollout` refuses before it changes anything (exit status 2, one line)."""

from __future__ import annotations

from lane.core.errors import LaneError

__all__ = ["AdminUnreachable", "RolloutInputError"]


class RolloutInputError(LaneError):
    """Bad input: an option, a config without the lane's percentage rule, gateways that cannot agree."""


class AdminUnreachable(RolloutInputError):
    """An admin listener that does not answer, or answers something that is not a lane proxy's."""
