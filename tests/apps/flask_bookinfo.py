"""A Flask + ``requests`` service written like Istio bookinfo's productpage.

Bookinfo's productpage copies a fixed list of incoming headers onto every outgoing call
(``getForwardHeaders``) so Envoy can stitch the trace. This one keeps only the Zipkin/Envoy part of
that list, as many real B3-era apps do: ``x-request-id`` and the B3 headers (multi and single).
No ``traceparent``, no ``baggage``, no lane tag: whatever the lane sidecar needs beyond those, it has
to recover itself. Used by tests/sidecar/test_real_apps.py; configured by ``APP_*`` variables (see
``app_env``), served by werkzeug's threaded WSGI server.

    APP_SERVICE=b APP_LANE=base APP_NEXT=c HTTP_PROXY=http://127.0.0.1:15001 python flask_bookinfo.py
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any, Final

import requests
from flask import Flask, jsonify, request
from werkzeug.serving import make_server

sys.path.insert(0, str(Path(__file__).resolve().parent))
from app_env import CALL_TIMEOUT, SEEN_HEADERS, AppEnv, read_env

__all__ = ["FORWARDED", "build_app", "forward_headers"]

# Bookinfo's list, restricted to x-request-id and B3.
FORWARDED: Final = (
    "x-request-id",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
)


def forward_headers(incoming: Any) -> dict[str, str]:
    """The headers to copy onto an outgoing call, like bookinfo's ``getForwardHeaders``."""
    headers: dict[str, str] = {}
    for name in FORWARDED:
        value = incoming.get(name)
        if value is not None:
            headers[name] = value
    return headers


def build_app(env: AppEnv) -> Flask:
    app = Flask(env.service)
    # A session per style: proxy style lets requests read HTTP_PROXY (trust_env), host style must not.
    session = requests.Session()
    session.trust_env = env.via == "proxy"

    def call(name: str, headers: dict[str, str]) -> dict[str, Any]:
        url = f"http://{name}/" if env.via == "proxy" else env.direct_url()
        if env.via == "host":
            headers = {**headers, "Host": name}
        try:
            resp = session.get(url, headers=headers, timeout=CALL_TIMEOUT)
        except requests.RequestException as exc:
            return {"service": name, "status": 599, "error": f"{type(exc).__name__}: {exc}"[:300]}
        try:
            answer: Any = resp.json()
        except ValueError:
            answer = resp.text[:500]
        return {"service": name, "status": resp.status_code, "answer": answer}

    @app.get("/healthz")
    def healthz() -> str:
        return "ok\n"

    @app.get("/")
    def root() -> Any:
        headers = forward_headers(request.headers)
        calls = [call(name, headers) for name in env.next]
        received = {h: request.headers[h] for h in SEEN_HEADERS if h in request.headers}
        body = {"service": env.service, "lane": env.lane, "app": "flask-bookinfo", "received": received,
                "calls": calls}
        return jsonify(body), 502 if any(c["status"] >= 500 for c in calls) else 200

    return app


def main() -> int:
    env = read_env()
    server = make_server("127.0.0.1", env.port, build_app(env), threaded=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    env.announce(server.server_port)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
