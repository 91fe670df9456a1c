"""The steps of a rollout and where a run starts: pure, so resuming is easy to state and to test.

Steps are shares (percent of users) in increasing order, ``1,5,25,50,100``. A run starts from the
share the gateways report in force, never from what a file or a flag says: at 0 it starts at the
first step; at a share it is already at, that share is judged again first (the crashed run never
finished judging it), then the larger steps follow; at or past the last step it is already promoted.
So a rerun never skips a step it has not seen pass, and never jumps to 100 %.
"""

from __future__ import annotations

import argparse
import itertools

__all__ = ["parse_steps", "remaining_steps"]


def parse_steps(text: str) -> tuple[int, ...]:
    """``1,5,25,50,100``: whole percents, 1 to 100, strictly increasing; argparse's ``type``."""
    try:
        steps = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected whole percents like 1,5,25,50,100, got {text!r}"
        ) from None
    if not steps or any(not 1 <= s <= 100 for s in steps):
        raise argparse.ArgumentTypeError(f"every step is a percent from 1 to 100, got {text!r}")
    if any(b <= a for a, b in itertools.pairwise(steps)):
        raise argparse.ArgumentTypeError(f"steps must increase, got {text!r}")
    return steps


def remaining_steps(steps: tuple[int, ...], in_force: int) -> tuple[int, ...]:
    """The shares still to set and judge, in order, when *in_force* is the share the gateways apply now."""
    if in_force >= steps[-1]:
        return ()
    later = tuple(s for s in steps if s > in_force)
    return ((in_force,) if in_force > 0 else ()) + later
