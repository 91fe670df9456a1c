"""Lane values on the wire (lane/core/tags.py): DNS labels only; anything else is absent, logged safely, counted."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import REGISTRY

from lane.core.tags import MAX_LANE_LENGTH, is_valid_lane, log_preview, parse_lane
from lane.telemetry.metrics import INVALID_TAGS


def invalid_count(source: str) -> float:
    return REGISTRY.get_sample_value("lane_invalid_tags_total", {"source": source}) or 0.0


@pytest.mark.parametrize("value", ["gray", "base", "a", "0", "gray-2", "v1-2-3", "x" * MAX_LANE_LENGTH])
def test_dns_labels_are_lanes(value: str) -> None:
    assert is_valid_lane(value)
    assert parse_lane(value) == value


@pytest.mark.parametrize(
    "value",
    ["Gray", "gray_1", "-gray", "gray-", "gr ay", "gray.canary", "x" * (MAX_LANE_LENGTH + 1), "灰度", "gray\r\nx: y"],
)
def test_everything_else_is_not_a_lane(value: str) -> None:
    assert not is_valid_lane(value)
    assert parse_lane(value, source="header") is None


def test_surrounding_whitespace_is_tolerated() -> None:
    assert parse_lane("  gray\t") == "gray"


@pytest.mark.parametrize("value", [None, "", "   "])
def test_absent_values_are_neither_logged_nor_counted(value: str | None, caplog: pytest.LogCaptureFixture) -> None:
    before = invalid_count("header")
    with caplog.at_level(logging.WARNING, logger="lane.core.tags"):
        assert parse_lane(value, source="header") is None
    assert invalid_count("header") == before
    assert not caplog.records


def test_invalid_values_are_counted_per_source() -> None:
    header, baggage = invalid_count("header"), invalid_count("baggage")
    parse_lane("NOT A LANE", source="header")
    parse_lane("NOT A LANE", source="baggage")
    parse_lane("also bad!", source="baggage")
    assert invalid_count("header") == header + 1
    assert invalid_count("baggage") == baggage + 2
    assert INVALID_TAGS.labels(source="baggage")._value.get() == invalid_count("baggage")


def test_log_line_has_length_and_short_prefix_only(caplog: pytest.LogCaptureFixture) -> None:
    hostile = "EVIL" + "A" * 5000 + "SECRET-TAIL"
    with caplog.at_level(logging.WARNING, logger="lane.core.tags"):
        assert parse_lane(hostile, source="header") is None
    (record,) = caplog.records
    message = record.getMessage()
    assert f"len={len(hostile)}" in message
    assert "EVIL" in message
    assert "SECRET-TAIL" not in message
    assert len(message) < 200


def test_log_preview_escapes_control_characters() -> None:
    preview = log_preview("a\r\nInjected: header")
    assert "\r" not in preview and "\n" not in preview
    assert "Injected" in preview
    assert preview == "len=19 prefix='a\\r\\nInjected: hea'..."
