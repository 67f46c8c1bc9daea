"""Numba kernels of the steering core. Arrays in, arrays out; no Python objects.

Score of node n for client group g (lower is better)::

    latency_ms(g, n)                         measured country-to-country RTT when known,
                                             else est_base_ms + est_ms_per_km * distance
    - onnet_bonus_ms   if asn(g) == asn(n)   the node sits inside the client's own ISP
    + load_penalty_ms * util(n) ** 2         util = reported load / capacity

Health decides the candidates before the score does: up nodes only; if a pool has no up
node, its draining nodes; if none of those either, every node of the pool (fail open:
an answer that might work beats an empty one). Ties on score go to the nearer node, then
to the lower node index. Every kernel has a plain reference in ``tests/reference.py``.
"""

import math

import numpy as np
from numba import njit

from router._jit import JIT_OPTIONS

EARTH_RADIUS_KM = 6371.0088
UP = 0
DRAINING = 1
DOWN = 2


@njit(**JIT_OPTIONS)
def _distance_km(lat1, lon1, lat2, lon2):
    # Haversine with math.* (libm), the same functions the reference uses.
    p1 = math.radians(lat1)
    p2 = math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2.0) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2.0) ** 2
    return 2.0 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, a)))


@njit(**JIT_OPTIONS)
def _pair(g, n, group_lat, group_lon, group_country, group_asn,
          node_lat, node_lon, node_country, node_asn, node_util,
          country_rtt, est_base_ms, est_ms_per_km, onnet_bonus_ms, load_penalty_ms):  # fmt: skip
    # Returns (score, latency_ms, measured, distance_km, onnet, load_penalty_ms).
    distance = _distance_km(group_lat[g], group_lon[g], node_lat[n], node_lon[n])
    latency = np.nan
    cg = group_country[g]
    cn = node_country[n]
    if cg >= 0 and cn >= 0:
        latency = country_rtt[cg, cn]
    measured = not math.isnan(latency)
    if not measured:
        latency = est_base_ms + est_ms_per_km * distance
    onnet = group_asn[g] == node_asn[n]
    util = node_util[n]
    penalty = load_penalty_ms * util * util
    score = latency + penalty
    if onnet:
        score = score - onnet_bonus_ms
    return score, latency, measured, distance, onnet, penalty


@njit(**JIT_OPTIONS)
def _rank_groups(group_lat, group_lon, group_country, group_asn,
                 node_lat, node_lon, node_country, node_asn, node_state, node_util, node_in_pool,
                 country_rtt, est_base_ms, est_ms_per_km, onnet_bonus_ms, load_penalty_ms,
                 out_nodes):  # fmt: skip
    """Pick the best nodes for every client group.

    Parameters
    ----------
    group_lat, group_lon : float64[G]
        Client group location (degrees); must be finite.
    group_country : int32[G]
        Row of ``country_rtt`` for the group, -1 when unknown.
    group_asn : int64[G]
        The group's ASN (0 = unknown, matches no node).
    node_lat, node_lon : float64[N]
        Node location (degrees).
    node_country : int32[N]
        Column of ``country_rtt`` for the node, -1 when unknown.
    node_asn : int64[N]
        ASN the node is embedded in.
    node_state : int8[N]
        0 up, 1 draining, 2 down.
    node_util : float64[N]
        Reported load divided by capacity (0 when unknown).
    node_in_pool : bool[N]
        Nodes this policy may answer with; at least one must be set.
    country_rtt : float64[C, C]
        Measured RTT in ms between countries, NaN where not measured.
    est_base_ms, est_ms_per_km : float64
        Distance-based latency estimate for unmeasured pairs.
    onnet_bonus_ms, load_penalty_ms : float64
        Policy weights.
    out_nodes : int32[G, K]
        Output: node indexes, best first, -1 where fewer than K candidates.
    """
    n_groups = group_lat.shape[0]
    n_nodes = node_lat.shape[0]
    k = out_nodes.shape[1]
    best_tier = DOWN
    for n in range(n_nodes):
        if node_in_pool[n] and node_state[n] < best_tier:
            best_tier = node_state[n]
    top_score = np.empty(k, dtype=np.float64)
    top_dist = np.empty(k, dtype=np.float64)
    top_node = np.empty(k, dtype=np.int32)
    for g in range(n_groups):
        top_score[:] = np.inf
        top_dist[:] = np.inf
        top_node[:] = -1
        for n in range(n_nodes):
            if not node_in_pool[n] or node_state[n] != best_tier:
                continue
            score, _lat, _meas, dist, _onnet, _pen = _pair(
                g, n, group_lat, group_lon, group_country, group_asn,
                node_lat, node_lon, node_country, node_asn, node_util,
                country_rtt, est_base_ms, est_ms_per_km, onnet_bonus_ms, load_penalty_ms,
            )  # fmt: skip
            # Insert into the sorted top-k; nodes come in index order, so on a full tie
            # (score and distance) the earlier index keeps its place.
            pos = k
            while pos > 0 and (
                score < top_score[pos - 1] or (score == top_score[pos - 1] and dist < top_dist[pos - 1])
            ):
                pos -= 1
            if pos == k:
                continue
            for j in range(k - 1, pos, -1):
                top_score[j] = top_score[j - 1]
                top_dist[j] = top_dist[j - 1]
                top_node[j] = top_node[j - 1]
            top_score[pos] = score
            top_dist[pos] = dist
            top_node[pos] = n
        for j in range(k):
            out_nodes[g, j] = top_node[j]


@njit(**JIT_OPTIONS)
def _group_components(g, group_lat, group_lon, group_country, group_asn,
                      node_lat, node_lon, node_country, node_asn, node_util,
                      country_rtt, est_base_ms, est_ms_per_km, onnet_bonus_ms, load_penalty_ms,
                      out_score, out_latency, out_measured, out_distance, out_onnet, out_penalty):  # fmt: skip
    """Score components of every node for one group (for ``router explain``).

    Parameters
    ----------
    g : int
        Group index.
    group_*, node_*, country_rtt, est_*, onnet_bonus_ms, load_penalty_ms
        As for ``_rank_groups``.
    out_score, out_latency, out_distance, out_penalty : float64[N]
        Output: total score, latency (ms), distance (km), load penalty (ms).
    out_measured, out_onnet : bool[N]
        Output: latency was measured (not estimated); node is on-net for the group.
    """
    for n in range(node_lat.shape[0]):
        score, latency, measured, distance, onnet, penalty = _pair(
            g, n, group_lat, group_lon, group_country, group_asn,
            node_lat, node_lon, node_country, node_asn, node_util,
            country_rtt, est_base_ms, est_ms_per_km, onnet_bonus_ms, load_penalty_ms,
        )  # fmt: skip
        out_score[n] = score
        out_latency[n] = latency
        out_measured[n] = measured
        out_distance[n] = distance
        out_onnet[n] = onnet
        out_penalty[n] = penalty


KERNELS = (_rank_groups, _group_components)
