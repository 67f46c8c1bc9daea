"""Capacity-aware assignment: which nodes serve how much of each client group's demand.

The way large CDNs map users (Maggs and Sitaraman, "Algorithmic nuggets in content
delivery", 2015), simplified to a greedy fill that is checked against the min-cost-flow
optimum in ``loadtest/bench_core.py``:

1. Each group's candidates: its best C eligible nodes by score (``_kernels``), exact.
   They rank the answers; the demand goes wherever step 2 puts it.
2. Fill: every (group, node) edge the group may use, cheapest first across all groups,
   takes as much of the group's demand as the node has room for up to
   ``capacity * headroom`` (a heap of each group's next node with room; groups of one
   location spill together). No node is planned past its headroom while any node the
   group may use has room. Fenced groups (a geofence or on-net limits) go first: they
   have fewer nodes to go to.
3. Reserve: if there is still demand, step 2 again up to full capacity.
4. Overflow: what is left cannot fit anywhere; it stays on the group's best candidate
   and shows up as a capacity overrun.

A group with no demand yet goes whole to its best candidate that still has room.

Capacity is shared between policies: each policy is planned with what the earlier ones
left (``used_elsewhere``). A node going down is repaired incrementally
(``replan_node_down``): only the groups that listed it are released and placed again.

The greedy fill is what a change gets at once; ``refine.py`` then places the same demand at
minimum cost in the background (the greedy is up to 6 % over the optimum's latency at high
load), and repairs go on from the refined plans once they are in service.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from router.steering import _kernels
from router.steering.rank import RankInputs

# The location list must be longer than a group's candidate list, so that sampled RTTs
# that push some location entries back rarely force a full scan.
LOCATION_DEPTH = 24
CANDIDATES = 16


@dataclass(frozen=True)
class Topology:
    """What planning needs that does not change with node state: built once per policy."""

    group_loc: np.ndarray  # int32[G] -> location
    loc_lat: np.ndarray  # float64[L]
    loc_lon: np.ndarray
    loc_country: np.ndarray  # int32[L]
    loc_fence: np.ndarray  # int32[L]
    onnet_asn: np.ndarray  # int64[A], sorted
    onnet_start: np.ndarray  # int64[A + 1]
    onnet_node: np.ndarray  # int32[N]: nodes of each ASN

    @classmethod
    def create(cls, inputs: RankInputs) -> Topology:
        # Locations are the distinct (lat, lon, country, fence) of the groups, in that
        # lexicographic order.
        columns = (inputs.group_lat, inputs.group_lon, inputs.group_country, inputs.group_fence)
        first, group_loc = distinct_rows(columns)
        group_loc = group_loc.astype(np.int32)
        loc_lat, loc_lon, loc_country, loc_fence = (np.ascontiguousarray(c[first]) for c in columns)
        order = np.argsort(inputs.node_asn, kind="stable")
        asns, starts = np.unique(inputs.node_asn[order], return_index=True)
        return cls(
            group_loc=group_loc, loc_lat=loc_lat, loc_lon=loc_lon,
            loc_country=loc_country.astype(np.int32), loc_fence=loc_fence.astype(np.int32),
            onnet_asn=asns.astype(np.int64),
            onnet_start=np.append(starts, len(order)).astype(np.int64),
            onnet_node=order.astype(np.int32),
        )  # fmt: skip


def distinct_rows(columns: tuple | list) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of equal-length 1-D ``columns`` (the first the primary key), in
    lexicographic order: the index of each one's first row, and each row's distinct row."""
    # A lexsort of the columns: np.unique over a structured array (or with axis=1) took 15
    # times longer at 127,000 rows, and held the GIL meanwhile.
    order = np.lexsort(tuple(columns)[::-1])
    starts = np.ones(len(order), dtype=np.bool_)
    starts[1:] = np.logical_or.reduce([c[order[1:]] != c[order[:-1]] for c in columns])
    inverse = np.empty(len(order), dtype=np.int64)
    inverse[order] = np.cumsum(starts) - 1
    return order[starts], inverse


