"""No silent demo outside `lane demo`: `lane gateway` and `lane sidecar` without a config refuse to
start and say what they need (a proxy quietly serving the demo's a -> b -> c on 127.0.0.1 in a real
deployment routes nothing); ``--demo`` asks for the embedded demo config explicitly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import lane_process

ROOT = Path(__file__).resolve().parents[2]
ENV = {k: v for k, v in os.environ.items() if k not in ("LANE_CONFIG", "LANE_SERVICE", "LANE_LANE")}


@pytest.mark.parametrize("argv", [["gateway"], ["sidecar", "--service", "a", "--lane", "base", "--app",
                                                "127.0.0.1:9"]])
def test_a_proxy_without_a_config_refuses_and_names_what_it_needs(argv: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "lane", *argv, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
                          check=False, capture_output=True, text=True, timeout=60, cwd=ROOT, env=ENV)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"lane {argv[0]}: needs --config FILE (or $LANE_CONFIG), the lane config it serves; --demo serves " \
           "the embedded demo config" in done.stderr


def test_the_gateway_serves_the_demo_when_asked_with_demo(tmp_path: Path) -> None:
    assert "LANE_CONFIG" not in os.environ
    with lane_process(tmp_path, "gw", "gateway", "--demo", "--listen", "127.0.0.1:0",
                      "--admin", "127.0.0.1:0") as gateway:
        assert gateway.popen.poll() is None  # ready: it serves the embedded demo config
