"""The gRPC pair of `bench/compare.py` (``grpc-gateway`` against ``grpc-envoy``), run for real on 127.0.0.1.

* the nginx gRPC stubs answer a right-lane call as a gRPC server does (grpcio gets OK and the
  empty reply) and refuse a wrong-lane one (grpcio gets an error), and count each answer;
* h2load (Debian's ``nghttp2-client``, installed by the benchmark when missing) sends gRPC unary
  calls the stubs count one for one, its output and per-request log parsed into wrk's shape,
  side by side at several connections and one after another at 1 (as many calls per header set);
  a misrouted h2load run fails the routing check;
* the grpcio check in front of every gRPC subject passes for the real gateway and fails when a
  call lands on another instance or ends in an error;
* the smallest benchmark of the pair: both routed right, the goal row computed from this run's
  numbers; without h2load the gRPC subjects are skipped with a note, the bench still runs.

Every process (nginx, h2load, the gateway) is started by the test or the benchmark and stopped
by it; the numbers themselves are not asserted (the machine is shared).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
COMPARE = BENCH / "compare.py"
PATH = "/helloworld.Greeter/SayHello"

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(autouse=True)
def _bench_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))  # the bench is scripts, not a package


def _grpcio_call(address: str, lane: str) -> tuple[str, bytes | None]:
    """One real grpcio unary call straight to a stub, with the lane tag as metadata."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = channel.unary_unary(PATH)(b"\x0a\x04lane", metadata=[("x-mse-tag", lane)], timeout=10)
        except grpc.RpcError as exc:
            return exc.code().name, None
    return "OK", reply


def _nginx_children(pid: int) -> list[int]:
    return [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]


