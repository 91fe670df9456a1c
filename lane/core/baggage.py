"""W3C ``baggage`` header values, handled where OpenTelemetry's stock propagator gives up.

The lane rides in baggage so it survives services that forward only ``baggage`` and drop the tag
header. OpenTelemetry's `W3CBaggagePropagator` is a poor carrier for it: above 8192 bytes it
drops *all* baggage (the lane with it), it reads only the first ``baggage`` header, and it
decodes ``+`` as a space. These pure functions work on raw header values instead:

* every ``baggage`` header value is read, in order, as one list (RFC 9110 §5.3 field combining);
* values are percent-decoded only (``+`` stays ``+``), and encoded with every reserved byte
  escaped, ``+`` included, so stock and robust readers agree on what was written;
* members we do not own are kept byte for byte, in order, properties and all;
* a rewritten header puts our member *first*, so an intermediary that truncates long baggage
  keeps the lane.

Nothing here raises on what arrives from the network. Input is read up to `MAX_BAGGAGE_CHARS`
characters and `MAX_MEMBERS` members, so an oversized header costs bounded work; the lane is
still found when it sits within the bound, and members past it are dropped (and logged, by size
only) from a rewritten header.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Container, Iterable, Iterator
from functools import lru_cache
from typing import Final
from urllib.parse import quote, unquote

__all__ = [
    "BAGGAGE_HEADER",
    "MAX_BAGGAGE_CHARS",
    "MAX_MEMBERS",
    "TOKEN",
    "decode_value",
    "encode_value",
    "get_member",
    "members",
    "remove_member",
    "set_member",
    "set_members",
]

BAGGAGE_HEADER: Final = "baggage"
MAX_BAGGAGE_CHARS: Final = 64 * 1024
MAX_MEMBERS: Final = 1024

_OWS: Final = " \t"
# An RFC 9110 token: a header name, a baggage key. The one pattern lane checks both with.
TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_UNRESERVED: Final = re.compile(r"[A-Za-z0-9._~-]*")  # what `quote(value, safe="")` leaves as it is

log = logging.getLogger(__name__)


def members(headers: Iterable[str]) -> Iterator[str]:
    """The list members of all *headers* in order, without surrounding whitespace or empty entries.

    Reading stops at `MAX_BAGGAGE_CHARS` characters or `MAX_MEMBERS` members; a member cut by the
    character bound is dropped rather than returned half (a cut ``lane=gray-canary`` must not read
    as ``gray``).
    """
    budget = MAX_BAGGAGE_CHARS
    count = 0
    for value in headers:
        if not isinstance(value, str):
            continue
        if budget <= 0:
            log.warning("baggage is longer than %d characters; ignoring the rest", MAX_BAGGAGE_CHARS)
            return
        cut = len(value) > budget
        chunk = value[:budget]
        budget -= len(chunk)
        start = 0
        while start <= len(chunk):
            end = chunk.find(",", start)
            last = end < 0
            if last:
                if cut:
                    break
                end = len(chunk)
            member = chunk[start:end].strip(_OWS)
            start = end + 1
            if not member:
                continue
            if count >= MAX_MEMBERS:
                log.warning("baggage has more than %d members; ignoring the rest", MAX_MEMBERS)
                return
            count += 1
            yield member
        if cut:
            log.warning("baggage is longer than %d characters; ignoring the rest", MAX_BAGGAGE_CHARS)
            return


_SHORT: Final = 2 * MAX_MEMBERS  # a value shorter than this cannot hold more than MAX_MEMBERS members


def _member_list(headers: Iterable[str]) -> Iterable[str]:
    """`members`; one short header value (what nearly every request carries) split at C speed, as a list.

    The same members in the same order: below `_SHORT` characters neither bound of `members` can be
    reached. Anything else is `members` itself, read lazily (a reader that stops early logs no bound).
    """
    if not headers:
        return ()
    if isinstance(headers, (list, tuple)) and len(headers) == 1:
        value = headers[0]
        if isinstance(value, str) and len(value) < _SHORT:
            return [member for part in value.split(",") if (member := part.strip(_OWS))]
    return members(headers)


def decode_value(raw: str) -> str:
    """Percent-decode a baggage value; ``+`` is a literal plus, bad escapes are kept as they are."""
    return unquote(raw, errors="replace")


def encode_value(value: str) -> str:
    """Percent-encode *value* so only unreserved characters stay literal (``+`` becomes ``%2B``).

    A value with nothing to encode (a lane name, a UUID ``x-request-id``) is returned as it is
    without going through `quote`: one such value is encoded per request.
    """
    if _UNRESERVED.fullmatch(value):
        return value
    return quote(value, safe="", errors="replace")


@lru_cache(maxsize=64)
def _encode_key(key: str) -> str:
    """*key* as a baggage key; cached: the keys written are the config's few (the lane's, `REQUEST_MEMBER`)."""
    return key if TOKEN.fullmatch(key) else quote(key, safe="", errors="replace")


def _member_key(member: str) -> str | None:
    key, eq, _ = member.partition("=")
    return key.strip(_OWS) if eq else None


def _names(member: str, keys: Container[str]) -> bool:
    """Whether *member* is named by one of *keys* (a key sent percent-encoded counts by its decoded name)."""
    raw = _member_key(member)
    if raw is None:
        return False
    return raw in keys or ("%" in raw and decode_value(raw) in keys)


def get_member(headers: Iterable[str], key: str) -> str | None:
    """The decoded value of the first member named *key* across *headers*, or None.

    Properties (after ``;``) are ignored; an empty value is returned as ``""``.
    """
    keys = (key,)
    for member in _member_list(headers):
        if _names(member, keys):
            return decode_value(member.partition("=")[2].partition(";")[0].strip(_OWS))
    return None


def remove_member(headers: Iterable[str], key: str) -> str | None:
    """One header value with every member named *key* removed, or None when nothing is left."""
    kept = [m for m in _member_list(headers) if not _names(m, (key,))]
    return ",".join(kept) if kept else None


_CACHED_VALUE: Final = 24  # longer values (request ids, unique per request) are not worth caching


@lru_cache(maxsize=256)
def _encoded_member(key: str, value: str) -> str:
    """``key=value`` percent-encoded; cached because a proxy writes the same few lanes all day."""
    return f"{_encode_key(key)}={encode_value(value)}"


def set_member(headers: Iterable[str], key: str, value: str) -> str:
    """One header value with ``key=<value>`` as its first member and every other member kept."""
    first = _encoded_member(key, value)
    rest = [m for m in _member_list(headers) if not _names(m, (key,))]
    return ",".join([first, *rest]) if rest else first


def set_members(headers: Iterable[str], pairs: Iterable[tuple[str, str]]) -> str:
    """One header value with ``key=<value>`` for each of *pairs* first, in order, and every other member kept.

    Runs twice per sidecar hop: members are matched against a set of the keys at once, and a value
    seen once per request (a request id) is encoded without going through the cache meant for the few lanes.
    """
    firsts: list[str] = []
    keys: set[str] = set()
    for key, value in pairs:
        firsts.append(_encoded_member(key, value) if len(value) <= _CACHED_VALUE else
                      f"{_encode_key(key)}={encode_value(value)}")
        keys.add(key)
    firsts.extend([member for member in _member_list(headers) if not _names(member, keys)])
    return ",".join(firsts)
