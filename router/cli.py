"""Command line: ``router serve | check | explain | plan``.

``check`` and ``serve`` load the deployment through the same code path, so a directory
that passes ``router check`` is exactly one that ``router serve`` accepts.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
from pathlib import Path

from router.config import ConfigError, Deployment, load_deployment

TOKEN_ENV = "ROUTER_API_TOKEN"
log = logging.getLogger("router")


def build_parser() -> argparse.ArgumentParser:
    """Every command and option (also used to check the commands docker-compose.yml runs)."""
    parser = argparse.ArgumentParser(prog="router", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="answer DNS for a deployment directory")
    serve.add_argument("--zones", required=True, type=Path, help="deployment directory (zones, nodes, policies)")
    serve.add_argument("--listen", required=True, help="DNS address, HOST:PORT (UDP and TCP); port 0 picks one")
    serve.add_argument("--api", help="HTTP API address, HOST:PORT")
    serve.add_argument("--api-token-file", type=Path, help=f"file holding the API bearer token (else ${TOKEN_ENV})")
    serve.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="DNS worker processes (default: one per core)")
    serve.add_argument("--udp-path", choices=("batched", "per-packet"), default="batched",
                       help="UDP loop: batched system calls and the compiled responder (default), or one "
                            "packet at a time in Python")  # fmt: skip
    serve.add_argument("--tcp-idle-timeout", type=float, default=10.0, help="seconds before an idle TCP connection is closed")
    serve.add_argument("--telemetry", help="listen for signed node heartbeats on HOST:PORT (UDP); needs health: in deployment.yaml")
    serve.add_argument("--state-file", type=Path, help="keep node states across restarts here (default: state_file in deployment.yaml)")
    serve.add_argument("--drain-grace", type=float, default=0.0,
                       help="on SIGTERM, report draining (GET /v1/status) and keep answering this many seconds before stopping")
    serve.add_argument("--watch", type=float, default=1.0, metavar="S",
                       help="look for changed config files every S seconds and reload (default 1; 0: reload only "
                            "on SIGHUP or POST /v1/config/reload)")  # fmt: skip
    serve.add_argument("--query-log", type=Path, metavar="PATH",
                       help="append a sample of the queries to PATH as JSON lines (client subnet, resolver, group, "
                            "answer, scope, decision reason); reopened when logrotate moves it")  # fmt: skip
    serve.add_argument("--query-log-sample", type=int, default=100, metavar="N",
                       help="with --query-log: log 1 query in N, per worker and transport (default 100; 1 logs every query)")  # fmt: skip
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    check = sub.add_parser("check", help="validate a deployment directory; print every problem as path:line: message")
    check.add_argument("directory", type=Path)

    explain = sub.add_parser("explain", help="show how a name is answered for one client")
    explain.add_argument("--zones", required=True, type=Path, help="deployment directory")
    explain.add_argument("--qtype", default="A", choices=["A", "AAAA", "ANY", "CNAME", "MX", "NS", "SOA", "TXT"])
    explain.add_argument("--json", action="store_true", help="print JSON instead of text")
    explain.add_argument("name", help="the name a resolver asks for, e.g. video.cdn.example.")
    explain.add_argument("client", help="client IP (as query source) or subnet (as ECS), e.g. 83.44.10.0/24")

    plan = sub.add_parser("plan", help="show what applying a new deployment directory would do to traffic")
    plan.add_argument("--zones", required=True, type=Path, help="the new deployment directory (checked like router check)")
    plan.add_argument("--against", required=True,
                      help="the running router's API (http://HOST:PORT) or the current deployment directory")
    plan.add_argument("--state-file", type=Path, help="with --against DIR: node states from this file (default: all up)")
    plan.add_argument("--top", type=int, default=5, help="client groups listed per changed name (default 5)")
    plan.add_argument("--json", action="store_true", help="print JSON instead of text")

    simulate = sub.add_parser("simulate-nodes", help="play every node of a deployment: signed heartbeats, commands on stdin")
    from router import simulator

    simulator.add_arguments(simulate)
    announce = sub.add_parser("anycast-announce", help="run under ExaBGP: announce the service and node prefixes while they can serve")
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
    if args.command == "check":
        return cmd_check(args.directory)
    if args.command == "explain":
        return cmd_explain(args)
    if args.command == "plan":
        return cmd_plan(args)
    return cmd_serve(args)


def _load(directory: Path) -> Deployment | None:
    try:
        return load_deployment(directory)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) in {directory}", file=sys.stderr)
        return None


def cmd_check(directory: Path) -> int:
    deployment = _load(directory)
    if deployment is None:
        return 1
    zones = ", ".join(str(z) for z in deployment.zones)
    print(
        f"{directory}: OK: {len(deployment.zones)} zone(s) ({zones}), {len(deployment.inventory.nodes)} nodes, "
        f"{len(deployment.policies)} policies, {len(deployment.steered)} steered names, "
        f"{len(deployment.client_map.groups) - 1} client groups"
    )
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
    try:
        if args.against.startswith(("http://", "https://")):
            if args.state_file is not None:
                print("router plan: --state-file is for --against DIR (a running router has its own states)",
                      file=sys.stderr)  # fmt: skip
                return plan.EXIT_ERROR
            before = plan.fetch_running(args.against)
        else:
            current = _load(Path(args.against))
            if current is None:
                return plan.EXIT_ERROR
            before = plan.plan_offline(current, state_file=args.state_file)
        after = plan.plan_offline(new, before)
    except plan.PlanError as exc:
        print(f"router plan: {exc}", file=sys.stderr)
        return plan.EXIT_ERROR
    report = plan.compare(before, after, top=args.top)
    changed = plan.has_changes(report)
    if args.json:
        print(json.dumps({"new": str(args.zones), "against": args.against, "changes": changed, **report}, indent=2))
    else:
        print(plan.to_text(report, str(args.zones), args.against))
    return plan.EXIT_CHANGES if changed else plan.EXIT_NO_CHANGES


def _read_token(args: argparse.Namespace) -> str | None:
    if args.api_token_file is not None:
        try:
            token = args.api_token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            print(f"router serve: cannot read --api-token-file: {exc}", file=sys.stderr)
            return None
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        print(f"router serve: --api needs a token: set {TOKEN_ENV} or pass --api-token-file", file=sys.stderr)
        return None
    return token


def cmd_serve(args: argparse.Namespace) -> int:
    from router.dns.query_log import QueryLogSettings, open_check
    from router.service.config_files import ConfigFiles, fingerprint
    from router.service.supervisor import ServiceError, Supervisor, parse_endpoint
    from router.steering.model import compile_model

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        host, port = parse_endpoint(args.listen, "--listen")
        api = parse_endpoint(args.api, "--api") if args.api else None
        telemetry = parse_endpoint(args.telemetry, "--telemetry") if args.telemetry else None
    except ServiceError as exc:
        print(f"router serve: {exc}", file=sys.stderr)
        return 2
    token = _read_token(args) if api else None
    if api and token is None:
        return 2
    query_log = None
    if args.query_log is not None:
        try:
            query_log = QueryLogSettings(args.query_log, args.query_log_sample)
            open_check(args.query_log)
        except (ValueError, OSError) as exc:
            print(f"router serve: --query-log: {exc}", file=sys.stderr)
            return 2
    # SIGHUP means "reload": never let it end the process before the handler is in place
    # (the workers, forked below, inherit this and ignore it too).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # Taken before loading: a file changed while loading is seen as changed, and reloaded.
    seen = fingerprint(args.zones)
    files = ConfigFiles.read(args.zones)
    deployment = _load(args.zones)
    if deployment is None:
        return 1
    try:
        supervisor = Supervisor(
            deployment, compile_model(deployment), host, port, args.workers, args.tcp_idle_timeout,
            telemetry=telemetry is not None, state_file=args.state_file or deployment.state_file,
            udp_path=args.udp_path, files=files, query_log=query_log,
        )  # fmt: skip
    except ServiceError as exc:
        print(f"router serve: {exc}", file=sys.stderr)
        return 1
    try:
        supervisor.start()
        return asyncio.run(_run(supervisor, api, token, args.drain_grace, telemetry, args.watch, seen))
    except ServiceError as exc:
        print(f"router serve: {exc}", file=sys.stderr)
        return 1
    finally:
        supervisor.stop()


async def _run(  # noqa: ANN001
    supervisor, api: tuple[str, int] | None, token: str | None, drain_grace: float, telemetry: tuple[str, int] | None,
    watch_s: float = 0.0, seen: tuple = (),
) -> int:
    from aiohttp import web

    from router.api.http import create_app

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    reloader = _Reloader(supervisor, watch_s, seen, telemetry is not None)
    loop.add_signal_handler(signal.SIGHUP, reloader.wake.set)
    runner = None
    api_text = "off"
    if api is not None:
        assert token is not None
        runner = web.AppRunner(create_app(supervisor, token, reloader.reload), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, api[0], api[1])
        await site.start()
        bound = runner.addresses[0]
        api_text = f"{_endpoint(bound[0], bound[1])}"
    telemetry_text = "off"
    transport = None
    tick_task = None
    if telemetry is not None:
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _HeartbeatProtocol(supervisor), local_addr=telemetry, reuse_port=False
        )
        bound = transport.get_extra_info("sockname")
        telemetry_text = _endpoint(bound[0], bound[1])
        tick_task = asyncio.create_task(_tick(supervisor))
    reloader.restart_probes()
    reload_task = asyncio.create_task(reloader.run())
    dns_text = _endpoint(supervisor.host, supervisor.port)
    zones = ", ".join(str(z) for z in supervisor.deployment.zones)
    print(f"router: serving {zones} on {dns_text} (UDP and TCP, {supervisor.worker_count} workers); API {api_text}")
    print(f"READY dns={dns_text} api={api_text} telemetry={telemetry_text}", flush=True)
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=0.5)
            except TimeoutError:
                supervisor.check_workers()
                supervisor.observe_demand()
        if drain_grace > 0:
            # Withdraw first (announcers watch /v1/status), then stop answering.
            supervisor.service_state = "draining"
            log.info("draining: answering for %.1f s more before stopping", drain_grace)
            await asyncio.sleep(drain_grace)
    finally:
        for task in (tick_task, reload_task, *reloader.probes):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        if transport is not None:
            transport.close()
        if runner is not None:
            await runner.cleanup()
    log.info("stopping")
    return 0


def _start_probes(supervisor, telemetry: bool) -> list[asyncio.Task]:  # noqa: ANN001
    """The active probes of the config in service: node health URLs (with telemetry) and
    each policy's own probe."""
    from router.health.probes import run_probes

    tasks = []
    targets = supervisor.probe_targets() if telemetry else {}
    if targets:
        health = supervisor.deployment.health
        tasks.append(asyncio.create_task(
            run_probes(targets, health.probe_interval_s, health.probe_timeout_s, supervisor.on_probe)
        ))  # fmt: skip
    for policy, targets, interval, timeout in supervisor.policy_probe_targets():

        def report(node_id: str, ok: bool, detail: str, policy: int = policy) -> None:
            supervisor.on_policy_probe(policy, node_id, ok, detail)

        tasks.append(asyncio.create_task(run_probes(targets, interval, timeout, report)))
    return tasks


