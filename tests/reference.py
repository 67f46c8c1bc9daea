"""Plain reference implementations that the numba kernels are held equal to.

Written for clarity, not speed: loops and numpy, with the same libm functions (``math``)
as the kernels so that ties resolve identically.
"""

from __future__ import annotations

import math

import numpy as np

EARTH_RADIUS_KM = 6371.0088


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1 = math.radians(lat1)
    p2 = math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2.0) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2.0) ** 2
    return 2.0 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, a)))


def score_matrix(inputs) -> tuple[np.ndarray, np.ndarray]:
    """(score[G, N], distance[G, N]) as defined in router.steering._kernels."""
    g_count = inputs.group_lat.shape[0]
    n_count = inputs.node_lat.shape[0]
    score = np.empty((g_count, n_count))
    dist = np.empty((g_count, n_count))
    for g in range(g_count):
        for n in range(n_count):
            d = distance_km(inputs.group_lat[g], inputs.group_lon[g], inputs.node_lat[n], inputs.node_lon[n])
            cg, cn = inputs.group_country[g], inputs.node_country[n]
            latency = inputs.country_rtt[cg, cn] if cg >= 0 and cn >= 0 else math.nan
            if math.isnan(latency):
                latency = inputs.est_base_ms + inputs.est_ms_per_km * d
            util = inputs.node_util[n]
            s = latency + inputs.load_penalty_ms * util * util
            if inputs.group_asn[g] == inputs.node_asn[n]:
                s = s - inputs.onnet_bonus_ms
            score[g, n] = s
            dist[g, n] = d
    return score, dist


def rank_groups(inputs, answer_count: int) -> np.ndarray:
    score, dist = score_matrix(inputs)
    pool = np.flatnonzero(inputs.node_in_pool)
    best_tier = inputs.node_state[pool].min()
    candidates = pool[inputs.node_state[pool] == best_tier]
    out = np.full((score.shape[0], answer_count), -1, dtype=np.int32)
    for g in range(score.shape[0]):
        # lexsort: last key is primary -> score, then distance, then node index.
        order = np.lexsort((candidates, dist[g, candidates], score[g, candidates]))
        chosen = candidates[order][:answer_count]
        out[g, : len(chosen)] = chosen
    return out
