"""The DNS worker processes: spawned on the shared sockets, given routing tables, checked,
respawned, replaced by successors at a reload, and retired.

Every routing table is written once as a file the workers map read-only
(``router/service/tablefile.py``); a worker acknowledges each table once it answers from
it. The process itself is ``router/service/worker.py``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from router.dns import rrl, udp_batch
from router.dns.dnssec import TableSignatures
from router.dns.query_log import QueryLogOptions, QueryLogSettings
from router.dns.rrl import RrlSettings
from router.dns.transport import FILES_BESIDE_TCP, TCP_COUNTER_NAMES, TCP_COUNTERS, TcpLimits
from router.service.loaded import LoadedConfig
from router.service.query_counters import QueryAccounts, QueryCounters
from router.service.shared import shared_zeros
from router.service.socket_stats import udp_socket_stats
from router.service.sockets import ServiceError, bind_dns_sockets, short_buffer_advice
from router.service.tablefile import write_table
from router.service.worker import worker_main
from router.steering.build import RoutingTable

log = logging.getLogger("router.service")

ACK_TIMEOUT = 5.0
READY_TIMEOUT = 60.0
RETIRE_JOIN_S = 10.0  # a retiring worker is ended after this long (TCP grace plus margin)
RETIRE_UDP_S = 3.0  # a retiring worker stops taking queries within its receive timeout (0.5 s)


def raise_open_file_limit(needed: int) -> None:
    """Raise this process's soft open-file limit (workers inherit it) to ``needed``, as far
    as the hard limit allows: the common default of 1,024 would refuse TCP clients long
    before the connection table is full. Below that, the table is still bounded (the longest
    idle connection is closed when no descriptor is left) and a warning says what to raise."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("DNS: cannot raise the open-file limit to %d: %s", target, exc)
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning("DNS: the open-file limit is %d, and %d TCP connections per worker need %d: raise "
                    "it (ulimit -n, LimitNOFILE=) or lower --tcp-max-connections", soft,
                    needed - FILES_BESIDE_TCP, needed)  # fmt: skip


@dataclass
class Worker:
    index: int
    process: multiprocessing.process.BaseProcess
    control: Connection
    query_counters: QueryCounters  # of the config it serves
    retired_at: float = 0.0  # monotonic time it was told to retire


