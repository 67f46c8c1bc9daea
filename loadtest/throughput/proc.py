"""CPU accounting and the kernel's counters, read from /proc: what a run cost and who else ran.

A server's CPU is utime + stime of its whole process tree (every process and thread,
from ``/proc/PID/stat``), read before and after a run; the busy time of each core comes
from ``/proc/stat``; the datagrams the kernel dropped on a server's port from
``/proc/net/udp`` (and udp6).
"""

from __future__ import annotations

import glob
import os
import re
import time
from pathlib import Path

from router.service.socket_stats import parse_proc_net_udp, udp_socket_stats

QUIET_SHARE = 0.10  # before a run, wait until no core is busier than this with something else


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc/PID/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        for children in glob.glob(f"/proc/{current}/task/*/children"):
            try:
                todo += [int(c) for c in Path(children).read_text().split()]
            except OSError:
                pass
    return out


def process_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> float:
    """utime + stime of the process and every descendant (all their threads)."""
    return sum(process_cpu_s(p) for p in tree_pids(pid))


def tree_rss_mb(pid: int) -> float:
    total = 0
    for p in tree_pids(pid):
        try:
            match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{p}/status").read_text())
        except OSError:
            continue
        if match:
            total += int(match.group(1))
    return round(total / 1024.0, 1)


def core_busy_s() -> dict[str, float]:
    """Busy time of each core (user nice system irq softirq steal), from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if re.match(r"cpu\d+ ", line):
            values = [int(v) for v in line.split()[1:]]
            out[line.split()[0][3:]] = (sum(values[:3]) + sum(values[5:8])) / os.sysconf(
                "SC_CLK_TCK"
            )
    return out


def wait_quiet(
    max_wait_s: float, cores: list[str] | None = None, window_s: float = 0.5
) -> tuple[float, float]:
    """Wait (at most ``max_wait_s``) until no core is busier than QUIET_SHARE over ``window_s``:
    another process busy on this machine would disturb the next run. Our own servers are idle
    between runs. Returns (seconds waited, busiest core's share in the last window)."""
    started = time.monotonic()
    while True:
        before = core_busy_s()
        time.sleep(window_s)
        after = core_busy_s()
        share = max(((after[c] - before.get(c, 0.0)) / window_s for c in after if cores is None or c in cores),
                    default=0.0)  # fmt: skip
        if share <= QUIET_SHARE or time.monotonic() - started >= max_wait_s:
            return round(time.monotonic() - started - window_s, 1), round(share, 2)


def other_busy_s(
    before: dict[str, float], after: dict[str, float], cores: str | None, own: float
) -> float | None:
    """Busy time on ``cores`` ("1" or "0-1") not accounted to ``own``: other processes, interrupts."""
    if cores is None:
        return None
    lo, _, hi = cores.partition("-")
    chosen = [str(c) for c in range(int(lo), int(hi or lo) + 1)]
    return round(max(0.0, sum(after.get(c, 0.0) - before.get(c, 0.0) for c in chosen) - own), 3)


def udp_drops(proc_net_udp: str, port: int) -> int:
    """Datagrams the kernel dropped on sockets bound to ``port`` in one /proc/net/udp table."""
    return sum(row.drops for row in parse_proc_net_udp(proc_net_udp) if row.port == port)


def kernel_drops(port: int) -> int:
    """The same over IPv4 and IPv6 sockets, read now."""
    return sum(row.drops for row in udp_socket_stats() if row.port == port)
