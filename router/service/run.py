"""``router serve``: the supervisor, the API, telemetry, probes and the reload watcher in one
process, until SIGINT or SIGTERM (after ``drain_grace`` seconds of reporting draining)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from router.cluster.bus import BusError, BusSettings
from router.config import ConfigError, load_deployment
from router.config.deployment import Deployment, uses_sample_keys
from router.dns.query_log import QueryLogSettings
from router.dns.rrl import RrlSettings
from router.dns.transport import (
    MAX_TCP_CONNECTIONS,
    MAX_TCP_PER_CLIENT,
    TCP_PARTIAL_TIMEOUT_S,
    TcpLimits,
)
from router.service.cluster_link import ClusterLink
from router.service.config_files import ConfigFiles, fingerprint
from router.service.exposure import check_exposure, off_loopback
from router.service.intake import HeartbeatProtocol, tick_forever
from router.service.reloader import ReloadWatcher
from router.service.sockets import (
    ServiceError,
    format_endpoint,
    grow_receive_buffer,
    parse_endpoint,
    short_buffer_advice,
)
from router.service.supervisor import Supervisor

log = logging.getLogger("router")

CHECK_PERIOD_S = 0.5  # workers checked and demand read this often


@dataclass(frozen=True)
class ServeOptions:
    zones: Path
    listen: Sequence[tuple[str, int]]  # empty: the listen of deployment.yaml
    workers: int  # per listener
    api: tuple[str, int] | None = None
    api_token: str | None = None
    telemetry: tuple[str, int] | None = None
    state_file: Path | None = None
    udp_path: str = "batched"
    tcp_idle_timeout: float = 10.0
    drain_grace: float = 0.0
    watch_s: float = 1.0
    query_log: QueryLogSettings | None = None
    keys_file: Path | None = None  # --keys: the node keys instead of health.keys
    rrl_rate: int | None = None  # --rrl-rate, over rrl.rate of deployment.yaml
    rrl_slip: int | None = None  # --rrl-slip, over rrl.slip
    nsid: bytes = b""  # --nsid: this instance's NSID (RFC 5001)
    # --tcp-max-connections, --tcp-max-per-client, --tcp-partial-timeout (per worker)
    tcp_max_connections: int = MAX_TCP_CONNECTIONS
    tcp_max_per_client: int = MAX_TCP_PER_CLIENT
    tcp_partial_timeout: float = TCP_PARTIAL_TIMEOUT_S
    bus: BusSettings | None = None  # --bus: one router of several (router/service/cluster_link.py)
    probe_quorum: float | None = None  # --probe-quorum; None: a majority


# (supervisor, token, reload) -> the HTTP API's application: the API is built above the
# runtime (router/api/), which never imports it.
ApiFactory = Callable[[Supervisor, str, Callable[[str], Awaitable[dict]]], "web.Application"]


def serve(options: ServeOptions, api_app: ApiFactory | None = None) -> int:
    """Exit status: 0 after a clean stop, 1 if the config or the service failed. With
    ``options.api``, ``api_app`` makes the API served there."""
    # SIGHUP means "reload": never let it end the process before the handler is in place
    # (the workers, forked below, inherit this and ignore it too).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # Taken before loading: a file changed while loading is seen as changed, and reloaded.
    seen = fingerprint(options.zones, options.keys_file)
    files = ConfigFiles.read(options.zones, options.keys_file)
    log.info("loading %s", options.zones)
    try:
        deployment = load_deployment(options.zones, options.keys_file)
    except ConfigError as exc:
        print(exc.report(options.zones), file=sys.stderr)
        return 1
    listeners = list(options.listen) or [
        parse_endpoint(text, "listen") for text in deployment.listen
    ]
    if not listeners:
        print(
            "router serve: no DNS address: give --listen HOST:PORT (repeatable) or listen: "
            f"in {options.zones / 'deployment.yaml'}",
            file=sys.stderr,
        )
        return 2
    # With the API or telemetry off loopback, a reload onto the sample keys is refused too.
    telemetry_public = bool(off_loopback(options.api, options.telemetry))
    try:
        check_exposure(
            options.api, options.telemetry, options.api_token,
            bool(deployment.node_keys) and uses_sample_keys(deployment.node_keys),
        )  # fmt: skip
        supervisor = Supervisor(
            deployment, None, listeners, options.workers, options.tcp_idle_timeout,
            telemetry=options.telemetry is not None, state_file=options.state_file or deployment.state_file,
            udp_path=options.udp_path, files=files, query_log=options.query_log,
            telemetry_public=telemetry_public, keys_file=options.keys_file,
            rrl=rrl_settings(deployment, options), nsid=options.nsid,
            tcp_limits=TcpLimits(options.tcp_max_connections, options.tcp_max_per_client, options.tcp_partial_timeout),
        )  # fmt: skip
    except ServiceError as exc:
        print(f"router serve: {exc}", file=sys.stderr)
        return 1
    try:
        supervisor.start()
        return asyncio.run(_run(supervisor, options, seen, api_app))
    except ServiceError as exc:
        print(f"router serve: {exc}", file=sys.stderr)
        return 1
    finally:
        supervisor.stop()


def rrl_settings(deployment: Deployment, options: ServeOptions) -> RrlSettings:
    """Rate limiting as deployment.yaml's rrl: says, with --rrl-rate and --rrl-slip over it."""
    config = deployment.rrl
    return RrlSettings(
        rate=config.rate if options.rrl_rate is None else options.rrl_rate,
        slip=config.slip if options.rrl_slip is None else options.rrl_slip,
        ipv4_prefix=config.ipv4_prefix,
        ipv6_prefix=config.ipv6_prefix,
        allow=tuple(config.allow),
    )


