"""The servers under test as processes: started on 127.0.0.1 (pinned with ``taskset -c``),
waited for until they answer, and stopped by PID (with any descendant left over).
"""

from __future__ import annotations

import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode

from loadtest.throughput.proc import tree_pids

REPO = Path(__file__).resolve().parents[2]
# How long a server under test may take to answer: the sample deployment starts in seconds; a
# world-scale one takes minutes (the router plans 1.36 M prefixes, gdnsd parses two nets maps
# of that size), more on busy cores.
START_TIMEOUT_S = 120.0
WORLD_START_TIMEOUT_S = 900.0


def free_port(address: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``address`` (checked, then released: a peer that
    binds 0.0.0.0 needs it free on every address, not only on 127.0.0.1)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((address, 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind((address, port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def soa_answers(port: int, zone: str, timeout: float = 0.5) -> bool:
    try:
        reply = dns.query.udp(
            dns.message.make_query(zone, "SOA"), "127.0.0.1", port=port, timeout=timeout
        )
    except (dns.exception.DNSException, OSError):
        return False
    return reply.rcode() == dns.rcode.NOERROR and bool(reply.answer)


@dataclass
class Server:
    key: str  # router, router2, gdnsd, pdns
    label: str
    process: subprocess.Popen
    port: int
    log: Path
    version: str = ""
    extra: dict = field(default_factory=dict)
    cores: str | None = None  # what it is pinned to (taskset -c)
    _drain: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM by PID, then SIGKILL; then any descendant left over (by PID)."""
        children = [p for p in tree_pids(self.process.pid) if p != self.process.pid]
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        deadline = time.monotonic() + 5
        for pid in children:
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.05)
            if Path(f"/proc/{pid}").exists():
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
        if self.process.stdout is not None:
            self.process.stdout.close()
        if self._drain is not None:
            self._drain.join(timeout=2)


def with_settings(zones: Path, sections: dict) -> Path:
    """``zones`` (a copy of the sample deployment) with ``sections`` of its deployment.yaml
    replaced; returns ``zones``."""
    import yaml

    path = zones / "deployment.yaml"
    settings = yaml.safe_load(path.read_text())
    settings.update(sections)
    path.write_text(yaml.safe_dump(settings))
    return zones


# The router as it faces the internet, for the throughput figures: bound to the wildcard (every
# UDP reply sent from the query's destination address, pktinfo), response rate limiting with the
# loopback allow-list emptied, so dnsperf's queries are classed and counted like any client's, at
# a rate no reply reaches (the figure is the limiter's cost, not its drops), cookies on (the
# default; the mix carries no COOKIE option: bench_hardening measures a mix that does).
HARDENED_LISTEN = "0.0.0.0:0"
HARDENED_SETTINGS = {
    "rrl": {"rate": 1_000_000, "slip": 2, "allow": []},
    "cookies": {"enabled": True},
}


def pinned(cpus: str | None, argv: list[str]) -> list[str]:
    return (["taskset", "-c", cpus] if cpus else []) + argv


def start_router(
    zones: Path,
    root: Path,
    workers: int,
    cpus: str | None,
    key: str,
    extra: tuple[str, ...] = (),
    listen: str = "127.0.0.1:0",
    timeout: float = START_TIMEOUT_S,
) -> Server:
    """``router serve`` on ``listen`` (127.0.0.1, port 0); returns once it prints READY (its
    stdout is then drained by a thread until it exits). Clients reach it on 127.0.0.1 either
    way: a wildcard ``listen`` only changes how it binds."""
    log = root / f"{key}.log"
    argv = pinned(cpus, [sys.executable, "-m", "router.cli", "serve", "--zones", str(zones), "--listen",
                         listen, "--workers", str(workers), "--log-level", "WARNING", *extra])  # fmt: skip
    with log.open("w") as handle:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=handle, text=True, cwd=REPO)
    lines: queue.Queue[str | None] = queue.Queue()

    def drain() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=drain, name=f"{key}-stdout", daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        seen += line
        match = re.match(r"READY dns=([^,\s]+):(\d+)", line)  # the first listener
        if match:
            label = f"router ({workers} worker{'s' if workers > 1 else ''})"
            return Server(key, label, process, int(match.group(2)), log, cores=cpus, _drain=reader)
    Server(key, "router", process, 0, log, _drain=reader).stop()
    raise RuntimeError(f"router did not start; output:\n{seen}\nlog:\n{log.read_text()[-3000:]}")


def wait_answering(
    process: subprocess.Popen, port: int, zone: str, what: str, log: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{what} exited ({process.returncode}); log:\n{log.read_text()[-3000:]}"
            )
        if soa_answers(port, zone):
            return
        time.sleep(0.1)
    raise RuntimeError(
        f"{what} did not answer within {timeout:g} s; log:\n{log.read_text()[-3000:]}"
    )


def start_peer(key: str, label: str, argv: list[str], port: int, log: Path, cpus: str | None, extra: dict,
               zone: str, timeout: float = START_TIMEOUT_S) -> Server:  # fmt: skip
    """Start a peer server in the foreground (pinned) and wait until it answers ``zone``'s SOA."""
    with log.open("w") as handle:
        process = subprocess.Popen(pinned(cpus, argv), stdout=handle, stderr=subprocess.STDOUT)
    server = Server(key, label, process, port, log, extra=extra, cores=cpus)
    try:
        wait_answering(process, port, zone, Path(argv[0]).name, log, timeout)
    except BaseException:
        server.stop()
        raise
    return server
