"""A real Unbound (Debian package ``unbound``) as a validating resolver for one zone, on
127.0.0.1: what a DNSSEC test puts in front of an authoritative server on 127.0.0.1:PORT.

Unbound resolves only that zone, through a ``stub-zone`` to the authoritative, and validates
it against the trust anchor the caller gives (the zone's DS or DNSKEY records). It forwards
each client's EDNS Client Subnet to the authoritative and caches the answers per subnet
(``subnetcache`` module). It never leaves loopback: no root trust anchor (nothing above the
zone is validated or probed), ``outgoing-interface: 127.0.0.1`` (a query to any other address
cannot be sent), IPv6 off, and ``unbound_log_targets`` reads back from its log every address
it sent a query to. Its files (config, anchor, log, pidfile, control socket) are in its own
temporary directory; it runs in the foreground (``-d``) as our child, stopped by PID.

Usage::

    with Unbound(zone="cdn.example.", auth_port=5353, anchor=ds_lines, root=tmp_path) as ub:
        reply = ub.query("video.cdn.example.", "A", ecs="83.44.10.0/24")
        assert reply.flags & dns.flags.AD, ub.log_tail()
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.query

from loadtest import packages

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
QUERY_TIMEOUT_S = 3.0
CONTROL_TIMEOUT_S = 10.0
PORT_ATTEMPTS = 3


class UnboundUnavailable(Exception):
    """Unbound is not installed and cannot be installed here."""


def find_unbound() -> tuple[str, str]:
    """Paths of ``unbound`` and ``unbound-control``, installing the Debian package as root if
    missing (its service is never enabled or started by us: Debian's policy-rc.d or the
    absence of an init keeps it down, and nothing here uses port 53)."""
    notes = packages.ensure({"unbound": lambda: packages.binary("unbound")})
    server, control = packages.binary("unbound"), packages.binary("unbound-control")
    if notes or server is None or control is None:
        raise UnboundUnavailable(
            "Unbound (Debian package unbound) is not installed and cannot be installed: "
            + (notes.get("unbound") or "unbound-control missing")
        )
    return server, control


def free_udp_tcp_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no port free for both UDP and TCP on 127.0.0.1")


def unbound_config(directory: Path, port: int, zone: str, auth_port: int) -> str:
    """The whole ``unbound.conf`` (unbound.conf(5), Unbound 1.17)."""
    zone = zone.rstrip(".") + "."
    return f"""server:
    # Our own, chroot-less instance: every file in {directory}, run as the current user.
    directory: "{directory}"
    chroot: ""
    username: ""
    pidfile: "{directory / "unbound.pid"}"
    logfile: "{directory / "unbound.log"}"
    use-syslog: no
    log-time-ascii: yes
    log-servfail: yes
    # val-log-level 2: each validation failure with its reason; verbosity 4: every query sent
    # upstream with its target address (unbound_log_targets checks they are all loopback).
    val-log-level: 2
    verbosity: 4
    interface: 127.0.0.1
    port: {port}
    do-ip4: yes
    do-ip6: no
    do-udp: yes
    do-tcp: yes
    num-threads: 1
    so-reuseport: no
    access-control: 127.0.0.0/8 allow
    # Never the internet: queries go out from 127.0.0.1 only, so only loopback is reachable;
    # no root trust anchor (auto-trust-anchor-file unset: no RFC 5011 probes of the root).
    outgoing-interface: 127.0.0.1
    do-not-query-localhost: no
    trust-anchor-signaling: no
    root-key-sentinel: no
    trust-anchor-file: "{directory / "anchor.txt"}"
    # The authoritative's answers are judged on their own: no prefetch, no stale answers.
    prefetch: no
    prefetch-key: no
    serve-expired: no
    harden-dnssec-stripped: yes
    harden-below-nxdomain: yes
    val-permissive-mode: no
    # ECS (RFC 7871): the subnetcache module forwards each client's subnet to the
    # authoritative at 127.0.0.1 and caches the answer per the scope it returns.
    module-config: "subnetcache validator iterator"
    send-client-subnet: 127.0.0.1
    client-subnet-zone: {zone}
    client-subnet-always-forward: yes
    max-client-subnet-ipv4: 24
    max-client-subnet-ipv6: 56
    min-client-subnet-ipv4: 0
    min-client-subnet-ipv6: 0
    # Names outside the zone are refused, not resolved from the root: nothing else is asked.
    local-zone: "." refuse
    local-zone: "{zone}" transparent

stub-zone:
    name: "{zone}"
    stub-addr: 127.0.0.1@{auth_port}
    stub-prime: no
    stub-first: no

remote-control:
    control-enable: yes
    control-interface: "{directory / "control.sock"}"
    control-use-cert: no
