"""``h2``'s connection and stream state machines, looking up their transitions without Python hashing.

``h2`` keys its transition tables by (state, input) pairs of enum members, and ``enum.Enum`` hashes a
member in Python (``hash(self._name_)``): about 37 Python calls per unary gRPC call at a proxy, a
fourteenth of what a gateway worker runs per call (issue 17). These subclasses look up the same
tables re-keyed by the members' plain values (ints, hashed in C) and otherwise keep ``h2``'s steps:
the type check, the error and the CLOSED state on a refused input, the transition functions
(``h2``'s own) and what they raise. `LeanH2Connection` installs them; ``tests/engine/test_h2_states.py``
compares every (state, input) pair with ``h2``'s machines.
"""

from __future__ import annotations

from typing import Any, Final

from h2.connection import ConnectionInputs, ConnectionState, H2ConnectionStateMachine
from h2.events import Event
from h2.exceptions import ProtocolError
from h2.stream import H2StreamStateMachine, StreamInputs, StreamState, _transitions

__all__ = ["STREAM_STAYS", "LeanConnectionStateMachine", "LeanStreamStateMachine"]



def _by_value(transitions: dict[tuple[Any, Any], Any]) -> dict[tuple[Any, Any], Any]:
    return {(state._value_, input_._value_): step for (state, input_), step in transitions.items()}


def _staying(table: dict[tuple[Any, Any], Any]) -> frozenset[tuple[Any, Any]]:
    """The keys of *table* whose input changes nothing: no transition function, the same state after it
    (``process_input`` only sets the state it had and returns no event). The lean connection skips the
    call for them (`lane.engine.h2_lean`): most of a call's inputs, in an open connection."""
    return frozenset(key for key, (step, target) in table.items()
                     if step is None and getattr(target, "_value_", target) == getattr(key[0], "_value_", key[0]))


_CONNECTION: Final = _by_value(H2ConnectionStateMachine._transitions)
_CONNECTION_STAYS: Final = _staying(_CONNECTION)
# tables given to `LeanConnectionStateMachine.follow`, by id (each held here, so no id is reused): the table,
# keyed by values, and its stays
_FOLLOWED: Final[dict[int, tuple[Any, dict[tuple[Any, Any], Any], frozenset[tuple[Any, Any]]]]] = {}
# StreamState is an IntEnum (hashed as its int, in C): only the input needs its plain value.
_STREAM: Final[dict[tuple[Any, Any], Any]] = {
    (state, input_._value_): step for (state, input_), step in _transitions.items()}
STREAM_STAYS: Final = _staying(_STREAM)  # (state, input value) pairs a stream takes without a change


class LeanConnectionStateMachine(H2ConnectionStateMachine):
    """``H2ConnectionStateMachine`` whose transitions are found by the enum members' values.

    A connection that needs other transitions than h2's (`lane.engine.h2_peer`'s draining GOAWAY) hands
    them to `follow`: the ``_transitions`` h2 reads and the table looked up here stay the same."""

    def __init__(self) -> None:
        super().__init__()
        self._by_value = _CONNECTION
        self.stays = _CONNECTION_STAYS  # (state value, input value) pairs taken without a change

    def follow(self, transitions: dict[tuple[Any, Any], Any]) -> None:
        """From now on, take inputs as ``transitions`` says (h2's shape: (state, input) -> (step, state)); the
        table must not change afterwards (its keyed copy is shared by every connection that follows it)."""
        self._transitions = transitions
        known = _FOLLOWED.get(id(transitions))
        if known is None:  # keyed anew once per table (never changed once followed), not per connection
            by_value = _by_value(transitions)
            known = _FOLLOWED[id(transitions)] = (transitions, by_value, _staying(by_value))
        self._by_value, self.stays = known[1], known[2]

    def process_input(self, input_: ConnectionInputs) -> list[Event]:
        """Take one input: ``H2ConnectionStateMachine.process_input`` with a C-hashed key."""
        if not isinstance(input_, ConnectionInputs):
            msg = "Input must be an instance of ConnectionInputs"
            raise ValueError(msg)  # noqa: TRY004 - h2's own error for the same mistake
        try:
            func, target_state = self._by_value[(self.state._value_, input_._value_)]
        except KeyError as e:
            old_state = self.state
            self.state = ConnectionState.CLOSED
            msg = f"Invalid input {input_} in state {old_state}"
            raise ProtocolError(msg) from e
        self.state = target_state
        if func is not None:  # pragma: no cover - h2 4.x has none on connection transitions
            return func()  # type: ignore[no-any-return]
        return []


class LeanStreamStateMachine(H2StreamStateMachine):
    """``H2StreamStateMachine`` whose transitions are found by the input's value.

    `LeanH2Connection` gives each new stream's machine this class while it is still IDLE with nothing
    else set (``h2`` builds it in ``H2Stream.__init__``): the same object, the same attributes, no second
    machine built per stream."""

    def process_input(self, input_: StreamInputs) -> list[Event]:
        """Take one input: ``H2StreamStateMachine.process_input`` with a C-hashed key."""
        if not isinstance(input_, StreamInputs):
            msg = "Input must be an instance of StreamInputs"
            raise ValueError(msg)  # noqa: TRY004 - h2's own error for the same mistake
        try:
            func, target_state = _STREAM[(self.state, input_._value_)]
        except KeyError as err:
            old_state = self.state
            self.state = StreamState.CLOSED
            msg = f"Invalid input {input_} in state {old_state}"
            raise ProtocolError(msg) from err
        previous_state = self.state
        self.state = target_state
        if func is not None:
            try:
                return func(self, previous_state)  # type: ignore[no-any-return]
            except ProtocolError:
                self.state = StreamState.CLOSED
                raise
            except AssertionError as err:  # pragma: no cover - h2's guard for its own bugs
                self.state = StreamState.CLOSED
                raise ProtocolError(err) from err
        return []
