"""Running locust in its own subprocess, so `lane` itself never imports (and monkey-patches) it.

`locust_argv` turns a `RunSpec` into ``python -m locust -f loadtest/locustfile.py ...`` with the
lane options; `run_locust` runs it with a watchdog: a headless run that outlives its run time by
far is stopped (SIGINT, then SIGTERM, then SIGKILL), and Ctrl-C is passed on and waited for, so
no locust process outlives the command. A worker has no watchdog: the master owns the run time
(a worker's own --run-time is only the CLI default), and a worker quits when its master does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

__all__ = ["LOCUSTFILE", "WATCHDOG_SLACK", "RunSpec", "locust_argv", "run_locust"]

LOCUSTFILE: Final = Path(__file__).with_name("locustfile.py")
WATCHDOG_SLACK: Final = 120.0  # seconds a headless run may take beyond --run-time (ramp, workers, reports)


@dataclass(frozen=True, slots=True)
class RunSpec:
    host: str | None
    config: str | None = None
    users: int = 5
    spawn_rate: float = 5.0
    run_time: int = 30  # seconds
    headless: bool = True
    json_path: str | None = None
    html_path: str | None = None
    admins: tuple[str, ...] = ()
    max_error_rate: float = 0.01
    pace: float = 0.02
    grace: float | None = None
    chaos: str | None = None
    chaos_after: float | None = None
    chaos_down: float | None = None
    forged: bool = True
    grpc_method: str | None = None
    master: bool = False
    worker: bool = False
    expect_workers: int = 1
    master_host: str = "127.0.0.1"
    master_port: int = 5557
    master_bind_host: str = "127.0.0.1"
    master_bind_port: int = 5557
    web_host: str = "127.0.0.1"
    web_port: int = 8089
    extra: tuple[str, ...] = field(default_factory=tuple)


def locust_argv(spec: RunSpec, python: str = sys.executable) -> list[str]:
    argv = [python, "-m", "locust", "-f", str(LOCUSTFILE)]
    if spec.worker:
        argv += ["--worker", "--master-host", spec.master_host, "--master-port", str(spec.master_port)]
    else:
        if spec.host:
            argv += ["--host", spec.host]
        argv += ["--users", str(spec.users), "--spawn-rate", str(spec.spawn_rate), "--run-time", f"{spec.run_time}s"]
        if spec.headless:
            argv += ["--headless"]
        else:
            argv += ["--web-host", spec.web_host, "--web-port", str(spec.web_port)]
        if spec.html_path:
            argv += ["--html", spec.html_path]
        if spec.master:
            argv += ["--master", "--expect-workers", str(spec.expect_workers),
                     "--master-bind-host", spec.master_bind_host, "--master-bind-port", str(spec.master_bind_port)]
    if spec.config:
        argv += ["--lane-config", spec.config]
    if spec.admins:
        argv += ["--lane-admin", ",".join(spec.admins)]
    if spec.json_path:
        argv += ["--lane-json", spec.json_path]
    argv += ["--lane-max-error-rate", str(spec.max_error_rate), "--lane-pace", str(spec.pace)]
    if spec.grace is not None:
        argv += ["--lane-grace", str(spec.grace)]
    if spec.chaos:
        argv += ["--lane-chaos", spec.chaos]
        if spec.chaos_after is not None:
            argv += ["--lane-chaos-after", str(spec.chaos_after)]
        if spec.chaos_down is not None:
            argv += ["--lane-chaos-down", str(spec.chaos_down)]
    if not spec.forged:
        argv += ["--lane-no-forged"]
    if spec.grpc_method:
        argv += ["--lane-grpc", spec.grpc_method]
    return argv + list(spec.extra)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    # One SIGINT reaches locust, however often Ctrl-C is pressed: a second one interrupts locust's
    # own graceful shutdown (a traceback, and the HTML/JSON reports are not written).
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return _escalate(proc)
    finally:
        signal.signal(signal.SIGINT, previous)


def _escalate(proc: subprocess.Popen[bytes]) -> int:
    for sig, wait in ((signal.SIGINT, 30.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            break
        proc.send_signal(sig)
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.wait()


def run_locust(spec: RunSpec, argv: Sequence[str] | None = None) -> int:
    """Run locust for *spec* to completion and return its exit code (the lane verdict)."""
    argv = list(argv) if argv is not None else locust_argv(spec)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Its own session: the terminal's Ctrl-C reaches only us, and _stop passes exactly one SIGINT on.
    proc = subprocess.Popen(argv, env=env, start_new_session=True)
    limit = spec.run_time + WATCHDOG_SLACK if spec.headless and not spec.worker else None
    try:
        return proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        print(f"lane loadtest: locust ran {limit:.0f}s, far past --run-time; stopping it", file=sys.stderr)
        _stop(proc)
        return 1
    except KeyboardInterrupt:
        return _stop(proc)
    finally:
        if proc.poll() is None:
            _stop(proc)
