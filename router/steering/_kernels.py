"""Numba kernels of the steering core. Arrays in, arrays out; no Python objects.

Score of node n for client group g (lower is better)::

    latency_ms(g, n)                         the node's own RTT samples to the group when
                                             fresh, else the measured country-to-country
                                             RTT, else est_base_ms + est_ms_per_km * distance
    - onnet_bonus_ms   if asn(g) == asn(n)   the node sits inside the client's own ISP
    + load_penalty_ms * util(n) ** 2         util = reported load / capacity

Eligibility decides the candidates before the score does. A group may use the nodes of
its policy's pool that its geofence allows (fence 0 allows every node). Among those: up
nodes only; if there is no up node, the draining ones; if none of those either, every
allowed node (fail open inside the fence: an answer that might work beats an empty one,
and a fence is never crossed). Ties on score go to the nearer node, then to the lower
node index. Every kernel has a plain reference in ``tests/reference.py``; the ranking
kernels also a vectorised numpy one running the same algorithm in
``tests/reference_numpy.py``, which ``loadtest/same_algorithm.py`` times them against.
"""

import math

import numpy as np
from numba import njit

from router._jit import JIT_OPTIONS

EARTH_RADIUS_KM = 6371.0088
# The kernels and the reference must compute bit-equal floats (ties are decided on them).
RADIANS_PER_DEGREE = math.pi / 180.0
UP = 0
DRAINING = 1
DOWN = 2
# Where a latency came from (explain shows it).
ESTIMATED = 0
COUNTRY_TABLE = 1
NODE_SAMPLES = 2


@njit(**JIT_OPTIONS)
def _distance_km(lat1, lon1, lat2, lon2):
    # Haversine with math.* (libm), the same functions the reference uses.
    p1 = lat1 * RADIANS_PER_DEGREE
    p2 = lat2 * RADIANS_PER_DEGREE
    dp = p2 - p1
    dl = (lon2 - lon1) * RADIANS_PER_DEGREE
    # s * s, not s ** 2: CPython's ** calls pow(), which may round differently.
    half_dp = math.sin(dp / 2.0)
    half_dl = math.sin(dl / 2.0)
    a = half_dp * half_dp + math.cos(p1) * math.cos(p2) * half_dl * half_dl
    return 2.0 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, a)))


@njit(**JIT_OPTIONS)
def _base_latency(cg, cn, distance, country_rtt, est_base_ms, est_ms_per_km):
    # Returns (latency_ms, source) from the country table or the distance estimate.
    if cg >= 0 and cn >= 0:
        latency = country_rtt[cg, cn]
        if not math.isnan(latency):
            return latency, COUNTRY_TABLE
    return est_base_ms + est_ms_per_km * distance, ESTIMATED


@njit(**JIT_OPTIONS)
def _sampled_latency(g, n, meas_start, meas_node, meas_rtt):
    # The node's fused RTT samples to the group (CSR by group), NaN when there are none.
    for i in range(meas_start[g], meas_start[g + 1]):
        if meas_node[i] == n:
            return meas_rtt[i]
    return np.nan


@njit(**JIT_OPTIONS)
def _pair(g, n, ctx):
    # Returns (score, latency_ms, source, distance_km, onnet, load_penalty_ms). ctx is the
    # tuple below, packed once by each kernel. Passed whole, not as *ctx: the star-args call
    # made the full scan 50 % slower (measured), and this runs once per (group, node) pair.
    (group_lat, group_lon, group_country, group_asn, node_lat, node_lon, node_country, node_asn, node_util,
     country_rtt, est_base_ms, est_ms_per_km, onnet_bonus_ms, load_penalty_ms, meas_start, meas_node, meas_rtt) = ctx  # fmt: skip
    distance = _distance_km(group_lat[g], group_lon[g], node_lat[n], node_lon[n])
    latency = _sampled_latency(g, n, meas_start, meas_node, meas_rtt)
    source = NODE_SAMPLES
    if math.isnan(latency):
        latency, source = _base_latency(group_country[g], node_country[n], distance, country_rtt,
                                        est_base_ms, est_ms_per_km)  # fmt: skip
    onnet = group_asn[g] == node_asn[n]
    util = node_util[n]
    penalty = load_penalty_ms * util * util
    score = latency + penalty
    if onnet:
        score = score - onnet_bonus_ms
    return score, latency, source, distance, onnet, penalty


@njit(**JIT_OPTIONS)
def _eligibility(node_state, node_in_pool, fence_allowed, out_eligible):
    """Which nodes each fence's groups may be answered with (the docstring's tiers).

    fence_allowed : bool[F, N]; out_eligible : bool[F, N] output.
    """
    n_fences, n_nodes = fence_allowed.shape
    for f in range(n_fences):
        tier = DOWN
        for n in range(n_nodes):
            if node_in_pool[n] and fence_allowed[f, n] and node_state[n] < tier:
                tier = node_state[n]
        for n in range(n_nodes):
            out_eligible[f, n] = node_in_pool[n] and fence_allowed[f, n] and node_state[n] == tier


@njit(**JIT_OPTIONS)
def _before(score_a, dist_a, node_a, score_b, dist_b, node_b):
    # The ranking order: score, then distance, then node index.
    if score_a != score_b:
        return score_a < score_b
    if dist_a != dist_b:
        return dist_a < dist_b
    return node_a < node_b


@njit(**JIT_OPTIONS)
def _insert(top_score, top_dist, top_node, score, dist, n):
    # Insert into a sorted top-k held in three rows; no-op when it does not make the cut.
    k = top_node.shape[0]
    pos = k
    while pos > 0 and (top_node[pos - 1] < 0 or _before(score, dist, n, top_score[pos - 1], top_dist[pos - 1],
                                                        top_node[pos - 1])):  # fmt: skip
        pos -= 1
    if pos == k:
        return
    for j in range(k - 1, pos, -1):
        top_score[j] = top_score[j - 1]
        top_dist[j] = top_dist[j - 1]
        top_node[j] = top_node[j - 1]
    top_score[pos] = score
    top_dist[pos] = dist
    top_node[pos] = n


# The chord c between two points of the unit sphere is at most their arc: a great-circle
# distance is at least EARTH_RADIUS_KM * c. Computed in floats, c and the haversine each
# err by far less than these margins (about 1e-7 km, most near antipodes), so the bound
# below stays under the kernel's own distance, and a score bound from it under the score.
CHORD_LOW = 1.0 - 1e-9
CHORD_SLACK_KM = 0.01


@njit(**JIT_OPTIONS)
def _node_terms(node_lat, node_util, load_penalty_ms, out_rad, out_cos, out_penalty):
    # What every pair would recompute of a node, once per kernel call: its latitude in
    # radians and cosine (_distance_km's p2 and cos(p2)) and its load penalty. The same
    # operations as per pair, so the same bits.
    for n in range(node_lat.shape[0]):
        rad = node_lat[n] * RADIANS_PER_DEGREE
        out_rad[n] = rad
        out_cos[n] = math.cos(rad)
        util = node_util[n]
        out_penalty[n] = load_penalty_ms * util * util


