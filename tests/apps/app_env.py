"""What every Python test app (tests/apps/*.py) reads from its environment, parsed once.

The test apps stand for third-party services behind a lane sidecar; they are configured the same
way as the Node one (tests/apps/node_otel/app.js), so tests/sidecar/test_real_apps.py starts any kind of
app with the same variables:

* ``APP_SERVICE``, ``APP_LANE``: what the app reports about itself;
* ``APP_PORT`` (0: a free one) on 127.0.0.1, ``APP_READY_FILE`` written as ``{"port": N}``;
* ``APP_NEXT``: comma-separated services to call on every request, in order;
* ``APP_CALL_VIA``: ``proxy`` (the HTTP client's own ``HTTP_PROXY`` support: absolute-form requests
  to the sidecar's outbound port) or ``host`` (straight to ``APP_OUTBOUND`` with ``Host: <service>``).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NoReturn

__all__ = ["SEEN_HEADERS", "AppEnv", "read_env"]

# The headers an app reports having received, so a failing test shows what reached each app.
SEEN_HEADERS: Final = (
    "x-mse-tag", "baggage", "traceparent", "tracestate", "x-request-id", "x-b3-traceid", "x-b3-spanid",
    "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "b3", "uber-trace-id", "sw8",
)
CALL_TIMEOUT: Final = 10.0


@dataclass(frozen=True, slots=True)
class AppEnv:
    service: str
    lane: str
    port: int
    ready_file: Path | None
    next: tuple[str, ...]
    via: str  # "proxy" or "host"
    outbound: str | None  # HOST:PORT of the sidecar's outbound listener (host style)

    def direct_url(self) -> str:
        """Where a host-style call goes; the service name travels in the Host header."""
        return f"http://{self.outbound}/"

    def announce(self, port: int) -> None:
        if self.ready_file is not None:
            tmp = self.ready_file.with_name(self.ready_file.name + ".tmp")
            tmp.write_text(json.dumps({"port": port}), encoding="utf-8")
            tmp.replace(self.ready_file)


def _fail(message: str) -> NoReturn:
    print(f"{Path(sys.argv[0]).name}: {message}", file=sys.stderr)
    raise SystemExit(2)


def read_env() -> AppEnv:
    """The app's settings, or exit 2 with a one-line error naming the variable."""
    service, lane = os.environ.get("APP_SERVICE", ""), os.environ.get("APP_LANE", "")
    if not service or not lane:
        _fail("APP_SERVICE and APP_LANE are required")
    try:
        port = int(os.environ.get("APP_PORT", "0"))
    except ValueError:
        _fail(f"APP_PORT must be a port number, not {os.environ['APP_PORT']!r}")
    via = os.environ.get("APP_CALL_VIA", "proxy")
    nxt = tuple(n.strip() for n in os.environ.get("APP_NEXT", "").split(",") if n.strip())
    outbound = os.environ.get("APP_OUTBOUND") or None
    if via not in ("proxy", "host"):
        _fail(f'APP_CALL_VIA must be "proxy" or "host", not {via!r}')
    if nxt and via == "host" and not outbound:
        _fail("APP_CALL_VIA=host needs APP_OUTBOUND=HOST:PORT (the sidecar's outbound listener)")
    if nxt and via == "proxy" and not (os.environ.get("HTTP_PROXY") or os.environ.get("http_proxy")):
        _fail("APP_CALL_VIA=proxy needs HTTP_PROXY=http://HOST:PORT (the sidecar's outbound listener)")
    ready = os.environ.get("APP_READY_FILE")
    return AppEnv(service, lane, port, Path(ready) if ready else None, nxt, via, outbound)
