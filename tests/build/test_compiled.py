"""The compiled build (`make compiled`, ``LANE_COMPILE=1``): mypyc builds the hot path, real proxies run it.

The build writes extension modules beside the sources (in place), so it runs on a copy of the tree in a
temporary directory, never on the checkout the rest of the suite imports. Then a real gateway and real
sidecars are started from that copy (cwd and PYTHONPATH on it) and carry gray and base requests over
loopback; each process's memory map must show the copy's compiled handler and mypyc's shared library,
so a silent fall-back to the ``.py`` files fails here. The compile is the cost (60-80 s of gcc on two cores).

A missing compiler, missing Python headers or a missing mypyc is a one-line failure, not a skip: the
compiled build is part of what `make test` checks (gcc is on the CI image; ``pip install 'lane[compiled]'``).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from importlib.machinery import EXTENSION_SUFFIXES
from importlib.util import find_spec
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.support.processes import REPO, LaneProcess, free_port, lane_process, serve_app, stop_process

pytestmark = pytest.mark.timeout(900)  # the compile alone is ~80 s on two idle cores

EXTENSION: str = EXTENSION_SUFFIXES[0]  # .cpython-311-x86_64-linux-gnu.so: what this interpreter loads first


def _listed_modules() -> list[str]:
    """setup.py's COMPILED, read from its source (running setup.py would run setuptools)."""
    for node in ast.parse((REPO / "setup.py").read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["COMPILED"]:
            return [path.removesuffix(".py").replace("/", ".") for path in ast.literal_eval(node.value)]
    raise AssertionError("setup.py has no COMPILED list")


def _require_toolchain() -> None:
    """What `make compiled` needs, each missing piece named in one line."""
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "gcc").split()[0]
    if shutil.which(compiler) is None:
        pytest.fail(f"the compiled build needs a C compiler ({compiler}): apt-get install gcc", pytrace=False)
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.exists():
        pytest.fail(f"the compiled build needs the Python headers ({headers}): apt-get install python3-dev",
                    pytrace=False)
    if find_spec("mypyc") is None:
        pytest.fail("the compiled build needs mypyc: pip install 'lane[compiled]'", pytrace=False)


@dataclass(frozen=True)
class Built:
    tree: Path
    seconds: float
    version_before: str  # `lane --version` of the copy before the build


def _lane(tree: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lane", *args], cwd=tree, check=False, capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(tree)}, text=True, timeout=60)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    _require_toolchain()
    tree = tmp_path_factory.mktemp("compiled")
    shutil.copytree(REPO / "lane", tree / "lane", ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c"))
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, tree / name)
    before = _lane(tree, "--version").stdout.strip()
    started = time.monotonic()
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tree, check=False,
                           env={**os.environ, "LANE_COMPILE": "1"}, capture_output=True, text=True,
                           timeout=840)
    if build.returncode != 0:
        errors = [line for line in (build.stdout + build.stderr).splitlines() if "error" in line.lower()]
        first = (errors or ["(no error line)"])[0]
        pytest.fail(f"LANE_COMPILE=1 setup.py build_ext failed: {first}", pytrace=False)
    return Built(tree, time.monotonic() - started, before)


