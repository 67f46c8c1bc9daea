"""Memory of a running router: unique memory (PSS, USS) per process, for 1, 2 and N workers.

    .venv/bin/python -m loadtest.memory [--zones var/world] [--workers 1 2 4] [--json FILE]
    .venv/bin/python -m loadtest.memory --smoke --json FILE   # the repo's sample, 1 and 2 workers

For each worker count it starts the real router (``router serve --zones Z --listen
127.0.0.1:0 --workers N``), waits for its READY line, sends ECS queries for client subnets
drawn from the client map so every worker looks addresses up in it, then reads
``/proc/PID/smaps_rollup`` of the control process and of every worker:

* ``Rss``: resident pages, shared ones counted in full in every process that maps them;
* ``Pss``: each resident page divided by the number of processes that map it, so the PSS of
  all processes adds up to what they hold together (``total_pss_mb_*``);
* USS: ``Private_Clean + Private_Dirty``, the pages only this process maps (what ending it
  would give back).

It also reads ``/proc/PID/smaps`` for the mappings of the compiled client-map cache file
(``router/geo/cache.py``): ``client_map_mapped_mb`` (resident, per worker) and
``client_map_private_mb`` (of it, private to the worker: 0 when the map is shared).

Keys (``L`` is ``world`` for a world-scale deployment, ``sample`` for ``--smoke``; means over
the workers are at the largest worker count measured): ``worker_pss_mb_L``,
``worker_uss_mb_L``, ``worker_rss_mb_L``, ``control_pss_mb_L``, ``control_rss_mb_L``,
``total_pss_mb_L_N_workers``, ``total_rss_mb_L_N_workers`` and ``total_uss_mb_L_N_workers`` per
N (the refine pass's solver child included when it has started: ``flow_solver_pss_mb_L``,
``flow_solver_rss_mb_L``, None when it has not), ``nodes_L`` and ``full_build_s_L``
(``loadtest/full_build.py``, in fresh subprocesses). Memory is read once the refine of the
first plan has ended (its working set is transient; ``memory_after_refines_L`` says whether
every run got there within ``REFINE_WAIT_S``).

Queries go to loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.edns
import dns.message
import yaml

REPO = Path(__file__).resolve().parent.parent
WORLD = REPO / "var" / "world"
SAMPLE = REPO / "zones"
READY_TIMEOUT_S = 900.0  # a 20,000-node world plans its first table in tens of seconds
REFINE_WAIT_S = 60.0  # the first plan's refine: 3-16 s at world scale
TRIM_WAIT_S = 2.0  # the publisher's SAVE_QUIET_S (1 s) after the last table, and some
STOP_TIMEOUT_S = 30.0
QUERIES_PER_WORKER = 2000
QUERY_SOCKETS = 64  # distinct source ports, so SO_REUSEPORT spreads them over the workers
MB = 1024 * 1024


# --------------------------------------------------------------------------------------------
# /proc
# --------------------------------------------------------------------------------------------


def smaps_rollup(pid: int) -> dict[str, int]:
    """Rss, Pss and USS (Private_Clean + Private_Dirty) of ``pid``, in bytes."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as handle:
        for line in handle:
            match = re.match(r"(\w+):\s+(\d+) kB", line)
            if match:
                fields[match.group(1)] = int(match.group(2)) * 1024
    return {
        "rss": fields["Rss"],
        "pss": fields["Pss"],
        "uss": fields["Private_Clean"] + fields["Private_Dirty"],
    }


