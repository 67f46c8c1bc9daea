"""Vectorised numpy versions of the steering core's ranking, the reference for speed.

``tests/reference.py`` says what the kernels compute, in loops; this module computes the
same with whole-array numpy, so that the numba kernels are timed against numpy running
the *same algorithm* (``loadtest/same_algorithm.py``) and tested equal to it
(``tests/test_steering_numpy_reference.py``). Two algorithms, as in the router:

* ``rank_full_scan``: every group scores every node it may use and keeps its best k
  (``router.steering.rank.rank_groups``, kernel ``_rank_groups``).
* ``rank_candidates``: what ``plan_policy`` runs. Each location ranks its best
  ``depth`` nodes once (``location_topk``, kernel ``_location_topk``); each group takes
  those, rescores its on-net and sampled nodes and keeps its best C
  (``group_candidates``, kernel ``_group_candidates``), with a full scan for the groups
  whose list is not provably exact.

Both sides do the same work per pair: a node's load penalty and a place's cosines are
computed once, a latency from the country table needs no distance, and a distance is
computed only where the score needs it (estimated latency) or the ranking does (ties,
and the entries kept). With ``prune`` (the default), as in the kernels, an estimated
pair whose score bound from the chord (a distance bound below the arc) misses the row's
cut is not computed at all; numpy's cut is the k-th best of every pair's score or upper
bound, the kernels' the running k-th best. ``prune=False`` computes every estimated
distance; the result is the same either way.

Floats: numpy's ``arcsin`` is not libm's ``asin`` (it differs in the last bit on about
8 % of inputs, measured on numpy 2.4), so a distance here may be 1 ulp from the kernel's;
node lists are equal, scores and distances equal to a few ulp.
"""

from __future__ import annotations

import numpy as np

from tests.reference import EARTH_RADIUS_KM, RADIANS_PER_DEGREE

# Pairs scored at once: [rows, N] float64 temporaries of 32 MB.
CHUNK_PAIRS = 1 << 22
# Margins of the chord bounds (router/steering/_kernels.py says why they are safe).
CHORD_LOW = 1.0 - 1e-9
CHORD_HIGH = 1.0 + 1e-9
CHORD_SLACK_KM = 0.01


def eligibility(r) -> np.ndarray:
    """bool[F, N]: per fence, the allowed pool nodes of the best health tier present."""
    allowed = r.fence_allowed & r.node_in_pool[None, :]
    state = np.where(allowed, r.node_state[None, :], 3)
    tier = state.min(axis=1, keepdims=True)
    return allowed & (state == tier)


def haversine(lat1, lon1, lat2, lon2, cos1=None, cos2=None) -> np.ndarray:
    """Great-circle km with the kernel's float operations, in the kernel's order.

    ``cos1``/``cos2``: ``cos(lat * RADIANS_PER_DEGREE)`` when the caller has them already.
    """
    p1 = lat1 * RADIANS_PER_DEGREE
    p2 = lat2 * RADIANS_PER_DEGREE
    dp = p2 - p1
    dl = (lon2 - lon1) * RADIANS_PER_DEGREE
    half_dp = np.sin(dp / 2.0)
    half_dl = np.sin(dl / 2.0)
    c1 = np.cos(p1) if cos1 is None else cos1
    c2 = np.cos(p2) if cos2 is None else cos2
    a = half_dp * half_dp + c1 * c2 * half_dl * half_dl
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.minimum(1.0, a)))


