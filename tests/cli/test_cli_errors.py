"""Every ``lane`` command, given bad input, answers with one line and exit status 2 and starts nothing.

Each case runs ``python -m lane ...`` as a user would, in its own session, with an audit hook
(``sitecustomize.py`` on PYTHONPATH, `sys.addaudithook`) that records every process the command
starts: ``lane demo --port 80000`` used to start twelve processes before failing. The rule
for stderr is the same for argparse's errors and the commands' own: exactly one non-empty line,
no traceback, nothing on stdout. A command added without a bad-input case here fails
`test_every_command_has_a_bad_input_case`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from lane.cli.main import COMMANDS

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo.yaml"
ROLLOUT = ROOT / "examples" / "rollout.yaml"

# Children are seen twice over: a Python child (every lane process, locust) says so when it starts, as
# it inherits the environment with the marker set by the command itself; and the audit hook sees
# subprocess.Popen (uvloop's spawns, which lane's proxies and the demo use, raise no audit event).
AUDIT_HOOK = """\
import os, sys

_log = os.environ.get("LANE_TEST_SPAWN_LOG")

def _record(event, args):
    if event in ("subprocess.Popen", "os.posix_spawn", "os.fork", "os.exec"):
        with open(_log, "a") as out:
            out.write(f"{event} {args[:2]!r}\\n")

if _log:
    if os.environ.get("LANE_TEST_DESCENDANT"):
        with open(_log, "a") as out:
            out.write(f"started {sys.argv!r}\\n")
    os.environ["LANE_TEST_DESCENDANT"] = "1"
    sys.addaudithook(_record)
"""

MANIFEST = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: orders}
spec:
  selector: {matchLabels: {app: orders, version: base}}
  template:
    metadata: {labels: {app: orders, version: base}}
    spec:
      containers: [{name: orders, image: orders:1, ports: [{containerPort: 9090}]}]
"""


@dataclass(frozen=True)
class Files:
    binary: str
    latin1: str
    directory: str
    missing: str
    bad_yaml: str
    manifest: str
    busy: str  # 127.0.0.1:PORT that a socket of this test listens on


