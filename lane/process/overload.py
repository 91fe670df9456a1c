"""A data listener's overload limits (`lane.engine.limits`) from the config's ``proxy:``, counted in metrics.

The listener calls the hooks made here only when it sheds something or a connection opens or
closes, never per request; the counts go through `lane.telemetry.metric_tally` like the per-request ones.
"""

from __future__ import annotations

import logging
import resource

from lane.core.config import ProxySpec
from lane.engine.limits import SHED_REASONS, Limits
from lane.telemetry.metric_tally import Tallied
from lane.telemetry.metrics import DOWNSTREAM_CONNECTIONS, OVERLOAD_SHED

__all__ = ["listener_limits"]

log = logging.getLogger(__name__)

_MIB = 1024 * 1024


def listener_limits(spec: ProxySpec, listener: str) -> Limits:
    """The limits of the data listener named *listener* (``gateway``, ``inbound``, ``outbound``)."""
    shed = {reason: Tallied(OVERLOAD_SHED.labels(listener=listener, reason=reason)) for reason in SHED_REASONS}
    connections = Tallied(DOWNSTREAM_CONNECTIONS.labels(listener=listener))

    def on_shed(reason: str) -> None:
        shed[reason].inc()

    files, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if files != resource.RLIM_INFINITY and spec.max_connections >= files:
        log.warning("%s: proxy.max_connections is %d but this process may open only %d files (ulimit -n): "
                    "accepting will fail before the cap; raise the limit or lower max_connections",
                    listener, spec.max_connections, files)

    return Limits(
        max_connections=spec.max_connections,
        max_requests=spec.max_concurrent_requests,
        buffer_bytes=spec.connection_buffer_bytes,
        memory_bytes=spec.memory_watermark_mb * _MIB,
        on_shed=on_shed,
        on_connections=connections.inc,
    )
