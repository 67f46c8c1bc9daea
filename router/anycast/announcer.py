"""ExaBGP process: announce the service prefixes while this router can serve, and each node's
anycast prefixes while that node is up.

ExaBGP starts this program (a ``process`` in its configuration) and reads route commands from
its stdout, one per line, in the ExaBGP 5 text API::

    announce route 192.0.2.53/32 next-hop self
    withdraw route 192.0.2.53/32 next-hop self
    announce route 203.0.113.128/25 next-hop 203.0.113.11

Every round (``--interval``, default 1 s) it asks the router's HTTP API:

- service prefixes (``--service-prefix``, ``next-hop self``) are wanted while
  ``GET /v1/status`` says ``serving`` *and* a self-check succeeds: the SOA of the first zone
  listed there, asked over UDP of the DNS address listed there, comes back NOERROR with AA.
- a node's ``anycast_prefixes`` (``GET /v1/nodes``) are wanted while that node is ``up``, with
  the node's IPv4 address as next hop (its IPv6 address for IPv6 prefixes).

If the API cannot be reached, nothing is wanted: a router that cannot say what it serves
withdraws everything rather than leave stale routes behind. A command is written only when
the wanted set changes. The program stops when its stdin closes or ExaBGP says ``shutdown``
(ExaBGP is going away and drops the routes itself), and on SIGTERM or SIGINT, after
withdrawing everything it announced.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import select
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode

log = logging.getLogger("router.anycast")

SELF = "self"


@dataclass(frozen=True, order=True)
class Route:
    """One announcement: a prefix and its next hop (an address, or ``self``)."""

    prefix: str
    next_hop: str

    def command(self, verb: str) -> str:
        return f"{verb} route {self.prefix} next-hop {self.next_hop}"


@dataclass(frozen=True)
class Observation:
    """What one round learned from the router. ``nodes`` is None when /v1/nodes failed."""

    can_serve: bool
    reason: str
    nodes: list[dict[str, object]] | None


def wanted_routes(service_prefixes: Iterable[str], obs: Observation) -> set[Route]:
    """The routes that should be announced given one observation."""
    wanted: set[Route] = set()
    if obs.can_serve:
        wanted.update(Route(p, SELF) for p in service_prefixes)
    for node in obs.nodes or ():
        if node.get("state") != "up":
            continue
        for text in node.get("anycast_prefixes") or ():  # type: ignore[union-attr]
            try:
                prefix = ipaddress.ip_network(str(text), strict=False)
            except ValueError:
                log.warning("node %s: ignoring bad anycast prefix %r", node.get("id"), text)
                continue
            hop = node.get("ipv4") if prefix.version == 4 else node.get("ipv6")
            if not hop or hop == "None":
                log.warning(
                    "node %s: no IPv%d address for %s", node.get("id"), prefix.version, prefix
                )
                continue
            wanted.add(Route(str(prefix), str(hop)))
    return wanted


def changes(announced: set[Route], wanted: set[Route]) -> list[str]:
    """Commands taking ``announced`` to ``wanted``: withdrawals first, each group sorted."""
    return [r.command("withdraw") for r in sorted(announced - wanted)] + [
        r.command("announce") for r in sorted(wanted - announced)
    ]


def parse_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


class RouterProbe:
    """Asks the router's API and DNS; every failure becomes a reason, never an exception."""

    def __init__(self, api: str, timeout: float = 1.0, dns_override: str | None = None) -> None:
        self.api = api.rstrip("/")
        self.timeout = timeout
        self.dns_override = dns_override

    def _get(self, path: str) -> dict[str, object]:
        with urllib.request.urlopen(self.api + path, timeout=self.timeout) as response:  # noqa: S310
            body = json.loads(response.read())
        if not isinstance(body, dict):
            raise ValueError(f"{path}: expected a JSON object")
        return body

    def self_check(self, dns_address: str, zone: str) -> tuple[bool, str]:
        """SOA of ``zone`` over UDP: NOERROR with AA, or why not."""
        try:
            host, port = parse_hostport(dns_address)
            if host in ("0.0.0.0", "::"):
                host = "127.0.0.1" if host == "0.0.0.0" else "::1"
            reply = dns.query.udp(
                dns.message.make_query(zone, "SOA"), host, port=port, timeout=self.timeout
            )
        except (dns.exception.DNSException, OSError, ValueError) as exc:
            return False, f"self-check SOA {zone} at {dns_address} failed: {exc!r}"
        rcode = dns.rcode.to_text(reply.rcode())
        if reply.rcode() != dns.rcode.NOERROR or not reply.flags & dns.flags.AA:
            return (
                False,
                f"self-check SOA {zone} at {dns_address}: {rcode}, AA={bool(reply.flags & dns.flags.AA)}",
            )
        return True, "serving, self-check OK"

    def observe(self) -> Observation:
        try:
            status = self._get("/v1/status")
        except (OSError, ValueError, urllib.error.URLError) as exc:
            return Observation(False, f"API {self.api} unreachable: {exc}", None)
        try:
            nodes_body = self._get("/v1/nodes")
            nodes = nodes_body.get("nodes")
            node_list = (
                [n for n in nodes if isinstance(n, dict)] if isinstance(nodes, list) else None
            )
        except (OSError, ValueError, urllib.error.URLError) as exc:
            log.warning("GET /v1/nodes failed: %s", exc)
            node_list = None
        state = status.get("state")
        if state != "serving":
            return Observation(False, f"router state is {state!r}", node_list)
        zones = status.get("zones")
        if not isinstance(zones, list) or not zones:
            return Observation(False, "router lists no zones", node_list)
        dns_address = self.dns_override or str(status.get("dns", ""))
        ok, reason = self.self_check(dns_address, str(zones[0]))
        return Observation(ok, reason, node_list)


