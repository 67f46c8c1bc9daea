"""Checked entry points to the steering kernels: dtypes fixed here, never in callers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from router.steering import _kernels

# Unmeasured pairs: RTT grows about 1 ms per 100 km of fibre (light in glass, out and
# back) and real paths run about 2.5x the great circle, plus a few ms of access network.
EST_BASE_MS = 5.0
EST_MS_PER_KM = 0.025


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
    est_base_ms: float = EST_BASE_MS
    est_ms_per_km: float = EST_MS_PER_KM

    @classmethod
    def create(cls, **arrays: object) -> RankInputs:
        """Coerce dtypes and check shapes; raise ValueError on inconsistent inputs."""
        f64 = {"group_lat", "group_lon", "node_lat", "node_lon", "node_util", "country_rtt"}
        dtypes = {"group_country": np.int32, "node_country": np.int32, "group_asn": np.int64,
                  "node_asn": np.int64, "node_state": np.int8, "node_in_pool": np.bool_}  # fmt: skip
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
        for name in ("node_lon", "node_country", "node_asn", "node_state", "node_util", "node_in_pool"):
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


def rank_groups(inputs: RankInputs, answer_count: int) -> np.ndarray:
    """int32[G, answer_count]: best nodes per group, best first, -1 padded."""
    if answer_count < 1:
        raise ValueError("answer_count must be at least 1")
    out = np.full((inputs.group_lat.shape[0], answer_count), -1, dtype=np.int32)
    _kernels._rank_groups(
        inputs.group_lat, inputs.group_lon, inputs.group_country, inputs.group_asn,
        inputs.node_lat, inputs.node_lon, inputs.node_country, inputs.node_asn,
        inputs.node_state, inputs.node_util, inputs.node_in_pool, inputs.country_rtt,
        inputs.est_base_ms, inputs.est_ms_per_km, inputs.onnet_bonus_ms, inputs.load_penalty_ms, out,
    )  # fmt: skip
    return out


@dataclass(frozen=True)
class Components:
    """Per-node score components for one group."""

    score: np.ndarray
    latency_ms: np.ndarray
    measured: np.ndarray
    distance_km: np.ndarray
    onnet: np.ndarray
    load_penalty_ms: np.ndarray


def group_components(inputs: RankInputs, group: int) -> Components:
    if not 0 <= group < inputs.group_lat.shape[0]:
        raise ValueError(f"group {group} out of range")
    n = inputs.node_lat.shape[0]
    out = Components(
        score=np.empty(n), latency_ms=np.empty(n), measured=np.empty(n, dtype=np.bool_),
        distance_km=np.empty(n), onnet=np.empty(n, dtype=np.bool_), load_penalty_ms=np.empty(n),
    )  # fmt: skip
    _kernels._group_components(
        group, inputs.group_lat, inputs.group_lon, inputs.group_country, inputs.group_asn,
        inputs.node_lat, inputs.node_lon, inputs.node_country, inputs.node_asn, inputs.node_util,
        inputs.country_rtt, inputs.est_base_ms, inputs.est_ms_per_km, inputs.onnet_bonus_ms,
        inputs.load_penalty_ms, out.score, out.latency_ms, out.measured, out.distance_km,
        out.onnet, out.load_penalty_ms,
    )  # fmt: skip
    return out
