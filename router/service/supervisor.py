"""The supervisor: owns the sockets, the health view and the routing tables; runs workers.

One worker process per core answers DNS; the supervisor never does. It rebuilds the
routing table whenever node state changes and publishes it to every worker, returning
only once all of them serve the new generation, so the next answer reflects the change.
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
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from router.config.deployment import Deployment
from router.dns import udp_batch
from router.dns.answers import AnswerBook
from router.dns.engine import TableView
from router.dns.fast_answer import compile_book
from router.geo.clientmap import UNKNOWN_GROUP
from router.health.monitor import NodeMonitor
from router.health.policy_probes import PolicyProbeState, probe_url
from router.health.state import NodeHealth, NodeState, NodeStatus
from router.health.telemetry import Rejected, Verifier
from router.service.demand import (
    DEFAULT_INTERVAL_S,
    REPLAN_SHIFT,
    DemandCounters,
    DemandModel,
    moved_share,
)
from router.service.shared import shared_zeros
from router.service.socket_stats import udp_socket_stats
from router.service.tablefile import write_table
from router.service.worker import worker_main
from router.steering.build import Planner, RoutingTable
from router.steering.model import SteeringModel
from router.steering.samples import RttSamples, seed_from_file

log = logging.getLogger("router.service")

ACK_TIMEOUT = 5.0
LOAD_REFRESH_S = 1.0  # republish for load changes at most this often
LOAD_REFRESH_DELTA = 0.05  # and only when some node's utilisation moved this much
SAMPLES_REFRESH_S = 5.0  # fused RTT samples change steering at most this often
DEMAND_INTERVAL_S = DEFAULT_INTERVAL_S  # query counters are read this often
READY_TIMEOUT = 60.0
UDP_RCVBUF = 4 * 1024 * 1024
UDP_PATHS = ("batched", "per-packet")


class ServiceError(Exception):
    """The service cannot start or keep running."""


def build_book(deployment: Deployment, model: SteeringModel) -> AnswerBook:
    steered = [(name, policy, model.policies[policy].policy.ttl) for name, policy in model.steered]
    addresses = list(zip(model.node_ipv4, model.node_ipv6))
    return AnswerBook(deployment.zones, steered, addresses)


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
    ) -> None:
        if workers < 1:
            raise ServiceError("--workers must be at least 1")
        self.deployment = deployment
        self.model = model
        self.book = build_book(deployment, model)
        if udp_path not in UDP_PATHS:
            raise ServiceError(f"udp path must be one of {', '.join(UDP_PATHS)}, got {udp_path!r}")
        # "batched": recvmmsg/sendmmsg and the compiled responder (router/dns/udp_batch.py);
        # "per-packet": the Python loop, kept for platforms without recvmmsg and for comparison.
        batched = udp_path == "batched" and udp_batch.supported
        if udp_path == "batched" and not batched:
            log.warning("batched UDP needs 64-bit Linux (recvmmsg/sendmmsg): answering one packet at a time")
        self.fast_book = compile_book(self.book, model.client_map) if batched else None
        self.packet_counters = shared_zeros((workers, udp_batch.COUNTERS))
        monitor = None
        self.verifier: Verifier | None = None
        if telemetry:
            if deployment.health is None or deployment.node_keys is None:
                raise ServiceError(
                    "--telemetry needs a health: section with keys in deployment.yaml"
                )
            settings = deployment.health.settings()
            monitor = NodeMonitor(
                model.node_ids, model.node_capacity_gbps, settings, time.monotonic()
            )
            self.verifier = Verifier(deployment.node_keys, deployment.health.replay_window_s)
        self.health = NodeHealth(model.node_ids, monitor)
        self.state_file = state_file
        if state_file is not None:
            for warning in self.health.load(state_file, time.monotonic()):
                log.warning("%s", warning)
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
        # Compile every kernel (first table, both lookups) before taking the port, so
        # the first query never waits for numba.
        self.planner = Planner(model)
        self.policy_probes = PolicyProbeState([c.policy.probe for c in model.policies], model.node_ids)
        self.rtt = RttSamples(len(model.client_map.groups))
        if deployment.rtt_samples:
            seeded = seed_from_file(
                self.rtt, deployment.rtt_samples, model.client_map, model.node_ids, time.time(), time.monotonic()
            )
            log.info("RTT sample file: %d of %d samples fused", seeded, len(deployment.rtt_samples))
            self.rtt.changed_groups.clear()
            self.planner.samples = self.rtt.csr(time.monotonic())
        self.rtt_rejected = 0
        self._samples_changed = False
        self._node_index = {node_id: i for i, node_id in enumerate(model.node_ids)}
        self.demand_counters = DemandCounters(
            workers, len(model.policies), len(model.client_map.groups)
        )
        self.demand = DemandModel(len(model.policies), len(model.client_map.groups))
        self._expected_peak = np.array([p.policy.expected_peak_gbps for p in model.policies])
        self._demand_read_at = time.monotonic()
        self._pending_demand: np.ndarray | None = None
        self.table = self.planner.build(
            self.health.states(), self.health.utilization(), generation=1
        )
        self.last_build_ms = 0.0
        self.build_seconds = DurationHistogram()  # every routing table planned since start
        model.client_map.lookup(ipaddress.IPv4Address("192.0.2.1"))
        model.client_map.lookup(ipaddress.IPv6Address("2001:db8::1"))
        if self.fast_book is not None:
            udp_batch.warm_up(self.fast_book, TableView(self.table))
        self._udp, self._tcp, self.port = bind_dns_sockets(host, port, workers)
        shm = Path("/dev/shm")
        parent = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
        self._table_dir = Path(tempfile.mkdtemp(prefix="router-tables-", dir=parent))
        self._table_path = write_table(self._table_dir, self.table)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        for index in range(self.worker_count):
            self._workers.append(self._spawn(index))
        deadline = time.monotonic() + READY_TIMEOUT
        for worker in self._workers:
            self._expect(worker, "ready", deadline)
        self._publisher_thread = threading.Thread(
            target=self._publisher, name="publisher", daemon=True
        )
        self._publisher_thread.start()

    def _spawn(self, index: int) -> _Worker:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=worker_main,
            name=f"router-worker-{index}",
            args=(
                index,
                self._udp[index],
                self._tcp[index],
                theirs,
                self.book,
                self.model.client_map,
                self._table_path,
                self.tcp_idle_timeout,
                self.demand_counters.for_worker(index),
                self.fast_book,
                self.packet_counters[index],
            ),  # fmt: skip
            daemon=True,
        )
        process.start()
        theirs.close()
        return _Worker(index, process, ours)

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
                self._workers[i] = self._spawn(worker.index)
                self._expect(self._workers[i], "ready", time.monotonic() + READY_TIMEOUT)

    def stop(self) -> None:
        with self._published:
            self._closing = True
            self._published.notify_all()
        if self._publisher_thread is not None:
            self._publisher_thread.join(timeout=30)
        for worker in self._workers:
            try:
                worker.control.send(("stop",))
            except OSError:
                pass
            if worker.process.pid is not None and worker.process.is_alive():
                worker.process.terminate()
        for worker in self._workers:
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
        names = ("received", "answered", "punted", "send_errors", "batches")
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
        assert self.verifier is not None
        try:
            heartbeat = self.verifier.verify(packet)
        except Rejected as exc:
            self._log_rejection(exc)
            return
        now = time.monotonic() if now is None else now
        with self._lock:
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
        self.demand.observe(self.demand_counters.total(), now)
        with self._lock:
            reported = float((self.health.utilization() * self.model.node_capacity_gbps).sum())
        observed = self.demand.demand_gbps(self._expected_peak, reported)
        if observed is None or moved_share(self.planner.demand, observed) < REPLAN_SHIFT:
            return False
        with self._lock:
            self._pending_demand = observed
        self.request_rebuild()
        return True

    def _fuse_rtt(self, node_id: str, samples: tuple[tuple[str, float], ...], now: float) -> None:
        node = self._node_index[node_id]
        for prefix, rtt_ms in samples:
            try:
                network = ipaddress.ip_network(prefix, strict=False)
            except ValueError:
                self.rtt_rejected += 1
                continue
            group, _scope = self.model.client_map.lookup(network.network_address)
            if group == UNKNOWN_GROUP or not self.rtt.add(group, node, rtt_ms, now):
                self.rtt_rejected += 1  # nothing to steer by, or not a plausible RTT
                continue
            self._samples_changed = True

    def on_probe(self, node_id: str, ok: bool, detail: str) -> None:
        with self._lock:
            changed = self.health.probe(node_id, ok, detail, time.monotonic())
            if changed:
                self._save_state()
        if changed:
            self.request_rebuild()

    def on_policy_probe(self, policy: int, node_id: str, ok: bool, detail: str) -> None:
        """One result of a policy's own probe; a node entering or leaving it re-plans."""
        with self._lock:
            changed = self.policy_probes.report(policy, node_id, ok, detail)
        if changed:
            log.warning("node %s %s policy %s: %s", node_id,
                        "leaves" if self.policy_probes.down[policy, self._node_index[node_id]] else "returns to",
                        self.model.policies[policy].label, detail)  # fmt: skip
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
                self._published.wait_for(lambda: self._dirty or self._closing)
                if self._closing:
                    return
                self._dirty = False
                ticket = self._requested
            with self._lock:
                states = self.health.states()
                util = self.health.utilization().copy()
                sampled_groups = None
                if self._samples_changed:
                    self.planner.samples = self.rtt.csr(time.monotonic())
                    sampled_groups = np.array(sorted(self.rtt.changed_groups), dtype=np.int32)
                    self.rtt.changed_groups.clear()
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
