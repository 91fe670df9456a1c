"""LanePropagator and the context helpers (lane/propagation/propagator.py).

The environment-based loading (``OTEL_PROPAGATORS=tracecontext,baggage,lane``) runs in a
subprocess, because OpenTelemetry reads that variable once, at import, into a global.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from multidict import CIMultiDict
from opentelemetry import baggage as otel_baggage
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context, get_current
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import Getter, TextMapPropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import REGISTRY

from lane.core.config_load import parse_config
from lane.propagation.propagator import (
    LanePropagator,
    current_lane,
    lane_last,
    propagator_from_env,
    use_lane,
    with_lane,
    without_lane,
)

LANES = LanePropagator()


def lane_in(carrier: object, propagator: LanePropagator = LANES) -> str | None:
    return current_lane(propagator.extract(carrier, context=Context()), key=propagator.baggage_key)


def invalid_count(source: str) -> float:
    return REGISTRY.get_sample_value("lane_invalid_tags_total", {"source": source}) or 0.0


# --- extract ------------------------------------------------------------------------------------


def test_extracts_lane_from_tag_header() -> None:
    assert lane_in({"x-mse-tag": "gray"}) == "gray"


def test_extracts_lane_from_baggage_when_header_is_absent() -> None:
    assert lane_in({"baggage": "user=alice,x-mse-tag=gray"}) == "gray"


def test_tag_header_wins_over_stale_baggage() -> None:
    assert lane_in({"x-mse-tag": "gray", "baggage": "x-mse-tag=base"}) == "gray"


def test_invalid_header_falls_through_to_valid_baggage_and_is_counted() -> None:
    before = invalid_count("header")
    assert lane_in({"x-mse-tag": "Gray Lane!", "baggage": "x-mse-tag=gray"}) == "gray"
    assert invalid_count("header") == before + 1


def test_invalid_values_everywhere_mean_no_lane() -> None:
    header, bag = invalid_count("header"), invalid_count("baggage")
    assert lane_in({"x-mse-tag": "../etc", "baggage": "x-mse-tag=%3Cscript%3E"}) is None
    assert (invalid_count("header"), invalid_count("baggage")) == (header + 1, bag + 1)


def test_plus_and_spaces_are_not_read_the_stock_way() -> None:
    assert lane_in({"baggage": "x-mse-tag=+gray+"}) is None  # stock would read " gray " and strip it
    assert lane_in({"baggage": "x-mse-tag=%20gray%20"}) == "gray"  # whitespace around a lane is tolerated


def test_header_names_are_case_insensitive_in_plain_dicts() -> None:
    assert lane_in({"X-MSE-Tag": "gray"}) == "gray"
    assert lane_in({"Baggage": "x-mse-tag=gray"}) == "gray"


def test_reads_every_baggage_header_of_a_multidict() -> None:
    headers = CIMultiDict([("baggage", "user=alice"), ("Baggage", "x-mse-tag=gray;ttl=3")])
    assert lane_in(headers) == "gray"
    stock = W3CBaggagePropagator().extract(headers, context=Context())
    assert otel_baggage.get_baggage("x-mse-tag", stock) is None


def test_oversized_baggage_keeps_lane() -> None:
    big = ",".join(f"k{i}={'v' * 100}" for i in range(200))
    headers = {"baggage": f"{big},x-mse-tag=gray"}
    assert lane_in(headers) == "gray"
    assert otel_baggage.get_all(W3CBaggagePropagator().extract(headers, context=Context())) == {}


def test_180_plus_members_keep_lane() -> None:
    headers = {"baggage": ",".join([*(f"m{i}=1" for i in range(250)), "x-mse-tag=gray"])}
    assert lane_in(headers) == "gray"


def test_stock_then_lane_repairs_what_stock_lost() -> None:
    both = CompositePropagator([W3CBaggagePropagator(), LANES])
    ctx = both.extract({"baggage": "user=alice,x-mse-tag=a+b,other=x"}, context=Context())
    assert current_lane(ctx) is None
    assert otel_baggage.get_baggage("x-mse-tag", ctx) is None  # the stock "a b" is dropped, not kept
    assert otel_baggage.get_baggage("user", ctx) == "alice"  # other entries stay


def test_extract_keeps_given_context_when_carrier_has_no_lane() -> None:
    ctx = with_lane("gray", otel_baggage.set_baggage("user", "alice", Context()))
    assert LANES.extract({}, context=ctx) is ctx


def test_extract_never_raises_on_a_broken_carrier() -> None:
    class Exploding(Getter[object]):
        def get(self, carrier: object, key: str) -> list[str] | None:
            raise RuntimeError("boom")

        def keys(self, carrier: object) -> list[str]:
            raise RuntimeError("boom")

    ctx = Context()
    assert LANES.extract(object(), context=ctx, getter=Exploding()) is ctx
    assert lane_in({"x-mse-tag": 7, "baggage": [b"x-mse-tag=gray", "x-mse-tag=base"]}) == "base"


def test_default_lane_fills_untagged_requests_when_asked() -> None:
    filling = LanePropagator(default_lane="base")
    assert lane_in({}, filling) == "base"
    assert lane_in({"x-mse-tag": "NOPE"}, filling) == "base"
    assert lane_in({"x-mse-tag": "gray"}, filling) == "gray"
    assert lane_in({}) is None


def test_configured_names_from_a_lane_config() -> None:
    config = parse_config(textwrap.dedent("""
        tag: {header: X-Lane, baggage_key: lane, default_lane: stable}
        lanes: {canary: {}}
        entry: a
        services: {a: {instances: {stable: ["127.0.0.1:1"]}}}
    """))
    custom = LanePropagator.from_tag_spec(config.tag)
    assert (custom.header, custom.baggage_key, custom.default_lane) == ("x-lane", "lane", None)
    assert LanePropagator.from_tag_spec(config.tag, fill_default=True).default_lane == "stable"
    assert lane_in({"X-Lane": "canary", "x-mse-tag": "gray"}, custom) == "canary"
    assert lane_in({"baggage": "x-mse-tag=gray,lane=canary"}, custom) == "canary"
    carrier: dict[str, str] = {}
    custom.inject(carrier, context=custom.with_lane("canary", Context()))
    assert carrier == {"x-lane": "canary", "baggage": "lane=canary"}


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [({"header": "bad header"}, "header"), ({"baggage_key": "a=b"}, "baggage key"), ({"default_lane": "Gray"}, "lane")],
)
def test_bad_construction_is_a_clear_error(kwargs: dict[str, str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        LanePropagator(**kwargs)


def test_fields_name_both_headers() -> None:
    assert LANES.fields == {"x-mse-tag", "baggage"}


# --- inject -------------------------------------------------------------------------------------


def test_inject_writes_tag_header_and_baggage() -> None:
    carrier: dict[str, str] = {}
    LANES.inject(carrier, context=with_lane("gray", Context()))
    assert carrier == {"x-mse-tag": "gray", "baggage": "x-mse-tag=gray"}


def test_inject_after_stock_puts_lane_first_and_keeps_other_members() -> None:
    ctx = with_lane("gray", otel_baggage.set_baggage("user", "alice", Context()))
    carrier: dict[str, str] = {}
    CompositePropagator([W3CBaggagePropagator(), LANES]).inject(carrier, context=ctx)
    assert carrier == {"baggage": "x-mse-tag=gray,user=alice", "x-mse-tag": "gray"}


def test_inject_merges_multiple_baggage_headers_of_a_multidict() -> None:
    headers = CIMultiDict([("baggage", "a=1;p"), ("Baggage", "x-mse-tag=base,b=2"), ("x-mse-tag", "base")])
    LANES.inject(headers, context=with_lane("gray", Context()))
    assert headers.getall("baggage") == ["x-mse-tag=gray,a=1;p,b=2"]
    assert headers.getall("x-mse-tag") == ["gray"]


def test_inject_without_lane_writes_nothing() -> None:
    carrier: dict[str, str] = {"baggage": "user=alice"}
    LANES.inject(carrier, context=Context())
    assert carrier == {"baggage": "user=alice"}


def test_inject_never_forwards_an_invalid_lane() -> None:
    ctx = otel_baggage.set_baggage("x-mse-tag", "Not A Lane", Context())
    carrier: dict[str, str] = {}
    CompositePropagator([W3CBaggagePropagator(), LANES]).inject(carrier, context=ctx)
    assert carrier == {}
    carrier = {"Baggage": "x-mse-tag=EVIL,user=alice"}
    LANES.inject(carrier, context=Context())
    assert carrier == {"baggage": "user=alice"}


def test_inject_uses_the_current_context_by_default() -> None:
    carrier: dict[str, str] = {}
    with use_lane("gray"):
        LANES.inject(carrier)
    assert carrier["x-mse-tag"] == "gray"


# --- helpers ------------------------------------------------------------------------------------


def test_with_lane_and_without_lane_do_not_mutate() -> None:
    base = otel_baggage.set_baggage("user", "alice", Context())
    gray = with_lane("gray", base)
    assert (current_lane(base), current_lane(gray)) == (None, "gray")
    assert current_lane(without_lane(gray)) is None
    assert otel_baggage.get_baggage("user", without_lane(gray)) == "alice"


def test_with_lane_rejects_what_is_not_a_lane() -> None:
    with pytest.raises(ValueError, match="not a lane"):
        with_lane("Gray Lane")


def test_use_lane_restores_the_previous_context_even_on_error() -> None:
    outer = get_current()
    with pytest.raises(KeyError), use_lane("gray"):
        assert current_lane() == "gray"
        with use_lane(None):
            assert current_lane() is None
        assert current_lane() == "gray"
        raise KeyError("x")
    assert get_current() is outer


def test_current_lane_ignores_invalid_values_in_the_context() -> None:
    assert current_lane(otel_baggage.set_baggage("x-mse-tag", "BAD", Context())) is None


# --- OTEL_PROPAGATORS ---------------------------------------------------------------------------

_ENTRY_POINT_PROBE = textwrap.dedent("""
    import json
    from opentelemetry import baggage, propagate
    from opentelemetry.context import Context
    from lane.propagation.propagator import LanePropagator, with_lane

    composite = propagate.get_global_textmap()
    names = [type(p).__name__ for p in composite._propagators]
    big = ",".join(f"k{i}={'v' * 100}" for i in range(120))
    ctx = propagate.extract({"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                             "baggage": big + ",x-mse-tag=gray"})
    out = {}
    propagate.inject(out, context=with_lane("canary", baggage.set_baggage("user", "alice", Context())))
    print(json.dumps({"names": names, "lane": baggage.get_baggage("x-mse-tag", ctx), "injected": out}))
""")


def test_otel_propagators_env_loads_lane_via_entry_point() -> None:
    env = {**os.environ, "OTEL_PROPAGATORS": "tracecontext,baggage,lane"}
    done = subprocess.run(
        [sys.executable, "-c", _ENTRY_POINT_PROBE], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["names"] == ["TraceContextTextMapPropagator", "W3CBaggagePropagator", "LanePropagator"]
    assert result["lane"] == "gray"  # stock baggage dropped the oversized header; lane recovered it
    assert result["injected"] == {"baggage": "x-mse-tag=canary,user=alice", "x-mse-tag": "canary"}


def test_importing_lane_first_with_lane_in_otel_propagators_works() -> None:
    """``import lane`` before OpenTelemetry: loading the entry point must not meet a half-imported module."""
    probe = ("import lane\nfrom opentelemetry import propagate\n"
             "print([type(p).__name__ for p in propagate.get_global_textmap()._propagators])")
    env = {**os.environ, "OTEL_PROPAGATORS": "tracecontext,baggage,lane"}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout.split() == ["['TraceContextTextMapPropagator',", "'W3CBaggagePropagator',", "'LanePropagator']"]


def test_import_lane_stays_light() -> None:
    probe = ("import sys, lane\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('yaml', 're2', 'aiohttp', 'prometheus_client')"
             " or m in ('lane.core.config', 'lane.core.rules')))\n"
             "print(lane.LaneConfig.__name__, lane.color.__name__)")  # the lazy names still resolve
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.splitlines() == ["[]", "LaneConfig color"]


# --- the entry point's environment and the propagator order --------------------------------------


def test_env_defaults_are_the_tag_spec_defaults() -> None:
    lanes = propagator_from_env({})
    assert (lanes.header, lanes.baggage_key, lanes.default_lane) == ("x-mse-tag", "x-mse-tag", None)
    assert propagator_from_env({"LANE_TAG_HEADER": " ", "LANE_BAGGAGE_KEY": ""}).header == "x-mse-tag"


def test_env_names_another_tag_header_and_baggage_key() -> None:
    lanes = propagator_from_env({"LANE_TAG_HEADER": "X-Lane", "LANE_BAGGAGE_KEY": "lane"})
    assert (lanes.header, lanes.baggage_key) == ("x-lane", "lane")
    assert propagator_from_env({"LANE_TAG_HEADER": "x-lane"}).baggage_key == "x-mse-tag"  # independent, as in tag:
    assert lane_in({"x-lane": "gray"}, lanes) == "gray"


def test_invalid_env_is_one_error_line_and_the_default(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("ERROR", logger="lane.propagation.propagator"):
        lanes = propagator_from_env({"LANE_TAG_HEADER": "x lane\r\nx-evil: 1", "LANE_BAGGAGE_KEY": "a=b"})
    assert (lanes.header, lanes.baggage_key) == ("x-mse-tag", "x-mse-tag")
    assert [r.getMessage() for r in caplog.records] == [
        ("LANE_TAG_HEADER='x lane\\r\\nx-evil: 1' is not an HTTP header name (an RFC 9110 token); "
         "using the default 'x-mse-tag'"),
        "LANE_BAGGAGE_KEY='a=b' is not a W3C baggage key (a token); using the default 'x-mse-tag'",
    ]


ORDERS = {
    "lane,baggage,tracecontext": lambda: [LanePropagator(), W3CBaggagePropagator(), TraceContextTextMapPropagator()],
    "baggage,lane,tracecontext": lambda: [W3CBaggagePropagator(), LanePropagator(), TraceContextTextMapPropagator()],
    "tracecontext,baggage,lane": lambda: [TraceContextTextMapPropagator(), W3CBaggagePropagator(), LanePropagator()],
}


@pytest.mark.parametrize("order", list(ORDERS))
def test_lane_last_gives_the_same_answer_for_every_order(order: str) -> None:
    composite = lane_last(CompositePropagator(ORDERS[order]()))
    ctx = composite.extract({"x-mse-tag": "gray", "baggage": "user=42,x-mse-tag=blue"}, context=Context())
    assert current_lane(ctx) == "gray"  # the valid tag header wins over the stale baggage entry
    assert otel_baggage.get_baggage("user", ctx) == "42"
    out: dict[str, str] = {}
    composite.inject(out, context=ctx)
    assert (out["x-mse-tag"], out["baggage"]) == ("gray", "x-mse-tag=gray,user=42")


def test_without_lane_last_the_stock_baggage_propagator_overrules_the_header() -> None:
    """Why `lane_last` exists: a plain composite in the ``lane,baggage`` order gets it wrong."""
    composite = CompositePropagator(ORDERS["lane,baggage,tracecontext"]())
    ctx = composite.extract({"x-mse-tag": "gray", "baggage": "user=42,x-mse-tag=blue"}, context=Context())
    assert current_lane(ctx) == "blue"


def test_lane_last_leaves_what_needs_no_change_alone() -> None:
    ordered = CompositePropagator(ORDERS["tracecontext,baggage,lane"]())
    assert lane_last(ordered) is ordered
    no_lane = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
    assert lane_last(no_lane) is no_lane
    single: TextMapPropagator = LANES
    assert lane_last(single) is single
    members = [TraceContextTextMapPropagator(), LANES, W3CBaggagePropagator()]
    moved = lane_last(CompositePropagator(members))
    assert moved._propagators == [members[0], members[2], LANES]  # type: ignore[attr-defined]