def cases(f: Files) -> list[tuple[list[str], str]]:
    """(argv, a fragment the one line must contain) for every command and `lane mesh` subcommand."""
    busy_port = f.busy.rpartition(":")[2]
    app = ["--service", "a", "--lane", "base"]
    return [
        ([], "the following arguments are required: COMMAND"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["--log-level", "LOUD", "check"], "argument --log-level: expected a log level"),
        (["check", "--log-level", "LOUD"], "argument --log-level: expected a log level"),
        (["check", f.binary], "not UTF-8 text"),
        (["check", "--config", f.latin1], "not UTF-8 text"),
        (["check", f.directory], "Is a directory"),
        (["check", f.missing], "No such file or directory"),
        (["check", str(DEMO), "--config", f.latin1], "name different configs"),
        (["check", "--bogus"], "lane check: error: unrecognized arguments: --bogus"),
        (["schema", "--bogus"], "lane schema: error: unrecognized arguments: --bogus"),
        (["gateway", "--config", f.binary], "not UTF-8 text"),
        (["gateway", "--config", f.directory], "Is a directory"),
        (["gateway", "--listen", "nope"], "argument --listen: expected HOST:PORT"),
        (["gateway", "--listen", "127.0.0.1:99999"], "argument --listen: expected HOST:PORT"),
        (["gateway", "--workers", "0"], "argument --workers: expected a positive integer"),
        (["gateway", "--core", "aiohttp"], "unrecognized arguments: --core"),  # one core: the choice is gone
        (["gateway", "--drain-seconds", "-5"], "argument --drain-seconds: expected seconds"),
        (["gateway", "--demo", "--listen", f.busy, "--admin", "127.0.0.1:0"], "address already in use"),
        (["gateway", "--demo", "--workers", "2", "--listen", f.busy, "--admin", "127.0.0.1:0"],
         "address already in use"),
        (["sidecar", "--config", f.latin1], "not UTF-8 text"),
        (["sidecar", "--app", "nope"], "argument --app: expected HOST:PORT"),
        (["sidecar", "--config", str(DEMO)], "--service is required"),
        (["demo", "--config", f.binary], "not UTF-8 text"),
        (["demo", "--config", f.latin1], "not UTF-8 text"),
        (["demo", "--config", f.directory], "Is a directory"),
        (["demo", "--config", f.missing], "No such file or directory"),
        (["demo", "--port", "80000"], "argument --port: expected a port from 0 to 65535"),
        (["demo", "--admin-port", "-1"], "argument --admin-port: expected a port from 0 to 65535"),
        (["demo", "--port", busy_port], "address already in use"),
        (["demo", "--child-log-level", "LOUD"], "argument --child-log-level: expected a log level"),
        (["demo", "--ready-file", f"{f.missing}/ready.json"], "no such directory"),
        (["demo-app"], "the following arguments are required: --service, --lane"),
        (["demo-app", *app, "--listen", "x"], "argument --listen: expected HOST:PORT"),
        (["demo-app", *app, "--listen", f.busy], "address already in use"),
        (["demo-grpc", "--gateway", "x"], "argument --gateway: expected host:port"),
        (["demo-grpc", "--timeout", "soon"], "argument --timeout: invalid float value"),
        (["graph"], "required"),  # which of its options are is the graph command's to say
        (["graph", "--admin", "http://127.0.0.1:1", "--format", "png"], "argument --format: invalid choice"),
        (["rollout"], "the following arguments are required: "),
        (["rollout", "--config", f.binary, "--lane", "gray", "--admin", "http://127.0.0.1:1"], "not UTF-8 text"),
        (["inject"], "the following arguments are required: -f/--filename"),
        (["inject", "-f", f.binary], "not UTF-8 text"),
        (["inject", "-f", f.directory], "Is a directory"),
        (["inject", "-f", f.missing], "No such file or directory"),
        (["inject", "-f", f.bad_yaml], "not valid YAML: line 2, column 1"),
        (["inject", "-f", f.manifest, "--app-port", "99999"], "expected a port from 0 to 65535"),
        (["inject", "-f", f.manifest, "-o", f.directory], f"cannot write {f.directory}"),
        (["mesh"], "the following arguments are required: SUBCOMMAND"),
        (["mesh", "bogus"], "invalid choice: 'bogus'"),
        (["mesh", "render", "--config", f.binary], "not UTF-8 text"),
        (["mesh", "render", "-o", "out"], "expected yaml or json, got 'out'"),
        (["mesh", "render", "-o", "json", "--output-dir", f.missing], "give one of them"),
        (["mesh", "render", "--bogus"], "lane mesh render: error: unrecognized arguments: --bogus"),
        (["mesh", "render", "-n", "Bad_NS"], "argument --namespace/-n: expected a DNS-1123 label"),
        (["mesh", "render", "--from-cluster", "--kubeconfig", f.binary], "argument --kubeconfig"),
        (["mesh", "validate"], "the following arguments are required: --crds"),
        (["mesh", "validate", "--crds", f.binary], "argument --crds"),
        (["mesh", "validate", "--crds", f.directory], "Is a directory"),
        (["mesh", "validate", "--crds", f.bad_yaml], "not valid YAML"),
        (["mesh", "validate", "--crds", str(DEMO), f.binary], "argument files"),
        (["mesh", "verify", "--config", f.latin1], "not UTF-8 text"),
        (["mesh", "verify", "--vectors", f.binary], "argument --vectors"),
        (["mesh", "verify", "--envoy", f.missing], "no such executable"),
        (["mesh", "verify", "--concurrency", "0"], "expected a positive integer"),
        (["mesh", "verify", "--kill", "nope"], "expected SERVICE@LANE"),
        (["mesh", "verify", "--forward", "zz"], "unknown mode 'zz'"),
        (["mesh", "apply", "--kubeconfig", f.binary], "argument --kubeconfig"),
        (["mesh", "apply", "--config", f.latin1], "not UTF-8 text"),
        (["mesh", "apply", "--namespace", "a.b"], "expected a DNS-1123 label"),
        (["mesh", "sync", "--debounce", "-1"], "argument --debounce"),
        (["mesh", "sync", "--config", f.directory], "Is a directory"),
        (["loadtest"], "--host is required"),
        (["loadtest", "--host", "ftp://x"], "--host must be an http(s) URL"),
        (["loadtest", "--json", "summary.json"], "--lane-json"),
        (["loadtest", "--host", "http://127.0.0.1:1", "--config", f.binary], "not UTF-8 text"),
        (["loadtest", "--users", "0"], "argument --users/-u: expected a positive integer"),
        (["loadtest", "--run-time", "soon"], "expected a time span"),
        # locust used to be started and refuse this one itself
        (["loadtest", "--host", "http://127.0.0.1:1", "--headless", "--spawn-rate", "-1"],
         "argument --spawn-rate/-r: expected a number above 0"),
        (["loadtest", "--host", "http://127.0.0.1:1", "--headless", "--pace", "-1"], "argument --pace: expected seconds"),
        (["loadtest", "--web-port", "99999"], "argument --web-port: expected a port from 0 to 65535"),
        (["demo", "--fault", "c@gray:error=2"], "expected error=FRACTION"),
        (["demo", "--fault", "nobody@gray:error=0.2"], "--fault nobody@gray: the config has no such instance"),
        (["rollout", "--lane", "gray", "--admin", "127.0.0.1:1"], "--config FILE is required"),
        (["rollout", "--lane", "gray", "--demo", "127.0.0.1:1"], "--demo http://127.0.0.1:1: cannot read"),
        (["rollout", "--config", str(ROLLOUT), "--lane", "gray", "--admin", "127.0.0.1:1", "--steps", "50,5"],
         "steps must increase"),
        (["rollout", "--config", str(ROLLOUT), "--lane", "gray", "--admin", "127.0.0.1:1", "--interval", "soon"],
         "expected a duration"),
        (["rollout", "--config", str(DEMO), "--lane", "gray", "--admin", "127.0.0.1:1"],
         "no coloring rule with a `percentage` colors lane gray"),
        (["rollout", "--config", str(ROLLOUT), "--lane", "gray", "--admin", "127.0.0.1:1"],
         "admin http://127.0.0.1:1"),
        (["rollout", "--config", str(ROLLOUT), "--lane", "gray", "--admin", "127.0.0.1:1", "--load"],
         "--load needs --host"),
    ]


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    spawned: str  # what the audit hook saw
    left: list[str]  # processes of the command's session still alive after it exited


