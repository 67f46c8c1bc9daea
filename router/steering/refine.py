"""The refine pass: the greedy plan of ``capacity.py`` made optimal, in the background.

The greedy fill is fast (a full plan of 20,000 nodes in about half a second) and close to the
min-cost optimum at half load, but as load grows it lets some groups take nodes that others
need more (measured at world scale: 4.7 % over the optimum's client latency at 70 % load,
5.7 % at 90 %). The router serves the greedy plan first, then runs this pass on it and puts
the result in service when it is done (``router/service/publisher.py``); repairs after a
failure go on from whichever plan is in service.

The problem, every policy at once (they share the nodes' capacity): groups that no score can
tell apart (one location, fence, on-net ASN, and no RTT samples of their own) form a class;
each class's demand goes to the nodes its fence and pool allow, at the class's score of the
node; a node carries up to ``capacity * headroom`` at no extra cost, then up to its capacity at
``RESERVE_PENALTY_MS`` per Gbps (the greedy's reserve). That is a min-cost flow (classes ->
nodes -> sink), solved exactly by OR-tools' ``SimpleMinCostFlow`` (in a process of its own,
``flow_solver.py``: it holds the GIL while it solves) over a subset of the
(class, node) pairs, grown by column generation: after each solve, node potentials from the
residual graph (``_refine_kernels._sink_distances``) price every pair not in the subset and
each class's most negative ones join it; no negative pair left means the flow is optimal
over all pairs. The subset starts from the greedy's own pairs (so the first solve is at least
as good as the greedy) and each group's candidates. Each class's flow is then handed to its
groups in turn (``_split_flows``), so the plan has about one entry per group, as the greedy's.

Not refined: plans with demand that fits nowhere (overflow: the plan is about capacity then,
not latency), and policies with different headrooms are refined at the lowest of them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from router.steering import _refine_kernels as kernels
from router.steering.capacity import PlanInputs, PolicyPlan, demand_fits, distinct_rows
from router.steering.flow_solver import shared_solver

RESERVE_PENALTY_MS = 10_000.0  # per Gbps above capacity * headroom: used only when needed
PRICED_PER_CLASS = 200  # pairs a class may add per round (more: fewer rounds, longer solves)
# Flow units over all capacity: as fine as OR-tools' cost scaling keeps inside int64 (at
# world scale, 2,000,000 Gbps, a unit is 10 Mbps). Demand is rounded up to whole units, so
# a plan that fills nodes exactly may not fit again (the refine then says infeasible).
MAX_UNITS = 2e8
ROUNDING_SLACK = 1e-9  # in units: 2.5 Gbps / 0.01 is 250.00000000000003, not 251 units
# Pairs a refine keeps for the next: those with flow, and those within this of paying off.
KEEP_REDUCED_MS = 2.0
IMPROVEMENT_MS = 0.001  # per Gbps: a refined plan better by less is not worth a publish


@dataclass
class RefineReport:
    status: str  # "optimal", "stopped: ..." (budget, asked to stop), "not refined: ..."
    rounds: int = 0
    pairs: int = 0
    classes: int = 0
    seconds: float = 0.0
    unit_gbps: float = float("nan")  # the flow's unit
    demand_gbps: float = 0.0
    mean_score_before_ms: float = float("nan")  # demand-weighted, every policy
    mean_score_after_ms: float = float("nan")
    reserve_before_gbps: float = float("nan")  # load above capacity * headroom, every node
    reserve_after_gbps: float = float("nan")
    no_better: bool = False  # refined, but not cheaper than the plan in service: kept that

    def summary(self) -> str:
        return (
            f"{self.status}; {self.classes} classes, {self.rounds} rounds, {self.pairs} pairs, "
            f"{self.seconds:.2f} s; mean score {self.mean_score_before_ms:.3f} -> "
            f"{self.mean_score_after_ms:.3f} ms, reserve {self.reserve_before_gbps:.3f} -> "
            f"{self.reserve_after_gbps:.3f} Gbps"
        )

    def improved(self) -> bool:
        """The refined plans cost less than the greedy's (score, and the reserve's penalty)
        by more than the flow's rounding: else putting them in service changes nothing."""
        demand = max(self.demand_gbps, 1e-12)
        before = self.mean_score_before_ms + RESERVE_PENALTY_MS * self.reserve_before_gbps / demand
        after = self.mean_score_after_ms + RESERVE_PENALTY_MS * self.reserve_after_gbps / demand
        return after < before - IMPROVEMENT_MS


