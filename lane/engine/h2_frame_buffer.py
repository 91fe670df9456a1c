"""`LeanFrameBuffer`: ``h2``'s frame buffer building the frames of a unary gRPC call itself.

h2 parses every received frame through hyperframe's generic path (header, flags, padding, priority, the
frame classes' constructors): a dozen Python calls a frame, and a unary call through a lane proxy is
ten frames (issue 17). The whole DATA, HEADERS and RST_STREAM frames such a call is made of are built
here, with h2's checks in h2's order; everything else is h2's. `lane.engine.h2_lean.LeanH2Connection`
reads its input through it; ``tests/engine/test_h2_lean.py`` compares the frames and errors with h2's
however the bytes are cut.
"""

from __future__ import annotations

from typing import Any, Final

from h2.exceptions import FrameTooLargeError
from h2.frame_buffer import FrameBuffer
from hyperframe.flags import Flags
from hyperframe.frame import DataFrame, Frame, HeadersFrame, RstStreamFrame

__all__ = ["LeanFrameBuffer"]

_DATA: Final = 0x0
_HEADERS: Final = 0x1
_RST_STREAM: Final = 0x3
_END_STREAM: Final = 0x1
_END_HEADERS: Final = 0x4
_DATA_FLAGS: Final = frozenset(flag.name for flag in DataFrame.defined_flags)
_HEADERS_FLAGS: Final = frozenset(flag.name for flag in HeadersFrame.defined_flags)
_NO_FLAGS: Final[frozenset[str]] = frozenset()  # RST_STREAM's
_SIMPLE: Final[dict[tuple[int, int], tuple[type[Frame], frozenset[str], tuple[str, ...]]]] = {
    # (type, flag bits) of a frame built by LeanFrameBuffer -> its class, the flags it may carry, its flags
    (_DATA, 0): (DataFrame, _DATA_FLAGS, ()), (_DATA, _END_STREAM): (DataFrame, _DATA_FLAGS, ("END_STREAM",)),
    (_HEADERS, _END_HEADERS): (HeadersFrame, _HEADERS_FLAGS, ("END_HEADERS",)),
    (_HEADERS, _END_HEADERS | _END_STREAM): (HeadersFrame, _HEADERS_FLAGS, ("END_HEADERS", "END_STREAM")),
}


class LeanFrameBuffer(FrameBuffer):
    """``h2.frame_buffer.FrameBuffer`` that builds the frames of a unary call itself.

    h2 parses every frame through hyperframe's generic path (header, flags, padding, priority), a dozen
    Python calls a frame. A whole DATA frame without padding, or a whole HEADERS frame without padding
    or priority that holds the entire head, on a stream, is built here at once, with the same checks in
    the same order (complete, not over the largest frame size); everything else, and anything while a
    head continues in CONTINUATION frames, is h2's.

    The frames are not built through hyperframe's constructors either (five classes' ``__init__``, a set
    comprehension and a validated ``add`` per flag, about six Python calls a frame): the frame and its
    ``Flags`` get the attributes those constructors set, with the same values; the set of flags a kind
    of frame may carry is one frozenset shared by its frames (``Flags`` only reads it)."""

    def __next__(self) -> Frame:
        data = self._data
        if len(data) < 9 or self._headers_buffer:
            return super().__next__()
        kind, bits = data[3], data[4]
        if kind == _RST_STREAM:
            return self._reset(data)
        if kind == _DATA and not bits & 0x08:  # not PADDED
            bits &= _END_STREAM
        elif kind == _HEADERS and bits & 0x2C == _END_HEADERS:  # the whole head, no PADDED, no PRIORITY
            bits &= _END_STREAM | _END_HEADERS
        else:
            return super().__next__()
        length = int.from_bytes(data[:3], "big")
        stream_id = int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
        if not stream_id or len(data) < 9 + length:  # h2 refuses the first, waits for the rest of the second
            return super().__next__()
        if length > self.max_frame_size:  # h2's _validate_frame_length, inline
            raise FrameTooLargeError(f"Received overlong frame: length {length}, max {self.max_frame_size}")
        make, valid, names = _SIMPLE[kind, bits]
        flags: Any = object.__new__(Flags)  # Flags.__init__ and add, without the calls
        flags._valid_flags = valid
        flags._flags = set(names)
        frame: Any = object.__new__(make)  # Frame, Padding (and Priority) and the class's own __init__
        frame.stream_id = stream_id
        frame.flags = flags
        frame.body_len = length
        frame.pad_length = 0
        if kind == _HEADERS:
            frame.depends_on = 0
            frame.stream_weight = 0
            frame.exclusive = False
        frame.data = bytes(data[9:9 + length])
        del data[:9 + length]
        return frame  # type: ignore[no-any-return]

    def _reset(self, data: bytearray) -> Frame:
        """A whole RST_STREAM frame on a stream, built here (the upstream's after every answer, issue 17): a
        four-byte error code, no flags (RST_STREAM defines none, so h2 keeps none of the bits set). A frame on
        stream 0, of another length or not all here yet is h2's, for its errors or to wait for the rest."""
        length = int.from_bytes(data[:3], "big")
        stream_id = int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
        if length != 4 or not stream_id or len(data) < 13:
            return super().__next__()
        if length > self.max_frame_size:  # h2's _validate_frame_length (a four-byte frame only if set below 4)
            raise FrameTooLargeError(f"Received overlong frame: length {length}, max {self.max_frame_size}")
        flags: Any = object.__new__(Flags)
        flags._valid_flags = _NO_FLAGS
        flags._flags = set()
        frame: Any = object.__new__(RstStreamFrame)  # Frame's and RstStreamFrame's __init__ and parse_body
        frame.stream_id = stream_id
        frame.flags = flags
        frame.body_len = 4
        frame.error_code = int.from_bytes(data[9:13], "big")
        del data[:13]
        return frame  # type: ignore[no-any-return]