def demand_fits(plans: list[PolicyPlan]) -> bool:
    """No plan has demand that fits nowhere (overflow)."""
    return not any((plan.overflow > 0).any() for plan in plans)


@dataclass(frozen=True)
class PlanInputs:
    rank: RankInputs
    topology: Topology
    group_demand: np.ndarray  # float64[G], Gbps expected from each group
    node_capacity: np.ndarray  # float64[N], Gbps
    headroom: float  # fill nodes up to capacity * headroom before using the reserve

    @classmethod
    def create(
        cls,
        rank: RankInputs,
        topology: Topology,
        group_demand: object,
        node_capacity: object,
        headroom: float,
    ) -> PlanInputs:
        demand = np.ascontiguousarray(group_demand, dtype=np.float64)
        capacity = np.ascontiguousarray(node_capacity, dtype=np.float64)
        if demand.shape != rank.group_lat.shape or not (
            np.isfinite(demand).all() and (demand >= 0).all()
        ):
            raise ValueError("group_demand must be finite, >= 0, one per group")
        if capacity.shape != rank.node_lat.shape or not (
            np.isfinite(capacity).all() and (capacity > 0).all()
        ):
            raise ValueError("node_capacity must be finite, > 0, one per node")
        if not 0 < headroom <= 1:
            raise ValueError("headroom must be in (0, 1]")
        if topology.group_loc.shape != demand.shape:
            raise ValueError("topology was built for other groups")
        return cls(rank, topology, demand, capacity, float(headroom))


@dataclass
class PolicyPlan:
    """The plan of one policy. Arrays are owned by the plan; replan_node_down edits them."""

    eligible: np.ndarray  # bool[F, N]
    loc_node: np.ndarray  # int32[L, LOCATION_DEPTH]
    loc_score: np.ndarray
    loc_dist: np.ndarray
    cand_node: np.ndarray  # int32[G, C], best first, -1 padded
    cand_score: np.ndarray  # float64[G, C]
    cand_dist: np.ndarray
    alloc_group: np.ndarray  # int32[E]: demand placed, one entry per (group, node) step
    alloc_node: np.ndarray
    alloc_amount: np.ndarray  # Gbps
    overflow: np.ndarray  # float64[G]: demand that fits nowhere (on the best candidate)
    load: np.ndarray  # float64[N]: this policy's planned load
    full_scans: int
    # int32: the groups the last repair released and placed again (a table is patched for them).
    replaced: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))

    def shares(self, group: int) -> list[tuple[int, float]]:
        """(node, Gbps) of one group in preference order; empty when it has no demand."""
        out: dict[int, float] = {}
        mine = self.alloc_group == group
        for node, amount in zip(self.alloc_node[mine], self.alloc_amount[mine]):
            out[int(node)] = out.get(int(node), 0.0) + float(amount)
        if self.overflow[group] > 0:
            best = int(self.cand_node[group, 0])
            out[best] = out.get(best, 0.0) + float(self.overflow[group])
        return list(out.items())


def _rank_args(r: RankInputs) -> tuple:
    return (r.group_lat, r.group_lon, r.group_country, r.group_asn, r.group_fence)


def plan_policy(
    inputs: PlanInputs,
    used_elsewhere: np.ndarray | None = None,
    candidates: int = CANDIDATES,
    location_depth: int = LOCATION_DEPTH,
) -> PolicyPlan:
    """Plan one policy from scratch; ``used_elsewhere`` is load planned by other policies."""
    r, t = inputs.rank, inputs.topology
    n_groups, n_nodes = len(r.group_lat), len(r.node_lat)
    eligible = np.empty(r.fence_allowed.shape, dtype=np.bool_)
    _kernels._eligibility(r.node_state, r.node_in_pool, r.fence_allowed, eligible)
    depth = max(location_depth, candidates)
    n_locs = len(t.loc_lat)
    plan = PolicyPlan(
        eligible=eligible,
        loc_node=np.empty((n_locs, depth), dtype=np.int32), loc_score=np.empty((n_locs, depth)),
        loc_dist=np.empty((n_locs, depth)),
        cand_node=np.empty((n_groups, candidates), dtype=np.int32), cand_score=np.empty((n_groups, candidates)),
        cand_dist=np.empty((n_groups, candidates)),
        alloc_group=np.zeros(0, dtype=np.int32), alloc_node=np.zeros(0, dtype=np.int32), alloc_amount=np.zeros(0),
        overflow=np.zeros(n_groups), load=np.zeros(n_nodes), full_scans=0,
    )  # fmt: skip
    _locations(inputs, plan, np.arange(n_locs, dtype=np.int32))
    groups = np.arange(n_groups, dtype=np.int32)
    plan.full_scans = _candidates(inputs, plan, groups)
    _place(inputs, plan, groups, used_elsewhere)
    return plan


