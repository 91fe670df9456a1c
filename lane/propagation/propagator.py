"""`LanePropagator`: the lane as an OpenTelemetry propagator, plus the context helpers.

The lane lives in the OpenTelemetry context as the baggage entry named by the tag spec's
``baggage_key`` (``x-mse-tag``), so anything that already carries baggage carries the lane. On the
wire it travels twice: as the tag header (what gateways, sidecars and Istio route on) and as the
first member of the ``baggage`` header (what survives services that forward only ``baggage``).

Precedence on extract: a valid **tag header wins** over the baggage entry. The gateway and the
sidecars set the header authoritatively on every hop, while baggage is often forwarded blindly and
can be stale (a service that copies its inbound ``baggage`` onto a call made for another request).
When a middle service dropped the header, only baggage is present and it is used. Invalid values
are treated as absent (logged and counted by `lane.core.tags.parse_lane`), so an invalid header falls
through to a valid baggage entry, and an invalid lane never lives in a context this module returns.

Registered as the ``lane`` entry point of ``opentelemetry_propagator`` (`propagator_from_env`), so
``OTEL_PROPAGATORS=tracecontext,baggage,lane`` works with no code change; ``LANE_TAG_HEADER`` and
``LANE_BAGGAGE_KEY`` name another tag header or baggage key. Run after ``baggage`` it also repairs
what the stock baggage propagator loses (oversized or split headers, ``+``); run before it, the stock
one would overwrite the lane's answer, which is why `lane_last` exists and lane's instrumentor and
server middleware always run the lane propagator last, whatever order ``OTEL_PROPAGATORS`` lists.

Importing this module loads no config, YAML or regex engine: ``import lane`` stays light.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import baggage as otel_baggage
from opentelemetry.context import Context, attach, detach, get_current
from opentelemetry.propagators import textmap
from opentelemetry.propagators.composite import CompositePropagator

from lane.core.baggage import BAGGAGE_HEADER, TOKEN, get_member, remove_member, set_member
from lane.core.tags import DEFAULT_BAGGAGE_KEY, DEFAULT_TAG_HEADER, carried_lane, is_valid_lane

if TYPE_CHECKING:  # the config module loads YAML and RE2; the library surface must not
    from lane.core.tags import TagSpec

__all__ = [
    "BAGGAGE_KEY_ENV",
    "TAG_HEADER_ENV",
    "LanePropagator",
    "carrier_values",
    "current_lane",
    "global_lane_propagator",
    "lane_last",
    "other_global_propagators",
    "propagator_from_env",
    "use_lane",
    "with_lane",
    "without_lane",
]

log = logging.getLogger(__name__)

TAG_HEADER_ENV: Final = "LANE_TAG_HEADER"
BAGGAGE_KEY_ENV: Final = "LANE_BAGGAGE_KEY"



def current_lane(context: Context | None = None, *, key: str = DEFAULT_BAGGAGE_KEY) -> str | None:
    """The lane of *context* (default: the current one), or None when it carries no valid lane."""
    value = otel_baggage.get_baggage(key, context)
    return value if isinstance(value, str) and is_valid_lane(value) else None


def with_lane(lane: str, context: Context | None = None, *, key: str = DEFAULT_BAGGAGE_KEY) -> Context:
    """A copy of *context* in *lane*; a value that is not a lane is a programming error (ValueError)."""
    if not isinstance(lane, str) or not is_valid_lane(lane):
        raise ValueError(f"not a lane (lanes are DNS labels such as 'gray'): {lane!r}")
    return otel_baggage.set_baggage(key, lane, context)


def without_lane(context: Context | None = None, *, key: str = DEFAULT_BAGGAGE_KEY) -> Context:
    """A copy of *context* that carries no lane (calls made in it go to the default lane)."""
    return otel_baggage.remove_baggage(key, context)


@contextmanager
def use_lane(lane: str | None, *, key: str = DEFAULT_BAGGAGE_KEY) -> Iterator[Context]:
    """Run the block in *lane* (None: in no lane); the previous context is restored on exit."""
    ctx = with_lane(lane, key=key) if lane is not None else without_lane(key=key)
    token = attach(ctx)
    try:
        yield ctx
    finally:
        detach(token)


def carrier_values(carrier: Any, name: str, getter: textmap.Getter[Any] = textmap.default_getter) -> list[str]:
    """Every value of header *name* in *carrier*, whatever the case of its key.

    The stock getter returns only the first value of a multidict (``CIMultiDict.get``) and is case
    sensitive on plain dicts; both would hide a lane, so multidicts are read with ``getall`` and
    other carriers are also searched for differently cased keys.
    """
    getall = getattr(carrier, "getall", None)
    if getter is textmap.default_getter and callable(getall):
        return [v for v in getall(name, ()) if isinstance(v, str)]
    found = getter.get(carrier, name)
    values = list(found) if found else []
    if not values:
        for key in getter.keys(carrier):
            if isinstance(key, str) and key != name and key.lower() == name:
                values.extend(getter.get(carrier, key) or ())
    return [v for v in values if isinstance(v, str)]


class LanePropagator(textmap.TextMapPropagator):
    """Extracts the lane from the tag header or baggage; injects it as both.

    *default_lane*, when given, is put into the context on extract when the carrier names no
    valid lane, so every downstream call carries an explicit tag; by default an untagged request
    stays untagged (the data plane routes it to the default lane anyway).
    """

    def __init__(
        self,
        header: str = DEFAULT_TAG_HEADER,
        baggage_key: str = DEFAULT_BAGGAGE_KEY,
        default_lane: str | None = None,
    ) -> None:
        if not isinstance(header, str) or not TOKEN.fullmatch(header):
            raise ValueError(f"not an HTTP header name (RFC 9110 token): {header!r}")
        if not isinstance(baggage_key, str) or not TOKEN.fullmatch(baggage_key):
            raise ValueError(f"not a W3C baggage key (a token): {baggage_key!r}")
        if default_lane is not None and not is_valid_lane(default_lane):
            raise ValueError(f"default_lane is not a lane: {default_lane!r}")
        self.header = header.lower()
        self.baggage_key = baggage_key
        self.default_lane = default_lane

    @classmethod
    def from_tag_spec(cls, tag: TagSpec, *, fill_default: bool = False) -> LanePropagator:
        """The propagator for a config's tag spec; *fill_default* tags untagged requests explicitly."""
        return cls(tag.header, tag.baggage_key, tag.default_lane if fill_default else None)

    def __repr__(self) -> str:
        return f"LanePropagator(header={self.header!r}, baggage_key={self.baggage_key!r}, default_lane={self.default_lane!r})"

    @property
    def fields(self) -> set[str]:
        return {self.header, BAGGAGE_HEADER}

    def current_lane(self, context: Context | None = None) -> str | None:
        return current_lane(context, key=self.baggage_key)

    def with_lane(self, lane: str, context: Context | None = None) -> Context:
        return with_lane(lane, context, key=self.baggage_key)

    def lane_of(self, carrier: Any, getter: textmap.Getter[Any] = textmap.default_getter) -> str | None:
        """The valid lane *carrier* names (tag header first, then baggage), or None. Never raises."""
        try:
            lane = carried_lane(carrier_values(carrier, self.header, getter),
                                carrier_values(carrier, BAGGAGE_HEADER, getter), self.baggage_key)[0]
        except Exception:  # a hostile or broken carrier must never fail the request
            log.exception("could not read the lane from a %s carrier", type(carrier).__name__)
            return None
        return lane

    def extract(
        self,
        carrier: Any,
        context: Context | None = None,
        getter: textmap.Getter[Any] = textmap.default_getter,
    ) -> Context:
        ctx = get_current() if context is None else context
        lane = self.lane_of(carrier, getter) or self.default_lane
        if lane is not None:
            return otel_baggage.set_baggage(self.baggage_key, lane, ctx)
        if otel_baggage.get_baggage(self.baggage_key, ctx) is not None and self.current_lane(ctx) is None:
            # An earlier propagator (the stock baggage one) stored an invalid value: drop it.
            return otel_baggage.remove_baggage(self.baggage_key, ctx)
        return ctx

    def inject(
        self,
        carrier: Any,
        context: Context | None = None,
        setter: textmap.Setter[Any] = textmap.default_setter,
    ) -> None:
        lane = self.current_lane(context)
        try:
            existing = _readable_baggage(carrier)
            if lane is None:
                if existing and get_member(existing, self.baggage_key) is not None:
                    _set(carrier, setter, BAGGAGE_HEADER, remove_member(existing, self.baggage_key))
                return
            _set(carrier, setter, self.header, lane)
            _set(carrier, setter, BAGGAGE_HEADER, set_member(existing or (), self.baggage_key, lane))
        except Exception:  # a broken carrier or setter must never fail the outgoing call
            log.exception("could not write the lane into a %s carrier", type(carrier).__name__)


