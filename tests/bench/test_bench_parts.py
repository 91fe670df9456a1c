"""Parts of `bench/compare.py` a user of its numbers relies on, each run for real on 127.0.0.1.

* the nginx stub backends (Debian's nginx, installed by the benchmark when missing): a request
  of the right lane gets 200, any other (wrong lane, other case, no tag) 421, and the per-instance
  counts the routing check reads say exactly that -- so misrouting is still caught with the
  cheaper stubs; nginx runs from the test's directory and is stopped at the end of the block;
* wrk's script with trace headers: every request carries a fresh, well-formed ``traceparent``,
  ``x-request-id`` and B3 trace, the B3 ids the traceparent's (a real wrk against a raw asyncio
  server recording the request heads);
* the busy note and the README sentence writer (pure functions).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import psutil
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(autouse=True)
def _bench_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))  # the bench is scripts, not a package


async def _stub_session(tmp_path: Path) -> tuple[dict[str, int], dict[Any, Any], list[int]]:
    from nginx_stub import ensure_nginx, start_nginx_stubs
    from stub_backend import Instance

    statuses: dict[str, int] = {}
    GRAY, BASE = Instance("a", "gray"), Instance("a", "base")
    async with start_nginx_stubs(ensure_nginx(), [GRAY, BASE], "x-mse-tag", tmp_path) as stubs:
        pids = [stubs.pid, *(p.pid for p in psutil.Process(stubs.pid).children(recursive=True))]
        listening = [c.laddr for c in psutil.Process(stubs.pid).net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN]
        assert sorted(a.port for a in listening) == sorted(stubs.ports.values())
        assert {a.ip for a in listening} == {"127.0.0.1"}  # loopback only
        async with aiohttp.ClientSession() as session:
            before = await stubs.counts(session)
            for label, tag in (("gray", "gray"), ("base", "base"), ("GRAY", "GRAY"), ("none", None)):
                headers = {"x-mse-tag": tag} if tag else {}
                async with session.get(f"http://{stubs.address(GRAY)}/", headers=headers) as resp:
                    statuses[label] = resp.status
                    if resp.status == 200:
                        assert await resp.text() == "a@gray\n"
            async with session.get(f"http://{stubs.address(BASE)}/", headers={"x-mse-tag": "base"}) as resp:
                statuses["base@base"] = resp.status
            after = await stubs.counts(session)
    return statuses, {i: after[i] - before[i] for i in after}, pids


def test_nginx_stubs_refuse_a_wrong_lane_and_count_each_answer(tmp_path: Path) -> None:
    from stub_backend import Instance, InstanceCounts

    GRAY, BASE = Instance("a", "gray"), Instance("a", "base")
    statuses, delta, pids = asyncio.run(_stub_session(tmp_path))
    assert statuses == {"gray": 200, "base": 421, "GRAY": 421, "none": 421, "base@base": 200}
    assert delta == {GRAY: InstanceCounts(ok=1, refused=3), BASE: InstanceCounts(ok=1, refused=0)}
    assert not (tmp_path / "nginx.pid").exists()  # nginx removed its pid file: it stopped
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


class _Recorder(asyncio.Protocol):
    """Answers every request 200 and keeps its head (wrk pipelines nothing: one request at a time)."""

    heads: ClassVar[list[bytes]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport, self.buffer = transport, b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            _Recorder.heads.append(head)
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")


async def _record_wrk() -> list[bytes]:
    from wrk import ensure_wrk, run_wrk

    _Recorder.heads = []
    server = await asyncio.get_running_loop().create_server(_Recorder, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        result = await run_wrk(ensure_wrk(), f"http://127.0.0.1:{port}/", connections=2, seconds=1,
                               requests=[(("Host", "b"), ("x-mse-tag", "gray"))],
                               trace=("traceparent", "x-request-id", "b3"))
    assert result.requests > 0 and result.errors == 0
    return _Recorder.heads


def test_wrk_sends_fresh_trace_headers_on_every_request() -> None:
    heads = asyncio.run(_record_wrk())
    assert len(heads) > 50
    traceparents, request_ids = set(), set()
    for head in heads:
        fields = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
        assert fields["Host"] == "b" and fields["x-mse-tag"] == "gray"
        found = re.fullmatch(r"00-([0-9a-f]{32})-([0-9a-f]{16})-01", fields["traceparent"])
        assert found, fields
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-a[0-9a-f]{3}-[0-9a-f]{12}", fields["x-request-id"])
        assert (fields["x-b3-traceid"], fields["x-b3-spanid"], fields["x-b3-sampled"]) == (*found.groups(), "1")
        traceparents.add(fields["traceparent"])
        request_ids.add(fields["x-request-id"])
    assert len(traceparents) == len(request_ids) == len(heads)  # fresh per request, across both wrk threads


def test_busy_note_names_load_before_and_other_cpu_during_the_runs() -> None:
    from busy import busy_note

    assert busy_note([0.4, 0.3, 0.2], 2, [0.05, 0.1, None]) is None
    before = busy_note([3.5, 2.0, 1.0], 2, [0.05])
    assert before is not None and "load average 3.5 on 2 cores" in before and "other processes" not in before
    during = busy_note([0.2, 0.2, 0.2], 2, [0.1, 0.9, 0.6])
    assert during is not None and "0.10-0.90 cores" in during and "load average" not in during
    just_before = busy_note([0.2, 0.2, 0.2], 2, [0.1], other_at_start=0.7)
    assert just_before is not None and "0.70 cores just before it" in just_before
    assert busy_note([0.2, 0.2, 0.2], 2, [0.1], other_at_start=0.1) is None


def test_readme_sentence_replaced_between_its_markers_only(tmp_path: Path) -> None:
    from latest import README_END, README_START, update_readme

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\nbefore {README_START}old numbers{README_END} after\n", encoding="utf-8")
    assert update_readme(readme, "New ratios.")
    assert readme.read_text() == f"# x\nbefore {README_START}New ratios.{README_END} after\n"
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers here\n", encoding="utf-8")
    assert not update_readme(plain, "New ratios.") and plain.read_text() == "no markers here\n"