class _Reloader:
    """Reloads one at a time, on SIGHUP (``wake``), on the API's request, and when the
    config files changed and then stayed unchanged for one more look (an editor writing a
    file in several steps is not caught half-way)."""

    def __init__(self, supervisor, watch_s: float, seen: tuple, telemetry: bool) -> None:  # noqa: ANN001
        self.supervisor = supervisor
        self.watch_s = watch_s
        self.seen = seen  # the files' fingerprint when last loaded
        self.telemetry = telemetry
        self.wake = asyncio.Event()
        self.lock = asyncio.Lock()
        self.probes: list[asyncio.Task] = []  # of the config in service

    def restart_probes(self) -> None:
        for task in self.probes:
            task.cancel()
        self.probes = _start_probes(self.supervisor, self.telemetry)

    async def reload(self, trigger: str) -> dict:
        from router.service.config_files import fingerprint

        async with self.lock:
            directory = self.supervisor.deployment.directory
            self.seen = await asyncio.to_thread(fingerprint, directory)
            attempt = await asyncio.to_thread(self.supervisor.reload, trigger)
            if attempt["result"] == "ok":
                self.restart_probes()
            return attempt

    async def run(self) -> None:
        from router.service.config_files import fingerprint

        directory = self.supervisor.deployment.directory
        candidate = None
        period = self.watch_s if self.watch_s > 0 else 3600.0
        while True:
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=period)
            except TimeoutError:
                pass
            try:
                if self.wake.is_set():
                    self.wake.clear()
                    await self.reload("SIGHUP")
                    continue
                if self.watch_s <= 0:
                    continue
                current = await asyncio.to_thread(fingerprint, directory)
                if current == self.seen:
                    candidate = None
                elif current != candidate:
                    candidate = current  # changed: reload once it holds still
                else:
                    candidate = None
                    await self.reload("file change")
            except Exception:
                log.exception("reload failed")


class _HeartbeatProtocol(asyncio.DatagramProtocol):
    def __init__(self, supervisor) -> None:  # noqa: ANN001
        self.supervisor = supervisor

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        try:
            self.supervisor.on_heartbeat(data)
        except Exception:  # one bad packet or a failed publish must not stop telemetry
            log.exception("heartbeat from %s could not be applied", addr[0])


async def _tick(supervisor) -> None:  # noqa: ANN001
    # Silence is checked often, so a dead node leaves within the bound plus one tick.
    period = min(0.02, supervisor.deployment.health.heartbeat_interval_s / 10)
    while True:
        await asyncio.sleep(period)
        try:
            supervisor.tick()
        except Exception:
            log.exception("health tick failed")


def _endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


if __name__ == "__main__":
    sys.exit(main())
