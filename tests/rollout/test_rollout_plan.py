"""`rollout.plan`: the steps, and where a run starts from the share the gateways report."""

from __future__ import annotations

import argparse

import pytest

from rollout.plan import parse_steps, remaining_steps


def test_steps_are_increasing_whole_percents() -> None:
    assert parse_steps("1,5,25,50,100") == (1, 5, 25, 50, 100)
    for bad in ("", "0,50", "5,5", "50,25", "1,101", "a,b", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_steps(bad)


@pytest.mark.parametrize(
    ("in_force", "todo"),
    [
        (0, (1, 5, 25, 50, 100)),  # a fresh start: the first step
        (5, (5, 25, 50, 100)),  # a crash at 5 %: 5 is judged again, then on
        (10, (10, 25, 50, 100)),  # set by hand between steps: judged where it is, then the next larger step
        (50, (50, 100)),
        (100, ()),  # already promoted
    ],
)
def test_a_rerun_continues_from_the_share_in_force_and_never_skips_a_step(
    in_force: int, todo: tuple[int, ...]
) -> None:
    assert remaining_steps((1, 5, 25, 50, 100), in_force) == todo


def test_steps_ending_below_100_stop_there() -> None:
    assert remaining_steps((10, 30), 30) == ()
    assert remaining_steps((10, 30), 40) == ()
