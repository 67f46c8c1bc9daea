"""The supervisor: owns the sockets, the health view and the routing tables; runs workers.

One worker process per core answers DNS; the supervisor never does. It rebuilds the
routing table whenever node state changes and publishes it to every worker, returning
only once all of them serve the new generation, so the next answer reflects the change.

A reload (``reload()``: SIGHUP, a changed file, or the API) loads and compiles the files
beside the running config (``router/service/loaded.py``), starts a successor for every
worker on the same sockets, and once all of them answer, swaps the config and retires the
old workers (they answer what they took, then exit). Any problem leaves the running config
in service and is kept for ``GET /v1/config`` and the metrics.
"""

from __future__ import annotations

import ipaddress
import logging
import multiprocessing
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from router.config import ConfigError, load_deployment
from router.config.deployment import Deployment
from router.dns import udp_batch
from router.dns.engine import TableView
from router.dns.query_log import QueryLogOptions, QueryLogSettings
from router.geo.clientmap import UNKNOWN_GROUP
from router.health.policy_probes import probe_url
from router.health.state import NodeState, NodeStatus
from router.health.telemetry import Rejected
from router.service import loaded
from router.service.config_files import ConfigFiles
from router.service.demand import DEFAULT_INTERVAL_S, REPLAN_SHIFT, moved_share
from router.service.loaded import ConfigUnusable, LoadedConfig
from router.service.query_counters import QueryAccounts, QueryCounters
from router.service.shared import shared_zeros
from router.service.socket_stats import udp_socket_stats
from router.service.tablefile import write_table
from router.service.worker import worker_main
from router.steering.build import RoutingTable
from router.steering.model import SteeringModel, compile_model

log = logging.getLogger("router.service")

ACK_TIMEOUT = 5.0
LOAD_REFRESH_S = 1.0  # republish for load changes at most this often
LOAD_REFRESH_DELTA = 0.05  # and only when some node's utilisation moved this much
SAMPLES_REFRESH_S = 5.0  # fused RTT samples change steering at most this often
DEMAND_INTERVAL_S = DEFAULT_INTERVAL_S  # query counters are read this often
READY_TIMEOUT = 60.0
RELOAD_TIMEOUT = 300.0  # a reload waits this long for the publisher to put it in service
RETIRE_JOIN_S = 10.0  # a retiring worker is ended after this long (TCP grace plus margin)
RETIRE_UDP_S = 3.0  # a retiring worker stops taking queries within its receive timeout (0.5 s)
UDP_RCVBUF = 4 * 1024 * 1024
UDP_PATHS = ("batched", "per-packet")


class ServiceError(Exception):
    """The service cannot start or keep running."""


def parse_endpoint(text: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6HOST]:PORT``."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ServiceError(f"{what} must be HOST:PORT (IPv6 as [::1]:PORT), got {text!r}")
    host = host.removeprefix("[").removesuffix("]")
    value = int(port)
    if value > 65535:
        raise ServiceError(f"{what}: port {value} is out of range")
    return host, value


def bind_dns_sockets(
    host: str, port: int, count: int
) -> tuple[list[socket.socket], list[socket.socket], int]:
    """``count`` UDP and TCP sockets in one SO_REUSEPORT group each, on one port."""
    try:
        family = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)[0][0]
    except socket.gaierror as exc:
        raise ServiceError(f"cannot resolve listen address {host!r}: {exc}") from exc
    last_error: OSError | None = None
    for _ in range(20 if port == 0 else 1):
        made: list[socket.socket] = []
        try:
            udp, tcp = [], []
            actual = port
            for _ in range(count):
                s = _socket(family, socket.SOCK_DGRAM, made)
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
                except OSError:
                    pass
                s.bind((host, actual))
                actual = s.getsockname()[1]
                udp.append(s)
            for _ in range(count):
                s = _socket(family, socket.SOCK_STREAM, made)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, actual))
                s.listen(1024)
                tcp.append(s)
            return udp, tcp, actual
        except OSError as exc:
            last_error = exc
            for s in made:
                s.close()
    raise ServiceError(f"cannot listen on {host}:{port}: {last_error}")


def _socket(family: int, kind: int, made: list[socket.socket]) -> socket.socket:
    s = socket.socket(family, kind)
    made.append(s)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return s


