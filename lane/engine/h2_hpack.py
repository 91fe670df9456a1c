"""The HPACK encoder of lane's HTTP/2 connections: the static table and plain literals, never the dynamic table.

``hpack.Encoder`` (what ``h2`` uses by default) Huffman-codes every literal and searches its dynamic table
linearly for every field it sends, in pure Python: at gRPC rates that was the largest single cost of the
gateway's HTTP/2 path (issue 17). `PlainEncoder` emits what RFC 7541 also allows and every decoder must
take: a field that is in the static table whole is its index (§6.1); any other is a literal *without
indexing* (§6.2.2), named by its static index when there is one, with its name and value as plain
(not Huffman-coded) strings (§5.2); credentials (``hpack.NeverIndexedHeaderTuple``, which
`lane.engine.h2_headers` marks) are literals *never indexed* (§6.2.3). Nothing is ever added to the
dynamic table, so a field's encoding does not depend on what was sent before: the encodings of recent
fields are kept in a bounded dictionary and a repeated field costs one lookup.

The price is bytes on the wire: a repeated field is sent as its literal each time instead of one index,
and a literal is up to about a fifth longer than its Huffman code. On a loopback or pod-local hop, and
for the small heads of gRPC calls, that is cheaper than the CPU it saves.

Changes of the peer's ``SETTINGS_HEADER_TABLE_SIZE`` are still signalled at the start of the next block
(§4.2, §6.3), by the base class's bookkeeping (``header_table_size``), which ``h2`` drives.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from hpack import (
    Decoder,
    Encoder,
    HeaderTuple,
    HPACKDecodingError,
    InvalidTableSizeError,
    NeverIndexedHeaderTuple,
    OversizedHeaderListError,
)
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

__all__ = ["CachingDecoder", "PlainEncoder", "integer"]

_CACHED: Final = 1024  # field encodings kept; a full cache is emptied (fields with ever-new values, ids)
_BLOCKS: Final = 256  # whole blocks kept by the decoder, each of at most _BLOCK_BYTES
_BLOCK_BYTES: Final = 1024
_STATIC: Final = len(HeaderTable.STATIC_TABLE)


def integer(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """*value* as an HPACK integer with a *prefix_bits* prefix (RFC 7541 §5.1), *first* or-ed into its first byte."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(data: bytes) -> bytes:
    """*data* as a plain string literal (§5.2, H bit 0)."""
    return integer(len(data), 7) + data


def _static() -> tuple[dict[tuple[bytes, bytes], bytes], dict[bytes, int]]:
    """The static table (RFC 7541 Appendix A, as hpack has it) as: a whole entry -> its representation, a name ->
    its first index."""
    indexed: dict[tuple[bytes, bytes], bytes] = {}
    named: dict[bytes, int] = {}
    for index, (name, value) in enumerate(HeaderTable.STATIC_TABLE, start=1):
        named.setdefault(name, index)
        indexed.setdefault((name, value), integer(index, 7, 0x80))
    return indexed, named


_INDEXED, _NAMED = _static()


def _literal(name: bytes, value: bytes, never: bool) -> bytes:
    """A literal field without indexing (0x00) or never indexed (0x10), its name by static index when it has one."""
    kind = 0x10 if never else 0x00
    index = _NAMED.get(name)
    head = integer(index, 4, kind) if index is not None else bytes((kind,)) + _string(name)
    return head + _string(value)


