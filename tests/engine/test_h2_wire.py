"""What lane's HTTP/2 codec puts on the wire and what it refuses from it, byte for byte, on 127.0.0.1.

Heads leave through `lane.engine.h2_hpack.PlainEncoder` (static table and plain literals, no Huffman
code, no dynamic table) and with ``h2``'s own outbound normalising off (`lane.engine.h2_headers` does
it); what arrives is still validated by ``h2``, on both sides. The peers here are the real ``h2``/``hpack``
state machines on raw sockets, so they can send what grpcio never would (an uppercase name, a CR in a
value); the gRPC round trips through a real grpcio client and server are `tests/engine/test_h2.py`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
from collections.abc import AsyncIterator

import h2.config
import h2.connection
import h2.errors
import h2.events
import hpack
import pytest
from multidict import CIMultiDict

from lane.core.config import ProxySpec
from lane.core.endpoint import Endpoint
from lane.engine import h2_headers
from lane.engine.exchange import Exchange, Handler, Sender
from lane.engine.failures import UpstreamBroken
from lane.engine.h2_headers import request_block, response_block, response_head, trailers_of
from lane.engine.h2_hpack import CachingDecoder, PlainEncoder, integer
from lane.engine.h2_upstream import H2Upstreams
from lane.engine.listen import FastPath
from tests.support.loopback import serving
from tests.support.processes import serve_handler

pytestmark = pytest.mark.timeout(30)

SPEC = ProxySpec(connect_timeout=1.0, request_timeout=5.0)
Block = list[tuple[bytes, bytes]]
GOOD: Block = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x.test"), (b":path", b"/version")]


# --- the encoder against hpack's decoder (the one h2 uses; grpcio's is exercised by test_h2.py) ---

def test_a_block_decodes_to_what_was_encoded_every_time_and_never_fills_the_peers_table() -> None:
    encoder, decoder = PlainEncoder(), hpack.Decoder()
    block = [*response_block(200, CIMultiDict({"content-type": "application/grpc", "x-id": "ü" * 200,
                                               "Authorization": "Bearer secret", "x-empty": ""})),
             (b"x-" + b"n" * 300, b"v")]
    for _ in range(3):  # the second and third come from the encoder's cache: same bytes, same meaning
        wire = encoder.encode(block)
        assert [tuple(field) for field in decoder.decode(wire, raw=True)] == [tuple(field) for field in block]
    assert len(decoder.header_table.dynamic_entries) == 0
    assert b"application/grpc" in wire and b"Bearer secret" in wire, "values are plain literals, not Huffman code"
    assert wire[:1] == b"\x88", ":status 200 is static entry 8, sent as its index"


def test_credentials_are_literals_the_next_hop_must_never_index() -> None:
    decoder = hpack.Decoder()
    for _ in range(2):  # the second head's fields come from what h2_headers remembered: credentials never do
        block = request_block("GET", "a:80", "/", CIMultiDict({"authorization": "Basic eA==", "cookie": "s=1",
                                                               "x-plain": "1", "Connection": "close"}))
        fields = decoder.decode(PlainEncoder().encode(block), raw=True)
        never = {bytes(f[0]) for f in fields if isinstance(f, hpack.NeverIndexedHeaderTuple)}
        assert never == {b"authorization", b"cookie"}
        assert [f[0] for f in fields if not f[0].startswith(b":")] == [b"te", b"authorization", b"cookie", b"x-plain"]


def test_received_fields_become_text_and_leave_as_the_bytes_that_came_every_time() -> None:
    """Values are UTF-8 with surrogate escapes (bytes that are not UTF-8 survive); the second head comes from
    what h2_headers remembered, credentials never do."""
    raw = [(b":status", b"200"), (b"x-utf8", "ü".encode()), (b"x-raw", b"\xff\xfe"), (b"authorization", b"Basic eA=="),
           (b"cookie", b"s=1")]
    for _ in range(2):
        status, fields = response_head(raw)
        assert status == 200 and fields["x-utf8"] == "ü" and fields["Authorization"] == "Basic eA=="
        assert [f[:2] for f in response_block(status, fields)] == raw
        assert trailers_of([(b"grpc-message", b"\xffok")]) == CIMultiDict({"grpc-message": "\udcffok"})
    assert not {name for name, _ in h2_headers._TEXTS} & {b"authorization", b"cookie"}


def test_a_smaller_header_table_of_the_peer_is_signalled_at_the_start_of_the_next_block() -> None:
    encoder, decoder = PlainEncoder(), hpack.Decoder()
    encoder.header_table_size = 256  # as h2 does on the peer's SETTINGS_HEADER_TABLE_SIZE
    wire = encoder.encode(GOOD)
    assert wire.startswith(integer(256, 5, 0x20))
    assert decoder.decode(wire, raw=True) == GOOD and decoder.header_table.maxsize == 256
    assert not encoder.encode(GOOD).startswith(integer(256, 5, 0x20)), "signalled once"


@pytest.mark.parametrize(("value", "bits"), [(0, 7), (126, 7), (127, 7), (128, 7), (1337, 5), (2**20, 4)])
def test_integers_are_rfc7541_integers(value: int, bits: int) -> None:
    assert integer(value, bits) == bytes(hpack.hpack.encode_integer(value, bits))


def _outcome(decoder: hpack.Decoder, block: bytes) -> tuple[object, ...]:
    try:
        fields = [(type(f).__name__, bytes(f[0]), bytes(f[1])) for f in decoder.decode(block, raw=True)]
    except (hpack.HPACKError, IndexError) as exc:
        return ("error", type(exc).__name__)
    return ("ok", fields, list(decoder.header_table.dynamic_entries), decoder.header_table.maxsize)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_caching_decoder_decodes_every_block_as_hpacks_decoder_does(seed: int) -> None:
    """Same fields (and never-indexed marks), same dynamic table, same errors, over sequences of blocks from
    hpack's own encoder (Huffman or not, indexing, table size changes) mixed with blocks that leave the table
    alone (PlainEncoder's, or any while the table's size is 0, as nginx's: kept whole by the decoder, so often
    seen again, also under a lowered header list limit), cut short, with a byte changed, or noise."""
    rnd = random.Random(seed)
    alone = PlainEncoder()
    seen: list[list[tuple[bytes, bytes]]] = []
    names = [b":status", b"content-type", b"date", b"server", b"grpc-status", b"x-" + b"q" * 100, b"cookie", b""]

    def value() -> bytes:
        if rnd.random() < 0.3:
            return rnd.choice([b"200", b"application/grpc", b"nginx", b"0", b""])
        return bytes(rnd.randrange(32, 127) for _ in range(rnd.randrange(0, 200 if rnd.random() < 0.1 else 20)))

    blocks = 0
    for _ in range(100):
        encoder, theirs, ours = hpack.Encoder(), hpack.Decoder(), CachingDecoder()
        theirs.max_header_list_size = ours.max_header_list_size = rnd.choice([64 * 1024, 64 * 1024, 300])
        theirs.max_allowed_table_size = ours.max_allowed_table_size = rnd.choice([4096, 4096, 256])
        if rnd.random() < 0.8:  # mostly an encoder that follows the limit (its first block says so); or, as
            # nginx does, one that sets the table's size to 0 and then indexes fields that never enter it
            encoder.header_table_size = rnd.choice([min(4096, theirs.max_allowed_table_size), 0])
        for blocks_here in range(30):
            if rnd.random() < 0.1:
                encoder.header_table_size = rnd.choice([0, 100, 256, 4096, 8192][:4 if rnd.random() < 0.8 else 5])
            fields: list[tuple[bytes, bytes]] = []
            for _ in range(rnd.randrange(10)):
                name, val = rnd.choice(names), value()
                fields.append(hpack.NeverIndexedHeaderTuple(name, val) if rnd.random() < 0.1 else (name, val))
            if seen and rnd.random() < 0.3:
                fields = rnd.choice(seen)  # a head seen before
            seen.append(fields)
            if blocks_here and rnd.random() < 0.4:  # a block that leaves the table alone
                block = alone.encode(fields)
            else:
                block = encoder.encode(fields, huffman=rnd.random() < 0.7)
            if rnd.random() < 0.05:
                theirs.max_header_list_size = ours.max_header_list_size = rnd.choice([64 * 1024, 300, 100])
            spoil = rnd.random()
            if spoil < 0.04 and block:
                block = block[:rnd.randrange(len(block))]
            elif spoil < 0.08 and block:
                at = rnd.randrange(len(block))
                block = block[:at] + bytes([rnd.randrange(256)]) + block[at + 1:]
            elif spoil < 0.1:
                block = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 30)))
            expected = _outcome(theirs, block)
            assert _outcome(ours, block) == expected, block
            blocks += 1
            if expected[0] == "error":  # the connection would be over
                break
    assert blocks > 400, blocks


# nginx 1.22.1's answer to a gRPC call (bench/nginx_stub.py), as captured: its first head sets the table's
# size to 0, then every head indexes its fields "with indexing" into that empty table; trailers are plain.
NGINX_FIRST = bytes.fromhex(
    "2088 7684aa6355e7 6196df3dbf4a01952f948a08027140b5702fdc682a62d1bf 5f8b1d75d0620d263d4c4d65645c"
    "01356c96df3dbf4a01952f948a08027140b5702fdc680a62d1bf 0089 19085ad2b583aa62a3 84 8fd24a8f")
NGINX_TRAILERS = bytes.fromhex("0088 9acac8b21234da8f 0130")


def test_nginx_heads_decode_as_hpack_decodes_them_also_when_kept_and_after_the_table_grows() -> None:
    theirs, ours = hpack.Decoder(), CachingDecoder()
    blocks = [NGINX_FIRST, NGINX_TRAILERS] + [NGINX_FIRST[1:], NGINX_TRAILERS] * 3  # the later heads: no size update
    blocks += [b"\x3f\xe1\x1f" + NGINX_FIRST[1:]] * 2  # the table grows to 4096: now the fields do enter it
    for block in blocks:
        assert _outcome(ours, block) == _outcome(theirs, block)
    assert ours.header_table.dynamic_entries and list(ours.header_table.dynamic_entries) == list(
        theirs.header_table.dynamic_entries)
    for block in (NGINX_FIRST[1:], NGINX_TRAILERS):  # once the table holds fields, a kept head is not reused
        assert _outcome(ours, block) == _outcome(theirs, block)


def test_an_indexed_head_is_reused_only_while_the_table_it_reads_is_unchanged() -> None:
    """A grpcio or nghttp2 client indexes its request fields and then sends the same few index bytes on every
    call; the same bytes mean other fields once the table changed (an entry added, a smaller size)."""
    encoder, theirs, ours = hpack.Encoder(), hpack.Decoder(), CachingDecoder()
    request = [*GOOD, (b"content-type", b"application/grpc"), (b"user-agent", b"grpc-python/1.85")]
    first = encoder.encode(request)  # literals with indexing: the table fills
    again = encoder.encode(request)  # indexes only
    assert again != first and len(again) < len(first)
    added = encoder.encode([(b"x-new", b"1")])  # one more entry: every dynamic index above moves by one
    resized = integer(40, 5, 0x20)  # a size update to 40 bytes: evicts all but the newest entry
    for block in (first, again, again, added, again, again, resized, again, again):
        assert _outcome(ours, block) == _outcome(theirs, block), block


# --- a client speaking to lane's listener ---

def counting(seen: list[str]) -> FastPath:
    def with_pools(sender: Sender) -> Handler:
        async def handle(exchange: Exchange) -> None:
            seen.append(exchange.path)
            exchange.respond(200, CIMultiDict({"content-type": "application/json", "x-echo": exchange.headers.get(
                "x-echo", "")}), json.dumps({"host": exchange.headers.get("Host")}).encode())
        return handle
    return with_pools


def _raw_client() -> h2.connection.H2Connection:
    """A client that sends any head as given (h2's own outbound checks off)."""
    return h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False))