@dataclass(frozen=True)
class RefineMemory:
    """The pairs a refine ended with that may matter to the next one (those with flow, and
    those near it by reduced cost), by class key: the next refine, after a demand change,
    starts from them and needs a round or two instead of ten."""

    keys: list[tuple]
    pair_class: np.ndarray  # int64: index into keys
    pair_node: np.ndarray


@dataclass(frozen=True)
class ScoreClasses:
    """Groups with demand in classes that no score tells apart, every policy's in one
    numbering: policy 0's classes first, then policy 1's, and so on."""

    offsets: np.ndarray  # int64[P + 1]: each policy's classes
    group: np.ndarray  # int32[C]: a representative group
    fence: np.ndarray  # int32[C]
    demand: np.ndarray  # float64[C]: Gbps
    groups_start: np.ndarray  # int64[C + 1]: each class's groups in ``groups``
    groups: np.ndarray  # int32: member groups, ascending within a class
    of_group: list[np.ndarray]  # per policy, int64[G]: class of each group (-1: no demand)
    keys: list[tuple]  # per class: (policy, location, on-net ASN, own group, fence)

    @classmethod
    def create(cls, inputs: list[PlanInputs]) -> ScoreClasses:
        reps, fences, demands, members, of_group, keys_out = [], [], [], [], [], []
        offsets = [0]
        for p, item in enumerate(inputs):
            r, t = item.rank, item.topology
            groups = np.flatnonzero(item.group_demand > 0)
            onnet = np.isin(r.group_asn[groups], r.node_asn)
            asn = np.where(onnet, r.group_asn[groups], -1)
            own = np.where(np.diff(r.meas_start)[groups] > 0, groups, -1)
            keys = np.stack([t.group_loc[groups].astype(np.int64), asn, own,
                             r.group_fence[groups].astype(np.int64)])  # fmt: skip
            # Not np.unique(axis=1): that held the GIL 60 ms at world scale, in the control
            # process's background thread.
            first, inverse = distinct_rows(list(keys))
            keys_out += [(p, *column) for column in keys[:, first].T.tolist()]
            mine = np.full(len(item.group_demand), -1, dtype=np.int64)
            mine[groups] = offsets[-1] + inverse
            of_group.append(mine)
            reps.append(groups[first])
            fences.append(r.group_fence[groups[first]])
            demands.append(
                np.bincount(inverse, weights=item.group_demand[groups], minlength=len(first))
            )
            order = np.lexsort((groups, inverse))
            members.append((inverse[order], groups[order]))
            offsets.append(offsets[-1] + len(first))
        n_classes = offsets[-1]
        member_class = np.concatenate([m[0] + offsets[p] for p, m in enumerate(members)])
        groups_start = np.zeros(n_classes + 1, dtype=np.int64)
        np.cumsum(np.bincount(member_class, minlength=n_classes), out=groups_start[1:])
        return cls(
            offsets=np.array(offsets, dtype=np.int64),
            group=np.concatenate(reps).astype(np.int32),
            fence=np.concatenate(fences).astype(np.int32),
            demand=np.concatenate(demands),
            groups_start=groups_start,
            groups=np.concatenate([m[1] for m in members]).astype(np.int32),
            of_group=of_group,
            keys=keys_out,
        )

    def policy_of(self, p: int) -> slice:
        return slice(int(self.offsets[p]), int(self.offsets[p + 1]))


