"""Routing tables: node states in, immutable per-group answer sets out.

A table is built whole whenever an input changes (node state, load) and then swapped
in atomically; the DNS side only ever reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from router.steering.model import SteeringModel
from router.steering.rank import rank_groups


@dataclass(frozen=True)
class RoutingTable:
    generation: int
    group_set: np.ndarray  # int32[P, G]: answer set of each policy and client group
    set_nodes: np.ndarray  # int32[S, K]: node indexes of each answer set, -1 padded
    node_state: np.ndarray  # int8[N]: the states it was built from

    def nodes_for(self, policy: int, group: int) -> list[int]:
        return [int(n) for n in self.set_nodes[self.group_set[policy, group]] if n >= 0]


def build_routing_table(
    model: SteeringModel, node_state: np.ndarray, node_util: np.ndarray | None, generation: int
) -> RoutingTable:
    if node_util is None:
        node_util = np.zeros(len(model.node_ids))
    width = max((p.policy.answer_count for p in model.policies), default=1)
    n_groups = len(model.client_map.groups)
    choices = np.full((len(model.policies), n_groups, width), -1, dtype=np.int32)
    for p, compiled in enumerate(model.policies):
        ranked = rank_groups(model.rank_inputs(p, node_state, node_util), compiled.policy.answer_count)
        choices[p, :, : ranked.shape[1]] = ranked
    # Many groups share an answer; store each distinct node list once.
    sets, inverse = np.unique(choices.reshape(-1, width), axis=0, return_inverse=True)
    group_set = inverse.reshape(len(model.policies), n_groups).astype(np.int32)
    table = RoutingTable(generation, group_set, sets.astype(np.int32), np.array(node_state, dtype=np.int8))
    for array in (table.group_set, table.set_nodes, table.node_state):
        array.flags.writeable = False
    return table
