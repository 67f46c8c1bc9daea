"""Numba kernels of the refine pass (``refine.py``): pair costs, residual distances,
pricing, and splitting a class's flows over its groups. Arrays in, arrays out.

Costs are integers (``COST_PER_MS`` per millisecond of score, shifted to be >= 0) because
the min-cost flow solver works in integers; every kernel rounds a score the same way.
"""

import math

import numpy as np
from numba import njit

from router._jit import JIT_OPTIONS
from router.steering._kernels import (
    _base_latency,
    _clear_samples,
    _distance_km,
    _load_samples,
    _pair,
)

COST_PER_MS = 100  # costs in 0.01 ms: finer than any latency the inputs carry
INF = 1 << 60


@njit(**JIT_OPTIONS)
def _cost(score, shift):
    return np.int64(np.rint((score + shift) * COST_PER_MS))


@njit(**JIT_OPTIONS)
def _pair_costs(pair_group, pair_node, ctx, shift, out_cost):
    """Integer cost of each (group, node) pair: the group's score of the node."""
    for i in range(pair_group.shape[0]):
        out_cost[i] = _cost(_pair(pair_group[i], pair_node[i], ctx)[0], shift)


@njit(**JIT_OPTIONS)
def _sink_distances(n_classes, arc_class, arc_node, arc_cost, arc_flow, arc_cap,
                    room_free, room_reserve, reserve_cost, out_dist):  # fmt: skip
    """Shortest distance from every class and node to the sink in the residual graph of an
    optimal flow (Bellman-Ford; no negative cycle at an optimum). Vertices: classes
    0..C-1, nodes C..C+N-1. A node reaches the sink at 0 with room below headroom left,
    at ``reserve_cost`` with reserve left. Returns the passes taken (-1: did not settle).

    These are the node potentials that price pairs not in the flow yet: a pair (k, n) of
    cost c improves the optimum iff c + dist[n] < dist[k].
    """
    n_nodes = room_free.shape[0]
    for v in range(out_dist.shape[0]):
        out_dist[v] = INF
    for n in range(n_nodes):
        if room_free[n] > 0:
            out_dist[n_classes + n] = 0
        elif room_reserve[n] > 0:
            out_dist[n_classes + n] = reserve_cost
    for sweep in range(n_classes + n_nodes + 1):
        changed = False
        for a in range(arc_class.shape[0]):
            k = arc_class[a]
            n = n_classes + arc_node[a]
            # Forward residual (more flow k -> n) while the arc has room.
            if (
                arc_flow[a] < arc_cap[a]
                and out_dist[n] < INF
                and arc_cost[a] + out_dist[n] < out_dist[k]
            ):
                out_dist[k] = arc_cost[a] + out_dist[n]
                changed = True
            # Backward residual (less flow k -> n) where there is flow.
            if arc_flow[a] > 0 and out_dist[k] < INF and out_dist[k] - arc_cost[a] < out_dist[n]:
                out_dist[n] = out_dist[k] - arc_cost[a]
                changed = True
        if not changed:
            return sweep
    return -1


@njit(**JIT_OPTIONS)
def _location_latency(loc_lat, loc_lon, loc_country, node_lat, node_lon, node_country,
                      country_rtt, est_base_ms, est_ms_per_km, out_latency):  # fmt: skip
    """Latency (ms) from every location to every node without RTT samples: _pair's."""
    for loc in range(loc_lat.shape[0]):
        for n in range(node_lat.shape[0]):
            distance = _distance_km(loc_lat[loc], loc_lon[loc], node_lat[n], node_lon[n])
            out_latency[loc, n] = _base_latency(loc_country[loc], node_country[n], distance,
                                                country_rtt, est_base_ms, est_ms_per_km)[0]  # fmt: skip


@njit(**JIT_OPTIONS)
def _price(class_group, class_loc, class_fence, class_dist, node_dist, eligible, pair_start,
           pair_node, per_class, loc_latency, group_asn, node_asn, node_util, onnet_bonus_ms,
           load_penalty_ms, meas_start, meas_node, meas_rtt, shift,
           out_class, out_node, out_cost):  # fmt: skip
    """For each class (its representative group ``class_group``), up to ``per_class`` of
    its most negative reduced-cost pairs with an eligible node not yet among its pairs
    (``pair_node[pair_start[k]:pair_start[k + 1]]``). Scores are _pair's, from the
    location latencies and the group's own samples. Returns how many were written."""
    n_nodes = eligible.shape[1]
    listed = np.zeros(n_nodes, dtype=np.bool_)
    sampled = np.full(n_nodes, np.nan)
    found_r = np.empty(n_nodes, dtype=np.int64)
    found_n = np.empty(n_nodes, dtype=np.int64)
    found_c = np.empty(n_nodes, dtype=np.int64)
    written = 0
    for k in range(class_group.shape[0]):
        if class_dist[k] >= INF:
            continue
        for i in range(pair_start[k], pair_start[k + 1]):
            listed[pair_node[i]] = True
        g = class_group[k]
        has_samples = meas_start[g + 1] > meas_start[g]
        if has_samples:
            _load_samples(g, meas_start, meas_node, meas_rtt, sampled)
        fence = class_fence[k]
        loc = class_loc[k]
        asn = group_asn[g]
        count = 0
        for n in range(n_nodes):
            if not eligible[fence, n] or listed[n] or node_dist[n] >= INF:
                continue
            latency = sampled[n] if has_samples else np.nan
            if math.isnan(latency):
                latency = loc_latency[loc, n]
            util = node_util[n]
            score = latency + load_penalty_ms * util * util
            if asn == node_asn[n]:
                score = score - onnet_bonus_ms
            cost = _cost(score, shift)
            reduced = cost + node_dist[n] - class_dist[k]
            if reduced < 0:
                found_r[count] = reduced
                found_n[count] = n
                found_c[count] = cost
                count += 1
        for i in range(pair_start[k], pair_start[k + 1]):
            listed[pair_node[i]] = False
        if has_samples:
            _clear_samples(g, meas_start, meas_node, sampled)
        take = np.argsort(found_r[:count], kind="mergesort")[:per_class]
        for j in take:
            out_class[written] = k
            out_node[written] = found_n[j]
            out_cost[written] = found_c[j]
            written += 1
    return written


@njit(**JIT_OPTIONS)
def _split_flows(class_groups_start, class_groups, group_demand, class_arcs_start, arc_node,
                 arc_amount, out_group, out_node, out_amount):  # fmt: skip
    """Each class's flows (Gbps to nodes, best node first) handed to its groups in turn: a
    group takes from the current node until its demand is met, then the next group goes on
    from there (every group of a class scores every node alike, so who takes which part is
    free; this keeps a group's entries few and its nodes best first). Returns the entries
    written; each group's entries sum to its demand."""
    written = 0
    for k in range(class_groups_start.shape[0] - 1):
        a = class_arcs_start[k]
        a_end = class_arcs_start[k + 1]
        if a == a_end:
            continue
        left_on_arc = arc_amount[a]
        for i in range(class_groups_start[k], class_groups_start[k + 1]):
            g = class_groups[i]
            need = group_demand[g]
            while need > 0.0:
                # Skip spent arcs, but never past the last: it takes what rounding leaves.
                while left_on_arc <= 0.0 and a + 1 < a_end:
                    a += 1
                    left_on_arc = arc_amount[a]
                last = a + 1 == a_end
                take = need if (last or left_on_arc >= need) else left_on_arc
                out_group[written] = g
                out_node[written] = arc_node[a]
                out_amount[written] = take
                written += 1
                need -= take
                left_on_arc -= take
                if last:
                    break
    return written
