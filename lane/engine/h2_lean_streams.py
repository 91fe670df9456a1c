"""`LeanStreams`: ``h2``'s bookkeeping of a connection's streams without its per-stream helper calls.

Per unary gRPC call a lane proxy opens two streams (the client's, the upstream's) and ``h2`` checks a
stream limit for each: it reads ``MAX_CONCURRENT_STREAMS`` through a property, ``Mapping.get`` and
``Settings.__getitem__`` (three Python calls a read), and counts the open streams by asking every
stream it holds for its ``open``, ``closed`` and ``closed_by`` properties, recording each closed one
in a ``SizeLimitDict`` (two calls a stream) as it forgets it: about fifteen Python calls a call of the
~360 a gateway worker runs (issue 17). `LeanStreams` does the same steps with the values read where
the properties read them. A new stream and the window one may send on are ``h2``'s too, read inline.
A new stream is built as ``H2Stream``'s constructors build it, without their three calls.
`lane.engine.h2_lean.LeanH2Connection` builds on it; ``tests/engine/test_h2_lean_streams.py``
compares the counts, the streams forgotten and the windows with ``H2Connection``'s.
"""

from __future__ import annotations

import collections
from typing import Any, Final

from h2.config import H2Configuration
from h2.connection import AllowedStreamIDs, H2Connection
from h2.exceptions import ProtocolError, StreamIDTooLowError
from h2.settings import SettingCodes, Settings
from h2.stream import STREAM_OPEN, H2Stream, StreamState
from h2.utilities import SizeLimitDict
from h2.windows import LARGEST_FLOW_CONTROL_WINDOW, WindowManager

from lane.engine.h2_states import LeanStreamStateMachine

__all__ = ["COUNT_BELOW", "MAX_STREAMS", "UNLIMITED", "LeanStreams", "max_streams"]

_INITIAL_WINDOW: Final = SettingCodes.INITIAL_WINDOW_SIZE
MAX_STREAMS: Final = SettingCodes.MAX_CONCURRENT_STREAMS
UNLIMITED: Final = 2**32 + 1  # h2's value of MAX_CONCURRENT_STREAMS while no peer set it
COUNT_BELOW: Final = 64  # streams h2 may hold before the open ones are counted (and the closed ones forgotten)
_CLOSED: Final = StreamState.CLOSED
_IDLE: Final = StreamState.IDLE
_remember: Final = collections.OrderedDict.__setitem__  # what SizeLimitDict.__setitem__ calls first (in C)


def max_streams(settings: Settings) -> int:
    """``settings.max_concurrent_streams``: its current value, h2's default while it has none (not yet
    set, or only proposed and not acknowledged), read from the table the property reads."""
    entry = settings._settings.get(MAX_STREAMS)
    value = entry[0] if entry is not None else None
    return UNLIMITED if value is None else value