"""


def unbound_log_targets(log: str) -> set[str]:
    """Every address the log says Unbound sent a query to (verbosity 4:
    ``debug: sending to target: <cdn.example.> 127.0.0.1#5353``)."""
    return set(re.findall(r"sending to target: <[^>]*> (\S+)#\d+", log))


def sent_queries(log: str, name: str, rdtype: str) -> int:
    """How many times the log says Unbound sent ``name rdtype`` upstream (not from its cache)."""
    wanted = f"sending query: {name.rstrip('.').lower()}. {rdtype.upper()} IN"
    return sum(line.endswith(wanted) for line in log.splitlines())


class Unbound:
    """A validating Unbound for ``zone``, whose authoritative server is 127.0.0.1:``auth_port``.

    ``anchor``: the trust anchor, zone-file lines of the zone's DS or DNSKEY records.
    ``root``: a directory for its own temporary directory (created, kept for the log)."""

    def __init__(self, zone: str, auth_port: int, anchor: list[str], root: Path) -> None:
        if not anchor:
            raise ValueError(f"no trust anchor given for {zone}: want its DS or DNSKEY records")
        self.server_binary, self.control_binary = find_unbound()
        self.zone, self.auth_port = zone.rstrip(".") + ".", auth_port
        self.directory = root / "unbound"
        self.directory.mkdir(parents=True)
        (self.directory / "anchor.txt").write_text("\n".join(anchor) + "\n")
        self.config = self.directory / "unbound.conf"
        self.log = self.directory / "unbound.log"
        self.process: subprocess.Popen | None = None
        self.port = 0

    def __enter__(self) -> Unbound:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start on a free port (another one if the port was taken meanwhile); returns once it
        answers a query for the zone's SOA (whatever the rcode: a wrong anchor gives SERVFAIL)."""
        for attempt in range(PORT_ATTEMPTS):
            self.port = free_udp_tcp_port()
            self.config.write_text(
                unbound_config(self.directory, self.port, self.zone, self.auth_port)
            )
            self._check_config()
            with (self.directory / "stderr.log").open("w") as stderr:
                self.process = subprocess.Popen([self.server_binary, "-d", "-c", str(self.config)],
                                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)  # fmt: skip
            try:
                self._wait_answering()
                return
            except RuntimeError as exc:
                self.stop()
                if "address already in use" not in str(exc).lower() or attempt == PORT_ATTEMPTS - 1:
                    raise

    def _check_config(self) -> None:
        checker = Path(self.server_binary).with_name("unbound-checkconf")
        if not checker.exists():
            return
        done = subprocess.run([str(checker), str(self.config)], capture_output=True, text=True,
                              timeout=CONTROL_TIMEOUT_S, check=False)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(
                f"unbound-checkconf rejects {self.config}:\n{done.stdout}{done.stderr}"
            )

    def _wait_answering(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"unbound exited ({self.process.returncode}):\n{self.output_tail()}"
                )
            try:
                self.query(self.zone, "SOA", timeout=0.5)
                return
            except (dns.exception.Timeout, OSError):
                time.sleep(0.1)
        raise RuntimeError(
            f"unbound did not answer within {START_TIMEOUT_S:g} s:\n{self.output_tail()}"
        )

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL if it lingers."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None

    def query(self, name: str, rdtype: str, ecs: str | None = None, do: bool = True,
              timeout: float = QUERY_TIMEOUT_S) -> dns.message.Message:  # fmt: skip
        """A stub resolver's query (RD set, EDNS 1232, DO as given, ECS if given): the reply."""
        options = []
        if ecs is not None:
            network = ipaddress.ip_network(ecs)
            options.append(dns.edns.ECSOption(str(network.network_address), network.prefixlen))
        query = dns.message.make_query(
            name, rdtype, use_edns=0, payload=1232, want_dnssec=do, options=options
        )
        return dns.query.udp(query, "127.0.0.1", port=self.port, timeout=timeout)

    def control(self, *args: str) -> str:
        """``unbound-control`` over the unix socket in its directory: the command's output."""
        argv = [self.control_binary, "-c", str(self.config), *args]
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=CONTROL_TIMEOUT_S, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
            )
        return done.stdout

    def flush(self) -> None:
        """Forget everything cached: the messages and RRsets, the subnet cache, the validated
        keys and what was found bogus. ``reload`` restarts the modules (the subnet cache lives in
        its module, out of reach of ``flush_zone``) and rereads the config and the trust anchor
        file, so a test may also change the anchor in ``anchor.txt`` first."""
        self.control("reload")
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                self.control("status")
                return
            except RuntimeError:
                time.sleep(0.1)
        raise RuntimeError(f"unbound did not come back from reload within {START_TIMEOUT_S:g} s")

    def stats(self) -> dict[str, float]:
        """``unbound-control stats_noreset`` as a dict."""
        out = {}
        for line in self.control("stats_noreset").splitlines():
            name, _, value = line.partition("=")
            try:
                out[name] = float(value)
            except ValueError:
                continue
        return out

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def validation_failures(self) -> list[str]:
        """The log's validation failure lines (val-log-level 2: the reason and the server)."""
        return [line for line in self.log_text().splitlines() if "validation failure" in line]

    def log_tail(self, lines: int = 30) -> str:
        """For assertion messages: the validation failures, then the log's last lines."""
        failures = self.validation_failures()[-5:]
        tail = self.log_text().splitlines()[-lines:]
        return "\n".join(["unbound validation failures:", *failures, "unbound log tail:", *tail])

    def output_tail(self) -> str:
        stderr = self.directory / "stderr.log"
        text = stderr.read_text(errors="replace") if stderr.exists() else ""
        return f"stderr:\n{text[-2000:]}\nlog:\n{self.log_text()[-2000:]}"

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
