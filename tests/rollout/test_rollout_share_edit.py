"""`rollout.share_edit`: the lane's share set in the config file in place, validated, atomically."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from lane.core.config_load import parse_config
from rollout.errors import RolloutInputError
from rollout.share_edit import find_share_rule, with_share, write_share

REPO = Path(__file__).resolve().parents[2]

CONFIG = """\
# a header comment that must survive
tag: {default_lane: base}
lanes:
  gray: {}
entry: a
coloring:
  - name: testers   # testers always
    lane: gray
    match: {headers: [{name: User-Agent, exact: xiaoming}]}
  - name: share
    lane: gray
    percentage:
      percent:   5    # odd spacing kept
      key: {header: x-user-id}
services:
  a: {instances: {base: ["127.0.0.1:1"], gray: ["127.0.0.1:2"]}}
"""


def test_only_the_number_changes_and_comments_and_spacing_stay() -> None:
    rule = find_share_rule(parse_config(CONFIG), "gray")
    assert (rule.name, rule.index, rule.percent, rule.sticky) == ("share", 1, 5, True)
    edited = with_share(CONFIG, "c.yaml", rule, 25)
    assert edited == CONFIG.replace("percent:   5    #", "percent:   25    #")
    after = parse_config(edited).rules[1].percentage
    assert after is not None and after.percent == 25


def test_a_flow_style_percentage_is_edited_too() -> None:
    text = CONFIG.replace(
        "    percentage:\n      percent:   5    # odd spacing kept\n      key: {header: x-user-id}\n",
        "    percentage: {percent: 5, key: {header: x-user-id}}\n",
    )
    edited = with_share(text, "c.yaml", find_share_rule(parse_config(text), "gray"), 100)
    assert "percentage: {percent: 100, key: {header: x-user-id}}" in edited


def test_a_percent_shared_through_an_anchor_is_refused() -> None:
    text = CONFIG.replace("percent:   5", "percent: &p 5").replace(
        "services:", "  - name: other\n    lane: gray\n    percentage: {percent: *p}\nservices:"
    )
    with pytest.raises(RolloutInputError, match="rollout with --rule|several percentage rules"):
        find_share_rule(parse_config(text), "gray")
    rule = find_share_rule(parse_config(text), "gray", "share")
    with pytest.raises(RolloutInputError, match="shared with other rules"):
        with_share(text, "c.yaml", rule, 50)


@pytest.mark.parametrize(
    ("lane", "rule", "message"),
    [
        ("base", None, "not a lane"),
        ("blue", None, "not a lane"),
        ("gray", "nope", "no coloring rule named 'nope'"),
        ("gray", "testers", "no coloring rule named 'testers'"),  # a rule without a percentage
    ],
)
def test_a_lane_without_its_percentage_rule_is_refused(lane: str, rule: str | None, message: str) -> None:
    with pytest.raises(RolloutInputError, match=message):
        find_share_rule(parse_config(CONFIG), lane, rule)


def test_the_file_is_replaced_atomically_with_its_mode_kept(tmp_path: Path) -> None:
    path = tmp_path / "lane.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    os.chmod(path, 0o640)
    inode = path.stat().st_ino
    rule = write_share(path, "gray", None, 50)
    assert rule.percent == 50
    assert path.read_text(encoding="utf-8") == CONFIG.replace("percent:   5 ", "percent:   50 ")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert path.stat().st_ino != inode  # a new file renamed over the old one, not rewritten in place
    assert [p.name for p in tmp_path.iterdir()] == ["lane.yaml"]  # no temporary file left behind


def test_a_file_that_no_longer_loads_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "lane.yaml"
    broken = CONFIG.replace("entry: a", "entry: nowhere")
    path.write_text(broken, encoding="utf-8")
    with pytest.raises(RolloutInputError, match="entry"):
        write_share(path, "gray", None, 50)
    assert path.read_text(encoding="utf-8") == broken


def test_the_shipped_rollout_example_has_a_sticky_share_at_0() -> None:
    text = (REPO / "examples" / "rollout.yaml").read_text(encoding="utf-8")
    rule = find_share_rule(parse_config(text), "gray")
    assert rule.percent == 0 and rule.sticky
    assert with_share(text, "rollout.yaml", rule, 1).count("\n") == text.count("\n")