def mapped_file(pid: int, directory: Path) -> dict[str, int]:
    """Resident and private bytes of ``pid``'s mappings of files under ``directory``."""
    prefix = str(directory.resolve()) + os.sep
    rss = private = 0
    inside = False
    with open(f"/proc/{pid}/smaps", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            head = line.split(maxsplit=5)
            if re.match(r"^[0-9a-f]+-[0-9a-f]+$", head[0]):
                inside = len(head) == 6 and head[5].strip().startswith(prefix)
            elif inside and head[0] == "Rss:":
                rss += int(head[1]) * 1024
            elif inside and head[0] in ("Private_Clean:", "Private_Dirty:"):
                private += int(head[1]) * 1024
    return {"rss": rss, "private": private}


def children(pid: int) -> list[int]:
    """The direct child processes of ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                stat = handle.read()
        except OSError:
            continue  # ended meanwhile
        # The command name is in parentheses and may hold spaces: fields follow the last ")".
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry))
    return sorted(found)


def wait_refines_ended(log: Path, timeout_s: float) -> bool:
    """Wait until every refine the router's log says began has ended; False at the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = log.read_text(errors="replace")
        begun = text.count("refine begun in the background")
        ended = len(
            re.findall(
                r"refined the last full plan|refine of the last full plan|refine in the background failed",
                text,
            )
        )
        if ended >= begun:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def is_flow_solver(pid: int) -> bool:
    """The refine pass's solver child (router/steering/flow_solver.py), not a DNS worker."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return b"flow_solver.py" in handle.read()
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# The deployment
# --------------------------------------------------------------------------------------------


def cache_dir(zones: Path) -> Path:
    """Where the deployment keeps its compiled client map (deployment.yaml ``cache_dir``)."""
    from router.config.deployment import DEFAULT_CACHE_DIR

    settings = yaml.safe_load((zones / "deployment.yaml").read_text(encoding="utf-8"))
    if not isinstance(settings, dict):
        raise ValueError(f"{zones / 'deployment.yaml'}: not a mapping")
    return (zones / (settings.get("cache_dir") or DEFAULT_CACHE_DIR)).resolve()


def steered_names(zones: Path) -> list[str]:
    """Every steered name of the deployment (``names:`` of each policy file)."""
    names = []
    for path in sorted(zones.glob("*.policy.yaml")):
        origin = path.name.removesuffix(".policy.yaml")
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        names += [f"{name}.{origin}." for name in sorted(doc.get("names", {}))]
    if not names:
        raise ValueError(f"{zones}: no steered names (no names: in any *.policy.yaml)")
    return names


def client_subnets(zones: Path, count: int, seed: int = 19) -> list[tuple[str, int]]:
    """``count`` ECS subnets inside the client map's intervals (an interval uniformly, then
    its first address), IPv4 and IPv6 alternately; from the compiled map."""
    from router.config import load_deployment

    cmap = load_deployment(zones).client_map
    rng = random.Random(seed)
    out: list[tuple[str, int]] = []
    for i in range(count):
        if i % 2 == 0 or len(cmap.v6_start_hi) == 0:
            start = int(cmap.v4_start[rng.randrange(len(cmap.v4_start))])
            out.append((socket.inet_ntop(socket.AF_INET, start.to_bytes(4, "big")), 24))
        else:
            k = rng.randrange(len(cmap.v6_start_hi))
            value = (int(cmap.v6_start_hi[k]) << 64) | int(cmap.v6_start_lo[k])
            out.append((socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big")), 56))
    return out


# --------------------------------------------------------------------------------------------
# The router
# --------------------------------------------------------------------------------------------


def start_router(zones: Path, workers: int, log: Path) -> tuple[subprocess.Popen, str, int]:
    args = [sys.executable, "-m", "router.cli", "serve", "--zones", str(zones),
            "--listen", "127.0.0.1:0", "--workers", str(workers)]  # fmt: skip
    with log.open("w") as handle:
        process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=handle, text=True, cwd=REPO)
    assert process.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        match = re.match(r"READY dns=([^,\s]+):(\d+)", line)
        if match:
            return process, match.group(1), int(match.group(2))
    stop_router(process)
    raise RuntimeError(f"router serve --workers {workers} did not start; log:\n{log.read_text()}")


def stop_router(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)
    if process.stdout is not None:
        process.stdout.close()


def send_queries(host: str, port: int, names: list[str], subnets: list[tuple[str, int]]) -> int:
    """One ECS query per subnet, from QUERY_SOCKETS source ports; returns the answers seen."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(QUERY_SOCKETS)]
    answered = 0
    try:
        for sock in sockets:
            sock.settimeout(2.0)
        for i, (address, prefix) in enumerate(subnets):
            query = dns.message.make_query(
                names[i % len(names)], "A", use_edns=0,
                options=[dns.edns.ECSOption(address, prefix)],
            )  # fmt: skip
            sock = sockets[i % len(sockets)]
            sock.sendto(query.to_wire(), (host, port))
            try:
                sock.recvfrom(4096)
                answered += 1
            except TimeoutError:
                pass  # counted: the caller checks that (nearly) all were answered
    finally:
        for sock in sockets:
            sock.close()
    return answered


