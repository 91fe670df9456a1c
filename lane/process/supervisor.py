"""Child processes that are always stopped: the building block of `lane demo` and `--workers`.

A `Child` is one ``python -m lane ...`` process with its own log file and ready file. It is
started with a parent-death signal (Linux ``PR_SET_PDEATHSIG``), so even a parent killed with
SIGKILL leaves nothing running, and stopped with SIGTERM, then SIGKILL after a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import IO, Any

__all__ = ["Child", "die_with_parent", "lane_argv"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: ask Linux to SIGTERM this child when its parent dies (no-op elsewhere)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def lane_argv(*args: str, log_level: str = "WARNING") -> list[str]:
    return [sys.executable, "-m", "lane", f"--log-level={log_level}", *args]


class Child:
    """One supervised process; `ready_file` is passed as ``--ready-file`` by the caller."""

    def __init__(self, name: str, argv: list[str], *, ready_file: Path, log_file: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.ready_file = ready_file
        self.log_file = log_file
        self.env = env
        self.process: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def start(self) -> None:
        if self.alive:
            return
        with contextlib.suppress(FileNotFoundError):
            self.ready_file.unlink()
        if self._log is not None:  # it died on its own since the last start
            self._log.close()
        self._log = self.log_file.open("ab")
        env = {**os.environ, **(self.env or {})}
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=self._log, stderr=self._log, env=env,
            preexec_fn=die_with_parent,
        )

    async def wait_ready(self, timeout: float) -> dict[str, Any]:
        """The ready file's JSON once it appears; raises RuntimeError when the child dies or times out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.ready_file.exists():
                document: dict[str, Any] = json.loads(self.ready_file.read_text())
                return document
            if not self.alive:
                raise RuntimeError(f"{self.name} exited with status {self.returncode()}:\n{self.log_tail()}")
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready after {timeout:g}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(f"  | {line}" for line in text.splitlines()[-lines:])

    def returncode(self) -> int | None:
        return self.process.returncode if self.process is not None else None

    def signal(self, signum: int) -> None:
        if self.alive and self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)

    async def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to *timeout*, then SIGKILL. Returns the exit status."""
        process = self.process
        if process is None:
            return None
        if process.returncode is None:
            self.signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                log.warning("%s did not stop within %gs; killing it", self.name, timeout)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return process.returncode
