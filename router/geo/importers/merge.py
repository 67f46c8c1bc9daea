"""Combining sources into one ClientMap (the rules are in the package docstring).

1. Operator entries (CSV, CZF, DCZF) replace database entries for exactly the same
   prefix; between operator lists, the later source wins.
2. Database entries are merged field-wise: each network's record is ``fill``-ed over the
   merged record of its nearest enclosing database network (one sweep over the sorted
   prefixes with a stack of enclosing networks); when several databases list the same
   network, their records are filled one over the other in source order, so the later
   source wins where both have a field.
3. The result and the operator entries go to ``ClientMap.from_int_prefixes``: longest
   prefix wins, the ECS scope comes from the prefix that decided.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from router.geo.clientmap import UNKNOWN_GROUP, ClientMap, Groups
from router.geo.importers.records import EMPTY, ClientRecord, Entry

Prefix = tuple[int, int, int]  # (version, network address as int, prefix length)


def fill(own: ClientRecord, outer: ClientRecord) -> ClientRecord:
    """``own`` with the fields it lacks taken from ``outer`` (an enclosing or earlier entry).

    The ASN and its org go together; a location is never taken from another country.
    """
    if own.asn:
        asn, org = own.asn, own.org
    elif outer.asn:
        asn, org = outer.asn, outer.org
    else:
        asn, org = 0, own.org or outer.org
    country = own.country or outer.country
    if own.has_location:
        lat, lon = own.lat, own.lon
    elif outer.has_location and country == outer.country:
        lat, lon = outer.lat, outer.lon
    else:
        lat, lon = math.nan, math.nan
    return ClientRecord(asn, country, lat, lon, org)


def merge(sources: Sequence[tuple[bool, list[Entry]]]) -> ClientMap:
    """``(is_database, entries)`` per source, in deployment order -> the compiled map."""
    operator: dict[Prefix, ClientRecord] = {}
    database: dict[Prefix, list[ClientRecord]] = {}  # every database's record, in source order
    for is_database, entries in sources:
        if is_database:
            for version, start, plen, record in entries:
                database.setdefault((version, start, plen), []).append(record)
        else:
            operator.update(
                ((version, start, plen), record) for version, start, plen, record in entries
            )
    for key in operator.keys() & database.keys():
        del database[key]
    decided = _fill_from_enclosing(database)
    decided.update(operator)
    return _compile(decided)


def _order(key: Prefix) -> int:
    # (version, start, prefix length) as one integer: sorts several times faster than tuples.
    version, start, plen = key
    return (version << 136) | (start << 8) | plen


def _fill_from_enclosing(database: dict[Prefix, list[ClientRecord]]) -> dict[Prefix, ClientRecord]:
    """Each network's records filled, in source order, over its enclosing network's result."""
    out: dict[Prefix, ClientRecord] = {}
    stack: list[tuple[int, int, ClientRecord]] = []  # (version, last address, merged record)
    for key in sorted(database, key=_order):
        version, start, plen = key
        while stack and (stack[-1][0] != version or stack[-1][1] < start):
            stack.pop()
        records = database[key]
        merged = records[0] if not stack else fill(records[0], stack[-1][2])
        for record in records[1:]:
            merged = fill(record, merged)
        out[key] = merged
        stack.append((version, start + (1 << ((32 if version == 4 else 128) - plen)) - 1, merged))
    return out


def _compile(decided: dict[Prefix, ClientRecord]) -> ClientMap:
    """Number the groups (distinct ASN, country, location; 0 = unknown) and flatten.

    Group ids follow the order of ``decided``, which follows the sources: deterministic.
    Unknown coordinates are always the ``math.nan`` object (see ``ClientRecord``), so
    ``record[:4]`` is a sound dictionary key although NaN != NaN.
    """
    by_key: dict[tuple[int, str, float, float], int] = {EMPTY[:4]: UNKNOWN_GROUP}
    by_record: dict[ClientRecord, int] = {}
    columns: list[ClientRecord] = [EMPTY]
    v4: list[tuple[int, int, int]] = []
    v6: list[tuple[int, int, int]] = []
    for (version, start, plen), record in decided.items():
        group = by_record.get(record)
        if group is None:
            group = by_key.get(record[:4])
            if group is None:
                group = by_key[record[:4]] = len(columns)
                columns.append(record)
            by_record[record] = group
        (v4 if version == 4 else v6).append((start, plen, group))
    groups = Groups(
        asn=np.array([r.asn for r in columns], dtype=np.int64),
        country=tuple(r.country for r in columns),
        lat=np.array([r.lat for r in columns], dtype=np.float64),
        lon=np.array([r.lon for r in columns], dtype=np.float64),
        org=tuple(r.org for r in columns),
    )
    return ClientMap.from_int_prefixes(groups, v4, v6)
