"""The UDP loop in compiled code: recvmmsg, answer_query per packet, sendmmsg.

Python's per-packet socket calls cost more than answering does, so the worker hands the
socket to ``_serve_batches`` (numba, GIL released), which receives up to ``BATCH`` queries
per system call, answers them from the fast book, and sends all replies with one call.
It returns to Python only when it must:

- a query the fast path does not answer (``PUNT``), or one the query log samples (every
  ``sample[0]``th query, router/dns/query_log.py): Python answers those with the general
  Responder, then re-enters;
- the worker published a new routing table (``control[CONTROL_SWAP]``): checked after each
  receive, before answering, so no query received after the swap is answered from the old
  table; the batch already read is answered on re-entry;
- after ``MAX_BATCHES_PER_CALL`` batches or a receive error or timeout (EINTR from the stop
  signal, EAGAIN from SO_RCVTIMEO), so Python's signal handlers run;
- the worker is retiring (``control[CONTROL_RETIRE]``, a reload put a new worker on the
  same socket): checked before each receive, so every query it took is answered first.

The mmsghdr/iovec arrays are filled once here; the kernel writes the sources and lengths. On a
wildcard bind the socket has pktinfo on (router/dns/pktinfo.py): each slot also receives its
destination address as a control message, and each reply is sent from that address.
Layout (Linux, 64-bit): struct msghdr is 56 octets, struct mmsghdr 64, struct iovec 16.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import socket
import struct
import sys

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

from router._jit import HOT_PATH_OPTIONS
from router.dns import cookies, pktinfo, rrl
from router.dns.engine import TableView
from router.dns.fast_answer import (
    BODY_SCRATCH,
    MAX_QUESTION_LABELS,
    NO_STATS,
    PUNT,
    Q_COOKIE_VERDICT,
    QUERY_FIELDS,
    FastBook,
    answer_query,
    table_arrays,
)
from router.dns.pktinfo import CONTROL_SIZE, reply_control
from router.dns.query_stats import QueryStats
from router.dns.rrl import RrlSettings, RrlState

log = logging.getLogger("router.dns")

BATCH = 64
RECV_SIZE = 65535  # the largest UDP payload: nothing is ever cut short
SEND_SIZE = 2048  # UDP replies are at most 1232 octets (engine.MAX_UDP_PAYLOAD)
ADDR_SIZE = 128  # sizeof(struct sockaddr_storage)
MAX_BATCHES_PER_CALL = 1024
RECV_TIMEOUT_S = 0.5

_MMSGHDR = 64
_MSG_WAITFORONE = 0x10000
_AF_INET6 = socket.AF_INET6

# What _serve_batches returns: (status, count).
STATUS_YIELD = 0  # ran MAX_BATCHES_PER_CALL batches
STATUS_PUNTS = 1  # count queries (slots in punts) await the general path
STATUS_SWAP = 2  # a new table: re-enter with the count queries already received
STATUS_ERROR = 3  # the receive failed: count is errno
STATUS_RETIRED = 4  # asked to retire: every query received has been answered

# Counters (int64 array shared with the caller). C_PUNTED includes C_SAMPLED.
C_RECEIVED, C_ANSWERED, C_PUNTED, C_SEND_ERRORS, C_BATCHES, C_SAMPLED = range(6)
COUNTER_NAMES = ("received", "answered", "punted", "send_errors", "batches", "sampled")
COUNTERS = len(COUNTER_NAMES)

CONTROL_SWAP = 0
CONTROL_RETIRE = 1
CONTROLS = 2

supported = sys.platform.startswith("linux") and struct.calcsize("P") == 8


def _libc_call(name: str, restype, argtypes):  # noqa: ANN001, ANN202
    function = getattr(ctypes.CDLL(None, use_errno=True), name)
    function.restype = restype
    function.argtypes = argtypes
    return function


if supported:
    _recvmmsg = _libc_call("recvmmsg", ctypes.c_int,
                           [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p])  # fmt: skip
    _sendmmsg = _libc_call("sendmmsg", ctypes.c_int,
                           [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int])  # fmt: skip
    _errno_location = _libc_call("__errno_location", ctypes.POINTER(ctypes.c_int), [])
    _clock_gettime = _libc_call("clock_gettime", ctypes.c_int, [ctypes.c_int, ctypes.c_void_p])

_CLOCK_REALTIME_COARSE = 5  # Linux: vDSO reads that tick every few ms (enough for RRL and
_CLOCK_MONOTONIC_COARSE = 6  # cookie timestamps, which count seconds)


# The libc functions travel as arguments: a ctypes function used as a global would embed
# its address in the code, and numba could not cache the loop on disk.


@intrinsic
def _load_int(typingctx, pointer):  # noqa: ANN001, ANN202, ARG001
    # *pointer for an int*: the loop is compiled without reference counting, where numba's
    # carray (an array over the pointer) cannot be made.
    if not (isinstance(pointer, types.CPointer) and pointer.dtype == types.int32):
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202, ARG001
        return builder.load(args[0])

    return types.int32(pointer), codegen


@njit(**HOT_PATH_OPTIONS)
def _serve_batches(recvmmsg, sendmmsg, errno_location, clock_gettime, fd, pending, rx_hdr, rx_words, tx_hdr, tx_words,
                   bufs, addrs, outs, out_iov, tx_slot, rx_ctrl, tx_ctrl, tx_ctrl_slot, control_size, punts,
                   punt_sampled, book, view, demand, count_demand, stats, count_stats, sample, control, counters, q,
                   labels, body, rrl_table, rrl_params, rrl_allow_v4, rrl_allow_v6, rrl_counters,
                   clock, cookie_state):  # fmt: skip
    """Answer batches until there is something for Python (see the module docstring);
    returns (STATUS_*, count).

    ``pending`` > 0: that many queries of the last receive are still unanswered.
    ``sample``: [N, countdown]: with N > 0 every Nth query is punted marked in ``punt_sampled``.
    ``rx_words``/``tx_words`` are uint32 views of the mmsghdr arrays (msg_namelen at word 2,
    msg_len at word 14); ``tx_hdr`` is its uint64 view (msg_name at 0, iov at 2, msg_control
    at 4, msg_controllen at 5). ``control_size`` > 0: the socket has pktinfo on
    (router/dns/pktinfo.py): each slot receives its destination address in ``rx_ctrl`` and
    each reply is sent from it, with the control message built in ``tx_ctrl``. ``rrl_*``:
    response rate limiting (router/dns/rrl.py; off when its rate is 0), on the clock read
    into ``clock`` once per batch; replies to a valid server cookie are never limited.
    ``cookie_state``: DNS cookies (router/dns/cookies.py), its time set once per batch.
    """
    for _ in range(MAX_BATCHES_PER_CALL):
        received = pending
        pending = 0
        if received == 0:
            if control[CONTROL_RETIRE]:
                return STATUS_RETIRED, np.int64(0)
            for i in range(BATCH):
                rx_words[i, 2] = ADDR_SIZE
                rx_hdr[i, 5] = control_size  # the kernel writes back what it used
            received = recvmmsg(fd, rx_hdr.ctypes.data, BATCH, _MSG_WAITFORONE, 0)
            if received < 0:
                return STATUS_ERROR, np.int64(_load_int(errno_location()))
            if control[CONTROL_SWAP]:
                return STATUS_SWAP, np.int64(received)
        counters[C_RECEIVED] += received
        counters[C_BATCHES] += 1
        now_ms = np.int64(0)
        if rrl_params[rrl.P_RATE] > 0:
            clock_gettime(_CLOCK_MONOTONIC_COARSE, clock.ctypes.data)
            now_ms = clock[0] * 1000 + clock[1] // 1000000
        if cookie_state[cookies.S_ON]:
            clock_gettime(_CLOCK_REALTIME_COARSE, clock.ctypes.data)
            cookie_state[cookies.S_NOW] = np.uint64(clock[0])
        replies = 0
        punted = 0
        for i in range(received):
            n = np.int64(rx_words[i, 14])
            addr = addrs[i]
            family = np.int64(addr[0]) | (np.int64(addr[1]) << 8)
            src_v6 = family == _AF_INET6
            hi = np.uint64(0)
            lo = np.uint64(0)
            if src_v6:
                for j in range(8, 16):
                    hi = (hi << np.uint64(8)) | np.uint64(addr[j])
                for j in range(16, 24):
                    lo = (lo << np.uint64(8)) | np.uint64(addr[j])
            else:
                for j in range(4, 8):
                    lo = (lo << np.uint64(8)) | np.uint64(addr[j])
            if sample[0] > 0:
                sample[1] -= 1
                if sample[1] <= 0:
                    sample[1] = sample[0]
                    punts[punted] = i
                    punt_sampled[punted] = 1
                    punted += 1
                    counters[C_SAMPLED] += 1
                    continue
            out = outs[replies]
            length = answer_query(bufs[i], n, src_v6, hi, lo, True, book, view, demand, count_demand, stats,
                                  count_stats, q, labels, body, out, cookie_state)  # fmt: skip
            if length == PUNT:
                punts[punted] = i
                punt_sampled[punted] = 0
                punted += 1
            elif length > 0:
                if rrl_params[rrl.P_RATE] > 0 and q[Q_COOKIE_VERDICT] < cookies.VALID:
                    action = rrl.decide(out, length, src_v6, hi, lo, now_ms, rrl_table, rrl_params, rrl_allow_v4,
                                        rrl_allow_v6, rrl_counters)  # fmt: skip
                    if action == rrl.DROP:
                        continue
                    if action == rrl.SLIP:
                        length = rrl.truncate(out, length)
                tx_hdr[replies, 0] = rx_hdr[i, 0]  # msg_name: the source, as received
                tx_words[replies, 2] = rx_words[i, 2]
                tx_hdr[replies, 2] = tx_slot[replies]  # msg_iov
                tx_words[replies, 14] = 0
                if control_size > 0:
                    used = reply_control(rx_ctrl[i], np.int64(rx_hdr[i, 5]), tx_ctrl[replies])
                    tx_hdr[replies, 4] = tx_ctrl_slot[replies] if used > 0 else np.uint64(0)
                    tx_hdr[replies, 5] = used
                out_iov[replies, 1] = length
                replies += 1
        counters[C_ANSWERED] += replies
        sent = 0
        while sent < replies:
            done = sendmmsg(fd, tx_hdr[sent:].ctypes.data, replies - sent, 0)
            if done < 0:
                counters[C_SEND_ERRORS] += 1  # this reply is lost; try the rest
                sent += 1
            else:
                sent += done
        if punted:
            counters[C_PUNTED] += punted
            return STATUS_PUNTS, np.int64(punted)
    return STATUS_YIELD, np.int64(0)


class BatchSocket:
    """The arrays one worker's UDP socket is served with."""

    def __init__(self, sock: socket.socket, limiter: RrlState | None = None,
                 cookie_state: np.ndarray | None = None) -> None:  # fmt: skip
        self.sock = sock
        self.fd = sock.fileno()
        self.rrl = limiter if limiter is not None else _NO_RRL
        self.cookie_state = cookie_state if cookie_state is not None else cookies.state_array(())
        self.clock = np.zeros(2, dtype=np.int64)  # struct timespec
        self.pktinfo = pktinfo.is_enabled(sock)
        self.control_size = CONTROL_SIZE if self.pktinfo else 0
        self.rx_ctrl = np.zeros((BATCH, CONTROL_SIZE), dtype=np.uint8)
        self.tx_ctrl = np.zeros((BATCH, CONTROL_SIZE), dtype=np.uint8)
        self.tx_ctrl_slot = np.zeros(BATCH, dtype=np.uint64)
        self.bufs = np.zeros((BATCH, RECV_SIZE), dtype=np.uint8)
        self.addrs = np.zeros((BATCH, ADDR_SIZE), dtype=np.uint8)
        self.outs = np.zeros((BATCH, SEND_SIZE), dtype=np.uint8)
        self.rx_iov = np.zeros((BATCH, 2), dtype=np.uint64)  # iov_base, iov_len
        self.out_iov = np.zeros((BATCH, 2), dtype=np.uint64)
        self.rx_hdr = np.zeros((BATCH, _MMSGHDR // 8), dtype=np.uint64)
        self.tx_hdr = np.zeros((BATCH, _MMSGHDR // 8), dtype=np.uint64)
        self.tx_slot = np.zeros(BATCH, dtype=np.uint64)
        for i in range(BATCH):
            self.rx_iov[i] = (self.bufs[i].ctypes.data, RECV_SIZE)
            self.out_iov[i] = (self.outs[i].ctypes.data, 0)
            self.rx_hdr[i, 0] = self.addrs[i].ctypes.data  # msg_name
            self.rx_hdr[i, 2] = self.rx_iov[i].ctypes.data  # msg_iov
            self.rx_hdr[i, 3] = 1  # msg_iovlen
            self.tx_hdr[i, 3] = 1
            self.tx_slot[i] = self.out_iov[i].ctypes.data
            self.tx_ctrl_slot[i] = self.tx_ctrl[i].ctypes.data
            if self.pktinfo:
                self.rx_hdr[i, 4] = self.rx_ctrl[i].ctypes.data  # msg_control
        self.rx_words = self.rx_hdr.view(np.uint32)
        self.tx_words = self.tx_hdr.view(np.uint32)
        self.punts = np.zeros(BATCH, dtype=np.int64)
        self.punt_sampled = np.zeros(BATCH, dtype=np.uint8)
        self.sample = np.zeros(2, dtype=np.int64)
        self.q = np.zeros(QUERY_FIELDS, dtype=np.int64)
        self.labels = np.zeros(MAX_QUESTION_LABELS, dtype=np.int64)
        self.body = np.zeros(BODY_SCRATCH, dtype=np.uint8)

    def source(self, i: int) -> tuple[str, tuple]:
        """The source of received slot ``i`` (a sockaddr_in or sockaddr_in6 as the kernel
        wrote it) as (address text, sendto address)."""
        raw = self.addrs[i].tobytes()
        port = int.from_bytes(raw[2:4], "big")
        if int.from_bytes(raw[0:2], "little") == socket.AF_INET6:
            host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
            flowinfo = int.from_bytes(raw[4:8], "big")
            scope_id = int.from_bytes(raw[24:28], "little")
            return host, (host, port, flowinfo, scope_id)
        host = socket.inet_ntop(socket.AF_INET, raw[4:8])
        return host, (host, port)

    def send(self, i: int, reply: bytes, address: tuple) -> None:
        """Send ``reply`` to the source of received slot ``i``, from the address it was sent
        to (pktinfo on)."""
        if not self.pktinfo:
            self.sock.sendto(reply, address)
            return
        used = int(self.rx_hdr[i, 5])
        ancdata = pktinfo.parse_control(self.rx_ctrl[i, :used].tobytes())
        self.sock.sendmsg([reply], pktinfo.reply_ancillary(ancdata), 0, address)


def _run(
    io: BatchSocket,
    pending: int,
    fast: FastBook,
    current,
    demand: np.ndarray | None,  # noqa: ANN001
    stats: QueryStats | None,
    control: np.ndarray,
    counters: np.ndarray,
) -> tuple[int, int]:
    count_demand = demand is not None
    demand_array = demand if demand is not None else _NO_DEMAND
    stats_arrays = stats.arrays if stats is not None else NO_STATS
    limiter = io.rrl
    return _serve_batches(_recvmmsg, _sendmmsg, _errno_location, _clock_gettime, io.fd, pending, io.rx_hdr, io.rx_words,
                          io.tx_hdr, io.tx_words, io.bufs, io.addrs, io.outs, io.out_iov, io.tx_slot, io.rx_ctrl,
                          io.tx_ctrl, io.tx_ctrl_slot, io.control_size, io.punts, io.punt_sampled, fast.arrays,
                          table_arrays(current), demand_array, count_demand, stats_arrays, stats is not None, io.sample,
                          control, counters, io.q, io.labels, io.body, limiter.table, limiter.params,
                          limiter.allow_v4, limiter.allow_v6, limiter.counters, io.clock, io.cookie_state)  # fmt: skip


_NO_DEMAND = np.zeros((1, 1), dtype=np.int64)
_NO_RRL = RrlState(RrlSettings(rate=0))


def warm_up(fast: FastBook, view: TableView) -> None:
    """Compile the loop (and the responder) before workers fork, so none compiles its own.

    One query to itself on a loopback socket runs the whole path once.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 1000))
        query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x00\x00\x01\x00\x01"
        sock.sendto(query, sock.getsockname())
        io = BatchSocket(sock)
        counters = np.zeros(COUNTERS, dtype=np.int64)
        for demand in (None, np.zeros((1, 1), dtype=np.int64)):
            _run(io, 0, fast, view, demand, None, np.zeros(CONTROLS, dtype=np.int64), counters)


def serve_udp_batched(sock: socket.socket, fast: FastBook, view, responder, counters, batch_counters: np.ndarray,
                      control: np.ndarray, demand: np.ndarray | None, safe_respond,
                      stats: QueryStats | None = None, sample_every: int = 0,
                      limiter: RrlState | None = None,
                      cookie_state: np.ndarray | None = None) -> None:  # noqa: ANN001  # fmt: skip
    """Answer on ``sock`` until WorkerStop (raised by the signal handler between calls), or
    until ``control[CONTROL_RETIRE]`` is set: then return once every query taken is answered.

    ``view()`` returns the current TableView; ``responder``/``safe_respond`` answer punted
    queries exactly as the per-packet loop does (router/dns/transport.py). ``stats`` counts
    every reply; with ``sample_every`` N > 0, every Nth query goes to ``responder`` marked
    sampled (for the query log). ``limiter``: response rate limiting of the replies built
    here; the responder limits those it builds itself, on the same table. ``cookie_state``:
    DNS cookies (router/dns/cookies.py), shared with the responder.
    """
    sock.setblocking(True)
    timeout = struct.pack("ll", int(RECV_TIMEOUT_S), int(RECV_TIMEOUT_S % 1 * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeout)
    io = BatchSocket(sock, limiter, cookie_state)
    io.sample[:] = (sample_every, sample_every)
    pending = 0
    while True:
        kind, count = _run(io, pending, fast, view(), demand, stats, control, batch_counters)
        pending = 0
        if kind == STATUS_RETIRED:
            return
        if kind == STATUS_ERROR:
            if count not in (errno.EINTR, errno.EAGAIN, errno.EWOULDBLOCK):
                log.warning("UDP receive failed: %s", errno.errorcode.get(count, count))
            continue  # a pending signal handler runs here (WorkerStop)
        if kind == STATUS_SWAP:
            control[CONTROL_SWAP] = 0
            pending = count  # answered from the new table on re-entry
        elif kind == STATUS_PUNTS:
            for k in range(count):
                slot = int(io.punts[k])
                length = int(io.rx_words[slot, 14])
                packet = io.bufs[slot, :length].tobytes()
                host, address = io.source(slot)
                counters.udp_queries += 1
                if io.punt_sampled[k]:
                    reply = safe_respond(responder, packet, host, True, counters, sampled=True)
                else:
                    reply = safe_respond(responder, packet, host, True, counters)
                if reply is not None:
                    try:
                        io.send(slot, reply, address)
                    except OSError as exc:
                        log.debug("UDP send to %s failed: %s", host, exc)
