"""A stdlib service that forwards only the headers it is told to (or none): the apps in between.

``--forward x-request-id``, ``--forward traceparent``, ``--forward baggage``, a comma list, or
``--forward none`` (an app that forwards nothing at all: its calls leave with no trace of the
request that caused them). Served by ``http.server.ThreadingHTTPServer``; calls made with
``urllib.request`` — its own ``HTTP_PROXY`` support in proxy style. Configured by ``APP_*``
variables (see ``app_env``). Used by tests/sidecar/test_real_apps.py.

    APP_SERVICE=b APP_LANE=base APP_NEXT=c HTTP_PROXY=http://127.0.0.1:15001 \
        python forwarding_app.py --forward x-request-id
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from app_env import CALL_TIMEOUT, SEEN_HEADERS, AppEnv, read_env

__all__ = ["main"]


def _forward_list(text: str) -> tuple[str, ...]:
    names = tuple(n.strip().lower() for n in text.split(",") if n.strip())
    if names == ("none",):
        return ()
    if not names or "none" in names:
        raise argparse.ArgumentTypeError("give header names separated by commas, or 'none'")
    return names


def _handler(env: AppEnv, forward: tuple[str, ...]) -> type[BaseHTTPRequestHandler]:
    # Host style must not pick up a proxy from the environment; proxy style uses urllib's env support.
    opener = urllib.request.build_opener() if env.via == "proxy" else urllib.request.build_opener(
        urllib.request.ProxyHandler({}))

    def call(name: str, headers: dict[str, str]) -> dict[str, Any]:
        if env.via == "proxy":
            req = urllib.request.Request(f"http://{name}/", headers=headers)
        else:
            req = urllib.request.Request(env.direct_url(), headers={**headers, "Host": name})
        try:
            with opener.open(req, timeout=CALL_TIMEOUT) as resp:
                status, text = resp.status, resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read().decode("utf-8", "replace")
        except (OSError, urllib.error.URLError) as exc:
            return {"service": name, "status": 599, "error": f"{type(exc).__name__}: {exc}"[:300]}
        try:
            answer: Any = json.loads(text)
        except ValueError:
            answer = text[:500]
        return {"service": name, "status": status, "answer": answer}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            headers = {name: self.headers[name] for name in forward if name in self.headers}
            calls = [call(name, headers) for name in env.next]
            received = {h: self.headers[h] for h in SEEN_HEADERS if h in self.headers}
            body = json.dumps({"service": env.service, "lane": env.lane, "app": f"forward-{','.join(forward) or 'none'}",
                               "received": received, "calls": calls}).encode()
            self.send_response(502 if any(c["status"] >= 500 for c in calls) else 200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the tests read answers, not access logs

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--forward", type=_forward_list, required=True,
                        help="comma-separated headers to copy onto outgoing calls, or 'none'")
    args = parser.parse_args(argv)
    env = read_env()
    server = ThreadingHTTPServer(("127.0.0.1", env.port), _handler(env, args.forward))
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    env.announce(server.server_address[1])
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
