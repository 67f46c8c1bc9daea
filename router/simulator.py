"""``router simulate-nodes``: plays every node of a deployment, sending signed heartbeats.

Each node reports every heartbeat interval (spread evenly over the interval). Commands on
standard input change what nodes report, one per line; a selector is a node id,
``asn:N``, ``site:S``, ``metro:M`` or ``all``:

    power SEL off|battery|battery_low|mains
    uplink SEL down|degraded|up          (every uplink of the selected nodes)
    load SEL GBPS
    silence SEL                          (stop sending: a silent death)
    health SEL fail|ok [SERVICE]         (the health URL, or its /SERVICE path, answers 503 / 200)
    rtt SEL PREFIX MS                    (report this RTT to a client prefix in every heartbeat)
    restore SEL                          (mains, uplinks up, base load, sending again)
    quit

A changed node reports at once, so an explicit failure reaches the router without waiting
for the next interval. Every command is answered on stdout with ``ok N node(s): ...`` or on
stderr with ``error: ...``. The run stops by itself after ``--duration`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from router.config.deployment import load_node_keys
from router.config.nodes import Inventory, Node
from router.health.telemetry import (
    POWER_STATES,
    UPLINK_STATES,
    Heartbeat,
    encode,
    new_boot_id,
    parse_router_ids,
)

BASE_LOAD_SHARE = 0.2  # simulated nodes idle at 20% of capacity
UPLINKS = ("uplink1", "uplink2")


@dataclass
class SimulatedNode:
    node: Node
    key: bytes
    power: str = "mains"
    uplinks: dict[str, str] = field(default_factory=lambda: dict.fromkeys(UPLINKS, "up"))
    load_gbps: float = 0.0
    silent: bool = False
    health_failing: bool = False
    failing_services: set[str] = field(default_factory=set)  # health URL sub-paths answering 503
    rtt: dict[str, float] = field(default_factory=dict)  # client prefix -> ms, sent every beat
    seq: int = 0
    boot: str = field(default_factory=new_boot_id)  # a new one each time the simulator starts
    routers: tuple[str, ...] = ()  # sign format 3, a MAC for each of these routers

    def healthy(self) -> bool:
        """What the node's health URL says: serving, or not."""
        serving = self.power in ("mains", "battery") and any(
            v != "down" for v in self.uplinks.values()
        )
        return serving and not self.silent and not self.health_failing

    def health_response(self) -> tuple[int, str]:
        """(HTTP status, body) of the node's health URL."""
        return (200, "ok\n") if self.healthy() else (503, "not serving\n")

    def heartbeat(self) -> bytes:
        self.seq += 1
        report = Heartbeat(
            node=self.node.id, boot=self.boot, seq=self.seq, ts=time.time(), power=self.power, uplinks=dict(self.uplinks),
            load_gbps=self.load_gbps, rps=self.load_gbps * 100.0, rtt=tuple(self.rtt.items()),
        )  # fmt: skip
        return encode(report, self.key, self.routers)


