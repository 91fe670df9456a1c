"""What a fast-core listener may hold at once, and how it sheds what is over (Envoy's overload shapes).

Envoy's edge guidance bounds a proxy that faces the Internet four ways, and `H1Server` does the same:

* **connections per listener** (Envoy's listener connection limit): a connection over the cap is
  accepted and closed at once (Envoy does the same and counts ``downstream_cx_overflow``): left in
  the kernel's backlog it would only time out at the client, and an HTTP answer would mean reading
  a request first. Before refusing, the listener closes its longest-waiting connection that is not
  being answered (idle keep-alive, or still sending its head), the way Envoy's overload manager
  shortens idle timeouts under pressure: an idle-connection flood or a slow-loris then costs its
  own connections, not the clients that are sending requests;
* **concurrent requests per listener**: over the cap a request gets a fast ``503`` with
  ``Retry-After`` (Envoy's ``stop_accepting_requests`` answer), without reaching the handler;
* **buffered bytes per connection** (``per_connection_buffer_limit_bytes``): reading from the
  client pauses when that much request body is waiting for the upstream, and answers wait for the
  client to read when that much is waiting for it; with the upstream side's own bound, an upload
  to a slow upstream holds a bounded amount whatever its size;
* **memory** (Envoy's fixed-heap monitor): once a second the process's resident size is read from
  ``/proc/self/statm``; above the watermark new requests get the 503 (and their connection closes)
  until it is back under 90% of it.

The per-request cost is a comparison of two ints and a flag; everything else happens per
connection or per second.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = ["SHED_REASONS", "UNLIMITED", "Limits", "ShedReason", "resident_bytes", "trim_heap"]

UNLIMITED: Final = 1 << 62
# "connections" (a new connection closed at the cap), "evicted" (a waiting one closed to make room),
# "requests" (a 503 over the request cap), "memory" (a 503 over the memory watermark)
ShedReason = str
SHED_REASONS: Final = ("connections", "evicted", "requests", "memory")


@dataclass(frozen=True, slots=True)
class Limits:
    max_connections: int = UNLIMITED
    max_requests: int = UNLIMITED  # being answered at once, on the whole listener
    buffer_bytes: int = 256 * 1024  # per connection, each way
    memory_bytes: int = 0  # resident size above which requests are shed; 0: not watched
    retry_after: int = 1  # seconds, in the 503's Retry-After
    on_shed: Callable[[ShedReason], None] | None = None  # counts what was shed (metrics)
    on_connections: Callable[[int], None] | None = None  # +1 / -1 as connections open and close


_PAGE: Final = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int:
    """This process's resident set size (0 where ``/proc`` is missing: then nothing is shed for memory)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


_trim: Callable[[int], int] | None = None
_trim_looked_up = False


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, looked up on first use (only a process with a memory watermark needs it)."""
    global _trim, _trim_looked_up
    if not _trim_looked_up:
        _trim_looked_up = True
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c")
        try:
            trim = ctypes.CDLL(name).malloc_trim if name else None
        except (OSError, AttributeError):  # not glibc
            trim = None
        if trim is not None:
            trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
        _trim = trim
    return _trim


def trim_heap() -> None:
    """Give free heap pages back to the system (glibc's ``malloc_trim``; Envoy's ``shrink_heap`` action).

    Python's allocator keeps memory it freed, so a process over its watermark after a burst would
    otherwise stay there, shedding, long after the burst is gone.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
