"""Lane values as they travel on the wire.

A lane value becomes an Istio subset name, a pod label value and a header value, so it must be a
DNS label. Anything else that arrives from the network is treated as *absent*: logged (length and
a short prefix only, never the attacker-controlled whole) and counted, never forwarded, never raised.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from lane.core.baggage import get_member

__all__ = [
    "DEFAULT_BAGGAGE_KEY",
    "DEFAULT_LANE",
    "DEFAULT_TAG_HEADER",
    "LANE_PATTERN",
    "MAX_LANE_LENGTH",
    "Carrier",
    "TagSpec",
    "carried_lane",
    "is_valid_lane",
    "log_preview",
    "on_invalid_lane",
    "parse_lane",
]

DEFAULT_TAG_HEADER: Final = "x-mse-tag"
DEFAULT_BAGGAGE_KEY: Final = "x-mse-tag"
DEFAULT_LANE: Final = "base"
MAX_LANE_LENGTH: Final = 63
LANE_PATTERN: Final = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")

_PREVIEW_CHARS: Final = 16


@dataclass(frozen=True, slots=True)
class TagSpec:
    """How a lane travels (the config's ``tag:``): the tag header, the baggage key, the default lane."""

    header: str = DEFAULT_TAG_HEADER  # lower-case
    baggage_key: str = DEFAULT_BAGGAGE_KEY
    default_lane: str = DEFAULT_LANE

log = logging.getLogger(__name__)

# Where a lane was found: the tag header, the caller's context (the library's current lane), baggage.
Carrier = Literal["header", "context", "baggage"]

# Called with the source of every invalid lane value (the proxies count them: `lane.telemetry.metrics`
# registers itself). The library alone only logs: `import lane` stays free of prometheus.
_invalid_observers: list[Callable[[str], None]] = []


def on_invalid_lane(observer: Callable[[str], None]) -> None:
    """Call *observer* with the source (``header``, ``baggage``) of every invalid lane value from now on."""
    if observer not in _invalid_observers:
        _invalid_observers.append(observer)



def is_valid_lane(value: str) -> bool:
    """True when *value* is a DNS label, i.e. usable as subset name, pod label and header value."""
    return len(value) <= MAX_LANE_LENGTH and LANE_PATTERN.fullmatch(value) is not None


def log_preview(value: str) -> str:
    """A safe description of an untrusted value for logs: its length and a short, escaped prefix."""
    ellipsis = "..." if len(value) > _PREVIEW_CHARS else ""
    return f"len={len(value)} prefix={value[:_PREVIEW_CHARS]!a}{ellipsis}"


def parse_lane(value: str | None, *, source: str = "header") -> str | None:
    """The lane named by an untrusted wire value, or None when it is absent or invalid.

    Surrounding whitespace is tolerated (HTTP allows optional whitespace around field values);
    everything else that is not a DNS label is logged, counted under *source* and dropped.
    """
    if value is None:
        return None
    candidate = value.strip()
    if not candidate:
        return None
    if is_valid_lane(candidate):
        return candidate
    for observer in _invalid_observers:
        observer(source)
    log.warning("ignoring invalid lane tag from %s (%s)", source, log_preview(value))
    return None


def carried_lane(tags: Sequence[str], bags: Sequence[str], baggage_key: str,
                 current: Callable[[], str | None] | None = None) -> tuple[str | None, Carrier | None]:
    """The lane a request carries and where it was found: the first tag value, else *current* (the
    sender's own context, for outgoing calls), else the *baggage_key* member of the ``baggage`` values.

    The one "tag first, then baggage" reader of the proxies (`lane.core.wire`) and the library
    (propagator, aiohttp and gRPC hooks); invalid values count as absent.
    """
    lane = parse_lane(tags[0], source="header") if tags else None
    if lane is not None:
        return lane, "header"
    if current is not None:
        lane = current()
        if lane is not None:
            return lane, "context"
    if bags:
        lane = parse_lane(get_member(bags, baggage_key), source="baggage")
        if lane is not None:
            return lane, "baggage"
    return None, None