@njit(**JIT_OPTIONS)
def _unit_vectors(lat, lon, out_x, out_y, out_z):
    # Points on the unit sphere: their chord bounds the great-circle distance from below.
    for i in range(lat.shape[0]):
        p = lat[i] * RADIANS_PER_DEGREE
        lam = lon[i] * RADIANS_PER_DEGREE
        out_x[i] = math.cos(p) * math.cos(lam)
        out_y[i] = math.cos(p) * math.sin(lam)
        out_z[i] = math.sin(p)


@njit(**JIT_OPTIONS)
def _rows_listing_any(table, skip, flagged, out_rows):
    # The rows of table (int32[R, K], -1 padded) not skipped that hold a flagged node, in
    # order; returns how many. A row stops at its first hit.
    count = 0
    for r in range(table.shape[0]):
        if skip[r]:
            continue
        for j in range(table.shape[1]):
            n = table[r, j]
            if n >= 0 and flagged[n]:
                out_rows[count] = r
                count += 1
                break
    return count


@njit(**JIT_OPTIONS)
def _eligible_lists(eligible, out_nodes, out_count):
    # Each fence's eligible nodes in index order, so that scans touch only those.
    for f in range(eligible.shape[0]):
        count = 0
        for n in range(eligible.shape[1]):
            if eligible[f, n]:
                out_nodes[f, count] = n
                count += 1
        out_count[f] = count


@njit(**JIT_OPTIONS)
def _distance_from(p1, lon1, cos1, n, node_rad, node_lon, node_cos):
    # _distance_km(lat1, lon1, node n) given p1 = lat1 * RADIANS_PER_DEGREE and cos1 =
    # cos(p1): the same float operations in the same order, so the same result.
    dp = node_rad[n] - p1
    dl = (node_lon[n] - lon1) * RADIANS_PER_DEGREE
    half_dp = math.sin(dp / 2.0)
    half_dl = math.sin(dl / 2.0)
    a = half_dp * half_dp + cos1 * node_cos[n] * half_dl * half_dl
    return 2.0 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, a)))


@njit(**JIT_OPTIONS)
def _chord_low_km(px, py, pz, n, node_x, node_y, node_z):
    # A bound below _distance_from's result for node n, from the unit vectors (CHORD_*).
    dx = px - node_x[n]
    dy = py - node_y[n]
    dz = pz - node_z[n]
    return EARTH_RADIUS_KM * math.sqrt(dx * dx + dy * dy + dz * dz) * CHORD_LOW - CHORD_SLACK_KM


@njit(**JIT_OPTIONS)
def _load_samples(g, meas_start, meas_node, meas_rtt, sampled):
    # The group's RTT samples into sampled[N] (NaN elsewhere): one read per pair instead of
    # a search of the group's samples. Backwards, so the first sample of a node wins, as
    # _sampled_latency reads it. Returns whether the group has any.
    for i in range(meas_start[g + 1] - 1, meas_start[g] - 1, -1):
        sampled[meas_node[i]] = meas_rtt[i]
    return meas_start[g + 1] > meas_start[g]


@njit(**JIT_OPTIONS)
def _clear_samples(g, meas_start, meas_node, sampled):
    for i in range(meas_start[g], meas_start[g + 1]):
        sampled[meas_node[i]] = np.nan


@njit(**JIT_OPTIONS)
def _scan(p1, lon1, cos1, country, asn, onnet_bonus_ms, has_samples, sampled, nodes, count, terms,
          country_rtt, est_base_ms, est_ms_per_km, top_score, top_dist, top_node):  # fmt: skip
    """Best nodes of ``nodes[:count]`` seen from one place, into top_* (cleared here).

    The score is _pair's (a place without samples and with ``onnet_bonus_ms`` 0 gets the
    plain score every group there sees). Two passes, so that trigonometry is spent only on nodes that may
    make the cut. The first bounds every node's score from below without trigonometry
    (where the score needs a distance, a chord bound below it stands in: every float step
    after it is monotonic, so the score from it is at most the score) and scores the k
    nodes of lowest bound exactly: the worst of those k is at least the k-th best score,
    so a node whose bound exceeds it is out. The second scores the others exactly into
    the top-k; a distance is computed only when the score needs it or the node makes the
    cut, and a node tied with the last entry whose chord bound is beyond that entry's
    distance stays out (ties go to the nearer).
    terms : from _scan_setup; sampled : float64[N] from _load_samples when ``has_samples``.
    """
    # Unpacked once: a tuple of arrays passed per pair costs reference counting per pair.
    node_rad, node_lon, node_cos, node_country, node_asn, penalty, node_x, node_y, node_z, bounds = terms  # fmt: skip
    last = top_node.shape[0] - 1
    lam = lon1 * RADIANS_PER_DEGREE
    px = cos1 * math.cos(lam)
    py = cos1 * math.sin(lam)
    pz = math.sin(p1)
    # Pass 1: bounds, and the k lowest (held in top_*, ties in any order).
    top_score[:] = np.inf
    top_node[:] = -1
    for i in range(count):
        n = nodes[i]
        latency = np.nan
        if has_samples:
            latency = sampled[n]
        if math.isnan(latency):
            cn = node_country[n]
            if country >= 0 and cn >= 0:
                latency = country_rtt[country, cn]
            if math.isnan(latency):
                low = _chord_low_km(px, py, pz, n, node_x, node_y, node_z)
                latency = est_base_ms + est_ms_per_km * max(low, 0.0)
        bound = latency + penalty[n]
        if asn == node_asn[n]:
            bound = bound - onnet_bonus_ms
        bounds[i] = bound
        if bound < top_score[last]:
            _insert(top_score, top_dist, top_node, bound, 0.0, n)
    cut = np.inf
    if top_node[last] >= 0:
        cut = -np.inf
        for j in range(last + 1):
            n = top_node[j]
            score, _dist = _exact_score(n, p1, lon1, cos1, country, asn, onnet_bonus_ms, has_samples, sampled,
                                        node_rad, node_lon, node_cos, node_country, node_asn, penalty,
                                        country_rtt, est_base_ms, est_ms_per_km)  # fmt: skip
            cut = max(cut, score)
    # Pass 2: exact scores of the nodes that may make the cut.
    top_score[:] = np.inf
    top_dist[:] = np.inf
    top_node[:] = -1
    for i in range(count):
        if bounds[i] > cut or bounds[i] > top_score[last]:
            continue
        n = nodes[i]
        score, dist = _exact_score(n, p1, lon1, cos1, country, asn, onnet_bonus_ms, has_samples, sampled,
                                   node_rad, node_lon, node_cos, node_country, node_asn, penalty,
                                   country_rtt, est_base_ms, est_ms_per_km)  # fmt: skip
        if score > top_score[last]:
            continue  # cannot make the cut (an empty slot holds inf)
        if dist < 0.0:
            # Country RTTs make ties common (a country's nodes score alike when their loads
            # do): one tied with the last entry and surely farther stays out.
            if score == top_score[last] and (
                _chord_low_km(px, py, pz, n, node_x, node_y, node_z) > top_dist[last]
            ):
                continue
            dist = _distance_from(p1, lon1, cos1, n, node_rad, node_lon, node_cos)
        _insert(top_score, top_dist, top_node, score, dist, n)


