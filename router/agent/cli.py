"""``router node-agent``: the edge cache's heartbeat sender (docs/node-agent.md).

    router node-agent --node ID --key-file F --router HOST:PORT [--router HOST:PORT ...]

Power from sysfs, NUT's ``upsc`` or a command; uplinks from ``/sys/class/net/IF`` with an
optional gateway check; load from the interfaces' byte counters; requests/s from a Prometheus
metrics URL or a command; RTT samples by TCP connect. One signed heartbeat per ``--interval``,
the same packet to every router. A bad option or key file exits 2 before anything is sent;
once running, nothing a reader does stops the heartbeats. SIGTERM or SIGINT stops it (exit 0).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from router.agent import net, power, probe, rps, rtt
from router.agent.agent import (
    Agent,
    Destination,
    Poller,
    Sources,
    check_node_id,
    load_key,
    resolve_router,
)
from router.agent.bounded import ReaderLog
from router.config.secrets import SecretFileError
from router.health.telemetry import MAX_PACKET, Heartbeat, encode, new_boot_id, parse_router_ids

log = logging.getLogger("router.agent")

DESCRIPTION = "send this edge cache's signed heartbeats to every router (docs/node-agent.md)"
MAX_UPLINKS = 16
MAX_UPLINK_NAME = 32
GATEWAY_PORT = 179


class UsageError(Exception):
    pass


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--node", required=True, metavar="ID", help="this node's id, as in nodes.yaml")
    add(
        "--key-file",
        required=True,
        type=Path,
        metavar="FILE",
        help="the node's key, one hex line, mode 0600 (router keys export --node ID --out FILE)",
    )
    add(
        "--router",
        required=True,
        action="append",
        metavar="HOST:PORT",
        help="a router's telemetry address (its unicast address; IPv6 as [ADDR]:PORT); "
        "repeat for every router of the service",
    )
    add(
        "--router-ids",
        default="",
        metavar="ID,ID,...",
        help="routers sharing a bus (their --router-id): sign format 3, a MAC for each, so that "
        "a router holds only its own keys of the nodes (router keys derive) and none can forge "
        "for the others; without it, format 2 for a lone router",
    )
    add(
        "--interval",
        type=_positive,
        default=1.0,
        metavar="S",
        help="seconds between heartbeats (default 1; the deployment's heartbeat_interval_s)",
    )
    add("--count", type=int, metavar="N", help="stop after N heartbeats")
    add("--duration", type=_positive, metavar="S", help="stop after S seconds")
    add(
        "--sysfs",
        type=Path,
        default=Path("/sys"),
        metavar="DIR",
        help="where sysfs is mounted (default /sys)",
    )

    group = parser.add_argument_group("power (default: sysfs power_supply)")
    source = group.add_mutually_exclusive_group()
    source.add_argument(
        "--ups", metavar="UPS[@HOST[:PORT]]", help="read power from NUT: upsc UPS@HOST"
    )
    source.add_argument(
        "--power-command",
        metavar="CMD",
        help="a command printing mains, battery, battery_low or off",
    )
    group.add_argument(
        "--upsc",
        default="upsc",
        metavar="PROGRAM",
        help="NUT's upsc program (default: upsc on PATH)",
    )
    group.add_argument(
        "--battery-low-percent",
        type=float,
        default=20.0,
        metavar="P",
        help="battery charge below which power is battery_low (default 20)",
    )
    group.add_argument(
        "--power-interval",
        type=_positive,
        metavar="S",
        help="seconds between power reads (default: --interval)",
    )

    group = parser.add_argument_group("uplinks and load")
    group.add_argument(
        "--uplink",
        action="append",
        default=[],
        metavar="[NAME=]IF",
        help="an uplink interface (reported as NAME, default IF); repeatable, at most 16",
    )
    group.add_argument(
        "--gateway",
        action="append",
        default=[],
        metavar="UPLINK=ADDR[:PORT]",
        help="an up uplink whose gateway does not answer a TCP connect (a refusal "
        f"is an answer) is degraded; port default {GATEWAY_PORT}",
    )
    group.add_argument(
        "--gateway-timeout",
        type=_positive,
        default=0.5,
        metavar="S",
        help="wait for the gateway's answer (default 0.5)",
    )
    group.add_argument(
        "--gateway-misses",
        type=int,
        default=3,
        metavar="N",
        help="unanswered probes in a row before degraded (default 3)",
    )
    group.add_argument(
        "--load-interface",
        action="append",
        default=[],
        metavar="IF",
        help="interfaces whose traffic is the load (default: the uplinks')",
    )
    group.add_argument(
        "--load-counter",
        choices=("tx_bytes", "rx_bytes"),
        default="tx_bytes",
        help="the counter read for load (default tx_bytes: what the cache sends)",
    )

    group = parser.add_argument_group("requests per second (default: none, reported as 0)")
    source = group.add_mutually_exclusive_group()
    source.add_argument(
        "--rps-url",
        metavar="URL",
        help="the cache's Prometheus metrics page, e.g. http://127.0.0.1:9113/metrics",
    )
    source.add_argument("--rps-command", metavar="CMD", help="a command printing requests/s")
    group.add_argument(
        "--rps-metric",
        metavar='NAME[{label="v"}]',
        help="with --rps-url: the metric, a counter (rate taken) or a gauge",
    )
    group.add_argument(
        "--rps-interval",
        type=_positive,
        default=5.0,
        metavar="S",
        help="seconds between rps reads (default 5)",
    )

    group = parser.add_argument_group("RTT samples")
    group.add_argument(
        "--rtt-target",
        action="append",
        default=[],
        metavar="PREFIX=ADDR:PORT",
        help="report the TCP connect time to ADDR:PORT as the RTT to client PREFIX; "
        "repeatable, at most 64",
    )
    group.add_argument(
        "--rtt-interval",
        type=_positive,
        default=10.0,
        metavar="S",
        help="seconds between RTT rounds (default 10)",
    )
    group.add_argument(
        "--rtt-timeout",
        type=_positive,
        default=1.0,
        metavar="S",
        help="wait for each target (default 1)",
    )

    group = parser.add_argument_group("bounds and logging")
    group.add_argument(
        "--command-timeout",
        type=_positive,
        default=2.0,
        metavar="S",
        help="for upsc, --power-command and --rps-command (default 2)",
    )
    group.add_argument(
        "--http-timeout",
        type=_positive,
        default=2.0,
        metavar="S",
        help="for --rps-url, the whole fetch (default 2)",
    )
    group.add_argument(
        "--log-every",
        type=_positive,
        default=60.0,
        metavar="S",
        help="log a failing reader at most once per S seconds (default 60)",
    )
    group.add_argument(
        "--off-on-exit",
        action="store_true",
        help="on SIGTERM/SIGINT, send a last heartbeat saying power off "
        "(the routers take the node out at once)",
    )
    group.add_argument("--log-level", default="INFO",
                       choices=["DEBUG", "INFO", "WARNING", "ERROR"])  # fmt: skip


def _command(text: str, what: str) -> list[str]:
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise UsageError(f"{what}: {exc}") from None
    if not argv:
        raise UsageError(f"{what}: empty command")
    if shutil.which(argv[0]) is None:
        raise UsageError(f"{what}: no program {argv[0]!r} (not executable, or not on PATH)")
    return argv


def _uplinks(specs: list[str]) -> dict[str, str]:
    links: dict[str, str] = {}
    for spec in specs:
        name, sep, interface = spec.partition("=")
        if not sep:
            name = interface = spec
        name, interface = name.strip(), interface.strip()
        if not 1 <= len(name) <= MAX_UPLINK_NAME:
            raise UsageError(f"--uplink: a name is 1-{MAX_UPLINK_NAME} characters: {spec!r}")
        if not interface or "/" in interface or interface in (".", ".."):
            raise UsageError(f"--uplink: not an interface name: {spec!r}")
        if name in links:
            raise UsageError(f"--uplink: {name!r} named twice")
        links[name] = interface
    if len(links) > MAX_UPLINKS:
        raise UsageError(f"--uplink: at most {MAX_UPLINKS} uplinks, got {len(links)}")
    return links


def _gateways(specs: list[str], links: dict[str, str]) -> dict[str, tuple[str, int]]:
    by_interface = {interface: name for name, interface in links.items()}
    gateways = {}
    for spec in specs:
        key, sep, address = spec.partition("=")
        if not sep:
            raise UsageError(f"--gateway: expected UPLINK=ADDR[:PORT], got {spec!r}")
        name = key if key in links else by_interface.get(key)
        if name is None:
            raise UsageError(f"--gateway: {key!r} is not an --uplink")
        try:
            gateways[name] = probe.parse_ip_port(address, "--gateway", GATEWAY_PORT)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return gateways


def _check_size(
    node: str, key: bytes, links: dict[str, str], targets: list, routers: tuple[str, ...] = ()
) -> None:
    """Refuse a configuration whose fullest heartbeat would not fit in one packet."""
    worst = Heartbeat(
        node=node, boot=new_boot_id(), seq=2**63 - 1, ts=time.time() + 1e9, power="battery_low",
        uplinks=dict.fromkeys(links, "degraded"), load_gbps=999999.123456, rps=999999999.999,
        rtt=tuple((prefix, 9999.99) for prefix, _ in targets),
    )  # fmt: skip
    try:
        encode(worst, key, routers)
    except ValueError:
        try:
            size = len(encode(worst._replace(rtt=()), key, routers))
        except ValueError:
            raise UsageError(f"--router-ids: {len(routers)} routers' ids and MACs do not fit in one "
                             f"{MAX_PACKET}-octet heartbeat") from None  # fmt: skip
        each = max(len(prefix) for prefix, _ in targets) + 12
        raise UsageError(
            f"--rtt-target: {len(targets)} targets do not fit in one {MAX_PACKET}-octet "
            f"heartbeat; about {(MAX_PACKET - size) // each} do"
        ) from None


def build(args: argparse.Namespace, reader_log: ReaderLog) -> Agent:
    """The agent that ``args`` describe; UsageError or SecretFileError if they do not make one."""
    try:
        node = check_node_id(args.node)
        destinations: list[Destination] = [resolve_router(text) for text in args.router]
        rtt_targets = [rtt.parse_target(text) for text in args.rtt_target]
        router_ids = parse_router_ids(args.router_ids)
        rps_reader = rps.PrometheusRps(args.rps_url, args.rps_metric, args.http_timeout) if (
            args.rps_url and args.rps_metric) else None  # fmt: skip
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    key = load_key(args.key_file)
    if args.count is not None and args.count < 1:
        raise UsageError("--count must be at least 1")
    if args.gateway_misses < 1:
        raise UsageError("--gateway-misses must be at least 1")
    if not args.sysfs.is_dir():
        raise UsageError(f"--sysfs: {args.sysfs} is not a directory")
    if args.rps_url and not args.rps_metric:
        raise UsageError("--rps-url needs --rps-metric NAME (the requests counter or gauge)")
    if args.rps_metric and not args.rps_url:
        raise UsageError("--rps-metric goes with --rps-url")
    if args.rps_url and not args.rps_url.startswith(("http://", "https://")):
        raise UsageError(f"--rps-url: not an http(s) URL: {args.rps_url!r}")
    if len(rtt_targets) > rtt.MAX_TARGETS:
        raise UsageError(f"--rtt-target: at most {rtt.MAX_TARGETS}, got {len(rtt_targets)}")
    links = _uplinks(args.uplink)
    gateways = _gateways(args.gateway, links)
    if rtt_targets or router_ids:
        _check_size(node, key, links, rtt_targets, router_ids)

    interval = args.interval
    note = reader_log.note
    if args.ups:
        if shutil.which(args.upsc) is None:
            raise UsageError(f"--upsc: no program {args.upsc!r} (Debian: apt-get install nut-client)")  # fmt: skip
        power_reader = power.UpscPower(
            args.ups, args.upsc, args.command_timeout, args.battery_low_percent
        )
    elif args.power_command:
        power_reader = power.CommandPower(
            _command(args.power_command, "--power-command"), args.command_timeout
        )
    else:
        power_reader = power.SysfsPower(
            args.sysfs, args.battery_low_percent, lambda text: note("power", text)
        )
    if args.rps_command:
        rps_reader = rps.CommandRps(_command(args.rps_command, "--rps-command"), args.command_timeout)  # fmt: skip

    sources = Sources()
    sources.power = Poller("power", power_reader.read, args.power_interval or interval, reader_log,
                           keeping=lambda: f"power {sources.power.value or 'mains'}")  # fmt: skip
    if links:
        uplinks = net.UplinkReader(args.sysfs, links, lambda text: note("uplinks", text))
        sources.uplinks = Poller("uplinks", uplinks.read, interval, reader_log)
    for name, address in gateways.items():
        check = net.GatewayCheck(address, min(args.gateway_timeout, interval), args.gateway_misses)
        sources.gateways[name] = Poller(
            f"gateway of {name}",
            check.read,
            interval,
            reader_log,
            keeping=lambda: "the last answer",
        )
    load_interfaces = args.load_interface or sorted(set(links.values()))
    if load_interfaces:
        load = net.LoadReader(args.sysfs, load_interfaces, args.load_counter,
                              note=lambda text: note("load", text))  # fmt: skip
        sources.load = Poller("load", load.read, interval, reader_log,
                              keeping=lambda: f"load {sources.load.value or 0:g} Gbps")  # fmt: skip
    if rps_reader is not None:
        sources.rps = Poller("rps", rps_reader.read, args.rps_interval, reader_log,
                             keeping=lambda: f"rps {sources.rps.value or 0:g}")  # fmt: skip
    if rtt_targets:
        prober = rtt.RttProber(rtt_targets, args.rtt_timeout)
        sources.rtt = Poller("rtt", prober.read, args.rtt_interval, reader_log,
                             keeping=lambda: "no RTT samples")  # fmt: skip

    try:
        agent = Agent(node, key, destinations, sources, interval, reader_log, router_ids)
    except OSError as exc:  # e.g. IPv6 disabled on this host
        raise UsageError(f"--router: cannot open a UDP socket: {exc}") from None
    what = [f"power from {power_reader.describe()}"]
    if links:
        what.append("uplinks " + ", ".join(
            f"{n}={i}" + (f" (gateway {probe_text(gateways[n])})" if n in gateways else "")
            for n, i in links.items()))  # fmt: skip
    else:
        what.append("no uplinks")
    if load_interfaces:
        what.append(f"load from {args.load_counter} of {', '.join(load_interfaces)}")
    if rps_reader is not None:
        what.append(f"rps from {rps_reader.describe()}")
    if rtt_targets:
        what.append(f"RTT to {len(rtt_targets)} target(s) every {args.rtt_interval:g} s")
    log.info(
        "node-agent %s: boot %s, a heartbeat every %g s to %s; %s", node, agent.boot, interval,
        ", ".join(d.text for d in destinations), "; ".join(what),
    )  # fmt: skip
    return agent


def probe_text(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def run(args: argparse.Namespace) -> int:
    """Send heartbeats until ``--count``, ``--duration``, SIGTERM or SIGINT; the exit status
    (2: bad options or key file). Installs signal handlers when run in the main thread."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=args.log_level, stream=sys.stderr,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")  # fmt: skip
    logging.getLogger("router.agent").setLevel(args.log_level)
    reader_log = ReaderLog(every_s=args.log_every)
    try:
        agent = build(args, reader_log)
    except (UsageError, SecretFileError) as exc:
        print(f"router node-agent: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signals: list[int] = []
    previous = {}
    if threading.current_thread() is threading.main_thread():

        def on_signal(signum: int, _frame: object) -> None:
            signals.append(signum)
            stop.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        agent.start(first_wait_s=min(agent.interval_s, 2.0) + 0.5)
        agent.run(stop, count=args.count, duration_s=args.duration)
        if signals:
            name = signal.Signals(signals[0]).name
            if args.off_on_exit:
                agent.send(power="off")
                log.info("%s: sent a last heartbeat saying power off", name)
            log.info("%s: stopping", name)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        agent.close()
    log.info("node-agent %s: sent %d heartbeat(s) in boot %s", agent.node, agent.sent, agent.boot)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="router node-agent", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))
