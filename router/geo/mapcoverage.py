"""Map coverage: which announced prefixes of some networks the client map does not place.

On-net steering and ``asns:`` rules trust the ASN the map gives a client. A prefix that an
ISP announces in BGP but the map leaves out (its clients fall to the unknown group and are
steered from the policy's default site) or gives to another network (its clients lose their
on-net nodes) is a silent mis-steer. This module finds them.

The announced-prefix file is a CSV table of what networks announce (an operator's BGP table
export, or ``geodata/iberia-announced.csv`` for the sample)::

    # comment lines start with "#"; blank lines are skipped
    prefix,asn,org
    83.32.0.0/11,3352,TELEFONICA DE ESPANA S.A.U.
    2a01:cb00::/32,3215,

``prefix`` and ``asn`` are required, ``org`` (shown in the report) is optional; a prefix has
no host bits set and ``asn`` is a whole number above 0. A prefix may be listed for several
ASNs (announced by more than one origin) but each (prefix, asn) once. Problems carry the
file and line, and all of them are raised together as a ClientMapError. As in BGP, the
addresses of a more specific prefix are routed to its ASN: they are judged for that row only,
not for the prefixes around it.

``map_coverage`` judges every announced prefix of the given ASNs against the map, with numpy
over the map's sorted interval arrays (a world-sized map and table take seconds); only the
prefixes that are not fully placed are walked one by one, to say where each part falls.
"""

from __future__ import annotations

import bisect
import csv
import ipaddress
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from router.geo.clientmap import UNKNOWN_GROUP, ClientMap, ClientMapError, Groups, SourceProblem
from router.geo.importers.records import Problems, check_asn, parse_prefix

ANNOUNCED_COLUMNS = ("prefix", "asn", "org")

#: How a prefix is placed (``Gap.kind``; "ok" prefixes are only counted).
OK = "ok"  # every address in a group of the announcing ASN
PARTIAL = "partial"  # some addresses there, the rest in no group (unknown: the default)
MISMATCH = "mismatch"  # some addresses in a group of another network (or of no ASN)
MISSING = "missing"  # no address placed: all of it falls to the unknown group
KINDS = (OK, PARTIAL, MISMATCH, MISSING)

_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class AnnouncedPrefixes:
    """The rows of an announced-prefix file, in file order."""

    label: str  # the file, as problems and reports name it
    version: tuple[int, ...]
    start: tuple[int, ...]  # network address as an integer
    prefixlen: tuple[int, ...]
    asn: tuple[int, ...]
    org: tuple[str, ...]
    line: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.asn)

    def prefix_text(self, row: int) -> str:
        return _network(self.version[row], self.start[row], self.prefixlen[row]).with_prefixlen


