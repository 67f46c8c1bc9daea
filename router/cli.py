"""Command line: ``router serve | check | explain | plan | keys | dnssec | simulate-nodes | node-agent``.

``check`` and ``serve`` load the deployment through the same code path, so a directory
that passes ``router check`` is exactly one that ``router serve`` accepts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import socket
import sys
from pathlib import Path

from router.config import ConfigError, Deployment, load_deployment

TOKEN_ENV = "ROUTER_API_TOKEN"
MAX_NSID = 128  # octets: an identifier, not a payload (an NSID reply must stay small)


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Every command and option (also used to check the commands docker-compose.yml runs)."""
    parser = argparse.ArgumentParser(prog="router", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="answer DNS for a deployment directory")
    serve.add_argument(
        "--zones", required=True, type=Path, help="deployment directory (zones, nodes, policies)"
    )
    serve.add_argument(
        "--listen",
        action="append",
        metavar="HOST:PORT",
        help="a DNS address, UDP and TCP (repeat for several, e.g. 0.0.0.0:53 and [::]:53; "
        "port 0 picks one); default: listen in deployment.yaml",
    )
    serve.add_argument("--api", help="HTTP API address, HOST:PORT")
    serve.add_argument(
        "--api-token-file", type=Path, help=f"file holding the API bearer token (else ${TOKEN_ENV})"
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="DNS worker processes (default: one per core)",
    )
    serve.add_argument("--udp-path", choices=("batched", "per-packet"), default="batched",
                       help="UDP loop: batched system calls and the compiled responder (default), or one "
                            "packet at a time in Python")  # fmt: skip
    serve.add_argument(
        "--tcp-idle-timeout",
        type=float,
        default=10.0,
        help="seconds before an idle TCP connection is closed",
    )
    serve.add_argument("--tcp-max-connections", type=_count, metavar="N",
                       help="TCP connections each worker holds; when full, the one idle longest is closed "
                            "for a new client (default 1024)")  # fmt: skip
    serve.add_argument("--tcp-max-per-client", type=_count, metavar="N",
                       help="TCP connections one client address may hold per worker (default 32)")  # fmt: skip
    serve.add_argument("--tcp-partial-timeout", type=_seconds, metavar="SECONDS",
                       help="a TCP message begun must be complete within this (default 2)")  # fmt: skip
    serve.add_argument(
        "--rrl-rate",
        type=int,
        metavar="N",
        help="response rate limiting: UDP responses per second per client prefix and class "
        "(0 turns it off); default: rrl.rate in deployment.yaml, 200",
    )
    serve.add_argument(
        "--rrl-slip",
        type=int,
        metavar="K",
        help="with rate limiting, send every K-th limited response truncated (TC=1) instead of "
        "dropping it, so real clients retry over TCP (0: drop all); default: rrl.slip, 2",
    )
    serve.add_argument(
        "--nsid",
        metavar="TEXT",
        help="the name server identifier (RFC 5001) sent to clients that ask for it (dig +nsid), "
        "so an operator sees which anycast instance answered; '' sends none; default: the host "
        f"name; at most {MAX_NSID} octets",
    )
    serve.add_argument(
        "--telemetry",
        help="listen for signed node heartbeats on HOST:PORT (UDP); needs health: in deployment.yaml",
    )
    serve.add_argument(
        "--keys",
        type=Path,
        metavar="FILE",
        help="the node heartbeat keys file (mode 0600), instead of the one health.keys names",
    )
    serve.add_argument(
        "--state-file",
        type=Path,
        help="keep node states across restarts here (default: state_file in deployment.yaml)",
    )
    serve.add_argument(
        "--drain-grace",
        type=float,
        default=0.0,
        help="on SIGTERM, report draining (GET /v1/status) and keep answering this many seconds before stopping",
    )
    serve.add_argument("--watch", type=float, default=1.0, metavar="S",
                       help="look for changed config files every S seconds and reload (default 1; 0: reload only "
                            "on SIGHUP or POST /v1/config/reload)")  # fmt: skip
    serve.add_argument("--query-log", type=Path, metavar="PATH",
                       help="append a sample of the queries to PATH as JSON lines (client subnet, resolver, group, "
                            "answer, scope, decision reason); reopened when logrotate moves it")  # fmt: skip
    serve.add_argument("--query-log-sample", type=int, default=100, metavar="N",
                       help="with --query-log: log 1 query in N, per worker and transport (default 100; 1 logs every query)")  # fmt: skip
    serve.add_argument("--query-log-max-bytes", default="0", metavar="SIZE",
                       help="with --query-log: rotate it to PATH.1 at this size (bytes, or 64K, 100M, 1G; default 0: "
                            "never, leave it to logrotate)")  # fmt: skip
    serve.add_argument("--query-log-keep", type=int, default=5, metavar="N",
                       help="with --query-log-max-bytes: keep N rotated files, PATH.1 to PATH.N (default 5)")  # fmt: skip
    serve.add_argument("--bus", metavar="nats://HOST:PORT[,HOST:PORT...]",
                       help="share node health, demand and overrides with the other routers of the service over "
                            "NATS JetStream at these servers (docs/cluster.md); needs --router-id")  # fmt: skip
    serve.add_argument("--router-id", metavar="ID",
                       help="with --bus: this router's name on the bus, unique in the service (letters, digits, - and _)")  # fmt: skip
    serve.add_argument(
        "--bus-creds",
        type=Path,
        metavar="FILE",
        help="with --bus: a NATS credentials (.creds) file",
    )
    serve.add_argument(
        "--bus-tls-ca",
        type=Path,
        metavar="FILE",
        help="with --bus: the CA that signed the servers' certificates",
    )
    serve.add_argument(
        "--bus-tls-cert",
        type=Path,
        metavar="FILE",
        help="with --bus: this router's client certificate",
    )
    serve.add_argument(
        "--bus-tls-key", type=Path, metavar="FILE", help="with --bus: the key of --bus-tls-cert"
    )
    serve.add_argument("--bus-replicas", type=int, default=3, metavar="N",
                       help="with --bus: replicas of the heartbeat stream and the overrides bucket, when this router "
                            "makes them (default 3: a three-server cluster; 1 for a single server)")  # fmt: skip
    serve.add_argument("--probe-quorum", type=float, metavar="SHARE",
                       help="with --bus: the share of the routers probing a node whose probes must fail it before it "
                            "is withdrawn (default: a majority, more than half)")  # fmt: skip
    serve.add_argument("--bus-allow-unauthenticated", action="store_true",
                       help="with --bus off loopback: connect without --bus-creds or --bus-tls-cert (only on a closed "
                            "network: whoever reaches an open NATS can set overrides)")  # fmt: skip
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    check = sub.add_parser(
        "check", help="validate a deployment directory; print every problem as path:line: message"
    )
    check.add_argument("directory", type=Path)
    check.add_argument(
        "--coverage",
        action="store_true",
        help="also list the announced prefixes of the deployment's ASNs that the client map does "
        "not place in their ASN's group (coverage: in deployment.yaml); exit 3 when there are any",
    )
    check.add_argument("--announced", type=Path, metavar="FILE",
                       help="with --coverage: the announced-prefix file (CSV prefix,asn[,org]) "
                            "instead of coverage.announced")  # fmt: skip
    check.add_argument(
        "--json", action="store_true", help="with --coverage: print the report as JSON"
    )

    explain = sub.add_parser("explain", help="show how a name is answered for one client")
    explain.add_argument("--zones", required=True, type=Path, help="deployment directory")
    explain.add_argument(
        "--qtype", default="A", choices=["A", "AAAA", "ANY", "CNAME", "MX", "NS", "SOA", "TXT"]
    )
    explain.add_argument("--json", action="store_true", help="print JSON instead of text")
    explain.add_argument("name", help="the name a resolver asks for, e.g. video.cdn.example.")
    explain.add_argument(
        "client", help="client IP (as query source) or subnet (as ECS), e.g. 83.44.10.0/24"
    )

    plan = sub.add_parser(
        "plan", help="show what applying a new deployment directory would do to traffic"
    )
    plan.add_argument(
        "--zones",
        required=True,
        type=Path,
        help="the new deployment directory (checked like router check)",
    )
    plan.add_argument(
        "--against",
        required=True,
        help="the running router's API (http://HOST:PORT) or the current deployment directory",
    )
    plan.add_argument(
        "--state-file",
        type=Path,
        help="with --against DIR: node states from this file (default: all up)",
    )
    plan.add_argument(
        "--top", type=int, default=5, help="client groups listed per changed name (default 5)"
    )
    plan.add_argument("--json", action="store_true", help="print JSON instead of text")

    keys = sub.add_parser("keys", help="node heartbeat keys: generate, rotate, export")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    generate = keys_sub.add_parser(
        "generate",
        help="a key (32 random bytes) for every node of nodes.yaml; written 0600, existing keys kept",
    )
    generate.add_argument("--zones", required=True, type=Path, help="deployment directory")
    generate.add_argument("--out", type=Path, metavar="FILE",
                          help="the keys file (default: DIR/node-keys.yaml)")  # fmt: skip
    generate.add_argument("--force", action="store_true", help="replace existing keys too")
    generate.add_argument("--rotate", action="store_true",
                          help="give each node a next key beside its current one (both accepted)")  # fmt: skip
    generate.add_argument("--promote", action="store_true",
                          help="make each node's next key its current one, dropping the old")  # fmt: skip
    generate.add_argument("--node", action="append", metavar="ID",
                          help="with --force, --rotate or --promote: only this node (repeatable)")  # fmt: skip
    export = keys_sub.add_parser(
        "export", help="write one node's signing key (its next key while rotating) for its agent"
    )
    export.add_argument("--keys", required=True, type=Path, help="the keys file")
    export.add_argument("--node", required=True, metavar="ID")
    export.add_argument("--out", required=True, type=Path, metavar="FILE", help="written 0600")
    derive = keys_sub.add_parser(
        "derive",
        help="the nodes' keys for one router of a bus (its health.keys): it can check the "
        "heartbeats signed for it and forge none for the others",
    )
    derive.add_argument("--keys", required=True, type=Path, help="the nodes' keys file")
    derive.add_argument("--router-id", required=True, metavar="ID", help="the router's --router-id")
    derive.add_argument("--out", required=True, type=Path, metavar="FILE", help="written 0600")

    dnssec = sub.add_parser("dnssec", help="DNSSEC keys: keygen, trust-anchor, rollover")
    dnssec_sub = dnssec.add_subparsers(dest="dnssec_command", required=True)
    keygen = dnssec_sub.add_parser(
        "keygen", help="a key for every zone that has none (written 0600, named in deployment.yaml)"
    )
    keygen.add_argument("--zones", required=True, type=Path, help="deployment directory")
    keygen.add_argument("--algorithm", type=int, choices=(13, 15), default=13,
                        help="13: ECDSA P-256 / SHA-256 (default); 15: Ed25519")  # fmt: skip
    keygen.add_argument("--split", action="store_true",
                        help="a KSK and a ZSK per zone instead of one combined key (CSK)")  # fmt: skip
    anchor = dnssec_sub.add_parser(
        "trust-anchor", help="print each zone's DS records and DNSKEY set in zone-file format"
    )
    anchor.add_argument("--zones", required=True, type=Path, help="deployment directory")
    roll = dnssec_sub.add_parser(
        "rollover", help="pre-publish a successor of a zone's signing key, timed from its TTLs"
    )
    roll.add_argument("--zones", required=True, type=Path, help="deployment directory")
    roll.add_argument("--zone", required=True, help="the zone whose CSK (or ZSK) rolls")
    roll.add_argument("--parent-ds-ttl", type=int, default=86400,
                      help="the parent zone's DS TTL in seconds (default 86400)")  # fmt: skip
    roll.add_argument("--key", choices=("signing", "ksk"), default="signing",
                      help="signing: the key that signs the data (CSK or ZSK; default); ksk: the KSK of split keys")  # fmt: skip

    simulate = sub.add_parser(
        "simulate-nodes",
        help="play every node of a deployment: signed heartbeats, commands on stdin",
    )
    from router import simulator

    simulator.add_arguments(simulate)
    agent = sub.add_parser(
        "node-agent", help="run on an edge cache: send its signed heartbeats to every router"
    )
    from router.agent import cli as node_agent

    node_agent.add_arguments(agent)
    announce = sub.add_parser(
        "anycast-announce",
        help="run under ExaBGP: announce the service and node prefixes while they can serve",
    )
    from router.anycast import announcer

    announcer.add_arguments(announce)
    return parser


