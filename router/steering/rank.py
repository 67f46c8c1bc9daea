"""Checked entry points to the steering kernels: dtypes fixed here, never in callers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from router.steering import _kernels

# Unmeasured pairs: RTT grows about 1 ms per 100 km of fibre (light in glass, out and
# back) and real paths run about 2.5x the great circle, plus a few ms of access network.
EST_BASE_MS = 5.0
EST_MS_PER_KM = 0.025


# The per-node arrays of RankInputs, all indexed by node.
NODE_FIELDS = (
    "node_lat",
    "node_lon",
    "node_country",
    "node_asn",
    "node_state",
    "node_util",
    "node_in_pool",
)


@dataclass(frozen=True)
class RankInputs:
    """Everything the ranking kernel reads, already in kernel dtypes."""

    group_lat: np.ndarray
    group_lon: np.ndarray
    group_country: np.ndarray
    group_asn: np.ndarray
    node_lat: np.ndarray
    node_lon: np.ndarray
    node_country: np.ndarray
    node_asn: np.ndarray
    node_state: np.ndarray
    node_util: np.ndarray
    node_in_pool: np.ndarray
    country_rtt: np.ndarray
    onnet_bonus_ms: float
    load_penalty_ms: float
    # Fences (geofence and on-net limits): group_fence int32[G] indexes fence_allowed bool[F, N]; row 0 allows all.
    group_fence: np.ndarray
    fence_allowed: np.ndarray
    # Fused RTT samples of nodes to groups, CSR by group (see router.steering.latency).
    meas_start: np.ndarray
    meas_node: np.ndarray
    meas_rtt: np.ndarray
    est_base_ms: float = EST_BASE_MS
    est_ms_per_km: float = EST_MS_PER_KM

    @classmethod
    def create(cls, **arrays: object) -> RankInputs:
        """Coerce dtypes and check shapes; raise ValueError on inconsistent inputs.

        Without fences every group may use the whole pool; without samples every latency
        comes from the country table or the distance estimate.
        """
        f64 = {
            "group_lat",
            "group_lon",
            "node_lat",
            "node_lon",
            "node_util",
            "country_rtt",
            "meas_rtt",
        }
        dtypes = {"group_country": np.int32, "node_country": np.int32, "group_asn": np.int64,
                  "node_asn": np.int64, "node_state": np.int8, "node_in_pool": np.bool_,
                  "group_fence": np.int32, "fence_allowed": np.bool_, "meas_start": np.int64,
                  "meas_node": np.int32}  # fmt: skip
        groups = len(arrays["group_lat"])  # type: ignore[arg-type]
        nodes = len(arrays["node_lat"])  # type: ignore[arg-type]
        arrays.setdefault("group_fence", np.zeros(groups))
        arrays.setdefault("fence_allowed", np.ones((1, nodes)))
        if "meas_start" not in arrays:
            arrays.update(
                meas_start=np.zeros(groups + 1), meas_node=np.zeros(0), meas_rtt=np.zeros(0)
            )
        values: dict[str, object] = {}
        for name, value in arrays.items():
            if name in f64:
                values[name] = np.ascontiguousarray(value, dtype=np.float64)
            elif name in dtypes:
                values[name] = np.ascontiguousarray(value, dtype=dtypes[name])
            else:
                values[name] = float(value)  # type: ignore[arg-type]
        inputs = cls(**values)  # type: ignore[arg-type]
        inputs.check()
        return inputs

    def check(self) -> None:
        g = self.group_lat.shape[0]
        n = self.node_lat.shape[0]
        for name in ("group_lon", "group_country", "group_asn"):
            if getattr(self, name).shape != (g,):
                raise ValueError(f"{name} must have shape ({g},)")
        for name in NODE_FIELDS:
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} must have shape ({n},)")
        c = self.country_rtt.shape[0]
        if self.country_rtt.shape != (c, c):
            raise ValueError("country_rtt must be square")
        for name in ("group_country", "node_country"):
            values = getattr(self, name)
            if values.size and (values.min() < -1 or values.max() >= c):
                raise ValueError(f"{name} must index country_rtt or be -1")
        if not (np.isfinite(self.group_lat).all() and np.isfinite(self.group_lon).all()):
            raise ValueError("every group needs a finite location")
        if not (np.isfinite(self.node_lat).all() and np.isfinite(self.node_lon).all()):
            raise ValueError("every node needs a finite location")
        # A NaN score never enters the top-k: one bad load report would empty an answer.
        if not (np.isfinite(self.node_util).all() and (self.node_util >= 0).all()):
            raise ValueError("node_util must be finite and >= 0")
        for name in ("onnet_bonus_ms", "load_penalty_ms", "est_base_ms", "est_ms_per_km"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0")
        if self.node_asn.size and self.node_asn.min() < 1:
            raise ValueError("node ASNs must be >= 1 (ASN 0 marks clients of unknown networks)")
        if not self.node_in_pool.any():
            raise ValueError("the pool has no node")
        if ((self.node_state < 0) | (self.node_state > 2)).any():
            raise ValueError("node_state must be 0 (up), 1 (draining) or 2 (down)")
        fences = self.fence_allowed.shape[0]
        if self.fence_allowed.shape != (fences, n) or fences < 1:
            raise ValueError(f"fence_allowed must have shape (F >= 1, {n})")
        if self.group_fence.shape != (g,) or (
            g and (self.group_fence.min() < 0 or self.group_fence.max() >= fences)
        ):
            raise ValueError("group_fence must have one row of fence_allowed per group")
        if not (self.fence_allowed & self.node_in_pool).any(axis=1).all():
            raise ValueError(
                "every fence (geofence and on-net limits) must allow at least one node of the pool"
            )
        m = self.meas_node.shape[0]
        starts = self.meas_start
        if (
            starts.shape != (g + 1,)
            or starts[0] != 0
            or starts[-1] != m
            or (np.diff(starts) < 0).any()
        ):
            raise ValueError("meas_start must be a CSR index over meas_node by group")
        if self.meas_rtt.shape != (m,) or (
            m and (self.meas_node.min() < 0 or self.meas_node.max() >= n)
        ):
            raise ValueError("meas_node must index nodes and meas_rtt match it")
        if not (np.isfinite(self.meas_rtt).all() and (self.meas_rtt >= 0).all()):
            raise ValueError("meas_rtt must be finite and >= 0")


def rank_groups(inputs: RankInputs, answer_count: int) -> np.ndarray:
    """int32[G, answer_count]: best nodes per group, best first, -1 padded."""
    if answer_count < 1:
        raise ValueError("answer_count must be at least 1")
    out = np.full((inputs.group_lat.shape[0], answer_count), -1, dtype=np.int32)
    _kernels._rank_groups(
        inputs.group_lat, inputs.group_lon, inputs.group_country, inputs.group_asn, inputs.group_fence,
        inputs.node_lat, inputs.node_lon, inputs.node_country, inputs.node_asn,
        inputs.node_state, inputs.node_util, inputs.node_in_pool, inputs.fence_allowed, inputs.country_rtt,
        inputs.est_base_ms, inputs.est_ms_per_km, inputs.onnet_bonus_ms, inputs.load_penalty_ms,
        inputs.meas_start, inputs.meas_node, inputs.meas_rtt, out,
    )  # fmt: skip
    return out


@dataclass(frozen=True)
class Components:
    """Per-node score components for one group."""

    score: np.ndarray
    latency_ms: np.ndarray
    latency_source: np.ndarray  # int8: _kernels.ESTIMATED, COUNTRY_TABLE or NODE_SAMPLES
    distance_km: np.ndarray
    onnet: np.ndarray
    load_penalty_ms: np.ndarray


def group_components(inputs: RankInputs, group: int) -> Components:
    if not 0 <= group < inputs.group_lat.shape[0]:
        raise ValueError(f"group {group} out of range")
    n = inputs.node_lat.shape[0]
    out = Components(
        score=np.empty(n), latency_ms=np.empty(n), latency_source=np.empty(n, dtype=np.int8),
        distance_km=np.empty(n), onnet=np.empty(n, dtype=np.bool_), load_penalty_ms=np.empty(n),
    )  # fmt: skip
    _kernels._group_components(
        group, inputs.group_lat, inputs.group_lon, inputs.group_country, inputs.group_asn,
        inputs.node_lat, inputs.node_lon, inputs.node_country, inputs.node_asn, inputs.node_util,
        inputs.country_rtt, inputs.est_base_ms, inputs.est_ms_per_km, inputs.onnet_bonus_ms,
        inputs.load_penalty_ms, inputs.meas_start, inputs.meas_node, inputs.meas_rtt,
        out.score, out.latency_ms, out.latency_source, out.distance_km,
        out.onnet, out.load_penalty_ms,
    )  # fmt: skip
    return out
