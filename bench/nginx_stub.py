"""The cheapest stub backends: one nginx worker, a ``map`` on the lane header, 421 for a wrong lane.

The stubs share the machine's cores with the subjects, so every microsecond they spend is taken
from a subject; one nginx worker answering from its config costs a fraction of an Envoy stub.
One nginx (Debian's package, installed like wrk when missing) plays every ``service@lane``
instance, one ``server`` on its own 127.0.0.1 port each, and keeps routing correctness
observable under load like the Envoy stubs do:

* a ``map`` on the tag header (``$http_x_mse_tag``, matched exactly and case-sensitively, as the
  Envoy stubs' ``exact`` match) decides per lane whether a request is right;
* ``200 <service>@<lane>`` when it is, ``421 Misdirected Request`` otherwise, which wrk counts as
  a status error;
* two access logs per instance, written only for right (``.ok``) or wrong (``.refused``) requests
  (``access_log ... if=``), each line the 2 bytes ``"1\\n"``: the answer counts are the files'
  sizes / 2, read with one ``stat`` each. The logs are buffered (64 KiB, flushed every 50 ms), so
  a count waits out one flush interval first: everything answered before the call is counted.

A gRPC instance (``Instance.grpc``) listens for h2c with prior knowledge (``listen ... http2``
without TLS: what gRPC clients and the proxies' HTTP/2 upstreams speak) and answers a right-lane
call as a gRPC server answers a unary call: HTTP 200, ``content-type: application/grpc``, one
length-prefixed message (an empty protobuf message: the 5 zero bytes of `GRPC_EMPTY_REPLY`, a
file nginx serves) and the trailer ``grpc-status: 0``; a wrong-lane call gets the same 421, which
every gRPC client rejects (grpcio: UNKNOWN "Received http2 header with status: 421"). nginx's
static module refuses a POST with 405, so ``error_page 405 =200`` serves the file on the internal
redirect nginx makes for it: one answer and one access-log line per call.

nginx runs in the foreground (``daemon off``) from the run's temporary directory: its own prefix,
pid file, error log and temp paths (never ``/etc/nginx`` or ``/var/log/nginx``), one worker
process running as the user who runs the benchmark (as root, nginx would switch it to
``nobody``, who may not read the run's private directory and so the gRPC reply file), keep-alive without a request limit (nginx's default closes a connection after 1,000
requests, which would make every proxy reconnect), and it is stopped when the block ends.
Its ports are chosen free just before it starts (nginx cannot report a port 0); a port taken in
between makes nginx exit, and it is started again on fresh ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiohttp
import psutil
from debian import InstallError, ensure_tool
from stub_backend import Instance, InstanceCounts

from lane.demo.topology import free_port
from lane.process.supervisor import die_with_parent

__all__ = ["GRPC_EMPTY_REPLY", "NginxError", "NginxStubs", "ensure_nginx", "nginx_config", "nginx_version",
           "start_nginx_stubs"]

FLUSH_MS: Final = 50
LINE_BYTES: Final = 2  # "1\n": the log format "1" plus nginx's line feed
_START_ATTEMPTS: Final = 3
GRPC_EMPTY_REPLY: Final = b"\x00\x00\x00\x00\x00"  # uncompressed, length 0: an empty protobuf message
_GRPC_REPLY_FILE: Final = "grpc-empty-reply"


class NginxError(RuntimeError):
    """nginx is missing and cannot be installed, or it did not start."""


def ensure_nginx() -> str:
    """The nginx executable: on PATH (or /usr/sbin), else Debian's ``nginx-light`` installed as root."""
    try:
        return ensure_tool("nginx", "nginx-light")
    except InstallError as exc:
        raise NginxError(str(exc)) from exc


def nginx_version(exe: str) -> str:
    """``nginx -v``'s version, e.g. ``1.22.1`` (nginx prints it on stderr)."""
    done = subprocess.run([exe, "-v"], capture_output=True, text=True, timeout=10, check=False)
    found = re.search(r"nginx/(\S+)", done.stderr + done.stdout)
    return found.group(1) if found else "unknown"


