"""One rollout, step by step: set the share, wait, judge, go on or roll back (`Options` in, exit status out).

The order of every change is the file first, then where the share is in force (a `ShareTarget`):
`share_edit.write_share` replaces the config atomically, then the target loads it -- lane's gateways
by ``POST /lane/reload`` (`rollout.gateways`), or with ``--mesh`` the Istio ingress gateway's coloring
EnvoyFilter, re-rendered and server-side applied (`rollout.mesh_target`). If that is refused, the
file is set back to the share that was in force and pushed again, so the file always ends holding
the share in force. A run starts from what the target reports (`plan.remaining_steps`): after a
crash, a rerun re-judges the share in force and goes on.

Failed checks are counted over the whole rollout, as Flagger counts them: at ``threshold`` the lane
is rolled back (share 0, exit 1). A check that fails below the threshold is judged again, at the same
share, in the next interval. A step without ``min_requests`` lane requests waits another interval;
after ``max_waits`` such intervals in a row the rollout gives up and rolls back (it never promotes
on too little data, and it must end). The webhook, when given, is asked before each step; an answer
that is not 2xx (or none) counts as a failed check and it is asked again after an interval, like
Flagger's pre-rollout hooks.

Ctrl-C or SIGTERM ends a run only between changes (a share being set is finished first), with exit
status 130 and the share in force in the gateways (or cluster) and the file alike; a rerun continues from it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from lane.core.config import LaneConfig
from lane.core.config_load import load_config
from lane.core.errors import ConfigError

from .admin_client import AdminClient
from .analysis import Judgement, Thresholds, Verdict, judge
from .errors import RolloutInputError, TargetUnreachable
from .gateways import GatewayTarget
from .load import UserRequests, load_running
from .metrics_window import Snapshot
from .plan import remaining_steps
from .record import Record
from .share_edit import ShareRule, find_share_rule, write_share

__all__ = ["INTERRUPTED", "PROMOTED", "ROLLED_BACK", "Cluster", "Options", "ShareTarget", "rollout"]

log = logging.getLogger(__name__)

PROMOTED, ROLLED_BACK = 0, 1


class ShareTarget(Protocol):
    """Where the file's share is put in force and read back, and where the step's figures come from."""

    where: str  # "on the gateways", "in the cluster (...)": for the messages

    async def shares(self) -> list[int]:
        """The share in force at each place that applies it (`TargetUnreachable`, `RolloutInputError`)."""
        ...

    async def push(self, *, best_effort: bool = False) -> None:
        """Put the file's share in force; `TargetUnreachable` when refused (*best_effort*: log, go on)."""
        ...

    async def snapshot(self) -> Snapshot:
        """What the proxies have counted so far (`TargetUnreachable` or ``ValueError`` when unreadable)."""
        ...


@dataclass(frozen=True, slots=True)
class Cluster:
    """``--mesh``: the render's namespace and how to reach the Kubernetes API (`lane mesh apply`'s options)."""

    namespace: str | None = None  # None: the config's mesh.namespace
    kubeconfig: str | None = None
    context: str | None = None
    server: str | None = None
    request_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class Options:
    config: Path
    lane: str
    rule: str | None
    steps: tuple[int, ...]
    interval: float  # seconds
    admins: tuple[str, ...]
    token: bytes | None
    limits: Thresholds
    threshold: int = 1
    max_waits: int = 10
    host: str | None = None
    load: bool = False
    load_rate: float = 50.0
    load_users: int = 1000
    webhook: str | None = None
    prometheus: str | None = None  # read the figures from this Prometheus server, not from the admins
    mesh: Cluster | None = None  # set the share in an Istio mesh (then the figures are Istio's, from `prometheus`)
    record: Path | None = None
    svg: Path | None = None


INTERRUPTED = 130  # Ctrl-C or SIGTERM: stopped between two changes, the share in force left as it is