@njit(**JIT_OPTIONS)
def _exact_score(n, p1, lon1, cos1, country, asn, onnet_bonus_ms, has_samples, sampled,
                 node_rad, node_lon, node_cos, node_country, node_asn, penalty,
                 country_rtt, est_base_ms, est_ms_per_km):  # fmt: skip
    # (score, distance) of node n seen from one place: _pair's score; the distance is -1
    # when the score did not need it.
    latency = np.nan
    if has_samples:
        latency = sampled[n]
    dist = -1.0
    if math.isnan(latency):
        cn = node_country[n]
        if country >= 0 and cn >= 0:
            latency = country_rtt[country, cn]
        if math.isnan(latency):
            dist = _distance_from(p1, lon1, cos1, n, node_rad, node_lon, node_cos)
            latency = est_base_ms + est_ms_per_km * dist
    score = latency + penalty[n]
    if asn == node_asn[n]:
        score = score - onnet_bonus_ms
    return score, dist


@njit(**JIT_OPTIONS)
def _scan_setup(node_lat, node_lon, node_country, node_asn, node_util, load_penalty_ms, eligible):
    # Per kernel call: the node terms of _scan and each fence's eligible nodes.
    n_nodes = node_lat.shape[0]
    node_rad = np.empty(n_nodes, dtype=np.float64)
    node_cos = np.empty(n_nodes, dtype=np.float64)
    penalty = np.empty(n_nodes, dtype=np.float64)
    _node_terms(node_lat, node_util, load_penalty_ms, node_rad, node_cos, penalty)
    elig_nodes = np.empty(eligible.shape, dtype=np.int64)
    elig_count = np.empty(eligible.shape[0], dtype=np.int64)
    _eligible_lists(eligible, elig_nodes, elig_count)
    node_x = np.empty(n_nodes, dtype=np.float64)
    node_y = np.empty(n_nodes, dtype=np.float64)
    node_z = np.empty(n_nodes, dtype=np.float64)
    _unit_vectors(node_lat, node_lon, node_x, node_y, node_z)
    bounds = np.empty(n_nodes, dtype=np.float64)  # _scan's scratch
    terms = (node_rad, node_lon, node_cos, node_country, node_asn, penalty, node_x, node_y, node_z, bounds)  # fmt: skip
    return terms, elig_nodes, elig_count


@njit(**JIT_OPTIONS)
def _rank_groups(group_lat, group_lon, group_country, group_asn, group_fence,
                 node_lat, node_lon, node_country, node_asn, node_state, node_util, node_in_pool,
                 fence_allowed, country_rtt, est_base_ms, est_ms_per_km, onnet_bonus_ms, load_penalty_ms,
                 meas_start, meas_node, meas_rtt, out_nodes):  # fmt: skip
    """Pick the best nodes for every client group by scanning every node.

    Parameters
    ----------
    group_lat, group_lon : float64[G]
        Client group location (degrees); must be finite.
    group_country : int32[G]
        Row of ``country_rtt`` for the group, -1 when unknown.
    group_asn : int64[G]
        The group's ASN (0 = unknown, matches no node).
    group_fence : int32[G]
        Row of ``fence_allowed`` that limits the group's nodes (0: no fence).
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
    fence_allowed : bool[F, N]
        Nodes each geofence allows; row 0 allows all.
    country_rtt : float64[C, C]
        Measured RTT in ms between countries, NaN where not measured.
    est_base_ms, est_ms_per_km : float64
        Distance-based latency estimate for unmeasured pairs.
    onnet_bonus_ms, load_penalty_ms : float64
        Policy weights.
    meas_start : int64[G + 1]; meas_node : int32[M]; meas_rtt : float64[M]
        Fused RTT samples of nodes to groups (CSR by group); they override the table.
    out_nodes : int32[G, K]
        Output: node indexes, best first, -1 where fewer than K candidates.
    """
    eligible = np.empty(fence_allowed.shape, dtype=np.bool_)
    _eligibility(node_state, node_in_pool, fence_allowed, eligible)
    terms, elig_nodes, elig_count = _scan_setup(node_lat, node_lon, node_country, node_asn, node_util,
                                                load_penalty_ms, eligible)  # fmt: skip
    sampled = np.full(node_lat.shape[0], np.nan)
    k = out_nodes.shape[1]
    top_score = np.empty(k, dtype=np.float64)
    top_dist = np.empty(k, dtype=np.float64)
    for g in range(group_lat.shape[0]):
        f = group_fence[g]
        has_samples = _load_samples(g, meas_start, meas_node, meas_rtt, sampled)
        p1 = group_lat[g] * RADIANS_PER_DEGREE
        _scan(p1, group_lon[g], math.cos(p1), group_country[g], group_asn[g], onnet_bonus_ms, has_samples,
              sampled, elig_nodes[f], elig_count[f], terms, country_rtt, est_base_ms, est_ms_per_km,
              top_score, top_dist, out_nodes[g])  # fmt: skip
        if has_samples:
            _clear_samples(g, meas_start, meas_node, sampled)


@njit(**JIT_OPTIONS)
def _group_components(g, group_lat, group_lon, group_country, group_asn,
                      node_lat, node_lon, node_country, node_asn, node_util,
                      country_rtt, est_base_ms, est_ms_per_km, onnet_bonus_ms, load_penalty_ms,
                      meas_start, meas_node, meas_rtt,
                      out_score, out_latency, out_source, out_distance, out_onnet, out_penalty):  # fmt: skip
    """Score components of every node for one group (for ``router explain``).

    Parameters
    ----------
    g : int
        Group index.
    group_*, node_*, country_rtt, est_*, onnet_bonus_ms, load_penalty_ms, meas_*
        As for ``_rank_groups``.
    out_score, out_latency, out_distance, out_penalty : float64[N]
        Output: total score, latency (ms), distance (km), load penalty (ms).
    out_source : int8[N]
        Output: ESTIMATED, COUNTRY_TABLE or NODE_SAMPLES.
    out_onnet : bool[N]
        Output: node is on-net for the group.
    """
    ctx = (
        group_lat,
        group_lon,
        group_country,
        group_asn,
        node_lat,
        node_lon,
        node_country,
        node_asn,
        node_util,
        country_rtt,
        est_base_ms,
        est_ms_per_km,
        onnet_bonus_ms,
        load_penalty_ms,
        meas_start,
        meas_node,
        meas_rtt,
    )
    for n in range(node_lat.shape[0]):
        score, latency, source, distance, onnet, penalty = _pair(g, n, ctx)
        out_score[n] = score
        out_latency[n] = latency
        out_source[n] = source
        out_distance[n] = distance
        out_onnet[n] = onnet
        out_penalty[n] = penalty


