"""`lane.engine.h2_checks.malformed` rejects exactly the received heads h2's own inbound validation rejects.

lane turns h2's check off for speed and runs its own (`lane.engine.h2_peer`), so the two are compared here
head by head, h2's ``validate_headers`` as the reference, over generated heads: every kind of field h2
looks at (names with uppercase, control or non-ASCII bytes, colons, empty; values with NUL, CR, LF or
surrounding blanks; te, connection-specific fields, Host) and every pseudo-header arrangement (missing,
twice, after a field, unknown, request-only in an answer, CONNECT with and without :protocol), as a
request, an answer and trailers. What a malformed head does on the wire is tested in test_h2_wire.py.
"""

from __future__ import annotations

import random

import pytest
from h2.exceptions import ProtocolError
from h2.utilities import HeaderValidationFlags, validate_headers

from lane.engine.h2_checks import Kind, malformed

KINDS: tuple[Kind, ...] = ("request", "response", "trailers")
PSEUDO = [(b":method", b"GET"), (b":method", b"CONNECT"), (b":method", b"POST"), (b":scheme", b"http"),
          (b":authority", b"a.test"), (b":authority", b"b.test"), (b":path", b"/x"), (b":path", b""),
          (b":status", b"200"), (b":status", b"101"), (b":protocol", b"websocket"), (b":bogus", b"1"),
          (b":", b"1"), (b":Path", b"/"), (b":path", b" /x")]
NAMES = [b"x-a", b"content-type", b"host", b"te", b"connection", b"upgrade", b"keep-alive", b"cookie", b"X-Up",
         b"x y", b"x:y", b"", b"x\x00", b"x\x7f", b"\xc3\xa9", b"grpc-status", b"a" * 50]
VALUES = [b"", b"v", b"a.test", b"b.test", b"trailers", b"Trailers", b"gzip", b" v", b"v ", b"\tv", b"v\t",
          b"a\r\nb", b"a\nb", b"a\x00b", b"caf\xc3\xa9", b"\x7f", b"in side"]


def reference(block: list[tuple[bytes, bytes]], kind: Kind) -> bool:
    """Whether h2's inbound validation takes *block* as *kind*."""
    flags = HeaderValidationFlags(is_client=kind != "request", is_trailer=kind == "trailers",
                                  is_response_header=kind == "response", is_push_promise=False)
    try:
        list(validate_headers(block, flags))
    except ProtocolError:
        return False
    return True


def generated(rnd: random.Random) -> list[tuple[bytes, bytes]]:
    block = [rnd.choice(PSEUDO) for _ in range(rnd.choice([0, 1, 2, 3, 3, 4, 4, 5]))]
    if rnd.random() < 0.5:  # mostly well-formed pseudo-headers, so the field checks get reached
        block = rnd.choice([[(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a.test"), (b":path", b"/")],
                            [(b":status", b"200")], []])
    for _ in range(rnd.randrange(4)):
        field = (rnd.choice(NAMES), rnd.choice(VALUES)) if rnd.random() < 0.6 else (b"x-ok", b"fine")
        block.insert(rnd.randrange(len(block) + 1) if rnd.random() < 0.2 else len(block), field)
    return block


@pytest.mark.parametrize("seed", range(4))
def test_generated_heads_are_judged_as_h2_judges_them(seed: int) -> None:
    rnd = random.Random(seed)
    verdicts = {True: 0, False: 0}
    for _ in range(5000):
        block, kind = generated(rnd), rnd.choice(KINDS)
        expected = reference(block, kind)
        assert (malformed(block, kind) is None) == expected, (kind, block, malformed(block, kind))
        verdicts[expected] += 1
    assert min(verdicts.values()) > 300, verdicts  # both verdicts well represented


@pytest.mark.parametrize(("block", "kind"), [
    ([(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/s/M"),
      (b"te", b"trailers"), (b"content-type", b"application/grpc"), (b"user-agent", b"grpc-python/1.85.3")],
     "request"),
    ([(b":method", b"CONNECT"), (b":authority", b"a:443")], "request"),
    ([(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"http"), (b":path", b"/"),
      (b"host", b"a")], "request"),
    ([(b":status", b"200"), (b"content-type", b"application/grpc")], "response"),
    ([(b"grpc-status", b"0"), (b"grpc-message", b"")], "trailers"),
])
def test_heads_grpc_sends_are_well_formed_every_time(block: list[tuple[bytes, bytes]], kind: Kind) -> None:
    for _ in range(2):  # the second time from the remembered fields
        assert reference(block, kind) and malformed(block, kind) is None


def test_a_remembered_pseudo_header_is_still_judged_by_where_it_stands() -> None:
    request = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/p.S/M"), (b":authority", b"a")]
    assert malformed(request, "request") is None  # every field now remembered as well-formed
    assert malformed([(b"te", b"trailers"), *request], "request") == "pseudo-header b':method' after a field"
    assert malformed([*request, (b":path", b"/p.S/M")], "request") == "pseudo-header b':path' twice"
    assert malformed(request, "response") == "no :status"
    assert malformed([(b":status", b"200"), *request[2:]], "response") == "request pseudo-header in an answer"
    assert malformed([(b":path", b"/p\x00")] + request[:2], "request") == "malformed value of b':path'"