def _run(argv: list[str], cwd: Path, env: dict[str, str], spawn_log: Path) -> Outcome:
    with subprocess.Popen([sys.executable, "-m", "lane", *argv], cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True,
                          env={**env, "LANE_TEST_SPAWN_LOG": str(spawn_log)}) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            stdout, stderr = proc.communicate()
    left = []
    for other in psutil.process_iter(["pid", "cmdline"]):
        try:
            if os.getsid(other.info["pid"]) == proc.pid:
                left.append(" ".join(other.info["cmdline"] or []))
                other.kill()  # not ours to leave behind, whatever the verdict
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    spawned = spawn_log.read_text() if spawn_log.exists() else ""
    return Outcome(proc.returncode, stdout, stderr, spawned, left)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[tuple[str, str, Outcome]]]:
    """Every case, run four at a time (each is an interpreter start-up and an import)."""
    tmp = tmp_path_factory.mktemp("cli-errors")
    hook = tmp / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(AUDIT_HOOK)
    (tmp / "binary.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    (tmp / "latin1.yaml").write_bytes("entry: caf\u00e9\n".encode("latin-1"))
    (tmp / "a-directory").mkdir()
    (tmp / "bad.yaml").write_text("kind: [unclosed\n")
    (tmp / "manifest.yaml").write_text(MANIFEST)
    work = tmp / "cwd"  # the commands' working directory: must stay empty (no `yaml/`, no `out/`)
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])}
    env.pop("LANE_CONFIG", None)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        files = Files(binary=str(tmp / "binary.bin"), latin1=str(tmp / "latin1.yaml"),
                      directory=str(tmp / "a-directory"), missing=str(tmp / "missing"),
                      bad_yaml=str(tmp / "bad.yaml"), manifest=str(tmp / "manifest.yaml"),
                      busy=f"127.0.0.1:{busy.getsockname()[1]}")
        table = cases(files)
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = [pool.submit(_run, argv, work, env, tmp / f"spawned-{i}.log") for i, (argv, _) in enumerate(table)]
            results = [(" ".join(argv), fragment, future.result())
                       for (argv, fragment), future in zip(table, futures, strict=True)]
    assert list(work.iterdir()) == [], "a command wrote into its working directory"
    yield results


_PLACEHOLDERS = Files(binary="BIN", latin1="LATIN1", directory="DIR", missing="MISSING", bad_yaml="BAD",
                      manifest="MANIFEST", busy="127.0.0.1:BUSY")


def _ids() -> list[str]:
    return [" ".join(argv) or "(nothing)" for argv, _ in cases(_PLACEHOLDERS)]


@pytest.mark.parametrize("index", range(len(cases(_PLACEHOLDERS))), ids=_ids())
def test_bad_input_is_one_line_exit_2_and_starts_nothing(outcomes: list[tuple[str, str, Outcome]],
                                                        index: int) -> None:
    key, fragment, outcome = outcomes[index]
    lines = outcome.stderr.splitlines()
    assert outcome.returncode == 2, (key, outcome.stderr)
    assert "Traceback" not in outcome.stderr
    assert len(lines) == 1 and lines[0].strip(), f"lane {key}: stderr is not one line:\n{outcome.stderr}"
    assert outcome.stdout == ""
    assert fragment in lines[0], (key, lines[0])
    assert outcome.spawned == "", f"lane {key} started processes before refusing:\n{outcome.spawned}"
    assert outcome.left == []


def test_every_command_has_a_bad_input_case() -> None:
    walked = {argv[0] for argv, _ in cases(_PLACEHOLDERS) if argv and not argv[0].startswith("-")}
    walked_mesh = {argv[1] for argv, _ in cases(_PLACEHOLDERS) if len(argv) > 1 and argv[0] == "mesh"}
    from mesh_config.cli import EXTERNAL

    assert set(COMMANDS) <= walked | {"frobnicate"}
    assert {"render", "validate", "verify", *EXTERNAL} <= walked_mesh


def test_the_spawn_recorder_sees_a_python_child(tmp_path: Path) -> None:
    """The recorder the cases rely on is not blind: a command that starts a child is caught."""
    (tmp_path / "sitecustomize.py").write_text(AUDIT_HOOK)
    spawn_log = tmp_path / "spawned.log"
    code = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'pass'], check=True)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                   env={**os.environ, "PYTHONPATH": str(tmp_path), "LANE_TEST_SPAWN_LOG": str(spawn_log)})
    lines = spawn_log.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["subprocess.Popen", "started"]
