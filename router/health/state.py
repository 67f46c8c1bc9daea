"""Node state as the steering core sees it: one flat int8 array indexed by node.

States: up (0), draining (1, only used when nothing up is left), down (2). The operator's
admin override (``down`` or ``drain``) wins over everything else; ``up`` clears it.
Automatic health monitoring (telemetry, probes) is not part of this module yet: without
it a node without an override is up, and its reason says so.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from enum import IntEnum

import numpy as np


class NodeState(IntEnum):
    UP = 0
    DRAINING = 1
    DOWN = 2

    @property
    def label(self) -> str:
        return {0: "up", 1: "draining", 2: "down"}[int(self)]


ADMIN_STATES = {"up": None, "down": NodeState.DOWN, "drain": NodeState.DRAINING}


@dataclass(frozen=True)
class NodeStatus:
    node_id: str
    state: NodeState
    reason: str
    admin_state: str | None  # the override in force: "down", "drain" or None
    since: float  # unix time of the last change


class NodeHealth:
    """The effective state of every node, changed only through methods that say why."""

    def __init__(self, node_ids: tuple[str, ...]) -> None:
        self.node_ids = node_ids
        self._index = {node_id: i for i, node_id in enumerate(node_ids)}
        now = time.time()
        self._status = [
            NodeStatus(node_id, NodeState.UP, "no health monitoring configured; in service", None, now)
            for node_id in node_ids
        ]
        self._lock = threading.Lock()

    def __contains__(self, node_id: str) -> bool:
        return node_id in self._index

    def set_admin_state(self, node_id: str, admin: str) -> bool:
        """Apply an operator override; True when the effective state changed."""
        if admin not in ADMIN_STATES:
            raise ValueError(f'admin state must be one of {", ".join(ADMIN_STATES)}, got "{admin}"')
        i = self._index[node_id]
        with self._lock:
            old = self._status[i]
            forced = ADMIN_STATES[admin]
            if forced is None:
                new = NodeStatus(node_id, NodeState.UP, "admin: returned to service by operator", None, time.time())
            else:
                new = NodeStatus(node_id, forced, f"admin: set {admin} by operator", admin, time.time())
            if old.state == new.state and old.admin_state == new.admin_state:
                return False
            self._status[i] = new
            return old.state != new.state

    def states(self) -> np.ndarray:
        with self._lock:
            return np.array([int(s.state) for s in self._status], dtype=np.int8)

    def status(self) -> list[NodeStatus]:
        with self._lock:
            return list(self._status)