@dataclass
class _Worker:
    index: int
    process: multiprocessing.process.BaseProcess
    control: Connection
    query_counters: QueryCounters  # of the config it serves
    retired_at: float = 0.0  # monotonic time it was told to retire


@dataclass
class ReloadLog:
    """What reloads did since start, for ``GET /v1/config`` and the metrics."""

    ok: int = 0
    failed: int = 0
    unchanged: int = 0
    last_attempt: dict | None = None  # time, trigger, result, version, seconds
    last_error: dict | None = None  # time, trigger, problems (path:line: message), version kept

    def record(self, trigger: str, result: str, version: str, started: float, problems: Sequence[str] = ()) -> dict:
        now = time.time()
        attempt = {"time": now, "trigger": trigger, "result": result, "version": version,
                   "seconds": round(time.monotonic() - started, 3)}  # fmt: skip
        setattr(self, result, getattr(self, result) + 1)
        self.last_attempt = attempt
        if result == "failed":
            self.last_error = {"time": now, "trigger": trigger, "problems": list(problems), "version_kept": version}
        return attempt


class DurationHistogram:
    """Counts of durations by bucket and kind, read by the /metrics collector (the supervisor
    itself does not depend on the metrics library)."""

    BOUNDS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))

    def __init__(self) -> None:
        self.counts: dict[str, np.ndarray] = {}
        self.sums: dict[str, float] = {}

    def observe(self, seconds: float, kind: str) -> None:
        counts = self.counts.setdefault(kind, np.zeros(len(self.BOUNDS_S), dtype=np.int64))
        counts[int(np.searchsorted(self.BOUNDS_S, seconds))] += 1
        self.sums[kind] = self.sums.get(kind, 0.0) + seconds