def _running(pids: list[int]) -> list[int]:
    return [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


async def test_h2load_grpc_calls_are_counted_by_the_grpc_stubs_and_misrouting_fails(tmp_path: Path) -> None:
    import aiohttp
    from h2load import ensure_h2load, run_h2load
    from nginx_stub import ensure_nginx, start_nginx_stubs
    from runs import check_routing
    from stub_backend import Instance, InstanceCounts
    from subjects import Target

    gray, base = Instance("a", "gray", grpc=True), Instance("a", "base", grpc=True)
    exe = ensure_h2load()
    tag = {"gray": (("x-mse-tag", "gray"),), "base": (("x-mse-tag", "base"),)}
    async with start_nginx_stubs(ensure_nginx(), [gray, base], "x-mse-tag", tmp_path) as stubs:
        pids = _nginx_children(stubs.pid)
        url = f"http://{stubs.address(gray)}{PATH}"
        async with aiohttp.ClientSession() as session:
            before = await stubs.counts(session)
            assert _grpcio_call(stubs.address(gray), "gray") == ("OK", b"")  # a gRPC client accepts the answer
            assert _grpcio_call(stubs.address(gray), "base")[0] == "UNKNOWN"  # HTTP 421: rejected
            assert {i: c - before[i] for i, c in (await stubs.counts(session)).items()} == {
                gray: InstanceCounts(ok=1, refused=1), base: InstanceCounts(0, 0)}

            before = await stubs.counts(session)
            side_by_side = await run_h2load(exe, url, connections=4, seconds=1, requests=[tag["gray"], tag["gray"]],
                                            workdir=tmp_path)
            after = await stubs.counts(session)
            served = after[gray].ok - before[gray].ok
            assert 0 < side_by_side.requests <= served <= side_by_side.requests + 4  # + the calls cut at the end
            assert side_by_side.errors == 0 and after[gray].refused == before[gray].refused
            assert 0 < side_by_side.p50_us <= side_by_side.p90_us <= side_by_side.p99_us
            assert 0.9e6 <= side_by_side.duration_us <= 1.5e6  # the two processes ran at the same time
            assert len(side_by_side.shares) == 2 and abs(sum(side_by_side.shares) - 1) < 1e-9

            before = await stubs.counts(session)
            one = await run_h2load(exe, url, connections=1, seconds=2, requests=[tag["gray"], tag["base"]],
                                   workdir=tmp_path)
            after = await stubs.counts(session)
            right, wrong = after[gray].ok - before[gray].ok, after[gray].refused - before[gray].refused
            assert abs(right - wrong) <= 1 and one.status_errors == wrong > 0  # one after the other, as many each
            assert right + wrong - 1 <= one.requests <= right + wrong
            assert 1.0e6 <= one.duration_us <= 3.0e6  # 1 s for the first, as many calls for the second
            assert one.shares == ()  # one after the other, as many calls each: half and half

            target = Target("grpc-test", url, (tag["gray"], tag["base"]), {gray: 1.0}, {}, 0, None, "test",
                            load="h2load")
            before = await stubs.counts(session)
            misrouted = await run_h2load(exe, url, connections=4, seconds=1, requests=target.requests,
                                         workdir=tmp_path)
            after = await stubs.counts(session)
    routing = check_routing(target, misrouted, 4, before, after)
    refused = after[gray].refused - before[gray].refused
    assert not routing.ok and routing.refused == {"a@gray/grpc": refused}
    assert abs(misrouted.status_errors - refused) <= 4 and refused > 0
    assert any(p.startswith(f"h2load saw {misrouted.status_errors} answers with status >= 400") for p in routing.problems)
    assert not list(tmp_path.glob("h2load-*.log"))  # the per-request logs were read and removed
    assert _running(pids) == []


async def test_the_grpcio_check_passes_the_gateway_and_catches_a_wrong_landing(tmp_path: Path) -> None:
    import aiohttp
    from grpc_check import GrpcCheckError, check_grpc
    from subjects import A_BASE_GRPC, A_GRAY_GRPC, Lab, Target

    async with Lab(tmp_path, ["grpc-gateway"], "nginx") as lab:
        found = await lab.start(lambda _: None)
        stubs, target = lab.stubs, found["grpc-gateway"]
        assert stubs is not None and target.load == "h2load"
        pids = [p for pid in (stubs.pid, target.processes["grpc-gateway"]) for p in _nginx_children(pid)]
        async with aiohttp.ClientSession() as session:
            await check_grpc(target, stubs, session, {"gray": ("xiaoming", A_GRAY_GRPC), "plain": ("", A_BASE_GRPC)})
            with pytest.raises(GrpcCheckError, match=r"a gray grpcio call was answered by \{'a@gray/grpc': 1\}, "
                                                     r"expected a@base/grpc once"):
                await check_grpc(target, stubs, session, {"gray": ("xiaoming", A_BASE_GRPC)})
            straight = Target("stub", f"http://{stubs.address(A_GRAY_GRPC)}{PATH}", (), {}, {}, 0, None, "no tag")
            with pytest.raises(GrpcCheckError, match=r"ended UNKNOWN \('Received http2 header with status: 421'\)"):
                await check_grpc(straight, stubs, session, {"plain": ("", A_GRAY_GRPC)})
    assert _running(pids) == []


def _compare(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str],
                                                                                     dict[str, Any]]:
    out = tmp_path / "compare.json"
    done = subprocess.run(
        [sys.executable, str(COMPARE), "--rounds", "1", "--duration", "1", "--warmup", "0", "--no-with-soak",
         "--no-svg", "--json", str(out), *args],
        cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180, check=False,
        env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    return done, json.loads(out.read_text())


def test_the_grpc_pair_is_measured_side_by_side_and_routed_right(tmp_path: Path) -> None:
    done, doc = _compare(tmp_path, "--subjects", "grpc-envoy,grpc-gateway", "--stubs", "nginx")
    assert "checking grpc-gateway with real grpcio calls" in done.stderr
    assert doc["settings"]["subjects"] == ["grpc-envoy", "grpc-gateway"] and doc["settings"]["skipped_subjects"] == {}
    assert doc["settings"]["load_by_subject"] == {"grpc-envoy": "h2load", "grpc-gateway": "h2load"}
    assert doc["machine"]["h2load"].startswith("h2load nghttp2/")
    assert doc["routing_ok"] is True
    for run in doc["runs"]:
        answered = run["routing"]["answered"]
        assert run["routing"]["ok"] and sum(run["errors"].values()) == 0, run
        assert sum(answered.values()) >= run["requests"] > 0, run
        assert 0.45 <= answered["a@gray/grpc"] / sum(answered.values()) <= 0.55, run  # gray and plain, side by side
        assert answered["a@gray"] == answered["a@base"] == answered["b@gray"] == answered["b@base"] == 0, run
    gw, envoy = doc["subjects"]["grpc-gateway"], doc["subjects"]["grpc-envoy"]
    for subject in (gw, envoy):
        assert subject["rps"]["c32"] > 0 and subject["rps"]["c1"] > 0 and subject["cpu_seconds_per_10k"]["c32"] > 0
    vs = doc["ratios"]["vs_peer"]["grpc-gateway"]
    assert vs["peer"] == "grpc-envoy"
    assert vs["rps_c32"] == pytest.approx(gw["rps"]["c32"] / envoy["rps"]["c32"], rel=1e-3)
    targets = {t["target"]: t for t in doc["targets"]}
    rps = targets["gRPC unary through the gateway req/s at 32 conns >= 1.0x Envoy's"]
    assert rps["value"] == pytest.approx(vs["rps_c32"], rel=1e-3) and rps["met"] is (rps["value"] >= 1.0)
    cpu = targets["gRPC unary through the gateway CPU per request <= Envoy's (reported)"]
    assert cpu["value"] == pytest.approx(vs["cpu_per_request_c32"], rel=1e-3)
    assert f"{vs['rps_c32']:.2f}x" in done.stdout and "\ngrpc-gateway " in done.stdout


def test_without_h2load_the_grpc_subjects_are_skipped_with_a_note(tmp_path: Path) -> None:
    done, doc = _compare(tmp_path, "--subjects", "direct,grpc-gateway", env={"LANE_BENCH_H2LOAD": "/nonexistent"})
    assert doc["settings"]["subjects"] == ["direct"] and list(doc["subjects"]) == ["direct"]
    why = doc["settings"]["skipped_subjects"]["grpc-gateway"]
    assert why.startswith("skipped: h2load (Debian's nghttp2-client) unavailable: LANE_BENCH_H2LOAD=")
    assert f"grpc-gateway: {why}" in done.stdout and doc["routing_ok"] is True
    only_grpc = subprocess.run(
        [sys.executable, str(COMPARE), "--subjects", "grpc-gateway", "--rounds", "1", "--duration", "1",
         "--no-with-soak", "--json", str(tmp_path / "never.json")],
        cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "LANE_BENCH_H2LOAD": "/nonexistent"})
    assert only_grpc.returncode == 2 and "error: no subject left to measure: grpc-gateway skipped" in only_grpc.stderr
    assert not (tmp_path / "never.json").exists()
