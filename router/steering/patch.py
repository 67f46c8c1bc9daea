"""A routing table patched for the groups a repair moved, instead of built again whole.

When one node goes down, ``Planner.node_down`` repairs only the groups that node touched;
at world scale those are a few thousand of a few hundred thousand, and building every row
again (and finding each distinct node list with ``np.unique`` over all of them) cost more
than the repair itself. ``patch`` writes just the changed groups: the others keep their
answer set and split row, a node list not seen before is appended to ``set_nodes``, a new
split row to the split arrays. Rows no group uses any more stay until the next full build;
the planner builds whole again once patches have grown the table by half (``grown``).

Only tables whose rows fit in 8 bytes (answers of up to two nodes) are patched: their node
lists are found by one int64 key (``SetIndex``); wider ones are built whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GROWTH = 1.5  # a patched table this much larger than its last full build is built whole


def row_keys(rows: np.ndarray) -> np.ndarray | None:
    """One int64 per row of int32 node indexes (-1 padded), or None when rows are too wide."""
    if rows.dtype.itemsize * rows.shape[1] > 8:
        return None
    padded = np.zeros((len(rows), 8 // rows.dtype.itemsize), dtype=rows.dtype)
    padded[:, : rows.shape[1]] = rows
    return padded.view(np.int64).ravel()


def owner_runs(owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each owner's entries start in ``owner`` (sorted), and how many it has."""
    if not len(owner):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    return starts, np.diff(np.r_[starts, len(owner)])


@dataclass(frozen=True)
class SetIndex:
    """A table's answer sets by key: ``ids[i]`` is the set whose row has key ``keys[i]``."""

    keys: np.ndarray  # int64[S], sorted
    ids: np.ndarray  # int32[S]
    full_sets: int  # sets and split entries of the last full build, for ``grown``
    full_split_entries: int

    def grown(self, sets: int, split_entries: int) -> bool:
        return sets > GROWTH * self.full_sets + 64 or (
            split_entries > GROWTH * self.full_split_entries + 64
        )


def _known_sets(
    group_set: np.ndarray,
    set_nodes: np.ndarray,
    index: SetIndex,
    owner: np.ndarray,
    keys: np.ndarray,
) -> np.ndarray:
    """The set (int32) already holding each entry's row, or -1 when none does."""
    # Most entries answer as their owner did before (a Seoul node's repair answers 50,000
    # groups afresh, and the node was seldom among their first two): their owner's set is
    # checked first, and only the rest are searched in the index (a searchsorted of every
    # entry was most of a patch). Set rows are distinct, so both ways find the same set.
    answer_set = group_set[owner]
    single = answer_set >= 0  # -1 - r: the owner was split (split row r)
    same = np.zeros(len(keys), dtype=np.bool_)
    same[single] = row_keys(set_nodes[answer_set[single]]) == keys[single]
    answer_set[~same] = -1
    rest = np.flatnonzero(~same)
    if len(rest) and len(index.keys):
        pos = np.minimum(np.searchsorted(index.keys, keys[rest]), len(index.keys) - 1)
        hit = index.keys[pos] == keys[rest]
        answer_set[rest[hit]] = index.ids[pos[hit]]
    return answer_set.astype(np.int32)


@dataclass(frozen=True)
class Patched:
    """The arrays of the patched table (``RoutingTable`` fields) and its index."""

    group_set: np.ndarray
    set_nodes: np.ndarray
    split_start: np.ndarray
    split_set: np.ndarray
    split_cum: np.ndarray
    index: SetIndex


def patch(
    group_set: np.ndarray,
    set_nodes: np.ndarray,
    split_start: np.ndarray,
    split_set: np.ndarray,
    split_cum: np.ndarray,
    index: SetIndex,
    owner: np.ndarray,
    rows: np.ndarray,
    new_cum: np.ndarray,
) -> Patched:
    """The previous table's arrays with every owner in ``owner`` answered afresh.

    ``owner`` (int64[E], sorted; policy * groups + group) lists each changed group once per
    entry, ``rows`` (int32[E, K]) their node lists and ``new_cum`` (uint32) the cumulative
    weights of the entries of owners with more than one, in order (``_cumulative_weights``).
    """
    keys = row_keys(rows)
    assert keys is not None, "only rows of up to 8 bytes are patched"
    answer_set = _known_sets(group_set.ravel(), set_nodes, index, owner, keys)
    found = answer_set >= 0
    new_keys, first, inverse = np.unique(keys[~found], return_index=True, return_inverse=True)
    new_ids = np.arange(len(set_nodes), len(set_nodes) + len(new_keys), dtype=np.int32)
    answer_set[~found] = new_ids[inverse.reshape(-1)]
    set_nodes = np.concatenate([set_nodes, rows[~found][first].astype(np.int32)])
    at = np.searchsorted(index.keys, new_keys)
    # Entries arrive sorted by owner; owners with one entry map straight to their set.
    starts, counts = owner_runs(owner)
    single = counts == 1
    out = group_set.ravel().copy()
    out[owner[starts[single]]] = answer_set[starts[single]]
    split_counts = counts[~single]
    rows_before = len(split_start) - 1
    out[owner[starts[~single]]] = -1 - np.arange(
        rows_before, rows_before + len(split_counts), dtype=np.int32
    )
    entry = np.flatnonzero(np.repeat(~single, counts))
    assert len(new_cum) == len(entry), "one cumulative weight per entry of a split owner"
    return Patched(
        group_set=out.reshape(group_set.shape),
        set_nodes=set_nodes,
        split_start=np.r_[split_start, split_start[-1] + np.cumsum(split_counts)].astype(np.int32),
        split_set=np.concatenate([split_set, answer_set[entry]]).astype(np.int32),
        split_cum=np.concatenate([split_cum, new_cum]).astype(np.uint32),
        index=SetIndex(
            np.insert(index.keys, at, new_keys),
            np.insert(index.ids, at, new_ids),
            index.full_sets,
            index.full_split_entries,
        ),  # fmt: skip
    )