# --- capacity-aware planning -----------------------------------------------------------------
# At internet scale (10^5 groups x 10^3 nodes) a full scan per group is too slow for a
# sub-second recompute. Groups share locations (country representative points), and
# without on-net or sampled nodes a group's score of a node is its location's score. So
# each location ranks its top K_LOC nodes once; a group's candidates are those plus its
# on-net and sampled nodes, scored exactly. A node outside that set scores at least the
# location's K-th best, so the group's first entries are exact as long as enough
# candidates rank at or before that K-th entry; where sampled RTTs push them behind it,
# the group falls back to a full scan.


@njit(**JIT_OPTIONS)
def _location_topk(locs, loc_lat, loc_lon, loc_country, loc_fence,
                   node_lat, node_lon, node_country, node_util, eligible,
                   country_rtt, est_base_ms, est_ms_per_km, load_penalty_ms,
                   out_node, out_score, out_dist):  # fmt: skip
    """Best eligible nodes of each location in ``locs`` (score without on-net or samples).

    locs : int32[S] locations to (re)compute; loc_* : per location [L];
    eligible : bool[F, N] from ``_eligibility``; out_* : [L, K], rows of ``locs`` written.
    """
    terms, elig_nodes, elig_count = _scan_setup(node_lat, node_lon, node_country, np.zeros(node_lat.shape[0], dtype=np.int64),
                                                node_util, load_penalty_ms, eligible)  # fmt: skip
    no_samples = np.empty(0, dtype=np.float64)
    for i in range(locs.shape[0]):
        loc = locs[i]
        f = loc_fence[loc]
        p1 = loc_lat[loc] * RADIANS_PER_DEGREE
        # No on-net bonus and no samples: the score every group of the location sees.
        _scan(p1, loc_lon[loc], math.cos(p1), loc_country[loc], -1, 0.0, False, no_samples,
              elig_nodes[f], elig_count[f], terms, country_rtt, est_base_ms, est_ms_per_km,
              out_score[loc], out_dist[loc], out_node[loc])  # fmt: skip


@njit(**JIT_OPTIONS)
def _group_candidates(groups, group_lat, group_lon, group_country, group_asn, group_fence, group_loc,
                      loc_node, loc_score, loc_dist, onnet_asn, onnet_start, onnet_node,
                      node_lat, node_lon, node_country, node_asn, node_util, eligible,
                      country_rtt, est_base_ms, est_ms_per_km, onnet_bonus_ms, load_penalty_ms,
                      meas_start, meas_node, meas_rtt, out_node, out_score, out_dist):  # fmt: skip
    """Each group's best C eligible nodes, exact, ranked as ``_rank_groups`` ranks.

    groups : int32[S] groups to (re)compute; loc_* : ``_location_topk`` output [L, K];
    onnet_asn : int64[A] sorted, onnet_start : int64[A + 1], onnet_node : int32[...]:
    the nodes of each ASN; out_* : [G, C] with C <= K, rows of ``groups`` written.
    Returns the number of groups that needed a full scan.
    """
    n_nodes = node_lat.shape[0]
    terms, elig_nodes, elig_count = _scan_setup(node_lat, node_lon, node_country, node_asn, node_util,
                                                load_penalty_ms, eligible)  # fmt: skip
    sampled = np.full(n_nodes, np.nan)
    seen = np.zeros(n_nodes, dtype=np.bool_)
    cand = np.empty(n_nodes, dtype=np.int64)
    k_loc = loc_node.shape[1]
    c = out_node.shape[1]
    full_scans = 0
    for i in range(groups.shape[0]):
        g = groups[i]
        loc = group_loc[g]
        f = group_fence[g]
        row_score = out_score[g]
        row_dist = out_dist[g]
        row_node = out_node[g]
        a = np.searchsorted(onnet_asn, group_asn[g])
        has_onnet = a < onnet_asn.shape[0] and onnet_asn[a] == group_asn[g]
        if not has_onnet and meas_start[g + 1] == meas_start[g]:
            # Every node scores as seen from the location: the head of its list is the
            # group's exact candidates (what inserting the list into a top-C keeps).
            for j in range(c):
                row_node[j] = loc_node[loc, j]
                row_score[j] = loc_score[loc, j]
                row_dist[j] = loc_dist[loc, j]
            continue
        # Candidates, each once: the location's list, the group's sampled nodes and its
        # on-net nodes (those rescored with the bonus, so left out of the other two).
        has_samples = _load_samples(g, meas_start, meas_node, meas_rtt, sampled)
        allowed = eligible[f]
        count = 0
        for j in range(k_loc):
            n = loc_node[loc, j]
            if n < 0:
                break
            seen[n] = True
            if has_onnet and node_asn[n] == group_asn[g]:
                continue
            cand[count] = n
            count += 1
        for m in range(meas_start[g], meas_start[g + 1]):
            n = meas_node[m]
            if seen[n] or not allowed[n] or (has_onnet and node_asn[n] == group_asn[g]):
                continue
            seen[n] = True
            cand[count] = n
            count += 1
        if has_onnet:
            for j in range(onnet_start[a], onnet_start[a + 1]):
                n = onnet_node[j]
                if allowed[n]:
                    cand[count] = n
                    count += 1
        p1 = group_lat[g] * RADIANS_PER_DEGREE
        cos1 = math.cos(p1)
        _scan(p1, group_lon[g], cos1, group_country[g], group_asn[g], onnet_bonus_ms, has_samples, sampled,
              cand, count, terms, country_rtt, est_base_ms, est_ms_per_km, row_score, row_dist, row_node)  # fmt: skip
        for j in range(k_loc):
            n = loc_node[loc, j]
            if n < 0:
                break
            seen[n] = False
        for m in range(meas_start[g], meas_start[g + 1]):
            seen[meas_node[m]] = False
        # Exact when the location list held every eligible node, or when every output
        # entry ranks at or before the location's last entry (nothing unseen beats it).
        last = loc_node[loc, k_loc - 1]
        if last >= 0:
            exact = True
            for j in range(c):
                if row_node[j] < 0 or _before(loc_score[loc, k_loc - 1], loc_dist[loc, k_loc - 1], last,
                                              row_score[j], row_dist[j], row_node[j]):  # fmt: skip
                    exact = False
                    break
            if not exact:
                full_scans += 1
                _scan(p1, group_lon[g], cos1, group_country[g], group_asn[g], onnet_bonus_ms, has_samples,
                      sampled, elig_nodes[f], elig_count[f], terms, country_rtt, est_base_ms, est_ms_per_km,
                      row_score, row_dist, row_node)  # fmt: skip
        if has_samples:
            _clear_samples(g, meas_start, meas_node, sampled)
    return full_scans