def main(argv: list[str] | None = None) -> int:
    from router import simulator
    from router.anycast import announcer

    args = build_parser().parse_args(argv)
    if args.command == "simulate-nodes":
        return simulator.run(args)
    if args.command == "anycast-announce":
        return announcer.run(args)
    if args.command == "node-agent":
        from router.agent import cli as node_agent

        return node_agent.run(args)
    if args.command == "check":
        return cmd_check(args)
    if args.command == "keys":
        return cmd_keys(args)
    if args.command == "dnssec":
        return cmd_dnssec(args)
    if args.command == "explain":
        return cmd_explain(args)
    if args.command == "plan":
        return cmd_plan(args)
    return cmd_serve(args)


def _load(directory: Path) -> Deployment | None:
    try:
        return load_deployment(directory)
    except ConfigError as exc:
        print(exc.report(directory), file=sys.stderr)
        return None


EXIT_COVERAGE_GAPS = 3  # router check --coverage: valid, but announced prefixes are not placed


def cmd_check(args: argparse.Namespace) -> int:
    """Exit 0: valid (and, with --coverage, no gaps); 1: invalid; 2: bad command line;
    3: valid, but --coverage found gaps."""
    directory: Path = args.directory
    if (args.json or args.announced) and not args.coverage:
        print("router check: --json and --announced go with --coverage", file=sys.stderr)
        return 2
    deployment = _load(directory)
    if deployment is None:
        return 1
    zones = ", ".join(str(z) for z in deployment.zones)
    summary = (
        f"{directory}: OK: {len(deployment.zones)} zone(s) ({zones}), {len(deployment.inventory.nodes)} nodes, "
        f"{len(deployment.policies)} policies, {len(deployment.steered)} steered names, "
        f"{len(deployment.client_map.groups) - 1} client groups"
    )
    from router.config.dnssec_keys import dnssec_warnings
    from router.service.compiled import zone_ttls

    warnings = dnssec_warnings(deployment.zones, deployment.dnssec_keys, deployment.dnssec, directory,
                               zone_ttls(deployment)[0])  # fmt: skip
    for warning in warnings:
        print(f"warning: {warning}")
    if not args.coverage:
        print(summary)
        return 0
    from router.config.mapcoverage import check_coverage, to_text

    try:
        report = check_coverage(deployment, args.announced)
    except ConfigError as exc:
        print(exc.report(directory), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"directory": str(directory), "why": report.why,
                          **dataclasses.asdict(report.coverage)}, indent=2))  # fmt: skip
    else:
        print(summary)
        print(to_text(report))
    return EXIT_COVERAGE_GAPS if report.gaps else 0