async def _talk(port: int, block: Block) -> tuple[list[h2.events.Event], bytes]:
    """Send *block* as a request on stream 1; the events until the stream or the connection ended, and the
    raw bytes received."""
    conn = _raw_client()
    conn.initiate_connection()
    conn.send_headers(1, block, end_stream=True)

    def run() -> tuple[list[h2.events.Event], bytes]:
        events: list[h2.events.Event] = []
        raw = b""
        peer_closed = False
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(conn.data_to_send())
            while not any(isinstance(e, h2.events.StreamEnded | h2.events.ConnectionTerminated) for e in events):
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:  # the server closed after its GOAWAY: what came before is read
                    break
                if not chunk:
                    break
                raw += chunk
                events.extend(conn.receive_data(chunk))
                if not peer_closed:
                    try:
                        sock.sendall(conn.data_to_send())  # our SETTINGS ack, ...
                    except (BrokenPipeError, ConnectionResetError):  # the server closed after its GOAWAY,
                        peer_closed = True  # which may still be on its way: keep reading
        return events, raw

    return await asyncio.to_thread(run)


async def test_an_answer_head_is_plain_literals_a_client_decodes() -> None:
    seen: list[str] = []
    async with serve_handler(counting(seen)) as port:
        events, raw = await _talk(port, [*GOOD, (b"x-echo", b"a value sent back")])
    heads = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
    assert heads and dict(heads[0].headers)[b"x-echo"] == b"a value sent back"
    assert b"a value sent back" in raw and b"application/json" in raw, "the head's values travel as plain literals"
    assert json.loads(b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))) == {"host": "x.test"}


