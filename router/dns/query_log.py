"""The query log: one JSON object per line for a sample of the queries (``router serve
--query-log PATH --query-log-sample N``), saying who asked, what they were told and why.

Sampling is 1 in N queries per worker and transport: the compiled UDP path hands every
Nth query to the general responder marked as sampled (router/dns/udp_batch.py); the
general path (TCP, punted queries, the per-packet UDP loop) counts its own. A sampled query
is answered exactly as any other; only the log line is extra.

Every worker thread appends to the same file through its own descriptor: each line is one
``write`` on a file opened with O_APPEND, so lines from several processes never mix, and a
file moved away or removed (logrotate) is reopened within a second. (``logging``'s
WatchedFileHandler does the same but costs a ``stat`` and a log record per line, which
was most of the cost of a logged query.)

The file is created mode 0640 whatever the umask (resolvers' and clients' addresses are in
it); an existing file of ours that others may read loses those bits. With ``max_bytes``
(``--query-log-max-bytes``) the writers rotate it themselves: the first to see it at that
size renames it to ``PATH.1`` (``PATH.1`` to ``PATH.2``, ..., keeping ``keep``) under an
exclusive ``flock`` on the file, so several writers rotate it once; the others find the path
renewed and reopen it. The size is looked at every REOPEN_CHECK_S and after every
``max_bytes // 16`` bytes a writer appended, so a file may pass ``max_bytes`` by that much.

Fields (null where they do not apply): ``time`` (UTC), ``worker``, ``transport``,
``resolver`` (the address the query came from), ``client_subnet`` (its ECS option),
``qname``, ``qtype``, ``rcode``, ``answers`` (answer records), ``truncated``, ``scope`` (the
ECS scope in the reply); for steered names ``policy``, ``group`` (id, asn, country, name),
``located_by``, ``nodes`` (the node ids answered, in order), and for a policy of pools the
``rule`` that matched and the ``pool`` that answered; and ``reason``, in words.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import re
import socket
import stat
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import dns.name
import dns.rdatatype
import numpy as np

from router.dns import query_stats, wire
from router.health.state import NodeState

if TYPE_CHECKING:
    from router.dns.engine import Decision, Responder
    from router.dns.wire import Query

log = logging.getLogger("router.query_log")

REOPEN_CHECK_S = 1.0  # how often the path is looked at for a rotated file
FILE_MODE = 0o640  # owner writes, its group (log readers) reads, others nothing
DEFAULT_KEEP = 5  # rotated files kept with --query-log-max-bytes
OPEN_ATTEMPTS = 8  # opens raced by other writers' rotations before giving up
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_PLAIN_LABELS = re.compile(rb"[A-Za-z0-9_*-]+")
# By query_stats.LOCATED_*.
_LOCATED_REASONS = (
    "client located by its ECS subnet",
    "client located by the resolver's address (no ECS)",
    "client located by the resolver's address (the ECS address is private or reserved)",
    "client located by the resolver's address (ECS source prefix 0)",
)


@dataclass(frozen=True)
class QueryLogSettings:
    path: Path
    every: int  # log 1 in every ``every`` queries
    max_bytes: int = 0  # rotate at this size (0: never; logrotate may move it instead)
    keep: int = DEFAULT_KEEP  # rotated files kept: PATH.1 .. PATH.keep

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"the query log sample must be 1 in N with N >= 1, got {self.every}")
        if self.max_bytes < 0:
            raise ValueError(
                f"the query log size limit must be >= 0 (0: never rotate), got {self.max_bytes}"
            )
        if not 1 <= self.keep <= 1000:
            raise ValueError(f"the query log must keep 1 to 1000 rotated files, got {self.keep}")


def parse_size(text: str) -> int:
    """``1048576``, ``64K``, ``100M``, ``2G`` (binary units) -> bytes."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in _SIZE_UNITS else ""
    number = value[: len(value) - len(unit)]
    if not number.isdigit():
        raise ValueError(f"a size is bytes, or a number with K, M or G, got {text!r}")
    return int(number) * _SIZE_UNITS[unit]


