"""The lane on a request's headers: read it, strip it, set it.

A lane travels twice on every request: in the tag header (``x-mse-tag``, what Istio routes on)
and as a member of W3C ``baggage`` (what OpenTelemetry apps forward). Reading prefers the tag
header and falls back to baggage; invalid values are treated as absent (`lane.tags.parse_lane`
logs and counts them). Writing always sets both, the baggage member first so size-limited
intermediaries keep it, every other baggage member untouched (`lane.baggage`).
"""

from __future__ import annotations

from typing import Final

from multidict import CIMultiDict, CIMultiDictProxy

from .baggage import BAGGAGE_HEADER, get_member, remove_member, set_member
from .config import TagSpec
from .hops import FALLBACK_HEADER, PATH_HEADER, SERVED_HEADER
from .tags import parse_lane

__all__ = ["INTERNAL_HEADERS", "Headers", "has_lane_tag", "request_lane", "set_lane", "strip_lane"]

Headers = CIMultiDict[str] | CIMultiDictProxy[str]

# Headers only lane proxies may set on a request: the routing proxy tells the next sidecar why
# the request fell back (`x-lane-fallback`). Outside clients never get to send them.
INTERNAL_HEADERS: Final = (FALLBACK_HEADER, SERVED_HEADER, PATH_HEADER)


def request_lane(headers: Headers, tag: TagSpec) -> str | None:
    """The lane a request carries (tag header first, then baggage), or None."""
    value = headers.get(tag.header)
    if value is not None:
        lane = parse_lane(value, source="header")
        if lane is not None:
            return lane
    if BAGGAGE_HEADER in headers:
        member = get_member(headers.getall(BAGGAGE_HEADER), tag.baggage_key)
        if member is not None:
            return parse_lane(member, source="baggage")
    return None


def has_lane_tag(headers: Headers, tag: TagSpec) -> bool:
    """Whether the request carries any lane tag at all, valid or not."""
    if tag.header in headers:
        return True
    if BAGGAGE_HEADER in headers:
        return get_member(headers.getall(BAGGAGE_HEADER), tag.baggage_key) is not None
    return False


def strip_lane(headers: CIMultiDict[str], tag: TagSpec) -> None:
    """Remove the tag header, the lane's baggage member (other members survive) and internal headers."""
    headers.popall(tag.header, None)
    for name in INTERNAL_HEADERS:
        headers.popall(name, None)
    if BAGGAGE_HEADER in headers:
        rest = remove_member(headers.popall(BAGGAGE_HEADER), tag.baggage_key)
        if rest is not None:
            headers[BAGGAGE_HEADER] = rest


def set_lane(headers: CIMultiDict[str], tag: TagSpec, lane: str) -> None:
    """Put *lane* in the tag header and as the first baggage member."""
    headers[tag.header] = lane
    headers[BAGGAGE_HEADER] = set_member(headers.popall(BAGGAGE_HEADER, []), tag.baggage_key, lane)
