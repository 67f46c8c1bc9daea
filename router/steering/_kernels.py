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
node index. Every kernel has a plain reference in ``tests/reference.py``.
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
def _plain_score(lat, lon, country, n, node_lat, node_lon, node_country, node_util,
                 country_rtt, est_base_ms, est_ms_per_km, load_penalty_ms):  # fmt: skip
    # (score, distance) of node n seen from a place, without on-net bonus or samples: what
    # every group there sees; the same float operations as _pair, so the scores are equal.
    dist = _distance_km(lat, lon, node_lat[n], node_lon[n])
    latency, _src = _base_latency(
        country, node_country[n], dist, country_rtt, est_base_ms, est_ms_per_km
    )
    util = node_util[n]
    return latency + load_penalty_ms * util * util, dist


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


@njit(**JIT_OPTIONS)
def _rank_one(g, eligible_row, ctx, top_score, top_dist, top_node):
    # Full scan of every eligible node for one group into a cleared top-k.
    # ctx: the arguments of _pair after (g, n), packed once by the calling kernel.
    top_score[:] = np.inf
    top_dist[:] = np.inf
    top_node[:] = -1
    for n in range(eligible_row.shape[0]):
        if not eligible_row[n]:
            continue
        score, _lat, _src, dist, _onnet, _pen = _pair(g, n, ctx)
        _insert(top_score, top_dist, top_node, score, dist, n)


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
    eligible = np.empty(fence_allowed.shape, dtype=np.bool_)
    _eligibility(node_state, node_in_pool, fence_allowed, eligible)
    k = out_nodes.shape[1]
    top_score = np.empty(k, dtype=np.float64)
    top_dist = np.empty(k, dtype=np.float64)
    for g in range(group_lat.shape[0]):
        _rank_one(g, eligible[group_fence[g]], ctx, top_score, top_dist, out_nodes[g])


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
    for i in range(locs.shape[0]):
        loc = locs[i]
        row_score = out_score[loc]
        row_dist = out_dist[loc]
        row_node = out_node[loc]
        row_score[:] = np.inf
        row_dist[:] = np.inf
        row_node[:] = -1
        allowed = eligible[loc_fence[loc]]
        for n in range(node_lat.shape[0]):
            if not allowed[n]:
                continue
            score, dist = _plain_score(loc_lat[loc], loc_lon[loc], loc_country[loc], n, node_lat, node_lon,
                                       node_country, node_util, country_rtt, est_base_ms, est_ms_per_km,
                                       load_penalty_ms)  # fmt: skip
            _insert(row_score, row_dist, row_node, score, dist, n)


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
    k_loc = loc_node.shape[1]
    full_scans = 0
    for i in range(groups.shape[0]):
        g = groups[i]
        loc = group_loc[g]
        allowed = eligible[group_fence[g]]
        row_score = out_score[g]
        row_dist = out_dist[g]
        row_node = out_node[g]
        row_score[:] = np.inf
        row_dist[:] = np.inf
        row_node[:] = -1
        # The location's list, then the group's sampled and on-net nodes, each once.
        a = np.searchsorted(onnet_asn, group_asn[g])
        has_onnet = a < onnet_asn.shape[0] and onnet_asn[a] == group_asn[g]
        has_samples = meas_start[g + 1] > meas_start[g]
        for j in range(k_loc):
            n = loc_node[loc, j]
            if n < 0:
                break
            if has_onnet and node_asn[n] == group_asn[g]:
                continue  # scored with the on-net list below
            if has_samples:
                score, _l, _s, dist, _o, _p = _pair(g, n, ctx)
                _insert(row_score, row_dist, row_node, score, dist, n)
            else:
                _insert(row_score, row_dist, row_node, loc_score[loc, j], loc_dist[loc, j], n)
        for m in range(meas_start[g], meas_start[g + 1]):
            n = meas_node[m]
            if not allowed[n] or (has_onnet and node_asn[n] == group_asn[g]):
                continue
            in_loc = False
            for j in range(k_loc):
                if loc_node[loc, j] == n:
                    in_loc = True
                    break
            if in_loc:
                continue
            score, _l, _s, dist, _o, _p = _pair(g, n, ctx)
            _insert(row_score, row_dist, row_node, score, dist, n)
        if has_onnet:
            for j in range(onnet_start[a], onnet_start[a + 1]):
                n = onnet_node[j]
                if not allowed[n]:
                    continue
                score, _l, _s, dist, _o, _p = _pair(g, n, ctx)
                _insert(row_score, row_dist, row_node, score, dist, n)
        # Exact when the location list held every eligible node, or when every output
        # entry ranks at or before the location's last entry (nothing unseen beats it).
        last = loc_node[loc, k_loc - 1]
        if last >= 0:
            exact = True
            for j in range(row_node.shape[0]):
                if row_node[j] < 0 or _before(loc_score[loc, k_loc - 1], loc_dist[loc, k_loc - 1], last,
                                              row_score[j], row_dist[j], row_node[j]):  # fmt: skip
                    exact = False
                    break
            if not exact:
                full_scans += 1
                _rank_one(g, allowed, ctx, row_score, row_dist, row_node)
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
def _fill(groups, group_lat, group_lon, group_country, group_asn, group_fence, group_loc,
           onnet_asn, onnet_start, onnet_node, node_lat, node_lon, node_country, node_asn, node_util, eligible,
           country_rtt, est_base_ms, est_ms_per_km, onnet_bonus_ms, load_penalty_ms,
           meas_start, meas_node, meas_rtt, demand_left, remaining,
           out_group, out_node, out_amount):  # fmt: skip
    """Place demand cheapest edge first over every (group, node) the group may use.

    A heap holds,
    for each "spiller", the score of its best node that still has room. Groups of one
    location without on-net nodes or RTT samples rank every node alike, so they spill as
    one spiller along the location's order (sorted once), served in group order; other
    groups spill on their own order. Ties: lower first group index. A spiller whose node
    filled up meanwhile is re-keyed to its next node with room (keys only grow).
    out_* : preallocated; returns how many entries were written (-1: out of room).
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
    order = np.full((n_rows, n_nodes), -1, dtype=np.int64)
    order_score = np.empty((n_rows, n_nodes), dtype=np.float64)
    order_dist = np.empty((n_rows, n_nodes), dtype=np.float64)
    order_len = np.zeros(n_rows, dtype=np.int64)
    cursor = np.zeros(n_rows, dtype=np.int64)
    row_group = np.full(n_rows, -1, dtype=np.int64)  # the special group of a row, -1: a location's
    row_loc = np.full(n_rows, -1, dtype=np.int64)
    dist = np.empty(n_nodes, dtype=np.float64)
    scratch = np.empty(n_nodes, dtype=np.float64)
    every_node = np.arange(n_nodes)
    for loc in range(n_locs):
        row = loc_row[loc]
        if row < 0:
            continue
        g = loc_group[loc]
        allowed = eligible[group_fence[g]]
        count = 0
        for n in range(n_nodes):
            if allowed[n]:
                scratch[n], dist[n] = _plain_score(group_lat[g], group_lon[g], group_country[g], n, node_lat,
                                                   node_lon, node_country, node_util, country_rtt, est_base_ms,
                                                   est_ms_per_km, load_penalty_ms)  # fmt: skip
                order[row, count] = n
                count += 1
        nodes = order[row, :count].copy()
        _sort_nodes(scratch, dist, nodes)
        order_len[row] = count
        row_loc[row] = loc
        for j in range(count):
            order[row, j] = nodes[j]
            order_score[row, j] = scratch[nodes[j]]
            order_dist[row, j] = dist[nodes[j]]
    r = n_loc_rows
    for i in range(n_short):
        if not special[i]:
            continue
        g = short[i]
        row_group[r] = g
        if meas_start[g + 1] > meas_start[g]:
            # RTT samples can reorder anything: rank every node for this group.
            nodes = _ranked(g, every_node, eligible[group_fence[g]], ctx, scratch, dist)
            order_len[r] = nodes.shape[0]
            for j in range(nodes.shape[0]):
                order[r, j] = nodes[j]
                order_score[r, j] = scratch[nodes[j]]
            r += 1
            continue
        # On-net only: the location's order without the group's ASN, merged with its
        # on-net nodes scored with the bonus.
        lrow = loc_row[group_loc[g]]
        allowed = eligible[group_fence[g]]
        a = np.searchsorted(onnet_asn, group_asn[g])
        own = _ranked(
            g, onnet_node[onnet_start[a] : onnet_start[a + 1]], allowed, ctx, scratch, dist
        )
        m = own.shape[0]
        j = 0
        o = 0
        out = 0
        while True:
            while j < order_len[lrow] and node_asn[order[lrow, j]] == group_asn[g]:
                j += 1
            has_loc = j < order_len[lrow]
            has_own = o < m
            if not has_loc and not has_own:
                break
            use_loc = has_loc
            if has_loc and has_own:
                nl = order[lrow, j]
                use_loc = _before(
                    order_score[lrow, j],
                    order_dist[lrow, j],
                    nl,
                    scratch[own[o]],
                    dist[own[o]],
                    own[o],
                )
            if use_loc:
                order[r, out] = order[lrow, j]
                order_score[r, out] = order_score[lrow, j]
                j += 1
            else:
                order[r, out] = own[o]
                order_score[r, out] = scratch[own[o]]
                o += 1
            out += 1
        order_len[r] = out
        r += 1
    # The heap of spillers: key = score of the row's next node with room, tie = first group.
    heap_key = np.empty(n_rows, dtype=np.float64)
    heap_tie = np.empty(n_rows, dtype=np.int64)
    heap_row = np.empty(n_rows, dtype=np.int64)
    size = 0
    for row in range(n_rows):
        if row_group[row] < 0 and queue_ptr[row_loc[row]] >= queue_start[row_loc[row] + 1]:
            continue  # a location row kept only for its special groups to merge from
        while cursor[row] < order_len[row] and remaining[order[row, cursor[row]]] <= 0.0:
            cursor[row] += 1
        if cursor[row] < order_len[row]:
            first = row_group[row] if row_group[row] >= 0 else queue[queue_ptr[row_loc[row]]]
            size = _heap_push(
                heap_key, heap_tie, heap_row, size, order_score[row, cursor[row]], first, row
            )
    written = 0
    while size > 0:
        row = heap_row[0]
        popped = heap_key[0]
        size = _heap_pop(heap_key, heap_tie, heap_row, size)
        while cursor[row] < order_len[row] and remaining[order[row, cursor[row]]] <= 0.0:
            cursor[row] += 1
        if cursor[row] >= order_len[row]:
            continue  # nothing this spiller may use has room: what is left is overflow
        if order_score[row, cursor[row]] > popped:
            # Its node filled since it was keyed: back in line at its next node's score.
            first = row_group[row] if row_group[row] >= 0 else queue[queue_ptr[row_loc[row]]]
            size = _heap_push(
                heap_key, heap_tie, heap_row, size, order_score[row, cursor[row]], first, row
            )
            continue
        n = order[row, cursor[row]]
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
        while cursor[row] < order_len[row] and remaining[order[row, cursor[row]]] <= 0.0:
            cursor[row] += 1
        if cursor[row] < order_len[row]:
            first = row_group[row] if row_group[row] >= 0 else queue[queue_ptr[row_loc[row]]]
            size = _heap_push(
                heap_key, heap_tie, heap_row, size, order_score[row, cursor[row]], first, row
            )
    return written


KERNELS = (_rank_groups, _group_components, _location_topk, _group_candidates, _fill)
