"""How long `lane mesh render` takes for a big mesh: 1,000 services x 5 lanes, by default.

The issue's target is "under 1 s" for that size, as a user sees it. So this script times two
things, several repetitions each, and reports the median and the best:

1. in-process, the phases of the same functions `lane mesh render` calls
   (`mesh_config.cli._render`): parsing the config (`lane.core.config_load.load_config`), building the objects
   (`mesh_config.render.render_objects`) and dumping them (`mesh_config.render.dump_yaml`);
2. the whole CLI, ``python -m lane mesh render -c FILE --output-dir DIR`` in a fresh subprocess, which adds
   interpreter start-up, imports and writing one file per object.

Each step reports wall time (what a user waits) and CPU time (steadier on a machine shared with
other work: the two differ when the machine is busy). The scratch directory (config, output) is
``--workdir`` or the system's temporary directory; note that on some sandboxes creating files in
/tmp is slow (~0.5 ms a file), which the ``--output-dir DIR`` row then includes.

The generated config is deterministic: five lanes (``base``; ``gray``, ``blue`` and ``green``
falling back to ``base``; ``canary`` falling back to ``gray``), every service has ``base`` and
most have the other four, but every 3rd lacks ``gray``, every 4th lacks ``canary``, every 5th
lacks ``blue`` and every 7th lacks ``green``, so fallback routes (``canary -> gray -> base``) are
exercised; four coloring rules (exact header, regex header, cookie, percentage).

    python bench/render_scale.py [--services 1000] [--repeat 5] [--json] [--profile] [--workdir DIR]

``--profile`` prints the top of a cProfile of one in-process render (what to make faster).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from lane.core.config import LaneConfig
from lane.core.config_load import load_config
from mesh_config.render import dump_yaml, render_objects

__all__ = ["LANES", "Timing", "config_text", "main"]

LANES = ("base", "gray", "blue", "green", "canary")
_MISSING_EVERY = {"gray": 3, "canary": 4, "blue": 5, "green": 7}  # service i lacks lane L when i % n == 0
TARGET_SECONDS = 1.0


def config_document(services: int) -> dict[str, Any]:
    """The lane config of *services* services as plain data (see the module docstring)."""
    document: dict[str, Any] = {
        "tag": {"header": "x-mse-tag", "baggage_key": "x-mse-tag", "default_lane": "base"},
        "lanes": {"gray": {"fallback": "base"}, "blue": {"fallback": "base"}, "green": {"fallback": "base"},
                  "canary": {"fallback": "gray"}},
        "entry": "svc-0000",
        "coloring": [
            {"name": "testers", "lane": "gray", "match": {"headers": [{"name": "user-agent", "exact": "xiaoming"}]}},
            {"name": "blue-team", "lane": "blue", "match": {"headers": [{"name": "x-team", "regex": "blue-[0-9]+"}]}},
            {"name": "green-cookie", "lane": "green", "match": {"cookies": [{"name": "lane", "exact": "green"}]}},
            {"name": "canary-5pct", "lane": "canary", "percentage": {"percent": 5, "key": {"header": "x-user-id"}}},
        ],
        "services": {},
    }
    for i in range(services):
        instances = {}
        for j, lane in enumerate(LANES):
            every = _MISSING_EVERY.get(lane)
            if every is None or i % every:
                instances[lane] = [f"10.{i // 250}.{i % 250}.{j + 1}:8080"]
        document["services"][f"svc-{i:04d}"] = {"port": 8080, "instances": instances}
    return document


def config_text(services: int) -> str:
    return str(yaml.safe_dump(config_document(services), sort_keys=False))


@dataclass(frozen=True, slots=True)
class Timing:
    """Wall and CPU seconds of one measured step, one pair per repetition."""

    name: str
    runs: tuple[float, ...]
    cpu: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def best(self) -> float:
        return min(self.runs)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)


def _time(fn: Callable[[], object], repeat: int) -> tuple[Timing, object]:
    runs, cpu, result = [], [], None
    for _ in range(repeat):
        started, cpu_started = time.perf_counter(), time.process_time()
        result = fn()
        runs.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
    return Timing("", tuple(runs), tuple(cpu)), result


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def in_process(path: Path, repeat: int) -> tuple[list[Timing], dict[str, Any]]:
    """The phases of `lane mesh render` timed in this process; also counts what was rendered."""
    load, config = _time(lambda: load_config(path), repeat)
    assert isinstance(config, LaneConfig)
    build, objects = _time(lambda: render_objects(config), repeat)
    assert isinstance(objects, list)
    dump, text = _time(lambda: dump_yaml(objects), repeat)
    assert isinstance(text, str)
    kinds: dict[str, int] = {}
    for obj in objects:
        kinds[obj["kind"]] = kinds.get(obj["kind"], 0) + 1
    total = tuple(map(sum, zip(load.runs, build.runs, dump.runs, strict=True)))
    total_cpu = tuple(map(sum, zip(load.cpu, build.cpu, dump.cpu, strict=True)))
    timings = [Timing("parse config", load.runs, load.cpu), Timing("build objects", build.runs, build.cpu),
               Timing("dump YAML", dump.runs, dump.cpu), Timing("in-process total", total, total_cpu)]
    return timings, {"objects": len(objects), "kinds": kinds, "yaml_bytes": len(text.encode())}


def cli(path: Path, repeat: int, out: Path | None) -> tuple[Timing, int]:
    """``python -m lane mesh render -c PATH --output-dir OUT`` (or ``-o -`` into /dev/null) in fresh
    subprocesses, each writing a new directory; (timing, files written by the last run)."""
    runs, cpu, files = [], [], 0
    # As after `pip install`, which compiles the modules: bytecode may be written (some sandboxes set
    # PYTHONDONTWRITEBYTECODE, and compiling lane's sources on every start costs ~1 s), and one untimed
    # warm-up run writes it.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for i in range(-1, repeat):
        target = ["-o", "-"] if out is None else ["--output-dir", str(out / f"run-{i}")]
        started, cpu_started = time.perf_counter(), _children_cpu()
        done = subprocess.run([sys.executable, "-m", "lane", "mesh", "render", "-c", str(path), *target],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300,
                              check=False, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"lane mesh render exited {done.returncode}: {done.stderr[-2000:]}")
        if i < 0:
            continue
        runs.append(time.perf_counter() - started)
        cpu.append(_children_cpu() - cpu_started)
        files = 0 if out is None else len(list((out / f"run-{i}").iterdir()))
    name = "CLI: lane mesh render -o -" if out is None else "CLI: lane mesh render --output-dir DIR"
    return Timing(name, tuple(runs), tuple(cpu)), files


def profile(path: Path, top: int = 25) -> str:
    """The cProfile of one parse + build + dump, by cumulative time."""
    profiler = cProfile.Profile()
    profiler.enable()
    dump_yaml(render_objects(load_config(path)))
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def table(timings: list[Timing], counts: dict[str, Any], args: argparse.Namespace) -> str:
    head = (f"lane mesh render of {args.services} services x {len(LANES)} lanes: {counts['objects']} objects "
            f"({', '.join(f'{n} {k}' for k, n in sorted(counts['kinds'].items()))}), "
            f"{counts['yaml_bytes'] / 1e6:.1f} MB of YAML; {args.repeat} runs each, "
            f"Python {platform.python_version()}, {os.cpu_count()} CPUs")
    rows = [f"{'step':<32} {'median s':>9} {'best s':>9} {'CPU s':>9} {'of 1 s':>7}"]
    rows += [f"{t.name:<32} {t.median:>9.3f} {t.best:>9.3f} {t.cpu_median:>9.3f} {t.median / TARGET_SECONDS:>6.2f}x"
             for t in timings]
    return "\n".join([head, "", *rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=1000, help="services in the generated config (default 1000)")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions of every measurement (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of one in-process render")
    parser.add_argument("--no-cli", action="store_true", help="skip the CLI subprocess timings")
    parser.add_argument("--workdir", help="where the scratch directory goes (default: the system's temporary directory)")
    args = parser.parse_args(argv)
    if not 1 <= args.services <= 10_000 or not 1 <= args.repeat <= 50:
        parser.error("--services must be 1..10000 and --repeat 1..50")
    with tempfile.TemporaryDirectory(prefix="lane-render-scale-", dir=args.workdir) as tmp:
        path = Path(tmp) / "scale.yaml"
        path.write_text(config_text(args.services), encoding="utf-8")
        timings, counts = in_process(path, args.repeat)
        files = None
        if not args.no_cli:
            timings.append(cli(path, args.repeat, None)[0])
            timing, files = cli(path, args.repeat, Path(tmp))
            timings.append(timing)
        if args.profile:
            print(profile(path), file=sys.stderr)
    if args.json:
        print(json.dumps({
            "services": args.services, "lanes": list(LANES), "repeat": args.repeat, **counts, "files_written": files,
            "target_seconds": TARGET_SECONDS,
            "timings": {t.name: {**asdict(t), "median": t.median, "best": t.best, "cpu_median": t.cpu_median}
                        for t in timings},
        }, indent=2))
    else:
        print(table(timings, counts, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