def read_announced(path: Path, label: str = "") -> AnnouncedPrefixes:
    """Read and check the whole file; raises ClientMapError listing every problem (with lines)."""
    label = label or str(path)
    try:
        with path.open(encoding="utf-8", newline="") as stream:
            lines = stream.readlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientMapError(
            [SourceProblem(label, 0, f"cannot read announced prefixes: {exc}")]
        ) from exc
    problems = Problems(label)
    numbers = [
        n
        for n, line in enumerate(lines, start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    rows = csv.reader([lines[n - 1] for n in numbers])
    header = next(rows, None)
    expected = ",".join(ANNOUNCED_COLUMNS)
    if header is None:
        raise ClientMapError(
            [
                SourceProblem(
                    label,
                    0,
                    f"empty file: the first line must be the header {expected} (org optional)",
                )
            ]
        )
    columns = [name.strip() for name in header]
    if columns not in (["prefix", "asn"], list(ANNOUNCED_COLUMNS)):
        raise ClientMapError([SourceProblem(
            label, numbers[0], f"header must be prefix,asn or {expected}, got {','.join(header)}"
        )])  # fmt: skip
    width = len(columns)
    version: list[int] = []
    start: list[int] = []
    prefixlen: list[int] = []
    asns: list[int] = []
    orgs: list[str] = []
    line_of: list[int] = []
    first_line: dict[tuple[int, int, int, int], int] = {}
    for row in rows:
        line = numbers[rows.line_num - 1]
        if len(row) != width:
            problems.add(line, f"expected {width} fields ({','.join(columns)}), got {len(row)}")
            continue
        text = row[0].strip()
        try:
            prefix = parse_prefix(text)
        except ValueError as exc:
            problems.add(line, f"prefix: {exc}")
            continue
        try:
            asn = check_asn(row[1].strip())
        except ValueError as exc:
            problems.add(line, f"{text}: {exc}")
            continue
        if asn == 0:
            problems.add(line, f"{text}: asn 0 is not a network (AS0 marks unannounced space)")
            continue
        key = (*prefix, asn)
        first = first_line.setdefault(key, line)
        if first != line:
            problems.add(line, f"{text} AS{asn} is already listed at line {first}")
            continue
        version.append(prefix[0])
        start.append(prefix[1])
        prefixlen.append(prefix[2])
        asns.append(asn)
        orgs.append(row[2].strip() if width == 3 else "")
        line_of.append(line)
    problems.raise_if_any()
    return AnnouncedPrefixes(
        label,
        tuple(version),
        tuple(start),
        tuple(prefixlen),
        tuple(asns),
        tuple(orgs),
        tuple(line_of),
    )


@dataclass(frozen=True)
class Part:
    """A run of a prefix's addresses that falls to one group (or to none)."""

    prefixes: tuple[str, ...]  # the run as CIDR blocks
    group: int  # UNKNOWN_GROUP for addresses the map does not place
    falls_to: str  # the group in words: ``group 12: AS5511 Orange S.A., FR``, or unknown


@dataclass(frozen=True)
class Gap:
    """An announced prefix the map does not place (wholly) in a group of its ASN."""

    prefix: str
    asn: int
    org: str
    line: int  # in the announced-prefix file
    kind: str  # PARTIAL, MISMATCH or MISSING
    parts: tuple[Part, ...]  # the addresses not in a group of ``asn``, in address order


@dataclass(frozen=True)
class AsnCoverage:
    asn: int
    org: str
    prefixes: int  # announced prefixes of this ASN in the file
    ok: int
    partial: int
    mismatch: int
    missing: int


@dataclass(frozen=True)
class Coverage:
    source: str  # the announced-prefix file
    asns: tuple[AsnCoverage, ...]  # every ASN asked about, by number; prefixes 0 if none listed
    gaps: tuple[Gap, ...]  # in file order

    @property
    def prefixes(self) -> int:
        return sum(a.prefixes for a in self.asns)

    def count(self, kind: str) -> int:
        return sum(getattr(a, kind) for a in self.asns)


def map_coverage(cmap: ClientMap, announced: AnnouncedPrefixes, asns: Collection[int]) -> Coverage:
    """Judge every announced prefix of ``asns`` against ``cmap`` (kinds: ``KINDS``)."""
    wanted = frozenset(asns)
    rows_of: dict[int, list[int]] = {4: [], 6: []}
    for row, asn in enumerate(announced.asn):
        if asn in wanted:
            rows_of[announced.version[row]].append(row)
    gaps: list[Gap] = []
    for version, rows in rows_of.items():
        if not rows:
            continue
        intervals = _Intervals.of(cmap, version)
        placed = intervals.placed_whole(
            [announced.start[r] for r in rows],
            [_last(version, announced.start[r], announced.prefixlen[r]) for r in rows],
            np.array([announced.asn[r] for r in rows], dtype=np.int64),
        )
        unplaced = np.flatnonzero(~placed).tolist()
        if not unplaced:
            continue
        more_specific = _MoreSpecific(announced, version)
        for index in unplaced:
            gap = _gap(cmap.groups, intervals, announced, rows[index], more_specific)
            if gap is not None:
                gaps.append(gap)
    gaps.sort(key=lambda gap: gap.line)

    counts = {asn: dict.fromkeys(KINDS, 0) for asn in wanted}
    listed = dict.fromkeys(wanted, 0)
    for asn in announced.asn:
        if asn in wanted:
            listed[asn] += 1
    for gap in gaps:
        counts[gap.asn][gap.kind] += 1
    org = _orgs(cmap.groups, announced, wanted)
    per_asn = []
    for asn in sorted(wanted):
        c = counts[asn]
        ok = listed[asn] - c[PARTIAL] - c[MISMATCH] - c[MISSING]
        per_asn.append(
            AsnCoverage(asn, org.get(asn, ""), listed[asn], ok, c[PARTIAL], c[MISMATCH], c[MISSING])
        )
    return Coverage(announced.label, tuple(per_asn), tuple(gaps))


class _Intervals:
    """One family of the map's intervals, with sortable keys and runs of one ASN.

    A run is a maximal sequence of touching intervals whose groups have the same ASN: a
    prefix is placed whole in its ASN exactly when it lies inside one run of that ASN.
    IPv6 keys are the 16 big-endian bytes as numpy ``S16`` strings, which sort and search
    like the 128-bit numbers.
    """

    def __init__(
        self,
        version: int,
        starts: np.ndarray,
        ends: np.ndarray,
        groups: np.ndarray,
        asn: np.ndarray,
        touching: np.ndarray,
    ) -> None:
        self.version = version
        self.starts = starts
        self.ends = ends
        self.groups = groups
        self.asn = asn  # int64, the ASN of each interval's group
        new_run = np.ones(len(groups), dtype=bool)
        new_run[1:] = ~touching | (asn[1:] != asn[:-1])
        self.run = np.cumsum(new_run)

    @classmethod
    def of(cls, cmap: ClientMap, version: int) -> _Intervals:
        if version == 4:
            starts, ends = cmap.v4_start, cmap.v4_end
            groups = cmap.v4_group
            touching = ends[:-1] + 1 == starts[1:]
        else:
            starts = _keys6(cmap.v6_start_hi, cmap.v6_start_lo)
            ends = _keys6(cmap.v6_end_hi, cmap.v6_end_lo)
            groups = cmap.v6_group
            # end + 1 == next start, in two 64-bit halves (the low half wraps, carrying one).
            with np.errstate(over="ignore"):
                next_lo = cmap.v6_end_lo[:-1] + np.uint64(1)
            carry = (next_lo == 0).astype(np.uint64)
            touching = (next_lo == cmap.v6_start_lo[1:]) & (
                cmap.v6_end_hi[:-1] + carry == cmap.v6_start_hi[1:]
            )
        asn = cmap.groups.asn[groups].astype(np.int64)
        return cls(version, starts, ends, groups, asn, touching)

    def keys(self, values: list[int]) -> np.ndarray:
        if self.version == 4:
            return np.array(values, dtype=np.int64)
        hi = np.array([v >> 64 for v in values], dtype=np.uint64)
        lo = np.array([v & _MASK64 for v in values], dtype=np.uint64)
        return _keys6(hi, lo)

    def span(self, first: np.ndarray, last: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Intervals lo..hi-1 overlap [first, last]: lo is the first ending at or after
        ``first``, hi the count starting at or before ``last``."""
        return np.searchsorted(self.ends, first, side="left"), np.searchsorted(
            self.starts, last, side="right"
        )

    def placed_whole(self, firsts: list[int], lasts: list[int], asn: np.ndarray) -> np.ndarray:
        first, last = self.keys(firsts), self.keys(lasts)
        lo, hi = self.span(first, last)
        if len(self.groups) == 0:
            return np.zeros(len(firsts), dtype=bool)
        a = np.minimum(lo, len(self.groups) - 1)
        b = np.clip(hi - 1, 0, len(self.groups) - 1)
        return (
            (hi > lo)
            & (self.starts[a] <= first)
            & (self.ends[b] >= last)
            & (self.run[a] == self.run[b])
            & (self.asn[a] == asn)
        )

    def value(self, keys: np.ndarray, index: int) -> int:
        if self.version == 4:
            return int(keys[index])
        return int.from_bytes(bytes(keys[index]).ljust(16, b"\0"), "big")


def _keys6(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    pairs = np.empty((len(hi), 2), dtype=">u8")
    pairs[:, 0], pairs[:, 1] = hi, lo
    return pairs.view("S16").ravel()


class _MoreSpecific:
    """The rows of one family by network address, to find the prefixes inside a prefix.

    As in BGP, an address is routed by its longest announced prefix: the addresses of a more
    specific row (of any ASN, judged or not) are that row's to judge, not the covering one's.
    """

    def __init__(self, announced: AnnouncedPrefixes, version: int) -> None:
        self.announced = announced
        rows = [r for r in range(len(announced)) if announced.version[r] == version]
        rows.sort(key=lambda r: announced.start[r])
        self.rows = rows
        self.starts = [announced.start[r] for r in rows]

    def ranges_inside(self, row: int) -> list[tuple[int, int]]:
        """The address ranges of the rows strictly more specific than ``row``, merged."""
        a = self.announced
        version, first, plen = a.version[row], a.start[row], a.prefixlen[row]
        last = _last(version, first, plen)
        out: list[tuple[int, int]] = []
        for k in range(bisect.bisect_left(self.starts, first), len(self.rows)):
            other = self.rows[k]
            start = a.start[other]
            if start > last:
                break
            if a.prefixlen[other] <= plen:
                continue
            end = _last(version, start, a.prefixlen[other])
            if out and start <= out[-1][1] + 1:
                out[-1] = (out[-1][0], max(out[-1][1], end))
            else:
                out.append((start, end))
        return out


def _gap(
    groups: Groups,
    intervals: _Intervals,
    announced: AnnouncedPrefixes,
    row: int,
    more_specific: _MoreSpecific,
) -> Gap | None:
    """Walk the map's intervals over one prefix: the runs of addresses outside its ASN, less
    those of more specific announced prefixes. None when nothing is left outside its ASN."""
    version, asn = announced.version[row], announced.asn[row]
    first = announced.start[row]
    last = _last(version, first, announced.prefixlen[row])
    lo, hi = (int(x[0]) for x in intervals.span(intervals.keys([first]), intervals.keys([last])))
    runs: list[tuple[int, int, int]] = []  # (first, last, group), gaps in the map as group 0

    def add(a: int, b: int, group: int) -> None:
        if runs and runs[-1][2] == group and runs[-1][1] + 1 == a:
            runs[-1] = (runs[-1][0], b, group)
        else:
            runs.append((a, b, group))

    cursor = first
    for j in range(lo, hi):
        a = max(intervals.value(intervals.starts, j), first)
        b = min(intervals.value(intervals.ends, j), last)
        if a > cursor:
            add(cursor, a - 1, UNKNOWN_GROUP)
        add(a, b, int(intervals.groups[j]))
        cursor = b + 1
    if cursor <= last:
        add(cursor, last, UNKNOWN_GROUP)

    runs = _minus(runs, more_specific.ranges_inside(row))
    own = unplaced = other = False
    parts: list[Part] = []
    for a, b, group in runs:
        group_asn = int(groups.asn[group])
        if group != UNKNOWN_GROUP and group_asn == asn:
            own = True
            continue
        if group == UNKNOWN_GROUP:
            unplaced = True
            falls_to = groups.describe(UNKNOWN_GROUP)
        else:
            other = True
            falls_to = f"group {group}: {groups.describe(group)}"
        parts.append(Part(_cidrs(version, a, b), group, falls_to))
    if not parts:
        return None
    kind = MISMATCH if other else PARTIAL if own and unplaced else MISSING
    return Gap(
        announced.prefix_text(row), asn, announced.org[row], announced.line[row], kind, tuple(parts)
    )


def _minus(
    runs: list[tuple[int, int, int]], holes: list[tuple[int, int]]
) -> list[tuple[int, int, int]]:
    """``runs`` (sorted, disjoint) without the addresses of ``holes`` (sorted, disjoint)."""
    out: list[tuple[int, int, int]] = []
    j = 0
    for a, b, group in runs:
        while j < len(holes) and holes[j][1] < a:
            j += 1
        k = j
        while k < len(holes) and holes[k][0] <= b:
            if holes[k][0] > a:
                out.append((a, holes[k][0] - 1, group))
            a = max(a, holes[k][1] + 1)
            k += 1
        if a <= b:
            out.append((a, b, group))
    return out


def _orgs(groups: Groups, announced: AnnouncedPrefixes, asns: frozenset[int]) -> dict[int, str]:
    """A name per ASN: the first the announced file gives, else the map's first group's."""
    names: dict[int, str] = {}
    for asn, org in zip(announced.asn, announced.org, strict=True):
        if org and asn in asns:
            names.setdefault(asn, org)
    for g in range(1, len(groups)):
        asn = int(groups.asn[g])
        if asn in asns and groups.org[g]:
            names.setdefault(asn, groups.org[g])
    return names


def _last(version: int, start: int, prefixlen: int) -> int:
    return start + (1 << ((32 if version == 4 else 128) - prefixlen)) - 1


def _network(
    version: int, start: int, prefixlen: int
) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if version == 4:
        return ipaddress.IPv4Network((start, prefixlen))
    return ipaddress.IPv6Network((start, prefixlen))


def _cidrs(version: int, first: int, last: int) -> tuple[str, ...]:
    cls = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    return tuple(n.with_prefixlen for n in ipaddress.summarize_address_range(cls(first), cls(last)))
