"""Strings that a coloring regex does, and does not, fully match.

Personas need a request that matches every rule and a near miss that must not, for regex
conditions too. Rather than asking the user for samples, we walk the parsed pattern (the same
parse tree `re` compiles) and build the shortest printable-ASCII example; every result is checked
with ``fullmatch`` so a pattern we cannot handle yields None instead of a wrong persona.
"""

from __future__ import annotations

import re
import string
from typing import Any, Final

__all__ = ["example_of", "is_safe_value", "near_miss_of"]

# Characters we are willing to put in a header, cookie or query value (no separators that the
# cookie or query syntax would reinterpret, no whitespace that HTTP parsers strip).
_SAFE: Final = string.ascii_letters + string.digits + "-._~!$&'()*+/:<=>?@[]^`{|}"
_SAFE_SET: Final = frozenset(_SAFE)


def is_safe_value(value: str) -> bool:
    """Whether *value* survives a trip through a header, a cookie and a query string unchanged."""
    return bool(value) and all(ch in _SAFE_SET for ch in value)


def _parser() -> Any:
    import re._parser as sre_parse  # Python >= 3.11; a private but stable module

    return sre_parse


def _in_set(items: list[tuple[Any, Any]], ch: str, constants: Any) -> bool:
    code = ord(ch)
    for op, arg in items:
        if op is constants.LITERAL and code == arg:
            return True
        if op is constants.RANGE and arg[0] <= code <= arg[1]:
            return True
        if op is constants.CATEGORY:
            name = str(arg).lower()
            if "digit" in name and ch.isdigit() == ("not" not in name):
                return True
            if "word" in name and (ch.isalnum() or ch == "_") == ("not" not in name):
                return True
            if "space" in name and ch.isspace() == ("not" not in name):
                return True
    return False


def _pick_from_set(items: list[tuple[Any, Any]], constants: Any) -> str | None:
    negate = bool(items) and items[0][0] is constants.NEGATE
    body = items[1:] if negate else items
    for ch in _SAFE:
        if _in_set(body, ch, constants) != negate:
            return ch
    return None


def _generate(tree: Any, constants: Any, fill: int) -> str | None:
    out: list[str] = []
    for op, arg in tree:
        piece: str | None
        if op is constants.LITERAL:
            piece = chr(arg)
        elif op is constants.NOT_LITERAL:
            piece = next((ch for ch in _SAFE if ord(ch) != arg), None)
        elif op is constants.ANY:
            piece = "a"
        elif op is constants.IN:
            piece = _pick_from_set(list(arg), constants)
        elif op in (constants.MAX_REPEAT, constants.MIN_REPEAT, getattr(constants, "POSSESSIVE_REPEAT", None)):
            low, high, sub = arg
            one = _generate(sub, constants, fill)
            piece = None if one is None else one * max(low, min(fill, high))
        elif op is constants.SUBPATTERN:
            piece = _generate(arg[-1], constants, fill)
        elif op is constants.BRANCH:
            piece = None
            for alternative in arg[1]:
                piece = _generate(alternative, constants, fill)
                if piece is not None:
                    break
        elif op is constants.AT:
            piece = ""
        elif op is getattr(constants, "ATOMIC_GROUP", None):
            piece = _generate(arg, constants, fill)
        else:  # back references, lookarounds, conditionals: not ours to synthesise
            return None
        if piece is None:
            return None
        out.append(piece)
    return "".join(out)


def example_of(pattern: re.Pattern[str]) -> str | None:
    """A short safe string that *pattern* fully matches, or None when we cannot build one."""
    try:
        sre_parse = _parser()
        tree = sre_parse.parse(pattern.pattern, pattern.flags)
    except Exception:  # noqa: BLE001 - any parser surprise just means "no example"
        return None
    # Prefer one repetition of optional parts (a non-empty value travels everywhere); fall back
    # to the minimal string when that does not match (e.g. a bounded alternation).
    for fill in (1, 0):
        try:
            text = _generate(tree, sre_parse, fill)
        except Exception:  # noqa: BLE001
            text = None
        if text is not None and pattern.fullmatch(text) is not None and (not text or is_safe_value(text)):
            return text
    return None


def near_miss_of(pattern: re.Pattern[str], example: str | None) -> str | None:
    """A safe string close to *example* that *pattern* does not fully match (None if none found)."""
    base = example or ""
    candidates = [base + "~", "~" + base, base[:-1], base.swapcase(), base + "0", base + "a", "~"]
    for candidate in candidates:
        if is_safe_value(candidate) and pattern.fullmatch(candidate) is None:
            return candidate
    return None