MALFORMED = {
    "uppercase name": [*GOOD, (b"X-Upper", b"1")],
    "CR LF in a value": [*GOOD, (b"x-split", b"a\r\nx-injected: 1")],
    "NUL in a value": [*GOOD, (b"x-nul", b"a\x00b")],
    "space around a value": [*GOOD, (b"x-space", b" padded ")],
    "empty name": [*GOOD, (b"", b"v")],
    "colon inside a name": [*GOOD, (b"x:y", b"v")],
    "connection-specific field": [*GOOD, (b"connection", b"close")],
    "te other than trailers": [*GOOD, (b"te", b"gzip")],
    "pseudo-header after a field": [*GOOD[:3], (b"x-a", b"1"), GOOD[3]],
    "pseudo-header twice": [*GOOD, (b":path", b"/other")],
    "unknown pseudo-header": [*GOOD, (b":protocol-x", b"1")],
    "response pseudo-header in a request": [*GOOD, (b":status", b"200")],
    "no :method": GOOD[1:],
    "empty :path": [*GOOD[:3], (b":path", b"")],
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_a_malformed_request_head_ends_the_connection_with_protocol_error_and_reaches_no_handler(
        case: str) -> None:
    seen: list[str] = []
    async with serve_handler(counting(seen)) as port:
        events, _ = await _talk(port, MALFORMED[case])
        ended = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
        assert ended and ended[0].error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR, events
        assert not any(isinstance(e, h2.events.ResponseReceived) for e in events)
        assert seen == []
        events, _ = await _talk(port, GOOD)  # the listener serves on
        assert any(isinstance(e, h2.events.ResponseReceived) for e in events) and seen == ["/version"]


# --- lane's client speaking to an upstream ---

@contextlib.asynccontextmanager
async def answering(head: Block) -> AsyncIterator[Endpoint]:
    """An h2c server answering every request with *head* (ending the stream), sent as given."""

    class Server(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
                client_side=False, header_encoding=None, validate_outbound_headers=False,
                normalize_outbound_headers=False))
            self.conn.initiate_connection()
            transport.write(self.conn.data_to_send())  # type: ignore[attr-defined]

        def data_received(self, data: bytes) -> None:
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    self.conn.send_headers(event.stream_id, head, end_stream=True)
            self.transport.write(self.conn.data_to_send())  # type: ignore[attr-defined]

    async with serving(Server) as at:
        yield at


