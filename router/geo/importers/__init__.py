"""Client-map importers: the formats operators already have, combined into one ClientMap.

Sources and what they give (each read into ``Entry(version, start, prefixlen, record)``,
i.e. ``entry.network`` and ``entry.record = ClientRecord(asn, country, lat, lon, org)``):

- ``mmdb``: MaxMind-format databases (``mmdb.py``): GeoIP2/GeoLite2 City (country and
  location), Country (country), ASN and ISP (ASN and org), and the router's own layout
  (all of them). Checked and read by field; a database with no client field is an error.
- ``czf`` / ``dczf``: Apache Traffic Control (deep) coverage zone files (``coverage.py``):
  each zone's prefixes placed at its coordinates, org = zone name.
- ``csv``: prefix lists ``prefix,asn,country,latitude,longitude,org`` (``prefixlist.py``).

In deployment.yaml, ``client_map:`` is one path (the kind from its suffix: ``.mmdb``,
``.csv``, ``.json`` = CZF or DCZF by its top-level key) or a list of ``{KIND: path}``::

    client_map:
      - mmdb: ../geodata/GeoLite2-ASN.mmdb
      - mmdb: ../geodata/GeoLite2-City.mmdb
      - czf: ops/coverage.json          # optional: asn: 3352, country: ES for every zone
      - csv: ops/overrides.csv

How sources combine (``merge.py``):

1. **Databases merge field-wise.** Each database network takes the fields it lacks from
   the nearest enclosing database network, so a City /24 inside an ASN /16 carries the
   City's country and location and the /16's ASN, while the rest of the /16 has the ASN
   alone. Databases that list the same network merge the same way, the later one in the
   list winning where both have a field. The ASN and its org go together, and a location
   is never borrowed from another country.
2. **Operator lists override databases for the same prefix** (csv, czf, dczf; between
   two operator lists, the later one wins), and are taken as written, never filled in.
3. **Across different prefixes the longest match wins**, operator or database, and the
   ECS scope is that of the prefix that decided (``ClientMap.from_int_prefixes``).

Groups are the distinct (ASN, country, location); group 0 is "unknown", which is also
where a network with nothing known goes (e.g. a coverage zone with no coordinates): it
still cuts broader entries, so an operator can blank out part of a database network.

Every problem names its file and entry (CSV line, zone and index, MaxMind reason); all of
them are raised together as a ClientMapError before any map is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from router._gc import collector_paused
from router.geo.clientmap import ClientMap, ClientMapError, SourceProblem
from router.geo.importers.coverage import coverage_kind, read_coverage_zones
from router.geo.importers.merge import merge
from router.geo.importers.mmdb import mmdb_kind, read_mmdb
from router.geo.importers.prefixlist import (
    CSV_COLUMNS,
    format_prefix_list,
    read_prefix_list,
    write_prefix_list,
)
from router.geo.importers.records import ClientRecord, Entry, check_asn, check_country

SOURCE_KINDS = ("mmdb", "czf", "dczf", "csv")
DATABASE_KINDS = ("mmdb",)
_SUFFIX_KINDS = {".mmdb": "mmdb", ".csv": "csv"}

__all__ = [
    "CSV_COLUMNS",
    "SOURCE_KINDS",
    "ClientRecord",
    "Entry",
    "Source",
    "build_client_map",
    "format_prefix_list",
    "load_mmdb",
    "mmdb_kind",
    "read_source",
    "write_prefix_list",
]


@dataclass(frozen=True)
class Source:
    """One client-map input file: its kind (``SOURCE_KINDS``) and path.

    ``asn`` and ``country`` apply to every zone of a czf/dczf file (which has neither);
    ``label`` is how problems name the file (default: the path).
    """

    kind: str
    path: Path
    asn: int = 0
    country: str = ""
    label: str = ""

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ValueError(
                f"unknown client map source kind {self.kind!r} (valid: {', '.join(SOURCE_KINDS)})"
            )
        if (self.asn or self.country) and self.kind not in ("czf", "dczf"):
            raise ValueError("asn and country apply to coverage zone files (czf, dczf) only")
        check_asn(self.asn)
        check_country(self.country)

    @property
    def name(self) -> str:
        return self.label or str(self.path)

    @property
    def is_database(self) -> bool:
        return self.kind in DATABASE_KINDS

    @classmethod
    def from_path(cls, path: Path, label: str = "") -> Source:
        """The kind from the file name: .mmdb, .csv, or .json (CZF or DCZF by its top-level key)."""
        suffix = path.suffix.lower()
        if suffix == ".json":
            return cls(coverage_kind(path, label or str(path)), path, label=label)
        if suffix not in _SUFFIX_KINDS:
            raise ClientMapError([SourceProblem(
                label or str(path), 0,
                "cannot tell the format from the file name: use .mmdb, .csv or .json, "
                "or a list entry naming it (mmdb:, czf:, dczf:, csv:)",
            )])  # fmt: skip
        return cls(_SUFFIX_KINDS[suffix], path, label=label)


def read_source(source: Source) -> list[Entry]:
    """The record stream of one source; raises ClientMapError naming the file and entries."""
    if source.kind == "mmdb":
        return read_mmdb(source.path, source.name)
    if source.kind == "csv":
        return read_prefix_list(source.path, source.name)
    return read_coverage_zones(source.path, source.name, source.kind, source.asn, source.country)


def build_client_map(sources: Sequence[Source]) -> ClientMap:
    """Read every source, then merge them (rules above); all problems raise together."""
    problems: list[SourceProblem] = []
    read: list[tuple[bool, list[Entry]]] = []
    with collector_paused():
        for source in sources:
            try:
                read.append((source.is_database, read_source(source)))
            except ClientMapError as exc:
                problems += exc.problems
        if problems:
            raise ClientMapError(problems)
        return merge(read)


def load_mmdb(path: Path) -> ClientMap:
    """One MaxMind-format database as a client map."""
    return build_client_map([Source("mmdb", path)])
