"""The expected path: each way a served path can be wrong gets its own, greppable name."""

from __future__ import annotations

import pytest

from lane.core.config import LaneConfig
from lane.core.config_load import demo_config_text, parse_config
from lane.core.hops import parse_path
from loadtest.expected import RequestVerdict, verify
from loadtest.health import HealthHistory, combine, parse_instances, parse_topology

XIAOMING = ("a@gray;requested=gray, b@base;requested=gray;fallback=no-instance, c@gray;requested=gray, "
            "d@base;requested=gray;fallback=no-instance, c@gray;requested=gray")


@pytest.fixture(scope="module")
def demo() -> LaneConfig:
    return parse_config(demo_config_text(), "demo")


def check(config: LaneConfig, path: str, lane: str | None = "gray", health: HealthHistory | None = None,
          possible: tuple[str, ...] = (), at: float = 100.0) -> RequestVerdict:
    return verify(config, parse_path(path), lane=lane, possible=possible, health=health or HealthHistory(),
                  start=at, end=at + 0.01, grace=1.0)


def messages(v: RequestVerdict) -> list[str]:
    return [f.message for f in v.findings]


def test_demo_path_for_xiaoming_is_right(demo: LaneConfig) -> None:
    v = check(demo, XIAOMING)
    assert v.ok
    assert v.served_path() == "a@gray → b@base → c@gray → d@base → c@gray"
    assert v.expected_path() == v.served_path()


def test_serving_base_where_gray_exists_is_a_misroute(demo: LaneConfig) -> None:
    v = check(demo, "a@base;requested=gray, b@base;requested=gray;fallback=no-instance")
    assert messages(v) == ["misroute a: expected gray, served base"]


def test_untagged_request_on_a_lane_instance_is_a_leak(demo: LaneConfig) -> None:
    v = check(demo, "a@base;requested=base, b@base;requested=base, c@gray;requested=gray", lane="base")
    assert messages(v) == ["leak: base request served by c@gray"]
    assert [f.kind for f in v.findings] == ["leak"]


def test_untagged_request_carried_under_a_lane_tag_is_a_leak(demo: LaneConfig) -> None:
    v = check(demo, "a@base;requested=base, b@base;requested=gray;fallback=no-instance", lane="base")
    assert messages(v) == ["leak: base request carried as gray at b"]


def test_hop_outside_the_chain_is_impure() -> None:
    config = parse_config("""
lanes: {gray: {}, blue: {}}
entry: a
services: {a: {instances: {base: ["127.0.0.1:1"], gray: ["127.0.0.1:2"], blue: ["127.0.0.1:3"]}}}
""")
    v = check(config, "a@blue;requested=gray")
    assert messages(v) == ["impure: gray request served by a@blue"] and v.findings[0].kind == "impure"


def test_lane_dropped_mid_chain_is_lane_lost(demo: LaneConfig) -> None:
    v = check(demo, "a@gray;requested=gray, b@base;requested=gray;fallback=no-instance, c@base;requested=base")
    assert messages(v) == ["lane lost at c: requested base, expected gray"]


def test_entry_colored_wrong_is_miscolored(demo: LaneConfig) -> None:
    v = check(demo, "a@base;requested=base")
    assert messages(v) == ["miscolored: expected gray, colored base"]


def test_missing_hop_record_is_named(demo: LaneConfig) -> None:
    assert messages(check(demo, "")) == ["no hop record (x-lane-path missing)"]


def test_unknown_service_in_the_record_is_named(demo: LaneConfig) -> None:
    assert messages(check(demo, "zz@base;requested=gray")) == ["unknown service zz in path"]


def test_health_fallback_is_right_only_when_the_lane_was_seen_unhealthy_near_the_request(demo: LaneConfig) -> None:
    path = "a@gray;requested=gray, b@base;requested=gray;fallback=no-instance, c@base;requested=gray;fallback=unhealthy"
    health = HealthHistory()
    v = check(demo, path, health=health)
    assert messages(v) == ["misroute c: expected gray, served base (unhealthy, but c@gray was healthy)"]
    assert v.health_dependent and v.findings[0].kind == "unjustified-fallback"
    health.observe("admin", 100.5, {("c", "gray"): False})
    assert check(demo, path, health=health).ok
    assert check(demo, path, health=health, at=90.0).ok is False  # long before the outage: still wrong
    health.observe("admin", 102.0, {("c", "gray"): True})
    assert check(demo, path, health=health, at=102.5).ok  # just after recovery, within the grace
    assert not check(demo, path, health=health, at=110.0).ok


