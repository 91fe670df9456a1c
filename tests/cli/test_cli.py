"""The `lane` command line as a user runs it: `python -m lane` in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def lane(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lane", *args], check=False, capture_output=True, text=True, timeout=60)


def test_check_describes_the_embedded_demo_config() -> None:
    result = lane("check")
    assert result.returncode == 0, result.stderr
    assert "gray: gray -> base" in result.stdout
    assert "xiaoming: header user-agent exact xiaoming -> gray" in result.stdout
    assert "b (b:80): base=1" in result.stdout


def test_check_rejects_a_broken_file_with_its_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("entry: a\nservices:\n  a: {instances: {base: ['127.0.0.1:1']}}\ncoloring:\n  - lane: nope\n    percentage: {percent: 5}\n")
    result = lane("check", "--config", str(bad))
    assert result.returncode == 2
    assert f"{bad}: coloring[0].lane: unknown lane 'nope'" in result.stderr


def test_check_says_which_services_speak_grpc_and_refuses_an_unknown_protocol(tmp_path: Path) -> None:
    path = tmp_path / "grpc.yaml"
    path.write_text("entry: a\nservices:\n  a: {protocol: grpc, port: 9090, instances: {base: ['127.0.0.1:1']}}\n")
    result = lane("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "a (a:9090, grpc): base=1" in result.stdout
    path.write_text("entry: a\nservices:\n  a: {protocol: h2c, instances: {base: ['127.0.0.1:1']}}\n")
    result = lane("check", "--config", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{path}: services.a.protocol: expected one of http, grpc, got 'h2c'" in result.stderr


def test_unknown_command_is_a_usage_error() -> None:
    result = lane("frobnicate")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_global_option_value_is_not_taken_for_the_command() -> None:
    result = lane("--log-level", "WARNING", "check")
    assert result.returncode == 0, result.stderr
    assert "services (entry a):" in result.stdout


def test_version_is_the_installed_distributions() -> None:
    from importlib.metadata import version

    result = lane("--version")
    # then which build runs: "compiled: no" here unless `make compiled` was run in this checkout
    # (tests/build/test_compiled.py checks both answers on a copy of the tree)
    assert result.returncode == 0 and result.stdout.startswith(f"lane {version('lane')} (compiled: ")
    import lane as package

    assert package.__version__ == version("lane")


def test_log_level_is_accepted_after_the_command_too() -> None:
    result = lane("check", "--log-level", "warning")
    assert result.returncode == 0, result.stderr
    assert "services (entry a):" in result.stdout


def test_check_takes_the_file_positionally_and_refuses_two_different_ones(tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text((REPO / "examples" / "demo.yaml").read_text().replace("entry: a", "entry: b"))
    result = lane("check", str(other))
    assert result.returncode == 0, result.stderr
    assert "services (entry b):" in result.stdout
    same = lane("check", str(other), "--config", str(other))
    assert same.returncode == 0 and same.stdout == result.stdout
    both = lane("check", str(other), "--config", str(REPO / "examples" / "demo.yaml"))
    assert both.returncode == 2 and both.stdout == ""
    demo = str(REPO / "examples" / "demo.yaml")
    expected = f"error: lane check: FILE {str(other)!r} and --config {demo!r} name different configs; give one"
    assert both.stderr.splitlines() == [expected]


def test_every_mesh_subcommand_help_has_a_description() -> None:
    from mesh_config.cli import EXTERNAL

    for name in ("render", "validate", "verify", *EXTERNAL):
        result = lane("mesh", name, "--help")
        assert result.returncode == 0, result.stderr
        usage, description = result.stdout.split("\n\n")[:2]
        assert usage.startswith(f"usage: lane mesh {name}") and not description.startswith(("positional", "options")), \
            result.stdout
