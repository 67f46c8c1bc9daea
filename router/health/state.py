"""Node state as the steering core sees it: one flat int8 array indexed by node.

States: up (0), draining (1, only used when nothing up is left), down (2). The operator's
admin override (``down`` or ``drain``) wins over everything else; ``up`` clears it. Below
the override, the automatic monitor (heartbeats, ``router.health.monitor``) decides when
it runs; without it a node is up, and its reason says so.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from router.health.monitor import NodeMonitor
    from router.health.telemetry import Heartbeat


class NodeState(IntEnum):
    UP = 0
    DRAINING = 1
    DOWN = 2

    @property
    def label(self) -> str:
        return {0: "up", 1: "draining", 2: "down"}[int(self)]


ADMIN_STATES = {"up": None, "down": NodeState.DOWN, "drain": NodeState.DRAINING}
_LABELS = {"up": NodeState.UP, "draining": NodeState.DRAINING, "down": NodeState.DOWN}
ADMIN_REASON_PREFIX = "admin:"  # the reason of every override starts so
ADMIN_FILE_SUFFIX = "in the admin_state file"  # the reason of an override the file set ends so


def held_by_admin(reason: str) -> bool:
    """The reason is an admin override's, not the node's own health."""
    return reason.startswith(ADMIN_REASON_PREFIX)


@dataclass(frozen=True)
class NodeStatus:
    node_id: str
    state: NodeState
    reason: str
    admin_state: str | None  # the override in force: "down", "drain" or None
    since: float  # unix time of the last change of the effective state


@dataclass(frozen=True)
class StateChange:
    time: float  # unix time
    node_id: str
    before: NodeState
    after: NodeState
    reason: str


CHANGES_KEPT = 200


def with_admin_file(
    overrides: dict[str, tuple[str, str]], entries: dict[str, str]
) -> dict[str, tuple[str, str]]:
    """``overrides`` (node id -> (admin state, "file" or "api")) once an admin_state file with
    ``entries`` is applied: what the file set before goes, each entry sets its node (``up``
    lifts any override, as an operator's would), the API's other overrides stay."""
    out = {node_id: entry for node_id, entry in overrides.items() if entry[1] != "file"}
    for node_id, admin in entries.items():
        if ADMIN_STATES[admin] is None:
            out.pop(node_id, None)
        else:
            out[node_id] = (admin, "file")
    return out


JSON_PIECE_ITEMS = 500  # entries of a large mapping the C encoder writes at a time


def json_pieces(data: dict[str, object]) -> Iterator[str]:
    """``json.dumps(data, sort_keys=True)`` in pieces: the C encoder holds the GIL for a whole
    call, and over 20,000 nodes one call kept the heartbeat intake (a failure's report with
    it) waiting 35 ms; between pieces the other threads run. A top-level value that is a
    mapping of more than ``JSON_PIECE_ITEMS`` entries is written that many at a time."""
    yield "{"
    for i, key in enumerate(sorted(data)):
        yield (", " if i else "") + json.dumps(key) + ": "
        value = data[key]
        if not (isinstance(value, dict) and len(value) > JSON_PIECE_ITEMS):
            yield json.dumps(value, sort_keys=True)
            continue
        keys = sorted(value)
        yield "{"
        for start in range(0, len(keys), JSON_PIECE_ITEMS):
            part = {k: value[k] for k in keys[start : start + JSON_PIECE_ITEMS]}
            yield (", " if start else "") + json.dumps(part, sort_keys=True)[1:-1]
        yield "}"
    yield "}"


class NodeHealth:
    """The effective state of every node, changed only through methods that say why."""

    def __init__(self, node_ids: tuple[str, ...], monitor: NodeMonitor | None = None) -> None:
        self.node_ids = node_ids
        self.monitor = monitor
        self._index = {node_id: i for i, node_id in enumerate(node_ids)}
        self._admin: dict[str, tuple[str, str]] = {}  # node -> (admin state, reason)
        now = time.time()
        self._since = [now] * len(node_ids)
        self._lock = threading.Lock()
        self._effective = self._compute()
        self._states = self._state_array()  # _effective's states, read by every table's planning
        # The latest changes of effective state, newest last, for the status page.
        self._changes: collections.deque[StateChange] = collections.deque(maxlen=CHANGES_KEPT)

    def __contains__(self, node_id: str) -> bool:
        return node_id in self._index

    # -- inputs ------------------------------------------------------------------------

    def set_admin_state(self, node_id: str, admin: str, via: str = "") -> bool:
        """Apply an operator override; True when the effective state changed. ``via``: the
        router it was set through, when several share the overrides."""
        if admin not in ADMIN_STATES:
            raise ValueError(f'admin state must be one of {", ".join(ADMIN_STATES)}, got "{admin}"')
        self._index[node_id]  # KeyError for unknown nodes
        with self._lock:
            if ADMIN_STATES[admin] is None:
                self._admin.pop(node_id, None)
            else:
                through = f" via router {via}" if via else ""
                self._admin[node_id] = (
                    admin, f"{ADMIN_REASON_PREFIX} set {admin} by operator{through}"
                )  # fmt: skip
            return self._refresh_node(self._index[node_id])

    def apply_admin_file(self, entries: dict[str, str]) -> bool:
        """The deployment's ``admin_state`` file (gdnsd style), at start and on every reload:
        each node it names gets that override (``up`` clears one, as an operator's would);
        an override the file set before and no longer names is lifted. Overrides set
        through the API for nodes the file does not name stay. True when a state changed."""
        with self._lock:
            merged = with_admin_file(
                self._overrides(), {n: a for n, a in entries.items() if n in self._index}
            )
            self._admin = {
                node_id: self._admin[node_id]
                if source == "api"
                else (admin, f"{ADMIN_REASON_PREFIX} set {admin} {ADMIN_FILE_SUFFIX}")
                for node_id, (admin, source) in merged.items()
            }
            return self._refresh()

    def overrides(self) -> dict[str, tuple[str, str]]:
        """The admin overrides in force: node id -> (admin state, ``"file"`` or ``"api"``)."""
        with self._lock:
            return self._overrides()

    def _overrides(self) -> dict[str, tuple[str, str]]:
        return {
            n: (admin, "file" if why.endswith(ADMIN_FILE_SUFFIX) else "api")
            for n, (admin, why) in self._admin.items()
        }

    def health_states(self) -> list[NodeState]:
        """Each node's state without the admin overrides: the monitor's verdict, else up."""
        with self._lock:
            return [self._health_entry(i)[0] for i in range(len(self.node_ids))]

    def heartbeat(self, heartbeat: Heartbeat, now: float, heard_by: str = "") -> bool:
        """An accepted heartbeat; True when its node's effective state changed."""
        return self.heartbeats([(heartbeat, heard_by)], now)

    def heartbeats(self, heartbeats: list[tuple[Heartbeat, str]], now: float) -> bool:
        """Accepted heartbeats, each with the router it reached ("": this one); True when
        any node's effective state changed."""
        monitor = self.monitor
        assert monitor is not None
        changed = False
        with self._lock:
            for heartbeat, heard_by in heartbeats:
                if monitor.report(heartbeat, now, heard_by):
                    changed = self._refresh_node(self._index[heartbeat.node]) or changed
        return changed

    def probe(self, node_id: str, ok: bool, detail: str, now: float) -> bool:
        """An active probe result; True when the node's effective state changed."""
        assert self.monitor is not None
        with self._lock:
            if not self.monitor.probe(node_id, ok, detail, now):
                return False
            return self._refresh_node(self._index[node_id])

    def probe_verdict(self, node_id: str, failing: bool, detail: str, now: float) -> bool:
        """A quorum of routers' probes fails the node (or no longer does)."""
        assert self.monitor is not None
        with self._lock:
            if not self.monitor.probe_verdict(node_id, failing, detail, now):
                return False
            return self._refresh_node(self._index[node_id])

    def tick(self, now: float) -> bool:
        """Withdraw silent nodes; True when any effective state changed."""
        if self.monitor is None:
            return False
        with self._lock:
            changed = [self._refresh_node(i) for i in self.monitor.tick(now)]
            return any(changed)

    # -- outputs -----------------------------------------------------------------------

    def states(self) -> np.ndarray:
        # A copy of the array kept beside _effective: building it from _effective was a Python
        # loop over every node (2 ms at 20,000) on each failure's path.
        with self._lock:
            return self._states.copy()

    def utilization(self) -> np.ndarray:
        if self.monitor is None:
            return np.zeros(len(self.node_ids))
        return self.monitor.utilization()

    def recent_changes(self) -> list[StateChange]:
        """The latest changes of effective state (up to CHANGES_KEPT), newest first."""
        with self._lock:
            return list(reversed(self._changes))

    def status(self) -> list[NodeStatus]:
        """Every node's effective state, from copies taken under the lock and combined
        outside it (as ``_entry`` combines them): at 20,000 nodes the combination held every
        heartbeat (a failure's too) up for tens of ms, and the state saver, the API and
        /metrics call this beside the service."""
        monitor = self.monitor
        with self._lock:
            admin, since = dict(self._admin), list(self._since)
            if monitor is not None:
                states, reasons = monitor.state.copy(), list(monitor.reason)
        out = []
        for i, node_id in enumerate(self.node_ids):
            override = admin.get(node_id)
            if override is not None:
                state, reason = ADMIN_STATES[override[0]], override[1]
            elif monitor is not None:
                state, reason = NodeState(int(states[i])), reasons[i]
            else:
                state, reason = self._health_entry(i)
            admin_state = None if override is None else override[0]
            out.append(NodeStatus(node_id, state, reason, admin_state, since[i]))  # type: ignore[arg-type]
        return out

    def carry_from(self, old: NodeHealth) -> list[str]:
        """After a reload: keep the admin overrides, monitor state, times of the last change
        and the change history of the nodes both configs have. Returns the ids of nodes the
        new config dropped (their history stays; their overrides go with them)."""
        with old._lock:
            admin = dict(old._admin)
            since = dict(zip(old.node_ids, old._since))
            changes = list(old._changes)
            if self.monitor is not None and old.monitor is not None:
                self.monitor.carry_from(old.monitor)
        with self._lock:
            self._admin = {n: a for n, a in admin.items() if n in self._index}
            self._since = [since.get(n, self._since[i]) for i, n in enumerate(self.node_ids)]
            self._changes.clear()
            self._changes.extend(changes)
            self._effective = self._compute()
            self._states = self._state_array()
        return [n for n in old.node_ids if n not in self._index]

    # -- persistence -------------------------------------------------------------------

    def save(self, path: Path, extra: dict[str, object] | None = None) -> None:
        """Write the state atomically (temp file + rename), so a crash never leaves half a file;
        ``extra``: more top-level keys (the replay memory of heartbeat telemetry)."""
        data = {
            **(extra or {}),
            "saved_at": time.time(),
            "nodes": {
                # Overrides from the admin_state file are kept by the file itself.
                s.node_id: {
                    "state": s.state.label,
                    "reason": s.reason,
                    "since": s.since,
                    "admin_state": None if s.reason.endswith(ADMIN_FILE_SUFFIX) else s.admin_state,
                }
                for s in self.status()
            },
        }
        tmp = path.with_name(f".{path.name}.tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as handle:
            # One line by the C encoder: an indented dump runs the pure-Python one (0.15 s
            # for 20,000 nodes, holding the GIL the failure path needs). `jq .` reads it.
            for piece in json_pieces(data):
                handle.write(piece)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    @staticmethod
    def saved_extra(path: Path, key: str) -> object:
        """The ``extra`` value saved under ``key``, or None (no file, unreadable, absent)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data.get(key) if isinstance(data, dict) else None

    def load(self, path: Path, now: float) -> list[str]:
        """Restore admin overrides and known-down nodes; return warnings (never raises on bad files)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            nodes = data["nodes"]
            assert isinstance(nodes, dict)
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, AssertionError, TypeError) as exc:
            return [f"ignoring unreadable state file {path}: {exc}"]
        warnings = []
        with self._lock:
            for node_id, saved in nodes.items():
                if node_id not in self._index or not isinstance(saved, dict):
                    warnings.append(f"state file {path}: ignoring unknown node {node_id!r}")
                    continue
                admin = saved.get("admin_state")
                if admin in ("down", "drain"):
                    self._admin[node_id] = (
                        admin,
                        f"{ADMIN_REASON_PREFIX} set {admin} by operator (restored)",
                    )
                state = _LABELS.get(saved.get("state"))
                from_admin = held_by_admin(
                    str(saved.get("reason", ""))
                )  # not the monitor's verdict
                if (
                    self.monitor is not None
                    and state is not None
                    and admin is None
                    and state != NodeState.UP
                    and not from_admin
                ):
                    self.monitor.restore(node_id, state, str(saved.get("reason", "")), now)
            self._refresh()
        return warnings

    # -- combination ---------------------------------------------------------------------
    # Heartbeats arrive thousands of times a second: each one touches only its own node.

    def _entry(self, i: int) -> tuple[NodeState, str]:
        admin = self._admin.get(self.node_ids[i])
        if admin is not None:
            return ADMIN_STATES[admin[0]], admin[1]  # type: ignore[return-value]
        return self._health_entry(i)

    def _health_entry(self, i: int) -> tuple[NodeState, str]:
        """Node ``i``'s state and reason without admin overrides."""
        if self.monitor is not None:
            return NodeState(int(self.monitor.state[i])), self.monitor.reason[i]
        return NodeState.UP, "no health monitoring configured; in service"

    def _state_array(self) -> np.ndarray:
        return np.array([int(s) for s, _ in self._effective], dtype=np.int8)

    def _compute(self) -> list[tuple[NodeState, str]]:
        return [self._entry(i) for i in range(len(self.node_ids))]

    def _refresh_node(self, i: int) -> bool:
        entry = self._entry(i)
        changed = entry[0] != self._effective[i][0]
        if changed:
            self._since[i] = time.time()
            self._changes.append(
                StateChange(
                    self._since[i], self.node_ids[i], self._effective[i][0], entry[0], entry[1]
                )
            )
        self._effective[i] = entry
        self._states[i] = entry[0]
        return changed

    def _refresh(self) -> bool:
        return any([self._refresh_node(i) for i in range(len(self.node_ids))])
