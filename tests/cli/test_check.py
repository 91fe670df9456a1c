"""``lane check`` says what a config means and warns about what it probably did not mean: a strict
lane's ignored fallback, a service without a default-lane instance, a service with no lanes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lane.cli.check import warnings
from lane.core.config_load import parse_config

ROOT = Path(__file__).resolve().parents[2]

CONFIG = """
lanes:
  gray: {}
  frozen: {strict: true, fallback: gray}
  hotfix: {strict: true}
entry: a
services:
  a: {instances: {base: ["127.0.0.1:1"], gray: ["127.0.0.1:2"]}}
  b: {instances: {gray: ["127.0.0.1:3"]}}
  c: {selector: {app: c}}
"""


def test_each_surprise_gets_one_warning_naming_its_path() -> None:
    assert warnings(parse_config(CONFIG, "w.yaml")) == [
        "lanes.frozen: strict, so its fallback 'gray' is ignored (it answers 503 where it has no instance)",
        "services.b: no base instance: untagged requests to it (and every lane falling back to base) answer 503",
        ("services.c: declares no lanes (selector only): `lane mesh render` without --from-cluster routes every "
         "request to it to 503; use --from-cluster or `lane mesh sync`"),
    ]


def test_the_demo_config_has_no_warnings() -> None:
    result = subprocess.run([sys.executable, "-m", "lane", "check"], check=False, capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert result.returncode == 0 and result.stderr == ""


def test_warnings_go_to_stderr_and_the_exit_code_stays_0(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(CONFIG)
    result = subprocess.run([sys.executable, "-m", "lane", "check", "--config", str(path)], check=False,
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0 and "services (entry a):" in result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 3 and all(line.startswith(f"warning: {path}: ") for line in lines)