def replan_node_down(
    inputs: PlanInputs, plan: PolicyPlan, node: int, used_elsewhere: np.ndarray | None = None
) -> PolicyPlan | None:
    """Repair ``plan`` in place after ``node`` left service; None when a full plan is needed.

    ``inputs`` carries the new node states. Groups that listed the node among their
    candidates are ranked again; of the groups with a share on it, only that share is
    released and placed again (their other shares stay where they are); every other group
    keeps its plan, so the repair costs what the failure touches, not what the world holds.
    """
    r = inputs.rank
    eligible = np.empty(r.fence_allowed.shape, dtype=np.bool_)
    _kernels._eligibility(r.node_state, r.node_in_pool, r.fence_allowed, eligible)
    expected = plan.eligible.copy()
    expected[:, node] = False
    if not np.array_equal(eligible, expected):
        return None  # a health tier changed (e.g. the last up node of a fence): re-plan all
    plan.eligible = eligible
    n_nodes = len(plan.load)
    locs = _rows_listing(plan.loc_node, node, n_nodes)
    _locations(inputs, plan, locs)
    # Only the share on the node: releasing its groups whole made a repair re-place every
    # share of a group spread over hundreds of nodes (a country-level location: 30 ms of
    # the fill for one node, at world scale), only to put most of it back where it was.
    # Groups that did not fit anywhere are released whole: the repair may have freed room.
    overflowed = np.flatnonzero(plan.overflow > 0).astype(np.int32)
    _release(plan, overflowed)
    on_node = plan.alloc_node == node
    freed = np.zeros(len(plan.cand_node))
    np.add.at(freed, plan.alloc_group[on_node], plan.alloc_amount[on_node])
    _drop_entries(plan, on_node)
    plan.load[node] = 0.0  # its shares were all this plan put there: no float dust left
    freed[overflowed] = inputs.group_demand[overflowed]
    # A mask, not np.union1d: its np.unique took 2 ms on the 25,000 groups of a Seoul node.
    touched = freed > 0
    touched[_rows_listing(plan.cand_node, node, n_nodes)] = True
    groups = np.flatnonzero(touched).astype(np.int32)
    plan.full_scans += _candidates(inputs, plan, groups)
    _place(inputs, plan, groups, used_elsewhere, freed[groups])
    plan.replaced = groups
    return plan


def _rows_listing(table: np.ndarray, node: int, n_nodes: int) -> np.ndarray:
    """Sorted indexes (int32) of the rows of ``table`` (int32[R, K], nodes below ``n_nodes``,
    -1 padded) that hold ``node``."""
    # One pass in numba: (table == node).any(axis=1) reduced along short rows slowly, and
    # np.unique of the hits took 2.5 ms for the 25,000 groups that list a Seoul node.
    flagged = np.zeros(n_nodes, dtype=np.bool_)
    flagged[node] = True
    return rows_listing_any(table, np.zeros(len(table), dtype=np.bool_), flagged)


def rows_listing_any(table: np.ndarray, skip: np.ndarray, flagged: np.ndarray) -> np.ndarray:
    """Sorted indexes (int32) of the rows of ``table`` (int32[R, K], -1 padded) that ``skip``
    (bool[R]) leaves and that hold a node ``flagged`` (bool[N]) marks."""
    # One pass in numba: the numpy form (gather the rows, look the nodes up, any() along
    # rows of 16) took 6 ms at world scale, most of a repair's table when few groups have
    # demand (every other group is idle and is checked).
    out = np.empty(len(table), dtype=np.int32)
    count = _kernels._rows_listing_any(table, skip, flagged, out)
    return out[:count]