class _RolledBack(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Interrupted(Exception):
    """SIGINT/SIGTERM arrived; raised only where nothing is half-changed (while waiting)."""


class Rollout:
    """The state of one run: where the share is in force, the share in force, the failed checks so far."""

    def __init__(
        self, opts: Options, config: LaneConfig, rule: ShareRule, target: ShareTarget, record: Record
    ) -> None:
        self.opts = opts
        self.config = config
        self.rule = rule
        self.target = target
        self.record = record
        self.in_force = 0
        self.failed = 0
        self.stop = asyncio.Event()  # set by SIGINT/SIGTERM: a change under way is finished, then the run ends

    async def wait(self, seconds: float) -> None:
        """Sleep *seconds*, or raise `_Interrupted` as soon as a stop was asked for."""
        try:
            await asyncio.wait_for(self.stop.wait(), seconds)
        except TimeoutError:
            return
        raise _Interrupted

    async def apply(self, share: int, *, restore: bool = True) -> None:
        """Write *share* to the file, then push it; on a refusal, put the old share back (unless
        *restore* is false: a rollback's 0 % stays in the file, for a gateway that missed it to load
        when it can, or for `lane mesh apply` to apply)."""
        previous = self.in_force
        write_share(self.opts.config, self.opts.lane, self.rule.name, share)
        try:
            await self.target.push()
        except TargetUnreachable:
            if not restore:
                raise
            write_share(self.opts.config, self.opts.lane, self.rule.name, previous)
            await self.target.push(best_effort=True)
            raise
        self.in_force = share

    async def scrape(self) -> Snapshot | str:
        """What the proxies counted (`ShareTarget.snapshot`), or why it could not be read (a failed check)."""
        try:
            return await self.target.snapshot()
        except TargetUnreachable as exc:
            return f"cannot read metrics: {exc}"
        except ValueError as exc:
            return f"cannot parse metrics: {exc}"

    def fail(self, reason: str) -> None:
        self.failed += 1
        self.record.event(
            "failed-check",
            self.in_force,
            f"failed check {self.failed} of --threshold {self.opts.threshold}: {reason}",
        )
        if self.failed >= self.opts.threshold:
            raise _RolledBack(reason)

    async def gate(self, share: int, step: int, session: aiohttp.ClientSession) -> None:
        """Ask the webhook until it says yes (or the failed checks reach the threshold)."""
        if self.opts.webhook is None:
            return
        body = {
            "lane": self.opts.lane,
            "rule": self.rule.name,
            "config": str(self.opts.config),
            "from": self.in_force,
            "to": share,
            "step": step,
            "steps": len(self.opts.steps),
        }
        while True:
            try:
                async with session.post(
                    self.opts.webhook, json=body, timeout=aiohttp.ClientTimeout(total=10)
                ) as resp:
                    if 200 <= resp.status < 300:
                        return
                    problem = f"webhook {self.opts.webhook} answered {resp.status} before {share}%"
            except (TimeoutError, aiohttp.ClientError) as exc:
                problem = f"webhook {self.opts.webhook} unreachable before {share}%: {type(exc).__name__}"
            self.fail(problem)
            await self.wait(self.opts.interval)

    async def judge_step(self, share: int, step: int) -> None:
        """Wait and judge at *share* until a window passes (or the rollout is rolled back)."""
        waits = 0
        before = await self.scrape()
        while True:
            await self.wait(self.opts.interval)
            after = await self.scrape()
            if isinstance(after, str):
                self.fail(after)
                before = after
                continue
            if isinstance(before, str):  # nothing to compare with yet
                before = after
                continue
            judgement: Judgement = judge(
                after.since(before), self.opts.lane, self.config.default_lane, self.opts.limits
            )
            before = after
            self.record.point(share, judgement, step, len(self.opts.steps))
            if judgement.verdict is Verdict.PASS:
                return
            if judgement.verdict is Verdict.FAIL:
                waits = 0
                self.fail(judgement.reason)
                continue
            waits += 1
            if waits >= self.opts.max_waits:
                raise _RolledBack(
                    f"not enough {self.opts.lane} traffic to judge {share}% in {waits} intervals "
                    f"({judgement.reason})"
                )

    async def run(self, session: aiohttp.ClientSession) -> int:
        shares = await self.target.shares()
        self.in_force = min(shares)
        if len(set(shares)) > 1:
            self.record.event(
                "resume",
                self.in_force,
                f"gateways disagree ({', '.join(map(str, shares))}%): "
                f"continuing from the lowest, {self.in_force}%",
            )
        elif self.in_force:
            self.record.event(
                "resume", self.in_force, f"{self.in_force}% in force {self.target.where}: continuing from there"
            )
        await self.apply(self.in_force)  # the file holds the share in force (a crash may have left it ahead)
        todo = remaining_steps(self.opts.steps, self.in_force)
        if not todo:
            self.record.event("promoted", self.in_force, f"{self.opts.lane} is already at {self.in_force}%")
            self.record.save("promoted")
            return PROMOTED
        request = UserRequests.of_rule(self.config, self.rule.name) if self.opts.load else None
        async with load_running(
            self.opts.host if self.opts.load else None,
            request,
            rate=self.opts.load_rate,
            users=self.opts.load_users,
        ):
            try:
                for share in todo:
                    step = self.opts.steps.index(share) + 1 if share in self.opts.steps else 0
                    await self.gate(share, step, session)
                    if share != self.in_force:
                        await self.apply(share)
                        self.record.event(
                            "set",
                            share,
                            f"{self.opts.lane} share set to {share}% (step {step}/{len(self.opts.steps)})",
                        )
                    await self.judge_step(share, step)
            except _Interrupted:
                self.record.event("interrupted", self.in_force, f"stopped at {self.in_force}% (in force "
                                  f"{self.target.where} and in the file); rerun the same command to continue "
                                  "from there")
                return INTERRUPTED
            except _RolledBack as back:
                await self.apply(0, restore=False)
                self.record.event("rollback", 0, f"{self.opts.lane} rolled back to 0%: {back.reason}")
                self.record.save("rolled back", back.reason)
                print(
                    f"lane rollout: rolled back {self.opts.lane} to 0%: {back.reason}",
                    file=sys.stderr,
                    flush=True,
                )
                return ROLLED_BACK
        self.record.event("promoted", self.in_force, f"{self.opts.lane} promoted to {self.in_force}%")
        self.record.save("promoted")
        return PROMOTED


async def rollout(opts: Options) -> int:
    """Run the rollout; `RolloutInputError` (exit 2) for bad input or an admin that does not answer."""
    try:
        config = load_config(opts.config)
    except ConfigError as exc:
        raise RolloutInputError(str(exc)) from None
    rule = find_share_rule(config, opts.lane, opts.rule)
    if opts.load and not rule.sticky:
        log.warning("rule %s has no sticky key: --load users are put in the lane at random", rule.name)
    head = {
        "config": str(opts.config),
        "lane": opts.lane,
        "base": config.default_lane,
        "rule": rule.name,
        "steps": list(opts.steps),
        "interval": opts.interval,
        "admins": list(opts.admins),
        **({"mesh": {"namespace": opts.mesh.namespace or config.mesh.namespace}} if opts.mesh else {}),
        "prometheus": opts.prometheus,
        "thresholds": {
            "max_error_rate": opts.limits.max_error_rate,
            "max_p99_ratio": opts.limits.max_p99_ratio,
            "min_p99": opts.limits.min_p99,
            "min_requests": opts.limits.min_requests,
            "threshold": opts.threshold,
        },
    }
    record = Record(opts.record, opts.svg, head)
    record.resume()
    async with aiohttp.ClientSession() as session:
        target: ShareTarget
        if opts.mesh is not None:
            target = await _mesh_target(opts, opts.mesh, config, rule, session)
        else:
            target = await GatewayTarget.open(
                AdminClient(session, opts.token),
                opts.admins,
                lane=opts.lane,
                rule=rule.name,
                config=str(opts.config),
                prometheus=opts.prometheus,
            )
        run = Rollout(opts, config, rule, target, record)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, run.stop.set)
        try:
            return await run.run(session)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


async def _mesh_target(
    opts: Options, cluster: Cluster, config: LaneConfig, rule: ShareRule, session: aiohttp.ClientSession
) -> ShareTarget:
    """`rollout.mesh_target`, imported only for ``--mesh`` (it needs the ``k8s`` extra's `kubernetes`)."""
    from mesh_config.cli import optional_module

    mesh: Any = optional_module("rollout.mesh_target", "lane rollout --mesh")
    if opts.prometheus is None:
        raise RolloutInputError("--mesh needs --prometheus URL, the Prometheus server that scrapes Istio's proxies")
    target: ShareTarget = await mesh.MeshTarget.open(
        config, rule, cluster, path=opts.config, prometheus=opts.prometheus, session=session
    )
    return target
