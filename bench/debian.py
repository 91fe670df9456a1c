"""A tool the benchmark needs, found on PATH or installed from Debian's package (root only), and run bounded.

wrk (the load generator) and nginx (the cheapest stub backend) both come from Debian's archive;
the benchmark installs the one it lacks the same way, once, with ``apt-get`` as root and no
questions asked. On a machine where that is impossible, the caller decides: wrk is required
(`wrk.ensure_wrk` fails with the command to run), nginx has the Envoy stubs as fallback. The
container images this runs in have a ``policy-rc.d`` that keeps ``apt-get`` from starting the
nginx service; the benchmark never uses that service anyway (it runs its own nginx on loopback).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess

__all__ = ["InstallError", "ensure_tool", "run_bounded", "version_line"]


class InstallError(RuntimeError):
    """The tool is missing and could not be installed (not root, or apt-get failed)."""


def ensure_tool(binary: str, package: str) -> str:
    """*binary* on PATH (``/usr/sbin`` included), else installed with ``apt-get install package``."""
    search = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/usr/local/sbin"
    found = shutil.which(binary, path=search)
    if found:
        return found
    if os.geteuid() != 0:
        raise InstallError(f"{binary} is not installed and this is not root: install it "
                           f"(e.g. `sudo apt-get install {package}`)")
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", package]):
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600,
                                  env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise InstallError(f"{' '.join(argv)} failed: {exc}") from exc
        if done.returncode != 0:
            raise InstallError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    found = shutil.which(binary, path=search)
    if not found:
        raise InstallError(f"apt-get install {package} succeeded but {binary} is still not on PATH")
    return found


def version_line(exe: str, flag: str) -> str:
    """The first line *exe* prints for *flag* (stdout or stderr; exit status ignored: wrk exits 1 on ``-v``)."""
    done = subprocess.run([exe, flag], capture_output=True, text=True, timeout=10, check=False)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0] if lines else f"{os.path.basename(exe)} (unknown version)"


async def run_bounded(argv: list[str], seconds: float) -> tuple[int, str]:
    """Run a load generator (*argv*) to its end, at most *seconds* + 30 s: its exit status and output.

    Timed out or cancelled (Ctrl-C), it is killed and waited for: never left running.
    """
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + 30)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    status = await proc.wait()  # already ended: its exit status
    return status, out.decode("utf-8", "replace")