class PlainEncoder(Encoder):
    """An ``hpack.Encoder`` that uses only the static table and plain literals (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._fields: dict[tuple[bytes, bytes], bytes] = {}

    def encode(self, headers: Iterable[tuple[bytes, bytes]], huffman: bool = True) -> bytes:  # type: ignore[override]
        """The block of *headers* (``(name, value)`` bytes, pseudo-headers first, as ``h2`` hands them over)."""
        parts: list[bytes] = []
        if self.table_size_changes:  # the peer changed SETTINGS_HEADER_TABLE_SIZE: say so first (§4.2)
            parts.extend(integer(size, 5, 0x20) for size in self.table_size_changes)
            self.table_size_changes = []
            self.header_table.resized = False
        cache = self._fields
        for field in headers:
            if isinstance(field, HeaderTuple) and not field.indexable:  # a credential: never kept, never indexed
                parts.append(_literal(field[0], field[1], True))
                continue
            encoded = cache.get(field)
            if encoded is None:
                name, value = field[0], field[1]
                encoded = _INDEXED.get((name, value)) or _literal(name, value, False)
                if len(cache) >= _CACHED:
                    cache.clear()
                cache[(name, value)] = encoded
            parts.append(encoded)
        return b"".join(parts)


def _read_integer(data: bytes, at: int, prefix_bits: int) -> tuple[int, int]:
    """The HPACK integer at *at* (§5.1) and the offset after it."""
    limit = (1 << prefix_bits) - 1
    try:
        value = data[at] & limit
        at += 1
        if value == limit:
            shift = 0
            while True:
                byte = data[at]
                at += 1
                value += (byte & 0x7F) << shift
                if byte < 0x80:
                    break
                shift += 7
    except IndexError:
        raise HPACKDecodingError("Unable to decode HPACK integer representation") from None
    return value, at


class CachingDecoder(Decoder):
    """An ``hpack.Decoder`` that decodes each distinct Huffman-coded string once (while cached).

    Peers that do not index what they send (nginx answers every gRPC call with the same few
    Huffman-coded literals) made ``hpack.Decoder`` Huffman-decode, bit by bit in Python, the same
    strings on every call, and copy the rest of the block for every literal. `decode` is
    ``hpack.Decoder.decode`` for ``raw=True`` (what ``h2`` asks for) with the same table, limits and
    errors, reading the block in place and keeping the last 1024 decoded strings. A block that
    neither reads nor changes the dynamic table (static indexes and literals only, the ones "with
    indexing" only while the table's size is 0: all of nginx's, which sets it to 0) decodes to the
    same fields whatever came before, so the last 256 such blocks are kept whole: the same answer
    head or trailers again cost one lookup. A block that reads the dynamic table without changing it
    (a client that indexed its fields, as grpcio and nghttp2 do, sends the same few index bytes on
    every call) is kept too, with the table's `generation`, and reused only while the table has not
    changed since (no field added, no size change).
    """

    def __init__(self) -> None:
        super().__init__()
        self._plain: dict[bytes, bytes] = {}
        # a block -> its fields, their size, whether it holds literals "with indexing" (kept only for a 0-size table)
        self._blocks: dict[bytes, tuple[tuple[HeaderTuple, ...], int, bool]] = {}
        # a block that reads the dynamic table -> the table's generation then, its fields, their size
        self._reads: dict[bytes, tuple[int, tuple[HeaderTuple, ...], int]] = {}
        self.generation = 0  # bumped whenever the dynamic table may have changed

    @property
    def header_table_size(self) -> int:
        return int(self.header_table.maxsize)

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self.generation += 1  # a smaller table evicts entries
        self.header_table.maxsize = value

    def _string(self, data: bytes, at: int) -> tuple[bytes, int]:
        """The string literal at *at* (§5.2) and the offset after it."""
        huffman = data[at] & 0x80 if at < len(data) else 0
        length, at = _read_integer(data, at, 7)
        end = at + length
        if end > len(data):
            raise HPACKDecodingError("Truncated header block")
        text = data[at:end]
        if huffman:
            plain = self._plain.get(text)
            if plain is None:
                plain = decode_huffman(text)
                if len(self._plain) >= _CACHED:
                    self._plain.clear()
                self._plain[text] = plain
            text = plain
        return text, end

    def decode(self, data: bytes, raw: bool = False) -> list[HeaderTuple]:
        if not raw:
            return list(super().decode(data, raw))
        data = bytes(data)
        table = self.header_table
        kept = self._blocks.get(data)
        maxsize = table._maxsize  # HeaderTable.maxsize, without its property call
        if kept is not None and (not kept[2] or maxsize == 0):
            fields, size, _ = kept
            if size > self.max_header_list_size or maxsize > self.max_allowed_table_size:
                self._check(size)  # it raises: the check itself is inline
            return list(fields)
        read = self._reads.get(data)
        if read is not None and read[0] == self.generation:
            if read[2] > self.max_header_list_size or maxsize > self.max_allowed_table_size:
                self._check(read[2])
            return list(read[1])
        headers: list[HeaderTuple] = []
        inflated = 0
        alone = True  # the block neither reads nor changes the dynamic table
        changes = False  # it changes the dynamic table
        indexes = False  # it has literals "with indexing" (which change nothing while the table's size is 0)
        at, end = 0, len(data)
        while at < end:
            first = data[at]
            header: HeaderTuple
            if first & 0x80:  # indexed (§6.1)
                index, at = _read_integer(data, at, 7)
                header = HeaderTuple(*table.get_by_index(index))
                alone = alone and index <= _STATIC
            elif first & 0x40 or not first & 0x20:  # a literal (§6.2): incremental indexing, without, never
                indexing = bool(first & 0x40)
                index, at = _read_integer(data, at, 6 if indexing else 4)
                if index:
                    name = table.get_by_index(index)[0]
                else:
                    name, at = self._string(data, at)
                value, at = self._string(data, at)
                header = NeverIndexedHeaderTuple(name, value) if first & 0xF0 == 0x10 else HeaderTuple(name, value)
                if indexing:
                    table.add(name, value)
                    self.generation += 1
                    changes = True
                indexes = indexes or indexing
                alone = alone and index <= _STATIC and (not indexing or table._maxsize == 0)
            else:  # a dynamic table size update (§6.3): only before the first field
                if headers:
                    raise HPACKDecodingError("Table size update not at the start of the block")
                size, at = _read_integer(data, at, 5)
                if size > self.max_allowed_table_size:
                    raise InvalidTableSizeError("Encoder exceeded max allowable table size")
                self.header_table_size = size
                alone = False
                changes = True
                continue
            headers.append(header)
            inflated += 32 + len(header[0]) + len(header[1])
            if inflated > self.max_header_list_size:
                raise OversizedHeaderListError(
                    f"A header list larger than {self.max_header_list_size} has been received")
        self._check(0)
        if end <= _BLOCK_BYTES:
            if alone:
                if len(self._blocks) >= _BLOCKS:
                    self._blocks.clear()
                self._blocks[data] = (tuple(headers), inflated, indexes)
            elif not changes:
                if len(self._reads) >= _BLOCKS:
                    self._reads.clear()
                self._reads[data] = (self.generation, tuple(headers), inflated)
        return headers

    def _check(self, size: int) -> None:
        """The limits at the end of a block, *size* its fields' (a kept block's: checked again, limits change)."""
        if size > self.max_header_list_size:
            raise OversizedHeaderListError(f"A header list larger than {self.max_header_list_size} has been received")
        if self.header_table._maxsize > self.max_allowed_table_size:  # header_table_size, without property calls
            raise InvalidTableSizeError("Encoder did not shrink table size to within the max")
