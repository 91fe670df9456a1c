"""The admin listener: reading is open, changing needs loopback and a local Host, or the token; never a foreign Origin.

Real ``lane gateway`` (alone, and the ``--workers`` supervisor's admin), real ``lane sidecar`` processes on
127.0.0.1; all three serve the one admin (`lane.process.admin`). Every peer in a test is on loopback, so the one rule a
test cannot show over a socket -- a non-loopback peer without the token is refused -- is checked
on `AdminAccess.refusal` itself (its peer is the address the listener saw, nothing else).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from lane.process.admin_access import AdminAccess
from tests.support.processes import REPO, free_port, lane_process, serve_app

TOKEN = "s3cret-admin-token"
CONFIG = "entry: a\nservices:\n  a: {{instances: {{base: ['127.0.0.1:{port}']}}}}\n"


async def status_of(client: aiohttp.ClientSession, method: str, url: str, **headers: str) -> int:
    async with client.request(method, url, headers=headers) as resp:
        await resp.read()
        return resp.status


async def check_admin(admin: str) -> None:
    """The rules every admin listener follows; *admin* is ``http://127.0.0.1:PORT``."""
    own = admin.removeprefix("http://")
    reload = admin + "/lane/reload"
    async with aiohttp.ClientSession() as client:
        # read-only: open to anyone, whatever Host/Origin (probes, Prometheus, the load test's workers)
        for path in ("/metrics", "/healthz", "/lane/instances"):
            assert await status_of(client, "GET", admin + path, Host="attacker.example",
                                   Origin="http://attacker.example") == 200
        assert await status_of(client, "HEAD", admin + "/healthz", Host="10.1.2.3:9901") == 200
        # DNS rebinding: a browser on this machine sends the attacker's name as Host
        assert await status_of(client, "POST", reload, Host="attacker.example") == 403
        # CSRF: the right Host, but a page of another site sent it
        assert await status_of(client, "POST", reload, Host=own, Origin="http://attacker.example") == 403
        assert await status_of(client, "POST", reload, Host=own, Origin="null") == 403
        assert await status_of(client, "POST", reload, Host=own, **{"Sec-Fetch-Site": "cross-site"}) == 403
        # loopback peer, local Host: the operator's curl / kubectl port-forward
        assert await status_of(client, "POST", reload, Host=own) == 200
        assert await status_of(client, "POST", reload, Host=f"localhost:{own.rsplit(':', 1)[1]}") == 200
        assert await status_of(client, "POST", reload, Host=own, Origin=f"http://{own}") == 200
        # the token works under any Host (a Service name), a wrong one does not
        assert await status_of(client, "POST", reload, Host="lane-admin:9901",
                               Authorization=f"Bearer {TOKEN}") == 200
        assert await status_of(client, "POST", reload, Host="lane-admin:9901", Authorization="Bearer nope") == 403
        # ... but never from another site's page
        assert await status_of(client, "POST", reload, Host=own, Origin="http://attacker.example",
                               Authorization=f"Bearer {TOKEN}") == 403
    # the admin port serves no upgrade and no tunnel: a short 501, and the connection is closed
    host, port = own.rsplit(":", 1)
    upgrade = (f"GET /healthz HTTP/1.1\r\nHost: {own}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    for head in (upgrade, "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"):
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(head.encode())
            answer = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
        assert answer.startswith(b"HTTP/1.1 501 "), answer[:80]


async def test_gateway_admin_token_file_and_sidecar_admin_token_env(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    async with serve_app(web.Application()) as app_port:
        config = tmp_path / "lane.yaml"
        config.write_text(CONFIG.format(port=free_port()))
        with lane_process(tmp_path, "gw", "gateway", "--config", str(config), "--listen", "127.0.0.1:0",
                          "--admin", "127.0.0.1:0", "--admin-token-file", str(token)) as gw:
            await check_admin(gw.url("admin"))
        with lane_process(tmp_path, "sc", "sidecar", "--config", str(config), "--service", "a", "--lane", "base",
                          "--app", f"127.0.0.1:{app_port}", "--listen", "127.0.0.1:0", "--outbound", "127.0.0.1:0",
                          "--admin", "127.0.0.1:0", env={"LANE_ADMIN_TOKEN": TOKEN}) as sc:
            await check_admin(sc.url("admin"))


async def test_the_workers_supervisor_admin_follows_the_same_rules(tmp_path: Path) -> None:
    config = tmp_path / "lane.yaml"
    config.write_text(CONFIG.format(port=free_port()))
    with lane_process(tmp_path, "gw", "gateway", "--config", str(config), "--listen", f"127.0.0.1:{free_port()}",
                      "--admin", "127.0.0.1:0", "--workers", "2", env={"LANE_ADMIN_TOKEN": TOKEN},
                      ready_timeout=60) as gw:
        await check_admin(gw.url("admin"))


@pytest.mark.parametrize("content", ["", "   \n", "two words\n"])
def test_a_bad_token_file_is_a_one_line_error(tmp_path: Path, content: str) -> None:
    token = tmp_path / "token"
    token.write_text(content)
    for path in (str(token), str(tmp_path / "missing")):
        proc = subprocess.run([sys.executable, "-m", "lane", "gateway", "--demo", "--admin-token-file", path], check=False,
                              capture_output=True, text=True, timeout=60, cwd=REPO)
        assert proc.returncode == 2 and "admin token file" in proc.stderr and "Traceback" not in proc.stderr


def test_a_peer_off_loopback_needs_the_token_even_with_a_local_host() -> None:
    local = ("10.1.2.3", 9901)
    headers = {"Host": "10.1.2.3:9901"}
    assert AdminAccess().refusal("POST", "10.9.9.9", local, headers).status == 401  # type: ignore[union-attr]
    assert AdminAccess(b"t").refusal("POST", "10.9.9.9", local, headers).status == 401  # type: ignore[union-attr]
    assert AdminAccess(b"t").refusal("POST", "10.9.9.9", local, {**headers, "Authorization": "Bearer t"}) is None
    assert AdminAccess().refusal("POST", "::ffff:127.0.0.1", local, headers) is None  # IPv4-mapped loopback
    assert AdminAccess().refusal("GET", "10.9.9.9", local, {"Host": "attacker.example"}) is None
    assert AdminAccess().refusal("DELETE", "10.9.9.9", local, headers) is not None  # any method that is not a read
