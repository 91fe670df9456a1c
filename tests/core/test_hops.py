"""The hop record every lane proxy returns: round trip, leniency, bounds."""

from __future__ import annotations

from lane.core.hops import MAX_HOPS, MAX_PATH_BYTES, TRUNCATED, FallbackReason, Hop, encode_path, parse_path


def test_round_trip_keeps_order_and_fallback_reasons() -> None:
    hops = [
        Hop("a", "gray", "gray", instance="127.0.0.1:1"),
        Hop("b", "base", "gray", FallbackReason.NO_INSTANCE.value, "127.0.0.1:2"),
        Hop("c", "gray", "gray", instance="[::1]:3"),
    ]
    value = encode_path(hops)
    assert value.startswith("a@gray;requested=gray;instance=127.0.0.1:1, b@base;requested=gray;fallback=no-instance")
    assert parse_path(value) == tuple(hops)
    assert [h.label() for h in parse_path(value)] == ["a@gray", "b@base", "c@gray"]
    assert [h.fell_back for h in hops] == [False, True, False]


def test_a_failed_hop_carries_its_error_status_and_old_readers_still_parse_it() -> None:
    failed = Hop("c", "gray", "gray", instance="127.0.0.1:3", error="504")
    nothing = Hop("c", "none", "gray", error="503")
    value = encode_path([Hop("a", "gray", "gray"), failed, nothing])
    assert value == "a@gray;requested=gray, c@gray;requested=gray;instance=127.0.0.1:3;error=504, " \
        "c@none;requested=gray;error=503"
    assert parse_path(value) == (Hop("a", "gray", "gray"), failed, nothing)
    assert Hop("a", "gray", "gray").error is None  # a hop that did not fail says nothing


def test_several_header_values_concatenate() -> None:
    assert [h.label() for h in parse_path(["a@gray", "b@base, c@gray"])] == ["a@gray", "b@base", "c@gray"]


def test_malformed_entries_are_skipped_not_raised() -> None:
    value = "a@gray, garbage, @x, b@, c@gray;requested=<script>;fallback=no-instance, d@base;unknown=1"
    hops = parse_path(value)
    assert [h.label() for h in hops] == ["a@gray", "c@gray", "d@base"]
    assert hops[1].requested == "gray"  # the bad value is dropped, the hop kept
    assert parse_path(None) == () and parse_path("") == ()


def test_record_is_bounded_and_marks_truncation() -> None:
    many = [Hop(f"svc{i}", "base", "base", instance="127.0.0.1:8080") for i in range(500)]
    value = encode_path(many)
    assert len(value) <= MAX_PATH_BYTES
    hops = parse_path(value)
    assert len(hops) <= MAX_HOPS and hops[-1] == TRUNCATED
    assert len(parse_path(", ".join(["a@base"] * 5000))) == MAX_HOPS


def test_a_record_relayed_again_parses_to_the_same_hops_and_the_memory_of_records_is_bounded() -> None:
    """A proxy remembers the records it parsed (an instance answers the same one for every request of
    a lane): the second parse gives the same hops as the first and as a list of values; malformed
    entries are still skipped; at most 512 records (of ≤ 1024 characters) are remembered."""
    from lane.core import hops as hops_module

    value = "b@base;requested=gray;fallback=no-instance;instance=127.0.0.1:2, junk, c@gray;requested=gray"
    first = parse_path(value)
    assert parse_path(value) == first == parse_path([value])
    assert [h.label() for h in first] == ["b@base", "c@gray"]
    for i in range(2000):
        record = f"s{i}@base;requested=base;instance=127.0.0.1:{i}"
        assert parse_path(record) == (Hop(f"s{i}", "base", "base", instance=f"127.0.0.1:{i}"),)
        assert len(hops_module._PARSED) <= 512
    long = ", ".join(f"s{i}@base;requested=base;instance=10.0.0.{i % 250}:8080" for i in range(40))
    assert len(long) > 1024 and len(parse_path(long)) == 40 and long not in hops_module._PARSED
