"""Shared test helpers: free ports, real ``lane`` processes and in-process servers on 127.0.0.1.

Every process or server started here is stopped by the context manager that started it, even
when the test fails. A port for a process to bind later comes from `lane.demo.topology.free_port` (nothing
listens on it, outside the kernel's ephemeral range, as `lane demo` picks its own); in-process servers bind
port 0 themselves.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from lane.core.endpoint import Endpoint
from lane.demo.topology import free_port  # below the ephemeral range, never the same port twice
from lane.engine.listen import FastPath
from lane.process.server import Listener, start_listener

REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def started_process(argv: list[str], log: Path, **popen: Any) -> Iterator[subprocess.Popen[bytes]]:
    """A child process writing to *log*; terminated (then killed) on the way out if still running."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, **popen)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


@dataclass
class LaneProcess:
    """A running ``python -m lane ...`` child and what its ready file said."""

    name: str
    popen: subprocess.Popen[bytes]
    ready: dict[str, Any]
    log: Path

    def url(self, listener: str) -> str:
        return f"http://{self.ready['listeners'][listener]}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _wait_file(path: Path, popen: subprocess.Popen[bytes], timeout: float, log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return dict(json.loads(path.read_text()))
        if popen.poll() is not None:
            raise RuntimeError(f"process exited with {popen.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
        time.sleep(0.05)
    raise RuntimeError(f"not ready after {timeout}s:\n{log.read_text(errors='replace')[-4000:]}")


def stop_process(popen: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
    if popen.poll() is None:
        popen.send_signal(sig)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(10)
    return int(popen.returncode)


@contextlib.contextmanager
def lane_process(
    tmp_path: Path, name: str, *args: str, env: dict[str, str] | None = None, ready_timeout: float = 30.0,
    log_level: str = "INFO", cwd: Path = REPO,
) -> Iterator[LaneProcess]:
    """Run ``lane <args> --ready-file F`` until the block ends (SIGTERM, then SIGKILL).

    ``python -m`` imports from *cwd* first: another tree's `lane` (a compiled copy) runs with cwd set to it."""
    ready = tmp_path / f"{name}.ready.json"
    log = tmp_path / f"{name}.log"
    argv = [sys.executable, "-m", "lane", f"--log-level={log_level}", *args, "--ready-file", str(ready)]
    with log.open("wb") as out:
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                 env={**os.environ, **(env or {})})
        try:
            info = _wait_file(ready, popen, ready_timeout, log)
            yield LaneProcess(name, popen, info, log)
        finally:
            stop_process(popen)


@dataclass
class DemoRun:
    popen: subprocess.Popen[bytes]
    ready: dict[str, Any]
    log: Path

    @property
    def gateway(self) -> str:
        return str(self.ready["gateway"])

    @property
    def admin(self) -> str:
        return str(self.ready["admin"])


@contextlib.contextmanager
def lane_demo(tmp_path: Path, *extra: str, ready_timeout: float = 90.0,
              env: dict[str, str] | None = None) -> Iterator[DemoRun]:
    """``lane demo`` on free ports (in *env*, default this one), stopped (SIGTERM) at the end of the block."""
    ready = tmp_path / "demo.ready.json"
    log = tmp_path / "demo.log"
    argv = [sys.executable, "-m", "lane", "demo", "--port", str(free_port()), "--admin-port", str(free_port()),
            "--ready-file", str(ready), *extra]
    with log.open("wb") as out:
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        try:
            yield DemoRun(popen, _wait_file(ready, popen, ready_timeout, log), log)
        finally:
            stop_process(popen, timeout=40)


@contextlib.asynccontextmanager
async def serve_app(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[int]:
    """Serve *app* in this event loop on 127.0.0.1; yields the bound port.

    The way `lane.process.server.serve` does: an app with a one-core handler (the gateway's, a sidecar's) is
    served by the one core, upgrades by the app itself, so the proxy tests exercise what users run.
    """
    started = await start_listener(Listener("test", Endpoint(host, port), app), drain_seconds=5.0)
    try:
        yield started.address.port
    finally:
        await started.close(5.0)


@contextlib.asynccontextmanager
async def serve_handler(fast: FastPath, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[int]:
    """Serve an engine handler (an admin's `admin_path`, ...) in this event loop, as `lane.process.server`
    serves a listener that has no aiohttp app; yields the bound port."""
    started = await start_listener(Listener("test", Endpoint(host, port), None, fast=fast), drain_seconds=5.0)
    try:
        yield started.address.port
    finally:
        await started.close(5.0)

