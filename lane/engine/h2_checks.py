"""Whether a received HTTP/2 head is malformed (RFC 9113 §8.2, §8.3): ``h2``'s inbound checks, done faster.

``h2`` validates every received head through a chain of eight generators that look at each name byte
by byte in Python: at gRPC rates a tenth of the gateway's time. `malformed` rejects exactly the heads
``h2.utilities.validate_headers`` rejects (the tests compare the two over generated heads), with two
regular expressions per field, and remembers fields that passed (a bounded set): a client sends the
same user agent, content type, path and authority on every call. Where a field may stand is checked
every time. `lane.engine.h2_peer` turns ``h2``'s own check off
(``validate_inbound_headers=False``) and calls this for every head ``h2`` hands over; a malformed one
ends the connection with GOAWAY ``PROTOCOL_ERROR``, as ``h2`` did.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final, Literal

__all__ = ["Kind", "malformed"]

Kind = Literal["request", "response", "trailers"]

_NAME_OK: Final = re.compile(rb":?[^\x00-\x20A-Z:\x7f-\xff]+\Z")  # §8.2.1; a colon only first (pseudo-header)
_VALUE_BAD: Final = re.compile(rb"[\x00\n\r]|\A[ \t]|[ \t]\Z")  # §8.2.1
_CONNECTION: Final = frozenset({b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"})
_PSEUDO: Final = frozenset({b":method", b":scheme", b":authority", b":path", b":status", b":protocol"})
_REQUEST_ONLY: Final = frozenset({b":method", b":scheme", b":authority", b":path", b":protocol"})
_PASSED: Final[set[tuple[bytes, bytes]]] = set()  # fields (pseudo-headers too) already found well-formed
_REMEMBERED: Final = 4096
_NOT_REMEMBERED: Final = frozenset({b"authorization", b"proxy-authorization", b"cookie"})  # no credentials kept


def _field(name: bytes, value: bytes) -> str | None:
    """What is wrong with one field on its own, if anything."""
    if not _NAME_OK.match(name):
        return f"malformed field name {name[:40]!r}"
    if value and _VALUE_BAD.search(value):
        return f"malformed value of {name[:40]!r}"
    if name in _CONNECTION:
        return f"connection-specific field {name!r}"
    if name == b"te" and value.lower() != b"trailers":
        return "te other than trailers"
    return None


def _remember(name: bytes, value: bytes) -> None:
    if len(_PASSED) >= _REMEMBERED:
        _PASSED.clear()
    _PASSED.add((name, value))


def malformed(block: Iterable[tuple[bytes, bytes]], kind: Kind) -> str | None:
    """Why *block*, a received head of *kind*, is malformed; None when it is well-formed."""
    pseudo: dict[bytes, bytes] = {}
    regular = False
    hosts: list[bytes] = []
    for field in block:
        name, value = field[0], field[1]
        if name[:1] == b":":
            if regular:
                return f"pseudo-header {name!r} after a field"
            if name in pseudo:
                return f"pseudo-header {name!r} twice"
            if name not in _PSEUDO:
                return f"unknown pseudo-header {name[:40]!r}"
            pseudo[name] = value
            if (name, value) in _PASSED:
                continue
            why = _field(name, value)
            if why is not None:
                return why
            _remember(name, value)
            continue
        regular = True
        if name == b"host":
            hosts.append(value)
        if (name, value) in _PASSED:
            continue
        why = _field(name, value)
        if why is not None:
            return why
        if name not in _NOT_REMEMBERED:
            _remember(name, value)
    if kind == "trailers":
        return "pseudo-header in trailers" if pseudo else None
    if kind == "response":
        if b":status" not in pseudo:
            return "no :status"
        return "request pseudo-header in an answer" if pseudo.keys() & _REQUEST_ONLY else None
    return _request(pseudo, hosts)


def _request(pseudo: dict[bytes, bytes], hosts: list[bytes]) -> str | None:
    """What is wrong with a request head's pseudo-headers and Host (RFC 9113 §8.3.1, RFC 8441 §4)."""
    method = pseudo.get(b":method")
    if method is None:
        return "no :method"
    connect = method == b"CONNECT"
    if connect and b":protocol" not in pseudo:  # ordinary CONNECT
        if b":scheme" in pseudo or b":path" in pseudo:
            return "CONNECT with :scheme or :path"
    elif b":scheme" not in pseudo or b":path" not in pseudo:
        return "no :scheme or :path"
    if b":status" in pseudo:
        return ":status in a request"
    if b":protocol" in pseudo and not connect:
        return ":protocol without CONNECT"
    if len(hosts) > 1:
        return "Host twice"
    authority = pseudo.get(b":authority")
    if authority is None and not hosts:
        return "neither :authority nor Host"
    if authority is not None and hosts and hosts[0] != authority:
        return ":authority and Host differ"
    if pseudo.get(b":path") == b"":
        return "empty :path"
    return None
