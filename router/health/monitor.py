"""The automatic side of node health: heartbeats in, node states out, with hysteresis.

Getting worse is immediate: a report of power ``off`` or ``battery_low``, or of every uplink
down, takes the node down on that report; ``battery`` or load above the high-water mark make
it draining. Silence takes it down once ``missed_heartbeats`` intervals pass without an
accepted report. Getting better is slow on purpose: ``recover_after`` consecutive good
reports, and never before the node's hold-down has passed since it went down. A node that
fails again soon after recovering, or while it is still held down after reporting well, has
its hold-down doubled (up to ``max_hold_down_s``) and started over, so a flapping node toggles
the answers less and less often; a node that stays up long enough gets the base hold-down back.

Why these defaults (1 s interval, 3 missed, 3 good, 10 s hold-down): gdnsd's documented
monitor settings are a 10 s interval with up_thresh 20 / ok_thresh 10 / down_thresh 10, i.e.
tens of seconds to withdraw; Traffic Monitor polls each cache on its health.polling.interval
(several seconds in common profiles) and marks it down on a failed poll. Heartbeats pushed every second let us withdraw a silent node in about 3 s and
an explicit failure at once, and 3 good reports plus 10 s keep a node that bounces once
from coming back before it has shown it is stable.

All times come from the caller (a monotonic clock), so the logic is deterministic to test.
"""

from __future__ import annotations

import numpy as np

from router.config.health import HealthSettings
from router.health.state import NodeState
from router.health.telemetry import Heartbeat

_STATES = tuple(NodeState)  # by value: faster than NodeState(value), once per heartbeat


def assess(heartbeat: Heartbeat, capacity_gbps: float, high_water: float) -> tuple[NodeState, str]:
    """What one report says about its node, before hysteresis."""
    power = heartbeat.power
    if power in ("off", "battery_low"):
        return NodeState.DOWN, f"power {power}"
    links = set(heartbeat.uplinks.values())  # the states the uplinks are in (none: no report)
    if links == {"down"}:
        return NodeState.DOWN, "every uplink down"
    if power == "battery":
        return NodeState.DRAINING, "on battery"
    util = heartbeat.load_gbps / capacity_gbps
    if util > high_water:
        return NodeState.DRAINING, f"load {util:.0%} of capacity (high-water {high_water:.0%})"
    if links and "up" not in links:
        return NodeState.DRAINING, "no uplink fully up (degraded)"
    return NodeState.UP, "heartbeats good"


