"""Routing tables: node states and demand in, immutable per-group answers out.

A table is built whenever an input changes (node state, load, demand) and swapped in
atomically; the DNS side only ever reads it. Each policy is planned with
``router.steering.capacity``; a group whose demand the plan splits over several nodes gets
several answers with weights, and the DNS side picks one per client subnet (sticky).
Every answer leads with the node the plan chose, followed by the group's next best nodes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from router.steering import _kernels
from router.steering.capacity import (
    PlanInputs,
    PolicyPlan,
    demand_fits,
    plan_policy,
    primary_shares,
    replan_groups,
    replan_node_down,
    rows_listing_any,
)
from router.steering.model import SteeringModel
from router.steering.patch import SetIndex, owner_runs, patch, row_keys
from router.steering.refine import RefineMemory, RefineReport, copy_plan
from router.steering.refine import refine as refine_plans

WEIGHT_SCALE = 65536  # split weights are cumulative thresholds in [1, WEIGHT_SCALE]


@dataclass(frozen=True)
class RoutingTable:
    generation: int
    group_set: np.ndarray  # int32[P, G]: answer set; negative: -(1 + split row)
    set_nodes: np.ndarray  # int32[S, K]: node indexes of each answer set, -1 padded
    node_state: np.ndarray  # int8[N]: the states it was built from
    split_start: np.ndarray  # int32[R + 1]: each split row's entries in split_set/split_cum
    split_set: np.ndarray  # int32[T]: answer set of each entry
    split_cum: np.ndarray  # uint32[T]: cumulative weight, the row's last entry is WEIGHT_SCALE
    node_planned: np.ndarray  # float64[N]: Gbps the plans put on each node (all policies)
    # int32[P, K]: for a policy with pools, the pool each of its (rule, fence) classes
    # answers from (CompiledPolicy.resolve); -1 elsewhere. For the query log's reasons.
    policy_pool: np.ndarray

    def entries(self, policy: int, group: int) -> list[tuple[list[int], float]]:
        """(answer nodes, share of the group's clients) for one group, plan order."""
        value = int(self.group_set[policy, group])
        if value >= 0:
            return [(self._nodes(value), 1.0)]
        row = -value - 1
        out = []
        previous = 0
        for i in range(int(self.split_start[row]), int(self.split_start[row + 1])):
            cum = int(self.split_cum[i])
            out.append((self._nodes(int(self.split_set[i])), (cum - previous) / WEIGHT_SCALE))
            previous = cum
        return out

    def nodes_for(self, policy: int, group: int) -> list[int]:
        """The answer most of the group's clients get."""
        return max(self.entries(policy, group), key=lambda e: e[1])[0]

    def _nodes(self, answer_set: int) -> list[int]:
        return [int(n) for n in self.set_nodes[answer_set] if n >= 0]


@dataclass(frozen=True)
class PlanBasis:
    """What a plan is made from besides node states and load, as the planner held it when
    the plan began: each policy's demand, the fused RTT samples, the policy probes' verdicts."""

    demand: np.ndarray  # float64[P, G]
    samples: tuple | None
    policy_down: np.ndarray  # bool[P, N]


@dataclass(frozen=True)
class FullPlan:
    """Every policy planned afresh (``Planner.plan_full``), not yet the planner's own
    (``Planner.adopt``); its table carries generation 0 until then."""

    basis: PlanBasis
    node_state: np.ndarray
    node_util: np.ndarray
    plans: list[PolicyPlan]
    inputs: list[PlanInputs]
    resolved: list[np.ndarray]
    table: RoutingTable
    index: SetIndex | None  # the table's answer sets by key, to patch it (None: too wide)
    # The plans as planned, for the refine pass (``Planner.refine``): copies, because the
    # plans above are repaired in place once adopted. None: not to be refined.
    refine_from: list[PolicyPlan] | None = None


class Planner:
    """Keeps each policy's plan so that a node failure can be repaired, not re-planned."""

    def __init__(self, model: SteeringModel) -> None:
        self.model = model
        self.plans: list[PolicyPlan | None] = [None] * len(model.policies)
        self.inputs: list[PlanInputs | None] = [None] * len(model.policies)
        self.demand = np.array([p.demand_prior for p in model.policies]).reshape(
            len(model.policies), -1
        )
        self.samples: tuple | None = None
        # Nodes a policy's own probe took out of that policy (bool[P, N]).
        self.policy_down = np.zeros((len(model.policies), len(model.node_ids)), dtype=np.bool_)
        # Per policy with pools: the pool each (rule, fence) class answers from (CompiledPolicy.resolve).
        self.resolved: list[np.ndarray] = [np.zeros(0, dtype=np.int32)] * len(model.policies)
        self.last_kind = "none"
        self.refine_memory: RefineMemory | None = None  # what the last refine kept (its thread's)
        self._unrefined: FullPlan | None = None
        self._last: tuple[RoutingTable, SetIndex] | None = None  # the last table, to patch
        self.grown = False  # the last patch grew the table past SetIndex.grown (not compacted)

    def set_demand(self, policy: int, demand: np.ndarray) -> None:
        self.demand[policy] = demand

    def basis(self) -> PlanBasis:
        """The planner's demand, samples and probe verdicts as they are now (copies)."""
        return PlanBasis(self.demand.copy(), self.samples, self.policy_down.copy())

    def build(
        self,
        node_state: np.ndarray,
        node_util: np.ndarray | None,
        generation: int,
        for_refine: bool = False,
    ) -> RoutingTable:
        """Plan every policy from scratch, the most constrained first (``planning_order``).
        ``for_refine``: keep the full plan for a refine (``take_unrefined``)."""
        full = self.plan_full(node_state, node_util)
        self._unrefined = full if for_refine and demand_fits(full.plans) else None
        return self.adopt(full, generation)

    def take_unrefined(self) -> FullPlan | None:
        """The full plan the last ``build(for_refine=True)`` put in service, once, with
        copies of its plans for the refine. Only before any repair of them (the copies are
        made now: not at build, so that the DNS workers a start forks after it do not map
        them for good)."""
        full, self._unrefined = self._unrefined, None
        if full is None:
            return None
        return dataclasses.replace(full, refine_from=[copy_plan(plan) for plan in full.plans])

    def plan_full(
        self,
        node_state: np.ndarray,
        node_util: np.ndarray | None,
        basis: PlanBasis | None = None,
        for_refine: bool = False,
    ) -> FullPlan:
        """Every policy planned from scratch and its table, from ``basis`` (default: the
        planner's own, now). Changes nothing here, so it may run in another thread while this
        planner goes on repairing its current plans (the kernels release the GIL).
        ``for_refine``: keep copies of the plans for ``refine`` (unless demand overflows)."""
        basis = self.basis() if basis is None else basis
        n_policies, n_nodes = len(self.model.policies), len(self.model.node_ids)
        node_state = np.array(node_state, dtype=np.int8)
        util = np.zeros(n_nodes) if node_util is None else np.array(node_util, dtype=np.float64)
        made = [self._inputs_for(p, node_state, util, basis) for p in range(n_policies)]
        inputs = [item[0] for item in made]
        resolved = [item[1] for item in made]
        plans: list[PolicyPlan] = [None] * n_policies  # type: ignore[list-item]
        used = np.zeros(n_nodes)
        for p in planning_order(inputs):
            plans[p] = plan_policy(inputs[p], used)
            used = used + plans[p].load
        table, index = self._whole_table(plans, inputs, resolved, node_state, 0)
        refinable = for_refine and demand_fits(plans)
        refine_from = [copy_plan(plan) for plan in plans] if refinable else None
        return FullPlan(basis, node_state, util, plans, inputs, resolved, table, index, refine_from)

    def refine(
        self, full: FullPlan, budget_s: float, stop: Callable[[], bool] = lambda: False
    ) -> tuple[FullPlan | None, RefineReport]:
        """``full`` with its plans made optimal (``router/steering/refine.py``), or None with
        the reason. Like ``plan_full`` it touches no plan in service, so it runs in the
        background; only one refine runs at a time (it keeps ``refine_memory``)."""
        if full.refine_from is None:
            return None, RefineReport("not refined: no copy of the plans was kept")
        plans, report, self.refine_memory = refine_plans(
            full.refine_from, full.inputs, budget_s, self.refine_memory, stop
        )
        if plans is None:
            return None, report
        if not report.improved():
            report.status = f"kept the plan: no better one ({report.status})"
            report.no_better = True
            return None, report
        table, index = self._whole_table(plans, full.inputs, full.resolved, full.node_state, 0)
        refined = dataclasses.replace(full, plans=plans, table=table, index=index, refine_from=None)
        return refined, report

    def adopt(self, full: FullPlan, generation: int) -> RoutingTable:
        """Make ``full`` the planner's plans (repairs go on from it); its table as ``generation``."""
        self.plans = list(full.plans)
        self.inputs = list(full.inputs)
        self.resolved = list(full.resolved)
        self.demand, self.samples = full.basis.demand, full.basis.samples
        self.policy_down = full.basis.policy_down
        table = dataclasses.replace(full.table, generation=generation)
        self._last = None if full.index is None else (table, full.index)
        self.grown = False
        self.last_kind = "full"
        return table

    def plan_util(self) -> np.ndarray | None:
        """The node load the current plans were made with (None before the first plan)."""
        first = self.inputs[0] if self.inputs else None
        return None if first is None else first.rank.node_util

    def node_down(
        self, node: int, node_state: np.ndarray, node_util: np.ndarray | None, generation: int
    ) -> RoutingTable:
        """One node left service: repair each plan where it can, else plan afresh."""
        util = np.zeros(len(self.model.node_ids)) if node_util is None else node_util
        planned_util = self.plan_util()
        if planned_util is None or not np.array_equal(planned_util, util):
            return self.build(node_state, node_util, generation)
        table = self.repair_node_down(node, node_state, generation)
        return self.build(node_state, node_util, generation) if table is None else table

    def repair_node_down(
        self, node: int, node_state: np.ndarray, generation: int, compact: bool = True
    ) -> RoutingTable | None:
        """One node left service (``node_state`` is the plans' states with it down): each plan
        repaired, at the load the plans were made with. None when a repair cannot do (no plans
        yet, a pool emptied, a health tier changed): a full plan must follow, and until then
        the planner has no plans (a repair that gave up half way left them inconsistent)."""
        if any(p is None for p in self.plans):
            return None
        util = self.plan_util()
        assert util is not None
        # A pool emptied (or back): its classes move along their fallback chains, which
        # changes what they may use beyond the one node: plan afresh.
        resolved = [
            self.model.policies[p].resolve(self._policy_state(p, node_state, self.policy_down))
            for p in range(len(self.plans))
        ]
        if any(not np.array_equal(r, self.resolved[p]) for p, r in enumerate(resolved)):
            return self.drop_plans()
        total = sum(p.load for p in self.plans if p is not None)
        before = total
        for p, plan in enumerate(self.plans):
            assert plan is not None
            inputs = self._repair_inputs(p, node_state, util, resolved[p])
            repaired = replan_node_down(inputs, plan, node, total - plan.load)
            if repaired is None:
                return self.drop_plans()
            total = sum(q.load for q in self.plans if q is not None)
            self.inputs[p] = inputs
        self.last_kind = "incremental"
        return self._patched_table(node_state, generation, before, compact)

    def _repair_inputs(
        self, p: int, node_state: np.ndarray, util: np.ndarray, resolved: np.ndarray
    ) -> PlanInputs:
        """Policy ``p``'s inputs for a repair: its plan's own with the new node states, when
        nothing else of them can differ (same pools, samples, demand); else made afresh.
        Making them afresh checks every array again (milliseconds at world scale)."""
        previous = self.inputs[p]
        assert previous is not None
        rank = previous.rank
        same_samples = (
            rank.meas_node.size == 0
            if self.samples is None
            else rank.meas_start is self.samples[0] and rank.meas_node is self.samples[1]
            and rank.meas_rtt is self.samples[2]
        )  # fmt: skip
        if not (
            same_samples
            and np.array_equal(resolved, self.resolved[p])
            and np.array_equal(previous.group_demand, self.demand[p])
            and rank.node_util is util
        ):
            return self._inputs_for(p, node_state, util, resolved=resolved)[0]
        state = np.ascontiguousarray(
            self._policy_state(p, node_state, self.policy_down), dtype=np.int8
        )
        return dataclasses.replace(previous, rank=dataclasses.replace(rank, node_state=state))

    def drop_plans(self) -> None:
        """Forget the plans (a repair of them went wrong): the next table is a full plan."""
        self.plans = [None] * len(self.model.policies)
        self.inputs = [None] * len(self.model.policies)
        self._last = None
        return None

    def groups_changed(
        self,
        groups: np.ndarray,
        node_state: np.ndarray,
        node_util: np.ndarray | None,
        generation: int,
    ) -> RoutingTable:
        """Some groups' samples or demand changed (already set here): re-place just them."""
        util = np.zeros(len(self.model.node_ids)) if node_util is None else node_util
        if any(p is None for p in self.plans) or any(
            not (
                np.array_equal(i.rank.node_util, util)
                # The plan's states carry the policy probe's verdicts.
                and np.array_equal(
                    i.rank.node_state, self._policy_state(p, node_state, self.policy_down)
                )
            )
            for p, i in enumerate(self.inputs)
            if i is not None
        ):
            return self.build(node_state, node_util, generation)
        for p, plan in enumerate(self.plans):
            assert plan is not None
            inputs, self.resolved[p] = self._inputs_for(p, node_state, util)
            total = sum(q.load for q in self.plans if q is not None)
            replan_groups(inputs, plan, groups, total - plan.load)
            self.inputs[p] = inputs
        self.last_kind = "incremental"
        return self._table(node_state, generation)

    @staticmethod
    def _policy_state(p: int, node_state: np.ndarray, policy_down: np.ndarray) -> np.ndarray:
        """Node states as policy ``p`` sees them: its own probe's verdicts on top."""
        if policy_down[p].any():
            return np.where(policy_down[p], np.int8(2), node_state).astype(np.int8)
        return node_state

    def _inputs_for(
        self,
        p: int,
        node_state: np.ndarray,
        util: np.ndarray,
        basis: PlanBasis | None = None,
        resolved: np.ndarray | None = None,
    ) -> tuple[PlanInputs, np.ndarray]:
        """Policy ``p``'s plan inputs and the pool each of its classes resolved to, from
        ``basis`` (default: the planner's own); ``resolved``: already resolved for these states."""
        compiled = self.model.policies[p]
        demand, samples, policy_down = (
            (self.demand, self.samples, self.policy_down)
            if basis is None
            else (basis.demand, basis.samples, basis.policy_down)
        )
        node_state = self._policy_state(p, node_state, policy_down)
        fence_allowed = None
        if compiled.routing is None:
            resolved = np.zeros(0, dtype=np.int32)
        else:
            resolved = compiled.resolve(node_state) if resolved is None else resolved
            fence_allowed = compiled.allowed(resolved)
        rank = self.model.rank_inputs(p, node_state, util, samples, fence_allowed)
        inputs = PlanInputs.create(
            rank, compiled.topology, demand[p], self.model.node_capacity_gbps, compiled.policy.headroom
        )  # fmt: skip
        return inputs, resolved

    def _table(self, node_state: np.ndarray, generation: int) -> RoutingTable:
        """The whole table of the planner's plans (and it is the one patched next)."""
        plans = [plan for plan in self.plans if plan is not None]
        inputs = [item for item in self.inputs if item is not None]
        table, index = self._whole_table(plans, inputs, self.resolved, node_state, generation)
        self._last = None if index is None else (table, index)
        return table

    def _whole_table(
        self,
        plans: list[PolicyPlan],
        inputs: list[PlanInputs],
        resolved: list[np.ndarray],
        node_state: np.ndarray,
        generation: int,
    ) -> tuple[RoutingTable, SetIndex | None]:
        """Every group of ``plans`` answered, and the table's answer sets by key (None when
        rows are too wide to patch). Reads nothing of the planner's but the model."""
        model = self.model
        width = max((p.policy.answer_count for p in model.policies), default=1)
        n_groups = len(model.client_map.groups)
        used = sum(plan.load for plan in plans)
        all_rows, owner, weight = self._answer_entries(plans, inputs, used, width, None)
        # Many groups share an answer; store each distinct node list once. Up to two nodes a
        # row is one int64 (row_keys), which sorts much faster than bytes.
        fast_keys = row_keys(all_rows)
        if fast_keys is not None:
            keys = fast_keys
        else:
            rows_bytes = all_rows.dtype.itemsize * width
            keys = np.ascontiguousarray(all_rows).view(np.dtype((np.void, rows_bytes))).ravel()
        unique_keys, first, answer_set = np.unique(keys, return_index=True, return_inverse=True)
        sets = all_rows[first]
        answer_set = answer_set.reshape(-1).astype(np.int32)
        # Entries arrive sorted by owner (policy, group); owners with one entry map directly.
        starts, counts = owner_runs(owner)
        group_set = np.empty(len(model.policies) * n_groups, dtype=np.int32)
        single = counts == 1
        group_set[owner[starts[single]]] = answer_set[starts[single]]
        split_owner_starts = starts[~single]
        split_counts = counts[~single]
        group_set[owner[split_owner_starts]] = -1 - np.arange(
            len(split_owner_starts), dtype=np.int32
        )
        entry, split_cum = _split_entries(weight, counts)
        table = RoutingTable(
            generation=generation,
            group_set=group_set.reshape(len(model.policies), n_groups),
            set_nodes=sets.astype(np.int32),
            node_state=np.array(node_state, dtype=np.int8),
            split_start=np.r_[0, np.cumsum(split_counts)].astype(np.int32),
            split_set=answer_set[entry].astype(np.int32),
            split_cum=split_cum,
            node_planned=used,
            policy_pool=_policy_pool_rows(resolved),
        )
        index = None
        if fast_keys is not None:
            ids = np.arange(len(sets), dtype=np.int32)
            index = SetIndex(unique_keys, ids, len(sets), len(table.split_set))
        return _frozen(table), index

    def _answer_entries(
        self,
        plans: list[PolicyPlan],
        inputs: list[PlanInputs],
        used: np.ndarray,
        width: int,
        used_before: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(answer rows, owner = policy * groups + group, weight) of every policy's primary
        shares, sorted by owner: every group's, or with ``used_before`` (the load before a
        repair) only the groups the repair may have changed (``_changed_groups``)."""
        n_groups = len(self.model.client_map.groups)
        rows, owners, weights = [], [], []
        for p, (compiled, plan, item) in enumerate(zip(self.model.policies, plans, inputs)):
            only = None if used_before is None else _changed_groups(plan, item, used_before, used)
            groups, nodes, weight = primary_shares(plan, item, used - plan.load, only=only)
            rows.append(
                _answer_rows(plan.cand_node, groups, nodes, compiled.policy.answer_count, width)
            )
            owners.append(p * n_groups + groups.astype(np.int64))
            weights.append(weight)
        return np.concatenate(rows), np.concatenate(owners), np.concatenate(weights)

    def _patched_table(
        self, node_state: np.ndarray, generation: int, used_before: np.ndarray, compact: bool = True
    ) -> RoutingTable:
        """The last table with only the groups the repair moved answered afresh
        (``router/steering/patch.py``); whole when it cannot be patched, or (``compact``)
        when patches have grown it too much. Without ``compact`` a grown table is still
        patched and ``grown`` says so: the caller plans afresh off the failure's path."""
        if self._last is None:
            return self._table(node_state, generation)
        # _last is kept only for tables whose rows fit row_keys; a patch has the same width.
        previous, index = self._last
        width = previous.set_nodes.shape[1]
        plans = [plan for plan in self.plans if plan is not None]
        inputs = [item for item in self.inputs if item is not None]
        used = sum(plan.load for plan in plans)
        all_rows, owner, weight = self._answer_entries(plans, inputs, used, width, used_before)
        _, counts = owner_runs(owner)
        _, new_cum = _split_entries(weight, counts)
        patched = patch(previous.group_set, previous.set_nodes, previous.split_start,
                        previous.split_set, previous.split_cum, index, owner, all_rows, new_cum)  # fmt: skip
        self.grown = index.grown(len(patched.set_nodes), len(patched.split_set))
        if self.grown and compact:
            self.grown = False
            return self._table(node_state, generation)  # orphaned rows piled up: compact
        table = RoutingTable(
            generation=generation,
            group_set=patched.group_set,
            set_nodes=patched.set_nodes,
            node_state=np.array(node_state, dtype=np.int8),
            split_start=patched.split_start,
            split_set=patched.split_set,
            split_cum=patched.split_cum,
            node_planned=used,
            policy_pool=_policy_pool_rows(self.resolved),
        )
        self._last = (table, patched.index)
        return _frozen(table)


def _split_entries(weight: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For owners with several entries (``counts`` > 1, in owner order): their entries'
    positions, and the cumulative weights of each owner's entries (``_cumulative_weights``)."""
    split = counts > 1
    entry = np.flatnonzero(np.repeat(split, counts))
    row_of_entry = np.repeat(np.arange(int(split.sum())), counts[split])
    return entry, _cumulative_weights(weight[entry], row_of_entry, int(split.sum()))


def _changed_groups(
    plan: PolicyPlan, inputs: PlanInputs, used_before: np.ndarray, used_after: np.ndarray
) -> np.ndarray:
    """Groups whose answers a repair may have changed: those it placed again, and groups
    without demand that list a node whose room below headroom came or went (they answer
    with their first candidate with room, ``primary_shares``)."""
    limit = inputs.node_capacity * inputs.headroom
    flipped = (used_before < limit) != (used_after < limit)
    if not flipped.any():
        return plan.replaced
    planned = np.zeros(len(plan.cand_node), dtype=np.bool_)
    planned[plan.alloc_group] = True
    planned[plan.overflow > 0] = True
    # A mask, not np.union1d: its np.unique took 4 ms on the 25,000 groups of a Seoul node.
    changed = np.zeros(len(plan.cand_node), dtype=np.bool_)
    changed[plan.replaced] = True
    changed[rows_listing_any(plan.cand_node, planned, flipped)] = True
    return np.flatnonzero(changed).astype(np.int32)


def _frozen(table: RoutingTable) -> RoutingTable:
    for array in (table.group_set, table.set_nodes, table.node_state, table.split_start, table.split_set,
                  table.split_cum, table.node_planned, table.policy_pool):  # fmt: skip
        array.flags.writeable = False
    return table


def _policy_pool_rows(resolved: list[np.ndarray]) -> np.ndarray:
    out = np.full((len(resolved), max((len(r) for r in resolved), default=0)), -1, dtype=np.int32)
    for p, row in enumerate(resolved):
        out[p, : len(row)] = row
    return out


def planning_order(inputs: list[PlanInputs]) -> list[int]:
    """Policies in the order they claim capacity: those whose demand may use fewer nodes
    first (pools, rules and geofences restrict them), so that a policy that can answer from
    anywhere does not fill the few nodes a restricted one may use. The measure is the
    number of nodes a unit of the policy's demand may use; ties keep the file's order."""

    def reach(item: PlanInputs) -> float:
        rank = item.rank
        allowed = (rank.fence_allowed & rank.node_in_pool[None, :]).sum(axis=1)
        total = float(item.group_demand.sum())
        if total <= 0:
            return float(allowed.max(initial=0))
        return float((allowed[rank.group_fence] * item.group_demand).sum() / total)

    return sorted(range(len(inputs)), key=lambda p: (reach(inputs[p]), p))


def _answer_rows(
    cand_node: np.ndarray, groups: np.ndarray, primary: np.ndarray, count: int, width: int
) -> np.ndarray:
    """Rows of ``width``: the primary node, then the group's other candidates, ``count`` in all."""
    if not 1 <= count <= width:
        raise ValueError(f"answer count {count} must be in [1, row width {width}]")
    if len(groups) != len(primary):
        raise ValueError(f"{len(groups)} groups but {len(primary)} primary nodes")
    out = np.empty((len(groups), width), dtype=np.int32)
    _kernels._answer_rows(
        np.ascontiguousarray(cand_node, dtype=np.int32),
        np.ascontiguousarray(groups, dtype=np.int32),
        np.ascontiguousarray(primary, dtype=np.int32),
        int(count),
        out,
    )
    return out


def _cumulative_weights(weight: np.ndarray, row: np.ndarray, rows: int) -> np.ndarray:
    """Per split row, cumulative thresholds in [0, WEIGHT_SCALE], the last exactly WEIGHT_SCALE."""
    if not len(weight):
        return np.zeros(0, dtype=np.uint32)
    totals = np.bincount(row, weights=weight, minlength=rows)
    # Shares first, then their running sum less the rows before (each sums to 1 or 0): a
    # running sum of the weights themselves lost a tiny group's split among big groups' Gbps.
    total = totals[row]
    part = np.divide(weight, total, out=np.zeros_like(weight), where=total > 0)
    before = np.r_[0.0, np.cumsum(np.bincount(row, weights=part, minlength=rows))][row]
    share = np.cumsum(part) - before
    out = np.rint(share * WEIGHT_SCALE).astype(np.int64)
    last = np.r_[row[1:] != row[:-1], True]
    out[last] = WEIGHT_SCALE
    return np.clip(out, 0, WEIGHT_SCALE).astype(np.uint32)


def build_routing_table(
    model: SteeringModel, node_state: np.ndarray, node_util: np.ndarray | None, generation: int
) -> RoutingTable:
    """A table planned from scratch (no repair state kept)."""
    return Planner(model).build(node_state, node_util, generation)


def without_down_nodes(
    table: RoutingTable, node_state: np.ndarray, generation: int
) -> RoutingTable:
    """``table`` with every node down in ``node_state`` taken out of its answers (the rest
    of each answer moves up), for a failure no repair can take: until a full plan is in
    service, no answer may list the node. An answer of down nodes only stays as it was, as
    the plan fails open when every node a group may use is down."""
    down = np.append(np.asarray(node_state) == 2, False)  # 2: down; -1 pads read the False
    rows = table.set_nodes
    keep = (rows >= 0) & ~down[rows]
    nothing_left = ~keep.any(axis=1)
    keep[nothing_left] = rows[nothing_left] >= 0
    order = np.argsort(~keep, axis=1, kind="stable")  # kept nodes first, in their order
    set_nodes = np.take_along_axis(rows, order, axis=1)
    set_nodes[~np.take_along_axis(keep, order, axis=1)] = -1
    return _frozen(dataclasses.replace(
        table, generation=generation, set_nodes=set_nodes,
        node_state=np.array(node_state, dtype=np.int8),
    ))  # fmt: skip
