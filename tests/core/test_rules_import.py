"""RE2 is loaded by the first regex rule, not by every proxy: the sidecar's RSS goal (issue 17).

The RE2 library and its module cost ~2.5 MiB of RSS; a config whose rules are exact or prefix
matches (the demo's) must never load it, in a fresh interpreter and in a real running sidecar and
gateway (their ``/proc/PID/maps`` shows whether RE2's shared object was ever mapped). A config
with a regex rule loads it and matches on RE2 as before; a bad regex is still a one-line error at
load time.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.support.processes import free_port, lane_process

REGEX_RULE = """
coloring:
  - name: beta-users
    lane: gray
    match:
      headers:
        - name: User-Agent
          regex: "beta-[0-9]+"
"""

PROBE = """
import sys
from lane.core.config_load import parse_config
from lane.core.rules import RequestView, color
from multidict import CIMultiDict
config = parse_config(sys.stdin.read())
lanes = [color(config.rules, RequestView.of_request(CIMultiDict({"User-Agent": ua})), config.default_lane).lane
         for ua in ("xiaoming", "beta-42", "beta-x")]
print(lanes, "re2" in sys.modules)
"""


def probe(config_text: str) -> str:
    done = subprocess.run([sys.executable, "-c", PROBE], input=config_text, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def demo_text() -> str:
    from lane.core.config_load import demo_config_text

    return demo_config_text()


def test_a_config_without_regex_rules_never_loads_re2() -> None:
    assert probe(demo_text()) == "['gray', 'base', 'base'] False"


def test_a_regex_rule_loads_re2_and_matches_the_whole_value() -> None:
    text = demo_text().replace("\ncoloring:\n", REGEX_RULE, 1)
    assert "beta-[0-9]+" in text
    assert probe(text) == "['gray', 'gray', 'base'] True"


def test_a_bad_regex_is_still_a_one_line_error_at_load(tmp_path: Path) -> None:
    config = tmp_path / "lane.yaml"
    config.write_text(demo_text().replace("exact: xiaoming", 'regex: "(unclosed"', 1))
    done = subprocess.run([sys.executable, "-m", "lane", "check", "--config", str(config)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "regex" in done.stderr, done.stderr


def mapped_re2(pid: int) -> bool:
    return "_re2" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc (Linux)")
def test_a_running_sidecar_and_gateway_on_the_demo_config_never_map_re2(tmp_path: Path) -> None:
    config = tmp_path / "lane.yaml"
    config.write_text(demo_text())
    with lane_process(tmp_path, "gw", "gateway", "--config", str(config), "--listen", "127.0.0.1:0",
                      "--admin", "127.0.0.1:0") as gw:
        for agent in ("xiaoming", "someone"):  # colors both ways (a is down: the answer is lane's own 5xx)
            request = urllib.request.Request(gw.url("gateway") + "/", headers={"User-Agent": agent})
            try:
                urllib.request.urlopen(request, timeout=10).close()
            except urllib.error.HTTPError as answer:
                assert answer.code >= 500
        assert not mapped_re2(gw.popen.pid)
    with lane_process(tmp_path, "sc", "sidecar", "--config", str(config), "--service", "a", "--lane", "base",
                      "--app", f"127.0.0.1:{free_port()}", "--listen", "127.0.0.1:0", "--outbound", "127.0.0.1:0",
                      "--admin", "127.0.0.1:0") as sc:
        assert not mapped_re2(sc.popen.pid)
    regex_config = tmp_path / "regex.yaml"
    regex_config.write_text(demo_text().replace("exact: xiaoming", 'regex: "xiao(ming)+"', 1))
    with lane_process(tmp_path, "sc2", "sidecar", "--config", str(regex_config), "--service", "a", "--lane", "base",
                      "--app", f"127.0.0.1:{free_port()}", "--listen", "127.0.0.1:0", "--outbound", "127.0.0.1:0",
                      "--admin", "127.0.0.1:0") as sc:
        assert mapped_re2(sc.popen.pid)  # the probe can see RE2 when it is there