class NodeMonitor:
    """State of every node as its heartbeats describe it."""

    def __init__(
        self,
        node_ids: tuple[str, ...],
        capacity_gbps: np.ndarray,
        settings: HealthSettings,
        now: float,
    ) -> None:
        self.settings = settings
        self.node_ids = node_ids
        self.index = {node_id: i for i, node_id in enumerate(node_ids)}
        n = len(node_ids)
        self.capacity = np.asarray(capacity_gbps, dtype=np.float64)
        self.state = np.full(n, int(NodeState.UP), dtype=np.int8)
        self.reason = ["no heartbeat yet (start-up grace)"] * n
        self.last_seen = np.full(n, np.nan)  # monotonic time of the last accepted report
        self.good_streak = np.zeros(n, dtype=np.int64)
        self.hold_down = np.full(n, settings.hold_down_s)
        self.last_down = np.full(n, -np.inf)
        self.last_up = np.full(n, -np.inf)
        self.load_gbps = np.zeros(n)
        # The node's timestamps of its last two loads: several routers plan from the loads
        # as they were at the start of a second (``load_at``), which all of them know alike.
        self.load_ts = np.full(n, -np.inf)
        self.prev_load = np.zeros(n)
        self.prev_ts = np.full(n, -np.inf)
        self.epoch_util: np.ndarray | None = None  # set: what ``utilization`` gives instead
        self.probe_fail_streak = np.zeros(n, dtype=np.int64)
        self.probe_detail = [""] * n
        # Nodes the silence check leaves alone: a router cut off the bus keeps those it only
        # heard of through the bus as they were (losing the bus never withdraws a node).
        self.silence_exempt = np.zeros(n, dtype=bool)
        self.started = now
        self.changes = 0  # state changes so far (for flap accounting and tests)

    def restore(self, node_id: str, state: NodeState, reason: str, now: float) -> None:
        """Start from a persisted state: a known-down node stays down until it proves itself."""
        i = self.index[node_id]
        self.state[i] = int(state)
        self.reason[i] = f"{reason} (restored at start-up)"
        if state == NodeState.DOWN:
            self.last_down[i] = now

    def carry_from(self, old: NodeMonitor) -> None:
        """Take over what ``old`` (the monitor of the config before a reload) knew of the
        nodes both configs have: their state, streaks, hold-downs and load. Nodes new in
        this config start as at start-up; the start-up grace is the old one."""
        self.started = old.started
        self.changes = old.changes
        for node_id, i in self.index.items():
            j = old.index.get(node_id)
            if j is None:
                continue
            self.state[i] = old.state[j]
            self.reason[i] = old.reason[j]
            self.last_seen[i] = old.last_seen[j]
            self.good_streak[i] = old.good_streak[j]
            self.hold_down[i] = old.hold_down[j]
            self.last_down[i] = old.last_down[j]
            self.last_up[i] = old.last_up[j]
            self.load_gbps[i] = old.load_gbps[j]
            self.load_ts[i] = old.load_ts[j]
            self.prev_load[i] = old.prev_load[j]
            self.prev_ts[i] = old.prev_ts[j]
            self.probe_fail_streak[i] = old.probe_fail_streak[j]
            self.probe_detail[i] = old.probe_detail[j]
            self.silence_exempt[i] = old.silence_exempt[j]

    def utilization(self) -> np.ndarray:
        if self.epoch_util is not None:
            return self.epoch_util
        return self.load_gbps / self.capacity

    def load_at(self, wall: float) -> np.ndarray:
        """Each node's utilisation by its latest heartbeat stamped before ``wall`` (its
        clock), of the last two; a node with neither keeps its latest."""
        latest = self.load_ts < wall
        before = np.where(
            latest, self.load_gbps, np.where(self.prev_ts < wall, self.prev_load, self.load_gbps)
        )
        return before / self.capacity

    def report(self, heartbeat: Heartbeat, now: float, heard_by: str = "") -> bool:
        """Apply one accepted heartbeat; True when the node's state changed. ``heard_by``:
        the router it reached (several routers: the reason says which saw it)."""
        i = self.index[heartbeat.node]
        self.last_seen[i] = now
        self.prev_load[i], self.prev_ts[i] = self.load_gbps[i], self.load_ts[i]
        self.load_gbps[i], self.load_ts[i] = heartbeat.load_gbps, heartbeat.ts
        raw, why = assess(heartbeat, float(self.capacity[i]), self.settings.high_water)
        if heard_by:
            why = f"{why} (reported to router {heard_by})"
        if self.probe_fail_streak[i] >= self.settings.probe_failures:
            # Heartbeats say fine, probes say no: the worse signal wins.
            raw, why = NodeState.DOWN, self._probe_reason(i)
        current = _STATES[self.state[i]]
        if raw > current:
            self._set(i, raw, why, now)
            return True
        if raw == current:
            if raw == NodeState.DOWN and self.good_streak[i] > 0:
                self._failed_while_held_down(i, why, now)
            self.good_streak[i] = 0
            if raw == NodeState.UP:
                self.reason[i] = why
            return False
        self.good_streak[i] += 1
        if current == NodeState.DOWN and now - self.last_down[i] < self.hold_down[i]:
            remaining = self.hold_down[i] - (now - self.last_down[i])
            self.reason[i] = (
                f"{self.reason[i].split(';')[0]}; recovering, held down {remaining:.1f} s more"
            )
            return False
        if self.good_streak[i] < self.settings.recover_after:
            return False
        self._set(i, raw, f"recovered: {why}", now)
        return True

    def probe(self, node_id: str, ok: bool, detail: str, now: float) -> bool:
        """One active probe result; True when the node's state changed (only ever to down:
        coming back is left to good heartbeats, once probes succeed again)."""
        i = self.index[node_id]
        if ok:
            self.probe_fail_streak[i] = 0
            return False
        self.probe_fail_streak[i] += 1
        self.probe_detail[i] = detail
        if self.probe_fail_streak[i] >= self.settings.probe_failures and self.state[i] != int(
            NodeState.DOWN
        ):
            self._set(i, NodeState.DOWN, self._probe_reason(i), now)
            return True
        return False

    def probe_verdict(self, node_id: str, failing: bool, detail: str, now: float) -> bool:
        """The verdict of a quorum of routers' probes (several routers share the bus): a
        node their probes fail is down as if its own probes had failed enough times;
        True when the node's state changed (only ever to down, as ``probe``)."""
        i = self.index[node_id]
        if not failing:
            self.probe_fail_streak[i] = 0
            return False
        self.probe_fail_streak[i] = max(self.probe_fail_streak[i], self.settings.probe_failures)
        self.probe_detail[i] = detail
        if self.state[i] != int(NodeState.DOWN):
            self._set(i, NodeState.DOWN, detail, now)
            return True
        return False

    def _probe_reason(self, i: int) -> str:
        return f"{self.probe_fail_streak[i]} failed probes ({self.probe_detail[i]})"

    def tick(self, now: float) -> list[int]:
        """Withdraw silent nodes; the indexes of nodes whose state changed."""
        bound = self.settings.silence_bound_s
        silent = ((now - self.last_seen) > bound) & ~self.silence_exempt  # NaN compares False
        never = np.isnan(self.last_seen) & (now - self.started > self.settings.startup_grace_s)
        for i in np.flatnonzero(
            silent & (self.state == int(NodeState.DOWN)) & (self.good_streak > 0)
        ):
            self._failed_while_held_down(
                int(i), f"missed {self.settings.missed_heartbeats} heartbeats", now
            )
            self.good_streak[i] = 0
        candidates = np.flatnonzero((silent | never) & (self.state != int(NodeState.DOWN)))
        for i in candidates:
            if np.isnan(self.last_seen[i]):
                why = f"no heartbeat since start-up ({now - self.started:.1f} s)"
            else:
                why = f"missed {self.settings.missed_heartbeats} heartbeats ({now - self.last_seen[i]:.1f} s silent)"
            self._set(int(i), NodeState.DOWN, why, now)
        return [int(i) for i in candidates]

    def _failed_while_held_down(self, i: int, why: str, now: float) -> None:
        """A down node that had started to report well failed again before it was let back:
        a flap the answers never saw, damped like one (the hold-down doubles and starts over),
        so a node bouncing faster than its hold-down is not let back between two bounces."""
        self.hold_down[i] = min(2 * self.hold_down[i], self.settings.max_hold_down_s)
        self.last_down[i] = now
        self.reason[i] = f"{why} (failed again while held down)"

    def _set(self, i: int, state: NodeState, why: str, now: float) -> None:
        self.good_streak[i] = 0
        if state == NodeState.DOWN:
            # Flap damping: failing again soon after a recovery doubles the hold-down.
            if now - self.last_up[i] < 2 * self.hold_down[i]:
                self.hold_down[i] = min(2 * self.hold_down[i], self.settings.max_hold_down_s)
            elif now - self.last_up[i] > 4 * self.settings.hold_down_s:
                self.hold_down[i] = self.settings.hold_down_s
            self.last_down[i] = now
        elif state == NodeState.UP:
            self.last_up[i] = now
        self.state[i] = int(state)
        self.reason[i] = why
        self.changes += 1