def open_log(path: Path) -> int:
    """A descriptor appending to ``path``: created mode 0640 whatever the umask; an existing
    file of ours that others may read loses those bits."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
    for attempt in range(OPEN_ATTEMPTS):
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE)
            break
        except FileExistsError:
            pass
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            # Another writer rotated it away between the two opens: create it again.
            if attempt == OPEN_ATTEMPTS - 1:
                raise
            continue
        try:
            st = os.fstat(fd)
            if st.st_mode & 0o007 and st.st_uid == os.geteuid() and stat.S_ISREG(st.st_mode):
                mode = stat.S_IMODE(st.st_mode) & ~0o007
                os.fchmod(fd, mode)
                log.warning("query log %s was readable by others: now mode %04o", path, mode)
        except OSError:
            os.close(fd)
            raise
        return fd
    try:
        os.fchmod(fd, FILE_MODE)  # the umask may have taken the group's read away
    except OSError:
        os.close(fd)
        raise
    return fd


def rotate_files(path: Path, keep: int) -> None:
    """``path`` to ``path.1``, ``path.1`` to ``path.2``, ...; ``path.keep`` is dropped."""
    for i in range(keep - 1, 0, -1):
        older = Path(f"{path}.{i}")
        if older.exists():
            os.replace(older, f"{path}.{i + 1}")
    os.replace(path, f"{path}.1")


def open_check(path: Path, settings: QueryLogSettings | None = None) -> None:
    """Fail now, with the reason, if ``path`` cannot be appended to (before any worker
    starts), or, when it is to be rotated, its directory cannot take the rotated files."""
    try:
        os.close(open_log(path))
    except OSError as exc:
        raise OSError(f"cannot write the query log {path}: {exc.strerror}") from exc
    if settings is not None and settings.max_bytes:
        directory = path.resolve().parent
        if not os.access(directory, os.W_OK | os.X_OK):
            raise OSError(f"cannot rotate the query log {path}: {directory} is not writable")


class AppendFile:
    """Whole lines appended with one ``write`` each (O_APPEND); the path is reopened when the
    file there is no longer the one open (moved or removed), looked at every REOPEN_CHECK_S,
    and rotated at ``max_bytes`` (0: never)."""

    def __init__(self, path: Path, max_bytes: int = 0, keep: int = DEFAULT_KEEP) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.errors = 0
        self.rotations = 0  # rotations this writer made
        self._fd = -1
        self._identity = (0, 0)
        # Appended since the path was last looked at; past this, look now.
        self._check_bytes = max(4096, max_bytes // 16) if max_bytes else 0
        self._appended = 0
        self._open()
        self._checked = time.monotonic()

    def _open(self) -> None:
        self._fd = open_log(self.path)
        st = os.fstat(self._fd)
        self._identity = (st.st_dev, st.st_ino)

    def _reopen(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._open()

    def _look(self) -> None:
        """Reopen a file moved away or removed; rotate one past ``max_bytes``."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._reopen()
            return
        if (st.st_dev, st.st_ino) != self._identity:
            self._reopen()
        elif self.max_bytes and st.st_size >= self.max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        # Under an exclusive lock on the file being rotated (closing it releases the lock): a
        # writer that waited for the lock finds the path renewed and only reopens, so the file
        # is rotated once however many writers saw it full.
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if (
            st is not None
            and (st.st_dev, st.st_ino) == self._identity
            and st.st_size >= self.max_bytes
        ):
            try:
                rotate_files(self.path, self.keep)
                self.rotations += 1
            except OSError as exc:
                log.warning("cannot rotate the query log %s: %s", self.path, exc.strerror)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                return
        self._reopen()  # the new file, created before the lock is released

    def write_line(self, line: bytes) -> None:
        now = time.monotonic()
        try:
            if now - self._checked >= REOPEN_CHECK_S or (
                self._check_bytes and self._appended >= self._check_bytes
            ):
                self._checked = now
                self._appended = 0
                self._look()
            os.write(self._fd, line)
            self._appended += len(line)
        except OSError as exc:  # a full disk costs log lines, never answers
            self.errors += 1
            if self.errors <= 3 or self.errors % 10_000 == 0:
                log.warning(
                    "cannot write the query log %s: %s (%d lines lost so far)",
                    self.path,
                    exc.strerror,
                    self.errors,
                )
            if self._fd < 0:  # lost between a close and an open: try again now
                try:
                    self._open()
                except OSError:
                    pass

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@dataclass(frozen=True)
class QueryLogOptions:
    """What a worker needs to write the query log: the settings and the config's names."""

    settings: QueryLogSettings
    node_ids: tuple[str, ...]
    policy_keys: tuple[str, ...]  # zone/name
    # Per policy: None, or for a policy of pools (its PoolRouting, its group -> class array).
    pools: tuple