def measure_once(zones: Path, workers: int, subnets: list[tuple[str, int]], log: Path) -> dict:
    """Start the router with ``workers`` workers, query it, and read its processes' memory."""
    names = steered_names(zones)
    maps = cache_dir(zones)
    process, host, port = start_router(zones, workers, log)
    try:
        answered = send_queries(host, port, names, subnets[: QUERIES_PER_WORKER * workers])
        time.sleep(0.5)  # let the workers finish the last batch
        # The refine of the first plan runs for seconds after READY, with a working set of
        # its own: memory is read once it ended (the steady state), bounded.
        refine_ended = wait_refines_ended(log, REFINE_WAIT_S)
        time.sleep(TRIM_WAIT_S)  # the router hands freed heap back once its tables pause
        control = smaps_rollup(process.pid)
        found = children(process.pid)
        pids = [pid for pid in found if not is_flow_solver(pid)]
        if len(pids) != workers:
            raise RuntimeError(f"expected {workers} worker processes, found {len(pids)}: {pids}")
        # The refine's solver child, when a refine has run: the router's memory too.
        solver = [smaps_rollup(pid) for pid in found if pid not in pids]
        per_worker = [smaps_rollup(pid) for pid in pids]
        mapped = [mapped_file(pid, maps) for pid in pids]
        control_mapped = mapped_file(process.pid, maps)
    finally:
        stop_router(process)
    total = {
        k: control[k] + sum(w[k] for w in per_worker) + sum(c[k] for c in solver)
        for k in ("rss", "pss", "uss")
    }
    return {
        "workers": workers,
        "flow_solver": solver[0] if solver else None,
        "refines_ended_before_measure": refine_ended,
        "queries": min(len(subnets), QUERIES_PER_WORKER * workers),
        "answered": answered,
        "control": control,
        "per_worker": per_worker,
        "total": total,
        "client_map_mapped": mapped,
        "control_client_map_mapped": control_mapped,
    }


def _mb(value: float) -> float:
    return round(value / MB, 1)


def measure_memory(
    zones: Path, workers: list[int], label: str = "world", build_repeat: int = 3
) -> dict:
    """Memory figures of ``router serve`` on ``zones`` for each worker count (module
    docstring for the keys), plus the full-build time of the deployment."""
    from loadtest.full_build import measure_full_build

    if not workers or any(n < 1 for n in workers):
        raise ValueError(f"worker counts must be at least 1, got {workers}")
    subnets = client_subnets(zones, QUERIES_PER_WORKER * max(workers))
    with tempfile.TemporaryDirectory(prefix="memory-bench-") as tmp:
        runs = [
            measure_once(zones, n, subnets, Path(tmp) / f"router-{n}.log")
            for n in sorted(set(workers))
        ]
    build = measure_full_build(zones, repeat=build_repeat, cold=False)
    out: dict = {f"nodes_{label}": build["nodes"], f"full_build_s_{label}": build["full_build_s"],
                 f"full_build_steps_s_{label}": build["full_build_steps_s"],
                 f"full_build_restart_s_{label}": build["full_build_restart_s"]}  # fmt: skip
    for run in runs:
        n = run["workers"]
        for kind in ("pss", "rss", "uss"):
            out[f"total_{kind}_mb_{label}_{n}_workers"] = _mb(run["total"][kind])
        out[f"answered_{label}_{n}_workers"] = f"{run['answered']}/{run['queries']}"
    last = runs[-1]
    count = len(last["per_worker"])
    for kind in ("pss", "uss", "rss"):
        out[f"worker_{kind}_mb_{label}"] = _mb(sum(w[kind] for w in last["per_worker"]) / count)
        out[f"control_{kind}_mb_{label}"] = _mb(last["control"][kind])
    out[f"client_map_mapped_mb_{label}"] = _mb(
        sum(m["rss"] for m in last["client_map_mapped"]) / count
    )
    out[f"client_map_private_mb_{label}"] = _mb(
        sum(m["private"] for m in last["client_map_mapped"]) / count
    )
    solver = last["flow_solver"]
    for kind in ("pss", "rss"):
        out[f"flow_solver_{kind}_mb_{label}"] = None if solver is None else _mb(solver[kind])
    out[f"memory_after_refines_{label}"] = all(run["refines_ended_before_measure"] for run in runs)
    out[f"memory_workers_measured_{label}"] = [run["workers"] for run in runs]
    out[f"memory_runs_{label}"] = runs
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zones", type=Path, default=None)
    parser.add_argument("--workers", type=int, nargs="+", default=None)
    parser.add_argument("--smoke", action="store_true", help="the sample (zones/), 1 and 2 workers")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument(
        "--build-repeat", type=int, default=None, help="full builds timed (default 3; smoke 1)"
    )
    args = parser.parse_args(argv)
    zones = args.zones or (SAMPLE if args.smoke else WORLD)
    workers = args.workers or ([1, 2] if args.smoke else [1, 2, 4])
    if not (zones / "deployment.yaml").is_file():
        parser.error(f"{zones} is not a deployment directory (no deployment.yaml)")
    label = "sample" if args.smoke else "world"
    repeat = args.build_repeat if args.build_repeat is not None else (1 if args.smoke else 3)
    if repeat < 1:
        parser.error(f"--build-repeat must be at least 1, got {repeat}")
    figures = measure_memory(zones, workers, label, build_repeat=repeat)
    summary = {k: v for k, v in figures.items() if not k.startswith("memory_runs_")}
    print(json.dumps(summary, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
