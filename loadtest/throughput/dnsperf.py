"""The load driver: dnsperf runs against one server, with what they cost and how they went.

``run_dnsperf`` runs dnsperf (pinned to the load core) against a server for a fixed time,
reads the server's CPU (its whole process tree), the kernel's drops on its port and the busy
time of both cores before and after, and parses dnsperf's statistics (with ``-v``, every
query's latency). A ``LatencyProbe`` alongside sends one query at a time and times it: the
p99 at the maximum rate, which dnsperf 2.10 does not print.
"""

from __future__ import annotations

import re
import resource
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from loadtest.throughput.proc import core_busy_s, kernel_drops, other_busy_s, tree_cpu_s
from loadtest.throughput.servers import Server, pinned

LOAD_CORE = "0"  # dnsperf (and the bench itself, mostly idle)
SERVER_CORE = "1"  # the server under test
# Same for every server and run. -c 4 source ports, one sending thread, at most 100 queries
# outstanding (a closed loop: the server's rate sets the pace), 2 s before a query is lost.
DNSPERF_ARGS = ["-c", "4", "-T", "1", "-q", "100", "-t", "2"]
# Overload: far more outstanding queries than the server's socket buffer holds, from two
# sending threads on both cores (one dnsperf thread on one core cannot outpace a server that
# answers in a few microseconds; on the server's core it also takes CPU from the server).
OVERLOAD_ARGS = ["-c", "20", "-T", "2", "-q", "30000", "-t", "1"]
OVERLOAD_CORES = "0-1"
# p99 at the maximum rate: a probe client sends one query of the mix every PROBE_INTERVAL_S
# while dnsperf runs (dnsperf -v would slow dnsperf itself), and times each reply.
PROBE_INTERVAL_S = 0.005
PROBE_QUERIES = 500
RUN_SLACK_S = 30.0  # dnsperf's subprocess timeout beyond its own -l
RETRY_SHARE = 0.10  # a run with more than this is run once more (the first one is kept aside)


def parse_dnsperf(text: str) -> dict:
    """The statistics block of a dnsperf 2.x run."""

    def number(pattern: str) -> float | None:
        match = re.search(pattern, text)
        return float(match.group(1)) if match else None

    rcodes = {}
    match = re.search(r"Response codes:\s+(.*)", text)
    if match:
        for code, n in re.findall(r"([A-Z]+) (\d+) \(", match.group(1)):
            rcodes[code] = int(n)
    sent = number(r"Queries sent:\s+(\d+)")
    if sent is None:
        raise ValueError("no statistics in dnsperf output:\n" + text[-2000:])
    return {
        "sent": int(sent),
        "completed": int(number(r"Queries completed:\s+(\d+)") or 0),
        "lost": int(number(r"Queries lost:\s+(\d+)") or 0),
        "qps": number(r"Queries per second:\s+([\d.]+)"),
        "avg_latency_ms": None
        if (v := number(r"Average Latency \(s\):\s+([\d.]+)")) is None
        else v * 1000,
        "max_latency_ms": None
        if (v := number(r"Average Latency \(s\):.*max ([\d.]+)\)")) is None
        else v * 1000,
        "run_time_s": number(r"Run time \(s\):\s+([\d.]+)"),
        "rcodes": rcodes,
    }


def parse_latencies(text: str) -> list[float]:
    """Per-query latencies (ms) from dnsperf ``-v`` lines: ``> NOERROR binary input 0.000123``."""
    out = []
    for line in text.splitlines():
        if line.startswith("> "):
            try:
                out.append(float(line.rsplit(None, 1)[1]) * 1000.0)
            except (ValueError, IndexError):
                continue  # a timeout line carries no latency
    return out


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n q / 100)
    return ordered[int(rank) - 1]


@dataclass
class Run:
    server: str
    variant: str
    repetition: int
    qps: float | None
    completed: int
    sent: int
    lost: int
    avg_latency_ms: float | None
    cpu_s: float
    cpu_us_per_query: float | None
    kernel_drops: int
    dnsperf_cpu_s: float
    server_core_other_s: float | None  # busy time on the server's core that was not the server
    load_core_other_s: float | None  # busy time on dnsperf's core that was not dnsperf
    rcodes: dict
    seconds: float
    p99_ms: float | None = None
    p99_max_rate_ms: float | None = None  # the probe client's, during a maximum-rate run
    probe_samples: int = 0
    rate_limit: float | None = None
    checked: int = 0
    wrong: int = 0
    check_timeouts: int = 0
    oracle_wrong: int = 0  # differences from the router's own lookup (a cross-check)
    waited_s: float = 0.0  # waiting for the machine to be quiet before the run
    busy_before: float = 0.0  # busiest core's share just before the run
    retry_of_disturbed: bool = False  # the first attempt had other load on the server's core


def disturbed(run: Run) -> bool:
    return (
        run.server_core_other_s is not None and run.server_core_other_s > RETRY_SHARE * run.seconds
    )


