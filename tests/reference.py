"""Plain reference implementations that the numba kernels are held equal to.

Written for clarity, not speed: loops and numpy, with the same libm functions (``math``)
as the kernels so that ties resolve identically. The property tests hold each kernel
equal to its reference, and ``loadtest/bench_core.py`` times the two on the same inputs.
"""

from __future__ import annotations

import math

import numpy as np

EARTH_RADIUS_KM = 6371.0088
# The kernels and the reference must compute bit-equal floats (ties are decided on them).
RADIANS_PER_DEGREE = math.pi / 180.0


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1 = lat1 * RADIANS_PER_DEGREE
    p2 = lat2 * RADIANS_PER_DEGREE
    dp = p2 - p1
    dl = (lon2 - lon1) * RADIANS_PER_DEGREE
    # s * s, not s ** 2: CPython's ** calls pow(), which may round differently.
    half_dp = math.sin(dp / 2.0)
    half_dl = math.sin(dl / 2.0)
    a = half_dp * half_dp + math.cos(p1) * math.cos(p2) * half_dl * half_dl
    return 2.0 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, a)))


def score_matrix(inputs) -> tuple[np.ndarray, np.ndarray]:
    """(score[G, N], distance[G, N]) as defined in router.steering._kernels."""
    g_count = inputs.group_lat.shape[0]
    n_count = inputs.node_lat.shape[0]
    score = np.empty((g_count, n_count))
    dist = np.empty((g_count, n_count))
    sampled = {}
    for g in range(g_count):
        for i in range(inputs.meas_start[g], inputs.meas_start[g + 1]):
            sampled[(g, int(inputs.meas_node[i]))] = float(inputs.meas_rtt[i])
    for g in range(g_count):
        for n in range(n_count):
            d = distance_km(
                inputs.group_lat[g], inputs.group_lon[g], inputs.node_lat[n], inputs.node_lon[n]
            )
            cg, cn = inputs.group_country[g], inputs.node_country[n]
            latency = sampled.get((g, n), math.nan)
            if math.isnan(latency):
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


def eligibility(inputs) -> np.ndarray:
    """bool[F, N]: per fence, allowed pool nodes of the best health tier present."""
    out = np.zeros(inputs.fence_allowed.shape, dtype=bool)
    for f in range(out.shape[0]):
        allowed = np.flatnonzero(inputs.node_in_pool & inputs.fence_allowed[f])
        tier = inputs.node_state[allowed].min()
        out[f, allowed[inputs.node_state[allowed] == tier]] = True
    return out


def ranked_candidates(
    inputs, score: np.ndarray, dist: np.ndarray, g: int, eligible: np.ndarray
) -> np.ndarray:
    nodes = np.flatnonzero(eligible[inputs.group_fence[g]])
    # lexsort: last key is primary -> score, then distance, then node index.
    return nodes[np.lexsort((nodes, dist[g, nodes], score[g, nodes]))]


def rank_groups(inputs, answer_count: int) -> np.ndarray:
    score, dist = score_matrix(inputs)
    eligible = eligibility(inputs)
    out = np.full((score.shape[0], answer_count), -1, dtype=np.int32)
    for g in range(score.shape[0]):
        chosen = ranked_candidates(inputs, score, dist, g, eligible)[:answer_count]
        out[g, : len(chosen)] = chosen
    return out


def plan(inputs, candidates: int, used_elsewhere=None) -> dict[str, np.ndarray]:
    """The capacity-aware plan of router.steering.capacity, written out step by step.

    Returns cand_node[G, C], allocs [(group, node, Gbps)] in placement order, overflow[G]
    and load[N], the same quantities as ``PolicyPlan``.
    """
    r = inputs.rank
    score, dist = score_matrix(r)
    eligible = eligibility(r)
    g_count, n_count = score.shape
    cand = np.full((g_count, candidates), -1, dtype=np.int32)
    for g in range(g_count):
        chosen = ranked_candidates(r, score, dist, g, eligible)[:candidates]
        cand[g, : len(chosen)] = chosen
    allocs: list[tuple[int, int, float]] = []
    left = inputs.group_demand.copy()
    used = np.zeros(n_count) if used_elsewhere is None else used_elsewhere.copy()
    any_eligible = eligible.any(axis=0)
    for limit in (inputs.headroom, 1.0):
        if not left.any():
            break
        room = np.where(any_eligible, np.maximum(inputs.node_capacity * limit - used, 0.0), 0.0)
        start = room.copy()
        fenced = [g for g in range(g_count) if r.group_fence[g] != 0]
        others = [g for g in range(g_count) if r.group_fence[g] == 0]
        for cohort in (fenced, others):  # fenced groups first
            _fill(cohort, allocs, left, room, r, score, dist, eligible)
        used = used + (start - room)
    load = np.zeros(n_count)
    for g in range(g_count):
        if left[g] > 0:
            load[cand[g, 0]] += left[g]
    for _g, n, take in allocs:
        load[n] += take
    return {"cand_node": cand, "allocs": allocs, "overflow": left, "load": load}


def _fill(cohort, allocs, left, room, r, score, dist, eligible) -> None:
    """Cheapest next edge first over every short group's nodes with room. Groups of one
    location without on-net nodes or samples fill together (in group order)."""
    spillers: dict[object, list[int]] = {}
    for g in cohort:
        if left[g] <= 0:
            continue
        special = (
            bool((r.node_asn == r.group_asn[g]).any()) or r.meas_start[g + 1] > r.meas_start[g]
        )
        key = (
            ("group", g)
            if special
            else ("loc", r.group_lat[g], r.group_lon[g], r.group_country[g], r.group_fence[g])
        )
        spillers.setdefault(key, []).append(g)
    while True:
        best = None
        for members in spillers.values():
            short = [g for g in members if left[g] > 0]
            if not short:
                continue
            order = ranked_candidates(r, score, dist, short[0], eligible)
            room_nodes = [n for n in order if room[n] > 0]
            if room_nodes:
                n = room_nodes[0]
                candidate = (score[short[0], n], short[0], n, short)
                if best is None or candidate[:2] < best[:2]:
                    best = candidate
        if best is None:
            return
        _, _, n, short = best
        for g in short:
            if room[n] <= 0:
                break
            take = min(left[g], room[n])
            allocs.append((g, n, take))
            left[g] = 0.0 if take >= left[g] else left[g] - take
            room[n] = 0.0 if take >= room[n] else room[n] - take
