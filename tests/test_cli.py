"""The `lane` command line as a user runs it: `python -m lane` in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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


def test_unknown_command_is_a_usage_error() -> None:
    result = lane("frobnicate")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_global_option_value_is_not_taken_for_the_command() -> None:
    result = lane("--log-level", "WARNING", "check")
    assert result.returncode == 0, result.stderr
    assert "services (entry a):" in result.stdout
