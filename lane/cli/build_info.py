"""Which build of lane is running: pure Python, or with the hot path compiled by mypyc (`make compiled`).

``lane --version`` says it, so whoever reads a benchmark or a bug report can tell which one ran
without looking for ``.so`` files. The answer is what the import system would load: a lane module
counts as compiled when an extension module for *this* interpreter sits beside its source (the
extension loader is tried before the ``.py`` one).
"""

from __future__ import annotations

from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import lane

__all__ = ["compiled_modules", "version_line"]


def compiled_modules() -> list[str]:
    """The dotted names of the lane modules that import from an extension module, sorted."""
    root = Path(lane.__file__).parent
    found = set()
    for suffix in EXTENSION_SUFFIXES:
        for path in root.rglob(f"*{suffix}"):
            stem = path.name[: -len(suffix)]
            if stem.isidentifier():  # not an extension built for another interpreter (foo.cpython-312-...)
                found.add(".".join((*path.parent.relative_to(root.parent).parts, stem)))
    return sorted(found)


def version_line() -> str:
    """``lane 0.1.0 (compiled: yes, 36 modules)`` or ``lane 0.1.0 (compiled: no)``."""
    modules = compiled_modules()
    built = f"compiled: yes, {len(modules)} modules" if modules else "compiled: no"
    return f"lane {lane.__version__} ({built})"