def refine(
    plans: list[PolicyPlan],
    inputs: list[PlanInputs],
    budget_s: float,
    memory: RefineMemory | None = None,
    stop: Callable[[], bool] = lambda: False,
    priced_per_class: int = PRICED_PER_CLASS,
) -> tuple[list[PolicyPlan] | None, RefineReport, RefineMemory | None]:
    """Plans with the same demand at least as cheap as ``plans`` (the greedy's, not
    changed), or None with the reason in the report; and what the next refine may start
    from. Optimal when the report says so; after ``budget_s`` or once ``stop()`` is true,
    the best found by then. ``memory``: the last refine's, on the same deployment.

    The refined plans have their own allocation but share every other array (candidates,
    eligibility, location lists) with ``plans``: a repair edits those in place, so when both
    may be repaired, pass copies (``copy_plan``; the router refines copies it keeps)."""
    started = time.perf_counter()
    if not demand_fits(plans):
        return None, RefineReport("not refined: some demand fits nowhere (overflow)"), memory
    classes = ScoreClasses.create(inputs)
    n_classes, n_nodes = len(classes.group), len(plans[0].load)
    report = RefineReport("optimal", classes=n_classes)
    if n_classes == 0:
        return None, dataclasses.replace(report, status="not refined: no demand"), memory
    capacity = inputs[0].node_capacity
    unit = report.unit_gbps = float(capacity.sum()) / MAX_UNITS
    # Demand rounded up and capacity down (a unit's float dust aside): the plan made from
    # the flow never puts more on a node than it has.
    supply = np.maximum(np.ceil(classes.demand / unit - ROUNDING_SLACK), 1).astype(np.int64)
    headroom = min(item.headroom for item in inputs)
    free = np.floor(capacity * headroom / unit + ROUNDING_SLACK).astype(np.int64)
    reserve = np.floor(capacity / unit + ROUNDING_SLACK).astype(np.int64) - free
    reserve_cost = int(round(RESERVE_PENALTY_MS * kernels.COST_PER_MS))
    shift = max(float(item.rank.onnet_bonus_ms) for item in inputs)  # scores >= -bonus
    contexts = [_context(item.rank) for item in inputs]
    latencies = _location_latencies(inputs)

    # The first pairs: every pair the greedy used, each class's candidates, and what the
    # last refine kept.
    pair_class, pair_node = _first_pairs(plans, classes, memory)
    pair_cost = _costs(classes, contexts, pair_class, pair_node, shift)
    report.demand_gbps = float(classes.demand.sum())
    report.mean_score_before_ms = _mean_score(plans, contexts, shift)
    report.reserve_before_gbps = _reserve(plans, inputs, headroom)
    while True:
        report.rounds += 1
        flow, status = _solve(n_classes, n_nodes, pair_class, pair_node, pair_cost, supply,
                              free, reserve, reserve_cost)  # fmt: skip
        if flow is None:
            report.seconds = time.perf_counter() - started
            report.status = f"not refined: the min-cost flow solver said {status}"
            shared_solver().release_file()
            return None, report, memory
        load = np.bincount(pair_node, weights=flow, minlength=n_nodes).astype(np.int64)
        dist = np.empty(n_classes + n_nodes, dtype=np.int64)
        sweeps = kernels._sink_distances(
            n_classes, pair_class, pair_node, pair_cost, flow, supply[pair_class],
            free - np.minimum(load, free), reserve - np.clip(load - free, 0, None), reserve_cost, dist,
        )  # fmt: skip
        if sweeps < 0:
            report.status = "stopped: the node potentials did not settle"
            break
        if time.perf_counter() - started > budget_s:
            report.status = f"stopped: past the budget of {budget_s:.1f} s"
            break
        if stop():
            report.status = "stopped: asked to"
            break
        new_class, new_node, new_cost = _priced(
            classes, plans, inputs, latencies, pair_class, pair_node, dist, shift, priced_per_class
        )
        if not len(new_class):
            break  # optimal over every pair
        pair_class = np.concatenate([pair_class, new_class])
        pair_node = np.concatenate([pair_node, new_node])
        pair_cost = np.concatenate([pair_cost, new_cost])
    report.pairs = len(pair_class)
    refined = _plans_from_flow(
        plans, inputs, classes, pair_class, pair_node, pair_cost, flow, supply
    )
    report.mean_score_after_ms = _mean_score(refined, contexts, shift)
    report.reserve_after_gbps = _reserve(refined, inputs, headroom)
    keep = flow > 0
    if sweeps >= 0:
        reduced = pair_cost + dist[n_classes + pair_node] - dist[pair_class]
        keep |= reduced < KEEP_REDUCED_MS * kernels.COST_PER_MS
    memory = RefineMemory(classes.keys, pair_class[keep], pair_node[keep])
    shared_solver().release_file()
    report.seconds = time.perf_counter() - started
    return refined, report, memory


def _solve(n_classes, n_nodes, pair_class, pair_node, pair_cost, supply, free, reserve,
           reserve_cost) -> tuple[np.ndarray | None, str]:  # fmt: skip
    """The min-cost flow over the pairs: each pair's flow (units), or None and the status.
    Vertices: classes, then nodes, then the sink; each node reaches the sink by two arcs,
    its room below headroom at no cost and its reserve at ``reserve_cost``."""
    sink = n_classes + n_nodes
    node_vertex = (n_classes + np.arange(n_nodes)).astype(np.int32)
    to_sink = np.full(n_nodes, sink, dtype=np.int32)
    tail = np.concatenate([pair_class.astype(np.int32), node_vertex, node_vertex])
    head = np.concatenate([(n_classes + pair_node).astype(np.int32), to_sink, to_sink])
    # A pair's capacity is its class's supply: OR-tools needs finite arc capacities that
    # sum inside int64, and a class never sends more than it has.
    capacity = np.concatenate([supply[pair_class], free, reserve])
    cost = np.concatenate(
        [pair_cost, np.zeros(n_nodes, np.int64), np.full(n_nodes, reserve_cost, np.int64)]
    )
    supplies = np.zeros(sink + 1, dtype=np.int64)
    supplies[:n_classes] = supply
    supplies[sink] = -int(supply.sum())
    status, flow = shared_solver().solve(tail, head, capacity, cost, supplies)
    return (None if flow is None else flow[: len(pair_class)]), status