@njit(**JIT_OPTIONS)
def _sort_nodes(score, dist, nodes):
    """Sort ``nodes`` (given in increasing index order) in place by (score, dist, node)."""
    # Two stable sorts: by distance, then by score; equal keys keep index order.
    by_dist = nodes[np.argsort(dist[nodes], kind="mergesort")]
    nodes[:] = by_dist[np.argsort(score[by_dist], kind="mergesort")]


@njit(**JIT_OPTIONS)
def _ranked(g, candidates, allowed, ctx, score, dist):
    """The allowed ones of ``candidates`` (increasing node index) in the group's ranking
    order; score/dist: scratch [N], filled for them."""
    count = 0
    for j in range(candidates.shape[0]):
        if allowed[candidates[j]]:
            count += 1
    nodes = np.empty(count, dtype=np.int64)
    i = 0
    for j in range(candidates.shape[0]):
        n = candidates[j]
        if allowed[n]:
            sc, _l, _s, d, _o, _p = _pair(g, n, ctx)
            score[n] = sc
            dist[n] = d
            nodes[i] = n
            i += 1
    _sort_nodes(score, dist, nodes)
    return nodes


@njit(**JIT_OPTIONS)
def _heap_push(key, tie, item, size, k, t, i):
    # Binary min-heap on (key, tie) held in three arrays; returns the new size.
    pos = size
    key[pos], tie[pos], item[pos] = k, t, i
    while pos > 0:
        parent = (pos - 1) // 2
        if key[parent] < key[pos] or (key[parent] == key[pos] and tie[parent] <= tie[pos]):
            break
        key[parent], key[pos] = key[pos], key[parent]
        tie[parent], tie[pos] = tie[pos], tie[parent]
        item[parent], item[pos] = item[pos], item[parent]
        pos = parent
    return size + 1


@njit(**JIT_OPTIONS)
def _heap_pop(key, tie, item, size):
    # Removes the top; the caller read it first. Returns the new size.
    size -= 1
    key[0], tie[0], item[0] = key[size], tie[size], item[size]
    pos = 0
    while True:
        left = 2 * pos + 1
        if left >= size:
            break
        child = left
        right = left + 1
        if right < size and (
            key[right] < key[left] or (key[right] == key[left] and tie[right] < tie[left])
        ):
            child = right
        if key[pos] < key[child] or (key[pos] == key[child] and tie[pos] <= tie[child]):
            break
        key[child], key[pos] = key[pos], key[child]
        tie[child], tie[pos] = tie[pos], tie[child]
        item[child], item[pos] = item[pos], item[child]
        pos = child
    return size


@njit(**JIT_OPTIONS)
def _sift_down(score, dist, node, base, size, pos):
    # Min-heap on (score, dist, node), the ranking order, in the slice [base, base + size).
    while True:
        child = 2 * pos + 1
        if child >= size:
            return
        a = base + child
        if child + 1 < size and _before(
            score[a + 1], dist[a + 1], node[a + 1], score[a], dist[a], node[a]
        ):
            a += 1
            child += 1
        b = base + pos
        if not _before(score[a], dist[a], node[a], score[b], dist[b], node[b]):
            return
        score[a], score[b] = score[b], score[a]
        dist[a], dist[b] = dist[b], dist[a]
        node[a], node[b] = node[b], node[a]
        pos = child