async def _run(
    supervisor: Supervisor, options: ServeOptions, seen: tuple, api_app: ApiFactory | None
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    watcher = ReloadWatcher(supervisor.reloader, supervisor.probes, options.watch_s, seen)
    loop.add_signal_handler(signal.SIGHUP, watcher.wake.set)
    runner = None
    api_text = "off"
    if options.api is not None:
        assert options.api_token is not None and api_app is not None
        runner = web.AppRunner(
            api_app(supervisor, options.api_token, watcher.reload), access_log=None
        )
        await runner.setup()
        await web.TCPSite(runner, *options.api).start()
        api_text = format_endpoint(*runner.addresses[0][:2])
    telemetry_text = "off"
    transport = None
    tasks = []
    if options.telemetry is not None:
        transport, _ = await loop.create_datagram_endpoint(
            lambda: HeartbeatProtocol(supervisor.intake),
            local_addr=options.telemetry,
            reuse_port=False,
        )
        # Heartbeats from many nodes arrive in bursts: the default buffer drops them.
        advice = short_buffer_advice(grow_receive_buffer(transport.get_extra_info("socket")))
        if advice is not None:
            log.warning("telemetry: %s", advice)
        telemetry_text = format_endpoint(*transport.get_extra_info("sockname")[:2])
        tasks.append(
            asyncio.create_task(
                tick_forever(supervisor.intake, supervisor.deployment.health.heartbeat_interval_s)
            )
        )
    bus_text = ""
    if options.bus is not None:
        try:
            link = ClusterLink(supervisor, options.bus, options.probe_quorum)
        except BusError as exc:
            raise ServiceError(str(exc)) from None
        supervisor.cluster = link
        try:
            link.expect_copies()
        except ValueError as exc:
            raise ServiceError(f"--router-id: {exc}") from None
        link.start()
        # Serving does not wait for the bus; the first connection usually takes milliseconds.
        await link.bus.wait_ready(2.0)
        bus_text = f" bus={'connected' if link.bus.connected else 'isolated'}"
    supervisor.probes.restart()
    tasks.append(asyncio.create_task(watcher.run()))
    dns_text = ",".join(format_endpoint(host, port) for host, port in supervisor.listeners)
    zones = ", ".join(str(z) for z in supervisor.deployment.zones)
    print(
        f"router: serving {zones} on {dns_text} (UDP and TCP, {supervisor.worker_count} workers); API {api_text}"
    )
    print(f"READY dns={dns_text} api={api_text} telemetry={telemetry_text}{bus_text}", flush=True)
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=CHECK_PERIOD_S)
            except TimeoutError:
                supervisor.check_workers()
                supervisor.observe_demand()
        if options.drain_grace > 0:
            # Withdraw first (announcers watch /v1/status), then stop answering.
            supervisor.service_state = "draining"
            log.info("draining: answering for %.1f s more before stopping", options.drain_grace)
            await asyncio.sleep(options.drain_grace)
    finally:
        for task in tasks:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        await supervisor.probes.stop()
        if supervisor.cluster is not None:
            await supervisor.cluster.stop()
        if transport is not None:
            transport.close()
        if runner is not None:
            await runner.cleanup()
    log.info("stopping")
    return 0