def test_every_listed_module_is_imported_from_its_extension_and_version_says_so(built: Built) -> None:
    modules = _listed_modules()
    probe = ("import importlib, json, sys; "
             "print(json.dumps({m: importlib.import_module(m).__file__ for m in sys.argv[1:]}))")
    result = subprocess.run([sys.executable, "-c", probe, *modules], cwd=built.tree, check=False,
                            env={**os.environ, "PYTHONPATH": str(built.tree)}, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    files = json.loads(result.stdout)
    assert {m: f for m, f in files.items() if not f.endswith(EXTENSION)} == {}
    assert all(f.startswith(str(built.tree)) for f in files.values())
    assert built.version_before.endswith("(compiled: no)")
    assert _lane(built.tree, "--version").stdout.strip().endswith(f"(compiled: yes, {len(modules)} modules)")
    print(f"compiled {len(modules)} modules in {built.seconds:.0f} s")


CONFIG = """
lanes: {{gray: {{}}}}
entry: a
coloring:
  - {{name: xiaoming-gray, lane: gray, match: {{headers: [{{name: user-agent, exact: xiaoming}}]}}}}
services:
  a: {{instances: {{base: ["127.0.0.1:{a_base}"]}}}}
  b: {{instances: {{base: ["127.0.0.1:{b_base}"], gray: ["127.0.0.1:{b_gray}"]}}}}
"""
OUTBOUND = web.AppKey("outbound", str)
NAME = web.AppKey("name", str)


async def _app_a(request: web.Request) -> web.Response:
    """Sends its request body on to b through its sidecar's outbound listener, with only x-request-id."""
    body = await request.read()
    async with aiohttp.ClientSession() as session:
        async with session.post("http://b/echo", data=body, proxy=request.app[OUTBOUND],
                                headers={"x-request-id": request.headers["x-request-id"]}) as resp:
            b = await resp.json() if resp.status == 200 else await resp.text()
            return web.json_response({"a_tag": request.headers.get("x-mse-tag"), "b_status": resp.status,
                                      "b": b, "b_path": resp.headers.get("x-lane-path")})


async def _app_b(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({"instance": request.app[NAME], "tag": request.headers.get("x-mse-tag"),
                              "sha256": hashlib.sha256(body).hexdigest()})


def _mapped(process: LaneProcess) -> set[str]:
    """The files the running process has mapped: a loaded extension module is one of them."""
    maps = Path(f"/proc/{process.popen.pid}/maps").read_text()
    return {line.split(maxsplit=5)[5] for line in maps.splitlines() if len(line.split(maxsplit=5)) == 6}


@pytest.fixture
def processes() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


async def test_compiled_gateway_and_sidecars_keep_gray_and_base_apart_and_fail_over(
    built: Built, tmp_path: Path, processes: ExitStack
) -> None:
    tree = built.tree
    outbound_a, a_base, b_base, b_gray = free_port(), free_port(), free_port(), free_port()
    app_a = web.Application()
    app_a[OUTBOUND] = f"http://127.0.0.1:{outbound_a}"
    app_a.router.add_route("*", "/{tail:.*}", _app_a)
    apps_b = {}
    for name in ("b-base", "b-gray"):
        apps_b[name] = web.Application()
        apps_b[name][NAME] = name
        apps_b[name].router.add_post("/echo", _app_b)
    config = tmp_path / "lane.yaml"
    config.write_text(CONFIG.format(a_base=a_base, b_base=b_base, b_gray=b_gray))
    env = {"PYTHONPATH": str(tree)}
    async with serve_app(app_a) as a_port, serve_app(apps_b["b-base"]) as b_base_app, \
            serve_app(apps_b["b-gray"]) as b_gray_app:
        def sidecar(name: str, service: str, lane: str, app: int, listen: int, outbound: int) -> LaneProcess:
            return processes.enter_context(lane_process(
                tmp_path, name, "sidecar", "--config", str(config), "--service", service, "--lane", lane,
                "--app", f"127.0.0.1:{app}", "--listen", f"127.0.0.1:{listen}",
                "--outbound", f"127.0.0.1:{outbound}", "--admin", "127.0.0.1:0", env=env, cwd=tree))

        started = [
            sidecar("sidecar-a", "a", "base", a_port, a_base, outbound_a),
            sidecar("sidecar-b-base", "b", "base", b_base_app, b_base, free_port()),
            sidecar("sidecar-b-gray", "b", "gray", b_gray_app, b_gray, free_port()),
        ]
        gateway = processes.enter_context(lane_process(
            tmp_path, "gateway", "gateway", "--config", str(config), "--listen", "127.0.0.1:0",
            "--admin", "127.0.0.1:0", env=env, cwd=tree))
        body = os.urandom(200_000)  # larger than one read: streamed through four compiled relays
        digest = hashlib.sha256(body).hexdigest()
        order = gateway.url("gateway") + "/order"
        async with aiohttp.ClientSession() as client:
            for i in range(10):  # keep-alive connections and the sidecar's trace cache reused
                for lane, agent in (("gray", "xiaoming"), ("base", "curl/8")):
                    headers = {"User-Agent": agent, "x-request-id": f"compiled-{lane}-{i}"}
                    async with client.post(order, data=body, headers=headers) as resp:
                        assert resp.status == 200, await resp.text()
                        answer = await resp.json()
                        path = resp.headers["x-lane-path"]
                    assert answer["a_tag"] == lane and answer["b_status"] == 200
                    assert answer["b"] == {"instance": f"b-{lane}", "tag": lane, "sha256": digest}
                    if lane == "gray":  # a has no gray instance: base serves it, the lane goes on to b
                        assert path.startswith("a@base;requested=gray;fallback=no-instance"), path
                        assert answer["b_path"].startswith("b@gray;requested=gray"), answer["b_path"]
                    else:
                        assert path.startswith("a@base;requested=base"), path
                        assert answer["b_path"].startswith("b@base;requested=base"), answer["b_path"]

            # After traffic (some modules load on the first request): the handler is imported from uncompiled
            # code (main.py), so through its extension module; what it imports from the list is initialised
            # inside mypyc's one shared library, which every process maps.
            for process, handler in ((gateway, "gateway"), *((p, "sidecar") for p in started)):
                mapped = _mapped(process)
                assert str(tree / "lane" / handler / f"handler{EXTENSION}") in mapped, process.name
                assert str(tree / f"lane__mypyc{EXTENSION}") in mapped, process.name
                # and nothing of lane's own from this checkout (its .venv, inside it in CI, maps libraries)
                assert not [path for path in mapped if path.endswith(".so") and (
                    path.startswith(str(REPO / "lane")) or Path(path).parent == REPO)]

            # The failure paths (exceptions raised and caught across compiled modules): b's gray instance
            # down means base serves, and the lane goes on; both down is the caller's 502, not a 500.
            headers = {"User-Agent": "xiaoming", "x-request-id": "compiled-gray-down"}
            assert stop_process(started[2].popen) == 0
            async with client.post(order, data=body, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                answer = await resp.json()
            assert answer["b"] == {"instance": "b-base", "tag": "gray", "sha256": digest}
            assert answer["b_path"].startswith("b@base;requested=gray;fallback=connect-failed"), answer
            assert stop_process(started[1].popen) == 0
            headers["x-request-id"] = "compiled-all-down"
            async with client.post(order, data=body, headers=headers) as resp:
                assert resp.status == 200, await resp.text()  # app a answers; its call to b failed
                answer = await resp.json()
            assert answer["b_status"] == 502, answer