class QueryLog:
    """One worker thread's writer."""

    def __init__(self, options: QueryLogOptions, worker: int) -> None:
        self.every = options.settings.every
        self.worker = worker
        self.node_ids = options.node_ids
        self.policy_keys = options.policy_keys
        self.pools = options.pools
        self._countdown = options.settings.every
        settings = options.settings
        self._file = AppendFile(settings.path, settings.max_bytes, settings.keep)
        self._chains: dict[tuple[int, int, int], tuple[list[int], np.ndarray]] = {}
        self.written = 0

    def _chain(self, policy: int, routing, k: int, resolved: int) -> tuple[list[int], np.ndarray]:  # noqa: ANN001
        """Class ``k``'s fallback chain and the answering pool's nodes inside its fence; both
        depend on the config only, so they are worked out once per class and pool."""
        key = (policy, k, resolved)
        cached = self._chains.get(key)
        if cached is None:
            inside = (
                np.flatnonzero(routing.pool_nodes[resolved] & routing.class_fence[k])
                if resolved >= 0
                else np.zeros(0, dtype=np.int64)
            )
            cached = (routing.chain(k), inside)
            self._chains[key] = cached
        return cached

    def due(self) -> bool:
        """True once in every ``every`` calls."""
        self._countdown -= 1
        if self._countdown > 0:
            return False
        self._countdown = self.every
        return True

    def close(self) -> None:
        self._file.close()

    def write(self, responder: Responder, q: Query | None, decision: Decision | None, source: str, udp: bool,
              reply: bytes, rcode: int, limited: str | None = None) -> None:  # fmt: skip
        """``rcode``: the reply's full rcode (``engine.reply_rcode``); ``limited``: what rate
        limiting did with it ("dropped", "slipped": sent truncated), None when nothing."""
        record = self.record(responder, q, decision, source, udp, reply, rcode)
        record["rate_limited"] = limited
        self._file.write_line(json.dumps(record, separators=(",", ":")).encode() + b"\n")
        self.written += 1

    def record(self, responder: Responder, q: Query | None, decision: Decision | None, source: str, udp: bool,
               reply: bytes, rcode: int) -> dict:  # fmt: skip
        flags = int.from_bytes(reply[2:4], "big")
        record: dict = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "worker": self.worker,
            "transport": "udp" if udp else "tcp",
            "resolver": source,
            "client_subnet": _client_subnet(q),
            "qname": None if q is None or not q.question else _name_text(q.qname),
            "qtype": None if q is None or not q.question else _type_text(q.qtype),
            "rcode": query_stats.RCODE_LABELS[query_stats.rcode_bucket(rcode)],
            "answers": int.from_bytes(reply[6:8], "big"),
            "truncated": bool(flags & wire.TC),
            "scope": _reply_scope(reply, q),
            "policy": None,
            "group": None,
            "located_by": None,
            "nodes": None,
            "rule": None,
            "pool": None,
        }
        if decision is None:
            record["reason"] = _static_reason(
                q, rcode, flags, record["answers"], reply, responder.cookie_state is not None
            )
            return record
        groups = responder.client_map.groups
        g = decision.group
        lat, lon = float(groups.lat[g]), float(groups.lon[g])
        view = responder.view()
        nodes = [int(n) for n in view.set_nodes[decision.answer_set] if n >= 0]
        located_code = query_stats.LOCATED_BY[decision.source]
        located = query_stats.LOCATED_LABELS[located_code]
        record.update(
            policy=self.policy_keys[decision.policy],
            group={
                "id": g,
                "asn": int(groups.asn[g]) or None,
                "country": groups.country[g] or None,
                "location": None
                if math.isnan(lat) or math.isnan(lon)
                else [round(lat, 4), round(lon, 4)],
                "name": groups.describe(g),
            },
            located_by=located,
            nodes=[self.node_ids[n] for n in nodes],
        )
        reasons = [_LOCATED_REASONS[located_code]]
        pools = self.pools[decision.policy]
        if pools is not None:
            routing, group_class = pools
            rule = int(routing.group_rule[g])
            record["rule"] = f"{rule + 1}: {routing.rule_labels[rule]}"
            k = int(group_class[g])
            resolved = int(view.policy_pool[decision.policy, k])
            chain, inside = self._chain(decision.policy, routing, k, resolved)
            reasons.append(_pool_reason(routing, chain, inside, resolved, view.node_state, record))
        reasons.append(_plan_reason(decision, view, nodes, self.node_ids))
        record["reason"] = "; ".join(r for r in reasons if r)
        return record


def _name_text(wire_name: bytes) -> str:
    """Presentation form of a question name (wire, uncompressed); dnspython escapes the rare
    names with other octets than letters, digits, ``-``, ``_`` and ``*``."""
    labels = []
    pos = 0
    while wire_name[pos]:
        end = pos + 1 + wire_name[pos]
        labels.append(wire_name[pos + 1 : end])
        pos = end
    if not all(_PLAIN_LABELS.fullmatch(label) for label in labels):
        return dns.name.from_wire(wire_name, 0)[0].to_text()
    return b".".join(labels).decode("ascii") + "."


def _type_text(qtype: int) -> str:
    text = query_stats.NAMED_TYPES.get(qtype)
    return text if text is not None else dns.rdatatype.to_text(qtype)


