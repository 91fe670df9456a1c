"""`LeanH2Connection`: ``h2``'s connection without the per-frame work lane never uses.

``h2.connection.H2Connection._receive_frame`` formats every received frame for its trace log
(``repr(frame)``: the frame, its flags and a hex dump of its payload), and does it before calling
the logger, so also when the logger is h2's no-op default, as it is in lane: at gRPC rates that was
3-4 % of the gateway's time (issue 17), for a line nobody reads. `LeanH2Connection._receive_frame` is
h2's own method (h2 4.x: the same dispatch and the same handling of frames on closed streams) without
that line; everything else is ``H2Connection`` unchanged.
"""

from __future__ import annotations

from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import Event
from h2.exceptions import StreamClosedError, StreamIDTooLowError
from hyperframe.frame import Frame, RstStreamFrame

__all__ = ["LeanH2Connection"]


class LeanH2Connection(H2Connection):
    """``H2Connection`` whose frame intake does not format each frame for a trace log nobody reads."""

    def _receive_frame(self, frame: Frame) -> list[Event]:
        """Handle one received frame (``H2Connection._receive_frame`` without its ``repr(frame)``)."""
        events: list[Event]
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except StreamClosedError as e:
            # A frame on a stream we reset is a stream error (RST_STREAM again); otherwise a connection error.
            if not self._stream_is_closed_by_reset(e.stream_id):
                raise
            rst = RstStreamFrame(e.stream_id)
            rst.error_code = e.error_code
            self._prepare_for_sending([rst])
            events = e._events
        except StreamIDTooLowError as e:
            # A stream already cleaned up, or closed implicitly by a newer one: how it closed decides the error.
            if self._stream_is_closed_by_reset(e.stream_id):
                rst = RstStreamFrame(e.stream_id)
                rst.error_code = ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([rst])
                events = []
            elif self._stream_is_closed_by_end(e.stream_id):
                raise StreamClosedError(e.stream_id) from e
            else:
                raise
        else:
            self._prepare_for_sending(frames)
        return events