class WorkerPool:
    """``per_listener`` workers on each DNS address, each worker on its own pair of sockets
    (one SO_REUSEPORT group per address). Workers are numbered over all of them: listener
    ``i`` has workers ``i * per_listener`` onwards. ``lock`` guards the worker list and the
    table in service: whoever publishes, respawns or swaps holds it."""

    def __init__(
        self,
        listeners: Sequence[tuple[str, int]],
        per_listener: int,
        tcp_idle_timeout: float,
        query_log: QueryLogSettings | None,
        rrl_settings: RrlSettings | None = None,
        tcp_limits: TcpLimits | None = None,
    ) -> None:
        count = per_listener * len(listeners)
        self.tcp_limits = tcp_limits or TcpLimits()
        raise_open_file_limit(self.tcp_limits.open_files())
        self.rrl = rrl_settings
        self.rrl_counters = shared_zeros((count, rrl.CLASSES, 2))
        self.count = count
        self.tcp_idle_timeout = tcp_idle_timeout
        self.query_log = query_log
        self.lock = threading.Lock()
        self.packet_counters = shared_zeros((count, udp_batch.COUNTERS))
        self.tcp_counters = shared_zeros((count, TCP_COUNTERS))
        self.query_accounts = QueryAccounts()
        self.workers: list[Worker] = []
        self.retiring: list[Worker] = []  # replaced by a reload, finishing what they took
        self._context = multiprocessing.get_context("fork")
        self.udp: list[socket.socket] = []
        self.tcp: list[socket.socket] = []
        self.listeners: list[tuple[str, int]] = []
        try:
            for host, port in listeners:
                udp, tcp, actual = bind_dns_sockets(host, port, per_listener)
                self.udp += udp
                self.tcp += tcp
                self.listeners.append((host, actual))
        except ServiceError:
            for s in self.udp + self.tcp:
                s.close()
            raise
        advice = short_buffer_advice(self.udp[0].getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
        if advice is not None:
            log.warning("DNS: %s", advice)
        shm = Path("/dev/shm")
        parent = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
        self._table_dir = Path(tempfile.mkdtemp(prefix="router-tables-", dir=parent))
        self.table_path: Path | None = None  # the file of the table in service

    def write(self, table: RoutingTable, signatures: TableSignatures | None = None) -> Path:
        return write_table(self._table_dir, table, signatures)

    # -- starting ----------------------------------------------------------------------

    def start(self, config: LoadedConfig, table: RoutingTable) -> None:
        self.table_path = self.write(table, config.sign(table))
        self.query_accounts.add(config.query_counters)
        self.workers = self.start_successors(config, self.table_path)

    def start_successors(self, config: LoadedConfig, table_path: Path) -> list[Worker]:
        """A worker per index on ``config``, each answering once this returns. If one cannot
        start, all of them are ended and the error raised."""
        started: list[Worker] = []
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            for index in range(self.count):
                started.append(self._spawn(index, config, table_path))
            for worker in started:
                self._expect(worker, "ready", deadline)
        except Exception:
            for worker in started:
                worker.process.kill()
                worker.process.join(timeout=5)
                worker.control.close()
            raise
        return started

    def _spawn(self, index: int, config: LoadedConfig, table_path: Path) -> Worker:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=worker_main,
            name=f"router-worker-{index}",
            args=(
                index,
                self.udp[index],
                self.tcp[index],
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
                "parent_pid": os.getpid(),
                "tcp_counters": self.tcp_counters[index],
                "rrl_settings": self.rrl,
                "rrl_counters": self.rrl_counters[index],
                "nsid": config.nsid,
                "cookie_secrets": config.cookie_secrets,
                "tcp_limits": self.tcp_limits,
            },
            daemon=True,
        )
        process.start()
        theirs.close()
        return Worker(index, process, ours, config.query_counters)

    def _query_log_options(self, config: LoadedConfig) -> QueryLogOptions | None:
        if self.query_log is None:
            return None
        policies = config.model.policies
        keys = tuple(c.key for c in policies)
        pools = tuple(None if c.routing is None else (c.routing, c.group_fence) for c in policies)
        return QueryLogOptions(self.query_log, tuple(config.model.node_ids), keys, pools)

    def _expect(
        self, worker: Worker, kind: str, deadline: float, generation: int | None = None
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

    # -- in service (the caller holds ``lock``) --------------------------------------------

    def publish(
        self, table: RoutingTable, signatures: TableSignatures | None = None
    ) -> tuple[float, float]:
        """Every worker answers from ``table`` (with the RRSIGs of its steered answers,
        ``signatures``) when this returns; one that cannot follow is ended (``check`` starts
        a fresh one on the new table). Returns the seconds spent writing the file and
        waiting for the workers (the publisher logs them)."""
        started = time.monotonic()
        path = self.write(table, signatures)
        written = time.monotonic()
        deadline = written + ACK_TIMEOUT
        for worker in self.workers:
            worker.control.send(("table", str(path), table.generation))
        failed = []
        for worker in self.workers:
            try:
                self._expect(worker, "ack", deadline, table.generation)
            except ServiceError as exc:
                # A worker that cannot follow must not keep serving an old table.
                failed.append(str(exc))
                worker.process.kill()
        acked = time.monotonic()
        self._replace_table_file(path)
        if failed:
            log.error("routing table %d not confirmed: %s", table.generation, "; ".join(failed))
        return written - started, acked - written

    def swap(
        self, successors: list[Worker], config: LoadedConfig, table_path: Path
    ) -> list[Worker]:
        """Put ``successors`` (on ``config`` and ``table_path``) in service and tell the
        workers they replace to retire; returns those."""
        old, self.workers = self.workers, successors
        self.query_accounts.add(config.query_counters)
        self._replace_table_file(table_path)
        now = time.monotonic()
        for worker in old:
            try:
                worker.control.send(("retire",))
            except OSError:
                worker.process.kill()
            worker.retired_at = now
            self.retiring.append(worker)
        return old

    def _replace_table_file(self, path: Path) -> None:
        old, self.table_path = self.table_path, path
        if old is not None and old != path:
            old.unlink(missing_ok=True)

    def check(self, config: LoadedConfig) -> None:
        """Replace any worker that died (on the table in service); collect retired ones."""
        assert self.table_path is not None
        for i, worker in enumerate(self.workers):
            if worker.process.is_alive():
                continue
            log.error(
                "worker %d exited (code %s); starting a new one",
                worker.index,
                worker.process.exitcode,
            )
            worker.control.close()
            self.workers[i] = self._spawn(worker.index, config, self.table_path)
            self._expect(self.workers[i], "ready", time.monotonic() + READY_TIMEOUT)
        self._reap_retired()

    # -- retiring and stopping ---------------------------------------------------------------

    def wait_retired(self, old: list[Worker]) -> None:
        """Until the retired workers take no more queries (each answers what it took first;
        their open TCP connections may finish on the old config)."""
        deadline = time.monotonic() + RETIRE_UDP_S
        for worker in old:
            try:
                self._expect(worker, "retired", deadline)
            except (ServiceError, OSError, EOFError) as exc:
                log.warning(
                    "reload: old worker %d did not confirm it stopped taking queries: %s",
                    worker.index,
                    exc,
                )

    def _reap_retired(self) -> None:
        """Collect retired workers that finished; end any that overstay."""
        for worker in list(self.retiring):
            if worker.process.is_alive() and time.monotonic() - worker.retired_at > RETIRE_JOIN_S:
                log.warning(
                    "retired worker %d (pid %s) still running: ending it",
                    worker.index,
                    worker.process.pid,
                )
                worker.process.kill()
            if not worker.process.is_alive():
                worker.process.join(timeout=1)
                worker.control.close()
                self.retiring.remove(worker)
                counters = worker.query_counters
                if all(w.query_counters is not counters for w in self.workers + self.retiring):
                    self.query_accounts.fold(counters)  # its last worker is gone

    def stop(self) -> None:
        everyone = self.workers + self.retiring
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
        for s in self.udp + self.tcp:
            s.close()
        shutil.rmtree(self._table_dir, ignore_errors=True)

    # -- what the workers counted --------------------------------------------------------------

    def dns_counters(self, batched: bool) -> dict[str, object]:
        """Packets per worker (batched UDP path) and what the kernel dropped before reading."""
        names = udp_batch.COUNTER_NAMES
        workers = [dict(zip(names, (int(v) for v in row))) for row in self.packet_counters]
        totals = {name: sum(w[name] for w in workers) for name in names}
        inodes = {os.fstat(s.fileno()).st_ino for s in self.udp}
        ours = [row for row in udp_socket_stats() if row.inode in inodes]
        # A successor at a reload writes its predecessor's row (both run for a moment), so the
        # totals carry on across reloads and "open" is as the last of the two wrote it.
        tcp = {name: int(self.tcp_counters[:, i].sum()) for i, name in enumerate(TCP_COUNTER_NAMES)}
        limited = {
            name: {"dropped": int(self.rrl_counters[:, c, rrl.C_DROPPED].sum()),
                   "slipped": int(self.rrl_counters[:, c, rrl.C_SLIPPED].sum())}
            for c, name in enumerate(rrl.CLASS_NAMES)
        }  # fmt: skip
        return {
            "tcp": tcp,
            "rrl": {"rate": self.rrl.rate if self.rrl else 0, "limited": limited},
            "udp_path": "batched" if batched else "per-packet",
            "workers": workers,
            "totals": totals,
            "mean_batch": round(totals["received"] / totals["batches"], 2)
            if totals["batches"]
            else None,
            # Queries the kernel dropped because a worker's receive buffer was full: the
            # overload signal. Counted per socket since it was opened.
            "udp_receive_drops": sum(row.drops for row in ours),
            "udp_receive_queue_bytes": sum(row.queued_bytes for row in ours),
            # Per socket, as the kernel reports it (twice what it holds for data).
            "udp_receive_buffer_bytes": min(
                s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) for s in self.udp
            ),
        }
