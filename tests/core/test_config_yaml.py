"""Hostile config text: the loader only ever returns a config or raises `ConfigError`, never crashes.

A non-scalar key, nesting hundreds deep and a 5,000-digit integer used to escape as TypeError,
RecursionError and ValueError: a traceback and exit 1 from `lane check`, a gateway dead at start-up,
a 500 from ``POST /lane/reload``. The CLI and the reload endpoint run for real (subprocesses, a
gateway process on 127.0.0.1); the loader is fuzzed with hypothesis, on libyaml and on the pure-Python
parser that the loader falls back to.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lane.core import config_yaml
from lane.core.config import LaneConfig
from lane.core.config_load import parse_config
from lane.core.errors import ConfigError
from tests.support.processes import REPO, lane_process

VALID = """entry: a
lanes: {gray: {}}
proxy: {retries: 1, trace_headers: [traceparent]}
coloring:
  - {lane: gray, match: {headers: [{name: x-user, exact: "1"}]}}
services:
  a:
    instances:
      base: ["127.0.0.1:9001"]
"""

HOSTILE = {
    "a mapping as a key": "{a: 1}: x\n" + VALID,
    "a list as a key": VALID + "[1, 2]: x\n",
    "flow mappings 250 deep": VALID + "x: " + "{a: " * 250 + "1" + "}" * 250 + "\n",
    "block mappings 250 deep": VALID + "x:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(250)),
    "lists 2,000 deep (past libyaml's own limit)": VALID + "x: " + "[" * 2000 + "]" * 2000 + "\n",
    "a 5,000-digit integer": VALID.replace("retries: 1", "retries: " + "9" * 5000),
    "a 5,000-digit hex integer": VALID.replace("retries: 1", "retries: 0x" + "f" * 5000),
    "a date that is not one": VALID + "x: 2024-13-45\n",
    "an alias loop": VALID + "x: &loop [*loop]\n",
    "a duplicate key (PyYAML keeps the last)": VALID + "entry: b\n",
    "a syntax error": VALID + "x: [unclosed\n",
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_text_is_a_config_error_naming_the_line(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(HOSTILE[name], "lane.yaml")
    message = str(info.value)
    assert message.startswith("lane.yaml: line ") and "\n" not in message, message
    assert len(message) < 400


def test_the_pure_python_fallback_refuses_deep_nesting_too() -> None:
    """The pure-Python composer recurses: it must stop at the depth limit, not at Python's recursion limit."""
    for text in (HOSTILE["block mappings 250 deep"], "x: " + "[" * 5000 + "]" * 5000):
        with pytest.raises(yaml.YAMLError, match=f"nested deeper than {config_yaml.MAX_DEPTH} levels"):
            config_yaml._load_with(config_yaml._StrictLoader, text)


def test_nesting_up_to_the_limit_and_shared_anchors_still_load() -> None:
    depth = config_yaml.MAX_DEPTH
    for loader in (config_yaml._FastLoader, config_yaml._StrictLoader):  # the same limit on both
        assert config_yaml._load_with(loader, "[" * depth + "1" + "]" * depth) is not None
        with pytest.raises(yaml.YAMLError, match="nested deeper"):
            config_yaml._load_with(loader, "[" * (depth + 1) + "1" + "]" * (depth + 1))
    shared = "a: &a [1, 2]\n" + "".join(f"b{i}: &b{i} [*{'a' if i == 0 else f'b{i - 1}'}, *{'a' if i == 0 else f'b{i - 1}'}]\n"
                                        for i in range(30))
    assert len(config_yaml.load_yaml(shared)) == 31  # 2**30 paths, each node looked at a few times


# Pieces of YAML and of this config, glued at random: syntax, flow and block nesting, anchors and
# aliases, tags, keys of every kind, huge numbers, and the config's own keys so deep paths are reached.
TOKENS = [
    "{", "}", "[", "]", ": ", ":", ", ", "- ", "? ", "\n", "\n  ", "\n    ", "  ", "'", '"', "#", "&a ", "*a",
    "!!int ", "!!str ", "!!float ", "!!binary ", "!!timestamp ", "!!set ", "!!map ", "!!seq ", "!!python/name:x ",
    "<<: ", "~", "null", "true", "0x", "0o", "1e999", "-.inf", ".nan", "1:20:30", "2024-13-45", "9" * 5000,
    "a", "base", "gray", "entry", "services", "instances", "lanes", "proxy", "coloring", "match", "headers",
    "name", "exact", "regex", "percentage", "percent", "fallback", "trusted_cidrs", "10.0.0.0/99", "127.0.0.1:9001",
    "retries", "tag", "mesh", "---", "...", "%YAML 1.1\n", "\t", "\x00", "\ufeff", "é",
]


@st.composite
def yaml_texts(draw: st.DrawFn) -> str:
    pieces = draw(st.lists(st.sampled_from(TOKENS), max_size=60))
    text = "".join(pieces)
    if draw(st.booleans()):  # splice into a valid config, so the checks past the YAML are reached too
        at = draw(st.integers(0, len(VALID)))
        text = VALID[:at] + text + VALID[at:]
    if draw(st.booleans()):
        depth = draw(st.integers(0, 400))
        text += "x: " + "[" * depth + draw(st.sampled_from(["", "{a: ", "1"])) + "]" * depth
    return text


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(yaml_texts(), st.text(max_size=300)))
def test_the_loader_only_returns_a_config_or_raises_config_error(text: str) -> None:
    try:
        config = parse_config(text, "fuzz.yaml")
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("fuzz.yaml")
    else:
        assert isinstance(config, LaneConfig)
    try:  # the fallback parser alone (what runs when libyaml refuses, or is missing)
        config_yaml._load_with(config_yaml._StrictLoader, text)
    except yaml.YAMLError:
        pass


def lane(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lane", *args], check=False, capture_output=True, text=True,
                          timeout=60, cwd=REPO)


@pytest.mark.parametrize("name", ["a mapping as a key", "flow mappings 250 deep", "a 5,000-digit integer",
                                  "a duplicate key (PyYAML keeps the last)", "a syntax error"])
def test_lane_check_and_the_gateway_exit_2_with_one_line(tmp_path: Path, name: str) -> None:
    config = tmp_path / "lane.yaml"
    config.write_text(HOSTILE[name])
    done = lane("check", "--config", str(config))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert done.stderr.count("\n") == 1 and f"{config}: line " in done.stderr, done.stderr
    done = lane("gateway", "--config", str(config), "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"{config}: line " in done.stderr


async def test_reload_refuses_hostile_text_with_400_and_keeps_serving(tmp_path: Path) -> None:
    config = tmp_path / "lane.yaml"
    config.write_text(VALID)
    with lane_process(tmp_path, "gw", "gateway", "--config", str(config), "--listen", "127.0.0.1:0",
                      "--admin", "127.0.0.1:0") as gw:
        async with aiohttp.ClientSession() as client:
            for name in ("a mapping as a key", "block mappings 250 deep", "a 5,000-digit integer"):
                config.write_text(HOSTILE[name])
                async with client.post(gw.url("admin") + "/lane/reload") as resp:
                    message = (await resp.json())["message"]
                    assert resp.status == 400, (name, message)
                    assert "keeping the previous config" in message and f"{config}: line " in message
            config.write_text(VALID.replace("x-user", "x-other"))
            async with client.post(gw.url("admin") + "/lane/reload") as resp:
                assert resp.status == 200  # the gateway lived through all of it
        assert gw.popen.poll() is None
    assert "Traceback" not in gw.log_text()
