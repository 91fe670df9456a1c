"""`lane.core.deadline` and gRPC's ``grpc-timeout``: read, bounded, shortened hop by hop, written back.

A gRPC call's deadline is the caller's: every hop must honour it (wait no longer) and hand the next hop
what is left less the margin, in gRPC's own format, or the app at the end of the chain would work on
a call its caller already gave up on.
"""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from lane.core.deadline import (
    DEADLINE_HEADER,
    GRPC_TIMEOUT,
    budget_of,
    grpc_bound,
    grpc_timeout,
    stamp,
    to_grpc_timeout,
)


@pytest.mark.parametrize(("value", "seconds"), [
    ("100m", 0.1), ("5S", 5.0), ("2M", 120.0), ("1H", 3600.0), ("250u", 0.00025), ("7n", 7e-9), (" 10m ", 0.01),
    ("99999999m", 99999.999),
])
def test_grpc_timeout_values_are_read_in_every_unit(value: str, seconds: float) -> None:
    assert grpc_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "m", "10", "10x", "-1m", "1.5S", "123456789m", "１０m", "10 m"])
def test_what_is_not_a_grpc_timeout_is_no_deadline(value: str) -> None:
    assert grpc_timeout(value) is None
    assert budget_of({GRPC_TIMEOUT: value}, 30.0) == 30.0


@pytest.mark.parametrize(("seconds", "value"), [
    (0.1, "100m"), (2.5, "2500m"), (0.0005, "500u"), (0.0, "1u"), (-3.0, "1u"), (1e9, "99999999S"),
])
def test_a_budget_is_written_in_grpc_format_within_eight_digits(seconds: float, value: str) -> None:
    assert to_grpc_timeout(seconds) == value


def test_the_shortest_of_grpc_timeout_lane_budget_and_request_timeout_bounds_the_wait() -> None:
    assert budget_of({GRPC_TIMEOUT: "500m"}, 30.0) == 0.5
    assert budget_of({GRPC_TIMEOUT: "500m", DEADLINE_HEADER: "200"}, 30.0) == 0.2
    assert budget_of({GRPC_TIMEOUT: "5S", DEADLINE_HEADER: "200"}, 30.0) == 0.2
    assert budget_of({GRPC_TIMEOUT: "60S"}, 30.0) == 30.0  # a deadline can only shorten the wait


def test_each_hop_passes_on_what_is_left_less_the_margin_in_both_headers() -> None:
    headers = CIMultiDict({GRPC_TIMEOUT: "500m", "content-type": "application/grpc"})
    stamp(headers, budget_of(headers, 30.0), 0.25)
    assert headers[DEADLINE_HEADER] == "375" and headers[GRPC_TIMEOUT] == "375m"  # margin <= a quarter
    plain: CIMultiDict[str] = CIMultiDict()
    stamp(plain, 2.0, 0.25)
    assert plain[DEADLINE_HEADER] == "1750" and GRPC_TIMEOUT not in plain  # a call without a deadline gets none


def test_a_wait_is_the_callers_own_deadline_only_when_grpc_timeout_is_the_tightest_bound() -> None:
    assert grpc_bound({GRPC_TIMEOUT: "500m"}, 30.0)
    assert not grpc_bound({GRPC_TIMEOUT: "500m", DEADLINE_HEADER: "100"}, 30.0)
    assert not grpc_bound({GRPC_TIMEOUT: "60S"}, 30.0)
    assert not grpc_bound({}, 30.0)