def _derive_keys(args: argparse.Namespace) -> int:
    from router.cluster.messages import ROUTER_ID
    from router.config import node_keys
    from router.config.secrets import is_sample_key

    if not ROUTER_ID.match(args.router_id):
        print(f"router keys derive: --router-id {args.router_id!r}: 1 to 64 letters, digits, "
              "- or _", file=sys.stderr)  # fmt: skip
        return 2
    if node_keys.read_router(args.keys) is not None:
        print(f"router keys derive: {args.keys} holds keys derived for a router already: "
              "derive from the nodes' own keys file", file=sys.stderr)  # fmt: skip
        return 2
    entries = node_keys.read_entries(args.keys)
    if not entries:
        print(f"router keys derive: {args.keys}: no node keys", file=sys.stderr)
        return 2
    sample = sorted(
        n for n, e in entries.items() if any(is_sample_key(bytes.fromhex(k)) for k in e.values())
    )
    if sample:
        print(f"router keys derive: {', '.join(sample)}: published sample keys (keys derived from them "
              "are public too): `router keys generate --force` first", file=sys.stderr)  # fmt: skip
        return 2
    node_keys.write(args.out, node_keys.derive(entries, args.router_id), router=args.router_id)
    print(f"{args.out}: {len(entries)} node keys for router {args.router_id} only (mode 0600). "
          f"Point that router's health.keys (or --keys) at it; the agents sign for it with "
          f"--router-ids.")  # fmt: skip
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from router.config import node_keys
    from router.config.secrets import write_secret_file

    try:
        if args.keys_command == "export":
            entries = node_keys.read_entries(args.keys)
            write_secret_file(args.out, node_keys.export_node_key(entries, args.node))
            print(f"{args.out}: the key of {args.node} (mode 0600)")
            return 0
        if args.keys_command == "derive":
            return _derive_keys(args)
        if args.force + args.rotate + args.promote > 1:
            print("router keys generate: --force, --rotate and --promote exclude each other",
                  file=sys.stderr)  # fmt: skip
            return 2
        out = args.out or args.zones / "node-keys.yaml"
        nodes = node_keys.node_ids(args.zones)
        unknown = sorted(set(args.node or ()) - set(nodes))
        if unknown:
            print(f"router keys generate: not in nodes.yaml: {', '.join(unknown)}", file=sys.stderr)
            return 2
        entries, change = node_keys.generate(
            node_keys.read_entries(out), nodes, force=args.force, rotate=args.rotate,
            promote=args.promote, only=set(args.node) if args.node else None,
        )  # fmt: skip
        node_keys.write(out, entries)
    except ConfigError as exc:
        print(exc.report(args.zones if args.keys_command == "generate" else args.keys.parent),
              file=sys.stderr)  # fmt: skip
        return 1
    except (KeyError, OSError, ValueError) as exc:
        print(f"router keys {args.keys_command}: {exc}", file=sys.stderr)
        return 1
    for label, names in dataclasses.asdict(change).items():
        if names:
            print(f"{label}: {', '.join(names)}")
    print(f"{out}: {len(entries)} node keys (mode 0600). Point health.keys (or router serve --keys) "
          "at it, then reload.")  # fmt: skip
    return 0