class LeanStreams(H2Connection):
    """``H2Connection`` whose streams are opened, counted and forgotten without helper calls per stream.

    The configuration is read once, here: lane never changes a connection's configuration afterwards."""

    def __init__(self, config: H2Configuration) -> None:
        super().__init__(config)
        self._outbound_ids = AllowedStreamIDs(config.client_side)  # an enum lookup, once rather than per head
        self._inbound_ids = AllowedStreamIDs(not config.client_side)

    def _begin_new_stream(self, stream_id: int, allowed_ids: AllowedStreamIDs) -> H2Stream:
        """Open a stream: ``H2Connection._begin_new_stream``'s checks, windows and bookkeeping in its order,
        with the two initial window sizes read from the settings' current values (their property and
        ``__getitem__`` are two Python calls each) and the stream's direction from the configuration read
        once. The stream is built without ``H2Stream``'s, ``H2StreamStateMachine``'s and ``WindowManager``'s
        constructors (three Python calls a stream, two streams a call at a proxy): the attributes they set,
        with the values they set, in their order, its machine a `LeanStreamStateMachine`
        (``tests/engine/test_h2_lean_streams.py`` compares them with h2's)."""
        outbound = stream_id % 2 == self._outbound_ids  # h2's _stream_id_is_outbound
        highest = self.highest_outbound_stream_id if outbound else self.highest_inbound_stream_id
        if stream_id <= highest:
            raise StreamIDTooLowError(stream_id, highest)
        if stream_id % 2 != int(allowed_ids):
            raise ProtocolError("Invalid stream ID for peer.")
        inbound_window = self.local_settings._settings[_INITIAL_WINDOW][0]
        outbound_window = self.remote_settings._settings[_INITIAL_WINDOW][0]
        # H2Stream(stream_id, config, inbound_window, outbound_window) without its three constructors' calls
        machine: Any = object.__new__(LeanStreamStateMachine)  # H2StreamStateMachine.__init__
        machine.state = _IDLE
        machine.stream_id = stream_id
        machine.client = None
        machine.headers_sent = None
        machine.trailers_sent = None
        machine.headers_received = None
        machine.trailers_received = None
        machine.stream_closed_by = None
        stream = object.__new__(H2Stream)  # H2Stream.__init__
        stream.state_machine = machine
        stream.stream_id = stream_id
        stream.max_outbound_frame_size = None
        stream.request_method = None
        stream.outbound_flow_control_window = outbound_window
        assert inbound_window <= LARGEST_FLOW_CONTROL_WINDOW  # WindowManager.__init__'s own check
        window: Any = object.__new__(WindowManager)  # WindowManager.__init__
        window.max_window_size = inbound_window
        window.current_window_size = inbound_window
        window._bytes_processed = 0
        stream._inbound_window_manager = window
        stream._expected_content_length = None
        stream._actual_content_length = 0
        stream._authority = None
        stream.config = self.config
        stream.max_outbound_frame_size = self.max_outbound_frame_size
        self.streams[stream_id] = stream
        if outbound:
            self.highest_outbound_stream_id = stream_id
        else:
            self.highest_inbound_stream_id = stream_id
        return stream

    def _open_streams(self, remainder: int) -> int:
        """``H2Connection._open_streams``: the open streams whose ID % 2 is *remainder*, forgetting the closed
        ones (recorded with how they closed, the oldest records dropped past the limit) -- each stream's state
        read from its machine as its ``open``/``closed``/``closed_by`` properties read it, the record written
        as ``SizeLimitDict.__setitem__`` writes it."""
        count = 0
        closed: list[int] = []
        for stream_id, stream in self.streams.items():
            state = stream.state_machine.state
            if STREAM_OPEN[state] and stream_id % 2 == remainder:
                count += 1
            elif state == _CLOSED:
                closed.append(stream_id)
        if closed:
            record: SizeLimitDict = self._closed_streams  # type: ignore[assignment]  # what h2 builds (no cast call)
            limit = record._size_limit
            for stream_id in closed:
                # SizeLimitDict.__setitem__'s two steps, without its two Python calls
                _remember(record, stream_id, self.streams.pop(stream_id).state_machine.stream_closed_by)
                if limit is not None:
                    while len(record) > limit:
                        record.popitem(last=False)
        return count

    def may_open_outbound(self) -> bool:
        """Whether one more stream of this end stays within the peer's ``MAX_CONCURRENT_STREAMS``.

        ``open_outbound_streams`` walks every stream h2 still holds (and forgets the closed ones); while h2
        holds fewer streams than the limit (or than `COUNT_BELOW`, so the closed ones are still forgotten
        in time) the open ones cannot be at the limit, and nothing is walked."""
        limit = max_streams(self.remote_settings)
        if len(self.streams) < min(limit, COUNT_BELOW):
            return True
        return self._open_streams(self._outbound_ids) < limit

    def local_flow_control_window(self, stream_id: int) -> int:
        """``H2Connection.local_flow_control_window`` for a stream h2 holds, without the lookup helper."""
        stream = self.streams.get(stream_id)
        if stream is None:  # h2's errors for a stream it does not hold
            return super().local_flow_control_window(stream_id)
        return min(self.outbound_flow_control_window, stream.outbound_flow_control_window)
