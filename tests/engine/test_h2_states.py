"""The lean state machines take every input in every state as ``h2``'s own: same events, same state, same error.

Each case puts an ``h2`` machine and a lean one in the same state (for streams, with every combination of
the flags the transition functions read) and gives both the same input; what they return, what they
raise and everything they hold afterwards must be equal.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from h2.config import H2Configuration
from h2.connection import ConnectionInputs, ConnectionState, H2ConnectionStateMachine
from h2.stream import H2StreamStateMachine, StreamClosedBy, StreamInputs, StreamState

from lane.engine.h2_lean import LeanH2Connection
from lane.engine.h2_states import STREAM_STAYS, LeanConnectionStateMachine, LeanStreamStateMachine

_DRAINING = {**H2ConnectionStateMachine._transitions,
             (ConnectionState.SERVER_OPEN, ConnectionInputs.RECV_GOAWAY): (None, ConnectionState.SERVER_OPEN)}


def _outcome(machine: Any, input_: Any) -> tuple[Any, ...]:
    try:
        events = machine.process_input(input_)
    except Exception as e:  # noqa: BLE001 - the error is what is compared
        return ("raised", type(e), str(e), dict(vars(machine)))
    return ("returned", [(type(e), vars(e)) for e in events], dict(vars(machine)))


def _connection_outcome(machine: Any, input_: Any) -> tuple[Any, ...]:
    outcome = _outcome(machine, input_)
    return (*outcome[:-1], machine.state)  # the lean machine also holds its keyed table


@pytest.mark.parametrize("draining", [False, True])
def test_every_connection_input_in_every_state_is_taken_as_h2_takes_it(draining: bool) -> None:
    for state, input_ in itertools.product(ConnectionState, [*ConnectionInputs, "SEND_DATA", 3]):
        theirs, ours = H2ConnectionStateMachine(), LeanConnectionStateMachine()
        if draining:
            theirs._transitions = _DRAINING
            ours.follow(_DRAINING)
        theirs.state = ours.state = state
        assert _connection_outcome(ours, input_) == _connection_outcome(theirs, input_), (state, input_)


_FLAGS = (None, False, True)


@pytest.mark.parametrize("state", list(StreamState))
def test_every_stream_input_in_every_state_is_taken_as_h2_takes_it(state: StreamState) -> None:
    names = ("client", "headers_sent", "trailers_sent", "headers_received", "trailers_received")
    for flags in itertools.product(_FLAGS, repeat=len(names)):
        for closed_by in (None, StreamClosedBy.SEND_END_STREAM, StreamClosedBy.RECV_RST_STREAM):
            for input_ in [*StreamInputs, "RECV_DATA"]:
                theirs, ours = H2StreamStateMachine(7), LeanStreamStateMachine(7)
                for machine in (theirs, ours):
                    machine.state = state
                    machine.stream_closed_by = closed_by
                    for name, value in zip(names, flags, strict=True):
                        setattr(machine, name, value)
                assert _outcome(ours, input_) == _outcome(theirs, input_), (state, flags, closed_by, input_)


def test_a_lean_connection_and_its_streams_run_the_lean_machines() -> None:
    conn = LeanH2Connection(H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    conn.send_headers(1, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")],
                      end_stream=True)
    assert type(conn.state_machine) is LeanConnectionStateMachine
    assert conn.state_machine.state is ConnectionState.CLIENT_OPEN
    machine = conn.streams[1].state_machine
    assert type(machine) is LeanStreamStateMachine
    assert (machine.state, machine.stream_id, machine.client) == (StreamState.HALF_CLOSED_LOCAL, 1, True)


def _unchanged(machine: Any, input_: Any) -> bool:
    """Whether ``h2``'s *machine* takes *input_* without an event and without changing anything it holds."""
    before = dict(vars(machine))
    try:
        events = machine.process_input(input_)
    except Exception:  # noqa: BLE001 - a refusal is a change
        return False
    return events == [] and vars(machine) == before


@pytest.mark.parametrize("draining", [False, True])
def test_connection_inputs_skipped_as_changing_nothing_change_nothing_in_h2(draining: bool) -> None:
    """The lean connection does not give an input its machine ``stays`` in: h2's machine, given it, must
    return no event and keep its state -- for h2's table and for the draining one lane follows."""
    ours = LeanConnectionStateMachine()
    if draining:
        ours.follow(_DRAINING)
    skipped = 0
    for state, input_ in itertools.product(ConnectionState, ConnectionInputs):
        theirs = H2ConnectionStateMachine()
        if draining:
            theirs._transitions = _DRAINING
        theirs.state = state
        if (state._value_, input_._value_) in ours.stays:
            assert _unchanged(theirs, input_), (state, input_)
            skipped += 1
    assert skipped >= 8
    for state in (ConnectionState.CLIENT_OPEN, ConnectionState.SERVER_OPEN):  # a call's inputs, once open
        for input_ in (ConnectionInputs.SEND_HEADERS, ConnectionInputs.SEND_DATA, ConnectionInputs.RECV_HEADERS,
                       ConnectionInputs.RECV_DATA, ConnectionInputs.RECV_RST_STREAM):
            assert (state._value_, input_._value_) in ours.stays
    assert ((ConnectionState.SERVER_OPEN._value_, ConnectionInputs.RECV_GOAWAY._value_) in ours.stays) is draining
    assert (ConnectionState.CLOSED._value_, ConnectionInputs.RECV_RST_STREAM._value_) not in ours.stays


@pytest.mark.parametrize("state", list(StreamState))
def test_stream_inputs_skipped_as_changing_nothing_change_nothing_in_h2(state: StreamState) -> None:
    names = ("client", "headers_sent", "trailers_sent", "headers_received", "trailers_received")
    for flags in itertools.product(_FLAGS, repeat=len(names)):
        for input_ in StreamInputs:
            if (state, input_._value_) not in STREAM_STAYS:
                continue
            theirs = H2StreamStateMachine(7)
            theirs.state = state
            for name, value in zip(names, flags, strict=True):
                setattr(theirs, name, value)
            assert _unchanged(theirs, input_), (state, flags, input_)
    if state in (StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE):
        assert (state, StreamInputs.SEND_DATA._value_) in STREAM_STAYS
    if state is StreamState.CLOSED:
        assert (state, StreamInputs.RECV_RST_STREAM._value_) in STREAM_STAYS