def replan_groups(
    inputs: PlanInputs,
    plan: PolicyPlan,
    groups: np.ndarray,
    used_elsewhere: np.ndarray | None = None,
) -> PolicyPlan:
    """Release and place again only ``groups`` (their samples or demand changed), in place.

    Node states, loads and every other group's inputs must be what ``plan`` was made
    from; the other groups keep their shares.
    """
    # Groups that did not fit anywhere get another try: the repair may have freed room.
    groups = np.union1d(
        np.asarray(groups, dtype=np.int32), np.flatnonzero(plan.overflow > 0)
    ).astype(np.int32)
    _release(plan, groups)
    plan.full_scans += _candidates(inputs, plan, groups)
    _place(inputs, plan, groups, used_elsewhere)
    plan.replaced = groups
    return plan


def _locations(inputs: PlanInputs, plan: PolicyPlan, locs: np.ndarray) -> None:
    r, t = inputs.rank, inputs.topology
    _kernels._location_topk(
        locs, t.loc_lat, t.loc_lon, t.loc_country, t.loc_fence,
        r.node_lat, r.node_lon, r.node_country, r.node_util, plan.eligible,
        r.country_rtt, r.est_base_ms, r.est_ms_per_km, r.load_penalty_ms,
        plan.loc_node, plan.loc_score, plan.loc_dist,
    )  # fmt: skip


def _candidates(inputs: PlanInputs, plan: PolicyPlan, groups: np.ndarray) -> int:
    r, t = inputs.rank, inputs.topology
    return int(_kernels._group_candidates(
        groups, *_rank_args(r), t.group_loc, plan.loc_node, plan.loc_score, plan.loc_dist,
        t.onnet_asn, t.onnet_start, t.onnet_node,
        r.node_lat, r.node_lon, r.node_country, r.node_asn, r.node_util, plan.eligible,
        r.country_rtt, r.est_base_ms, r.est_ms_per_km, r.onnet_bonus_ms, r.load_penalty_ms,
        r.meas_start, r.meas_node, r.meas_rtt, plan.cand_node, plan.cand_score, plan.cand_dist,
    ))  # fmt: skip


def _release(plan: PolicyPlan, groups: np.ndarray) -> None:
    """Take the groups' planned demand off their nodes."""
    best = plan.cand_node[groups, 0]
    has_overflow = plan.overflow[groups] > 0
    np.subtract.at(plan.load, best[has_overflow], plan.overflow[groups][has_overflow])
    plan.overflow[groups] = 0.0
    _drop_entries(plan, np.isin(plan.alloc_group, groups))


def _drop_entries(plan: PolicyPlan, drop: np.ndarray) -> None:
    """Take the allocation entries ``drop`` (bool[E]) off their nodes and out of the plan."""
    np.subtract.at(plan.load, plan.alloc_node[drop], plan.alloc_amount[drop])
    plan.alloc_group, plan.alloc_node, plan.alloc_amount = (
        plan.alloc_group[~drop],
        plan.alloc_node[~drop],
        plan.alloc_amount[~drop],
    )
    np.maximum(plan.load, 0.0, out=plan.load)  # float dust from the subtraction