class Simulator:
    def __init__(
        self, inventory: Inventory, keys: dict[str, tuple[bytes, ...]], target: tuple[str, int], interval_s: float,
        also: tuple[tuple[str, int], ...] = (), routers: tuple[str, ...] = (),
    ) -> None:  # fmt: skip
        """``also``: more routers to send every heartbeat to (each runs its own monitor);
        ``routers``: the router ids to sign for (format 3), none for format 2."""
        self.inventory = inventory
        self.nodes = {
            # In key rotation, sign with the newest key (the router takes both).
            n.id: SimulatedNode(
                n, keys[n.id][-1], load_gbps=n.capacity_gbps * BASE_LOAD_SHARE, routers=routers
            )
            for n in inventory.nodes
        }
        self.target = target
        self.targets = (target, *also)
        self.interval_s = interval_s
        self.socks = []
        for host, port in self.targets:
            family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
            self.socks.append((socket.socket(family, socket.SOCK_DGRAM), address))
        self.sent = 0
        self.muted = (
            False  # True: commands change the nodes but nothing is sent (checking a script)
        )
        self._order = list(self.nodes.values())
        self._turn = 0
        self._next_beat: float | None = None

    def close(self) -> None:
        for sock, _ in self.socks:
            sock.close()

    def select(self, selector: str) -> list[SimulatedNode]:
        sites = {s.id: s for s in self.inventory.sites}
        kind, _, value = selector.partition(":")
        if selector == "all":
            chosen = list(self.nodes.values())
        elif not value:
            chosen = [self.nodes[selector]] if selector in self.nodes else []
        elif kind == "asn" and value.isdigit():
            chosen = [s for s in self.nodes.values() if s.node.asn == int(value)]
        elif kind == "site":
            chosen = [s for s in self.nodes.values() if s.node.site == value]
        elif kind == "metro":
            chosen = [
                s for s in self.nodes.values() if sites[s.node.site].metro.lower() == value.lower()
            ]
        else:
            raise ValueError(
                f"unknown selector {selector!r}: use NODE, asn:N, site:S, metro:M or all"
            )
        if not chosen:
            raise ValueError(f"selector {selector!r} matches no node")
        return chosen

    def command(self, line: str) -> str:
        """Apply one command line; return the acknowledgement (raise ValueError on bad input)."""
        words = line.split()
        if not words:
            return ""
        verb, args = words[0], words[1:]
        if verb == "power" and len(args) == 2 and args[1] in POWER_STATES:
            nodes = self.select(args[0])
            for n in nodes:
                n.power = args[1]
        elif verb == "uplink" and len(args) == 2 and args[1] in UPLINK_STATES:
            nodes = self.select(args[0])
            for n in nodes:
                n.uplinks = dict.fromkeys(UPLINKS, args[1])
        elif verb == "load" and len(args) == 2:
            try:
                gbps = float(args[1])
            except ValueError:
                raise ValueError(f"load must be a number of Gbps, got {args[1]!r}") from None
            if gbps < 0:
                raise ValueError("load must be >= 0")
            nodes = self.select(args[0])
            for n in nodes:
                n.load_gbps = gbps
        elif verb == "silence" and len(args) == 1:
            nodes = self.select(args[0])
            for n in nodes:
                n.silent = True
        elif verb == "health" and len(args) in (2, 3) and args[1] in ("fail", "ok"):
            nodes = self.select(args[0])
            for n in nodes:
                if len(args) == 3:
                    (n.failing_services.add if args[1] == "fail" else n.failing_services.discard)(
                        args[2]
                    )
                else:
                    n.health_failing = args[1] == "fail"
        elif verb == "rtt" and len(args) == 3:
            try:
                network = str(ipaddress.ip_network(args[1], strict=False))
                ms = float(args[2])
            except ValueError:
                raise ValueError(
                    f"rtt needs a client prefix and milliseconds, got {args[1]!r} {args[2]!r}"
                ) from None
            nodes = self.select(args[0])
            for n in nodes:
                n.rtt[network] = ms
        elif verb == "restore" and len(args) == 1:
            nodes = self.select(args[0])
            for n in nodes:
                n.power, n.silent, n.health_failing = "mains", False, False
                n.failing_services = set()
                n.rtt = {}
                n.uplinks = dict.fromkeys(UPLINKS, "up")
                n.load_gbps = n.node.capacity_gbps * BASE_LOAD_SHARE
        else:
            raise ValueError(
                f"cannot parse {line.strip()!r}: expected power SEL {'|'.join(POWER_STATES)}, "
                f"uplink SEL {'|'.join(UPLINK_STATES)}, load SEL GBPS, silence SEL, health SEL fail|ok [SERVICE], "
                "rtt SEL PREFIX MS, restore SEL or quit"
            )
        for n in nodes:
            self.send(n)
        return f"ok {len(nodes)} node(s): {line.strip()}"

    def send(self, node: SimulatedNode) -> None:
        if node.silent or self.muted:
            return
        packet = (
            node.heartbeat()
        )  # one sequence number for all routers: each checks replay on its own
        for sock, address in self.socks:
            try:
                sock.sendto(packet, address)
            except OSError as exc:
                print(f"error: sending to {address}: {exc}", file=sys.stderr)
        self.sent += 1

    def beat_due(self, now: float) -> float:
        """Send every heartbeat due by ``now`` (nodes take turns, spread over the interval);
        return when the next one is due. For callers that run their own loop (the load test)."""
        if self._next_beat is None:
            self._next_beat = now
        nodes = self._order
        gap = self.interval_s / max(1, len(nodes))
        while self._next_beat <= now:
            self.send(nodes[self._turn])
            self._turn = (self._turn + 1) % len(nodes)
            self._next_beat += gap
        return self._next_beat

    async def run(self, duration_s: float, commands: asyncio.Queue[str | None]) -> None:
        deadline = time.monotonic() + duration_s
        while time.monotonic() < deadline:
            while not commands.empty():
                line = commands.get_nowait()
                if line is None or line.strip() == "quit":
                    return
                try:
                    ack = self.command(line)
                    if ack:
                        print(ack, flush=True)
                except ValueError as exc:
                    print(f"error: {exc}", file=sys.stderr, flush=True)
            next_send = self.beat_due(time.monotonic())
            await asyncio.sleep(min(0.005, max(0.0, next_send - time.monotonic())))


