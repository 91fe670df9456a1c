"""What `lane rollout` refuses before it changes anything (exit status 2, one line)."""

from __future__ import annotations

from lane.core.errors import LaneError

__all__ = ["AdminUnreachable", "ClusterUnreachable", "RolloutInputError", "TargetUnreachable"]


class RolloutInputError(LaneError):
    """Bad input: an option, a config without the lane's percentage rule, gateways that cannot agree."""


class TargetUnreachable(RolloutInputError):
    """Where the share is put in force, or the figures are read, does not answer or refuses."""


class AdminUnreachable(TargetUnreachable):
    """An admin listener that does not answer, or answers something that is not a lane proxy's."""


class ClusterUnreachable(TargetUnreachable):
    """The Kubernetes API server (``--mesh``) could not be reached or refused a request."""