def copy_plan(plan: PolicyPlan) -> PolicyPlan:
    """A plan sharing no array with ``plan`` (repairs edit a plan's arrays in place)."""
    return dataclasses.replace(plan, **{
        f.name: getattr(plan, f.name).copy()
        for f in dataclasses.fields(plan) if isinstance(getattr(plan, f.name), np.ndarray)
    })  # fmt: skip


def _context(r) -> tuple:
    # The tuple _kernels._pair reads, in its order.
    return (r.group_lat, r.group_lon, r.group_country, r.group_asn, r.node_lat, r.node_lon,
            r.node_country, r.node_asn, r.node_util, r.country_rtt, r.est_base_ms, r.est_ms_per_km,
            r.onnet_bonus_ms, r.load_penalty_ms, r.meas_start, r.meas_node, r.meas_rtt)  # fmt: skip


def _policy_of_class(classes: ScoreClasses, pair_class: np.ndarray) -> np.ndarray:
    return np.searchsorted(classes.offsets, pair_class, side="right") - 1


def _first_pairs(plans: list[PolicyPlan], classes: ScoreClasses,
                 memory: RefineMemory | None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    n_nodes = len(plans[0].load)
    keys = []
    for p, plan in enumerate(plans):
        of_group = classes.of_group[p]
        used = of_group[plan.alloc_group]
        keys.append(used * n_nodes + plan.alloc_node)
        span = classes.policy_of(p)
        cands = plan.cand_node[classes.group[span]]
        owner = np.repeat(np.arange(span.start, span.stop), cands.shape[1])
        cands = cands.reshape(-1)
        ok = cands >= 0
        ok[ok] = plan.eligible[
            np.repeat(classes.fence[span], plan.cand_node.shape[1])[ok], cands[ok]
        ]
        keys.append(owner[ok] * n_nodes + cands[ok])
    if memory is not None:
        # The last refine's pairs, for the classes that are still here and nodes they may use.
        index = {key: k for k, key in enumerate(classes.keys)}
        now = np.array([index.get(key, -1) for key in memory.keys], dtype=np.int64)
        pair_class, pair_node = now[memory.pair_class], memory.pair_node
        ok = pair_class >= 0
        pair_class, pair_node = pair_class[ok], pair_node[ok]
        policy = _policy_of_class(classes, pair_class)
        allowed = np.zeros(len(pair_class), dtype=np.bool_)
        for p, plan in enumerate(plans):
            mine = policy == p
            allowed[mine] = plan.eligible[classes.fence[pair_class[mine]], pair_node[mine]]
        keys.append(pair_class[allowed] * n_nodes + pair_node[allowed])
    unique = np.unique(np.concatenate(keys))
    return unique // n_nodes, unique % n_nodes


def _costs(classes: ScoreClasses, contexts: list[tuple], pair_class: np.ndarray,
           pair_node: np.ndarray, shift: float) -> np.ndarray:  # fmt: skip
    out = np.empty(len(pair_class), dtype=np.int64)
    policy = _policy_of_class(classes, pair_class)
    for p, ctx in enumerate(contexts):
        mine = np.flatnonzero(policy == p)
        part = np.empty(len(mine), dtype=np.int64)
        kernels._pair_costs(
            classes.group[pair_class[mine]], pair_node[mine].astype(np.int64), ctx, shift, part
        )
        out[mine] = part
    return out


def _location_latencies(inputs: list[PlanInputs]) -> list[np.ndarray]:
    """Per policy, float64[L, N]: each location's latency to each node (policies with the
    same locations share one: 41 MB at world scale): pricing reads it instead of computing
    a haversine per pair."""
    made: list[tuple[PlanInputs, np.ndarray]] = []
    out = []
    for item in inputs:
        t, r = item.topology, item.rank
        same = [
            latency for other, latency in made
            if all(np.array_equal(getattr(t, a), getattr(other.topology, a))
                   for a in ("loc_lat", "loc_lon", "loc_country"))
            and np.array_equal(r.country_rtt, other.rank.country_rtt, equal_nan=True)
            and (r.est_base_ms, r.est_ms_per_km) == (other.rank.est_base_ms, other.rank.est_ms_per_km)
        ]  # fmt: skip
        if not same:
            latency = np.empty((len(t.loc_lat), len(r.node_lat)))
            kernels._location_latency(
                t.loc_lat, t.loc_lon, t.loc_country, r.node_lat, r.node_lon, r.node_country,
                r.country_rtt, r.est_base_ms, r.est_ms_per_km, latency,
            )  # fmt: skip
            made.append((item, latency))
            same = [latency]
        out.append(same[0])
    return out


def _priced(classes, plans, inputs, latencies, pair_class, pair_node, dist, shift, per_class):
    n_classes = len(classes.group)
    order = np.argsort(pair_class, kind="stable")
    sorted_node = pair_node[order].astype(np.int64)
    start = np.zeros(n_classes + 1, dtype=np.int64)
    np.cumsum(np.bincount(pair_class, minlength=n_classes), out=start[1:])
    out = []
    for p, (plan, item, latency) in enumerate(zip(plans, inputs, latencies)):
        r = item.rank
        span = classes.policy_of(p)
        size = (span.stop - span.start) * per_class
        k, n, c = np.empty(size, np.int64), np.empty(size, np.int64), np.empty(size, np.int64)
        reps = classes.group[span]
        written = kernels._price(
            reps, item.topology.group_loc[reps], classes.fence[span], dist[span],
            dist[n_classes:], plan.eligible, start[span.start : span.stop + 1], sorted_node,
            per_class, latency, r.group_asn, r.node_asn, r.node_util, r.onnet_bonus_ms,
            r.load_penalty_ms, r.meas_start, r.meas_node, r.meas_rtt, shift, k, n, c,
        )  # fmt: skip
        out.append((k[:written] + span.start, n[:written], c[:written]))
    return tuple(np.concatenate(part) for part in zip(*out))


def _plans_from_flow(plans, inputs, classes, pair_class, pair_node, pair_cost, flow, supply):
    refined = []
    policy = _policy_of_class(classes, pair_class)
    for p, (plan, item) in enumerate(zip(plans, inputs)):
        span = classes.policy_of(p)
        used = np.flatnonzero((policy == p) & (flow > 0))
        # Each class's arcs best first, so its groups' entries are in preference order.
        used = used[np.lexsort((pair_node[used], pair_cost[used], pair_class[used]))]
        arc_class = pair_class[used]
        amount = flow[used] * classes.demand[arc_class] / supply[arc_class]
        arcs_start = np.zeros(span.stop - span.start + 1, dtype=np.int64)
        np.cumsum(
            np.bincount(arc_class - span.start, minlength=span.stop - span.start),
            out=arcs_start[1:],
        )
        groups_start = classes.groups_start[span.start : span.stop + 1]
        members = classes.groups[groups_start[0] : groups_start[-1]]
        size = len(members) + len(used) + 1
        out_group, out_node = np.empty(size, np.int32), np.empty(size, np.int32)
        out_amount = np.empty(size)
        written = kernels._split_flows(
            groups_start - groups_start[0], members, item.group_demand, arcs_start,
            pair_node[used].astype(np.int32), amount, out_group, out_node, out_amount,
        )  # fmt: skip
        alloc_node = out_node[:written].copy()
        alloc_amount = out_amount[:written].copy()
        refined.append(dataclasses.replace(
            plan, alloc_group=out_group[:written].copy(), alloc_node=alloc_node,
            alloc_amount=alloc_amount, overflow=np.zeros_like(plan.overflow),
            # float64 even for a policy without demand (bincount of nothing gives int64).
            load=np.bincount(alloc_node, weights=alloc_amount, minlength=len(plan.load)).astype(np.float64),
            replaced=np.zeros(0, dtype=np.int32),
        ))  # fmt: skip
    return refined


def _mean_score(plans, contexts, shift) -> float:
    """Demand-weighted mean score (ms) of the plans' entries, every policy."""
    total = weight = 0.0
    for plan, ctx in zip(plans, contexts):
        cost = np.empty(len(plan.alloc_group), dtype=np.int64)
        kernels._pair_costs(plan.alloc_group, plan.alloc_node.astype(np.int64), ctx, shift, cost)
        total += float((cost / kernels.COST_PER_MS - shift) @ plan.alloc_amount)
        weight += float(plan.alloc_amount.sum())
    return total / weight if weight > 0 else float("nan")


def _reserve(plans: list[PolicyPlan], inputs: list[PlanInputs], headroom: float) -> float:
    load = sum(plan.load for plan in plans)
    return float(np.maximum(load - inputs[0].node_capacity * headroom, 0.0).sum())