def _readable_baggage(carrier: Any) -> list[str] | None:
    """The ``baggage`` values already in *carrier* (e.g. from the stock propagator), if readable."""
    getall = getattr(carrier, "getall", None)
    if callable(getall):
        return [v for v in getall(BAGGAGE_HEADER, ()) if isinstance(v, str)]
    if isinstance(carrier, Mapping):
        out: list[str] = []
        for key, value in carrier.items():
            if isinstance(key, str) and key.lower() == BAGGAGE_HEADER:
                if isinstance(value, str):
                    out.append(value)
                elif isinstance(value, (list, tuple)):
                    out.extend(v for v in value if isinstance(v, str))
        return out
    return None


def _set(carrier: Any, setter: textmap.Setter[Any], name: str, value: str | None) -> None:
    """Set (or, for None, remove) header *name*; differently cased duplicates in dicts are dropped."""
    if setter is textmap.default_setter and isinstance(carrier, MutableMapping):
        for key in [k for k in carrier if isinstance(k, str) and k != name and k.lower() == name]:
            del carrier[key]
        if value is None:
            if name in carrier:
                del carrier[name]
            return
    setter.set(carrier, name, value if value is not None else "")


def propagator_from_env(environ: Mapping[str, str] | None = None) -> LanePropagator:
    """The ``lane`` entry point: a `LanePropagator` named by ``LANE_TAG_HEADER`` / ``LANE_BAGGAGE_KEY``.

    Unset or empty variables mean the defaults (``x-mse-tag`` for both; like ``tag:`` in the config,
    the baggage key does not follow the header). An invalid value is one logged error and the
    default, never an exception: OpenTelemetry loads this at import time, and a raise there would
    stop the app on a typo in a variable that only names a header.
    """
    env = os.environ if environ is None else environ
    header = _env_name(env, TAG_HEADER_ENV, DEFAULT_TAG_HEADER, "an HTTP header name (an RFC 9110 token)")
    key = _env_name(env, BAGGAGE_KEY_ENV, DEFAULT_BAGGAGE_KEY, "a W3C baggage key (a token)")
    return LanePropagator(header, key)


