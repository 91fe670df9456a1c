"""Optional sections of `bench/compare.py`: other benchmarks that print one JSON object.

``bench/soak.py``, ``bench/propagation.py`` and ``bench/render_scale.py`` (written separately)
each print one JSON object with ``--json``. The comparison runs each one that exists, after its
own subjects are stopped so they do not share the machine, bounded by a timeout, and keeps what
it printed under ``sections`` in its JSON; a missing script is skipped with a note, a failing one
is recorded as such (it does not fail the comparison, whose own checks are about routing).
Also here: the description of the machine the numbers came from.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

from lane.cli.build_info import version_line

__all__ = ["SECTIONS", "machine_info", "run_section"]

HERE: Final = Path(__file__).resolve().parent
SECTIONS: Final = ("soak", "propagation", "render_scale")


def _has_quick(script: Path) -> bool:
    try:
        done = subprocess.run([sys.executable, str(script), "--help"], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        return False
    return "--quick" in done.stdout


def run_section(name: str, timeout: float, *, quick: bool = False) -> dict[str, Any]:
    """``python bench/<name>.py --json`` (plus ``--quick`` when asked and the script has it): its JSON
    object, or a note saying why there is none."""
    script = HERE / f"{name}.py"
    if not script.exists():
        return {"skipped": f"bench/{name}.py does not exist (yet)"}
    argv = [sys.executable, str(script), "--json", *(["--quick"] if quick and _has_quick(script) else [])]
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:  # subprocess.run kills the child before raising
        return {"failed": f"bench/{name}.py --json did not finish within {timeout:g}s"}
    text = done.stdout.strip()
    for candidate in (text, *reversed(text.splitlines())):  # the whole output, else its last JSON line
        try:
            document = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(document, dict):
            return {"argv": argv[1:], "exit_code": done.returncode, "result": document}
    return {"failed": f"bench/{name}.py --json exited {done.returncode} without a JSON object",
            "stderr_tail": done.stderr[-1500:]}


def _git_commit() -> str:
    root = HERE.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(envoy_version: str, wrk_version: str) -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cores": os.cpu_count(), "cpu_model": _cpu_model(), "platform": platform.platform(),
        "python": platform.python_version(), "envoy": envoy_version, "wrk": wrk_version,
        "lane_commit": _git_commit(), "lane_build": version_line(),
        "load_average_at_start": list(load) if load else None,
    }