def _variable(text: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", text.lower())


def _log(workdir: Path, instance: Instance, verdict: str) -> Path:
    return workdir / f"stub-{instance.listener}.{verdict}"


def _grpc_answer(workdir: Path) -> str:
    """A gRPC unary answer: the empty message from a file, then the ``grpc-status: 0`` trailer."""
    return (f"      root {workdir};\n"
            "      default_type application/grpc;\n"
            "      etag off;\n"
            "      add_trailer grpc-status 0;\n"
            f"      error_page 405 =200 /{_GRPC_REPLY_FILE};\n"
            f"      try_files /{_GRPC_REPLY_FILE} =500;\n")


def _server(workdir: Path, i: Instance, port: int, buffered: str) -> str:
    right = _grpc_answer(workdir) if i.grpc else f'      return 200 "{i}\\n";\n'
    return (
        f"  server {{\n"
        f"    listen 127.0.0.1:{port}{' http2' * i.grpc};\n"
        f"    access_log {_log(workdir, i, 'ok')} tick {buffered} if=$lane_{_variable(i.lane)}_right;\n"
        f"    access_log {_log(workdir, i, 'refused')} tick {buffered} if=$lane_{_variable(i.lane)}_wrong;\n"
        f"    location / {{\n"
        f'      if ($lane_{_variable(i.lane)}_wrong) {{ return 421 "misrouted: this is {i}\\n"; }}\n'
        f"{right}"
        "    }\n"
        "  }\n"
    )


def nginx_config(workdir: Path, ports: Mapping[Instance, int], tag_header: str) -> str:
    """nginx.conf for *ports* (instance -> port), every path under *workdir*."""
    header = "$http_" + _variable(tag_header)
    lanes = sorted({i.lane for i in ports})
    maps = "".join(
        f'  map {header} $lane_{_variable(lane)}_right {{ "~^{re.escape(lane)}$" 1; default 0; }}\n'
        f'  map {header} $lane_{_variable(lane)}_wrong {{ "~^{re.escape(lane)}$" 0; default 1; }}\n'
        for lane in lanes)
    buffered = f"buffer=64k flush={FLUSH_MS}ms"
    servers = "".join(_server(workdir, i, port, buffered) for i, port in sorted(ports.items()))
    temp = "".join(f"  {kind}_temp_path {workdir / ('nginx-' + kind)};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    grpc = any(i.grpc for i in ports)  # the gRPC reply file stays open: no open() per call
    cache = "  open_file_cache max=16 inactive=3600s;\n  open_file_cache_valid 3600s;\n" if grpc else ""
    user = "user root;\n" if os.geteuid() == 0 else ""  # else nginx cannot switch users anyway
    return (
        f"{user}worker_processes 1;\n"
        f"pid {workdir / 'nginx.pid'};\n"
        f"error_log {workdir / 'nginx-error.log'} warn;\n"
        "events { worker_connections 4096; }\n"
        "http {\n"
        "  access_log off;\n"
        "  server_tokens off;\n"
        "  default_type text/plain;\n"
        "  keepalive_requests 4294967295;\n"
        "  keepalive_timeout 300s;\n"
        f"{temp}"
        '  log_format tick "1";\n'
        f"{cache}{maps}{servers}"
        "}\n"
    )


@dataclass(frozen=True, slots=True)
class NginxStubs:
    """A running nginx playing the stub instances (see the module docstring)."""

    pid: int
    ports: Mapping[Instance, int]
    workdir: Path
    version: str

    @property
    def kind(self) -> str:
        return f"nginx {self.version}, 1 worker"

    def address(self, instance: Instance) -> str:
        return f"127.0.0.1:{self.ports[instance]}"

    async def counts(self, session: aiohttp.ClientSession) -> Mapping[Instance, InstanceCounts]:
        """Answers per instance so far: waits out one log flush, then the logs' sizes (no request made)."""
        del session  # the Envoy kind asks its admin listener; nginx's counts are files
        await asyncio.sleep(FLUSH_MS * 3 / 1000)
        return {i: InstanceCounts(self._lines(i, "ok"), self._lines(i, "refused")) for i in self.ports}

    def _lines(self, instance: Instance, verdict: str) -> int:
        try:
            return _log(self.workdir, instance, verdict).stat().st_size // LINE_BYTES
        except FileNotFoundError:
            return 0


async def _ready(proc: asyncio.subprocess.Process, ports: Iterable[int], timeout: float) -> bool:
    """Whether every port accepts connections before nginx exits or *timeout* passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    waiting = set(ports)
    while waiting:
        if proc.returncode is not None or loop.time() > deadline:
            return False
        for port in list(waiting):
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                waiting.discard(port)
        if waiting:
            await asyncio.sleep(0.05)
    return True


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM (nginx's fast shutdown stops its worker too), SIGKILL after 10 s, then any orphan worker."""
    workers: list[psutil.Process] = []
    with contextlib.suppress(psutil.Error):
        workers = psutil.Process(proc.pid).children(recursive=True)
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    for worker in workers:
        with contextlib.suppress(psutil.Error):
            worker.kill()


@contextlib.asynccontextmanager
async def start_nginx_stubs(exe: str, instances: Iterable[Instance], tag_header: str, workdir: Path,
                            timeout: float = 15.0) -> AsyncIterator[NginxStubs]:
    """Run nginx as the stub *instances* until the block ends (see the module docstring)."""
    chosen = tuple(sorted(set(instances)))
    version = nginx_version(exe)
    conf, error_log = workdir / "nginx.conf", workdir / "nginx-error.log"
    (workdir / _GRPC_REPLY_FILE).write_bytes(GRPC_EMPTY_REPLY)
    for attempt in range(1, _START_ATTEMPTS + 1):
        ports = {i: free_port() for i in chosen}
        conf.write_text(nginx_config(workdir, ports, tag_header), encoding="utf-8")
        proc = await asyncio.create_subprocess_exec(
            exe, "-p", str(workdir), "-c", str(conf), "-e", str(error_log), "-g", "daemon off;",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, preexec_fn=die_with_parent)
        try:
            ready = await _ready(proc, ports.values(), timeout)
            exited = proc.returncode is not None  # e.g. a port taken since it was chosen: try fresh ones
            if ready:
                yield NginxStubs(proc.pid, ports, workdir, version)
                return
        finally:
            await _stop(proc)
        if attempt == _START_ATTEMPTS or not exited:
            tail = error_log.read_text(errors="replace")[-1500:] if error_log.exists() else "(no error log)"
            raise NginxError(f"nginx did not start its stub listeners ({attempt} attempts):\n{tail}")