async def test_a_well_formed_upstream_answer_is_read() -> None:
    async with answering([(b":status", b"204"), (b"x-ok", b"yes")]) as at, H2Upstreams() as client:
        answer = await client.send("GET", at, "/", CIMultiDict({"x-plain": "1"}), None, SPEC)
        assert answer.status == 204 and answer.headers["x-ok"] == "yes"
        answer.close()


@pytest.mark.parametrize("head", [
    [(b":status", b"200"), (b"X-Upper", b"1")],
    [(b":status", b"200"), (b"x-split", b"a\r\nset-cookie: evil=1")],
    [(b"x-no-status", b"1")],
    [(b":status", b"200"), (b":path", b"/")],
], ids=["uppercase name", "CR LF in a value", "no :status", "request pseudo-header"])
async def test_a_malformed_upstream_answer_head_fails_the_call_as_upstream_broken(head: Block) -> None:
    async with answering(head) as at, H2Upstreams() as client:
        with pytest.raises(UpstreamBroken):
            await client.send("GET", at, "/", CIMultiDict(), None, SPEC)


@pytest.mark.parametrize("limit", ["header list", "table size"])
def test_a_block_seen_before_is_refused_once_a_limit_fell_below_it(limit: str) -> None:
    """A kept block (leaving the table alone) and a reused one (reading it) are checked against the limits
    in force when they arrive again, as hpack checks every block it decodes."""
    encoder, theirs, ours = hpack.Encoder(), hpack.Decoder(), CachingDecoder()
    request = [*GOOD, (b"content-type", b"application/grpc"), (b"user-agent", b"grpc-python/1.85")]
    kept, first = PlainEncoder().encode(request), encoder.encode(request)
    again = encoder.encode(request)  # indexes only: reused while the table is unchanged
    for block in (kept, kept, first, again, again):
        assert _outcome(ours, block) == _outcome(theirs, block), block
    for block in (kept, again):
        for decoder in (theirs, ours):
            if limit == "header list":
                decoder.max_header_list_size = 100
            else:
                decoder.max_allowed_table_size = 100  # below the table's 4096, not shrunk by the encoder
        expected = _outcome(theirs, block)
        assert _outcome(ours, block) == expected and expected[0] == "error", block
