"""Per-query counters of the workers (router/dns/query_stats.py), added up for /metrics.

Each config in service has its own counters, one slice per worker in memory shared with
the forked workers (like the demand counters): a config's name labels and node list are
its own. When a reload retires the workers of a config, their counts are folded into
totals keyed by label values once the last of them has exited, so every series keeps
counting up across reloads and nothing is counted twice.
"""

from __future__ import annotations

import threading
from collections import Counter

import numpy as np

from router.dns import query_stats
from router.dns.query_stats import QueryLabels, QueryStats
from router.service.shared import shared_zeros

QueryKey = tuple[str, str, str, str]  # name, type, rcode, transport


class QueryCounters:
    """One config's counters for ``workers`` workers."""

    def __init__(
        self, workers: int, labels: QueryLabels, node_ids: tuple[str, ...] | list[str]
    ) -> None:
        self.labels = labels
        self.node_ids = list(node_ids)
        shapes = query_stats.stats_shapes(len(labels.names), len(self.node_ids))
        self.arrays = [shared_zeros((workers, *shape)) for shape in shapes]

    def for_worker(self, index: int) -> QueryStats:
        queries, nodes, located = (array[index] for array in self.arrays)
        return QueryStats(queries, nodes, located)

    def totals(self) -> QueryTotals:
        """Every worker's counts added up, by label values (only the non-zero ones)."""
        queries, nodes, located = (array.sum(axis=0) for array in self.arrays)
        out = QueryTotals()
        for name, transport, rcode, qtype in zip(*np.nonzero(queries)):
            key = (self.labels.names[name], query_stats.TYPE_LABELS[qtype], query_stats.RCODE_LABELS[rcode],
                   query_stats.TRANSPORT_LABELS[transport])  # fmt: skip
            out.queries[key] += int(queries[name, transport, rcode, qtype])
        per_node = nodes.sum(axis=0)
        for n in np.nonzero(per_node[: len(self.node_ids)])[0]:
            out.node_answers[self.node_ids[n]] += int(per_node[n])
        per_way = located.sum(axis=0)
        for way, label in enumerate(query_stats.LOCATED_LABELS):
            out.located[label] += int(per_way[way])
        return out


class QueryTotals:
    def __init__(self) -> None:
        self.queries: Counter[QueryKey] = Counter()
        self.node_answers: Counter[str] = Counter()
        self.located: Counter[str] = Counter()

    def add(self, other: QueryTotals) -> None:
        self.queries.update(other.queries)
        self.node_answers.update(other.node_answers)
        self.located.update(other.located)


class QueryAccounts:
    """The counters of every config whose workers may still answer, and the folded totals
    of those whose workers are all gone."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: list[QueryCounters] = []
        self._folded = QueryTotals()

    def add(self, counters: QueryCounters) -> None:
        with self._lock:
            if all(c is not counters for c in self._live):
                self._live.append(counters)

    def fold(self, counters: QueryCounters) -> None:
        """No worker writes ``counters`` any more: keep their totals, let them go."""
        with self._lock:
            if any(c is counters for c in self._live):
                self._live = [c for c in self._live if c is not counters]
                self._folded.add(counters.totals())

    def totals(self) -> QueryTotals:
        with self._lock:
            live = list(self._live)
            out = QueryTotals()
            out.add(self._folded)
        for counters in live:
            out.add(counters.totals())
        return out
