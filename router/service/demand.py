"""Demand per client group, from the steered queries the workers answer.

Each worker counts steered queries per (policy, group) in its own slice of an anonymous
shared mapping made before the fork, so counting costs one array increment and no
message. The supervisor reads the counters every ``interval_s``, turns the differences
into query rates, and smooths them with an exponentially weighted average (half-life
``half_life_s``), so a burst does not move traffic but a trend does.

Rates become Gbps for the planner in proportion: the total is what the nodes report
carrying (telemetry) split between policies by their share of the queries, or, before
any load is reported, the policy's ``expected_peak_gbps``. Query rates are a proxy for
users (resolvers cache by TTL and ECS scope), which is why only their shares are used.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import numpy as np

from router.service.shared import shared_zeros

if TYPE_CHECKING:
    from router.service.loaded import LoadedConfig
    from router.service.supervisor import Supervisor

DEFAULT_INTERVAL_S = 10.0
DEFAULT_HALF_LIFE_S = 60.0
REPLAN_SHIFT = 0.05  # re-plan when this share of the demand moved between groups


class DemandCounters:
    """int64[workers, policies, groups] in memory shared with forked workers."""

    def __init__(self, workers: int, policies: int, groups: int) -> None:
        self.counts = shared_zeros((workers, policies, groups))

    def for_worker(self, index: int) -> np.ndarray:
        return self.counts[index]

    def total(self) -> np.ndarray:
        return self.counts.sum(axis=0)


class DemandModel:
    def __init__(
        self, policies: int, groups: int, half_life_s: float = DEFAULT_HALF_LIFE_S
    ) -> None:
        self.half_life_s = half_life_s
        self.qps = np.zeros((policies, groups))
        self._last_counts: np.ndarray | None = None
        self._last_time: float | None = None

    def observe(self, counts: np.ndarray, now: float) -> None:
        """Fold the query counters read at ``now`` into the smoothed rates."""
        if self._last_counts is None or self._last_time is None:
            self._last_counts, self._last_time = counts.copy(), now
            return
        elapsed = now - self._last_time
        if elapsed <= 0:
            return
        delta = np.maximum(counts - self._last_counts, 0)  # a restarted worker's slot may reset
        rate = delta / elapsed
        keep = math.exp(-math.log(2) * elapsed / self.half_life_s)
        self.qps = keep * self.qps + (1 - keep) * rate
        self._last_counts, self._last_time = counts.copy(), now

    def demand_gbps(
        self, expected_peak_gbps: np.ndarray, reported_gbps: float, qps: np.ndarray | None = None
    ) -> np.ndarray | None:
        """float64[P, G] Gbps per policy and group, or None while nothing was observed.
        ``qps``: the rates to share by instead of this router's own (the sum over routers)."""
        qps = self.qps if qps is None else qps
        per_policy = qps.sum(axis=1)
        total_qps = per_policy.sum()
        if total_qps <= 0:
            return None
        if reported_gbps > 0:
            totals = reported_gbps * per_policy / total_qps
        else:
            totals = np.asarray(expected_peak_gbps, dtype=np.float64)
        shares = np.divide(
            qps,
            per_policy[:, None],
            out=np.zeros_like(qps),
            where=per_policy[:, None] > 0,
        )
        return shares * totals[:, None]


def moved_share(old: np.ndarray, new: np.ndarray) -> float:
    """Share of the total demand that moved between groups or appeared/vanished (0..1+)."""
    total = max(old.sum(), new.sum())
    return float(np.abs(new - old).sum() / (2 * total)) if total > 0 else 0.0


class DemandObserver:
    """Reads the workers' query counters every ``interval_s`` and hands the planner a new
    demand when it shifted by ``REPLAN_SHIFT`` or more. With a bus the cluster link drives it
    instead, once per epoch (``fold`` then ``weigh``), so every router weighs the same sums
    at the same epochs."""

    def __init__(self, service: Supervisor, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self.service = service
        self.interval_s = interval_s
        self._read_at = time.monotonic()

    def observe(self, now: float | None = None) -> bool:
        """True if demand shifted and a plan was asked for."""
        service = self.service
        now = time.monotonic() if now is None else now
        if service.cluster is not None or now - self._read_at < self.interval_s:
            return False
        self._read_at = now
        config = self.fold(now)
        return self.weigh(config, config.demand.qps, self.reported_gbps(config))

    def reported_gbps(self, config: LoadedConfig) -> float:
        """The load every node reports, summed: what the demand is scaled to."""
        with self.service.health_lock:
            return float((config.health.utilization() * config.model.node_capacity_gbps).sum())

    def fold(self, now: float) -> LoadedConfig:
        """The workers' counters into the smoothed rates of the config in service."""
        config = self.service.config
        config.demand.observe(config.demand_counters.total(), now)
        return config

    def weigh(
        self,
        config: LoadedConfig,
        qps: np.ndarray,
        reported: float,
        threshold: float = REPLAN_SHIFT,
    ) -> bool:
        """Per-group rates ``qps`` (this router's, or the service's) as the planner's demand,
        if they moved more than ``threshold``; True if a plan was asked for."""
        service = self.service
        observed = config.demand.demand_gbps(config.expected_peak, reported, qps)
        if observed is None or np.array_equal(observed, config.planner.demand):
            return False
        if moved_share(config.planner.demand, observed) < threshold:
            return False
        with service.health_lock:
            if config is not service.config:
                return False  # a reload swapped the config meanwhile: its own counters decide
            service.publisher.pending_demand = observed
        service.publisher.request_rebuild()
        return True