def run_dnsperf(server: Server, datafile: Path, seconds: float, variant: str, repetition: int,
                cpus: str | None = LOAD_CORE, extra: list[str] | None = None, qps_limit: float | None = None,
                verbose: bool = False, during=None, probe: list[bytes] | None = None) -> Run:  # noqa: ANN001 # fmt: skip
    """One dnsperf run against ``server``, with the server's CPU and the kernel's drops around it;
    with ``probe``, a LatencyProbe sends those queries alongside and times them."""
    argv = ["dnsperf", "-s", "127.0.0.1", "-p", str(server.port), "-d", str(datafile), "-B",
            *(extra if extra is not None else DNSPERF_ARGS), "-l", f"{seconds:g}"]  # fmt: skip
    if qps_limit:
        argv += ["-Q", str(int(qps_limit))]
    if verbose:
        argv.append("-v")
    out_path = datafile.with_suffix(f".{server.key}.out")
    drops_before = kernel_drops(server.port)
    cpu_before = tree_cpu_s(server.pid)
    busy_before = core_busy_s()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    latency_probe = LatencyProbe(server.port, probe, seconds) if probe else None
    with out_path.open("w") as out:
        process = subprocess.Popen(pinned(cpus, argv), stdout=out, stderr=subprocess.STDOUT)
        try:
            if latency_probe is not None:
                latency_probe.start()
            if during is not None:
                during()
            process.wait(timeout=seconds + RUN_SLACK_S)
            if latency_probe is not None:
                latency_probe.join()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=5)
    cpu = tree_cpu_s(server.pid) - cpu_before
    busy_after = core_busy_s()
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    dnsperf_cpu = (children_after.ru_utime - children_before.ru_utime) + (
        children_after.ru_stime - children_before.ru_stime
    )
    drops = kernel_drops(server.port) - drops_before
    server_cores = server.cores
    shared_core = bool(
        cpus and server_cores and cpus in server_cores
    )  # router2: dnsperf's core is one of its own
    text = out_path.read_text(errors="replace")
    stats = parse_dnsperf(text)
    p99 = percentile(parse_latencies(text), 99) if verbose else None
    if not verbose:
        out_path.unlink()
    completed = stats["completed"]
    return Run(
        server=server.key, variant=variant, repetition=repetition, qps=stats["qps"], completed=completed,
        sent=stats["sent"], lost=stats["lost"], avg_latency_ms=stats["avg_latency_ms"], cpu_s=round(cpu, 3),
        cpu_us_per_query=round(cpu * 1e6 / completed, 2) if completed else None, kernel_drops=drops,
        dnsperf_cpu_s=round(dnsperf_cpu, 3),
        server_core_other_s=other_busy_s(busy_before, busy_after, server_cores if cpus else None,
                                         cpu + (dnsperf_cpu if shared_core else 0.0)),
        load_core_other_s=other_busy_s(busy_before, busy_after, None if shared_core else cpus, dnsperf_cpu),
        rcodes=stats["rcodes"], seconds=seconds, p99_ms=None if p99 is None else round(p99, 3), rate_limit=qps_limit,
        p99_max_rate_ms=latency_probe.p99_ms() if latency_probe else None,
        probe_samples=len(latency_probe.rtts_ms) if latency_probe else 0,
    )  # fmt: skip


class LatencyProbe:
    """One query at a time, every PROBE_INTERVAL_S, from 0.3 s after the start of a run until
    0.5 s before its end; the round-trip time of each (a query unanswered in 1 s counts as 1 s).

    It runs in the bench process, on dnsperf's core: its times include waiting for that core,
    as dnsperf's own latencies do."""

    def __init__(self, port: int, wires: list[bytes], seconds: float) -> None:
        self.port = port
        self.wires = wires
        self.seconds = seconds
        self.rtts_ms: list[float] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self) -> None:
        self.thread.join(timeout=self.seconds + 5)

    def p99_ms(self) -> float | None:
        value = percentile(self.rtts_ms, 99)
        return None if value is None else round(value, 3)

    def _run(self) -> None:
        start = time.monotonic()
        stop_at = start + self.seconds - 0.5
        time.sleep(0.3)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            i = 0
            while time.monotonic() < stop_at and i < 100_000:
                qid = (i * 40503 + 7) & 0xFFFF
                wire = struct.pack("!H", qid) + self.wires[i % len(self.wires)][2:]
                sent = time.perf_counter()
                sock.sendto(wire, ("127.0.0.1", self.port))
                deadline = sent + 1.0
                while True:
                    sock.settimeout(max(0.001, deadline - time.perf_counter()))
                    try:
                        data = sock.recv(65535)
                    except TimeoutError:
                        self.rtts_ms.append(1000.0)
                        break
                    if len(data) >= 2 and struct.unpack_from("!H", data)[0] == qid:
                        self.rtts_ms.append((time.perf_counter() - sent) * 1000)
                        break
                i += 1
                time.sleep(PROBE_INTERVAL_S)