def test_connect_failed_counts_as_a_health_reason(demo: LaneConfig) -> None:
    health = HealthHistory()
    health.mark("chaos", ("a", "gray"), 99.0, healthy=False)
    assert check(demo, "a@base;requested=gray;fallback=connect-failed", health=health).ok


def test_no_instance_claimed_where_the_lane_has_instances_is_a_bad_fallback(demo: LaneConfig) -> None:
    v = check(demo, "a@base;requested=gray;fallback=no-instance")
    assert messages(v) == ["bad fallback at a: no-instance, but a has gray"]
    assert not v.health_dependent


def test_health_reason_where_the_lane_has_no_instance_is_a_bad_fallback(demo: LaneConfig) -> None:
    v = check(demo, "a@gray;requested=gray, b@base;requested=gray;fallback=unhealthy")
    assert messages(v) == ["bad fallback at b: reason unhealthy, but b has no gray instance"]


def test_random_share_takes_the_entry_lane_and_checks_it_is_possible(demo: LaneConfig) -> None:
    assert check(demo, "a@base;requested=base", lane=None, possible=("gray", "base")).ok
    v = check(demo, "a@base;requested=base", lane=None, possible=("gray",))
    assert messages(v) == ["miscolored: expected one of gray, colored base"]


def test_lanes_only_known_from_live_state_count_for_selector_services() -> None:
    config = parse_config("""
lanes: {gray: {}}
entry: a
services: {a: {selector: {app: a}}}
""")
    health = HealthHistory()
    assert messages(check(config, "a@gray;requested=gray", health=health)) == [
        "misroute a: expected no instance (503), served gray"
    ]
    health.observe("admin", 1.0, {("a", "gray"): True, ("a", "base"): True})
    assert check(config, "a@gray;requested=gray", health=health).ok


def test_strict_lane_never_accepts_a_fallback() -> None:
    config = parse_config("""
lanes: {gray: {strict: true}}
entry: a
services: {a: {instances: {base: ["127.0.0.1:1"], gray: ["127.0.0.1:2"]}}}
""")
    v = check(config, "a@base;requested=gray;fallback=unhealthy")
    assert [f.kind for f in v.findings] == ["impure"]


def test_admin_documents_parse_and_combine_pessimistically() -> None:
    one = parse_instances({"services": {"c": {"gray": [{"instance": "x", "healthy": False}],
                                              "base": [{"instance": "y", "healthy": True}]}}})
    two = parse_topology({"instances": {"c": {"gray": [{"instance": "x", "up": True}], "base": ["y"]}}})
    assert one == {("c", "gray"): False, ("c", "base"): True}
    assert two == {("c", "gray"): True, ("c", "base"): True}
    assert combine([one, two]) == {("c", "gray"): False, ("c", "base"): True}
    with pytest.raises(ValueError, match="/lane/instances"):
        parse_instances({"nope": 1})
    with pytest.raises(ValueError, match="/demo/topology"):
        parse_topology([])


def test_health_history_intervals_open_close_and_stay_open_until_told() -> None:
    h = HealthHistory()
    h.observe("admin", 10.0, {("c", "gray"): False})
    h.observe("admin", 11.0, {("c", "gray"): False})
    assert h.unhealthy_near(("c", "gray"), 50.0, 50.0, 0.5)  # still open: unhealthy as far as we know
    h.observe("admin", 12.0, {("c", "gray"): True})
    assert h.unhealthy_near(("c", "gray"), 12.4, 12.4, 0.5)
    assert not h.unhealthy_near(("c", "gray"), 13.0, 13.0, 0.5)
    assert not h.unhealthy_near(("c", "gray"), 9.0, 9.2, 0.5)
    assert h.known_lanes("c") == {"gray"} and h.unhealthy_now() == []
