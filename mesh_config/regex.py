"""The regex subset the Istio gateway can mirror: parsed here, matched in Lua (lua/regex.lua).

Envoy's Lua has no regex engine, so the gateway filter carries each coloring regex as a small
syntax tree that ``lua/regex.lua`` compiles to an NFA and simulates (linear time, no
backtracking blow-up). Python parses the pattern once, at render time, into that tree; anything
outside the subset is *rejected* with the config path of the rule, so what is rendered always
does what the Python engine (RE2 ``FullMatch`` on the value's bytes, see `lane.core.rules`) does.

Supported: literals (any code point), ``.``, classes ``[...]`` with ranges and negation, ``\\d \\w
\\s \\D \\W \\S`` (ASCII, as in RE2: ``\\s`` is ``[\\t\\n\\f\\r ]``), escaped punctuation, ``\\n \\t \\r \\f \\v \\xHH``, ``* + ?
{m} {m,} {m,n}`` greedy or lazy (bounds up to 1000), groups ``(...)``, ``(?:...)``,
``(?P<name>...)``, alternation ``|`` and the anchors ``^`` and ``$`` (RE2's: start and end of the
value; ``$`` does not match before a final newline as Python's does). Rejected: flags, lookarounds, back references, ``\\b \\B \\A \\Z``,
Unicode property classes, a literal ``{`` (Python and RE2 read it differently) and nested-set
syntax inside classes.

Tree nodes are tuples (emitted as Lua tables): ``("set", (lo, hi, lo, hi, ...))`` for one code
point from the merged ranges, ``("cat", *nodes)``, ``("alt", *nodes)``, ``("rep", min, max|-1,
node)``, ``("bol",)``, ``("eol",)``. Greediness is dropped: a full-match answer does not depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeAlias, cast

__all__ = ["MAX_NFA_STATES", "MAX_REPEAT", "RegexNode", "UnsupportedRegex", "nfa_size", "parse_regex"]

RegexNode: TypeAlias = tuple[object, ...]
MAX_REPEAT: Final = 1000  # RE2's bound for counted repetition
MAX_NFA_STATES: Final = 20_000  # keeps the per-request Lua simulation cheap
MAX_CODE_POINT: Final = 0x10FFFF

_DIGIT: Final = ((0x30, 0x39),)
_WORD: Final = ((0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A))
_SPACE: Final = ((0x09, 0x0A), (0x0C, 0x0D), (0x20, 0x20))  # \t \n \f \r and space: RE2's \s (no \v)
_SIMPLE_ESCAPES: Final = {"n": 0x0A, "t": 0x09, "r": 0x0D, "f": 0x0C, "v": 0x0B}
_CLASS_ESCAPES: Final = {"d": (_DIGIT, False), "D": (_DIGIT, True), "w": (_WORD, False),
                         "W": (_WORD, True), "s": (_SPACE, False), "S": (_SPACE, True)}


class UnsupportedRegex(ValueError):
    """The pattern uses something the Lua matcher does not mirror; the message says what."""


@dataclass(frozen=True, slots=True)
class _Ranges:
    """A set of code points as sorted, merged, inclusive ranges."""

    spans: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, spans: list[tuple[int, int]] | tuple[tuple[int, int], ...]) -> _Ranges:
        merged: list[tuple[int, int]] = []
        for lo, hi in sorted(spans):
            if merged and lo <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        return cls(tuple(merged))

    def inverted(self) -> _Ranges:
        out, nxt = [], 0
        for lo, hi in self.spans:
            if lo > nxt:
                out.append((nxt, lo - 1))
            nxt = hi + 1
        if nxt <= MAX_CODE_POINT:
            out.append((nxt, MAX_CODE_POINT))
        return _Ranges(tuple(out))

    def node(self) -> RegexNode:
        return ("set", tuple(v for span in self.spans for v in span))


def _class_ranges(spans: tuple[tuple[int, int], ...], negated: bool) -> _Ranges:
    ranges = _Ranges.of(spans)
    return ranges.inverted() if negated else ranges


class _Parser:
    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0

    def fail(self, problem: str) -> UnsupportedRegex:
        return UnsupportedRegex(f"{problem} at offset {self.pos} of {self.text!r}")

    def peek(self, ahead: int = 0) -> str | None:
        i = self.pos + ahead
        return self.text[i] if i < len(self.text) else None

    def take(self) -> str:
        ch = self.text[self.pos]
        self.pos += 1
        return ch

    def parse(self) -> RegexNode:
        node = self.alternation()
        if self.pos != len(self.text):
            raise self.fail("unbalanced ')'")
        return node

    def alternation(self) -> RegexNode:
        branches = [self.sequence()]
        while self.peek() == "|":
            self.take()
            branches.append(self.sequence())
        return branches[0] if len(branches) == 1 else ("alt", *branches)

    def sequence(self) -> RegexNode:
        items: list[RegexNode] = []
        while self.peek() not in (None, "|", ")"):
            atom = self.atom()
            items.append(self.quantified(atom))
        if len(items) == 1:
            return items[0]
        return ("cat", *items)

    def quantified(self, atom: RegexNode) -> RegexNode:
        ch = self.peek()
        if ch not in ("*", "+", "?", "{"):
            return atom
        if atom[0] in ("bol", "eol"):
            raise self.fail("a quantifier on an anchor")
        if ch == "{":
            lo, hi = self.braces()
        else:
            self.take()
            lo, hi = {"*": (0, -1), "+": (1, -1), "?": (0, 1)}[ch]
        if self.peek() == "?":  # lazy: same full-match answer
            self.take()
        if self.peek() in ("*", "+", "?", "{"):
            raise self.fail("a repeated quantifier")
        return ("rep", lo, hi, atom)

    def braces(self) -> tuple[int, int]:
        start = self.pos
        self.take()
        lo = self.digits()
        hi = lo
        if self.peek() == ",":
            self.take()
            hi = self.digits() if self.peek() != "}" else -1
        if self.peek() != "}" or lo is None or hi is None:
            self.pos = start
            raise self.fail("'{' that is not a {m}, {m,} or {m,n} quantifier (write \\{ for a literal brace)")
        self.take()
        if lo > MAX_REPEAT or hi > MAX_REPEAT or (hi != -1 and hi < lo):
            raise self.fail(f"repetition bounds must satisfy 0 <= m <= n <= {MAX_REPEAT}")
        return lo, hi

    def digits(self) -> int | None:
        start = self.pos
        while (ch := self.peek()) is not None and ch.isascii() and ch.isdigit():
            self.take()
        return int(self.text[start:self.pos]) if self.pos > start else None

    def atom(self) -> RegexNode:
        ch = self.take()
        if ch == "(":
            return self.group()
        if ch == "[":
            return self.char_class().node()
        if ch == ".":
            return _Ranges.of([(0x0A, 0x0A)]).inverted().node()
        if ch == "^":
            return ("bol",)
        if ch == "$":
            return ("eol",)
        if ch == "\\":
            return self.escape(in_class=False).node()
        if ch in "*+?":
            raise self.fail("nothing to repeat")
        if ch == "{":
            self.pos -= 1
            raise self.fail("a literal '{' (write \\{)")
        return _Ranges.of([(ord(ch), ord(ch))]).node()

    def group(self) -> RegexNode:
        if self.peek() == "?":
            if self.text.startswith("?:", self.pos):
                self.pos += 2
            elif self.text.startswith("?P<", self.pos):
                end = self.text.find(">", self.pos)
                if end < 0:
                    raise self.fail("unterminated group name")
                self.pos = end + 1
            else:
                raise self.fail("'(?' extension (flags, lookaround, conditionals) outside the supported subset")
        node = self.alternation()
        if self.peek() != ")":
            raise self.fail("missing ')'")
        self.take()
        return node

    def escape(self, *, in_class: bool) -> _Ranges:
        ch = self.peek()
        if ch is None:
            raise self.fail("a trailing backslash")
        self.take()
        if ch in _CLASS_ESCAPES:
            spans, negated = _CLASS_ESCAPES[ch]
            return _class_ranges(spans, negated)
        if ch in _SIMPLE_ESCAPES:
            return _Ranges.of([(_SIMPLE_ESCAPES[ch],) * 2])
        if ch == "x":
            hexits = self.text[self.pos:self.pos + 2]
            if len(hexits) != 2 or any(c not in "0123456789abcdefABCDEF" for c in hexits):
                raise self.fail("\\x needs two hex digits")
            self.pos += 2
            return _Ranges.of([(int(hexits, 16),) * 2])
        if ch.isascii() and not ch.isalnum():
            return _Ranges.of([(ord(ch), ord(ch))])
        where = "inside a class" if in_class else "outside a class"
        raise self.fail(f"escape \\{ch} {where} is outside the supported subset")

    def char_class(self) -> _Ranges:
        negated = self.peek() == "^"
        if negated:
            self.take()
        spans: list[tuple[int, int]] = []
        first = True
        while True:
            ch = self.peek()
            if ch is None:
                raise self.fail("unterminated character class")
            if ch == "]" and not first:
                self.take()
                break
            first = False
            if ch == "[" or self.text[self.pos:self.pos + 2] in ("--", "&&", "~~", "||"):
                raise self.fail("nested-set syntax inside a class (escape the character)")
            item = self.class_item()
            if self.peek() == "-" and self.peek(1) not in ("]", None):
                self.take()
                end = self.class_item()
                if len(item.spans) != 1 or item.spans[0][0] != item.spans[0][1] or len(end.spans) != 1 \
                        or end.spans[0][0] != end.spans[0][1]:
                    raise self.fail("a range whose end is a class")
                lo, hi = item.spans[0][0], end.spans[0][0]
                if lo > hi:
                    raise self.fail("a reversed range")
                spans.append((lo, hi))
            else:
                spans.extend(item.spans)
        return _class_ranges(tuple(spans), negated)

    def class_item(self) -> _Ranges:
        ch = self.take()
        if ch == "\\":
            return self.escape(in_class=True)
        return _Ranges.of([(ord(ch), ord(ch))])


def parse_regex(text: str) -> RegexNode:
    """The tree of *text*, or `UnsupportedRegex` naming what is outside the subset."""
    node = _Parser(text).parse() if text else ("cat",)
    size = nfa_size(node)
    if size > MAX_NFA_STATES:
        raise UnsupportedRegex(f"{text!r} expands to {size} NFA states (limit {MAX_NFA_STATES}); lower the repetition counts")
    return node


def children(node: RegexNode) -> list[RegexNode]:
    """The sub-trees of a ``cat`` or ``alt`` node."""
    return [cast(RegexNode, n) for n in node[1:]]


def nfa_size(node: RegexNode) -> int:
    """How many states ``lua/regex.lua`` builds for *node* (same construction)."""
    kind = node[0]
    if kind in ("set", "bol", "eol"):
        return 1
    if kind == "cat":
        return sum(nfa_size(n) for n in children(node))
    if kind == "alt":
        return 1 + sum(nfa_size(n) for n in children(node))
    lo, hi, body = node[1], node[2], node[3]
    assert isinstance(lo, int) and isinstance(hi, int) and isinstance(body, tuple)
    inner = nfa_size(body)
    optional = 1 + inner if hi == -1 else (hi - lo) * (1 + inner)
    return lo * inner + optional