class Announcer:
    """Keeps the set of announced routes and writes the commands that change it."""

    def __init__(
        self, service_prefixes: Iterable[str], observe: Callable[[], Observation], out: IO[str]
    ) -> None:
        self.service_prefixes = [
            str(ipaddress.ip_network(p, strict=False)) for p in service_prefixes
        ]
        self.observe = observe
        self.out = out
        self.announced: set[Route] = set()
        self._reason: str | None = None

    def _emit(self, lines: list[str]) -> None:
        for line in lines:
            self.out.write(line + "\n")
            self.out.flush()  # ExaBGP acts on a line as soon as it arrives
            log.info("%s", line)

    def step(self) -> list[str]:
        """One round: observe, then announce or withdraw what changed."""
        obs = self.observe()
        if obs.reason != self._reason:
            log.info("service: %s", obs.reason)
            self._reason = obs.reason
        wanted = wanted_routes(self.service_prefixes, obs)
        lines = changes(self.announced, wanted)
        # Record first: if a write fails half-way (broken pipe), withdraw_all still covers every route.
        self.announced = wanted
        self._emit(lines)
        return lines

    def withdraw_all(self) -> list[str]:
        lines = changes(self.announced, set())
        self.announced = set()
        self._emit(lines)
        return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api", required=True, help="the router's HTTP API, e.g. http://127.0.0.1:8053"
    )
    parser.add_argument("--service-prefix", action="append", default=[], metavar="PREFIX",
                        help="service prefix announced with next-hop self while the router serves (repeatable)")  # fmt: skip
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between rounds (default 1)"
    )
    parser.add_argument("--timeout", type=float, default=1.0,
                        help="timeout of each API call and of the DNS self-check (default 1 s)")  # fmt: skip
    parser.add_argument(
        "--dns", help="self-check this HOST:PORT instead of the address /v1/status lists"
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )


def _wait_for_input(stream: IO[str], wake_fd: int, wait: float) -> str | None:
    """Wait up to ``wait`` s for ExaBGP's input or a signal; say why to stop, if we must."""
    ready, _, _ = select.select([stream, wake_fd], [], [], wait)
    if wake_fd in ready:
        while True:  # drain the wakeup bytes the signal module wrote
            try:
                if not os.read(wake_fd, 512):
                    break
            except BlockingIOError:
                break
    if stream not in ready:
        return None
    data = os.read(stream.fileno(), 65536)
    if not data:
        return "stdin closed"
    for line in data.decode(errors="replace").splitlines():
        # ExaBGP acknowledges commands ("done"/"error") when exabgp.api.ack is on.
        if line.strip() == "shutdown":
            return "ExaBGP shuts down"
        if line.strip() == "error":
            log.warning("ExaBGP rejected a command")
        else:
            log.debug("from ExaBGP: %s", line)
    return None


def run(args: argparse.Namespace, out: IO[str] | None = None, stdin: IO[str] | None = None) -> int:
    """Run rounds until stdin closes or SIGTERM/SIGINT arrives; return the exit status.

    Must run in the main thread (it installs signal handlers).
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=args.log_level, stream=sys.stderr,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")  # fmt: skip
    if not args.service_prefix:
        log.warning("no --service-prefix: only node anycast prefixes will be announced")
    try:
        probe = RouterProbe(args.api, args.timeout, args.dns)
        announcer = Announcer(args.service_prefix, probe.observe, out or sys.stdout)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    stream = stdin if stdin is not None else sys.stdin

    # A signal only sets a flag (raising from a handler would land in logging or urllib);
    # the wakeup pipe cuts the wait between rounds short.
    signals: list[int] = []
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    previous = {sig: signal.signal(sig, lambda signum, _frame: signals.append(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}  # fmt: skip
    previous_wakeup = signal.set_wakeup_fd(wake_w)
    reason: str | None = None
    try:
        while True:
            started = time.monotonic()
            announcer.step()
            if signals:
                break
            reason = _wait_for_input(
                stream, wake_r, max(0.0, args.interval - (time.monotonic() - started))
            )
            if reason or signals:
                break
        if signals:
            name = signal.Signals(signals[0]).name
            log.info("%s: withdrawing %d route(s)", name, len(announcer.announced))
            announcer.withdraw_all()
        else:
            log.info("%s: stopping", reason)
    except BrokenPipeError:
        log.info("ExaBGP closed our stdout; stopping")
    finally:
        signal.set_wakeup_fd(previous_wakeup)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(wake_r)
        os.close(wake_w)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="router anycast-announce", description=__doc__.split("\n")[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
