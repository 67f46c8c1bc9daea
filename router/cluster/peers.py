"""What this router knows of the other routers of the service: their last state message,
when it came, and whether they serve the same table.

Pure bookkeeping (no I/O): the bus feeds it, the API and the planner read it. A peer is live
while its state messages keep coming (``PEER_TIMEOUT_S``); only live peers count for the
probe quorum and the demand sum, so a router that left stops counting within that time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

PEER_TIMEOUT_S = 3.0  # state messages come every second: three missed and the peer is gone


@dataclass(frozen=True)
class RouterState:
    """One router's state message (``router.state.<id>``), validated."""

    router_id: str
    config_version: str
    table_generation: int
    table_digest: str
    isolated: bool
    probing: bool  # it probes the nodes' health URLs (telemetry on)
    probes_failing: dict[str, str]  # node -> why, for the nodes its own probes withdraw
    sent_at: float  # the sender's wall clock, for display only


@dataclass
class Peer:
    state: RouterState
    received_at: float  # this router's monotonic clock


@dataclass
class DemandReport:
    router_id: str
    config_version: str
    epoch: int  # the wall-clock second it was taken at
    qps: np.ndarray  # float64[P, G]
    received_at: float
    reported_gbps: float = 0.0  # the load the nodes reported, as that router saw it


EPOCHS_KEPT = 4


@dataclass
class PeerTable:
    router_id: str
    peers: dict[str, Peer] = field(default_factory=dict)
    # router (this one too) -> epoch -> its report of that second
    demand: dict[str, dict[int, DemandReport]] = field(default_factory=dict)

    def observe(self, state: RouterState, now: float) -> bool:
        """A state message; True when it changed what the peer's probes say (a quorum to
        recount) or it is a peer not seen live before."""
        if state.router_id == self.router_id:
            return False
        old = self.peers.get(state.router_id)
        self.peers[state.router_id] = Peer(state, now)
        return (
            old is None
            or now - old.received_at > PEER_TIMEOUT_S
            or old.state.probes_failing != state.probes_failing
            or old.state.probing != state.probing
        )

    def observe_demand(self, report: DemandReport) -> None:
        """A router's rates for one epoch (this router's own too, as it published them)."""
        epochs = self.demand.setdefault(report.router_id, {})
        epochs[report.epoch] = report
        for old in sorted(epochs)[:-EPOCHS_KEPT]:
            del epochs[old]

    def live(self, now: float) -> list[Peer]:
        return [p for p in self.peers.values() if now - p.received_at <= PEER_TIMEOUT_S]

    def expire(self, now: float) -> bool:
        """Forget demand of peers gone quiet; True if a peer stopped being live since the
        last call (its probe verdicts and demand no longer count)."""
        gone = False
        for rid, epochs in list(self.demand.items()):
            if rid != self.router_id and all(
                now - r.received_at > PEER_TIMEOUT_S for r in epochs.values()
            ):
                del self.demand[rid]
                gone = True
        for peer in self.peers.values():
            if PEER_TIMEOUT_S < now - peer.received_at <= PEER_TIMEOUT_S + 1.0:
                gone = True  # reported once, in the second after it went quiet
        return gone

    def complete_epochs(self, config_version: str, now: float, after: int | None) -> list[int]:
        """The epochs after ``after`` that every live router on this config has reported,
        oldest first (this router's own reports say which epochs there are)."""
        live = {rid for rid, p in self.peers.items() if now - p.received_at <= PEER_TIMEOUT_S}
        waited = [rid for rid in live if self._on_config(rid, config_version)]
        out = []
        for epoch in sorted(self.demand.get(self.router_id, {})):
            if after is not None and epoch <= after:
                continue
            if all(epoch in self.demand.get(rid, {}) for rid in waited):
                out.append(epoch)
        return out

    def epoch_demand(
        self, epoch: int, config_version: str, now: float
    ) -> tuple[np.ndarray, float] | None:
        """The service's demand of one epoch: (the sum of the rates every router on this
        config reported for it, the nodes' reported load as the lowest router id saw it).
        Every router with the same reports gets the same numbers, so their plans start from
        one input; None if this router has no report of that epoch."""
        own = self.demand.get(self.router_id, {}).get(epoch)
        if own is None:
            return None
        reports = sorted(
            (
                epochs[epoch]
                for epochs in self.demand.values()
                if epoch in epochs and epochs[epoch].config_version == config_version
                and epochs[epoch].qps.shape == own.qps.shape
            ),
            key=lambda r: r.router_id,
        )  # fmt: skip
        total = np.zeros(own.qps.shape)
        for report in reports:
            total += report.qps
        return total, reports[0].reported_gbps

    def _on_config(self, rid: str, config_version: str) -> bool:
        peer = self.peers.get(rid)
        return peer is not None and peer.state.config_version == config_version

    def agreement(self, own: RouterState, now: float) -> tuple[bool, list[dict[str, object]]]:
        """Whether every live peer serves the same config and table as ``own``; and the
        peers as the API lists them (the gone ones too, with how long ago)."""
        rows = []
        agree = True
        for rid in sorted(self.peers):
            peer = self.peers[rid]
            s = peer.state
            live = now - peer.received_at <= PEER_TIMEOUT_S
            same = s.config_version == own.config_version and s.table_digest == own.table_digest
            if live and not same:
                agree = False
            rows.append(
                {
                    "router_id": rid,
                    "live": live,
                    "last_seen_s": round(now - peer.received_at, 3),
                    "config_version": s.config_version,
                    "table_generation": s.table_generation,
                    "table_digest": s.table_digest,
                    "agrees": live and same,
                    "isolated": s.isolated,
                }
            )
        return agree, rows


def majority(probers: int) -> int:
    """The default probe quorum: more than half of the routers that probe the node."""
    return probers // 2 + 1


def probe_quorum(
    own_id: str,
    own_probing: bool,
    own_failing: dict[str, str],
    peers: list[Peer],
    quorum: float | None = None,
) -> dict[str, tuple[list[str], int, int, str]]:
    """The nodes a quorum of the probing routers withdraws: node -> (the routers whose probes
    fail it, how many probe, the quorum, one router's reason). ``quorum`` is a share of the
    probing routers (e.g. 0.5: at least half) or None for a majority."""
    probers = [own_id] if own_probing else []
    failing: dict[str, list[tuple[str, str]]] = {}
    if own_probing:
        for node, why in own_failing.items():
            failing.setdefault(node, []).append((own_id, why))
    for peer in peers:
        s = peer.state
        if not s.probing:
            continue
        probers.append(s.router_id)
        for node, why in s.probes_failing.items():
            failing.setdefault(node, []).append((s.router_id, why))
    n = len(probers)
    need = majority(n) if quorum is None else max(1, math.ceil(quorum * n - 1e-9))
    out = {}
    for node, seen in failing.items():
        if len(seen) >= need:
            out[node] = (sorted(r for r, _ in seen), n, need, seen[0][1])
    return out