def _env_name(env: Mapping[str, str], variable: str, default: str, what: str) -> str:
    value = env.get(variable, "").strip()
    if not value:
        return default
    if TOKEN.fullmatch(value):
        return value
    log.error("%s=%r is not %s; using the default %r", variable, value[:64], what, default)
    return default


def lane_last(propagator: textmap.TextMapPropagator) -> textmap.TextMapPropagator:
    """*propagator* with its lane propagators moved to the end (the same object when already so).

    A composite calls its members in order on both extract and inject, and the stock baggage
    propagator overwrites whatever ran before it: listed after ``lane`` it would put a stale
    ``baggage`` lane over a valid tag header on extract, and rewrite the ``baggage`` header without
    the lane-first order on inject. Lane last gives the same answer for every ``OTEL_PROPAGATORS``
    order. Other members keep their relative order.
    """
    members = getattr(propagator, "_propagators", None)  # CompositePropagator's members, in order
    if not isinstance(propagator, CompositePropagator) or not isinstance(members, list):
        return propagator
    lanes = [p for p in members if isinstance(p, LanePropagator)]
    others = [p for p in members if not isinstance(p, LanePropagator)]
    if not lanes or members == others + lanes:
        return propagator
    return CompositePropagator(others + lanes)


def global_lane_propagator() -> LanePropagator | None:
    """The lane propagator among the global ones (``OTEL_PROPAGATORS=...,lane``), the last if several."""
    # Imported here: importing opentelemetry.propagate loads the OTEL_PROPAGATORS entry points, this
    # module's among them, so a module-level import would load this module while half-initialized.
    from opentelemetry import propagate

    configured = propagate.get_global_textmap()
    members = getattr(configured, "_propagators", None)  # CompositePropagator's members, in order
    candidates = list(members) if isinstance(members, list) else [configured]
    lanes = [p for p in candidates if isinstance(p, LanePropagator)]
    return lanes[-1] if lanes else None


def other_global_propagators(lanes: LanePropagator) -> list[textmap.TextMapPropagator]:
    """The global propagators minus lane propagators for *lanes*' baggage key, in their order.

    What a server hook runs before the lane's own extraction (and a client hook before its own
    injection): ``OTEL_PROPAGATORS=...,lane`` adds one, and running it there as well would log and
    count every bad tag twice, or let a stock baggage propagator listed after it overrule it.
    """
    from opentelemetry import propagate  # see global_lane_propagator

    configured = propagate.get_global_textmap()
    chain = getattr(configured, "_propagators", None)  # CompositePropagator's members, in order
    members: list[textmap.TextMapPropagator] = list(chain) if isinstance(chain, list) else [configured]
    return [p for p in members if not (isinstance(p, LanePropagator) and p.baggage_key == lanes.baggage_key)]