def _client_subnet(q: Query | None) -> str | None:
    if q is None or q.ecs is None:
        return None
    family, bits, octets = q.ecs
    if family == 1:
        address = socket.inet_ntop(socket.AF_INET, bytes(octets).ljust(4, b"\0"))
    else:
        address = socket.inet_ntop(socket.AF_INET6, bytes(octets).ljust(16, b"\0"))
    return f"{address}/{bits}"


def _reply_scope(reply: bytes, q: Query | None) -> int | None:
    """The ECS scope the reply carries, None when it carries no ECS option."""
    if q is None or q.ecs is None or not q.edns:
        return None
    # The reply ends with OPT, whose only option would be ECS: RDLENGTH(2), then
    # code(2) length(2) family(2) source(1) scope(1) address.
    option_len = 8 + len(q.ecs[2])
    option = len(reply) - option_len
    if option < 14 or int.from_bytes(reply[option - 2 : option], "big") != option_len:
        return None
    if int.from_bytes(reply[option : option + 2], "big") != wire.ECS_OPTION:
        return None
    return reply[-len(q.ecs[2]) - 1]


def _static_reason(q: Query | None, rcode: int, flags: int, answers: int, reply: bytes,
                   cookies_on: bool) -> str:  # fmt: skip
    if q is None:
        return "malformed query: no question could be read"
    if rcode == wire.BADVERS:
        return f"EDNS version {q.version} is not supported (RFC 6891)"
    if not q.question and rcode == wire.NOERROR:
        return "no question: a query for a server cookie alone (RFC 7873 5.4)"
    if rcode == wire.NOTIMP:
        return f"opcode {q.opcode} or type {q.qtype} is not implemented"
    if rcode == wire.FORMERR:
        if q.cookie_error and cookies_on:  # judged first (engine.Responder._respond)
            return "malformed COOKIE option (RFC 7873)"
        return (
            "malformed ECS option (RFC 7871)"
            if q.ecs_error
            else "not a question type (OPT or TSIG)"
        )
    if rcode == wire.REFUSED:
        if q.qclass != wire.CLASS_IN or q.qtype in (249, 251, 252):
            return "refused: only class IN, and no zone transfers or key exchange"
        return "refused: not authoritative for this name"
    if rcode == wire.NXDOMAIN:
        return "no such name in the zone (NXDOMAIN)"
    if rcode == wire.SERVFAIL:
        return "internal error answering this query"
    if answers:
        return "static records from the zone file"
    authority = int.from_bytes(reply[8:10], "big")
    if not flags & wire.AA and authority:
        return "referral to a delegated zone"
    return "the name exists but has no records of this type (NODATA)"


def _pool_reason(routing, chain: list[int], inside, resolved: int, node_state, record: dict) -> str:  # noqa: ANN001
    """Which rule matched and which pool of its fallback chain answered, and why.
    ``inside``: the answering pool's nodes inside the class's fence (geofence, on-net limits)."""
    rule_text = f"rule {record['rule']}"
    if resolved < 0 or not chain:
        return f"{rule_text}: no pool of its chain has a node inside the geofence and on-net limits"
    record["pool"] = routing.pool_names[resolved]
    if resolved != chain[0]:
        skipped = ", ".join(routing.pool_names[q] for q in chain[: chain.index(resolved)])
        return f"{rule_text} -> pool {record['pool']} (fallback: {skipped} had no node up)"
    if len(inside) and (node_state[inside] == NodeState.DOWN).all():
        return f"{rule_text} -> pool {record['pool']} (every pool of the chain is down: failing open in the first)"
    return f"{rule_text} -> pool {record['pool']}"


def _plan_reason(decision: Decision, view, nodes: list[int], node_ids: list[str]) -> str:  # noqa: ANN001
    parts = []
    if decision.split_row < 0:
        parts.append("the plan gives the whole group this answer")
    else:
        lo, hi = (
            int(view.split_start[decision.split_row]),
            int(view.split_start[decision.split_row + 1]),
        )
        scale = int(view.split_cum[hi - 1])  # a row's last cumulative weight is the whole
        previous = 0
        for i in range(lo, hi):
            cum = int(view.split_cum[i])
            if int(view.split_set[i]) == decision.answer_set:
                share = (cum - previous) / scale
                parts.append(
                    f"the capacity plan splits the group {hi - lo} ways by client subnet; "
                    f"this subnet is in the {share:.0%} that gets this answer"
                )
                break
            previous = cum
    states = [int(view.node_state[n]) for n in nodes]
    if nodes and all(state != NodeState.UP for state in states):
        parts.append("no answered node is up: failing open")
    elif nodes and states[0] != NodeState.UP:
        parts.append(f"first node {node_ids[nodes[0]]} is {NodeState(states[0]).label}")
    return "; ".join(parts)
