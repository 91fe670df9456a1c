"""What importing a module costs in memory: the import diet of the sidecar, measured.

The sidecar's RSS target (<= 42 MiB) is mostly decided before the first request, by what it
imports: a bare interpreter is ~10 MiB, ``import aiohttp`` alone ~33 MiB. For each module this
starts a fresh interpreter that imports only that module and reports its peak RSS, the import's
wall time and how many modules it loaded,
and whether aiohttp or the OpenTelemetry SDK came along. For a lane module that pulls aiohttp in,
it also reports the chain of imports that led there (``lane.sidecar.main -> lane.dataplane.upgrades -> aiohttp``),
so the hot path can be routed around it. ``--scan`` does that for every module of the lane
package, to list which ones still pull aiohttp in.

    python bench/imports.py [--scan] [--json] [MODULE ...]

Each measurement is its own subprocess (bounded by a timeout); a module that does not exist (yet)
is reported as missing, not as a failure.

Peak RSS is the kernel's high-water mark of the child's own memory (``VmHWM`` in
/proc/self/status), not ``resource.getrusage(RUSAGE_SELF).ru_maxrss``: on Linux a child started
by fork + exec inherits the parent's RSS at the fork as its ``ru_maxrss``, so every import would
look at least as big as this script. ``ru_maxrss`` is used only where /proc is missing, and
reported beside it in ``--json``.
"""

from __future__ import annotations

import argparse
import json
import pkgutil
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["DEFAULT_MODULES", "Measurement", "lane_modules", "main", "measure"]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODULES = (
    "lane.sidecar.main", "lane.gateway.main", "lane.engine.server", "lane.engine.upstream", "lane.telemetry.metrics", "lane.core.config",
    "lane", "aiohttp", "opentelemetry.sdk.trace", "prometheus_client",
)
HEAVY = ("aiohttp", "opentelemetry.sdk", "opentelemetry.exporter", "yarl", "prometheus_client")

# Run in the fresh interpreter: a finder that remembers, for the first import of each heavy
# package, which modules were being imported at that moment (the frames running a module body).
_PROBE = r"""
import importlib, importlib.abc, json, resource, sys, time
HEAVY = %(heavy)r
chains = {}
class Probe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = next((h for h in HEAVY if name == h or name.startswith(h + ".")), None)
        if top is not None and top not in chains:
            frame, chain = sys._getframe(1), []
            while frame is not None:
                if frame.f_code.co_name == "<module>":
                    module = frame.f_globals.get("__name__")
                    if module and module != "__main__" and (not chain or chain[-1] != module):
                        chain.append(module)
                frame = frame.f_back
            chains[top] = list(reversed(chain)) + [name]
        return None
sys.meta_path.insert(0, Probe())
before = len(sys.modules)
started = time.perf_counter()
error = None
if %(module)r:
    try:
        importlib.import_module(%(module)r)
    except ModuleNotFoundError as exc:
        error = "missing: " + str(exc)
seconds = time.perf_counter() - started
maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    with open("/proc/self/status") as status:
        hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
except (OSError, StopIteration):
    hwm = maxrss
print(json.dumps({"hwm_kib": hwm, "maxrss_kib": maxrss, "seconds": seconds,
                  "modules": len(sys.modules) - before, "error": error,
                  "heavy": sorted(h for h in HEAVY if h in sys.modules), "chains": chains}))
"""


@dataclass(frozen=True, slots=True)
class Measurement:
    module: str  # "" for the bare interpreter
    peak_rss_mib: float  # VmHWM (see the module docstring)
    ru_maxrss_mib: float  # what getrusage says, inherited fork peak included
    seconds: float
    modules: int  # modules loaded by the import
    heavy: tuple[str, ...]  # which of HEAVY came along
    chains: dict[str, list[str]]  # heavy package -> the import chain that first reached it
    error: str | None = None


def measure(module: str) -> Measurement:
    """Peak RSS and the rest of one fresh interpreter that imports only *module*."""
    code = _PROBE % {"heavy": HEAVY, "module": module}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    if done.returncode != 0:
        return Measurement(module, 0.0, 0.0, 0.0, 0, (), {}, f"exit {done.returncode}: {done.stderr.strip()[-300:]}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    return Measurement(module, data["hwm_kib"] / 1024, data["maxrss_kib"] / 1024, data["seconds"], data["modules"],
                       tuple(data["heavy"]), data["chains"], data["error"])


def lane_modules() -> list[str]:
    """Every module of the lane package, found on disk (none imported here)."""
    import lane

    found = [info.name for info in pkgutil.walk_packages(lane.__path__, "lane.")]
    return sorted(["lane"] + [name for name in found if not name.endswith(".__main__")])  # __main__ runs the CLI


def table(bare: Measurement, rows: list[Measurement]) -> str:
    out = [f"{'import':<34} {'peak RSS MiB':>12} {'+ vs bare':>9} {'ms':>7} {'modules':>7}  heavy packages it pulls in"]
    for m in [bare, *rows]:
        name = m.module or "(bare python)"
        if m.error:
            out.append(f"{name:<34} {m.error}")
            continue
        out.append(f"{name:<34} {m.peak_rss_mib:>12.1f} {m.peak_rss_mib - bare.peak_rss_mib:>9.1f} {m.seconds * 1000:>7.0f} "
                   f"{m.modules:>7}  {', '.join(m.heavy) or '-'}")
    return "\n".join(out)


def aiohttp_lines(rows: list[Measurement]) -> list[str]:
    """One line per lane module that pulls aiohttp in: the chain that got there first."""
    lines = []
    for m in rows:
        if m.module.startswith("lane") and "aiohttp" in m.chains:
            lines.append(f"  {m.module}: {' -> '.join(m.chains['aiohttp'])}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help=f"modules to import (default: {' '.join(DEFAULT_MODULES)})")
    parser.add_argument("--scan", action="store_true", help="also every module of the lane package (~0.5 s each)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    names = list(args.modules or DEFAULT_MODULES)
    if args.scan:
        names += [m for m in lane_modules() if m not in names]
    bare = measure("")
    rows = [measure(name) for name in names]
    if args.json:
        print(json.dumps({"python": platform.python_version(), "bare": asdict(bare),
                          "imports": {m.module: asdict(m) for m in rows}}, indent=2))
        return 0
    print(f"peak RSS (VmHWM) of a fresh Python {platform.python_version()} interpreter importing one module "
          f"(bare = importing nothing)\n")
    print(table(bare, rows))
    chains = aiohttp_lines(rows)
    print("\nlane modules that pull aiohttp in (the first import chain that reached it):")
    print("\n".join(chains) if chains else "  none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