def _unit_vectors(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    p = lat * RADIANS_PER_DEGREE
    lam = lon * RADIANS_PER_DEGREE
    return np.stack([np.cos(p) * np.cos(lam), np.cos(p) * np.sin(lam), np.sin(p)], axis=-1)


def _sample_keys(r) -> tuple[np.ndarray, np.ndarray]:
    """(sorted keys g * N + n, rtt) of the RTT samples, the first sample of a pair kept
    (the kernels read the first one)."""
    n_nodes = len(r.node_lat)
    m_group = np.repeat(np.arange(len(r.group_lat), dtype=np.int64), np.diff(r.meas_start))
    keys, first = np.unique(m_group * n_nodes + r.meas_node, return_index=True)
    return keys, r.meas_rtt[first]


def pair_arrays(r, g: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(score, latency_ms, distance_km) of group/node index arrays (broadcast), every
    distance computed (``router explain``'s components, for every pair asked)."""
    dist = haversine(r.group_lat[g], r.group_lon[g], r.node_lat[n], r.node_lon[n])
    cg, cn = r.group_country[g], r.node_country[n]
    known = (cg >= 0) & (cn >= 0)
    latency = np.where(known, r.country_rtt[np.maximum(cg, 0), np.maximum(cn, 0)], np.nan)
    latency = np.where(np.isnan(latency), r.est_base_ms + r.est_ms_per_km * dist, latency)
    if len(r.meas_node):
        keys, rtt = _sample_keys(r)
        want = np.asarray(g, dtype=np.int64) * len(r.node_lat) + n
        pos = np.minimum(np.searchsorted(keys, want), len(keys) - 1)
        latency = np.where(keys[pos] == want, rtt[pos], latency)
    util = r.node_util[n]
    score = latency + r.load_penalty_ms * util * util
    score = np.where(r.group_asn[g] == r.node_asn[n], score - r.onnet_bonus_ms, score)
    return score, latency, dist


class _Places:
    """What scoring needs per place (a group or a location) and per node, computed once."""

    def __init__(self, r, lat, lon, country, asn=None, groups=None, prune=True) -> None:
        self.r = r
        self.prune = prune  # chord bounds spare the distances of pairs that miss the cut
        self.lat, self.lon, self.country = lat, lon, country
        self.asn = asn  # None: no on-net bonus (a location's plain score)
        self.groups = groups  # group index of each place; None: no samples
        self.cos = np.cos(lat * RADIANS_PER_DEGREE)
        self.node_cos = np.cos(r.node_lat * RADIANS_PER_DEGREE)
        util = r.node_util
        self.penalty = r.load_penalty_ms * util * util
        c = len(r.country_rtt)
        # Country -1 indexes the padding row/column of NaN: "not in the table".
        self.rtt = np.full((c + 1, c + 1), np.nan)
        self.rtt[:c, :c] = r.country_rtt
        self.node_country = np.where(r.node_country >= 0, r.node_country, c)
        self.place_country = np.where(country >= 0, country, c)
        self.samples = _sample_keys(r) if groups is not None and len(r.meas_node) else None
        self.vectors = None  # (place, node) unit vectors, made when a chord is first needed

    def distance(self, rows: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        return haversine(self.lat[rows], self.lon[rows], self.r.node_lat[nodes],
                         self.r.node_lon[nodes], self.cos[rows], self.node_cos[nodes])  # fmt: skip

    def _latency(self, rows: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        # From the samples or the country table; NaN where it is to be estimated.
        r = self.r
        latency = self.rtt[self.place_country[rows], self.node_country[nodes]]
        if self.samples is not None:
            keys, rtt = self.samples
            want = self.groups[rows].astype(np.int64) * len(r.node_lat) + nodes
            pos = np.minimum(np.searchsorted(keys, want), len(keys) - 1)
            hit = keys[pos] == want
            latency[hit] = rtt[pos[hit]]
        return latency

    def _finish(self, latency: np.ndarray, rows: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        # latency -> score: load penalty, on-net bonus (the kernel's operations and order).
        score = latency + self.penalty[nodes]
        if self.asn is not None:
            onnet = self.asn[rows] == self.r.node_asn[nodes]
            score[onnet] -= self.r.onnet_bonus_ms
        return score

    def score(self, rows: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        """Score of (rows, nodes) pairs (any broadcastable index arrays)."""
        r = self.r
        rows, nodes = np.broadcast_arrays(rows, nodes)
        latency = self._latency(rows, nodes)
        estimated = np.isnan(latency)
        if estimated.any():
            er, en = rows[estimated], nodes[estimated]
            latency[estimated] = r.est_base_ms + r.est_ms_per_km * self.distance(er, en)
        return self._finish(latency, rows, nodes)

    def _chord2(self, rows: np.ndarray) -> np.ndarray:
        """Squared chords [S, N] on the unit sphere, one matrix product: |u - v|^2 =
        2 - 2 u.v. Its rounding (about 1e-15, so about 3e-4 km for nearby points) is far
        inside CHORD_SLACK_KM."""
        if self.vectors is None:
            self.vectors = (
                _unit_vectors(self.lat, self.lon),
                _unit_vectors(self.r.node_lat, self.r.node_lon),
            )
        place, node = self.vectors
        return np.maximum(2.0 - 2.0 * (place[rows] @ node.T), 0.0)

    def pruned_score(self, rows: np.ndarray, allowed: np.ndarray, k: int) -> np.ndarray:
        """score[S, N] of ``rows`` against every node, inf where not allowed and where an
        estimated pair provably misses the row's best k (the kernel's chord bound: the
        score from a distance bound below the true one is below the score; here the cut
        is the k-th best of each pair's score or, where estimated, its bound from above)."""
        r = self.r
        n_nodes = len(r.node_lat)
        rows2, nodes2 = np.broadcast_arrays(rows[:, None], np.arange(n_nodes)[None, :])
        latency = self._latency(rows2, nodes2)
        estimated = np.isnan(latency) & allowed
        score = self._finish(latency, rows2, nodes2)
        score[~allowed] = np.inf
        if not estimated.any():
            return score
        if not self.prune:
            ri, en = np.nonzero(estimated)
            er = rows[ri]
            score[estimated] = self._finish(
                r.est_base_ms + r.est_ms_per_km * self.distance(er, en), er, en
            )
            return score
        ri, en = np.nonzero(estimated)
        er = rows[ri]
        chord = EARTH_RADIUS_KM * np.sqrt(self._chord2(rows)[estimated])
        low = np.maximum(chord * CHORD_LOW - CHORD_SLACK_KM, 0.0)
        # An arc is at most pi / 2 times its chord (asin(x) <= x pi / 2 on [0, 1]).
        high = chord * (np.pi / 2.0) * CHORD_HIGH + CHORD_SLACK_KM
        upper = score.copy()
        upper[estimated] = self._finish(r.est_base_ms + r.est_ms_per_km * high, er, en)
        kk = min(k, n_nodes)
        cut = np.partition(upper, kk - 1, axis=1)[:, kk - 1]
        lower = self._finish(r.est_base_ms + r.est_ms_per_km * low, er, en)
        need = lower <= cut[ri]
        exact = np.full(len(er), np.inf)
        if need.any():
            rn, nn = er[need], en[need]
            exact[need] = self._finish(
                r.est_base_ms + r.est_ms_per_km * self.distance(rn, nn), rn, nn
            )
        score[estimated] = exact
        return score

    def topk(self, rows: np.ndarray, allowed: np.ndarray, k: int) -> tuple:
        """Best k allowed nodes of each place in ``rows``: (node int32, score, dist) [S, k],
        best first by (score, distance, node), -1 / inf padded."""
        n_nodes = len(self.r.node_lat)
        out_node = np.full((len(rows), k), -1, dtype=np.int32)
        out_score = np.full((len(rows), k), np.inf)
        out_dist = np.full((len(rows), k), np.inf)
        kk = min(k, n_nodes)
        every = np.arange(n_nodes)
        chunk = max(1, CHUNK_PAIRS // max(1, n_nodes))
        for lo in range(0, len(rows), chunk):
            part = rows[lo : lo + chunk]
            ok = allowed[lo : lo + chunk]
            score = self.pruned_score(part, ok, k)
            # Every node tied with the k-th best must be in the slice that is sorted.
            kth = np.partition(score, kk - 1, axis=1)[:, kk - 1 : kk]
            width = max(kk, int((score <= kth).sum(axis=1).max()))
            if width < n_nodes:
                idx = np.argpartition(score, width - 1, axis=1)[:, :width]
            else:
                idx = np.broadcast_to(every, score.shape)
            s = np.take_along_axis(score, idx, axis=1)
            d = self.distance(np.broadcast_to(part[:, None], idx.shape), idx)
            order = np.lexsort((idx, d, s), axis=1)[:, :kk]
            s = np.take_along_axis(s, order, axis=1)
            empty = np.isinf(s)
            out_node[lo : lo + len(part), :kk] = np.where(
                empty, -1, np.take_along_axis(idx, order, axis=1)
            )
            out_score[lo : lo + len(part), :kk] = s
            out_dist[lo : lo + len(part), :kk] = np.where(
                empty, np.inf, np.take_along_axis(d, order, axis=1)
            )
        return out_node, out_score, out_dist


def _group_places(r, prune: bool = True) -> _Places:
    return _Places(r, r.group_lat, r.group_lon, r.group_country, r.group_asn,
                   np.arange(len(r.group_lat)), prune)  # fmt: skip


def full_scan(r, groups: np.ndarray, eligible: np.ndarray, k: int, prune: bool = True) -> tuple:
    """(node, score, dist) [S, k] of ``groups``, each scanning every node it may use.

    ``prune``: skip the distances of estimated pairs whose chord bound misses the cut
    (as the kernels do); False computes every distance an estimated score needs. Both
    give the same result; which is faster depends on the data (the bench times both).
    """
    groups = np.asarray(groups, dtype=np.int64)
    return _group_places(r, prune).topk(groups, eligible[r.group_fence[groups]], k)


def rank_full_scan(r, k: int, prune: bool = True) -> np.ndarray:
    """int32[G, k]: what ``rank_groups`` returns, by a full scan of every group."""
    return full_scan(r, np.arange(len(r.group_lat)), eligibility(r), k, prune)[0]


def numpy_rank(r, k: int) -> np.ndarray:
    """The name loadtest/bench_core.py used for ``rank_full_scan``."""
    return rank_full_scan(r, k)


def location_topk(r, topology, eligible: np.ndarray, depth: int, prune: bool = True) -> tuple:
    """(loc_node int32, loc_score, loc_dist) [L, depth]: ``_location_topk`` for every location."""
    t = topology
    places = _Places(r, t.loc_lat, t.loc_lon, t.loc_country, prune=prune)
    locs = np.arange(len(t.loc_lat))
    return places.topk(locs, eligible[t.loc_fence], depth)


def group_candidates(r, topology, eligible, loc_node, loc_score, loc_dist, candidates: int,
                     prune: bool = True) -> tuple:  # fmt: skip
    """(cand_node int32, cand_score, cand_dist) [G, C] and the number of full scans:
    ``_group_candidates`` for every group."""
    t = topology
    n_nodes = len(r.node_lat)
    c = candidates
    loc = t.group_loc
    has_onnet = np.isin(r.group_asn, t.onnet_asn)
    has_samples = np.diff(r.meas_start) > 0
    special = has_onnet | has_samples
    # A group without on-net nodes or samples scores every node as its location does: its
    # candidates are the head of the location's list, which is exact by construction.
    cand_node = loc_node[loc, :c].copy()
    cand_score = loc_score[loc, :c].copy()
    cand_dist = loc_dist[loc, :c].copy()
    sg = np.flatnonzero(special)
    if len(sg) == 0:
        return cand_node, cand_score, cand_dist, 0
    # Special groups: candidate pairs (group, node) from three disjoint sources.
    allowed = eligible[r.group_fence]
    in_loc = np.zeros((len(sg), n_nodes), dtype=bool)
    ln = loc_node[loc[sg]]
    rows = np.broadcast_to(np.arange(len(sg))[:, None], ln.shape)
    valid = ln >= 0
    in_loc[rows[valid], ln[valid]] = True
    own = has_onnet[sg][:, None] & (r.group_asn[sg][:, None] == r.node_asn[None, :])
    # The location's nodes, less those on-net for the group (scored with the bonus below).
    take = valid & ~np.take_along_axis(own, np.maximum(ln, 0), axis=1)
    pair_row, pair_node = [rows[take]], [ln[take]]
    # Sampled nodes outside the location's list.
    counts = np.diff(r.meas_start)[sg]
    m_row = np.repeat(np.arange(len(sg)), counts)
    m_idx = np.concatenate([np.arange(r.meas_start[g], r.meas_start[g + 1]) for g in sg[counts > 0]]
                           or [np.zeros(0, dtype=np.int64)])  # fmt: skip
    m_node = r.meas_node[m_idx].astype(np.int64)
    keep = allowed[sg[m_row], m_node] & ~own[m_row, m_node] & ~in_loc[m_row, m_node]
    pair_row.append(m_row[keep])
    pair_node.append(m_node[keep])
    # On-net nodes the group may use.
    o_row, o_node = np.nonzero(own & allowed[sg])
    pair_row.append(o_row)
    pair_node.append(o_node)
    prow = np.concatenate(pair_row)
    pnode = np.concatenate(pair_node).astype(np.int64)
    places = _group_places(r)
    pscore = places.score(sg[prow], pnode)
    pdist = places.distance(sg[prow], pnode)
    order = np.lexsort((pnode, pdist, pscore, prow))
    prow, pnode, pscore, pdist = prow[order], pnode[order], pscore[order], pdist[order]
    first = np.searchsorted(prow, np.arange(len(sg)))
    rank = np.arange(len(prow)) - first[prow]
    top = rank < c
    cand_node[sg] = -1
    cand_score[sg] = np.inf
    cand_dist[sg] = np.inf
    cand_node[sg[prow[top]], rank[top]] = pnode[top]
    cand_score[sg[prow[top]], rank[top]] = pscore[top]
    cand_dist[sg[prow[top]], rank[top]] = pdist[top]
    # Exact when the location's list held every node it may use, or when every entry
    # ranks at or before the location's last (nothing unseen can beat it).
    last = loc_node[loc[sg], -1]
    ls, ld = loc_score[loc[sg], -1][:, None], loc_dist[loc[sg], -1][:, None]
    ns, nd, nn = cand_score[sg], cand_dist[sg], cand_node[sg]
    after = (nn < 0) | (ls < ns) | ((ls == ns) & ((ld < nd) | ((ld == nd) & (last[:, None] < nn))))
    inexact = sg[(last >= 0) & after.any(axis=1)]
    if len(inexact):
        node, score, dist = full_scan(r, inexact, eligible, c, prune)
        cand_node[inexact], cand_score[inexact], cand_dist[inexact] = node, score, dist
    return cand_node, cand_score, cand_dist, len(inexact)


def rank_candidates(r, topology, candidates: int, depth: int, prune: bool = True) -> dict:
    """The ranking of ``plan_policy``: eligibility, location lists, group candidates."""
    eligible = eligibility(r)
    loc_node, loc_score, loc_dist = location_topk(
        r, topology, eligible, max(depth, candidates), prune
    )
    node, score, dist, scans = group_candidates(
        r, topology, eligible, loc_node, loc_score, loc_dist, candidates, prune
    )
    return {
        "eligible": eligible, "loc_node": loc_node, "loc_score": loc_score, "loc_dist": loc_dist,
        "cand_node": node, "cand_score": score, "cand_dist": dist, "full_scans": scans,
    }  # fmt: skip
