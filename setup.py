"""The build: pure Python unless ``LANE_COMPILE=1``, then the hot path compiled with mypyc as well.

Why a setup.py beside pyproject.toml: setuptools takes C extensions only from ``setup(ext_modules=...)``.
Without ``LANE_COMPILE=1`` it passes none, so ``pip install -e .`` (``make demo``, ``make test``) needs
no compiler and installs exactly what pyproject.toml says. With it, the modules in `COMPILED` are built
as extension modules (`make compiled` builds them in place; an extension module wins over the ``.py``
beside it at import, so the editable install runs them; `make pure` removes them). Needs gcc, the
Python headers and mypyc (``pip install 'lane[compiled]'``); ``lane --version`` says which is running.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

# The per-request path of the HTTP/1.1 gateway and sidecar: the engine's parser/connection/upstream
# pool, the data plane's dispatch and relay, the two handlers, and the pure core they call per request.
# The same source runs uncompiled when this list is not built. Measured (mypy 2.4, 2 busy cores): the
# sidecar hop pair spends ~10% less CPU per request; the gateway, whose time is mostly its socket writes,
# shows no change beyond the noise.
COMPILED = (
    "lane/core/deadline.py",
    "lane/core/endpoint.py",
    "lane/core/hashing.py",
    "lane/core/headers.py",
    "lane/core/hops.py",
    "lane/core/routing.py",
    "lane/core/rules.py",
    "lane/core/tags.py",
    "lane/core/wire.py",
    "lane/engine/connection.py",
    "lane/engine/exchange.py",
    "lane/engine/head.py",
    "lane/engine/limits.py",
    "lane/engine/server.py",
    "lane/engine/upstream.py",
    "lane/engine/upstream_connection.py",
    "lane/dataplane/dispatch.py",
    "lane/dataplane/forward.py",
    "lane/dataplane/health.py",
    "lane/dataplane/recorded_dispatch.py",
    "lane/dataplane/registry.py",
    "lane/dataplane/relay.py",
    "lane/dataplane/responses.py",
    "lane/dataplane/trace_cache.py",
    "lane/dataplane/trace_identity.py",
    "lane/gateway/handler.py",
    "lane/gateway/request.py",
    "lane/sidecar/app.py",
    "lane/sidecar/carriers.py",
    "lane/sidecar/destination.py",
    "lane/sidecar/handler.py",
    "lane/sidecar/hop_collector.py",
    "lane/sidecar/state.py",
)
# Hot, or near it, and left out on purpose:
# - lane/engine/request.py, lane/engine/answer.py, lane/dataplane/upgrades.py: each has an async generator
#   (a body's `chunks()`), which mypyc does not compile.
# - lane/engine/h2_*.py: not yet. A first try (mypy 2.4, all but h2_stream.py, whose body has an async
#   generator) builds once the classes that subclass h2/hpack's Python classes are non-native
#   (`mypyc_attr(native_class=False)`: a native subclass of H2Connection crashes mypyc on h2's attributes),
#   except h2_hpack.py (CachingDecoder's property setter: not in a non-native class). The build then fails
#   tests/engine: mypyc unboxes `tuple[bytes, bytes]`, so h2_headers' `_SKIPPED` identity check and its
#   NeverIndexedHeaderTuple (credentials never indexed) are lost on the way, and h2's `int` annotations on
#   Settings values reject the None a setting holds before it is acknowledged (h2_lean_streams.max_streams).
# - lane/core/config_yaml.py (a nested class mypyc refuses), lane/core/config_load.py (its compiled form
#   fails at import on a `type: ignore`d frozenset default): config is read once, not per request.
# - lane/engine/failures.py, lane/dataplane/failures.py: the upstream failure exceptions. As mypyc native
#   classes their class-level `status`/`counts` are missing on instances and `note_hop`'s setattr has no
#   __dict__ to go to; they are raised only when an upstream fails, so they stay Python classes.
# - lane/core/baggage.py: the propagation library's parser, which skips non-string carrier values;
#   compiled, its `str` annotations are enforced and such a value raises TypeError instead.
# Everything else (CLI, admin, mesh tooling, process supervision) is not per request.
# Compiled code checks declared types at run time and gives an `except ... as name` one type for the
# whole function: write a name per clause (see lane/dataplane/dispatch.py).


def _extensions() -> list[object]:
    if os.environ.get("LANE_COMPILE") != "1":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        sys.exit("LANE_COMPILE=1 needs mypyc: pip install 'lane[compiled]' (and --no-build-isolation with pip)")
    # group_name: one shared library named for the project (lane__mypyc.*.so) rather than a hash.
    return list(mypycify(list(COMPILED), opt_level="3", group_name="lane"))


setup(ext_modules=_extensions())
