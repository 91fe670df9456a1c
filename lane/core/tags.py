"""Lane values as they travel on the wire.

A lane value becomes an Istio subset name, a pod label value and a header value, so it must be a
DNS label. Anything else that arrives from the network is treated as *absent*: logged (length and
a short prefix only, never the attacker-controlled whole) and counted, never forwarded, never raised.
"""

from __future__ import annotations

import logging
import re
from typing import Final

__all__ = [
    "DEFAULT_BAGGAGE_KEY",
    "DEFAULT_LANE",
    "DEFAULT_TAG_HEADER",
    "LANE_PATTERN",
    "MAX_LANE_LENGTH",
    "is_valid_lane",
    "log_preview",
    "parse_lane",
]

DEFAULT_TAG_HEADER: Final = "x-mse-tag"
DEFAULT_BAGGAGE_KEY: Final = "x-mse-tag"
DEFAULT_LANE: Final = "base"
MAX_LANE_LENGTH: Final = 63
LANE_PATTERN: Final = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")

_PREVIEW_CHARS: Final = 16

log = logging.getLogger(__name__)



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
    from lane.telemetry.metrics import (
        INVALID_TAGS,  # here: `import lane` (and `lane mesh render`) stay free of prometheus
    )

    INVALID_TAGS.labels(source=source).inc()
    log.warning("ignoring invalid lane tag from %s (%s)", source, log_preview(value))
    return None
