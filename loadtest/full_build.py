"""Full build from files: how long a router restart or reload takes to get from the deployment
directory to a first routing table, measured the way ``router serve`` and the reloader do it.

"Full build" is, in this order and all of it on one thread:

1. ``ConfigFiles.read``: the digests of every file the config is made of (what the reloader
   compares to see whether anything changed);
2. ``load_deployment``: every file parsed and validated (zones, policies, nodes, latency,
   state), the client map taken from the compiled cache in ``cache_dir`` or, with ``--cold``
   (``full_build_cold_s``), built from the sources, written to the cache and mapped;
3. ``loaded.prepare``: the steering model compiled, the answer book and the DNS fast path's
   compiled book, the planner seeded;
4. the first routing table planned (``Planner.build``, all nodes up), the plan every worker is
   handed before it answers.

Kernel compilation is not in it: the numba caches are warmed by one build before the clock
starts, as on any start after the first. ``measure_full_build`` runs each measurement in a
fresh interpreter, so no state of an earlier build (page cache aside) is reused, and times
two cases:

* ``full_build_s``, a reload: the interpreter has already built the sample deployment
  (``zones/``) before the clock starts, so the modules are imported and the kernels loaded,
  as in a running router;
* ``full_build_restart_s``, a restart: only the modules imported before the clock; loading
  the compiled kernels from numba's cache is inside it.

Run: ``python -m loadtest.full_build [--zones var/world] [--repeat 3] [--cold] [--profile]``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORLD = REPO / "var" / "world"
SAMPLE = REPO / "zones"


def full_build(zones: Path) -> dict[str, float]:
    """One full build in this process; returns the seconds of each step and ``total``."""
    from router.config import load_deployment
    from router.service import loaded
    from router.service.config_files import ConfigFiles

    steps: dict[str, float] = {}
    began = mark = time.perf_counter()

    def step(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        steps[name] = round(now - mark, 3)
        mark = now

    files = ConfigFiles.read(zones)
    step("files_read")
    deployment = load_deployment(zones)
    step("load_deployment")
    config = loaded.prepare(deployment, None, files, 1, True, False)
    step("prepare")
    table = config.planner.build(config.health.states(), config.health.utilization(), 1)
    step("plan")
    steps["total"] = round(time.perf_counter() - began, 3)
    steps["nodes"] = len(config.model.node_ids)
    steps["groups"] = len(config.model.client_map.groups)
    assert table.generation == 1
    return steps


def _run_child(
    zones: Path, profile: Path | None = None, warm: bool = True, cold: bool = False
) -> dict[str, float]:
    argv = [sys.executable, "-m", "loadtest.full_build", "--child", "--zones", str(zones)]
    if warm:
        argv += ["--warm-with", str(SAMPLE)]
    if cold:
        argv += ["--ignore-cache"]
    if profile is not None:
        argv += ["--profile-out", str(profile)]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"full build of {zones} failed (exit {done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_full_build(zones: Path = WORLD, repeat: int = 3, cold: bool = True) -> dict:
    """Warm-cache full builds (the best and every run) and, with ``cold``, one without the
    client-map cache; each in a fresh subprocess, after one warm-up build."""
    _run_child(zones)  # kernels compiled and cached, the client-map cache written
    warm = [_run_child(zones) for _ in range(repeat)]
    best = min(warm, key=lambda run: run["total"])
    restart = min((_run_child(zones, warm=False) for _ in range(repeat)), key=lambda r: r["total"])
    out: dict = {
        "full_build_s": best["total"],
        "full_build_steps_s": {k: v for k, v in best.items() if k not in ("nodes", "groups")},
        "full_build_runs_s": [run["total"] for run in warm],
        "full_build_restart_s": restart["total"],
        "full_build_restart_steps_s": {
            k: v for k, v in restart.items() if k not in ("nodes", "groups")
        },
        "nodes": int(best["nodes"]),
        "groups": int(best["groups"]),
    }
    if cold:
        run = _run_child(zones, cold=True)
        out["full_build_cold_s"] = run["total"]
        out["full_build_cold_steps_s"] = {
            k: v for k, v in run.items() if k not in ("nodes", "groups")
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zones", type=Path, default=WORLD)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="also one build without the cache")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of one build")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--warm-with", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ignore-cache", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not (args.zones / "deployment.yaml").is_file():
        parser.error(f"{args.zones} is not a deployment directory (no deployment.yaml)")
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    if args.child:
        from router.config import load_deployment  # noqa: F401  (imported before the clock)
        from router.service import loaded  # noqa: F401

        if args.warm_with is not None:
            full_build(args.warm_with)
        if args.ignore_cache:
            from router.geo import cache

            # As if the file were not there: the map is built, written and mapped again (the
            # read after the write is the real one).
            real, missed = cache.read_cache, set()

            def first_missing(path: Path, key: str) -> object:
                if key in missed:
                    return real(path, key)
                missed.add(key)
                return None

            cache.read_cache = first_missing
        if args.profile_out is None:
            print(json.dumps(full_build(args.zones)))
            return 0
        profiler = cProfile.Profile()
        steps = profiler.runcall(full_build, args.zones)
        profiler.dump_stats(args.profile_out)
        print(json.dumps(steps))
        return 0
    if args.profile:
        _run_child(args.zones)
        with tempfile.TemporaryDirectory(prefix="full-build-prof-") as tmp:
            dump = Path(tmp) / "build.prof"
            print(json.dumps(_run_child(args.zones, dump)))
            pstats.Stats(str(dump)).sort_stats("cumulative").print_stats(45)
        return 0
    print(json.dumps(measure_full_build(args.zones, args.repeat, args.cold), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
