"""Wiring a `LaneSession` into locust: options, roles, worker reports, chaos, the final verdict.

* Options are locust options (``--lane-config`` ... each with an ``LANE_LOADTEST_*`` env var), so
  the same locustfile works from `lane loadtest`, from ``locust -f`` and on every worker.
* Workers (and a local runner) poll the admin endpoints and judge requests; each report to the
  master carries the lane counts since the last one (``report_to_master``); the master merges
  them (``worker_report``), so its totals are the sum of what the workers counted.
* The master (or local runner) drives ``--chaos`` and, at ``quitting``, prints the lane matrix,
  writes the JSON summary, adds the matrix to locust's HTML report and sets the exit code.

Imports locust: only the locustfile imports this module, inside a locust process.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import weakref
from pathlib import Path
from typing import Any

import gevent
from locust.env import Environment
from locust.event import Events
from locust.runners import STATE_INIT, STATE_STOPPED, MasterRunner, WorkerRunner

from lane.core.config import LaneConfig
from lane.core.config_load import load_config_or_demo

from .chaos import choose_target, parse_target, run_chaos
from .grpc_client import agent_suffix
from .propagation import Propagation, gather
from .report import Phase, build_json, dumps, render_text, render_verdict
from .report_html import inject_html, render_html_section
from .session import LaneOptions, LaneSession
from .summary import ChaosRun, Thresholds
from .watch import AdminPoller
from .watch import post as http_post
from .webui import install_web_ui

__all__ = ["add_options", "install", "options_from", "poller_of", "session_of"]

log = logging.getLogger("lane.loadtest")

_SESSIONS: weakref.WeakKeyDictionary[Environment, LaneSession] = weakref.WeakKeyDictionary()
_POLLERS: weakref.WeakKeyDictionary[Environment, AdminPoller] = weakref.WeakKeyDictionary()


def _listen(hook: Any, handler: Any) -> None:
    hook.add_listener(handler)  # locust's EventHook.add_listener is untyped


def session_of(environment: Environment) -> LaneSession:
    return _SESSIONS[environment]


def poller_of(environment: Environment) -> AdminPoller | None:
    return _POLLERS.get(environment)


def add_options(parser: Any, **_: Any) -> None:
    # On the parser itself, not a group: only LocustArgumentParser.add_argument knows include_in_web_ui.
    group = parser
    opt = {"include_in_web_ui": False}
    group.add_argument("--lane-config", default="", env_var="LANE_LOADTEST_CONFIG", **opt,
                       help="lane config YAML (default: the embedded demo config)")
    group.add_argument("--lane-admin", default="", env_var="LANE_LOADTEST_ADMIN", **opt,
                       help="comma-separated admin base URLs to poll for GET /lane/instances")
    group.add_argument("--lane-json", default="", env_var="LANE_LOADTEST_JSON", **opt,
                       help="write the lane summary JSON here at the end")
    group.add_argument("--lane-max-error-rate", type=float, default=0.01, env_var="LANE_LOADTEST_MAX_ERROR_RATE",
                       **opt, help="fail when HTTP failures / requests exceeds this (default 0.01)")
    group.add_argument("--lane-share-z", type=float, default=4.0, env_var="LANE_LOADTEST_SHARE_Z", **opt,
                       help="tolerance of percentage shares in binomial standard deviations (default 4)")
    group.add_argument("--lane-poll-interval", type=float, default=0.5, env_var="LANE_LOADTEST_POLL_INTERVAL", **opt,
                       help="seconds between admin polls (default 0.5)")
    group.add_argument("--lane-grace", type=float, default=1.5, env_var="LANE_LOADTEST_GRACE", **opt,
                       help="seconds around a request in which an unhealthy sighting justifies a fallback")
    group.add_argument("--lane-chaos", default="", env_var="LANE_LOADTEST_CHAOS", **opt,
                       help="'auto' or service@lane: stop and restart that demo instance mid-run")
    group.add_argument("--lane-chaos-after", type=float, default=-1.0, env_var="LANE_LOADTEST_CHAOS_AFTER", **opt,
                       help="seconds into the run before stopping the chaos target (default: 20%% of the run)")
    group.add_argument("--lane-chaos-down", type=float, default=-1.0, env_var="LANE_LOADTEST_CHAOS_DOWN", **opt,
                       help="seconds the chaos target stays down (default: 20%% of the run)")
    group.add_argument("--lane-no-forged", action="store_true", default=False, env_var="LANE_LOADTEST_NO_FORGED",
                       **opt, help="do not send personas that forge the lane tag or baggage")
    group.add_argument("--lane-pace", type=float, default=0.02, env_var="LANE_LOADTEST_PACE", **opt,
                       help="seconds each user waits between requests (default 0.02)")
    group.add_argument("--lane-grpc", default="", env_var="LANE_LOADTEST_GRPC", **opt,
                       help="also send every persona gRPC can carry as a unary call to this method (needs grpcio)")


def options_from(parsed: Any) -> tuple[LaneConfig, LaneOptions]:
    path = getattr(parsed, "lane_config", "") or ""
    config = load_config_or_demo(path)
    admins = tuple(a.strip() for a in (getattr(parsed, "lane_admin", "") or "").split(",") if a.strip())
    options = LaneOptions(
        admins=admins,
        json_path=getattr(parsed, "lane_json", "") or None,
        thresholds=Thresholds(max_error_rate=parsed.lane_max_error_rate, share_z=parsed.lane_share_z),
        poll_interval=parsed.lane_poll_interval,
        grace=parsed.lane_grace,
        chaos=getattr(parsed, "lane_chaos", "") or None,
        chaos_after=parsed.lane_chaos_after if parsed.lane_chaos_after >= 0 else None,
        chaos_down=parsed.lane_chaos_down if parsed.lane_chaos_down >= 0 else None,
        forged=not parsed.lane_no_forged,
        pace=parsed.lane_pace,
        grpc_method=getattr(parsed, "lane_grpc", "") or None,
        grpc_agent=agent_suffix() if getattr(parsed, "lane_grpc", "") else "",
    )
    return config, options


def _document(environment: Environment, session: LaneSession, propagation: Propagation | None = None) -> dict[str, Any]:
    total = environment.runner.stats.total if environment.runner is not None else None
    totals = {"requests": total.num_requests, "failures": total.num_failures} if total is not None else None
    return build_json(session.summary(), session.stats, session.personas, session.config, totals, propagation)


class _Chaos:
    """The chaos greenlet of the master (or local runner) and its cleanup."""

    def __init__(self, environment: Environment, session: LaneSession) -> None:
        self.environment = environment
        self.session = session
        self.greenlet: gevent.Greenlet[Any, Any] | None = None
        self.target: tuple[str, str] | None = None

    def start(self) -> None:
        opts, config = self.session.options, self.session.config
        if not opts.chaos or self.greenlet is not None:
            return
        if not opts.admins:
            self.session.chaos = ChaosRun("?", "?", error="--chaos needs the demo admin URL (--admin)")
            return
        target = choose_target(config, self.session.personas) if opts.chaos == "auto" else parse_target(opts.chaos, config)
        if target is None:
            self.session.chaos = ChaosRun("?", "?", error="no lane instance that a persona must reach")
            return
        self.target = target
        run_time = getattr(self.environment.parsed_options, "run_time", None) or 20
        # Stop early and briefly: after the restart the proxies may keep the instance ejected for
        # eject_seconds, and recovery must be seen before the run ends.
        after = opts.chaos_after if opts.chaos_after is not None else max(1.0, run_time * 0.2)
        down = opts.chaos_down if opts.chaos_down is not None else max(1.0, run_time * 0.2)
        if after + down + config.proxy.eject_seconds + 2 > run_time:
            log.warning("chaos: a %ss run may end before %s@%s is back (stop at %.0fs, %.0fs down, ejected up to %gs)",
                        run_time, *target, after, down, config.proxy.eject_seconds)
        self.session.chaos = ChaosRun(*target, error="the run ended before the chaos cycle finished")

        def drive() -> None:
            self.session.chaos = run_chaos(
                opts.admins[0], target, after=after, down=down, eject_seconds=config.proxy.eject_seconds,
                history=self.session.health, sleep=gevent.sleep, clock=time.time,
            )

        self.greenlet = gevent.spawn(drive)

    def stop(self) -> None:
        if self.session.chaos is not None:
            self.session.chaos = dataclasses.replace(self.session.chaos, ended_at=time.time())
        if self.greenlet is not None and not self.greenlet.ready():
            self.greenlet.kill(block=True, timeout=5)
            if self.target is not None:  # never leave the demo with an instance stopped
                service, lane = self.target
                try:
                    http_post(f"{self.session.options.admins[0].rstrip('/')}/demo/instances/{service}/{lane}/start")
                except OSError as exc:
                    log.warning("chaos: could not restart %s@%s: %s", service, lane, exc)


def _phase(environment: Environment) -> Phase:
    """Before the start, during the run, or after it (stopped by --run-time, the UI's Stop, or quitting)."""
    state = environment.runner.state if environment.runner is not None else None
    return "ready" if state == STATE_INIT else "ended" if state == STATE_STOPPED else "running"


def _finish(environment: Environment, session: LaneSession) -> str:
    """Report the verdict everywhere (terminal, JSON, HTML report, exit code); returns its closing lines."""
    summary = session.summary()
    # What each app forwarded of the lane, read once at the end from the sidecars (`loadtest.propagation`).
    propagation = gather(session.options.admins) if session.options.admins else None
    print(render_text(summary, session.stats, session.personas, session.config, propagation), flush=True)
    doc = _document(environment, session, propagation)
    if session.options.json_path:
        path = Path(session.options.json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dumps(doc), encoding="utf-8")
    html_file = getattr(environment.parsed_options, "html_file", None)
    if html_file and Path(html_file).is_file():
        inject_html(html_file, render_html_section(summary, session.stats, session.personas, session.config,
                                                   propagation))
    environment.process_exit_code = summary.exit_code
    log.info("lane verdict: %s", "PASS" if summary.ok else "FAIL: " + json.dumps(list(summary.reasons)))
    return render_verdict(summary, session.stats)


def _on_init(environment: Environment, **_: Any) -> None:
    config, options = options_from(environment.parsed_options)
    session = LaneSession(config, options)
    _SESSIONS[environment] = session
    runner = environment.runner
    is_master = isinstance(runner, MasterRunner)
    is_worker = isinstance(runner, WorkerRunner)
    events = environment.events
    stop_polling = False
    log.info("lane: %d personas from %s; admins %s", len(session.personas), config.source, list(options.admins))

    if not is_master and options.admins:
        poller = AdminPoller(options.admins, session.health)
        _POLLERS[environment] = poller
        poller.poll_once()
        gevent.spawn(poller.run, options.poll_interval, lambda: stop_polling, gevent.sleep)

    if is_worker:
        def report(client_id: str, data: dict[str, Any], **_: Any) -> None:
            data["lane"] = session.take_report()

        _listen(events.report_to_master, report)
    else:
        chaos = _Chaos(environment, session)
        _listen(events.test_start, lambda **_: chaos.start())

        verdict = ""

        def quitting(**_: Any) -> None:
            nonlocal stop_polling, verdict
            stop_polling = True
            chaos.stop()
            verdict = _finish(environment, session)

        def quit_(**_: Any) -> None:
            # locust prints its request/percentile/error tables after `quitting` and before `quit`:
            # repeat the verdict so it is the last thing in the terminal or the CI log.
            if verdict:
                print(f"\nLane verdict (the lane matrix is above locust's tables)\n{verdict}", end="", flush=True)

        _listen(events.quitting, quitting)
        _listen(events.quit, quit_)
        if environment.web_ui is not None:
            install_web_ui(environment.web_ui, session, lambda: _document(environment, session),
                           lambda: _phase(environment))

    if is_master:
        def merge(client_id: str, data: dict[str, Any], **_: Any) -> None:
            if "lane" in data:
                try:
                    session.merge_report(client_id, data["lane"])
                except ValueError as exc:
                    log.error("ignoring a malformed lane report from worker %s: %s", client_id, exc)

        _listen(events.worker_report, merge)


def install(events: Events) -> None:
    """Register the lane plugin's listeners on locust's global *events*."""
    _listen(events.init_command_line_parser, add_options)
    _listen(events.init, _on_init)
