"""The supervisor: the serving runtime's parts, wired together.

One worker process per core answers DNS (``workers.py``); the supervisor never does. It
holds the config and the routing table in service and hands them to the parts that change
them: telemetry intake (``intake.py``) and the probes (``probes.py``) update node health,
the demand observer (``demand.py``) the demand; the publisher (``publisher.py``) plans a
table from them and puts it in service on every worker; the reloader (``reloader.py``)
swaps in a new config. ``run.py`` runs it all in one process (``router serve``).

Two locks: ``health_lock`` guards node health and keeps the config from being swapped
under a heartbeat; ``workers.lock`` guards the workers and the table in service, so the
config and the table are always read together (``in_service``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from router._gc import freeze_collector
from router.config.deployment import Deployment
from router.dns import cookies, udp_batch
from router.dns.engine import TableView
from router.dns.query_log import QueryLogSettings
from router.dns.rrl import RrlSettings
from router.dns.transport import TcpLimits
from router.health.state import NodeStatus
from router.service import loaded
from router.service.config_files import ConfigFiles
from router.service.demand import DemandObserver
from router.service.intake import TelemetryIntake
from router.service.loaded import ConfigUnusable, LoadedConfig
from router.service.probes import Probes
from router.service.publisher import Publisher
from router.service.reloader import Reloader
from router.service.sockets import ServiceError, check_port, parse_endpoint
from router.service.workers import WorkerPool
from router.steering.build import RoutingTable
from router.steering.model import SteeringModel

if TYPE_CHECKING:
    from router.service.cluster_link import ClusterLink

__all__ = ["ServiceError", "Supervisor", "parse_endpoint"]

log = logging.getLogger("router.service")

UDP_PATHS = ("batched", "per-packet")
COMPILE_NOTE = "numba compiles it on a first start, later starts load it from numba's cache"


class Supervisor:
    def __init__(
        self,
        deployment: Deployment,
        model: SteeringModel | None,
        listeners: Sequence[tuple[str, int]],
        workers: int,
        tcp_idle_timeout: float = 10.0,
        telemetry: bool = False,
        state_file: Path | None = None,
        udp_path: str = "batched",
        files: ConfigFiles | None = None,
        query_log: QueryLogSettings | None = None,
        telemetry_public: bool = False,
        keys_file: Path | None = None,
        rrl: RrlSettings | None = None,
        nsid: bytes = b"",
        tcp_limits: TcpLimits | None = None,
    ) -> None:
        """``listeners``: the DNS addresses, each served by ``workers`` worker processes of its
        own; ``telemetry_public``: the API or telemetry is off loopback (so the published sample
        keys are refused); ``keys_file``: the node keys named by ``--keys``, if any; ``nsid``:
        what this instance answers an NSID request with (RFC 5001; b"": nothing)."""
        self.nsid = nsid
        # Used for DNS cookies when the deployment names no shared secret file: random, this
        # process's own, kept across reloads (a restart makes clients fetch fresh cookies).
        self.cookie_secret = cookies.random_secret()
        if workers < 1:
            raise ServiceError("--workers must be at least 1")
        if not listeners:
            raise ServiceError("no DNS address to listen on")
        if len(set(listeners)) != len(listeners):
            raise ServiceError("a DNS address is given twice")
        if udp_path not in UDP_PATHS:
            raise ServiceError(f"udp path must be one of {', '.join(UDP_PATHS)}, got {udp_path!r}")
        # "batched": recvmmsg/sendmmsg and the compiled responder (router/dns/udp_batch.py);
        # "per-packet": the Python loop, kept for platforms without recvmmsg and for comparison.
        self.batched = udp_path == "batched" and udp_batch.supported
        if udp_path == "batched" and not self.batched:
            log.warning(
                "batched UDP needs 64-bit Linux (recvmmsg/sendmmsg): answering one packet at a time"
            )
        self.telemetry = telemetry
        self.telemetry_public = telemetry_public
        self.keys_file = keys_file
        self.worker_count = workers * len(listeners)  # processes, over every listener
        self.state_file = state_file
        # "serving", or "draining" once asked to stop: still answering for a grace period
        # while anycast announcements are withdrawn, so resolvers move away without loss.
        self.service_state = "serving"
        self.health_lock = threading.Lock()
        self._save_lock = threading.Lock()  # one writer of the state file at a time
        for host, port in listeners:
            check_port(host, port)
        started = time.monotonic()
        try:
            files = files or ConfigFiles.read(deployment.directory, keys_file)
            self.config: LoadedConfig = loaded.prepare(
                deployment,
                model,
                files,
                self.worker_count,
                self.batched,
                telemetry,
                telemetry_public,
                nsid,
                self.cookie_secret,
            )
        except ConfigUnusable as exc:
            raise ServiceError(str(exc)) from exc
        if state_file is not None:
            for warning in self.health.load(state_file, time.monotonic()):
                log.warning("%s", warning)
            if self.config.verifier is not None:
                saved = self.health.saved_extra(state_file, "replay")
                warning = self.config.verifier.guard.restore(saved) if saved else None
                if warning:
                    log.warning("%s: %s", state_file, warning)
        self.health.apply_admin_file(deployment.admin_state)
        # Every kernel compiled (first table, both lookups) before taking the port, so the
        # first query never waits for numba. numba caches what it compiles: a second start
        # loads it instead.
        log.info(
            "config loaded in %.1f s; planning the first routing table", time.monotonic() - started
        )
        step = time.monotonic()
        self.table: RoutingTable = self.planner.build(
            self.health.states(), self.health.utilization(), generation=1, for_refine=True
        )
        log.info(
            "first routing table planned in %.1f s (%s)", time.monotonic() - step, COMPILE_NOTE
        )
        if self.fast_book is not None:
            log.info("readying the DNS fast path (%s)", COMPILE_NOTE)
            step = time.monotonic()
            udp_batch.warm_up(self.fast_book, TableView(self.table))
            log.info("DNS fast path ready in %.1f s", time.monotonic() - step)
        self.publisher = Publisher(self)
        self.intake = TelemetryIntake(self)
        self.probes = Probes(self, telemetry)
        self.demand_observer = DemandObserver(self)
        # With --bus: the link to the other routers (router/service/cluster_link.py), set by
        # serve; None for a router on its own.
        self.cluster: ClusterLink | None = None
        self.reloader = Reloader(self)
        self.workers = WorkerPool(listeners, workers, tcp_idle_timeout, query_log, rrl, tcp_limits)

    # -- the config in service (swapped whole by a reload) -------------------------------

    @property
    def deployment(self) -> Deployment:
        return self.config.deployment

    @property
    def model(self) -> SteeringModel:
        return self.config.model

    @property
    def health(self):  # noqa: ANN201
        return self.config.health

    @property
    def planner(self):  # noqa: ANN201
        return self.config.planner

    @property
    def fast_book(self):  # noqa: ANN201
        return self.config.fast_book

    @property
    def verifier(self):  # noqa: ANN201
        return self.config.verifier

    @property
    def listeners(self) -> list[tuple[str, int]]:
        """Every DNS address as bound (port 0 resolved)."""
        return self.workers.listeners

    @property
    def host(self) -> str:  # the first listener's
        return self.workers.listeners[0][0]

    @property
    def port(self) -> int:  # the first listener's
        return self.workers.listeners[0][1]

    def in_service(self) -> tuple[LoadedConfig, RoutingTable]:
        """The config and the routing table in service, from the same moment (a reload
        swaps both together)."""
        with self.workers.lock:
            return self.config, self.table

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        freeze_collector()
        log.info("starting %d DNS workers", self.worker_count)
        self.workers.start(self.config, self.table)
        self.publisher.start()

    def check_workers(self) -> None:
        """Replace any worker that died; it starts on the current routing table."""
        with self.workers.lock:
            self.workers.check(self.config)

    def stop(self) -> None:
        self.publisher.stop()
        self.workers.stop()
        with self.health_lock:
            self.save_state()  # the replay memory as it is now, not as at the last change

    # -- what the parts share ----------------------------------------------------------

    def save_state(self) -> None:
        """Node states to the state file, if any. Callers that changed health hold
        ``health_lock``; the publisher's saver does not (``NodeHealth`` reads its states
        under its own lock), so heartbeats are not held up while a large file is written."""
        if self.state_file is None:
            return
        config = self.config
        with self._save_lock:
            verifier = config.verifier
            extra = {"replay": verifier.guard.snapshot()} if verifier is not None else None
            try:
                config.health.save(self.state_file, extra)
            except OSError as exc:
                log.error("cannot save node state to %s: %s", self.state_file, exc)

    def set_admin_state(self, node_id: str, state: str) -> NodeStatus:
        """Apply an operator override; return once every worker serves the result."""
        with self.health_lock:
            changed = self.health.set_admin_state(node_id, state)
            self.save_state()
        if self.cluster is not None:
            self.cluster.admin_set(node_id, state)  # to every router, through the bucket
        if changed:
            self.publisher.wait_published(self.publisher.request_rebuild())
        return next(s for s in self.health.status() if s.node_id == node_id)

    def reload(self, trigger: str = "api") -> dict:
        return self.reloader.reload(trigger)

    def observe_demand(self, now: float | None = None) -> bool:
        return self.demand_observer.observe(now)

    def dns_counters(self) -> dict[str, object]:
        return self.workers.dns_counters(self.fast_book is not None)