@njit(**JIT_OPTIONS)
def _make_order(score, dist, node, base, count, scratch_score, scratch_dist):
    """Turn the row slice [base, base + count), the eligible nodes in index order with
    their score and distance, into a lazy order; returns how many entries are ready.

    Its entry j is read at base + count - 1 - j once j < ready (``_order_entry``). The
    fill walks a few entries of each order, so a heap built in O(N) and popped on demand
    replaces the full sort; both give the ranking order (nodes are distinct, so it is
    total). NaN is not ordered by comparisons: such a row takes the full sort instead."""
    for i in range(base, base + count):
        if math.isnan(score[i]) or math.isnan(dist[i]):
            nodes = node[base : base + count].copy()
            for j in range(count):
                scratch_score[nodes[j]] = score[base + j]
                scratch_dist[nodes[j]] = dist[base + j]
            _sort_nodes(scratch_score, scratch_dist, nodes)
            for j in range(count):
                k = base + count - 1 - j
                node[k] = nodes[j]
                score[k] = scratch_score[nodes[j]]
                dist[k] = scratch_dist[nodes[j]]
            return count
    for pos in range(count // 2 - 1, -1, -1):
        _sift_down(score, dist, node, base, count, pos)
    return 0


@njit(**JIT_OPTIONS)
def _sort_rest(score, dist, node, base, size):
    """Sort the slice [base, base + size) into the ranking order, best last (the layout
    ``_order_entry`` reads). One quicksort on the score, then each run of equal scores
    (the nodes of one site share theirs) by (dist, node). No NaN reaches here:
    ``_make_order`` sorts such rows whole."""
    by_score = np.argsort(score[base : base + size])
    rs = score[base + by_score]
    rd = dist[base + by_score]
    rn = node[base + by_score]
    i = 0
    while i < size:
        k = i + 1
        while k < size and rs[k] == rs[i]:
            k += 1
        if k - i > 64:  # a long run: two stable sorts (insertion sort would be quadratic)
            run = np.argsort(rn[i:k])
            run = run[np.argsort(rd[i:k][run], kind="mergesort")]
            rd[i:k] = rd[i:k][run]
            rn[i:k] = rn[i:k][run]
        else:
            for a in range(i + 1, k):
                d = rd[a]
                n = rn[a]
                b = a - 1
                while b >= i and (rd[b] > d or (rd[b] == d and rn[b] > n)):
                    rd[b + 1] = rd[b]
                    rn[b + 1] = rn[b]
                    b -= 1
                rd[b + 1] = d
                rn[b + 1] = n
        i = k
    for t in range(size):
        score[base + size - 1 - t] = rs[t]
        dist[base + size - 1 - t] = rd[t]
        node[base + size - 1 - t] = rn[t]


@njit(**JIT_OPTIONS)
def _order_entry(score, dist, node, base, count, ready, row, j):
    """Whether the row's order has an entry j, popping its heap until it is ready."""
    while ready[row] <= j and ready[row] < count:
        if ready[row] > count // 16:
            # A walk this deep (little room left anywhere) pays one sort of the rest
            # rather than a pop per step.
            _sort_rest(score, dist, node, base, count - ready[row])
            ready[row] = count
            break
        size = count - ready[row] - 1  # the heap after the pop; its top goes to base + size
        a = base
        b = base + size
        score[a], score[b] = score[b], score[a]
        dist[a], dist[b] = dist[b], dist[a]
        node[a], node[b] = node[b], node[a]
        _sift_down(score, dist, node, base, size, 0)
        ready[row] += 1
    return j < count


@njit(**JIT_OPTIONS)
def _build_row(row, seg_start, seg_len, ready, h_score, h_dist, h_node, row_built, loc_group,
               row_loc, group_fence, group_lat, group_lon, group_country, eligible, node_rad,
               node_lon, node_cos, node_country, penalty, country_rtt, est_base_ms,
               est_ms_per_km, seeded, scratch, dist):  # fmt: skip
    """Score the rest of a location row (its eligible nodes past the seeded top-k) into a
    lazy order behind them: _pair's score without on-net bonus or samples (what every
    group of the location sees), its per-node terms hoisted (the same float operations)."""
    g = loc_group[row_loc[row]]
    allowed = eligible[group_fence[g]]
    base = seg_start[row]
    count = seg_len[row]
    k = ready[row]
    top = base + count - 1
    for j in range(k):
        seeded[h_node[top - j]] = True
    p1 = group_lat[g] * RADIANS_PER_DEGREE
    cos1 = math.cos(p1)
    i = base
    for n in range(seeded.shape[0]):
        if allowed[n] and not seeded[n]:
            d = _distance_from(p1, group_lon[g], cos1, n, node_rad, node_lon, node_cos)
            latency, _src = _base_latency(group_country[g], node_country[n], d, country_rtt,
                                          est_base_ms, est_ms_per_km)  # fmt: skip
            h_score[i] = latency + penalty[n]
            h_dist[i] = d
            h_node[i] = n
            i += 1
    for j in range(k):
        seeded[h_node[top - j]] = False
    ready[row] = k + _make_order(h_score, h_dist, h_node, base, count - k, scratch, dist)
    row_built[row] = True


@njit(**JIT_OPTIONS)
def _seek(row, remaining, node_asn, cursor, seg_start, seg_len, ready, h_score, h_dist, h_node,
          row_merge, row_lrow, row_asn, own_start, own_len, own_node, own_score, own_dist,
          merge_j, merge_o, head_node, head_score, build):  # fmt: skip
    """Move the row's cursor to its next node with room (``remaining`` > 0) and show that
    entry in head_node/head_score; False when the order has none left.

    Nodes only fill during a fill, so a full node is passed for good. Under heavy load a
    row passes most of its order: the entries already ordered are passed in a tight loop
    (a call per entry cost more than the rest of the fill)."""
    if not row_merge[row]:
        base = seg_start[row]
        count = seg_len[row]
        top = base + count - 1  # entry j of the order is at top - j
        c = cursor[row]
        while True:
            while c < ready[row] and remaining[h_node[top - c]] <= 0.0:
                c += 1
            if c < ready[row]:
                break
            if not build[0][row]:
                _build_row(row, seg_start, seg_len, ready, h_score, h_dist, h_node, *build)
                continue
            if not _order_entry(h_score, h_dist, h_node, base, count, ready, row, c):
                cursor[row] = c
                return False
        cursor[row] = c
        head_node[row] = h_node[top - c]
        head_score[row] = h_score[top - c]
        return True
    # An on-net row: its location's order without the group's ASN, merged with its own
    # nodes. The first entry with room of the merge is the better of each one's first.
    lrow = row_lrow[row]
    base = seg_start[lrow]
    count = seg_len[lrow]
    top = base + count - 1
    asn = row_asn[row]
    j = merge_j[row]
    has_loc = False
    while True:
        while j < ready[lrow] and (
            node_asn[h_node[top - j]] == asn or remaining[h_node[top - j]] <= 0.0
        ):
            j += 1
        if j < ready[lrow]:
            has_loc = True
            break
        if not build[0][lrow]:
            _build_row(lrow, seg_start, seg_len, ready, h_score, h_dist, h_node, *build)
            continue
        if not _order_entry(h_score, h_dist, h_node, base, count, ready, lrow, j):
            break
    merge_j[row] = j
    o = merge_o[row]
    end = own_len[row]
    first = own_start[row]
    while o < end and remaining[own_node[first + o]] <= 0.0:
        o += 1
    merge_o[row] = o
    has_own = o < end
    if not has_loc and not has_own:
        return False
    li = top - j
    oi = first + o
    use_loc = has_loc
    if has_loc and has_own:
        use_loc = _before(
            h_score[li], h_dist[li], h_node[li], own_score[oi], own_dist[oi], own_node[oi]
        )
    if use_loc:
        head_node[row] = h_node[li]
        head_score[row] = h_score[li]
    else:
        head_node[row] = own_node[oi]
        head_score[row] = own_score[oi]
    return True


@njit(**JIT_OPTIONS)
def _fill(groups, group_lat, group_lon, group_country, group_asn, group_fence, group_loc,
           onnet_asn, onnet_start, onnet_node, node_lat, node_lon, node_country, node_asn, node_util, eligible,
           country_rtt, est_base_ms, est_ms_per_km, onnet_bonus_ms, load_penalty_ms,
           meas_start, meas_node, meas_rtt, demand_left, remaining, loc_node, loc_score, loc_dist,
           out_group, out_node, out_amount):  # fmt: skip
    """Place demand cheapest edge first over every (group, node) the group may use.

    A heap holds, for each "spiller", the score of its best node that still has room.
    Groups of one location without on-net nodes or RTT samples rank every node alike, so
    they spill as one spiller along the location's order, served in group order; other
    groups spill on their own order. Ties: lower first group index. A spiller whose node
    filled up meanwhile is re-keyed to its next node with room (keys only grow).

    Orders are lazy, because a fill reads only the first few entries of most: a location's
    starts as its top-k list (loc_*, from _location_topk) and is scored past it only when
    a walk gets there (_build_row); the rest is a heap popped on demand (_make_order,
    _order_entry), sorted once when a walk goes deep. The placements are those of a full
    sort of every order (tests/test_router_steering_plan.py holds them to the reference).
    loc_* : [L, K] of the plan; out_* : preallocated; returns how many entries were
    written (-1: out of room).
    """
    ctx = (
        group_lat,
        group_lon,
        group_country,
        group_asn,
        node_lat,
        node_lon,
        node_country,
        node_asn,
        node_util,
        country_rtt,
        est_base_ms,
        est_ms_per_km,
        onnet_bonus_ms,
        load_penalty_ms,
        meas_start,
        meas_node,
        meas_rtt,
    )
    n_nodes = node_lat.shape[0]
    short = np.sort(groups)
    n_short = 0
    for i in range(short.shape[0]):
        if demand_left[short[i]] > 0.0:
            short[n_short] = short[i]
            n_short += 1
    short = short[:n_short]
    if n_short == 0:
        return 0
    n_locs = 0
    for i in range(group_loc.shape[0]):
        if group_loc[i] + 1 > n_locs:
            n_locs = group_loc[i] + 1
    # Split the short groups into location queues (plain) and own-order spillers (special).
    special = np.zeros(n_short, dtype=np.bool_)
    n_special = 0
    for i in range(n_short):
        g = short[i]
        a = np.searchsorted(onnet_asn, group_asn[g])
        if (a < onnet_asn.shape[0] and onnet_asn[a] == group_asn[g]) or meas_start[
            g + 1
        ] > meas_start[g]:
            special[i] = True
            n_special += 1
    queue_count = np.zeros(n_locs + 1, dtype=np.int64)
    for i in range(n_short):
        if not special[i]:
            queue_count[group_loc[short[i]] + 1] += 1
    queue_start = np.cumsum(queue_count)
    queue = np.empty(n_short - n_special, dtype=np.int64)
    fill_at = queue_start[:-1].copy()
    for i in range(n_short):  # short is sorted, so each queue is in group order
        if not special[i]:
            loc = group_loc[short[i]]
            queue[fill_at[loc]] = short[i]
            fill_at[loc] += 1
    queue_ptr = queue_start[:-1].copy()
    # Orders: one row per location with a short group, one per special group.
    loc_row = np.full(n_locs, -1, dtype=np.int64)
    loc_group = np.full(n_locs, -1, dtype=np.int64)  # any group there: they share place and fence
    n_loc_rows = 0
    for i in range(n_short):
        loc = group_loc[short[i]]
        if loc_row[loc] < 0:
            loc_row[loc] = n_loc_rows
            loc_group[loc] = short[i]
            n_loc_rows += 1
    n_rows = n_loc_rows + n_special
    # Location and sampled rows hold their eligible nodes in one slice each of h_* (a lazy
    # order, _make_order); an on-net row merges lazily from its location's row and its own
    # nodes in own_*. Each row shows its entry at cursor (head_*): the fill reads no other.
    elig_count = np.zeros(eligible.shape[0], dtype=np.int64)
    for f in range(eligible.shape[0]):
        for n in range(n_nodes):
            if eligible[f, n]:
                elig_count[f] += 1
    row_group = np.full(n_rows, -1, dtype=np.int64)  # the special group of a row, -1: a location's
    row_loc = np.full(n_rows, -1, dtype=np.int64)
    row_merge = np.zeros(n_rows, dtype=np.bool_)  # an on-net row
    row_lrow = np.full(n_rows, -1, dtype=np.int64)  # an on-net row's location row
    row_asn = np.zeros(n_rows, dtype=group_asn.dtype)
    seg_start = np.zeros(n_rows, dtype=np.int64)
    seg_len = np.zeros(n_rows, dtype=np.int64)
    own_start = np.zeros(n_rows, dtype=np.int64)
    own_len = np.zeros(n_rows, dtype=np.int64)
    total = 0
    own_total = 0
    for loc in range(n_locs):
        row = loc_row[loc]
        if row >= 0:
            row_loc[row] = loc
            seg_start[row] = total
            seg_len[row] = elig_count[group_fence[loc_group[loc]]]
            total += seg_len[row]
    r = n_loc_rows
    for i in range(n_short):
        if not special[i]:
            continue
        g = short[i]
        row_group[r] = g
        if meas_start[g + 1] > meas_start[g]:
            seg_start[r] = total
            seg_len[r] = elig_count[group_fence[g]]
            total += seg_len[r]
        else:
            a = np.searchsorted(onnet_asn, group_asn[g])
            row_merge[r] = True
            row_lrow[r] = loc_row[group_loc[g]]
            row_asn[r] = group_asn[g]
            own_start[r] = own_total
            own_total += onnet_start[a + 1] - onnet_start[a]
        r += 1
    h_score = np.empty(total, dtype=np.float64)
    h_dist = np.empty(total, dtype=np.float64)
    h_node = np.empty(total, dtype=np.int64)
    ready = np.zeros(n_rows, dtype=np.int64)
    own_node = np.empty(own_total, dtype=np.int64)
    own_score = np.empty(own_total, dtype=np.float64)
    own_dist = np.empty(own_total, dtype=np.float64)
    merge_j = np.zeros(n_rows, dtype=np.int64)
    merge_o = np.zeros(n_rows, dtype=np.int64)
    dist = np.empty(n_nodes, dtype=np.float64)
    scratch = np.empty(n_nodes, dtype=np.float64)
    # Per-node terms of the score, hoisted out of the row loops (_build_row).
    node_rad = np.empty(n_nodes, dtype=np.float64)
    node_cos = np.empty(n_nodes, dtype=np.float64)
    penalty = np.empty(n_nodes, dtype=np.float64)
    _node_terms(node_lat, node_util, load_penalty_ms, node_rad, node_cos, penalty)
    # A location row starts as its location's top-k (``_location_topk``: the same score,
    # eligibility and order); the rest of it is scored only when a walk passes them
    # (``_build_row``), which at moderate load most rows never do.
    row_built = np.ones(n_rows, dtype=np.bool_)
    depth = loc_node.shape[1]
    for row in range(n_loc_rows):
        loc = row_loc[row]
        count = seg_len[row]
        top = seg_start[row] + count - 1
        k = 0
        while k < depth and k < count and loc_node[loc, k] >= 0:
            h_node[top - k] = loc_node[loc, k]
            h_score[top - k] = loc_score[loc, k]
            h_dist[top - k] = loc_dist[loc, k]
            k += 1
        ready[row] = k
        row_built[row] = k >= count
    seeded = np.zeros(n_nodes, dtype=np.bool_)
    build = (row_built, loc_group, row_loc, group_fence, group_lat, group_lon, group_country,
             eligible, node_rad, node_lon, node_cos, node_country, penalty, country_rtt,
             est_base_ms, est_ms_per_km, seeded, scratch, dist)  # fmt: skip
    for r in range(n_loc_rows, n_rows):
        g = row_group[r]
        allowed = eligible[group_fence[g]]
        if not row_merge[r]:
            # RTT samples can reorder anything: rank every node for this group.
            base = seg_start[r]
            i = base
            for n in range(n_nodes):
                if allowed[n]:
                    sc, _l, _s, d, _o, _p = _pair(g, n, ctx)
                    h_score[i] = sc
                    h_dist[i] = d
                    h_node[i] = n
                    i += 1
            ready[r] = _make_order(h_score, h_dist, h_node, base, seg_len[r], scratch, dist)
            continue
        # On-net only: the location's order without the group's ASN, merged with its
        # on-net nodes scored with the bonus.
        a = np.searchsorted(onnet_asn, group_asn[g])
        own = _ranked(
            g, onnet_node[onnet_start[a] : onnet_start[a + 1]], allowed, ctx, scratch, dist
        )
        own_len[r] = own.shape[0]
        for o in range(own.shape[0]):
            own_node[own_start[r] + o] = own[o]
            own_score[own_start[r] + o] = scratch[own[o]]
            own_dist[own_start[r] + o] = dist[own[o]]
    cursor = np.zeros(n_rows, dtype=np.int64)
    head_node = np.full(n_rows, -1, dtype=np.int64)
    head_score = np.zeros(n_rows, dtype=np.float64)
    state = (remaining, node_asn, cursor, seg_start, seg_len, ready, h_score, h_dist, h_node,
             row_merge, row_lrow, row_asn, own_start, own_len, own_node, own_score, own_dist,
             merge_j, merge_o, head_node, head_score, build)  # fmt: skip
    # The heap of spillers: key = score of the row's next node with room, tie = first group.
    heap_key = np.empty(n_rows, dtype=np.float64)
    heap_tie = np.empty(n_rows, dtype=np.int64)
    heap_row = np.empty(n_rows, dtype=np.int64)
    size = 0
    for row in range(n_rows):
        if row_group[row] < 0 and queue_ptr[row_loc[row]] >= queue_start[row_loc[row] + 1]:
            continue  # a location row kept only for its special groups to merge from
        if _seek(row, *state):
            first = row_group[row] if row_group[row] >= 0 else queue[queue_ptr[row_loc[row]]]
            size = _heap_push(heap_key, heap_tie, heap_row, size, head_score[row], first, row)
    written = 0
    while size > 0:
        row = heap_row[0]
        popped = heap_key[0]
        size = _heap_pop(heap_key, heap_tie, heap_row, size)
        if not _seek(row, *state):
            continue  # nothing this spiller may use has room: what is left is overflow
        if head_score[row] > popped:
            # Its node filled since it was keyed: back in line at its next node's score.
            first = row_group[row] if row_group[row] >= 0 else queue[queue_ptr[row_loc[row]]]
            size = _heap_push(heap_key, heap_tie, heap_row, size, head_score[row], first, row)
            continue
        n = head_node[row]
        while remaining[n] > 0.0:
            if row_group[row] >= 0:
                g = row_group[row]
            else:
                loc = row_loc[row]
                if queue_ptr[loc] >= queue_start[loc + 1]:
                    break
                g = queue[queue_ptr[loc]]
            need = demand_left[g]
            if written >= out_group.shape[0]:
                return -1
            free = remaining[n]
            take = need if need <= free else free
            out_group[written] = g
            out_node[written] = n
            out_amount[written] = take
            written += 1
            if need <= free:
                demand_left[g] = 0.0
                remaining[n] = free - need
                if row_group[row] >= 0:
                    break
                queue_ptr[row_loc[row]] += 1
            else:
                demand_left[g] = need - free
                remaining[n] = 0.0
        done = demand_left[row_group[row]] <= 0.0 if row_group[row] >= 0 else (
            queue_ptr[row_loc[row]] >= queue_start[row_loc[row] + 1])  # fmt: skip
        if done:
            continue
        if _seek(row, *state):
            first = row_group[row] if row_group[row] >= 0 else queue[queue_ptr[row_loc[row]]]
            size = _heap_push(heap_key, heap_tie, heap_row, size, head_score[row], first, row)
    return written


KERNELS = (_rank_groups, _group_components, _location_topk, _group_candidates, _fill)


@njit(**JIT_OPTIONS)
def _answer_rows(cand_node, groups, primary, count, out):
    """Answer rows: each group's primary node, then its other candidates in rank order.

    Parameters
    ----------
    cand_node : int32[G, C]
        Every group's candidates, best first, -1 padded.
    groups : int32[R]
        The group of each row.
    primary : int32[R]
        The node each row leads with (-1 when the group has none).
    count : int
        Nodes a row holds at most (1 <= count <= W).
    out : int32[R, W]
        Written whole: row i is primary[i], then the candidates of groups[i] that are not
        primary[i] nor padding, count nodes in all, then -1.
    """
    # One pass per row: the numpy form (a mask, a running count and a scatter over every
    # candidate of every row) took 5 ms for the 50,000 rows a Seoul node's repair rebuilds.
    for i in range(groups.shape[0]):
        lead = primary[i]
        out[i, 0] = lead
        slot = 1
        for j in range(cand_node.shape[1]):
            if slot >= count:
                break
            n = cand_node[groups[i], j]
            if n >= 0 and n != lead:
                out[i, slot] = n
                slot += 1
        for s in range(slot, out.shape[1]):
            out[i, s] = -1


@njit(**JIT_OPTIONS)
def _primary_shares(groups, wanted, alloc_group, alloc_node, alloc_amount, overflow, cand_node,
                    room, out_group, out_node, out_weight):  # fmt: skip
    """The entries that lead the answers of ``groups``, in group order.

    Parameters
    ----------
    groups : int64[R]
        The groups wanted, ascending, each once.
    wanted : bool[G]
        True exactly at ``groups``.
    alloc_group, alloc_node : int32[E]
        The plan's allocation entries (group, node), in the order they were placed.
    alloc_amount : float64[E]
        Their Gbps.
    overflow : float64[G]
        Demand that fits nowhere; it rides on the group's first candidate.
    cand_node : int32[G, C]
        Candidates, best first, -1 padded.
    room : bool[N]
        Nodes with room below headroom.
    out_group, out_node : int32[M]
        Written: each group's entries (M >= E + R): its overflow first, then its allocation
        entries in placement order; a group with neither gets one, its first candidate with
        room (else its first candidate).
    out_weight : float64[M]
        The entries' Gbps (1.0 for a group with neither).

    Returns
    -------
    int
        The number of entries written.
    """
    # Two passes over the allocation (count, then place) instead of a stable argsort of
    # every entry's (group, position) key: the sort was most of primary_shares.
    count = np.zeros(cand_node.shape[0], dtype=np.int64)
    for e in range(alloc_group.shape[0]):
        if wanted[alloc_group[e]]:
            count[alloc_group[e]] += 1
    cursor = np.zeros(cand_node.shape[0], dtype=np.int64)
    written = 0
    for i in range(groups.shape[0]):
        g = groups[i]
        if overflow[g] > 0.0:
            out_group[written] = g
            out_node[written] = cand_node[g, 0]
            out_weight[written] = overflow[g]
            written += 1
        elif count[g] == 0:
            lead = cand_node[g, 0]
            for j in range(cand_node.shape[1]):
                n = cand_node[g, j]
                if n >= 0 and room[n]:
                    lead = n
                    break
            out_group[written] = g
            out_node[written] = lead
            out_weight[written] = 1.0
            written += 1
        cursor[g] = written
        written += count[g]
    for e in range(alloc_group.shape[0]):
        g = alloc_group[e]
        if wanted[g]:
            out_group[cursor[g]] = g
            out_node[cursor[g]] = alloc_node[e]
            out_weight[cursor[g]] = alloc_amount[e]
            cursor[g] += 1
    return written
