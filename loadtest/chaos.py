"""``--chaos``: stop one lane instance of the local demo mid-run, restart it, and expect traffic to follow.

The driver asks the demo admin to stop ``service@lane`` (``POST /demo/instances/{s}/{l}/stop``),
waits, and starts it again. It tells the `HealthHistory` first, so fallbacks from the very first
refused connection are expected, and keeps the lane marked unhealthy for the proxies' ejection
time after the restart (they may rightly keep it ejected that long). The verdict — fallback seen
while it was down, traffic back in the lane after — is `summary.ChaosRun` judged on the merged
timeline, so it works with workers too.

No locust import: sleeping and posting are injected (gevent-friendly inside locust).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from lane.core.config import LaneConfig

from .health import HealthHistory
from .personas import Persona
from .summary import ChaosRun
from .watch import post as http_post

__all__ = ["choose_target", "parse_target", "run_chaos"]

log = logging.getLogger(__name__)


def parse_target(text: str, config: LaneConfig) -> tuple[str, str]:
    """``service@lane`` → (service, lane), checked against the config."""
    service, at, lane = text.partition("@")
    if not at or service not in config.services or not config.services[service].has_lane(lane):
        have = ", ".join(f"{s.name}@{ln}" for s in config.services.values() for ln in s.lanes if ln != config.default_lane)
        raise ValueError(f"--chaos target must be service@lane with a lane instance in the config ({have}), got {text!r}")
    return service, lane


def choose_target(config: LaneConfig, personas: Sequence[Persona]) -> tuple[str, str] | None:
    """A non-default lane instance that some persona's requests must reach (the last one in config order)."""
    wanted = {p.lane for p in personas if p.lane is not None and p.lane != config.default_lane}
    found = [(s.name, lane) for s in config.services.values() for lane in s.lanes if lane in wanted]
    return found[-1] if found else None


def run_chaos(
    admin: str,
    target: tuple[str, str],
    *,
    after: float,
    down: float,
    eject_seconds: float,
    history: HealthHistory,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
    post: Callable[[str], int] = http_post,
) -> ChaosRun:
    """Stop *target* after *after* seconds, restart it *down* seconds later; report what happened."""
    service, lane = target
    base = f"{admin.rstrip('/')}/demo/instances/{service}/{lane}"
    sleep(after)
    history.mark("chaos", target, clock(), healthy=False)
    try:
        status = post(base + "/stop")
    except OSError as exc:
        return ChaosRun(service, lane, error=f"cannot stop {service}@{lane}: {exc}")
    if status >= 300:
        return ChaosRun(service, lane, error=f"stopping {service}@{lane} answered HTTP {status}")
    stopped_at = clock()
    log.info("chaos: stopped %s@%s", service, lane)
    sleep(down)
    try:
        status = post(base + "/start")
    except OSError as exc:
        return ChaosRun(service, lane, stopped_at, error=f"cannot restart {service}@{lane}: {exc}")
    started_at = clock()
    history.mark("chaos", target, started_at + eject_seconds, healthy=True)
    if status >= 300:
        return ChaosRun(service, lane, stopped_at, error=f"restarting {service}@{lane} answered HTTP {status}")
    log.info("chaos: restarted %s@%s", service, lane)
    return ChaosRun(service, lane, stopped_at, started_at)
