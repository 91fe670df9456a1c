"""Ordered coloring rules: which lane a request from outside belongs to.

Semantics (the Lua emitter in mesh_config mirrors them exactly):

* Rules are tried in order; the first rule whose conditions *all* hold wins; no match means the
  default lane.
* Header names are case-insensitive. A header sent several times is matched on its values joined
  with ``","`` (what Envoy's ``headers:get`` returns).
* Cookies come from every ``Cookie`` header, split on ``;``; the first cookie of a name wins.
* Query parameters are form-decoded (percent-decoding, ``+`` is a space); the first of a name wins.
* ``exact`` and ``prefix`` compare strings case-sensitively; ``regex`` must match the *whole*
  value (RE2 ``FullMatch``, like Istio's regex matches); ``present``/``absent`` test existence.
  Regexes run on RE2 itself (`compile_re2`), never on Python's backtracking ``re``: a pattern such
  as ``(a|a)*b`` costs linear time in the value instead of doubling per character, so a client
  cannot freeze the gateway with a crafted User-Agent. RE2 sees the value's bytes as they came off
  the wire (``surrogateescape``), so invalid UTF-8 never matches, as in Envoy. That also fixes
  the RE2 meanings the Lua mirror follows: ``$`` is the end of the value (not before a final
  newline) and ``\\s`` is ``[\\t\\n\\f\\r ]`` (no ``\\v``).
* A percentage with a key hashes the key (see `lane.core.hashing`): the same key always gets the same
  answer. A keyed percentage whose key is missing from the request does not match. A percentage
  with no key is a fresh random draw per request (the plain weighted canary).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl

from lane.core.hashing import in_percentage

__all__ = [
    "Coloring",
    "Condition",
    "HashKey",
    "MatchKind",
    "Percentage",
    "RequestView",
    "Rule",
    "Source",
    "ValueMatch",
    "color",
    "compile_re2",
]


def compile_re2(text: str) -> Any:
    """*text* compiled by RE2 for bytes subjects; `ValueError` with RE2's reason if RE2 rejects it.

    RE2 is imported here, on the first regex, not with the module: the library and its module cost
    ~2.5 MiB of RSS in every gateway and sidecar, and most configs (the demo's included) color on
    exact or prefix matches only, so they never pay it (`tests/core/test_rules_import.py`).
    """
    import re2

    options = re2.Options()
    options.log_errors = False  # the caller reports the error with the config path
    try:
        return re2.compile(text.encode("utf-8"), options)
    except (re2.error, UnicodeEncodeError) as exc:
        reason = exc.args[0] if exc.args else exc
        raise ValueError(reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)) from None


class Source(str, Enum):
    HEADER = "header"
    COOKIE = "cookie"
    QUERY = "query"


MatchKind = Literal["exact", "prefix", "regex", "present", "absent"]


@dataclass(frozen=True, slots=True)
class ValueMatch:
    """How one value is tested. ``value`` is the text for exact/prefix/regex; for regex,
    ``pattern`` is Python's parse (for tools that walk it, e.g. the load test's examples) and
    ``engine`` the RE2 program that actually matches (compiled from ``value`` when not given)."""

    kind: MatchKind
    value: str | None = None
    pattern: re.Pattern[str] | None = None
    engine: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind == "regex" and self.engine is None:
            text = self.value if self.value is not None else (self.pattern.pattern if self.pattern else None)
            if text is None:
                raise ValueError("a regex ValueMatch needs its pattern text")
            object.__setattr__(self, "engine", compile_re2(text))

    def test(self, actual: str | None) -> bool:
        if self.kind == "absent":
            return actual is None
        if actual is None:
            return False
        if self.kind == "present":
            return True
        if self.kind == "exact":
            return actual == self.value
        if self.kind == "prefix":
            assert self.value is not None
            return actual.startswith(self.value)
        return self.engine.fullmatch(actual.encode("utf-8", "surrogateescape")) is not None


@dataclass(frozen=True, slots=True)
class Condition:
    """One test of a request: a header, cookie or query parameter against a `ValueMatch`."""

    source: Source
    name: str  # headers: lower-case
    match: ValueMatch

    def holds(self, request: RequestView) -> bool:
        return self.match.test(request.get(self.source, self.name))


@dataclass(frozen=True, slots=True)
class HashKey:
    """Where the sticky-percentage key comes from."""

    source: Source
    name: str


@dataclass(frozen=True, slots=True)
class Percentage:
    percent: int  # 0..100
    key: HashKey | None = None
    salt: str = ""

    def holds(self, request: RequestView, rng: random.Random | None = None) -> bool:
        if self.key is None:
            draw = (rng or random).randrange(100)
            return draw < self.percent
        key = request.get(self.key.source, self.key.name)
        if key is None:
            return False
        return in_percentage(key, self.percent, self.salt)


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    lane: str
    conditions: tuple[Condition, ...] = ()
    percentage: Percentage | None = None
    coloring: Coloring = field(init=False, compare=False, repr=False)  # what `color` answers when it matches

    def __post_init__(self) -> None:
        object.__setattr__(self, "coloring", Coloring(self.lane, self.name))

    def matches(self, request: RequestView, rng: random.Random | None = None) -> bool:
        for condition in self.conditions:
            if not condition.holds(request):
                return False
        return self.percentage is None or self.percentage.holds(request, rng)


class _ReceivedHeaders(Protocol):
    """A request's header fields looked up case-insensitively: multidict's ``CIMultiDict(Proxy)``."""

    def getall(self, key: str, default: Any) -> Any: ...

    def items(self) -> Iterable[tuple[str, str]]: ...


class RequestView:
    """The parts of a request the rules look at, normalised on first use.

    The gateway makes one per request; a rule list that decides on a header (the usual case) never
    pays for a copy of every header, the cookies or the query string -- only what a rule reads.
    Equal views have equal ``headers`` (lower-case name -> ","-joined values), ``cookies`` and ``query``.
    """

    __slots__ = ("_cookies", "_flat", "_query", "_query_string", "_received")

    def __init__(self, headers: Mapping[str, str] | None = None, cookies: Mapping[str, str] | None = None,
                 query: Mapping[str, str] | None = None, *, _received: _ReceivedHeaders | None = None,
                 _query_string: str = "") -> None:
        """A view of already normalised parts (header names lower-case); ``_received`` is `of_request`'s
        way in (a plain constructor call rather than ``cls.__new__``, which mypyc cannot compile)."""
        self._received = _received
        self._query_string = _query_string
        self._flat: dict[str, str] | None = None
        self._cookies: dict[str, str] | None = None
        self._query: dict[str, str] | None = None
        if _received is None:
            self._flat, self._cookies, self._query = dict(headers or {}), dict(cookies or {}), dict(query or {})

    @classmethod
    def from_parts(cls, headers: Iterable[tuple[str, str]], query_string: str = "") -> RequestView:
        """The view of a request's header fields (in order, repeats kept) and raw query string."""
        return cls.of_request(_CaseInsensitiveFields(headers), query_string)

    @classmethod
    def of_request(cls, headers: _ReceivedHeaders, query_string: str = "") -> RequestView:
        """The view of a request's case-insensitive header multidict (not copied) and raw query string."""
        return cls(_received=headers, _query_string=query_string)

    @property
    def headers(self) -> Mapping[str, str]:
        if self._flat is None:
            assert self._received is not None
            joined: dict[str, list[str]] = {}
            for name, value in self._received.items():
                joined.setdefault(name.lower(), []).append(value)
            self._flat = {name: ",".join(values) for name, values in joined.items()}
        return self._flat

    @property
    def cookies(self) -> Mapping[str, str]:
        if self._cookies is None:
            assert self._received is not None
            cookies: dict[str, str] = {}
            for cookie_header in self._received.getall("cookie", ()):
                for part in cookie_header.split(";"):
                    name, sep, value = part.strip().partition("=")
                    if sep and name and name not in cookies:
                        cookies[name] = value.strip()
            self._cookies = cookies
        return self._cookies

    @property
    def query(self) -> Mapping[str, str]:
        if self._query is None:
            query: dict[str, str] = {}
            for name, value in parse_qsl(self._query_string, keep_blank_values=True):
                query.setdefault(name, value)
            self._query = query
        return self._query

    def get(self, source: Source, name: str) -> str | None:
        if source is Source.HEADER:
            if self._flat is not None:
                return self._flat.get(name.lower())
            assert self._received is not None
            values = self._received.getall(name, ())
            return ",".join(values) if values else None
        if source is Source.COOKIE:
            return self.cookies.get(name)
        return self.query.get(name)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RequestView):
            return NotImplemented
        return (self.headers, self.cookies, self.query) == (other.headers, other.cookies, other.query)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RequestView(headers={self.headers!r}, cookies={self.cookies!r}, query={self.query!r})"


class _CaseInsensitiveFields:
    """Header fields as a list, looked up the way a case-insensitive multidict does."""

    __slots__ = ("_fields",)

    def __init__(self, fields: Iterable[tuple[str, str]]) -> None:
        self._fields = [(name, value) for name, value in fields]

    def getall(self, key: str, default: Any) -> Any:
        key = key.lower()
        found = [value for name, value in self._fields if name.lower() == key]
        return found or default

    def items(self) -> Iterable[tuple[str, str]]:
        return self._fields


@dataclass(frozen=True, slots=True)
class Coloring:
    """The outcome of coloring: the lane, and the rule that chose it (None: no rule matched)."""

    lane: str
    rule: str | None


def color(
    rules: Iterable[Rule], request: RequestView, default_lane: str, rng: random.Random | None = None
) -> Coloring:
    """The lane of *request*: the first matching rule's, else *default_lane*."""
    for rule in rules:
        if rule.matches(request, rng):
            return rule.coloring
    return Coloring(default_lane, None)