async def serve_health(simulator: Simulator, listen: tuple[str, int]):  # noqa: ANN201
    """Every node's health URL: 200 while it serves, 503 when it does not."""
    from aiohttp import web

    async def health(request: web.Request) -> web.Response:
        node = simulator.nodes.get(request.match_info["node"])
        if node is None:
            return web.Response(status=404, text="unknown node\n")
        status, body = node.health_response()
        if status == 200 and request.match_info.get("service") in node.failing_services:
            status, body = 503, "service failing\n"
        return web.Response(status=status, text=body)

    app = web.Application()
    app.router.add_get("/health/{node}", health)
    app.router.add_get("/health/{node}/{service}", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, listen[0], listen[1]).start()
    return runner


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--zones", required=True, type=Path, help="deployment directory whose nodes to play"
    )
    parser.add_argument("--target", required=True, action="append",
                        help="the router's telemetry address, HOST:PORT; repeat it to report to several routers")  # fmt: skip
    parser.add_argument("--keys", required=True, type=Path, help="the per-node keys file")
    parser.add_argument(
        "--interval", type=float, help="seconds between heartbeats (default: the deployment's)"
    )
    parser.add_argument(
        "--duration", type=float, default=3600.0, help="stop by itself after this many seconds"
    )
    parser.add_argument(
        "--health-listen", help="serve every node's health URL, GET /health/NODE, on HOST:PORT"
    )
    parser.add_argument("--router-ids", default="", metavar="ID,ID,...",
                        help="routers sharing a bus: sign format 3, a MAC for each (each holds only its "
                        "`router keys derive` keys); without it, format 2 for a lone router")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from router.config import ConfigError, load_deployment
    from router.service.supervisor import ServiceError, parse_endpoint

    try:
        # --keys stands in for health.keys: a deployment whose keys live elsewhere (a compose
        # secret, say) need not have the file deployment.yaml names.
        deployment = load_deployment(args.zones, keys_file=args.keys)
    except ConfigError as exc:
        print(exc.report(args.zones), file=sys.stderr)
        return 1
    try:
        targets = [parse_endpoint(t, "--target") for t in args.target]
    except ServiceError as exc:
        print(f"router simulate-nodes: {exc}", file=sys.stderr)
        return 2
    try:
        routers = parse_router_ids(args.router_ids)
    except ValueError as exc:
        print(f"router simulate-nodes: --router-ids: {exc}", file=sys.stderr)
        return 2
    keys, problems = load_node_keys(args.keys, str(args.keys), deployment.inventory)
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1
    interval = args.interval or (
        deployment.health.heartbeat_interval_s if deployment.health else 1.0
    )
    try:
        simulator = Simulator(
            deployment.inventory,
            keys,
            targets[0],
            interval,
            also=tuple(targets[1:]),
            routers=routers,
        )
    except OSError as exc:  # e.g. a host name that does not resolve
        print(f"router simulate-nodes: --target: {exc}", file=sys.stderr)
        return 2

    async def main() -> None:
        loop = asyncio.get_running_loop()
        commands: asyncio.Queue[str | None] = asyncio.Queue()

        def read_stdin() -> None:
            for line in sys.stdin:
                loop.call_soon_threadsafe(commands.put_nowait, line)
            # End of input is not a stop: a simulator without a terminal keeps playing.

        threading.Thread(target=read_stdin, daemon=True).start()
        runner = None
        if args.health_listen:
            runner = await serve_health(
                simulator, parse_endpoint(args.health_listen, "--health-listen")
            )
        print(
            f"simulating {len(simulator.nodes)} nodes -> {', '.join(args.target)} every {interval:g} s",
            flush=True,
        )
        try:
            await simulator.run(args.duration, commands)
        finally:
            if runner is not None:
                await runner.cleanup()

    try:
        asyncio.run(main())
    finally:
        simulator.close()
    return 0