def cmd_dnssec(args: argparse.Namespace) -> int:
    from router.config import dnssec_keys

    try:
        if args.dnssec_command == "trust-anchor":
            print(dnssec_keys.trust_anchor_text(args.zones), end="")
            return 0
        if args.dnssec_command == "rollover":
            return _rollover(args)
        written, notes = dnssec_keys.keygen(args.zones, args.algorithm, args.split)
    except ConfigError as exc:
        print(exc.report(args.zones), file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"router dnssec {args.dnssec_command}: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"{path}: written (mode 0600)")
    for note in notes:
        print(note)
    if written:
        print("Give the parent zone the DS records of router dnssec trust-anchor, then reload.")
    return 0


def _rollover(args: argparse.Namespace) -> int:
    import dns.name

    from router.config import dnssec_keys
    from router.service.compiled import zone_ttls

    deployment = _load(args.zones)
    if deployment is None:
        return 1
    zone = dns.name.from_text(args.zone)
    if zone not in deployment.zones:
        print(f"router dnssec rollover: {zone} is not a zone of {args.zones}", file=sys.stderr)
        return 2
    largest, dnskey = zone_ttls(deployment)
    try:
        plan = dnssec_keys.rollover(args.zones, zone, largest[zone], dnskey[zone], args.parent_ds_ttl,
                                    key=args.key)  # fmt: skip
    except ValueError as exc:
        print(f"router dnssec rollover: {exc}", file=sys.stderr)
        return 1
    for step in plan.steps():
        print(step)
    print("The router follows the schedule by itself (reload now to publish the new key).")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from router.explain import explain

    deployment = _load(args.zones)
    if deployment is None:
        return 1
    try:
        result = explain(deployment, args.name, args.client, args.qtype)
    except ValueError as exc:
        print(f"router explain: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(dataclasses.asdict(result), indent=2) if args.json else result.to_text())
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """Exit 0: no changes; 2: changes (like ``terraform plan -detailed-exitcode``); 1: error."""
    from router import plan

    new = _load(args.zones)
    if new is None:
        print("router plan: the new directory is not valid: nothing planned", file=sys.stderr)
        return plan.EXIT_ERROR
    current = None
    if not args.against.startswith(("http://", "https://")):
        current = _load(Path(args.against))
        if current is None:
            return plan.EXIT_ERROR
    try:
        report, changed = plan.plan_change(new, args.against, current, args.state_file, args.top)
    except plan.PlanError as exc:
        print(f"router plan: {exc}", file=sys.stderr)
        return plan.EXIT_ERROR
    if args.json:
        print(
            json.dumps(
                {"new": str(args.zones), "against": args.against, "changes": changed, **report},
                indent=2,
            )
        )
    else:
        print(plan.to_text(report, str(args.zones), args.against))
    return plan.EXIT_CHANGES if changed else plan.EXIT_NO_CHANGES


def _read_token(args: argparse.Namespace) -> str | None:
    from router.config.secrets import SecretFileError, read_secret_file

    if args.api_token_file is not None:
        try:
            token = read_secret_file(args.api_token_file, "--api-token-file")
        except SecretFileError as exc:
            print(f"router serve: {exc}", file=sys.stderr)
            return None
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        print(
            f"router serve: --api needs a token: set {TOKEN_ENV} or pass --api-token-file",
            file=sys.stderr,
        )
        return None
    return token


def cmd_serve(args: argparse.Namespace) -> int:
    """Check the command line, then hand over to the serving runtime (router/service/run.py)."""
    from router.api.http import create_app
    from router.dns.query_log import QueryLogSettings, open_check, parse_size
    from router.service.run import ServeOptions, serve
    from router.service.sockets import ServiceError, parse_endpoint

    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        listen = [parse_endpoint(text, "--listen") for text in args.listen or ()]
        api = parse_endpoint(args.api, "--api") if args.api else None
        telemetry = parse_endpoint(args.telemetry, "--telemetry") if args.telemetry else None
    except ServiceError as exc:
        print(f"router serve: {exc}", file=sys.stderr)
        return 2
    token = _read_token(args) if api else None
    if api and token is None:
        return 2
    for flag, value in (("--rrl-rate", args.rrl_rate), ("--rrl-slip", args.rrl_slip)):
        if value is not None and value < 0:
            print(f"router serve: {flag} must be 0 or more, got {value}", file=sys.stderr)
            return 2
    nsid = (socket.gethostname() if args.nsid is None else args.nsid).encode()
    if len(nsid) > MAX_NSID:
        print(f"router serve: --nsid is {len(nsid)} octets, more than {MAX_NSID}", file=sys.stderr)
        return 2
    query_log = None
    if args.query_log is not None:
        try:
            query_log = QueryLogSettings(args.query_log, args.query_log_sample,
                                         parse_size(args.query_log_max_bytes), args.query_log_keep)  # fmt: skip
            open_check(args.query_log, query_log)
        except (ValueError, OSError) as exc:
            print(f"router serve: --query-log: {exc}", file=sys.stderr)
            return 2
    # Left out when not given: the runtime's defaults (router/dns/transport.py) apply.
    tcp_limits = {name: value for name in ("tcp_max_connections", "tcp_max_per_client", "tcp_partial_timeout")
                  if (value := getattr(args, name)) is not None}  # fmt: skip
    try:
        bus = _bus_settings(args)
    except ValueError as exc:
        print(f"router serve: {exc}", file=sys.stderr)
        return 2
    return serve(
        ServeOptions(
            zones=args.zones,
            listen=listen,
            workers=args.workers,
            api=api,
            api_token=token,
            telemetry=telemetry,
            state_file=args.state_file,
            udp_path=args.udp_path,
            tcp_idle_timeout=args.tcp_idle_timeout,
            drain_grace=args.drain_grace,
            watch_s=args.watch,
            query_log=query_log,
            keys_file=args.keys,
            rrl_rate=args.rrl_rate,
            rrl_slip=args.rrl_slip,
            nsid=nsid,
            bus=bus,
            probe_quorum=args.probe_quorum,
            **tcp_limits,
        ),  # fmt: skip
        api_app=create_app,
    )


def _bus_settings(args: argparse.Namespace):  # noqa: ANN202 - BusSettings, imported here
    """--bus and its companions -> BusSettings, or None without --bus; ValueError saying
    which flag is wrong."""
    from router.cluster.bus import BusError, BusSettings, parse_servers
    from router.cluster.messages import ROUTER_ID
    from router.service.exposure import bus_servers_off_loopback

    companions = (
        "router_id",
        "bus_creds",
        "bus_tls_ca",
        "bus_tls_cert",
        "bus_tls_key",
        "probe_quorum",
    )
    if args.bus is None:
        given = [name for name in companions if getattr(args, name) is not None]
        if given:
            raise ValueError(f"--{given[0].replace('_', '-')} needs --bus")
        return None
    if args.router_id is None:
        raise ValueError("--bus needs --router-id ID (this router's unique name in the service)")
    if not ROUTER_ID.match(args.router_id):
        raise ValueError(f"--router-id {args.router_id!r}: 1 to 64 letters, digits, - or _")
    if not 1 <= args.bus_replicas <= 5:
        raise ValueError(
            f"--bus-replicas must be 1 to 5 (JetStream's limit), got {args.bus_replicas}"
        )
    if args.probe_quorum is not None and not 0 < args.probe_quorum <= 1:
        raise ValueError(
            f"--probe-quorum is a share of the probing routers, above 0 and at most 1, got {args.probe_quorum}"
        )
    if (args.bus_tls_cert is None) != (args.bus_tls_key is None):
        raise ValueError("--bus-tls-cert and --bus-tls-key go together")
    for flag in ("bus_creds", "bus_tls_ca", "bus_tls_cert", "bus_tls_key"):
        path = getattr(args, flag)
        if path is not None and not path.is_file():
            raise ValueError(f"--{flag.replace('_', '-')}: {path} is not a readable file")
    try:
        servers = parse_servers(args.bus)
    except BusError as exc:
        raise ValueError(str(exc)) from None
    authenticated = args.bus_creds is not None or args.bus_tls_cert is not None
    exposed = (
        [] if authenticated or args.bus_allow_unauthenticated else bus_servers_off_loopback(servers)
    )
    if exposed:
        raise ValueError(
            f"--bus {exposed[0]} is off loopback: give --bus-creds FILE or --bus-tls-cert/--bus-tls-key "
            "(whoever reaches an open NATS can set overrides), or --bus-allow-unauthenticated on a "
            "closed network"
        )
    return BusSettings(servers, args.router_id, args.bus_creds, args.bus_tls_ca, args.bus_tls_cert,
                       args.bus_tls_key, args.bus_replicas)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
