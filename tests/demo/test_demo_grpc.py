"""`lane demo` carries gRPC: one ``lane demo-grpc`` call travels the same lane as ``curl``.

The real demo (apps, sidecars, gateway as processes) and the real client command, a grpcio client
dialing the gateway's port; the path comes from the gateway's ``x-lane-path`` response metadata.
Without grpcio (simulated by a ``grpc`` package on the path that raises ModuleNotFoundError, as
Python does when it is not installed: this venv has grpcio) the demo runs HTTP only and says how to
get gRPC.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from tests.support.processes import REPO, DemoRun, free_port, lane_demo

pytestmark = pytest.mark.timeout(240)

GRAY_PATH: Final = ["a@gray", "b@base", "c@gray", "d@base", "c@gray"]
BASE_PATH: Final = ["a@base", "b@base", "c@base", "d@base", "c@base"]


def demo_grpc(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lane", "demo-grpc", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env=env, check=False)


def grpc_call(demo: DemoRun, *args: str) -> dict[str, Any]:
    done = demo_grpc("--gateway", demo.gateway.removeprefix("http://"), *args)
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def http_call(demo: DemoRun, agent: str) -> dict[str, Any]:
    request = urllib.request.Request(demo.gateway + "/", headers={"User-Agent": agent})
    with urllib.request.urlopen(request, timeout=20) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
        return answer


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    with lane_demo(tmp_path_factory.mktemp("demo-grpc"), "--port", "0") as run:
        yield run


def test_the_banner_prints_the_one_line_grpc_call(demo: DemoRun) -> None:
    banner = demo.log.read_text(errors="replace")
    gateway = demo.gateway.removeprefix("http://")
    assert f"  lane demo-grpc --gateway {gateway} -A xiaoming " in banner
    assert "grpcio is not installed" not in banner


def test_xiaomings_grpc_call_takes_the_gray_lane_falls_back_and_returns_like_curl(demo: DemoRun) -> None:
    answer = grpc_call(demo, "-A", "xiaoming")
    assert answer["path"] == GRAY_PATH == http_call(demo, "xiaoming")["path"]
    b_hop, d_hop = answer["hops"][1], answer["hops"][3]
    assert (b_hop["requested"], b_hop["fallback"]) == ("gray", "no-instance")
    assert (d_hop["requested"], d_hop["fallback"]) == ("gray", "no-instance")
    assert answer["hops"][0]["instance"] == demo.ready["instances"]["a"]["gray"][0]
    assert answer["hops"][2]["instance"] == demo.ready["instances"]["c"]["gray"][0]
    # the gRPC apps agree with the data plane: each ran where the record says, c behind d in gray too
    # (d's app forwards only x-request-id and no interceptor: its sidecar recovered the lane)
    assert (answer["service"], answer["lane"]) == ("a", "gray")
    b, d = (call["answer"] for call in answer["calls"])
    assert [(b["service"], b["lane"]), (d["service"], d["lane"])] == [("b", "base"), ("d", "base")]
    assert [c["answer"]["lane"] for c in (b["calls"][0], d["calls"][0])] == ["gray", "gray"]


def test_a_plain_grpc_call_stays_on_base(demo: DemoRun) -> None:
    answer = grpc_call(demo)  # grpc's own user agent
    assert answer["path"] == BASE_PATH == http_call(demo, "curl/8")["path"]
    assert all(hop["fallback"] is None for hop in answer["hops"])
    assert grpc_call(demo, "-A", "xiaomi")["path"] == BASE_PATH


def test_the_client_takes_the_gateway_url_the_banner_prints(demo: DemoRun) -> None:
    assert grpc_call(demo, "-A", "xiaoming")["path"] == GRAY_PATH  # host:port, as above
    done = demo_grpc("--gateway", demo.gateway + "/", "-A", "xiaoming")
    assert done.returncode == 0 and json.loads(done.stdout)["path"] == GRAY_PATH


def test_bad_gateway_is_one_line_exit_2_and_nothing_listening_is_one_line_exit_1() -> None:
    bad = demo_grpc("--gateway", "nowhere")
    assert bad.returncode == 2 and "expected host:port" in bad.stderr and "Traceback" not in bad.stderr
    down = demo_grpc("--gateway", f"127.0.0.1:{free_port()}", "--timeout", "5")
    assert down.returncode == 1 and "Traceback" not in down.stderr
    assert down.stderr.startswith("lane demo-grpc: 127.0.0.1:") and "UNAVAILABLE" in down.stderr
    assert len(down.stderr.strip().splitlines()) == 1


def _without_grpcio(tmp_path: Path) -> dict[str, str]:
    """This environment with ``import grpc`` failing as it does when grpcio is not installed."""
    shadow = tmp_path / "no-grpcio" / "grpc"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ModuleNotFoundError("No module named \'grpc\'", name="grpc")\n')
    path = os.pathsep.join(p for p in (str(shadow.parent), str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def test_without_grpcio_the_demo_runs_http_and_says_how_to_get_grpc(tmp_path: Path) -> None:
    env = _without_grpcio(tmp_path)
    with lane_demo(tmp_path, env=env) as run:
        banner = run.log.read_text(errors="replace")
        assert "lane demo-grpc" not in banner
        missing = [line for line in banner.splitlines() if "grpcio is not installed" in line]
        assert missing == ["gRPC: not shown, grpcio is not installed (pip install 'lane[grpc]', then restart the demo)"]
        assert http_call(run, "xiaoming")["path"] == GRAY_PATH
        done = demo_grpc("--gateway", run.gateway, "-A", "xiaoming", env=env)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert "pip install 'lane[proxy,grpc]'" in done.stderr and len(done.stderr.strip().splitlines()) == 1