class Supervisor:
    def __init__(
        self,
        deployment: Deployment,
        model: SteeringModel,
        host: str,
        port: int,
        workers: int,
        tcp_idle_timeout: float = 10.0,
        telemetry: bool = False,
        state_file: Path | None = None,
        udp_path: str = "batched",
        files: ConfigFiles | None = None,
        query_log: QueryLogSettings | None = None,
    ) -> None:
        if workers < 1:
            raise ServiceError("--workers must be at least 1")
        if udp_path not in UDP_PATHS:
            raise ServiceError(f"udp path must be one of {', '.join(UDP_PATHS)}, got {udp_path!r}")
        # "batched": recvmmsg/sendmmsg and the compiled responder (router/dns/udp_batch.py);
        # "per-packet": the Python loop, kept for platforms without recvmmsg and for comparison.
        self._batched = udp_path == "batched" and udp_batch.supported
        if udp_path == "batched" and not self._batched:
            log.warning("batched UDP needs 64-bit Linux (recvmmsg/sendmmsg): answering one packet at a time")
        self._telemetry = telemetry
        try:
            self.config: LoadedConfig = loaded.prepare(
                deployment, model, files or ConfigFiles.read(deployment.directory), workers, self._batched, telemetry
            )
        except ConfigUnusable as exc:
            raise ServiceError(str(exc)) from exc
        self.reloads = ReloadLog()
        self.query_log = query_log
        self.query_accounts = QueryAccounts()
        self.query_accounts.add(self.config.query_counters)
        self._reload_lock = threading.Lock()  # one reload at a time
        self._install_request: LoadedConfig | None = None
        self._install_result: str | None = None
        self.packet_counters = shared_zeros((workers, udp_batch.COUNTERS))
        self.state_file = state_file
        if state_file is not None:
            for warning in self.health.load(state_file, time.monotonic()):
                log.warning("%s", warning)
        self.health.apply_admin_file(deployment.admin_state)
        self._rejections_logged: dict[str, float] = {}
        self._published_util = self.health.utilization()
        self._published_at = time.monotonic()
        self.host = host
        self.worker_count = workers
        self.tcp_idle_timeout = tcp_idle_timeout
        self._lock = threading.Lock()  # node health
        self._workers_lock = threading.Lock()  # worker processes and their pipes
        self._published = threading.Condition()
        self._requested = 0
        self._done = 0
        self._dirty = False
        self._closing = False
        self._publisher_thread: threading.Thread | None = None
        # "serving", or "draining" once asked to stop: still answering for a grace period
        # while anycast announcements are withdrawn, so resolvers move away without loss.
        self.service_state = "serving"
        self._context = multiprocessing.get_context("fork")
        self._workers: list[_Worker] = []
        self._retiring: list[_Worker] = []  # replaced by a reload, finishing what they took
        self.rtt_rejected = 0
        self._samples_changed = False
        self._demand_read_at = time.monotonic()
        self._pending_demand: np.ndarray | None = None
        # Compile every kernel (first table, both lookups) before taking the port, so
        # the first query never waits for numba.
        self.table = self.planner.build(
            self.health.states(), self.health.utilization(), generation=1
        )
        self.last_build_ms = 0.0
        self.build_seconds = DurationHistogram()  # every routing table planned since start
        if self.fast_book is not None:
            udp_batch.warm_up(self.fast_book, TableView(self.table))
        self._udp, self._tcp, self.port = bind_dns_sockets(host, port, workers)
        shm = Path("/dev/shm")
        parent = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
        self._table_dir = Path(tempfile.mkdtemp(prefix="router-tables-", dir=parent))
        self._table_path = write_table(self._table_dir, self.table)

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
    def policy_probes(self):  # noqa: ANN201
        return self.config.policy_probes

    @property
    def demand(self):  # noqa: ANN201
        return self.config.demand

    @property
    def verifier(self):  # noqa: ANN201
        return self.config.verifier

    @property
    def rtt(self):  # noqa: ANN201
        return self.config.rtt

    def in_service(self) -> tuple[LoadedConfig, RoutingTable]:
        """The config and the routing table in service, from the same moment (a reload
        swaps both together)."""
        with self._workers_lock:
            return self.config, self.table

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        for index in range(self.worker_count):
            self._workers.append(self._spawn(index, self.config, self._table_path))
        deadline = time.monotonic() + READY_TIMEOUT
        for worker in self._workers:
            self._expect(worker, "ready", deadline)
        self._publisher_thread = threading.Thread(
            target=self._publisher, name="publisher", daemon=True
        )
        self._publisher_thread.start()

    def _spawn(self, index: int, config: LoadedConfig, table_path: Path) -> _Worker:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=worker_main,
            name=f"router-worker-{index}",
            args=(
                index,
                self._udp[index],
                self._tcp[index],
                theirs,
                config.book,
                config.model.client_map,
                table_path,
                self.tcp_idle_timeout,
                config.demand_counters.for_worker(index),
                config.fast_book,
                self.packet_counters[index],
            ),  # fmt: skip
            kwargs={
                "query_stats": config.query_counters.for_worker(index),
                "query_labels": config.query_counters.labels,
                "query_log": self._query_log_options(config),
            },
            daemon=True,
        )
        process.start()
        theirs.close()
        return _Worker(index, process, ours, config.query_counters)

    def _query_log_options(self, config: LoadedConfig) -> QueryLogOptions | None:
        if self.query_log is None:
            return None
        policies = config.model.policies
        keys = tuple(c.key for c in policies)
        pools = tuple(None if c.routing is None else (c.routing, c.group_fence) for c in policies)
        return QueryLogOptions(self.query_log, tuple(config.model.node_ids), keys, pools)

    def _expect(
        self, worker: _Worker, kind: str, deadline: float, generation: int | None = None
    ) -> None:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not worker.control.poll(remaining):
                raise ServiceError(f"worker {worker.index} did not answer ({kind}) in time")
            message = worker.control.recv()
            if message[0] == kind and (generation is None or message[1] == generation):
                return
            if message[0] == "nack":
                raise ServiceError(
                    f"worker {worker.index} could not load routing table {message[1]}"
                )

    def check_workers(self) -> None:
        """Replace any worker that died; it starts on the current routing table."""
        with self._workers_lock:
            for i, worker in enumerate(self._workers):
                if worker.process.is_alive():
                    continue
                log.error(
                    "worker %d exited (code %s); starting a new one",
                    worker.index,
                    worker.process.exitcode,
                )
                worker.control.close()
                self._workers[i] = self._spawn(worker.index, self.config, self._table_path)
                self._expect(self._workers[i], "ready", time.monotonic() + READY_TIMEOUT)
            self._reap_retired()

    def _reap_retired(self) -> None:
        """Collect retired workers that finished; end any that overstay."""
        for worker in list(self._retiring):
            if worker.process.is_alive() and time.monotonic() - worker.retired_at > RETIRE_JOIN_S:
                log.warning("retired worker %d (pid %s) still running: ending it", worker.index, worker.process.pid)
                worker.process.kill()
            if not worker.process.is_alive():
                worker.process.join(timeout=1)
                worker.control.close()
                self._retiring.remove(worker)
                counters = worker.query_counters
                if all(w.query_counters is not counters for w in self._workers + self._retiring):
                    self.query_accounts.fold(counters)  # its last worker is gone

    def stop(self) -> None:
        with self._published:
            self._closing = True
            self._published.notify_all()
        if self._publisher_thread is not None:
            self._publisher_thread.join(timeout=30)
        everyone = self._workers + self._retiring
        for worker in everyone:
            try:
                worker.control.send(("stop",))
            except OSError:
                pass
            if worker.process.pid is not None and worker.process.is_alive():
                worker.process.terminate()
        for worker in everyone:
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
        for s in self._udp + self._tcp:
            s.close()
        shutil.rmtree(self._table_dir, ignore_errors=True)

    # -- state changes -------------------------------------------------------------------

    def dns_counters(self) -> dict[str, object]:
        """Packets per worker (batched UDP path) and what the kernel dropped before reading."""
        names = udp_batch.COUNTER_NAMES
        workers = [dict(zip(names, (int(v) for v in row))) for row in self.packet_counters]
        totals = {name: sum(w[name] for w in workers) for name in names}
        inodes = {os.fstat(s.fileno()).st_ino for s in self._udp}
        ours = [row for row in udp_socket_stats() if row.inode in inodes]
        return {
            "udp_path": "batched" if self.fast_book is not None else "per-packet",
            "workers": workers,
            "totals": totals,
            "mean_batch": round(totals["received"] / totals["batches"], 2) if totals["batches"] else None,
            # Queries the kernel dropped because a worker's receive buffer was full: the
            # overload signal. Counted per socket since it was opened.
            "udp_receive_drops": sum(row.drops for row in ours),
            "udp_receive_queue_bytes": sum(row.queued_bytes for row in ours),
        }

    def set_admin_state(self, node_id: str, state: str) -> NodeStatus:
        """Apply an operator override; return once every worker serves the result."""
        with self._lock:
            changed = self.health.set_admin_state(node_id, state)
            self._save_state()
        if changed:
            self.wait_published(self.request_rebuild())
        return next(s for s in self.health.status() if s.node_id == node_id)

    def on_heartbeat(self, packet: bytes, now: float | None = None) -> None:
        """One telemetry datagram: verify it, apply it, ask for a new table if a state changed."""
        now = time.monotonic() if now is None else now
        with self._lock:  # also keeps the config from being swapped under this heartbeat
            assert self.verifier is not None
            try:
                heartbeat = self.verifier.verify(packet)
            except Rejected as exc:
                self._log_rejection(exc)
                return
            changed = self.health.heartbeat(heartbeat, now)
            if changed:
                self._save_state()
            if heartbeat.rtt:
                self._fuse_rtt(heartbeat.node, heartbeat.rtt, now)
        if changed:
            self.request_rebuild()
        elif (
            self._samples_changed
            and now - self._published_at >= SAMPLES_REFRESH_S
            and not self._dirty
        ):
            self.request_rebuild()
        elif now - self._published_at >= LOAD_REFRESH_S and not self._dirty:
            # Load moves every second; republish only when it moved enough to matter.
            if (
                np.abs(self.health.utilization() - self._published_util).max(initial=0.0)
                >= LOAD_REFRESH_DELTA
            ):
                self.request_rebuild()

    def observe_demand(self, now: float | None = None) -> bool:
        """Read the workers' query counters; re-plan when demand shifted. True if it did."""
        now = time.monotonic() if now is None else now
        if now - self._demand_read_at < DEMAND_INTERVAL_S:
            return False
        self._demand_read_at = now
        config = self.config
        config.demand.observe(config.demand_counters.total(), now)
        with self._lock:
            reported = float((config.health.utilization() * config.model.node_capacity_gbps).sum())
        observed = config.demand.demand_gbps(config.expected_peak, reported)
        if observed is None or moved_share(config.planner.demand, observed) < REPLAN_SHIFT:
            return False
        with self._lock:
            if config is not self.config:
                return False  # a reload swapped the config meanwhile: its own counters decide
            self._pending_demand = observed
        self.request_rebuild()
        return True

    def _fuse_rtt(self, node_id: str, samples: tuple[tuple[str, float], ...], now: float) -> None:
        node = self.config.node_index[node_id]
        for prefix, rtt_ms in samples:
            try:
                network = ipaddress.ip_network(prefix, strict=False)
            except ValueError:
                self.rtt_rejected += 1
                continue
            group, _scope = self.model.client_map.lookup(network.network_address)
            if group == UNKNOWN_GROUP or not self.config.rtt.add(group, node, rtt_ms, now):
                self.rtt_rejected += 1  # nothing to steer by, or not a plausible RTT
                continue
            self._samples_changed = True

    def on_probe(self, node_id: str, ok: bool, detail: str) -> None:
        with self._lock:
            if node_id not in self.health:
                return  # a probe started before a reload dropped the node
            changed = self.health.probe(node_id, ok, detail, time.monotonic())
            if changed:
                self._save_state()
        if changed:
            self.request_rebuild()

    def on_policy_probe(self, policy: int, node_id: str, ok: bool, detail: str) -> None:
        """One result of a policy's own probe; a node entering or leaving it re-plans."""
        with self._lock:
            config = self.config
            if policy >= len(config.model.policies) or node_id not in config.node_index:
                return  # a probe of a config a reload replaced
            changed = config.policy_probes.report(policy, node_id, ok, detail)
        if changed:
            log.warning("node %s %s policy %s: %s", node_id,
                        "leaves" if config.policy_probes.down[policy, config.node_index[node_id]] else "returns to",
                        config.model.policies[policy].label, detail)  # fmt: skip
            self.request_rebuild()

    def policy_probe_targets(self) -> list[tuple[int, dict[str, str], float, float]]:
        """(policy, node -> url, interval, timeout) for every policy with a probe."""
        out = []
        for p, compiled in enumerate(self.model.policies):
            probe = compiled.policy.probe
            if probe is None:
                continue
            nodes = [n for n, member in zip(self.deployment.inventory.nodes, compiled.in_pool) if member]
            out.append((p, {n.id: probe_url(probe.url, n) for n in nodes}, probe.interval_s, probe.timeout_s))
        return out

    def probe_targets(self) -> dict[str, str]:
        return {n.id: n.health_url for n in self.deployment.inventory.nodes if n.health_url}

    def tick(self, now: float | None = None) -> None:
        """Withdraw nodes that went silent."""
        with self._lock:
            changed = self.health.tick(time.monotonic() if now is None else now)
            if changed:
                self._save_state()
        if changed:
            self.request_rebuild()

    # -- the publisher thread ------------------------------------------------------------
    # Building a table can take a while on a large footprint. It runs in its own thread
    # (the numba kernels release the GIL), so heartbeat intake never waits for it, and
    # changes that arrive during a build are coalesced into the next one.

    def request_rebuild(self) -> int:
        """Ask for a table reflecting the current state; returns a ticket to wait on."""
        with self._published:
            self._requested += 1
            self._dirty = True
            self._published.notify_all()
            return self._requested

    def wait_published(self, ticket: int, timeout: float = 30.0) -> bool:
        with self._published:
            return self._published.wait_for(lambda: self._done >= ticket or self._closing, timeout)

    def _publisher(self) -> None:
        while True:
            with self._published:
                self._published.wait_for(lambda: self._dirty or self._closing or self._install_request is not None)
                if self._closing:
                    return
                new = self._install_request
                if new is not None:
                    self._install_request = None
                else:
                    self._dirty = False
                    ticket = self._requested
            if new is not None:
                try:
                    self._install(new)
                    result = "ok"
                except Exception as exc:  # the running config stays; the reload reports why
                    log.exception("putting the reloaded config in service failed")
                    result = f"failed: {exc}"
                with self._published:
                    self._install_result = result
                    self._published.notify_all()
                continue
            with self._lock:
                states = self.health.states()
                util = self.health.utilization().copy()
                sampled_groups = None
                if self._samples_changed:
                    rtt = self.config.rtt
                    self.planner.samples = rtt.csr(time.monotonic())
                    sampled_groups = np.array(sorted(rtt.changed_groups), dtype=np.int32)
                    rtt.changed_groups.clear()
                    self._samples_changed = False
                # New demand or a policy probe verdict: plan afresh, not a repair.
                policy_down = self.policy_probes.down.copy()
                full = not np.array_equal(policy_down, self.planner.policy_down)
                self.planner.policy_down = policy_down
                if self._pending_demand is not None:
                    self.planner.demand = self._pending_demand
                    self._pending_demand = None
                    full = True
            try:
                table = self._plan(states, util, sampled_groups, full=full)
                with self._workers_lock:
                    self._publish(table)
                self._published_util = util
                self._published_at = time.monotonic()
            except Exception:
                log.exception("building or publishing a routing table failed; keeping the last one")
            with self._published:
                self._done = ticket
                self._published.notify_all()

    def _plan(
        self, states: np.ndarray, util: np.ndarray, sampled_groups: np.ndarray | None = None, full: bool = False
    ) -> RoutingTable:
        # The common changes are repaired, not planned again: one node gone down, or new
        # RTT samples for some groups. Anything else (or both at once) plans afresh.
        generation = self.table.generation + 1
        started = time.perf_counter()
        changed = np.flatnonzero(states != self.table.node_state)
        same_load = np.array_equal(util, self._published_util)
        if full or not same_load:
            table = self.planner.build(states, util, generation)
        elif sampled_groups is not None and len(changed) == 0:
            table = self.planner.groups_changed(sampled_groups, states, util, generation)
        elif sampled_groups is None and len(changed) == 1 and states[changed[0]] == NodeState.DOWN:
            table = self.planner.node_down(int(changed[0]), states, util, generation)
        else:
            table = self.planner.build(states, util, generation)
        self.last_build_ms = (time.perf_counter() - started) * 1000
        self.build_seconds.observe(self.last_build_ms / 1000, self.planner.last_kind)
        log.info("routing table %d planned (%s) in %.1f ms", generation, self.planner.last_kind, self.last_build_ms)
        return table

    # -- reload ------------------------------------------------------------------------

    def reload(self, trigger: str = "api") -> dict:
        """Load the files again and put them in service, or keep the running config and
        say why. Returns the attempt (``result``: ok, unchanged or failed; ``problems``)."""
        with self._reload_lock:
            started = time.monotonic()
            directory = self.deployment.directory
            running = self.config.version
            problems: list[str] = []
            for _ in range(3):  # files written while we read them: read them again
                files = ConfigFiles.read(directory)
                if files.version == running:
                    log.info("reload (%s): files unchanged (version %s)", trigger, running)
                    return self.reloads.record(trigger, "unchanged", running, started)
                try:
                    deployment = load_deployment(directory)
                    new = loaded.prepare(deployment, compile_model(deployment), files, self.worker_count,
                                         self._batched, self._telemetry)  # fmt: skip
                except ConfigError as exc:
                    problems = [str(problem) for problem in exc.problems]
                    break
                except ConfigUnusable as exc:
                    problems = [f"{directory}: {exc}"]
                    break
                except Exception as exc:  # a bug must not take the running config with it
                    log.exception("reload (%s): building the new config failed", trigger)
                    problems = [f"{directory}: internal error building the config: {exc!r}"]
                    break
                if ConfigFiles.read(directory).version == files.version:
                    break
                log.info("reload (%s): files changed while loading; loading again", trigger)
            else:
                problems = [f"{directory}: files kept changing while being loaded; try again"]
            before = self.config.files.hashes
            if not problems:
                problems = self._put_in_service(new)
            if problems:
                for problem in problems:
                    log.error("reload (%s): %s", trigger, problem)
                log.error("reload (%s) failed with %d problem(s); still serving version %s", trigger, len(problems), running)
                attempt = self.reloads.record(trigger, "failed", running, started, problems)
                return {**attempt, "problems": problems}
            changed = {name for name, _ in set(files.hashes.items()) ^ set(before.items())}
            attempt = self.reloads.record(trigger, "ok", files.version, started)
            log.info("reload (%s): version %s in service on %d workers in %.2f s (files changed: %s)", trigger,
                     files.version, self.worker_count, attempt["seconds"], ", ".join(sorted(changed)))  # fmt: skip
            return attempt

    def _put_in_service(self, new: LoadedConfig) -> list[str]:
        """Hand the new config to the publisher thread (it owns tables and workers)."""
        with self._published:
            self._install_result = None
            self._install_request = new
            self._published.notify_all()
            done = self._published.wait_for(lambda: self._install_result is not None or self._closing, RELOAD_TIMEOUT)
            result = self._install_result
        if not done or result is None:
            return ["the new config was not in service in time (or the router is stopping)"]
        return [] if result == "ok" else [result]

    def _install(self, new: LoadedConfig) -> None:
        """In the publisher thread: plan the new config's first table with the node states
        carried over, start a successor for every worker on the same sockets, and once all
        answer, swap the config and retire the old workers. If a successor cannot start,
        they are all ended and the running config stays."""
        started = time.perf_counter()
        with self._lock:
            for note in loaded.carry_over(new, self.config):
                log.info("reload: %s", note)
            states = new.health.states()
            util = new.health.utilization().copy()
        new.planner.policy_down = new.policy_probes.down.copy()
        table = new.planner.build(states, util, self.table.generation + 1)
        new.rtt.changed_groups.clear()  # the RTT averages carried so far are in this table
        self.build_seconds.observe(time.perf_counter() - started, "reload")
        if new.fast_book is not None:
            udp_batch.warm_up(new.fast_book, TableView(table))
        path = write_table(self._table_dir, table)
        successors: list[_Worker] = []
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            for index in range(self.worker_count):
                successors.append(self._spawn(index, new, path))
            for worker in successors:
                self._expect(worker, "ready", deadline)
        except Exception:
            for worker in successors:
                worker.process.kill()
                worker.process.join(timeout=5)
                worker.control.close()
            path.unlink(missing_ok=True)
            raise
        with self._lock, self._workers_lock:
            # Heartbeats kept arriving at the old health while the workers started.
            loaded.carry_over(new, self.config)
            old_workers, self._workers = self._workers, successors
            self.query_accounts.add(new.query_counters)
            self.config = new
            old_path = self._table_path
            self.table, self._table_path = table, path
            self._published_util = util
            self._published_at = time.monotonic()
            self._pending_demand = None
            # Averages fused while the successors started (carried just now) are not in
            # the first table yet: the publisher re-places their groups.
            self._samples_changed = bool(new.rtt.changed_groups)
            now = time.monotonic()
            for worker in old_workers:
                try:
                    worker.control.send(("retire",))
                except OSError:
                    worker.process.kill()
                worker.retired_at = now
                self._retiring.append(worker)
            restated = not np.array_equal(new.health.states(), states)
        old_path.unlink(missing_ok=True)
        self._save_state()
        # The reload is done when the old workers take no more queries (each answers what
        # it took first); their open TCP connections may finish on the old config.
        deadline = time.monotonic() + RETIRE_UDP_S
        for worker in old_workers:
            try:
                self._expect(worker, "retired", deadline)
            except (ServiceError, OSError, EOFError) as exc:
                log.warning("reload: old worker %d did not confirm it stopped taking queries: %s", worker.index, exc)
        if restated:
            self.request_rebuild()  # a node changed state while the successors started

    def _save_state(self) -> None:
        if self.state_file is None:
            return
        try:
            self.health.save(self.state_file)
        except OSError as exc:
            log.error("cannot save node state to %s: %s", self.state_file, exc)

    def _log_rejection(self, exc: Rejected) -> None:
        # At most one line per reason every 10 s: a flood of forged packets cannot flood the log.
        now = time.monotonic()
        if now - self._rejections_logged.get(exc.reason, -1e9) >= 10:
            self._rejections_logged[exc.reason] = now
            assert self.verifier is not None
            log.warning("rejected heartbeat (%s; %d rejected for this reason so far): %s",
                        exc.reason, self.verifier.rejected[exc.reason], exc.detail)  # fmt: skip

    def _publish(self, table: RoutingTable) -> None:
        path = write_table(self._table_dir, table)
        deadline = time.monotonic() + ACK_TIMEOUT
        for worker in self._workers:
            worker.control.send(("table", str(path), table.generation))
        failed = []
        for worker in self._workers:
            try:
                self._expect(worker, "ack", deadline, table.generation)
            except ServiceError as exc:
                # A worker that cannot follow must not keep serving an old table:
                # end it, and check_workers() starts a fresh one on the new table.
                failed.append(str(exc))
                worker.process.kill()
        old = self._table_path
        self.table, self._table_path = table, path
        old.unlink(missing_ok=True)
        if failed:
            log.error("routing table %d not confirmed: %s", table.generation, "; ".join(failed))
        else:
            log.info(
                "routing table %d in service on %d workers", table.generation, len(self._workers)
            )
