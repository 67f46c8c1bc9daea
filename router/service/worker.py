"""A worker process: answers DNS on its own SO_REUSEPORT sockets until told to stop.

Forked from the supervisor after the deployment is compiled, so the answer book, the
client map and the numba code are inherited (copy-on-write). Routing tables arrive as
paths of mapped files over the control pipe; each one is acknowledged once in use.

A reload forks a successor for each worker on the same sockets (its own book, from the new
config), then sends this one ``retire``: it stops taking queries, answers every one it has
taken, lets its TCP connections finish, and exits. Both read the same sockets meanwhile, so
no query waits for a worker that is not there.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from router.dns import cookies, udp_batch
from router.dns.answers import AnswerBook
from router.dns.engine import Responder, TableView
from router.dns.fast_answer import FastBook
from router.dns.query_log import QueryLog, QueryLogOptions
from router.dns.query_stats import QueryLabels, QueryStats
from router.dns.rrl import RrlSettings, RrlState
from router.dns.transport import (
    RETIRE_GRACE_S,
    Counters,
    TcpLimits,
    WorkerStop,
    safe_respond,
    serve_tcp,
    serve_udp,
)
from router.geo.clientmap import ClientMap
from router.service.tablefile import map_signed_table

log = logging.getLogger("router.worker")

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _view(path: Path) -> TableView:
    table, signatures = map_signed_table(path)
    return TableView(table, signatures)


def _end_with(parent_pid: int) -> None:
    """A worker must never outlive its supervisor (killed with SIGKILL, or crashed): it would
    go on answering from a table nobody updates. Linux sends SIGTERM when the parent dies."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    if os.getppid() != parent_pid:  # the supervisor died before prctl took effect
        os._exit(0)


def worker_main(
    index: int,
    udp_sock: socket.socket,
    tcp_sock: socket.socket,
    control: Connection,
    book: AnswerBook,
    client_map: ClientMap,
    table_path: Path,
    tcp_idle_timeout: float,
    demand_counts: np.ndarray | None = None,
    fast_book: FastBook | None = None,
    packet_counters: np.ndarray | None = None,
    query_stats: QueryStats | None = None,
    query_labels: QueryLabels | None = None,
    query_log: QueryLogOptions | None = None,
    parent_pid: int | None = None,
    tcp_counters: np.ndarray | None = None,
    rrl_settings: RrlSettings | None = None,
    rrl_counters: np.ndarray | None = None,
    nsid: bytes = b"",
    cookie_secrets: tuple[bytes, ...] = (),
    tcp_limits: TcpLimits | None = None,
) -> None:
    """Serve until SIGTERM (also sent when the supervisor ``parent_pid`` dies). With ``fast_book`` UDP runs batched in compiled code
    (router/dns/udp_batch.py); without it, one packet at a time in Python.

    ``query_stats`` counts every reply (router/dns/query_stats.py); ``query_log`` writes a
    sample of the queries (router/dns/query_log.py)."""
    stop = threading.Event()

    def on_sigterm(*_: object) -> None:
        if stop.is_set():
            return  # already stopping (the supervisor may signal and send "stop" both)
        stop.set()
        raise WorkerStop

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop
    if parent_pid is not None:
        _end_with(parent_pid)
    current = [_view(table_path)]
    # Tells the compiled UDP loop a new table is in place, or that this worker retires.
    control_flags = np.zeros(udp_batch.CONTROLS, dtype=np.int64)
    retire = threading.Event()

    def view() -> TableView:
        return current[0]

    counters = Counters()
    limits = tcp_limits or TcpLimits()
    # One rate-limiting table per worker: the compiled loop and the Python responders share it.
    limiter = RrlState(rrl_settings, rrl_counters) if rrl_settings is not None else None
    # DNS cookies: one state for both paths (the secrets, and the time each path writes in).
    cookie_state = cookies.state_array(cookie_secrets)

    def responder() -> Responder:  # one per thread: a Responder keeps its last query
        log_writer = None
        if query_log is not None:
            log_writer = QueryLog(query_log, index)
        return Responder(book, client_map, view, demand_counts=demand_counts, stats=query_stats, labels=query_labels,
                         query_log=log_writer, tcp_keepalive=min(0xFFFF, int(tcp_idle_timeout * 10)),
                         limiter=limiter, nsid=nsid, cookie_state=cookie_state)  # fmt: skip

    tcp_thread = threading.Thread(
        target=serve_tcp,
        args=(
            tcp_sock,
            responder(),
            counters,
            stop,
            tcp_idle_timeout,
            retire,
            tcp_counters,
            limits.max_connections,
            limits.max_per_client,
            limits.partial_timeout,
        ),
        name=f"tcp-{index}",
        daemon=True,
    )
    tcp_thread.start()

    def control_loop() -> None:
        while not stop.is_set():
            try:
                message = control.recv()
            except (EOFError, OSError):
                # The supervisor is gone: stop serving rather than serve stale tables.
                os._exit(0)
                return
            if message[0] == "table":
                _, path, generation = message
                try:
                    current[0] = _view(Path(path))
                    control_flags[udp_batch.CONTROL_SWAP] = (
                        1  # after the view: the loop must find it
                    )
                    control.send(("ack", generation))
                except (OSError, ValueError) as exc:
                    log.error("worker %d cannot map routing table %s: %s", index, path, exc)
                    control.send(("nack", generation))
            elif message[0] == "stop":
                os._exit(0)
                return
            elif message[0] == "retire":
                retire.set()
                control_flags[udp_batch.CONTROL_RETIRE] = 1
                return

    threading.Thread(target=control_loop, name=f"control-{index}", daemon=True).start()
    control.send(("ready", current[0].generation))
    udp_responder = responder()
    try:
        if fast_book is not None:
            if packet_counters is None:
                packet_counters = np.zeros(udp_batch.COUNTERS, dtype=np.int64)
            sample_every = query_log.settings.every if query_log is not None else 0
            udp_batch.serve_udp_batched(udp_sock, fast_book, view, udp_responder, counters, packet_counters,
                                        control_flags, demand_counts, safe_respond, query_stats, sample_every,
                                        limiter, cookie_state)  # fmt: skip
        else:
            serve_udp(udp_sock, udp_responder, counters, retire)
        if retire.is_set():
            control.send(("retired",))  # no more UDP from this worker: the reload may report done
            tcp_thread.join(timeout=RETIRE_GRACE_S + 1)  # its open connections finish first
    except WorkerStop:
        pass  # the signal arrived outside recvfrom
    stop.set()
    signal.signal(
        signal.SIGTERM, signal.SIG_IGN
    )  # already stopping: a second signal must not interrupt the join
    tcp_thread.join(timeout=2)