def _place(
    inputs: PlanInputs,
    plan: PolicyPlan,
    groups: np.ndarray,
    used_elsewhere: np.ndarray | None,
    demand: np.ndarray | None = None,
) -> None:
    """Fill, reserve, overflow (the module docstring) for ``groups``: each group's whole
    demand, or ``demand`` (one per group) when only part of it is to be placed."""
    used = plan.load if used_elsewhere is None else plan.load + used_elsewhere
    demand_left = np.zeros_like(inputs.group_demand)
    demand_left[groups] = inputs.group_demand[groups] if demand is None else demand
    placed_before = len(plan.alloc_group)
    fenced = inputs.rank.group_fence[groups] != 0
    for limit in (inputs.headroom, 1.0):
        if not demand_left[groups].any():
            break
        remaining = np.maximum(inputs.node_capacity * limit - used, 0.0)
        remaining[~plan.eligible.any(axis=0)] = 0.0
        start = remaining.copy()
        # Fenced groups first: they may use fewer nodes, so the others must not take those
        # nodes while any other node has room for them.
        for cohort in (groups[fenced], groups[~fenced]):
            if demand_left[cohort].any():
                _fill(inputs, plan, cohort, demand_left, remaining)
        used = used + (start - remaining)
    plan.overflow[groups] = demand_left[groups]
    np.add.at(plan.load, plan.alloc_node[placed_before:], plan.alloc_amount[placed_before:])
    spilled = groups[plan.overflow[groups] > 0]
    np.add.at(plan.load, plan.cand_node[spilled, 0], plan.overflow[spilled])


def _fill(
    inputs: PlanInputs,
    plan: PolicyPlan,
    groups: np.ndarray,
    demand_left: np.ndarray,
    remaining: np.ndarray,
) -> None:
    r, t = inputs.rank, inputs.topology
    short = groups[demand_left[groups] > 0]
    out_group = np.empty(len(short) + len(remaining) + 1, dtype=np.int32)
    out_node = np.empty_like(out_group)
    out_amount = np.empty(len(out_group))
    written = _kernels._fill(
        short, *_rank_args(r), t.group_loc, t.onnet_asn, t.onnet_start, t.onnet_node,
        r.node_lat, r.node_lon, r.node_country, r.node_asn, r.node_util,
        plan.eligible, r.country_rtt, r.est_base_ms, r.est_ms_per_km, r.onnet_bonus_ms,
        r.load_penalty_ms, r.meas_start, r.meas_node, r.meas_rtt, demand_left, remaining,
        plan.loc_node, plan.loc_score, plan.loc_dist, out_group, out_node, out_amount,
    )  # fmt: skip
    assert written >= 0, "allocation buffer too small"
    plan.alloc_group = np.concatenate([plan.alloc_group, out_group[:written]])
    plan.alloc_node = np.concatenate([plan.alloc_node, out_node[:written]])
    plan.alloc_amount = np.concatenate([plan.alloc_amount, out_amount[:written]])


def primary_shares(
    plan: PolicyPlan,
    inputs: PlanInputs,
    used_elsewhere: np.ndarray | None = None,
    only: np.ndarray | None = None,
) -> tuple:
    """Per group, the nodes that lead its answers and their weights, in preference order.

    Returns (entry_group int32[E], entry_node int32[E], entry_weight float64[E]) sorted
    by group, each group's entries in the order they were placed (best first). Groups
    with no demand get one entry: their best candidate with room left. ``only`` (int32
    group indexes): the entries of just those groups, as the whole call would give them.
    """
    groups_n = plan.cand_node.shape[0]
    if only is None:
        wanted = np.ones(groups_n, dtype=np.bool_)
    else:
        wanted = np.zeros(groups_n, dtype=np.bool_)
        wanted[only] = True
    groups = np.flatnonzero(wanted)
    used = plan.load if used_elsewhere is None else plan.load + used_elsewhere
    room = used < inputs.node_capacity * inputs.headroom
    size = len(plan.alloc_group) + len(groups)
    out_group = np.empty(size, dtype=np.int32)
    out_node = np.empty(size, dtype=np.int32)
    out_weight = np.empty(size, dtype=np.float64)
    int32, float64 = np.int32, np.float64
    written = _kernels._primary_shares(
        groups, wanted, np.ascontiguousarray(plan.alloc_group, int32),
        np.ascontiguousarray(plan.alloc_node, int32), np.ascontiguousarray(plan.alloc_amount, float64),
        np.ascontiguousarray(plan.overflow, float64), np.ascontiguousarray(plan.cand_node, int32),
        room, out_group, out_node, out_weight,
    )  # fmt: skip
    return out_group[:written], out_node[:written], out_weight[:written]
