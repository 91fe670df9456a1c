"""The lane on a request's headers: read it, strip it, set it.

A lane travels twice on every request: in the tag header (``x-mse-tag``, what Istio routes on)
and as a member of W3C ``baggage`` (what OpenTelemetry apps forward). Reading prefers the tag
header and falls back to baggage; invalid values are treated as absent (`lane.core.tags.parse_lane`
logs and counts them). Writing always sets both, the baggage member first so size-limited
intermediaries keep it, every other baggage member untouched (`lane.core.baggage`).
"""

from __future__ import annotations

from typing import Final

from multidict import CIMultiDict, CIMultiDictProxy

from lane.core.baggage import BAGGAGE_HEADER, get_member, remove_member, set_members
from lane.core.hops import FALLBACK_HEADER, PATH_HEADER, SERVED_HEADER
from lane.core.tags import TagSpec, carried_lane

__all__ = [
    "INTERNAL_HEADERS",
    "MAX_MERGED_BAGGAGE",
    "REQUEST_MEMBER",
    "Headers",
    "has_lane_tag",
    "lane_and_carrier",
    "request_key",
    "request_lane",
    "set_lane",
    "strip_lane",
]

Headers = CIMultiDict[str] | CIMultiDictProxy[str]

# Headers only lane proxies may set on a request: the routing proxy tells the next sidecar why
# the request fell back (`x-lane-fallback`). Outside clients never get to send them.
INTERNAL_HEADERS: Final = (FALLBACK_HEADER, SERVED_HEADER, PATH_HEADER)
# The longest merged ``baggage`` value set_lane writes: under the 8 KiB header-field limit of lane's
# own listeners (and aiohttp's, nginx's default), with room for the lane member.
MAX_MERGED_BAGGAGE: Final = 8000
# The baggage member that carries the id of the request a sidecar's app serves (`set_lane`).
REQUEST_MEMBER: Final = "lane-request-id"
MAX_REQUEST_KEY: Final = 128


def request_lane(headers: Headers, tag: TagSpec) -> str | None:
    """The lane a request carries (tag header first, then baggage), or None."""
    return lane_and_carrier(headers, tag)[0]


def lane_and_carrier(headers: Headers, tag: TagSpec) -> tuple[str | None, str | None]:
    """The lane a request carries and where it was found (``"header"`` or ``"baggage"``), or (None, None)."""
    value = headers.get(tag.header)
    bags = headers.getall(BAGGAGE_HEADER) if BAGGAGE_HEADER in headers else ()
    return carried_lane(() if value is None else (value,), bags, tag.baggage_key)


def has_lane_tag(headers: Headers, tag: TagSpec) -> bool:
    """Whether the request carries any lane tag at all, valid or not."""
    if tag.header in headers:
        return True
    if BAGGAGE_HEADER in headers:
        return get_member(headers.getall(BAGGAGE_HEADER), tag.baggage_key) is not None
    return False


def strip_lane(headers: CIMultiDict[str], tag: TagSpec) -> None:
    """Remove the tag header, lane's baggage members (other members survive) and internal headers."""
    headers.popall(tag.header, None)
    for name in INTERNAL_HEADERS:
        headers.popall(name, None)
    if BAGGAGE_HEADER in headers:
        for value in headers.popall(BAGGAGE_HEADER):  # each header kept apart: merging could outgrow a limit
            rest: str | None = value
            for key in (tag.baggage_key, REQUEST_MEMBER):
                if rest is not None and get_member((rest,), key) is not None:
                    rest = remove_member((rest,), key)
            if rest is not None:
                headers.add(BAGGAGE_HEADER, rest)


def set_lane(headers: CIMultiDict[str], tag: TagSpec, lane: str, request_key: str | None = None) -> None:
    """Put *lane* in the tag header and as the first baggage member (then *request_key*, when given).

    *request_key* (`REQUEST_MEMBER`) is the id of the request a sidecar's app is serving, so calls of
    an app that forwards only ``baggage`` still find their request's hop record.

    Several ``baggage`` headers are merged into one when the result fits in one header field of the
    next hop (`MAX_MERGED_BAGGAGE`); otherwise only lane's members are rewritten: they travel in a
    ``baggage`` header of their own, first, and the others leave as they came (less any old lane
    member), so baggage that was within every limit when it arrived stays within them.
    """
    headers[tag.header] = lane
    ours = [(tag.baggage_key, lane)] if request_key is None else [(tag.baggage_key, lane), (REQUEST_MEMBER, request_key)]
    sent = headers.popall(BAGGAGE_HEADER, [])
    if len(sent) <= 1 or sum(len(v) + 1 for v in sent) <= MAX_MERGED_BAGGAGE:
        headers[BAGGAGE_HEADER] = set_members(sent, ours)
        return
    headers.add(BAGGAGE_HEADER, set_members((), ours))
    for value in sent:
        rest: str | None = value
        for key, _ in ours:
            if rest is not None and get_member((rest,), key) is not None:
                rest = remove_member((rest,), key)
        if rest is not None:
            headers.add(BAGGAGE_HEADER, rest)


def request_key(headers: Headers) -> str | None:
    """The `REQUEST_MEMBER` a request carries in its baggage, or None."""
    if BAGGAGE_HEADER not in headers:
        return None
    value = get_member(headers.getall(BAGGAGE_HEADER), REQUEST_MEMBER)
    if value is None or not value or len(value) > MAX_REQUEST_KEY or not value.isprintable():
        return None
    return value
