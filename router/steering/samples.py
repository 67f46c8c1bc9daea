"""Latency fusion: RTT samples that nodes measure to client prefixes, per (group, node).

Each sample updates an exponentially weighted average, so one outlier moves the estimate
by ``alpha`` of the difference, not all the way. An average not refreshed for
``max_age_s`` ages out and the pair falls back to the country table or the distance
estimate (``router.steering._kernels``). The kernels read the result as CSR arrays.
"""

from __future__ import annotations

import math
import time

import numpy as np

DEFAULT_ALPHA = 0.3  # weight of a new sample: about 3 samples to move most of the way
DEFAULT_MAX_AGE_S = 600.0  # ten minutes without a sample: trust the tables again
MAX_RTT_MS = 10_000.0


class RttSamples:
    def __init__(
        self, groups: int, alpha: float = DEFAULT_ALPHA, max_age_s: float = DEFAULT_MAX_AGE_S
    ) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.groups = groups
        self.alpha = alpha
        self.max_age_s = max_age_s
        self._fused: dict[tuple[int, int], tuple[float, float]] = {}  # (group, node) -> (ms, when)
        self.changed_groups: set[int] = set()  # since the caller last cleared it

    def __len__(self) -> int:
        return len(self._fused)

    def add(self, group: int, node: int, rtt_ms: float, now: float) -> bool:
        """Fuse one sample; False (and nothing changes) when it is not a usable RTT."""
        if (
            not (0 <= group < self.groups)
            or not math.isfinite(rtt_ms)
            or not 0 <= rtt_ms <= MAX_RTT_MS
        ):
            return False
        key = (group, node)
        previous = self._fused.get(key)
        if previous is None or now - previous[1] > self.max_age_s:
            value = rtt_ms
        else:
            value = previous[0] + self.alpha * (rtt_ms - previous[0])
        self._fused[key] = (value, now)
        self.changed_groups.add(group)
        return True

    def get(self, group: int, node: int, now: float) -> float | None:
        entry = self._fused.get((group, node))
        if entry is None or now - entry[1] > self.max_age_s:
            return None
        return entry[0]

    def expire(self, now: float) -> int:
        """Drop averages older than max_age_s; returns how many went."""
        stale = [key for key, (_, when) in self._fused.items() if now - when > self.max_age_s]
        for key in stale:
            del self._fused[key]
            self.changed_groups.add(key[0])
        return len(stale)

    def carry_from(self, old: RttSamples, node_map: dict[int, int]) -> int:
        """After a reload with the same client groups: keep what ``old`` fused, its node
        indexes mapped by ``node_map`` (old -> new; other nodes are dropped). Where both have
        a pair (the new one seeded from the samples file), the fresher average wins.
        Returns how many pairs were taken from ``old``."""
        taken = 0
        for (group, node), (value, when) in list(old._fused.items()):
            new_node = node_map.get(node)
            if new_node is None or group >= self.groups:
                continue
            mine = self._fused.get((group, new_node))
            if mine is None or mine[1] < when:
                self._fused[(group, new_node)] = (value, when)
                self.changed_groups.add(group)
                taken += 1
        return taken

    def csr(self, now: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(meas_start int64[G + 1], meas_node int32[M], meas_rtt float64[M]) of fresh averages."""
        self.expire(now)
        keys = sorted(self._fused)
        group = np.array([g for g, _ in keys], dtype=np.int64)
        node = np.array([n for _, n in keys], dtype=np.int32)
        rtt = np.array([self._fused[k][0] for k in keys], dtype=np.float64)
        start = np.zeros(self.groups + 1, dtype=np.int64)
        np.cumsum(np.bincount(group, minlength=self.groups), out=start[1:])
        return start, node, rtt


def seeded_samples(deployment_samples, client_map, node_ids) -> tuple[RttSamples, int]:  # noqa: ANN001
    """RttSamples with the deployment's sample file fused as of now (nothing marked changed);
    with how many samples took. What serve, ``router plan`` and ``router explain`` start from."""
    samples = RttSamples(len(client_map.groups))
    taken = 0
    if deployment_samples:
        taken = seed_from_file(
            samples, deployment_samples, client_map, node_ids, time.time(), time.monotonic()
        )
        samples.changed_groups.clear()
    return samples, taken


def seed_from_file(
    samples: RttSamples, deployment_samples, client_map, node_ids, wall_now: float, now: float
) -> int:  # noqa: ANN001
    """Fuse the deployment's RTT sample file, oldest first, each at its age; returns how many took.

    ``wall_now``/``now``: the same instant as Unix time and on the clock ``samples`` uses.
    """
    index = {node_id: i for i, node_id in enumerate(node_ids)}
    taken = 0
    for sample in sorted(deployment_samples, key=lambda s: s.measured_at):
        group, _scope = client_map.lookup(sample.network.network_address)
        when = now - max(wall_now - sample.measured_at, 0.0)
        if group != 0 and samples.add(group, index[sample.node], sample.rtt_ms, when):
            taken += 1
    return taken
